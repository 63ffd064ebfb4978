"""Write-back state over a partitioned key/value table (a Faust table in production).

Stages read and change decoded values during a batch and write each changed key once when the
batch is flushed: one changelog record per key per batch, not one per event.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, TypeVar

import msgspec

T = TypeVar("T")

_encoder = msgspec.msgpack.Encoder()
_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}


def encode(value: object) -> bytes:
    return _encoder.encode(value)


def decode(raw: bytes, type_: type[T]) -> T:
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.msgpack.Decoder(type_)
    result: T = decoder.decode(raw)
    return result


class KeyValue(Protocol):
    """The partitioned store under the state: ``partition`` is the owning partition."""

    def get(self, partition: int, key: bytes) -> bytes | None: ...

    def set(self, partition: int, key: bytes, value: bytes) -> None: ...

    def delete(self, partition: int, key: bytes) -> None: ...


class DictKeyValue:
    """An in-memory :class:`KeyValue` (unit tests; one dict per partition)."""

    def __init__(self) -> None:
        self.data: dict[int, dict[bytes, bytes]] = {}
        self.writes = 0

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self.data.get(partition, {}).get(key)

    def set(self, partition: int, key: bytes, value: bytes) -> None:
        self.writes += 1
        self.data.setdefault(partition, {})[key] = value

    def delete(self, partition: int, key: bytes) -> None:
        self.writes += 1
        self.data.get(partition, {}).pop(key, None)

    def keys(self, partition: int) -> Iterator[bytes]:
        return iter(list(self.data.get(partition, {})))

    def scan(self, partition: int, lo: bytes, hi: bytes) -> Iterator[tuple[bytes, bytes]]:
        """The keys ``lo <= key < hi`` of one partition and their values, in key order."""
        data = self.data.get(partition, {})
        return iter([(k, data[k]) for k in sorted(data) if lo <= k < hi])


_DELETED = object()


class WriteBack:
    """Decoded values of the keys read or changed in the current batch; ``flush`` writes the
    changed ones back, each once. Callers ``put`` a value after changing it."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self._values: dict[int, dict[bytes, object]] = {}
        self._dirty: dict[int, set[bytes]] = {}

    def get(self, partition: int, key: bytes, type_: type[T]) -> T | None:
        values = self._values.setdefault(partition, {})
        if key in values:
            value = values[key]
            return None if value is _DELETED else value  # type: ignore[return-value]
        raw = self.kv.get(partition, key)
        obj = None if raw is None else decode(raw, type_)
        values[key] = _DELETED if obj is None else obj
        return obj

    def put(self, partition: int, key: bytes, value: object) -> None:
        self._values.setdefault(partition, {})[key] = value
        self._dirty.setdefault(partition, set()).add(key)

    def delete(self, partition: int, key: bytes) -> None:
        self.put(partition, key, _DELETED)

    def partitions(self) -> list[int]:
        return [p for p, d in self._dirty.items() if d]

    def view(self, partition: int) -> PartitionView:
        """String-keyed, untyped access to one partition (for the expiry index's records)."""
        return PartitionView(self, partition)

    def flush(self, partition: int) -> int:
        """Write the partition's changed keys (each once); returns how many."""
        values = self._values.pop(partition, {})
        dirty = self._dirty.pop(partition, set())
        for key in dirty:
            value = values[key]
            if value is _DELETED:
                self.kv.delete(partition, key)
            else:
                self.kv.set(partition, key, encode(value))
        return len(dirty)

    def discard(self, partition: int) -> None:
        """Forget unflushed changes (the partition was revoked)."""
        self._values.pop(partition, None)
        self._dirty.pop(partition, None)


class PartitionView:
    """One partition of a :class:`WriteBack` with ``str`` keys and generic msgpack values."""

    def __init__(self, state: WriteBack, partition: int) -> None:
        self.state = state
        self.partition = partition

    def get(self, key: str) -> object | None:
        return self.state.get(self.partition, key.encode(), object)

    def put(self, key: str, value: object) -> None:
        self.state.put(self.partition, key.encode(), value)

    def delete(self, key: str) -> None:
        self.state.delete(self.partition, key.encode())
