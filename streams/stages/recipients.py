"""Stage 3: per-recipient state (keyed by recipient: phone number, else BSUID)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from streams.core.expiry import ExpiryIndex, SweepCursor
from streams.core.facts import RecipientFactKind, decode_batch
from streams.core.recipients import RecipientState, apply_fact, is_idle
from streams.core.signals import ResendSignal, SignalBatch, recipient_digest
from streams.state import KeyValue, WriteBack, decode

DAY = 86_400
#: Resolution of the cool-down gauge: a cool-down's end is rounded up to this many seconds.
COOLDOWN_SLOT = 300


class RecipientMeta(msgspec.Struct, array_like=True, gc=False):
    watermark: int = 0
    cursor: SweepCursor = msgspec.field(default_factory=SweepCursor)
    # For the scrape-time gauges, kept with the partition's state so they survive restarts:
    opted_out: int = 0  # recipients of this partition now opted out
    # 131049 cool-downs by the slot in which they end (see cooldown_slot); slots at or before
    # the watermark are over and pruned at flush, so at most a day of slots is kept.
    cooldown_slots: dict[int, int] = {}

    def in_cooldown(self) -> int:
        """Recipients whose last 131049 is less than 24 h before the watermark."""
        return sum(
            n for slot, n in self.cooldown_slots.items() if slot * COOLDOWN_SLOT > self.watermark
        )


def cooldown_slot(last_limit_failure: int) -> int:
    """The slot in which a cool-down (24 h after the last 131049) ends, rounded up."""
    return -(-(last_limit_failure + DAY) // COOLDOWN_SLOT)


#: Fact kinds that can change the opted-out flag or the last 131049 (the gauges above).
_GAUGE_KINDS = frozenset(
    {
        RecipientFactKind.OPT_OUT_FAILURE,
        RecipientFactKind.PREFERENCE_STOP,
        RecipientFactKind.PREFERENCE_RESUME,
        RecipientFactKind.LIMIT_FAILURE,
    }
)


def _gauge_view(state: RecipientState | None) -> tuple[bool, int]:
    return (state.opted_out, state.last_limit_failure) if state is not None else (False, 0)


def _track_gauges(meta: RecipientMeta, before: tuple[bool, int], state: RecipientState) -> None:
    """Move the partition's gauge counts for one recipient's transition."""
    was_opted_out, was_limit = before
    meta.opted_out += state.opted_out - was_opted_out
    limit = state.last_limit_failure
    if limit != was_limit:
        slots = meta.cooldown_slots
        if was_limit:
            old = cooldown_slot(was_limit)
            n = slots.get(old, 0)
            if n > 1:
                slots[old] = n - 1
            elif n == 1:
                del slots[old]
        new = cooldown_slot(limit)
        slots[new] = slots.get(new, 0) + 1


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
    premature_resends: int = 0


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
        self._resends: list[ResendSignal] = []
        self._changed: dict[int, set[str]] = {}
        self._max_ts = 0

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
            last_limit = state.last_limit_failure if state is not None else 0
            gauge_before = _gauge_view(state) if fact.kind in _GAUGE_KINDS else None
            state, changed = apply_fact(state, fact, self.retention.windows)
            if (
                changed
                and fact.kind == RecipientFactKind.MARKETING_ATTEMPT
                and last_limit
                and 0 < fact.timestamp - last_limit < DAY
                and fact.template
            ):
                self.stats.premature_resends += 1
                self._resends.append(
                    ResendSignal(fact.template, fact.timestamp, recipient_digest(fact.recipient))
                )
            self._max_ts = max(self._max_ts, fact.timestamp)
            if not changed:
                self.stats.replays += 1
                continue
            self.stats.applied += 1
            self._changed.setdefault(partition, set()).add(fact.recipient)
            meta.watermark = max(meta.watermark, fact.timestamp)
            self.state.put(partition, key, state)
            if gauge_before is not None:
                _track_gauges(meta, gauge_before, state)
            index.touch("r\x1f" + fact.recipient, state.last_ts, meta.cursor)
        self.state.put(partition, recipient_meta_key(partition), meta)

    def flush(self, partition: int) -> int:
        index = self._index.get(partition)
        if index is not None:
            meta = self.meta(partition)
            r = self.retention
            view = self.state.view(partition)
            # Opted-out recipients stay indexed under their day; the sweep runs at the shorter
            # idle retention and is_idle() decides; a kept key is re-indexed below.
            kept: list[tuple[str, int]] = []

            def expire_or_keep(indexed: str) -> bool:
                key = recipient_key(indexed.split("\x1f", 1)[1])
                state = self.state.get(partition, key, RecipientState)
                if state is None:
                    return False
                if is_idle(state, meta.watermark, r.idle, r.opted_out):
                    meta.opted_out -= state.opted_out
                    self.state.delete(partition, key)
                    return True
                kept.append((indexed, max(state.last_ts, meta.watermark)))
                return False

            self.stats.expired += index.sweep(
                meta.cursor,
                meta.watermark,
                r.idle,
                r.sweep_budget,
                view.get,
                view.delete,
                expire_or_keep,
            )
            for indexed, ts in kept:
                index.touch(indexed, ts, meta.cursor)
            index.flush(view.get, view.put)
            over = [slot for slot in meta.cooldown_slots if slot * COOLDOWN_SLOT <= meta.watermark]
            for slot in over:
                del meta.cooldown_slots[slot]
            self.state.put(partition, recipient_meta_key(partition), meta)
        return self.state.flush(partition)

    def changed_advice(
        self, partition: int, advise: Callable[[RecipientState, str, int], tuple[str, bytes]]
    ) -> list[tuple[str, bytes]]:
        """(recipient, advice record) for recipients whose advice changed in this batch.

        ``advise(state, recipient, now)`` returns the advice's signature (what a sender acts on)
        and its encoded record; a record is published only when the signature changed.
        Call before :meth:`flush` (it updates the states' last published signature).
        """
        out = []
        now = self.meta(partition).watermark
        for recipient in sorted(self._changed.pop(partition, ())):
            key = recipient_key(recipient)
            state = self.state.get(partition, key, RecipientState)
            if state is None:
                continue
            signature, record = advise(state, recipient, now)
            if signature != state.advice_signature:
                state.advice_signature = signature
                self.state.put(partition, key, state)
                out.append((recipient, record))
        return out

    def drain_signals(self) -> SignalBatch | None:
        if not self._resends:
            return None
        batch = SignalBatch(resends=self._resends, max_ts=self._max_ts)
        self._resends = []
        return batch

    def gauges(self, partitions: list[int]) -> tuple[int, int]:
        """(recipients in a 131049 cool-down, recipients opted out) on ``partitions``, from
        each partition's flushed meta record: one read per partition, no scan."""
        in_cooldown = opted_out = 0
        for p in partitions:
            raw = self.state.kv.get(p, recipient_meta_key(p))
            if raw is not None:
                meta = decode(raw, RecipientMeta)
                in_cooldown += meta.in_cooldown()
                opted_out += meta.opted_out
        return in_cooldown, opted_out

    def read(self, partition: int, recipient: str) -> RecipientState | None:
        return self.state.get(partition, recipient_key(recipient), RecipientState)

    def revoke(self, partition: int) -> None:
        self.state.discard(partition)
        self._changed.pop(partition, None)
        self._index.pop(partition, None)
