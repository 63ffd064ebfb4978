"""The monitor's three stages, between Faust (streams.app) and the pure core (streams.core).

1. :mod:`~streams.stages.ingest`: raw webhook bodies -> status facts (to the messages topic,
   partitioned by wamid), recipient facts (to the recipients topic, partitioned by recipient),
   template facts, and dead letters.
2. :mod:`~streams.stages.messages`: per-message dedup and attribution, minute buckets.
3. :mod:`~streams.stages.recipients`: per-recipient state.

Stages know nothing of Faust: they take a partition, an offset and bytes, keep state in a
:class:`~streams.state.KeyValue`, and hand back what to send. That keeps them testable with a
dict and the Faust wiring thin.
"""

from functools import lru_cache

from aiokafka.partitioner import murmur2

#: Topic codes used in input positions (see streams.core.facts.source_id).
RAW, MESSAGES, SEND_LOG, RECIPIENTS = 1, 2, 3, 4


@lru_cache(maxsize=262_144)  # a message's statuses and a recipient's facts repeat the key
def partition_for(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key`` (murmur2, like the Java and
    aiokafka clients), so our routing agrees with records a sender produces keyed by wamid."""
    hashed: int = murmur2(key.encode())
    return (hashed & 0x7FFFFFFF) % partitions
