"""Stage 4: the alert rules over the signals of the counting stages, judged on event time.

One partition, one owner: the worker that owns partition 0 of ``<app>-signals`` evaluates every
rule and writes notifications to the alerts topic.

**Judgments are a function of the data, not of its arrival.** The stage evaluates at fixed
points of event time, every :data:`~streams.core.eventtime.GRID` seconds: at each whole minute
every rule (spike detector on the complete minutes, standing conditions, resend storms,
immediate rules), in between the spike detector's check of the minute in progress. Point ``g``
is evaluated once every input partition has been read past ``g`` (the *clock*, below), and it
uses exactly the counts whose inputs have marks before ``g`` (``BucketSignal.visible``, see
:mod:`streams.core.eventtime`): counts that arrive ahead of their point wait for it in
``pending``. A backlog read in an hour, a day read live, two workers, a restart: the same
inputs give the same evaluations, so the same incidents at the same event-time minutes with the
same evidence. Event-driven rules (immediate, storms, standing) take each event at its own
time and say when their condition began from the data (``Finding.since``).

**The clock** is the lowest mark of the inputs still being read: for every messages partition
(from its reports, :class:`~streams.core.signals.PartitionReport`), the mark of every raw
webhook partition as of the facts it received and the mark of its send-log partition. Not
waited for: a raw partition stage 1 has read to its end and that has been quiet for
``idle_s`` (it says so), a send-log partition quiet for ``idle_s`` (for ``max_wait_s`` while
stage 1 is reading a webhook backlog: a send log produced after the webhooks is behind them
then, not absent), and any input that has reported nothing new for ``max_wait_s`` (a
stalled reader: alerts must not stop for good). When nothing is waited for, time is the newest
event time advanced by the wall clock (so incidents still resolve when traffic stops). An input
that was not waited for and then brings older data makes that data *late*: it is counted at
once, in its minute, and seen by every evaluation from then on; points already evaluated are
not evaluated again.

**Saved** in the ``alerting`` table (partition 0) through :class:`~streams.state.Snapshots`, so
a restart restores one whole save, never parts of two: the ``stage`` record (alert book, clock,
rules, signal positions), the spike detector's minute counts (one record per scope and hour,
an index per hour, the list of hours) and the pending counts (one record per evaluation point,
and their list). Signals at or before the last one saved are skipped when read again; counts
re-derived by the counting stages from inputs replayed after a crash are recognised by their
input offsets (``BucketSignal.source``/``upto``) and absorbed once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec

from streams.core.alerts import (
    AlertBook,
    AlertPolicy,
    AlertState,
    BookState,
    Evaluation,
    Finding,
    Notification,
    Scope,
    ScopeKind,
    Verdict,
)
from streams.core.catalog import ErrorClass
from streams.core.detector import RULE as SPIKE_RULE
from streams.core.detector import (
    DetectorConfig,
    HourRecord,
    MinuteTally,
    SpikeDetector,
    scope_of_bucket,
)
from streams.core.eventtime import GRID
from streams.core.immediate import (
    ImmediateRules,
    ImmediateState,
    ResendStormRule,
    TemplateQualityChange,
    TemplateStatusChange,
)
from streams.core.keys import (
    BOOK_KEY,
    HOURS_KEY,
    PENDING_KEY,
    RESOLVED_KEY,
    RULES_KEY,
    STAGE_KEY,
    STANDING_KEY,
    Dimension,
    hour_index_key,
    hour_key,
    pending_key,
    standing_hour_key,
)
from streams.core.ledger import UNKNOWN_TEMPLATE
from streams.core.signals import PartitionReport, SignalBatch
from streams.core.standing import StandingRule, StandingState
from streams.state import KeyValue, Snapshots, decode, encode

log = logging.getLogger(__name__)

PARTITION = 0  # the alerting table has one partition

#: A spike found late that would have fired up to this long before an incident about its alert
#: fired (that has resolved since) is that incident's episode, not a new one.
SAME_EPISODE_S = 1800

#: (dim, key, minute) of a minute bucket -> its counts by outcome
Cells = dict[tuple[str, str, int], dict[str, int]]
#: Dimensions whose names come from attribution (template ``unknown``, no campaign: not judged)
_ATTRIBUTED = (Dimension.TEMPLATE, Dimension.CAMPAIGN)


class Channel(msgspec.Struct, array_like=True, gc=False):
    """One input as a messages partition reads it: its mark, whether it is idle, and (not
    saved: wall clock) when it last changed."""

    mark: int = 0
    idle: bool = False


class StageState(msgspec.Struct, array_like=True, gc=False):
    """The clock and the signal positions (small; saved with every batch)."""

    #: the next evaluation point (-1: none yet), the newest event time seen
    next_point: int = -1
    event_time: int = 0
    #: messages partition -> raw partition (-1: its send-log partition) -> channel
    channels: dict[int, dict[int, Channel]] = {}
    raw_partitions: int = 0
    #: per input source of the bucket signals, the last input offset absorbed (a signal
    #: re-derived from a replayed input at or before it was counted already)
    absorbed: dict[int, int] = {}
    #: the offset of the last signal absorbed (read again after a restart: skipped)
    signal_offset: int = -1
    #: late counts not judged yet: scope -> the first minute they changed
    late: list[tuple[Scope, int]] = []


class Pending(msgspec.Struct, array_like=True, gc=False):
    """Counts that may be used from one evaluation point on."""

    cells: list[tuple[str, str, int, dict[str, int]]] = []
    us_paused: list[tuple[int, int]] = []  # (minute, recipient number)


LOG = -1  # the channel of a messages partition's send-log partition
_NOTHING_WAITED = 1 << 62  # a report that let time go on (every input read to its end)


class AlertingStage:
    def __init__(
        self,
        detector: DetectorConfig | None = None,
        policy: AlertPolicy | None = None,
        clock: Callable[[], float] = time.time,
        idle_s: float = 30.0,
        max_wait_s: float = 120.0,
        partitions: int = 0,
        recipient_partitions: int | None = None,
    ) -> None:
        self.detector = SpikeDetector(detector)
        #: messages partitions: each must report before time moves (or ``max_wait_s`` pass)
        self.partitions = partitions
        #: recipients partitions: each relays how far it applied each messages partition
        self.recipient_partitions = (
            partitions if recipient_partitions is None else recipient_partitions
        )
        self.immediate = ImmediateRules()
        self.storms = ResendStormRule()
        self.standing = StandingRule()
        self.policy = policy
        self.book = AlertBook(policy)
        self.clock = clock
        self.idle_s = idle_s
        self.max_wait_s = max_wait_s
        self.signals = 0
        self.late = 0  # counts that arrived after their evaluation point
        #: evaluation points judged, and points passed over with nothing to judge (_quiet_until)
        self.points_judged = self.points_skipped = 0
        self._late_taken = 0
        self.event_time = 0
        self._event_time_at = clock()  # wall clock when event_time last moved
        self._started = clock()
        self._next = -1  # the next evaluation point (-1: not started)
        self._channels: dict[int, dict[int, Channel]] = {}
        self._changed: dict[tuple[int, int], float] = {}  # (partition, input) -> wall clock
        #: messages partition -> stage 1 was reading a webhook backlog (as of its last report)
        self._backlog: dict[int, bool] = {}
        #: messages partition -> (report number, the event time it let the clock reach) of its
        #: reports the recipients stage has not relayed yet (and the last one it has)
        self._history: dict[int, list[tuple[int, int]]] = {}
        #: (recipients partition, messages partition) -> report number relayed
        self._relayed: dict[tuple[int, int], int] = {}
        self._relayed_at: dict[tuple[int, int], float] = {}  # ... -> wall clock it last moved
        self._raw_partitions = 0
        self._pending: dict[int, Pending] = {}
        self._pending_cells: dict[int, Cells] = {}
        self._absorbed: dict[int, int] = {}
        self._signal_offset = -1
        self._snapshots: Snapshots | None = None
        self._saved_index: dict[int, set[Scope]] = {}  # hour -> scopes, as saved
        self._saved_hours: set[int] = set()
        self._saved_points: set[int] = set()
        self._saved: dict[bytes, bytes] = {}  # key -> as last saved (small records)
        self._saved_resolved = 0
        self._last_resolved = ""
        self._dirty_points: set[int] = set()
        self._late: dict[Scope, int] = {}  # scope -> first minute with late counts
        self._late_first = self._late_last = 0.0  # wall clock of the first and newest of them

    # -- saving and restoring ------------------------------------------------------------------

    def restore(self, kv: KeyValue) -> None:
        """Load the last complete save (an empty table leaves a fresh stage); the next save
        writes all of it again (the local store can be ahead of the changelog)."""
        snapshots = self._snapshots = Snapshots(kv, PARTITION)
        snapshots.restore()
        wall = self.clock()
        raw = snapshots.get(STAGE_KEY)
        if raw is not None:
            state = decode(raw, StageState)
            self._next, self.event_time = state.next_point, state.event_time
            self._event_time_at = wall
            self._channels = {p: dict(ch) for p, ch in state.channels.items()}
            self._changed = {(p, i): wall for p, ch in self._channels.items() for i in ch}
            self._raw_partitions = state.raw_partitions
            self._absorbed = dict(state.absorbed)
            self._signal_offset = state.signal_offset
            # judged once no more came for idle_s after the restart (their wall times are gone)
            self._late = dict(state.late)
            self._late_first = self._late_last = wall if self._late else 0.0
        book = snapshots.get(BOOK_KEY)
        if book is not None:
            self.book = AlertBook(self.policy, decode(book, BookState))
        resolved = snapshots.get(RESOLVED_KEY)
        if resolved is not None:
            self.book.state.resolved = decode(resolved, list[Notification])
        rules = snapshots.get(RULES_KEY)
        if rules is not None:
            state_rules = decode(rules, ImmediateState)
            self.immediate.load(state_rules)
            self.storms.load(state_rules)
        standing = snapshots.get(STANDING_KEY)
        if standing is not None:
            saved = decode(standing, StandingState)
            us: dict[int, list[int]] = {}
            for us_hour in saved.hours:
                kept = snapshots.get(standing_hour_key(us_hour))
                us[us_hour] = decode(kept, list[int]) if kept is not None else []
            self.standing.load(StandingState(us, saved.capped))
        hours = snapshots.get(HOURS_KEY)
        for hour in sorted(set(decode(hours, list[int])) if hours is not None else ()):
            index = snapshots.get(hour_index_key(hour))
            for scope in decode(index, list[Scope]) if index is not None else []:
                record = snapshots.get(hour_key(scope, hour))
                if record is not None:
                    self.detector.load(scope, hour, decode(record, HourRecord))
                    self._saved_index.setdefault(hour, set()).add(scope)
        points = snapshots.get(PENDING_KEY)
        for point in decode(points, list[int]) if points is not None else []:
            record = snapshots.get(pending_key(point))
            if record is not None:
                pending = decode(record, Pending)
                self._pending[point] = pending
                self._pending_cells[point] = {(d, k, m): c for d, k, m, c in pending.cells}
                self._saved_points.add(point)
        self._started = wall
        # written again by the first save (see the docstring)
        self._saved_hours, self._saved_points, self._saved_index = set(), set(), {}
        self._saved, self._saved_resolved = {}, -1
        self.standing.touch_all()
        self._dirty_points = set(self._pending)
        self.detector.touch_all()

    def save(self, kv: KeyValue) -> int:
        """Write what changed since the last save as one snapshot; returns the writes."""
        snapshots = self._snapshots
        if snapshots is None or snapshots.kv is not kv:
            snapshots = self._snapshots = Snapshots(kv, PARTITION)
            snapshots.restore()
        self._save_detector(snapshots)
        for point in sorted(self._dirty_points):
            if point in self._pending:
                pending = self._pending[point]
                pending.cells = [
                    (d, k, m, c) for (d, k, m), c in self._pending_cells[point].items()
                ]
                snapshots.set(pending_key(point), encode(pending))
            elif point in self._saved_points:
                snapshots.delete(pending_key(point))
        self._dirty_points = set()
        if set(self._pending) != self._saved_points:
            snapshots.set(PENDING_KEY, encode(sorted(self._pending)))
            self._saved_points = set(self._pending)
        stage = StageState(
            self._next,
            self.event_time,
            self._channels,
            self._raw_partitions,
            self._absorbed,
            self._signal_offset,
            sorted(self._late.items(), key=lambda item: str(item[0])),
        )
        rules = ImmediateState()
        self.immediate.export(rules)
        self.storms.export(rules)
        book = self.book.state
        resolved, book.resolved = book.resolved, []  # saved apart: it changes seldom
        try:
            records = {STAGE_KEY: stage, BOOK_KEY: book, RULES_KEY: rules}
            self._save_changed(snapshots, {k: encode(v) for k, v in records.items()})
        finally:
            book.resolved = resolved
        if len(resolved) != self._saved_resolved or (
            resolved and resolved[-1].id != self._last_resolved
        ):
            snapshots.set(RESOLVED_KEY, encode(resolved))
            self._saved_resolved = len(resolved)
            self._last_resolved = resolved[-1].id if resolved else ""
        standing = self.standing.export()
        for hour in self.standing.take_changes():
            if hour in standing.hours:
                snapshots.set(standing_hour_key(hour), encode(standing.hours[hour]))
            else:
                snapshots.delete(standing_hour_key(hour))
        index = StandingState({h: [] for h in standing.hours}, standing.capped)
        self._save_changed(snapshots, {STANDING_KEY: encode(index)})
        return snapshots.commit()

    def _save_changed(self, snapshots: Snapshots, records: dict[bytes, bytes]) -> None:
        """Write the records whose encoding changed since the last save."""
        for key, encoded in records.items():
            if self._saved.get(key) != encoded:
                snapshots.set(key, encoded)
                self._saved[key] = encoded

    def _save_detector(self, snapshots: Snapshots) -> None:
        changed, dropped = self.detector.take_changes()
        index = self._saved_index
        touched: set[int] = set()
        for scope, hour in dropped:
            snapshots.delete(hour_key(scope, hour))
            if scope in index.get(hour, ()):
                index[hour].discard(scope)
                touched.add(hour)
        for scope, hour in changed:
            if scope not in index.setdefault(hour, set()):
                index[hour].add(scope)
                touched.add(hour)
        for hour in sorted(touched):
            if index.get(hour):
                snapshots.set(hour_index_key(hour), encode(sorted(index[hour], key=str)))
            else:
                snapshots.delete(hour_index_key(hour))
                index.pop(hour, None)
        if set(index) != self._saved_hours:
            snapshots.set(HOURS_KEY, encode(sorted(index)))
            self._saved_hours = set(index)
        for (scope, hour), record in changed.items():
            snapshots.set(hour_key(scope, hour), encode(record))

    # -- input ---------------------------------------------------------------------------------

    def handle(self, batch: SignalBatch, offset: int | None = None) -> None:
        """Absorb one signal batch; ``offset`` is its position in the signals topic (a batch
        at or before the last one saved was absorbed already)."""
        if offset is not None:
            if offset <= self._signal_offset:
                return
            self._signal_offset = offset
        self.signals += 1
        if batch.relayed:
            self._relay(batch.relayed)
        absorbed = dict(self._absorbed)  # as before this batch
        for b in batch.buckets:
            if b.source >= 0:
                if b.upto <= absorbed.get(b.source, -1):
                    continue  # re-derived from a replayed input whose signal came through
                if b.upto > self._absorbed.get(b.source, -1):
                    self._absorbed[b.source] = b.upto
            if b.dim in _ATTRIBUTED and b.key in (UNKNOWN_TEMPLATE, ""):
                continue  # not attributed (yet): no template or campaign to judge
            self._take(b.visible, (b.dim, b.key, b.minute), b.counts)
        for u in batch.us_paused:
            if self._next >= 0 and u.visible <= self._next - GRID:
                self.standing.record(u.minute, u.recipient)
            else:
                self._pending_at(u.visible).us_paused.append((u.minute, u.recipient))
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
            self.storms.record(r.template, r.sender, r.ts, r.recipient_digest, r.campaign, r.send)
        wall = self.clock()
        for report in batch.reports:
            self._report(report, wall)
        marks = (c.mark for channels in self._channels.values() for c in channels.values())
        newest = max(batch.max_ts, max(marks, default=0))
        if newest > self.event_time:
            self.event_time = newest
            self._event_time_at = wall

    def _take(self, visible: int, cell: tuple[str, str, int], counts: dict[str, int]) -> None:
        """Counts usable from point ``visible``: now if that point was evaluated (late), else
        when it is."""
        if self._next >= 0 and visible <= self._next - GRID:
            self.late += 1
            self._add(cell, counts)
            scope, minute = scope_of_bucket(cell[0], cell[1]), cell[2]
            if minute < self._late.get(scope, minute + 1):
                self._late[scope] = minute
            wall = self.clock()
            self._late_first = self._late_first or wall
            self._late_last = wall
            return
        self._pending_at(visible)
        cells = self._pending_cells[visible]
        into = cells.get(cell)
        if into is None:
            cells[cell] = dict(counts)
        else:
            for outcome, n in counts.items():
                into[outcome] = into.get(outcome, 0) + n

    def _pending_at(self, point: int) -> Pending:
        pending = self._pending.get(point)
        if pending is None:
            pending = self._pending[point] = Pending()
            self._pending_cells[point] = {}
        self._dirty_points.add(point)
        return pending

    def _add(self, cell: tuple[str, str, int], counts: dict[str, int]) -> None:
        dim, key, minute = cell
        attempts = counts.get("attempted", 0)
        errors = {k[7:]: v for k, v in counts.items() if k.startswith("failed.")}
        self.detector.add(scope_of_bucket(dim, key), minute, attempts, errors)

    def _relay(self, relayed: dict[int, dict[int, int]]) -> None:
        wall = self.clock()
        for r, sources in relayed.items():
            for p, seq in sources.items():
                if seq > self._relayed.get((r, p), 0):
                    self._relayed[(r, p)] = seq
                    self._relayed_at[(r, p)] = wall

    def _report(self, report: PartitionReport, wall: float) -> None:
        channels = self._channels.setdefault(report.partition, {})
        self._raw_partitions = max(self._raw_partitions, report.raw_partitions)
        idle = set(report.idle)
        self._backlog[report.partition] = bool(report.behind)
        now = {**{r: Channel(m, r in idle) for r, m in report.marks.items()}}
        if report.log_mark >= 0 or LOG not in channels:
            # -1: no send-log record read since the partition's reader took it: the mark this
            # stage has stands (nothing read yet when it has none)
            now[LOG] = Channel(max(report.log_mark, 0), False)
        for source, channel in now.items():
            if channels.get(source) != channel:
                channels[source] = channel
                self._changed[(report.partition, source)] = wall
        if report.seq:
            waited = self._waited(report.partition, channels, wall)
            reached = min(waited) if waited else _NOTHING_WAITED
            self._history.setdefault(report.partition, []).append((report.seq, reached))

    # -- time ----------------------------------------------------------------------------------

    def now(self) -> int:
        """The event time every input has been read past (see the module docstring)."""
        wall = self.clock()
        waited: list[int] = []
        for p in range(self.partitions):
            channels = self._channels.get(p)
            if channels is None:
                if wall - self._started < self.max_wait_s:
                    return 0  # a messages partition has not reported yet
                continue
            waited += self._waited(p, channels, wall)
        if waited:
            return min(min(waited), self._relayed_to(wall))
        if not self.event_time:
            return 0
        # every input read to its end: time goes on as the wall clock does since the last event
        now = self.event_time + max(0, int(wall - self._event_time_at))
        return min(now, self._relayed_to(wall))

    def _waited(self, p: int, channels: dict[int, Channel], wall: float) -> list[int]:
        """The marks of messages partition ``p``'s inputs the clock waits for."""
        waited: list[int] = []
        for source in [*range(self._raw_partitions), LOG]:
            channel = channels.get(source)
            changed = self._changed.get((p, source), self._started)
            quiet_log = self.max_wait_s if self._backlog.get(p) else self.idle_s
            if wall - changed >= (quiet_log if source == LOG else self.max_wait_s):
                continue  # a quiet send log, or a stalled reader
            if channel is None:
                waited.append(0)  # not read yet
            elif not channel.idle:
                waited.append(channel.mark)
        return waited

    def _relayed_to(self, wall: float) -> int:
        """How far the clock may go by what the recipients stage has applied: the resend
        signals of the facts a messages partition sent before a report come after the report
        (they go through the recipients stage), so time reaches what a report allowed once
        every recipients partition has relayed it (one that relayed nothing new for
        ``max_wait_s`` is not waited for: a stalled reader)."""
        bound = _NOTHING_WAITED
        for p, history in self._history.items():
            relayed = min(
                (
                    self._relayed.get((r, p), 0)
                    for r in range(self.recipient_partitions)
                    if wall - self._relayed_at.get((r, p), self._started) < self.max_wait_s
                ),
                default=history[-1][0],
            )
            applied = [i for i, (seq, _) in enumerate(history) if seq <= relayed]
            if applied:
                del history[: applied[-1]]  # the last relayed report is kept
            if history[-1][0] <= relayed:
                continue  # every report relayed
            bound = min(bound, history[0][1] if applied else 0)
        return bound

    # -- evaluation ----------------------------------------------------------------------------

    def evaluate(self) -> list[Notification]:
        """Notifications of every evaluation point the clock has passed, in order."""
        now = self.now()
        if self._next < 0:
            first = min(self._pending) // 60 * 60 if self._pending else 0
            if not first or now < first:
                return []
            self._next = first  # the minute of the first counts (every earlier one is here)
        out: list[Notification] = []
        while self._next <= now:
            point = self._quiet_until(self._next, now)
            if point > self._next:
                self.points_skipped += (point - self._next) // GRID
                self._next = point
            self.points_judged += 1
            self._release(point)
            if point % 60 == 0:
                out.extend(self._evaluate_minute(point))
            else:
                out.extend(self._evaluate_partial(point))
            self._next = point + GRID
        if self._late:  # late counts with no minute to judge yet: judged at the last point
            out.extend(self._judge_late(self._next - GRID))
        return out

    def _quiet_until(self, point: int, now: int) -> int:
        """The first point from ``point`` on (up to ``now``) that could judge anything: points
        before it would change nothing (no counts kept or released, no alert or incident open,
        no event or resend before it, no late counts), so they are passed over. Without this,
        one old status (a trusted timestamp years back) as the first input costs one
        evaluation per 15 seconds up to now: millions, minutes of CPU with the loop blocked."""
        if self._late or not self.detector.idle or not self.book.idle:
            return point
        until = min(self._pending, default=now)
        until = min(until, now, self.immediate.first_time(), self.storms.first_time())
        until -= until % GRID
        return until if until > point else point

    def _release(self, point: int) -> None:
        for p in sorted(p for p in self._pending if p <= point):
            for cell, counts in self._pending_cells.pop(p).items():
                self._add(cell, counts)
            for minute, recipient in self._pending.pop(p).us_paused:
                self.standing.record(minute, recipient)
            self._dirty_points.add(p)

    def _evaluate_minute(self, at: int) -> list[Notification]:
        out = self._judge_late(at)
        watch = {
            key
            for key, record in self.book.state.alerts.items()
            if record.finding.rule == SPIKE_RULE and record.state is AlertState.FIRING
        }
        spikes = self._unexplained(self.detector.evaluate(at, watch))
        for evaluation in (
            spikes,
            self.standing.evaluate(at, self.detector),
            self.immediate.evaluate(at),
            self.storms.evaluate(at),
        ):
            out.extend(self.book.apply(evaluation))
        return out

    def _unexplained(self, evaluation: Evaluation) -> Evaluation:
        """The spike evaluation without the 131049 positives that premature resends in their
        window account for: a retry job's campaign failing again is the resend storm's doing,
        and the storm's incident names it. An alert already firing keeps its positives
        (nothing sent is taken back)."""
        alerts = self.book.state.alerts
        kept: list[Finding] = []
        explained = False
        for f in evaluation.findings:
            if (
                f.verdict is Verdict.POSITIVE
                and f.error_class is ErrorClass.PER_USER_MARKETING_LIMIT
                and ((a := alerts.get(f.key)) is None or a.state is not AlertState.FIRING)
            ):
                end = f.since if f.since is not None else evaluation.at
                removed = self.storms.resends_in(f.scope, end - f.evidence.window_seconds, end)
                if self.detector.explained_by(f, removed):
                    explained = True
                    continue
            kept.append(f)
        if not explained:
            return evaluation
        return msgspec.structs.replace(evaluation, findings=tuple(kept))

    def _judge_late(self, at: int) -> list[Notification]:
        """Counts that arrived after their minutes were judged (an input the clock stopped
        waiting for, a send log later than ``idle_s``): the minutes they changed are judged
        again for their scopes, and a spike they reveal fires now, with the time it would have
        fired (``since``); nothing already sent is taken back. They are judged once no more
        came for ``idle_s`` (a late send log reaches the partitions at different speeds: judged
        half-read, the spike would show later than it was), or after ``max_wait_s``."""
        wall = self.clock()
        if not self._late or (
            wall - self._late_last < self.idle_s and wall - self._late_first < self.max_wait_s
        ):
            return []  # late counts still coming in: judged once they all are (or waited long)
        late, self._late = self._late, {}
        self._late_first = 0.0
        alerts = self.book.state.alerts
        findings: list[Finding] = []
        for scope, minute in sorted(late.items(), key=lambda item: str(item[0])):
            for finding in self.detector.judge_again(scope, minute + 1, at // 60 - 1):
                record = alerts.get(finding.key)
                if (record is not None and record.state is AlertState.FIRING) or self._told(
                    finding
                ):
                    continue
                detail = "found late: its counts arrived after their minutes were judged"
                evidence = msgspec.structs.replace(finding.evidence, detail=detail)
                findings.append(msgspec.structs.replace(finding, evidence=evidence))
        evaluation = self._unexplained(
            Evaluation(at=at, rules=frozenset(), findings=tuple(findings))
        )
        if not evaluation.findings:
            return []
        return self.book.apply(evaluation)

    def _told(self, finding: Finding) -> bool:
        """Whether a resolved incident already told of the spike ``finding`` found late: one
        naming its alert (scope and class) that fired less than :data:`SAME_EPISODE_S` after
        the spike would have and resolved after that: the same episode, seen on the counts
        known then. A scope it did not name is news (the template behind a country's spike)."""
        since = finding.since if finding.since is not None else 0
        return any(
            n.since - SAME_EPISODE_S <= since <= n.at
            and any(s.key == finding.key for s in (n.headline, *n.related))
            for n in self.book.state.resolved
        )

    def _evaluate_partial(self, at: int) -> list[Notification]:
        """The spike detector's check of the minute in progress at ``at``: positives of alerts
        not firing yet fire at once; nothing else changes (no clears, no resolves)."""
        every = self.detector.config.partial_every
        if every <= 0 or (at % 60) % every:
            return []
        evaluation = self.detector.evaluate_partial(at)
        alerts = self.book.state.alerts
        evaluation = self._unexplained(evaluation)
        findings = tuple(
            f
            for f in evaluation.findings
            if (a := alerts.get(f.key)) is None or a.state is not AlertState.FIRING
        )
        if not findings:
            return []
        return self.book.apply(msgspec.structs.replace(evaluation, findings=findings))

    # -- views -----------------------------------------------------------------------------

    @staticmethod
    def saved_book(kv: KeyValue) -> tuple[BookState, int]:
        """The alert book and the event time judged, as last saved in ``kv`` (read by a worker
        that does not run the stage)."""
        snapshots = Snapshots(kv, PARTITION)
        snapshots.restore()
        raw = snapshots.get(BOOK_KEY)
        book = decode(raw, BookState) if raw is not None else BookState()
        resolved = snapshots.get(RESOLVED_KEY)
        if resolved is not None:
            book.resolved = decode(resolved, list[Notification])
        clock = snapshots.get(STAGE_KEY)
        next_point = decode(clock, StageState).next_point if clock is not None else -1
        return book, max(0, next_point - GRID)

    def progress(self) -> dict[str, object]:
        """The clock for operators (``/v1/health``): how far it judged and what it waits for."""
        wall = self.clock()
        waiting: list[dict[str, Any]] = []
        for p in range(self.partitions):
            channels = self._channels.get(p, {})
            for source in [*range(self._raw_partitions), LOG]:
                channel = channels.get(source)
                changed = self._changed.get((p, source), self._started)
                quiet = wall - changed >= (self.idle_s if source == LOG else self.max_wait_s)
                if channel is None or not (channel.idle or quiet):
                    waiting.append(
                        {
                            "messages_partition": p,
                            "input": "send_log" if source == LOG else f"raw/{source}",
                            "mark": channel.mark if channel is not None else None,
                        }
                    )
        return {
            "evaluated": self.evaluated or None,
            "now": self.now() or None,
            "event_time": self.event_time or None,
            "pending_points": len(self._pending),
            "points_judged": self.points_judged,
            "points_skipped": self.points_skipped,
            "late_counts": self.late,
            "waiting_for": sorted(waiting, key=lambda w: w["mark"] or 0)[:10],
        }

    @property
    def evaluated(self) -> int:
        """The last evaluation point judged (0: none yet)."""
        return self._next - GRID if self._next >= 0 else 0

    def take_late(self) -> int:
        """Late counts since the last call (for a metric)."""
        late, self._late_taken = self.late - self._late_taken, self.late
        return late

    def totals(self, scope: Scope) -> MinuteTally:
        """Sends and errors of ``scope`` absorbed so far: judged already, or waiting for their
        evaluation point (the account: its senders)."""
        tally = self.detector.totals(scope)
        errors = dict(tally.errors)
        attempts = tally.attempts
        for cells in self._pending_cells.values():
            for (dim, key, _), counts in cells.items():
                bucket_scope = scope_of_bucket(dim, key)
                if bucket_scope == scope or (
                    scope.kind is ScopeKind.ACCOUNT and bucket_scope.kind is ScopeKind.SENDER
                ):
                    attempts += counts.get("attempted", 0)
                    for name, n in counts.items():
                        if name.startswith("failed.") and name[7:] in self.detector.classes:
                            cls = self.detector.classes[name[7:]]
                            errors[cls] = errors.get(cls, 0) + n
        return MinuteTally(attempts, errors)


__all__ = ["AlertingStage", "ScopeKind"]
