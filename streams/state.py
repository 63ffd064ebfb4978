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


class _Encoded:
    """A value put already encoded (:meth:`WriteBack.put_encoded`)."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw


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
            if isinstance(value, _Encoded):
                value = values[key] = decode(value.raw, type_)
            return None if value is _DELETED else value  # type: ignore[return-value]
        raw = self.kv.get(partition, key)
        obj = None if raw is None else decode(raw, type_)
        values[key] = _DELETED if obj is None else obj
        return obj

    def put(self, partition: int, key: bytes, value: object) -> None:
        self._values.setdefault(partition, {})[key] = value
        self._dirty.setdefault(partition, set()).add(key)

    def get_raw(self, partition: int, key: bytes) -> bytes | None:
        """A key's value encoded, as :meth:`flush` would write it now (not kept decoded: for
        callers that keep their own decoded copy for the batch)."""
        values = self._values.get(partition)
        if values is not None and key in values:
            value = values[key]
            if value is _DELETED:
                return None
            return value.raw if isinstance(value, _Encoded) else encode(value)
        return self.kv.get(partition, key)

    def put_encoded(self, partition: int, key: bytes, raw: bytes) -> None:
        """:meth:`put` of a value already encoded."""
        self.put(partition, key, _Encoded(raw))

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
            elif isinstance(value, _Encoded):
                self.kv.set(partition, key, value.raw)
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


_HEAD = b"\x00snapshot-head"
_SLOTS = (b"\x00#0", b"\x00#1")
_LIVE, _GONE = b"\x00", b"\x01"


class Snapshots:
    """Saves of many keys over one partition of a :class:`KeyValue` that restore all or nothing.

    A save can be cut short (a crash between its writes), and a restore must then see the
    previous save whole, not half of each. Every key has two slots: a save writes a key's new
    value (with the save's number) into the slot that does NOT hold its last saved value, then
    writes the head (the number of the last complete save) last. Reading takes, per key, the slot
    with the highest number not above the head. A deleted key is a marker until the head covers
    it, then both slots go.
    """

    def __init__(self, kv: KeyValue, partition: int) -> None:
        self.kv = kv
        self.partition = partition
        self.head = 0
        self._slot: dict[bytes, int] = {}  # key -> the slot of its value as of the head
        self._writes: dict[bytes, bytes | None] = {}

    def restore(self) -> None:
        """Read the head (call before any :meth:`get`)."""
        raw = self.kv.get(self.partition, _HEAD)
        self.head = int.from_bytes(raw, "big") if raw else 0
        self._slot, self._writes = {}, {}

    def get(self, key: bytes) -> bytes | None:
        """The value of ``key`` as of the last complete save (or as set since, unsaved)."""
        if key in self._writes:
            return self._writes[key]
        best: tuple[int, int, bytes] | None = None
        for slot, suffix in enumerate(_SLOTS):
            raw = self.kv.get(self.partition, key + suffix)
            if raw is None or len(raw) < 9:
                continue
            number = int.from_bytes(raw[:8], "big")
            if number <= self.head and (best is None or number > best[0]):
                best = (number, slot, raw)
        if best is None:
            self._slot.pop(key, None)
            return None
        self._slot[key] = best[1]
        raw = best[2]
        return raw[9:] if raw[8:9] == _LIVE else None

    def set(self, key: bytes, value: bytes) -> None:
        self._know(key)
        self._writes[key] = value

    def delete(self, key: bytes) -> None:
        self._know(key)
        self._writes[key] = None

    def _know(self, key: bytes) -> None:
        if key not in self._slot and key not in self._writes:
            self.get(key)  # which slot holds its saved value

    def commit(self) -> int:
        """Write the keys set or deleted since the last commit, then the head; returns the
        number of writes."""
        if not self._writes:
            return 0
        number = self.head + 1
        header = number.to_bytes(8, "big")
        kv, p = self.kv, self.partition
        written: dict[bytes, int] = {}
        for key, value in self._writes.items():
            slot = 1 - self._slot.get(key, 1)  # the other slot (a new key: slot 0)
            kv.set(p, key + _SLOTS[slot], header + (_GONE if value is None else _LIVE + value))
            written[key] = slot
        kv.set(p, _HEAD, header)
        self.head = number
        for key, slot in written.items():
            if self._writes[key] is None:  # the head covers the marker: both slots may go
                kv.delete(p, key + _SLOTS[0])
                kv.delete(p, key + _SLOTS[1])
                self._slot.pop(key, None)
            else:
                self._slot[key] = slot
        count = len(self._writes) + 1
        self._writes = {}
        return count
