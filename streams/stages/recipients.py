"""Stage 3: per-recipient state (keyed by recipient: phone number, else BSUID)."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from streams.core.expiry import ExpiryIndex, SweepCursor
from streams.core.facts import decode_batch
from streams.core.recipients import RecipientState, apply_fact, is_idle
from streams.state import KeyValue, WriteBack

DAY = 86_400


class RecipientMeta(msgspec.Struct, array_like=True, gc=False):
    watermark: int = 0
    cursor: SweepCursor = msgspec.field(default_factory=SweepCursor)


def recipient_key(recipient: str) -> bytes:
    """Table key of a recipient: the id itself (so Faust routes API requests by it)."""
    return recipient.encode()


def recipient_meta_key(partition: int) -> bytes:
    return f"\x00rmeta\x1f{partition}".encode()


@dataclass
class RecipientStats:
    facts: int = 0
    applied: int = 0
    replays: int = 0
    expired: int = 0


@dataclass(frozen=True, slots=True)
class RecipientRetention:
    windows: int = 7 * DAY  # the longest window counted (7 d)
    idle: int = 8 * DAY  # an idle recipient is removed after this
    opted_out: int = 400 * DAY  # opt-outs are kept longer: they last until resume
    sweep_budget: int = 5_000


class RecipientStage:
    def __init__(self, kv: KeyValue, retention: RecipientRetention = RecipientRetention()) -> None:
        self.state = WriteBack(kv)
        self.retention = retention
        self.stats = RecipientStats()
        self._index: dict[int, ExpiryIndex] = {}

    def meta(self, partition: int) -> RecipientMeta:
        key = recipient_meta_key(partition)
        meta = self.state.get(partition, key, RecipientMeta)
        if meta is None:
            meta = RecipientMeta()
            self.state.put(partition, key, meta)
        return meta

    def _index_for(self, partition: int) -> ExpiryIndex:
        index = self._index.get(partition)
        if index is None:
            index = self._index[partition] = ExpiryIndex("xr", partition)
        return index

    def handle_batch(self, partition: int, offset: int, raw: bytes) -> None:
        batch = decode_batch(raw)
        meta = self.meta(partition)
        index = self._index_for(partition)
        for fact in batch.recipients:
            self.stats.facts += 1
            key = recipient_key(fact.recipient)
            state = self.state.get(partition, key, RecipientState)
            state, changed = apply_fact(state, fact, self.retention.windows)
            if not changed:
                self.stats.replays += 1
                continue
            self.stats.applied += 1
            meta.watermark = max(meta.watermark, fact.timestamp)
            self.state.put(partition, key, state)
            index.touch("r\x1f" + fact.recipient, state.last_ts, meta.cursor)
        self.state.put(partition, recipient_meta_key(partition), meta)

    def flush(self, partition: int) -> int:
        index = self._index.get(partition)
        if index is not None:
            meta = self.meta(partition)
            r = self.retention

            def get(k: str) -> object | None:
                return self.state.get(partition, k.encode(), object)

            def put(k: str, v: object) -> None:
                self.state.put(partition, k.encode(), v)

            def delete(k: str) -> None:
                self.state.delete(partition, k.encode())

            def expire(indexed: str) -> bool:
                key = recipient_key(indexed.split("\x1f", 1)[1])
                state = self.state.get(partition, key, RecipientState)
                if state is None or not is_idle(state, meta.watermark, r.idle, r.opted_out):
                    return False
                self.state.delete(partition, key)
                return True

            # Opted-out recipients stay indexed under their day; keep scanning at the shorter
            # idle retention and let is_idle() decide (a kept key is re-indexed below).
            kept: list[tuple[str, int]] = []

            def expire_or_keep(indexed: str) -> bool:
                if expire(indexed):
                    return True
                key = recipient_key(indexed.split("\x1f", 1)[1])
                state = self.state.get(partition, key, RecipientState)
                if state is not None:
                    kept.append((indexed, max(state.last_ts, meta.watermark)))
                return False

            self.stats.expired += index.sweep(
                meta.cursor, meta.watermark, r.idle, r.sweep_budget, get, delete, expire_or_keep
            )
            for indexed, ts in kept:
                index.touch(indexed, ts, meta.cursor)
            index.flush(get, put)
            self.state.put(partition, recipient_meta_key(partition), meta)
        return self.state.flush(partition)

    def read(self, partition: int, recipient: str) -> RecipientState | None:
        return self.state.get(partition, recipient_key(recipient), RecipientState)

    def revoke(self, partition: int) -> None:
        self.state.discard(partition)
        self._index.pop(partition, None)
