"""Stage 3: per-recipient state (keyed by recipient: phone number, else BSUID).

Besides each recipient's state (:mod:`streams.core.recipient_state`) the stage keeps, in the same
table partition, the retry plans of failed messages (:mod:`streams.core.retries`, one key per
plan, sorted by due time) and an event-time timer index of them. Timers run on the webhooks'
event time: per stage-2 partition, the newest status time of the facts it sent here, and the
slowest of those (a backlog read faster on one partition, or a send log ahead of the
webhooks, does not fire a plan before a resend that cancels it has arrived). When that time
passes a plan's due time plus ``RetryPolicy.settle_s``, the flush publishes the plan as
``due``. Nothing but facts advances it: when traffic stops, plans come due with the next
statuses. The index, its cursor and the marks are table state, so timers survive restarts and
move with the partition in a rebalance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import msgspec

from streams import native
from streams.core.advice import AdvicePolicy, advice_record
from streams.core.expiry import ExpiryIndex, SweepCursor
from streams.core.facts import RecipientFact, RecipientFactKind, decode_batch, source_topic
from streams.core.geography import is_us_recipient
from streams.core.keys import (
    RECIPIENT_INDEX,
    RETRY_TIMERS,
    plan_key,
    recipient_entry,
    recipient_key,
    recipient_of_entry,
    recipients_meta_key,
)
from streams.core.recipient_state import (
    Attempt,
    OpenPlan,
    RecipientState,
    Windows,
    apply_fact,
    idle_at,
    is_idle,
    premature_resends,
    wamid_hash,
)
from streams.core.retries import DEFAULT_POLICY as DEFAULT_RETRY_POLICY
from streams.core.retries import (
    PlanStatus,
    RetryPlan,
    RetryPolicy,
    cancels,
    make_plan,
    plan_record,
)
from streams.core.signals import MAX_SIGNAL_ITEMS, ResendSignal, SignalBatch, recipient_digest
from streams.stages import MESSAGES
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
    retries: SweepCursor = msgspec.field(default_factory=SweepCursor)  # the retry timers
    #: newest event time of the facts each stage-2 partition derived from webhook statuses;
    #: the retry timers run on the slowest (see RecipientStage.timer_clock)
    status_marks: dict[int, int] = {}

    def in_cooldown(self) -> int:
        """Recipients whose last 131049 is less than 24 h before the watermark."""
        return sum(
            n for slot, n in self.cooldown_slots.items() if slot * COOLDOWN_SLOT > self.watermark
        )


def timer_clock(meta: RecipientMeta, sources: int) -> int:
    """Event time of the partition's retry timers and expiry: the slowest stage-2
    partition's newest status time, once ``sources`` stage-2 partitions have sent statuses
    here (0 before: the first one to report would run ahead of the others). A send log ahead
    of the webhooks, or a backlog read faster on one partition, moves it no further than the
    slowest webhooks. ``sources`` 0: the newest fact of any kind (a stage not told how many
    stage-2 partitions there are)."""
    if not sources:
        return meta.watermark
    marks = meta.status_marks
    return min(marks.values()) if len(marks) >= sources else 0


def _advance(meta: RecipientMeta, fact: RecipientFact) -> None:
    """The partition's newest event time, and its stage-2 partition's newest status time."""
    ts = fact.timestamp
    meta.watermark = max(meta.watermark, ts)
    source = fact.position[0]
    if source_topic(source) == MESSAGES and ts > meta.status_marks.get(source, 0):
        meta.status_marks[source] = ts


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


def _track_gauges(meta: RecipientMeta, before: tuple[bool, int], after: tuple[bool, int]) -> None:
    """Move the partition's gauge counts for one recipient's transition ((opted out, last
    131049) before and after it)."""
    was_opted_out, was_limit = before
    opted_out, limit = after
    meta.opted_out += opted_out - was_opted_out
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


#: Fact kinds that are sends of a message: they cancel retry plans of the same template.
_SENDS = frozenset(
    {
        RecipientFactKind.MARKETING_ATTEMPT,
        RecipientFactKind.SEND_ATTEMPT,
        RecipientFactKind.MARKETING_DELIVERED,
    }
)
_FAILURES = frozenset({RecipientFactKind.LIMIT_FAILURE, RecipientFactKind.RETRYABLE_FAILURE})
#: A per-user limit failure without a code (a fact written before codes were carried).
_DEFAULT_LIMIT_CODE = 131049


@dataclass
class RecipientStats:
    facts: int = 0
    applied: int = 0
    replays: int = 0
    expired: int = 0
    premature_resends: int = 0
    plans: int = 0  # retry plans made (cancelled ones included)
    plans_due: int = 0
    plans_cancelled: int = 0


@dataclass(frozen=True, slots=True)
class RecipientRetention:
    windows: int = 7 * DAY  # failures (131049, 131026) are counted over 7 d
    idle: int = 8 * DAY  # a recipient without events is removed after this...
    engaged: int = 30 * DAY  # ... unless engagement (the last 30 d) still counts its events
    opted_out: int = 400 * DAY  # opt-outs are kept longer: they last until resume
    sweep_budget: int = 5_000

    @property
    def idle_args(self) -> tuple[int, int, int]:
        """The retentions :func:`is_idle` takes after the time."""
        return self.idle, self.opted_out, self.engaged

    def expires(self, state: RecipientState) -> int:
        """Event time from which ``state`` is idle (see :func:`is_idle`)."""
        if state.opted_out:
            return state.last_ts + self.opted_out
        return max(state.last_ts + self.idle, state.last_engagement + self.engaged)


#: A premature resend to signal: (template, ts, sender, campaign, wamid_hash) of its attempt.
_Signalled = tuple[str | None, int, str | None, str | None, int]


def _signalled(attempt: Attempt) -> _Signalled:
    return attempt.template, attempt.ts, attempt.sender, attempt.campaign, attempt.wamid_hash


DEFAULT_ADVICE = AdvicePolicy()

#: The retry timers' "day" (see streams.core.expiry): a minute.
_TIMER_UNIT = 60


class RecipientStage:
    def __init__(
        self,
        kv: KeyValue,
        retention: RecipientRetention = RecipientRetention(),
        retry_policy: RetryPolicy = DEFAULT_RETRY_POLICY,
        status_sources: int = 0,
        use_native: bool | None = None,
    ) -> None:
        """``status_sources``: the stage-2 (messages topic) partitions, each of which sends
        this stage statuses; expiry and retry timers wait for all of them (see
        :func:`timer_clock`; 0: they follow the newest fact). ``use_native``: apply facts
        other than failures in native code (default: when built, see :mod:`streams.native`)."""
        impl = native.implementations(use_native)
        #: the native steps (None: every fact and advice in Python)
        self._native_step: Any = impl.apply_recipient_fact
        self._native_advise: Any = impl.advise_recipient
        self.state = WriteBack(kv)
        self.status_sources = status_sources
        self.retention = retention
        self.windows = Windows(failures=retention.windows, engagement=retention.engaged)
        self.retry_policy = retry_policy
        self.stats = RecipientStats()
        self._index: dict[int, ExpiryIndex] = {}
        self._timers: dict[int, ExpiryIndex] = {}
        # outputs of the current batch, per partition (a revoked partition's are dropped: its
        # next owner handles those facts again)
        self._resends: dict[int, list[ResendSignal]] = {}
        #: the batch's resend signals reached MAX_SIGNAL_ITEMS: flush before handling more
        #: input (a resend storm read as a backlog)
        self.full = False
        self._resend_count = 0
        #: recipients partition -> messages partition -> last report number applied (and the
        #: ones not signalled yet)
        self._relayed: dict[int, dict[int, int]] = {}
        self._relayed_changed: dict[int, dict[int, int]] = {}
        self._changed: dict[int, set[str]] = {}
        self._retries: dict[int, list[tuple[str, bytes]]] = {}  # (wamid, record) to publish
        self._max_ts = 0

    def meta(self, partition: int) -> RecipientMeta:
        key = recipients_meta_key(partition)
        meta = self.state.get(partition, key, RecipientMeta)
        if meta is None:
            meta = RecipientMeta()
            self.state.put(partition, key, meta)
        return meta

    def _index_for(self, partition: int) -> ExpiryIndex:
        index = self._index.get(partition)
        if index is None:
            index = self._index[partition] = ExpiryIndex(RECIPIENT_INDEX, partition)
        return index

    def _timers_for(self, partition: int) -> ExpiryIndex:
        timers = self._timers.get(partition)
        if timers is None:
            timers = self._timers[partition] = ExpiryIndex(RETRY_TIMERS, partition, _TIMER_UNIT)
        return timers

    def handle_batch(self, partition: int, offset: int, raw: bytes) -> None:
        batch = decode_batch(raw)
        if batch.progress:
            self._relay(partition, batch.progress)
        meta = self.meta(partition)
        index = self._index_for(partition)
        step = self._native_step
        for fact in batch.recipients:
            self.stats.facts += 1
            self._max_ts = max(self._max_ts, fact.timestamp)
            if step is not None and fact.kind not in _FAILURES:
                self._apply_native(partition, fact, meta, index, step)
            else:
                self._apply(partition, fact, meta, index)
        self.state.put(partition, recipients_meta_key(partition), meta)
        if self._resend_count >= MAX_SIGNAL_ITEMS:
            self.full = True

    def _apply(
        self, partition: int, fact: RecipientFact, meta: RecipientMeta, index: ExpiryIndex
    ) -> None:
        """One fact, in Python."""
        key = recipient_key(fact.recipient)
        state = self.state.get(partition, key, RecipientState)
        if state is None and fact.kind == RecipientFactKind.SEND_ATTEMPT:
            return  # a non-marketing send matters only to a recipient already tracked
        gauge_before = _gauge_view(state) if fact.kind in _GAUGE_KINDS else None
        state, changed = apply_fact(state, fact, self.retention.windows, self.windows)
        if not changed:
            self.stats.replays += 1
            return
        self._applied(partition, fact, meta)
        resends, new = premature_resends(state, fact)
        self._signal_resends(partition, fact.recipient, new, [_signalled(a) for a in resends])
        if fact.kind in _FAILURES:
            self._plan(partition, state, fact, meta)
        elif fact.kind in _SENDS and state.plans:
            self._cancel(partition, state, fact.timestamp, fact.template, fact.wamid)
        if gauge_before is not None:
            _track_gauges(meta, gauge_before, _gauge_view(state))
        self._keep(partition, key, fact.recipient, meta, index, state)

    def _apply_native(
        self,
        partition: int,
        fact: RecipientFact,
        meta: RecipientMeta,
        index: ExpiryIndex,
        step: Any,
    ) -> None:
        """:meth:`_apply` of a fact other than a failure, its state change in native code."""
        key = recipient_key(fact.recipient)
        raw = self.state.get_raw(partition, key)
        if raw is None and fact.kind == RecipientFactKind.SEND_ATTEMPT:
            return  # a non-marketing send matters only to a recipient already tracked
        w = self.windows
        result = step(raw, fact, w.failures, w.engagement, w.attempts)
        if result is None:
            self.stats.replays += 1
            return
        encoded, last_ts, last_engagement, opted_out, plans, before, limit, resends, new = result
        self._applied(partition, fact, meta)
        self._signal_resends(partition, fact.recipient, new, resends)
        if fact.kind in _GAUGE_KINDS:
            _track_gauges(meta, before, (opted_out, limit))
        if plans and fact.kind in _SENDS:  # the plans it may cancel: in Python
            self.state.put_encoded(partition, key, encoded)
            state = self.state.get(partition, key, RecipientState)
            assert state is not None
            self._cancel(partition, state, fact.timestamp, fact.template, fact.wamid)
            self._keep(partition, key, fact.recipient, meta, index, state)
            return
        if self._expired(meta, opted_out, plans, last_ts, last_engagement):
            self.state.delete(partition, key)
            return
        self.state.put_encoded(partition, key, encoded)
        index.touch(recipient_entry(fact.recipient), last_ts, meta.cursor)

    def _applied(self, partition: int, fact: RecipientFact, meta: RecipientMeta) -> None:
        self.stats.applied += 1
        self._changed.setdefault(partition, set()).add(fact.recipient)
        _advance(meta, fact)

    def _keep(
        self,
        partition: int,
        key: bytes,
        recipient: str,
        meta: RecipientMeta,
        index: ExpiryIndex,
        state: RecipientState,
    ) -> None:
        """Write ``state`` back and index it, unless it is idle already."""
        if self._expired(
            meta, state.opted_out, bool(state.plans), state.last_ts, state.last_engagement
        ):
            self.state.delete(partition, key)
            return
        self.state.put(partition, key, state)
        index.touch(recipient_entry(recipient), state.last_ts, meta.cursor)

    def _expired(
        self,
        meta: RecipientMeta,
        opted_out: bool,
        open_plans: bool,
        last_ts: int,
        last_engagement: int,
    ) -> bool:
        """Whether a state just changed is idle (see :func:`is_idle`): facts older than the
        retention (a backlog, a late send log) would make a state the sweep already passed;
        it goes, as if they had come in time (the caller deletes it)."""
        clock = timer_clock(meta, self.status_sources)
        r = self.retention
        if idle_at(opted_out, open_plans, last_ts, last_engagement, clock, *r.idle_args):
            meta.opted_out -= opted_out
            return True
        return False

    def _relay(self, partition: int, progress: dict[int, int]) -> None:
        """Tell alerting (with the next signals, after this batch's resends) how far this
        partition has applied each messages partition's facts."""
        relayed = self._relayed.setdefault(partition, {})
        for source, seq in progress.items():
            if seq > relayed.get(source, 0):
                relayed[source] = seq
                self._relayed_changed.setdefault(partition, {})[source] = seq

    def _signal_resends(
        self, partition: int, recipient: str, new: int, resends: Iterable[_Signalled]
    ) -> None:
        """Tell the alerting stage of the premature resends a fact revealed (see
        :func:`premature_resends`: ``new`` of them not reported before)."""
        self.stats.premature_resends += new
        for template, ts, sender, campaign, sent_hash in resends:
            self._resend_count += 1
            self._resends.setdefault(partition, []).append(
                ResendSignal(
                    template or "unknown",
                    ts,
                    recipient_digest(recipient),
                    sender or "",
                    campaign or "",
                    sent_hash,
                )
            )

    # -- retry plans ----------------------------------------------------------------------------
    def _publish(self, partition: int, plan: RetryPlan) -> None:
        record = msgspec.json.encode(plan_record(plan))
        self._retries.setdefault(partition, []).append((plan.wamid, record))

    def _plan(
        self, partition: int, state: RecipientState, fact: RecipientFact, meta: RecipientMeta
    ) -> None:
        if not fact.wamid:
            return
        limit = fact.kind == RecipientFactKind.LIMIT_FAILURE
        code = fact.code if fact.code is not None else _DEFAULT_LIMIT_CODE
        plan = make_plan(
            fact.wamid,
            fact.recipient,
            code,
            fact.timestamp,
            limit=limit,
            template=fact.template,
            sender=fact.sender,
            campaign=fact.campaign,
            policy=self.retry_policy,
        )
        if plan is None:
            return
        key = plan_key(plan.due, plan.wamid)
        if self.state.get(partition, key, RetryPlan) is not None:
            return  # made already (the same failure reached the stage twice)
        own = wamid_hash(plan.wamid)
        # a later send of the same template that arrived first cancels the plan from the start
        later = [
            a.ts for a in state.attempts if a.wamid_hash != own and cancels(plan, a.ts, a.template)
        ]
        if later:
            plan.status, plan.cancelled_at = PlanStatus.CANCELLED, min(later)
            self.stats.plans_cancelled += 1
        self.stats.plans += 1
        self.state.put(partition, key, plan)
        self._publish(partition, plan)
        cursor = meta.retries
        clock = timer_clock(meta, self.status_sources)
        if cursor.next_day < 0:  # timers start at the partition's time, not at the first due
            cursor.next_day = min(clock or fact.timestamp, fact.timestamp) // _TIMER_UNIT
        if plan.status == PlanStatus.PLANNED:
            if plan.due <= clock - self.retry_policy.settle_s:
                self._come_due(partition, key, plan)  # a late failure: due already
            else:
                state.plans.append(OpenPlan(plan.due, plan.wamid, plan.template, plan.failed_at))
        at = plan.due if plan.status == PlanStatus.PLANNED else plan.due + self.retry_policy.keep_s
        self._timers_for(partition).touch(key.decode(), at, cursor)

    def _cancel(
        self,
        partition: int,
        state: RecipientState,
        ts: int,
        template: str | None,
        wamid: str | None,
    ) -> None:
        own = wamid_hash(wamid)
        for open_plan in list(state.plans):
            if own == wamid_hash(open_plan.wamid):
                if open_plan.template is None and template:
                    self._learn_template(partition, open_plan, template)
                continue
            if ts <= open_plan.failed_at:
                continue
            if open_plan.template is not None and template != open_plan.template:
                continue
            key = plan_key(open_plan.due, open_plan.wamid)
            plan = self.state.get(partition, key, RetryPlan)
            state.plans.remove(open_plan)
            if plan is None or not cancels(plan, ts, template):
                continue
            plan.status, plan.cancelled_at = PlanStatus.CANCELLED, ts
            self.stats.plans_cancelled += 1
            self.state.put(partition, key, plan)
            self._publish(partition, plan)

    def _learn_template(self, partition: int, open_plan: OpenPlan, template: str) -> None:
        """The failed message's template, learned after its plan was made (the send log came
        later): the plan keeps it (its due or cancelled record carries it) and only a send of
        that template cancels it from now on."""
        open_plan.template = template
        key = plan_key(open_plan.due, open_plan.wamid)
        plan = self.state.get(partition, key, RetryPlan)
        if plan is not None and plan.template is None:
            plan.template = template
            self.state.put(partition, key, plan)

    def _fire(self, partition: int, meta: RecipientMeta) -> None:
        """Publish the plans whose due time the partition's event time has passed (plus the
        settle time) as due; delete closed plans ``keep_s`` after their due time."""
        timers = self._timers_for(partition)
        policy = self.retry_policy
        clock = timer_clock(meta, self.status_sources)
        now = clock - policy.settle_s
        view = self.state.view(partition)
        later: list[tuple[str, int]] = []
        # this batch's new timers first, into their minutes: a sweep that passes a minute
        # before they are written would carry them past it to where it stops, and a
        # partition whose event time then stops would never fire them
        timers.flush(view.get, view.put)

        def visit(indexed: str) -> bool:
            key = indexed.encode()
            plan = self.state.get(partition, key, RetryPlan)
            if plan is None:
                return False
            if plan.status == PlanStatus.PLANNED:
                if plan.due > now:
                    later.append((indexed, plan.due))
                    return False
                self._come_due(partition, key, plan)
                self._close(partition, plan, meta)
            if plan.due + policy.keep_s > now:
                later.append((indexed, plan.due + policy.keep_s))
                return False
            view.delete(indexed)
            return True

        self._sweep(
            partition,
            timers,
            meta.retries,
            clock,
            policy.settle_s,
            policy.sweep_budget,
            visit,
            later,
        )

    def _sweep(
        self,
        partition: int,
        index: ExpiryIndex,
        cursor: SweepCursor,
        clock: int,
        retention: int,
        budget: int,
        visit: Callable[[str], bool],
        later: list[tuple[str, int]],
    ) -> int:
        """Sweep ``index`` up to ``clock - retention`` (at most ``budget`` visits), index again
        the keys ``visit`` put in ``later`` (key, time), write the index; returns the keys
        deleted."""
        view = self.state.view(partition)
        deleted = index.sweep(cursor, clock, retention, budget, view.get, view.delete, visit)
        for key, at in later:
            index.touch(key, at, cursor)
        index.flush(view.get, view.put)
        return deleted

    def _come_due(self, partition: int, key: bytes, plan: RetryPlan) -> None:
        plan.status = PlanStatus.DUE
        self.stats.plans_due += 1
        self.state.put(partition, key, plan)
        self._publish(partition, plan)

    def _close(self, partition: int, plan: RetryPlan, meta: RecipientMeta) -> None:
        """Forget a plan that came due in its recipient's open plans (a recipient kept only
        for its plan goes with it)."""
        key = recipient_key(plan.recipient)
        state = self.state.get(partition, key, RecipientState)
        if state is None:
            return
        kept = [p for p in state.plans if p.wamid != plan.wamid]
        if len(kept) == len(state.plans):
            return
        state.plans = kept
        r = self.retention
        if is_idle(state, timer_clock(meta, self.status_sources), *r.idle_args):
            meta.opted_out -= state.opted_out
            self.state.delete(partition, key)
            self.stats.expired += 1
        else:
            self.state.put(partition, key, state)

    def drain_retries(self) -> list[tuple[str, bytes]]:
        """(wamid, JSON record) of the retry plans made, come due or cancelled since the last
        call, in order (the retries topic, keyed by wamid)."""
        out = [record for records in self._retries.values() for record in records]
        self._retries = {}
        return out

    def flush(self, partition: int) -> int:
        index = self._index.get(partition)
        if index is not None:
            meta = self.meta(partition)
            r = self.retention
            clock = timer_clock(meta, self.status_sources)
            # Opted-out recipients stay indexed under their day; the sweep runs at the shorter
            # idle retention and is_idle() decides; a kept key is re-indexed below.
            kept: list[tuple[str, int]] = []

            def expire_or_keep(indexed: str) -> bool:
                key = recipient_key(recipient_of_entry(indexed))
                state = self.state.get(partition, key, RecipientState)
                if state is None:
                    return False
                if is_idle(state, clock, *r.idle_args):
                    meta.opted_out -= state.opted_out
                    self.state.delete(partition, key)
                    return True
                # visited again on the day it may expire (the sweep runs at the idle
                # retention); an opt-out, kept for a year, every idle retention as before (an
                # index chunk a year ahead per flush would pile up)
                at = clock if state.opted_out else r.expires(state) - r.idle
                kept.append((indexed, max(at, clock - r.idle)))
                return False

            self.stats.expired += self._sweep(
                partition, index, meta.cursor, clock, r.idle, r.sweep_budget, expire_or_keep, kept
            )
            self._fire(partition, meta)
            over = [slot for slot in meta.cooldown_slots if slot * COOLDOWN_SLOT <= meta.watermark]
            for slot in over:
                del meta.cooldown_slots[slot]
            self.state.put(partition, recipients_meta_key(partition), meta)
        return self.state.flush(partition)

    def changed_advice(
        self,
        partition: int,
        policy: AdvicePolicy = DEFAULT_ADVICE,
        advise: Callable[[RecipientState, str, int], tuple[str, bytes]] | None = None,
    ) -> list[tuple[str, bytes]]:
        """(recipient, advice record) for recipients whose advice changed in this batch.

        ``advise(state, recipient, now)`` returns the advice's signature (what a sender acts on)
        and its encoded record (default: :func:`advice_record` with ``policy``, in native code
        when built); a record is published only when the signature changed.
        Call before :meth:`flush` (it updates the states' last published signature).
        """
        out = []
        now = self.meta(partition).watermark
        changed = sorted(self._changed.pop(partition, ()))
        if advise is None:
            if self._native_advise is not None:
                return self._changed_advice_native(partition, changed, now, policy)
            advise = partial(advice_record, policy=policy)
        for recipient in changed:
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

    def _changed_advice_native(
        self, partition: int, changed: list[str], now: int, policy: AdvicePolicy
    ) -> list[tuple[str, bytes]]:
        out = []
        fields = native.advice_policy_fields(policy)
        for recipient in changed:
            key = recipient_key(recipient)
            raw = self.state.get_raw(partition, key)
            if raw is None:
                continue
            result = self._native_advise(raw, recipient, now, is_us_recipient(recipient), fields)
            if result is not None:
                encoded, record = result
                self.state.put_encoded(partition, key, encoded)
                out.append((recipient, record))
        return out

    def drain_signals(self) -> SignalBatch | None:
        resends = [signal for signals in self._resends.values() for signal in signals]
        self._resends, self._resend_count, self.full = {}, 0, False
        relayed, self._relayed_changed = self._relayed_changed, {}
        if not resends and not relayed:
            return None
        return SignalBatch(resends=resends, max_ts=self._max_ts, relayed=relayed)

    def gauges(self, partitions: list[int]) -> tuple[int, int]:
        """(recipients in a 131049 cool-down, recipients opted out) on ``partitions``, from
        each partition's flushed meta record: one read per partition, no scan."""
        in_cooldown = opted_out = 0
        for p in partitions:
            raw = self.state.kv.get(p, recipients_meta_key(p))
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
        self._timers.pop(partition, None)
        self._retries.pop(partition, None)
        self._resend_count -= len(self._resends.pop(partition, []))
        self._relayed.pop(partition, None)
        self._relayed_changed.pop(partition, None)
