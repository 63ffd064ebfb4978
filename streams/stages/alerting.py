"""Stage 4: spike detection and alert lifecycle over the signals of the counting stages.

One partition, one owner: the worker that owns partition 0 of ``<app>-signals`` evaluates every
rule and writes notifications to the alerts topic.

Saved in the ``alerting`` table (partition 0) by :meth:`AlertingStage.save`, which writes each
changed key once and is called once per batch, after the batch's notifications are in Kafka:

- ``stage``: the alert book (which alerts fire, since when, what was notified) with the
  evaluation clock (last minute evaluated, last boundary of the minute in progress checked,
  newest event time, partition watermarks), in one record so they never disagree. Saved after
  the notifications are written, so a crash in between sends them again after the restart (at
  least once) rather than never.
- the spike detector's minute counts (its 24 h baselines): one record per scope and hour
  (``d``), an index of the scopes of each hour (``dh``) and the list of hours (``detector``).
  Records stay small (at most 60 minutes each) and only changed hours are written. Every hour
  record remembers the position (signal offset, index) of the last bucket delta it absorbed, so
  signals replayed after a crash are counted once; the index is written before the records it
  lists, so a crash between the two only leaves an indexed record missing (empty), which the
  replay fills.

The event-driven rules and resend storms are saved in the ``stage`` record too (small; signals
replayed after a crash re-apply the same events, and counts of error bursts can count a
replayed signal twice: at least once).

Time is event time: the low watermark of the messages partitions (the slowest partition that is
still receiving data decides, so no minute is judged before every partition delivered it; a
partition quiet for ``idle_s`` of wall time stops holding time back), advanced by the wall clock
while no newer event arrives (so an incident still resolves when traffic stops). Every rule is
evaluated once per minute of that time, on the complete minutes; in between, the spike detector
checks the minute in progress every ``partial_every`` seconds (at fixed boundaries of event time,
``m * 60 + 15``, ``+ 30``, ``+ 45``: each once, the last one passed when time jumps over several),
and a clear positive fires at once, at the boundary's time (see :mod:`streams.core.detector`).
A restart checks no saved boundary again; a crash between sending and saving checks it again
(at least once; an alert the saved book has firing is not notified again).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import msgspec

from streams.core.alerts import (
    AlertBook,
    AlertPolicy,
    AlertState,
    BookState,
    Notification,
    Scope,
)
from streams.core.detector import DetectorConfig, HourRecord, SpikeDetector, scope_of_bucket
from streams.core.immediate import (
    ImmediateRules,
    ImmediateState,
    ResendStormRule,
    TemplateQualityChange,
    TemplateStatusChange,
)
from streams.core.signals import SignalBatch
from streams.state import KeyValue, decode, encode

log = logging.getLogger(__name__)

PARTITION = 0  # the alerting table has one partition
STAGE_KEY = b"stage"
LEGACY_BOOK_KEY = b"book"  # the alert book alone, as saved before the stage record
HOURS_KEY = b"detector"


def hour_index_key(hour: int) -> bytes:
    return b"dh\x1f%d" % hour


def hour_key(scope: Scope, hour: int) -> bytes:
    return f"d\x1f{hour}\x1f{scope.kind}\x1f{scope.sender}\x1f{scope.key}".encode()


class StageState(msgspec.Struct, gc=False):
    """The alert book and the evaluation clock, saved together."""

    book: BookState
    last_minute: int = -1
    event_time: int = 0
    watermarks: dict[int, int] = {}
    #: the event-driven rules (template paused, quality, phone, account, error bursts) and
    #: resend storms: without them a restart would resolve what still fires
    rules: ImmediateState | None = None
    #: per input source of the bucket signals, the last input offset absorbed (a signal
    #: re-derived from a replayed input at or before it was counted already)
    absorbed: dict[int, int] = {}
    #: the event time (a boundary) of the last check of the minute in progress
    last_partial: int = -1


class AlertingStage:
    def __init__(
        self,
        detector: DetectorConfig | None = None,
        policy: AlertPolicy | None = None,
        clock: Callable[[], float] = time.time,
        idle_s: float = 10.0,
        partitions: int = 0,
    ) -> None:
        self.detector = SpikeDetector(detector)
        #: messages partitions that report watermarks: one that has not reported yet holds
        #: time back (at 0) until it has been quiet for ``idle_s``, so a partition whose first
        #: batch comes late is not judged after its minutes were already evaluated
        self.partitions = partitions
        self.immediate = ImmediateRules()
        self.storms = ResendStormRule()
        self.policy = policy
        self.book = AlertBook(policy)
        self.clock = clock
        self.event_time = 0
        self._event_time_at = 0.0  # wall clock when event_time last moved
        self._last_minute = -1
        self._last_partial = -1  # the boundary of the last check of the minute in progress
        self._first_minute = -1  # earliest bucket minute seen before the first evaluation
        self.signals = 0
        self.idle_s = idle_s
        self._marks: dict[int, tuple[int, float]] = {}  # partition -> (watermark, wall seen)
        self._absorbed: dict[int, int] = {}  # bucket signal source -> last input offset
        self._saved_stage = b""
        self._saved_index: dict[int, set[Scope]] = {}  # hour -> scopes, as saved
        self._saved_hours: set[int] = set()
        self._stale: set[int] = set()  # hours whose saved index lists records that are missing

    # -- saving and restoring ------------------------------------------------------------------

    def restore(self, kv: KeyValue) -> None:
        """Load what :meth:`save` wrote (an empty table leaves a fresh stage); the next save
        writes all of it again."""
        raw = kv.get(PARTITION, STAGE_KEY)
        if raw is not None:
            state = decode(raw, StageState)
            self.book = AlertBook(self.policy, state.book)
            self._last_minute, self.event_time = state.last_minute, state.event_time
            wall = self.clock()
            self._event_time_at = wall
            self._marks = {p: (mark, wall) for p, mark in state.watermarks.items()}
            if state.rules is not None:
                self.immediate.load(state.rules)
                self.storms.load(state.rules)
            self._absorbed = dict(state.absorbed)
            self._last_partial = state.last_partial
        else:
            legacy = kv.get(PARTITION, LEGACY_BOOK_KEY)
            if legacy:
                self.book = AlertBook.from_encoded_state(legacy, self.policy)
        hours = kv.get(PARTITION, HOURS_KEY)
        for hour in sorted(set(decode(hours, list[int])) if hours is not None else ()):
            index = kv.get(PARTITION, hour_index_key(hour))
            scopes = decode(index, list[Scope]) if index is not None else []
            loaded = self._saved_index[hour] = set()
            for scope in scopes:
                record = kv.get(PARTITION, hour_key(scope, hour))
                if record is not None:
                    self.detector.load(scope, hour, decode(record, HourRecord))
                    loaded.add(scope)
            self._stale.add(hour)  # its index is written again (see below)
        # What was loaded is written again by the first save (stage record, hour list, indexes
        # and hour records): the local store can be ahead of the changelog, since a worker
        # killed after a save's local writes and before Faust's producer sent their changelog
        # records leaves them out of the changelog for good otherwise (a partition restored
        # elsewhere would lose its baselines). Saving once after a restart repairs that.
        self._saved_stage, self._saved_hours = b"", set()
        self.detector.touch_all()

    def save(self, kv: KeyValue) -> int:
        """Write what changed since the last save (each key once); returns the writes."""
        writes = 0
        changed, dropped = self.detector.take_changes()
        for scope, hour in dropped:
            kv.delete(PARTITION, hour_key(scope, hour))
            writes += 1
        index = self._saved_index
        touched, self._stale = self._stale, set()
        for scope, hour in dropped:
            if scope in index.get(hour, ()):
                index[hour].discard(scope)
                touched.add(hour)
        for scope, hour in changed:
            if scope not in index.setdefault(hour, set()):
                index[hour].add(scope)
                touched.add(hour)
        for hour in sorted(touched):  # the index before the records it lists
            if index.get(hour):
                kv.set(PARTITION, hour_index_key(hour), encode(sorted(index[hour], key=str)))
            else:
                kv.delete(PARTITION, hour_index_key(hour))
                index.pop(hour, None)
            writes += 1
        if set(index) != self._saved_hours:
            kv.set(PARTITION, HOURS_KEY, encode(sorted(index)))
            self._saved_hours = set(index)
            writes += 1
        for (scope, hour), record in changed.items():
            kv.set(PARTITION, hour_key(scope, hour), encode(record))
            writes += 1
        rules = ImmediateState()
        self.immediate.export(rules)
        self.storms.export(rules)
        stage = encode(
            StageState(
                self.book.state,
                self._last_minute,
                self.event_time,
                {p: mark for p, (mark, _) in self._marks.items()},
                rules,
                self._absorbed,
                self._last_partial,
            )
        )
        if stage != self._saved_stage:
            kv.set(PARTITION, STAGE_KEY, stage)
            self._saved_stage = stage
            writes += 1
        return writes

    # -- processing ----------------------------------------------------------------------------

    def handle(self, batch: SignalBatch, offset: int | None = None) -> None:
        """Absorb one signal batch; with its ``offset`` in the signals topic, a batch replayed
        after a restart adds its bucket deltas once."""
        self.signals += 1
        absorbed = dict(self._absorbed)  # as before this batch
        for i, b in enumerate(batch.buckets):
            if b.source >= 0:
                if b.upto <= absorbed.get(b.source, -1):
                    continue  # re-derived from a replayed input whose signal came through
                if b.upto > self._absorbed.get(b.source, -1):
                    self._absorbed[b.source] = b.upto
            if self._last_minute < 0 and (self._first_minute < 0 or b.minute < self._first_minute):
                self._first_minute = b.minute
            attempts = b.counts.get("attempted", 0)
            errors = {k[7:]: v for k, v in b.counts.items() if k.startswith("failed.")}
            position = None if offset is None else (offset, i)
            self.detector.add(scope_of_bucket(b.dim, b.key), b.minute, attempts, errors, position)
        for t in batch.templates:
            if t.field == "status":
                self.immediate.observe(
                    TemplateStatusChange(t.name, t.value, t.ts, t.reason, t.disabled_at)
                )
            elif t.field == "quality":
                self.immediate.observe(TemplateQualityChange(t.name, t.value, t.ts))
        for error in batch.errors:
            self.immediate.observe(error)
        for quality in batch.phone_quality:
            self.immediate.observe(quality)
        for account in batch.accounts:
            self.immediate.observe(account)
        for r in batch.resends:
            self.storms.record(r.template, "", r.ts, r.recipient_digest)
        wall = self.clock()
        if len(self._marks) < self.partitions:
            for partition in range(self.partitions):
                self._marks.setdefault(partition, (0, wall))
        for partition, mark in batch.watermarks.items():
            self._marks[partition] = (mark, wall)
        if batch.max_ts > self.event_time:
            self.event_time = batch.max_ts
            self._event_time_at = wall

    def now(self) -> int:
        """The low watermark of the active partitions; when all are quiet, the newest event
        time advanced by the wall clock since it arrived."""
        if not self.event_time:
            return 0
        wall = self.clock()
        active = [mark for mark, seen in self._marks.values() if wall - seen < self.idle_s]
        if active:
            return min(active)
        return self.event_time + max(0, int(wall - self._event_time_at - self.idle_s))

    def evaluate(self) -> list[Notification]:
        """Notifications due at the current time: one evaluation per minute of event time that
        passed since the last one (at most an hour's worth, when a replay jumps ahead). The
        first evaluation starts at the earliest minute seen, so a backlog that arrives in one
        batch is judged minute by minute as live traffic would be. Then the minute in progress
        is checked at the last of its boundaries (every ``partial_every`` seconds) that time
        passed, unless that boundary was checked already."""
        now = self.now()
        if not now:
            return []
        minute = now // 60
        out: list[Notification] = []
        if minute > self._last_minute:
            start = self._last_minute + 1 if self._last_minute >= 0 else self._first_minute
            first = max(start, minute - 60) if start >= 0 else minute
            self._last_minute = minute
            for m in range(first, minute + 1):
                at = m * 60
                for evaluation in (
                    self.detector.evaluate(at),
                    self.immediate.evaluate(at),
                    self.storms.evaluate(at),
                ):
                    out.extend(self.book.apply(evaluation))
        out.extend(self._evaluate_partial(now))
        return out

    def _evaluate_partial(self, now: int) -> list[Notification]:
        """The spike detector's check of the minute in progress at its last boundary before
        ``now`` (event time ``m * 60 + j * partial_every``): positives of alerts not firing yet
        fire at once, at the boundary's time; nothing else changes (no clears, no resolves)."""
        every = self.detector.config.partial_every
        minute, elapsed = divmod(now, 60)
        if every <= 0 or elapsed < every or minute != self._last_minute:
            return []  # before the first boundary, or time went back to a minute judged whole
        boundary = minute * 60 + elapsed // every * every
        if boundary <= self._last_partial:
            return []
        self._last_partial = boundary
        evaluation = self.detector.evaluate_partial(now, at=boundary)
        alerts = self.book.state.alerts
        findings = tuple(
            f
            for f in evaluation.findings
            if (a := alerts.get(f.key)) is None or a.state is not AlertState.FIRING
        )
        if not findings:
            return []
        return self.book.apply(msgspec.structs.replace(evaluation, findings=findings))
