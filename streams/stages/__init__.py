"""The monitor's stages, between the runtime (streams.runtime) and the pure core (streams.core).

1. :mod:`~streams.stages.ingest`: raw webhook bodies -> status facts (to the messages topic,
   partitioned by wamid), recipient facts (to the recipients topic, partitioned by recipient),
   template facts, and dead letters.
2. :mod:`~streams.stages.messages`: per-message dedup and attribution, minute buckets.
3. :mod:`~streams.stages.recipients`: per-recipient state.

Stages know nothing of Faust: they take a partition, an offset and bytes, keep state in a
:class:`~streams.state.KeyValue`, and hand back what to send. That keeps them testable with a
dict and the Faust wiring thin.
"""

import struct
from collections.abc import Callable
from functools import lru_cache

from streams.native import native_partition_for

#: Topic codes used in input positions (see streams.core.facts.source_id).
RAW, MESSAGES, SEND_LOG, RECIPIENTS = 1, 2, 3, 4


_M, _MASK = 0x5BD1E995, 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), as an unsigned 32-bit
    int like aiokafka's: the same arithmetic with the 4-byte words unpacked in C (2-3x faster
    than ``aiokafka.partitioner.murmur2``, which matters once per new wamid and recipient)."""
    length = len(data)
    h = 0x9747B28C ^ length
    n4 = length & ~3
    for (k,) in struct.iter_unpack("<I", data[:n4]):
        k = (k * _M) & _MASK
        k ^= k >> 24
        h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    extra = length & 3
    if extra:
        if extra >= 3:
            h ^= data[n4 + 2] << 16
        if extra >= 2:
            h ^= data[n4 + 1] << 8
        h ^= data[n4]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


@lru_cache(maxsize=16_384)  # recent keys repeat (a message's statuses); bounded: ~6 MB
def python_partition_for(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key`` (murmur2, like the Java and
    aiokafka clients), so our routing agrees with records a sender produces keyed by wamid."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


#: :func:`python_partition_for`, in native code when the native module is built and enabled
#: (stage 1 routes every status by wamid and every recipient fact by phone number)
partition_for: Callable[[str, int], int] = native_partition_for() or python_partition_for
