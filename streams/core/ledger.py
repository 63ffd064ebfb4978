"""Stage 2 logic: one message (wamid) at a time: deduplicate, attribute, derive outcomes.

A message's statuses arrive duplicated (Meta retries for 7 days) and out of order. For each
message the ledger keeps which funnel stages were already counted, so every stage is counted
exactly once: ``read`` without ``delivered`` still counts as delivered (and sent), ``failed``
after ``delivered`` is counted as failed too. An outcome several statuses imply (attempted,
sent, delivered) counts in the minute of the earliest of them: a status that arrives after a
later one moves it there, so the minute buckets do not depend on the arrival order.

Attribution: the template comes from ``biz_opaque_callback_data`` when present, else from the
sender's send log. A status counted before its send-log record arrives is counted under template
``unknown`` and moved to the real template when the record arrives (an exact, retroactive
correction of the same minute buckets). The first attribution wins.

Exactly-once under at-least-once delivery: every state remembers the last input position it
absorbed from each source (``applied``); an input at or before it is a replay, and the ledger
re-derives the same effects from what it stored so downstream records (which keep their own
``applied``) can skip what they already have.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from streams.core.eventtime import visible_at
from streams.core.facts import (
    Applied,
    Position,
    RecipientFact,
    RecipientFactKind,
    SendLogRecord,
    StatusFact,
    already_applied,
    mark_applied,
)
from streams.core.keys import Dimension
from streams.core.retries import is_retryable

UNKNOWN_TEMPLATE = "unknown"
MARKETING_CATEGORIES = frozenset({"marketing", "marketing_lite", "group_marketing"})

# Funnel stages, as bits of MessageState.stages.
ATTEMPTED, SENT, DELIVERED, READ, PLAYED, FAILED, DELETED, WARNING, OTHER = (
    1 << i for i in range(9)
)
#: Outcomes more than one status implies: counted in the minute of the earliest of them.
_SHIFTABLE = ATTEMPTED | SENT | DELIVERED
_FLAG_MKT_DELIVERED_FACT = 1 << 16
_FLAG_MKT_ATTEMPT_FACT = 1 << 17
_FLAG_LINKED = 1 << 18
_FLAG_MKT_READ_FACT = 1 << 19
_FLAG_ATTEMPT_SENDER = 1 << 20  # the send's recipient fact carried the sending number
_FLAG_ATTEMPT_TEMPLATE = 1 << 21  # ... and the template

STAGE_OUTCOMES: tuple[tuple[int, str], ...] = (
    (ATTEMPTED, "attempted"),
    (SENT, "sent"),
    (DELIVERED, "delivered"),
    (READ, "read"),
    (PLAYED, "played"),
    (FAILED, "failed"),
    (DELETED, "deleted"),
    (WARNING, "warning"),
    (OTHER, "other_status"),
)

_IMPLIES: dict[str, int] = {
    "sent": ATTEMPTED | SENT,
    "delivered": ATTEMPTED | SENT | DELIVERED,
    "read": ATTEMPTED | SENT | DELIVERED | READ,
    "played": ATTEMPTED | SENT | DELIVERED | PLAYED,
    "failed": ATTEMPTED | FAILED,
    "deleted": ATTEMPTED | DELETED,
    "warning": ATTEMPTED | WARNING,
}

#: the outcomes of each combination of the shiftable bits
_SHIFTABLE_OUTCOMES = [
    frozenset(outcome for bit, outcome in STAGE_OUTCOMES if bits & bit)
    for bits in range(_SHIFTABLE + 1)
]

_FAILURE_FACTS: dict[str, RecipientFactKind] = {
    "per_user_marketing_limit": RecipientFactKind.LIMIT_FAILURE,
    "us_marketing_pause": RecipientFactKind.US_PAUSE,
    "opt_out": RecipientFactKind.OPT_OUT_FAILURE,
    "undeliverable": RecipientFactKind.UNDELIVERABLE,
}


#: Fact kinds that carry the sending number and campaign (premature-resend signals, retry plans).
_DETAILED_FACTS = frozenset(
    {
        RecipientFactKind.MARKETING_ATTEMPT,
        RecipientFactKind.SEND_ATTEMPT,
        RecipientFactKind.LIMIT_FAILURE,
        RecipientFactKind.RETRYABLE_FAILURE,
    }
)

#: Sub-positions per input item for the recipient facts it yields (at most 5 today).
FACTS_PER_ITEM = 16


def failed_outcome(error_class: str | None) -> str:
    """Outcome label of a failure: ``failed.<error class>``."""
    return f"failed.{error_class or 'unknown'}"


class Shift(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """An implied outcome moved to an earlier minute (or, in its minute, to a lower mark): the
    status at ``position`` (mark ``mark``) implied it at ``to_minute``, before the
    ``from_minute`` it was counted in (by an input of mark ``from_mark``), while it counted
    under ``template`` and (``campaign``) the message's campaign. From then on the outcome
    counts as that status's."""

    position: Position
    from_minute: int
    to_minute: int
    template: str
    campaign: bool
    mark: int
    from_mark: int


class Counted(msgspec.Struct, array_like=True, gc=False):
    """One outcome counted for a message: in which minute, under which template, from where;
    ``moved_at`` is the send-log input that moved it off template ``unknown``; ``mark`` is the
    mark of the status that counted it (see :mod:`streams.core.eventtime`); ``campaigned_at``
    the input that added it to the message's campaign (it was counted before the campaign was
    known); ``shifts`` the moves to earlier minutes (an implied outcome counts in the minute of
    the earliest status implying it, whichever status came first)."""

    minute: int
    outcome: str
    position: Position
    template: str
    moved_at: Position | None = None
    mark: int = 0
    campaigned_at: Position | None = None
    shifts: list[Shift] = []

    def before(self, done: Callable[[Shift], bool]) -> tuple[int, int]:
        """The minute and mark this outcome had before its first shift for which ``done`` is
        false (its minute and mark now if there is none): what it was when that input came."""
        if not self.shifts:
            return self.minute, self.mark
        minute, mark = self.shifts[0].from_minute, self.shifts[0].from_mark
        for shift in self.shifts:
            if not done(shift):
                break
            minute, mark = shift.to_minute, shift.mark
        return minute, mark


class Seen(msgspec.Struct, array_like=True, gc=False):
    """First sighting of one (wamid, status): its input position and raw webhook origin."""

    position: Position
    origin: Position


class MessageState(msgspec.Struct, array_like=True, gc=False):
    """Everything the monitor keeps about one outbound message, for up to 7 days."""

    wamid: str = ""
    template: str | None = None
    campaign: str | None = None
    category: str | None = None
    stages: int = 0
    seen: dict[str, Seen] = {}
    counted: list[Counted] = []
    emitted: list[RecipientFact] = []
    sender: str = ""
    country: str = ""
    recipient: str = ""
    delivered_ts: int = 0
    first_ts: int = 0
    last_ts: int = 0
    applied: Applied = {}
    #: the mark of the send-log record that named the template (0: not named by the send log)
    log_mark: int = 0
    #: the mark of the input that named the campaign
    campaign_mark: int = 0
    read_ts: int = 0
    attempt_ts: int = 0  # the time the send's recipient fact carried (see _attempt_fact)


class BucketDelta(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """+/- n of one outcome in one minute for one dimension value; ``visible`` is the first
    alert evaluation point that may use it (:func:`streams.core.eventtime.visible_at` of the
    marks of the inputs it depends on)."""

    dim: Dimension
    key: str
    minute: int
    outcome: str
    delta: int
    visible: int = 0


class Effects(msgspec.Struct, gc=False):
    """What applying one input changed, for the adapter to persist and forward."""

    deltas: list[BucketDelta] = []
    #: counts moved to an earlier minute (-1/+1 pairs): buckets change, nothing new was counted
    shifts: list[BucketDelta] = []
    facts: list[RecipientFact] = []
    duplicate: bool = False  # Meta sent this (wamid, status) before
    replayed: bool = False  # the same raw record came again (a stage-1 replay)
    late: bool = False  # too late for the minute buckets (counted, not bucketed)
    attributed_late: bool = False  # a send-log record moved counts off "unknown"


def minute_of(ts: int) -> int:
    return ts // 60


_TEMPLATE, _SENDER, _COUNTRY, _CAMPAIGN = (
    Dimension.TEMPLATE,
    Dimension.SENDER,
    Dimension.COUNTRY,
    Dimension.CAMPAIGN,
)


def _cells(
    state: MessageState, template: str, mark: int, campaign: bool = True
) -> list[tuple[Dimension, str, int]]:
    """The bucket dimensions an outcome of this message counts under (``campaign=False``: not
    its campaign, the outcome was counted before the campaign was known), each with the first
    evaluation point that may use the count. A count under a template or campaign another
    input named (the send log, a later status) depends on that input too: the detector may use
    it once both are read."""
    seen = visible_at(mark)
    if state.log_mark and template != UNKNOWN_TEMPLATE:
        named = visible_at(state.log_mark)
        by_template = named if named > seen else seen
    else:
        by_template = seen if seen > 0 else 0
    cells = [
        (_TEMPLATE, template, by_template),
        (_SENDER, state.sender or "unknown", seen),
        (_COUNTRY, state.country or "ZZ", seen),
    ]
    if campaign and state.campaign:
        named = visible_at(state.campaign_mark)
        cells.append((_CAMPAIGN, state.campaign, named if named > seen else seen))
    return cells


def _deltas(
    state: MessageState,
    template: str,
    minute: int,
    outcome: str,
    n: int,
    mark: int,
    campaign: bool = True,
) -> list[BucketDelta]:
    """The bucket deltas of one counted outcome (see :func:`_cells`)."""
    return [
        BucketDelta(dim, key, minute, outcome, n, visible)
        for dim, key, visible in _cells(state, template, mark, campaign)
    ]


def _campaign_deltas(
    state: MessageState,
    counted: list[Counted],
    named_mark: int,
    then: list[tuple[int, int]] | None = None,
) -> list[BucketDelta]:
    """Outcomes counted before the campaign was known, added to it (usable by alerting once the
    input that named it, of mark ``named_mark``, is read too), in their minutes now (or had
    ``then``: minute and mark)."""
    named = visible_at(named_mark)
    campaign = state.campaign or ""
    out = []
    for i, c in enumerate(counted):
        minute, mark = (c.minute, c.mark) if then is None else then[i]
        seen = max(visible_at(mark), named)
        out.append(BucketDelta(Dimension.CAMPAIGN, campaign, minute, c.outcome, 1, seen))
    return out


def _shift_deltas(state: MessageState, outcome: str, shift: Shift) -> list[BucketDelta]:
    """-1 where the outcome was (with the visibility it had: the two cancel before alerting
    uses them when it has not yet), +1 where it is now."""
    template, campaign = shift.template, shift.campaign
    old = _deltas(state, template, shift.from_minute, outcome, -1, shift.from_mark, campaign)
    new = _deltas(state, template, shift.to_minute, outcome, 1, shift.mark, campaign)
    return old + new


def _is_marketing(category: str | None) -> bool:
    return category is not None and category in MARKETING_CATEGORIES


class MessageLedger:
    """Applies status facts and send-log records to :class:`MessageState` values.

    ``lateness`` seconds: a status older than ``watermark - lateness`` updates the message but
    is not added to minute buckets (reported as ``late``). The watermark is passed in by the
    caller (the highest event time seen on the partition).
    """

    def __init__(self, lateness: int = 600) -> None:
        self.lateness = lateness

    def apply_status(
        self,
        state: MessageState | None,
        fact: StatusFact,
        position: Position,
        watermark: int,
        template_from_opaque: str | None,
        category_from_opaque: str | None,
        campaign_from_opaque: str | None,
    ) -> tuple[MessageState, Effects]:
        state = state if state is not None else MessageState()
        fx = Effects()
        if already_applied(state.applied, position):
            return state, self._replay_effects(state, position, fx, fact.mark or fact.timestamp)
        mark_applied(state.applied, position)
        state.wamid = fact.wamid
        seen = state.seen.get(fact.status)
        if seen is not None:
            if seen.origin == fact.origin:
                fx.replayed = True
            else:
                fx.duplicate = True
                self._repeat(state, fact, position, watermark, fx)
            return state, fx
        state.seen[fact.status] = Seen(position, fact.origin)
        state.last_ts = max(state.last_ts, fact.timestamp)
        if not state.first_ts or fact.timestamp < state.first_ts:
            state.first_ts = fact.timestamp
        state.sender = state.sender or fact.sender
        state.country = state.country or fact.country
        state.recipient = state.recipient or fact.recipient
        if state.template is None and template_from_opaque:
            state.template = template_from_opaque
        if state.campaign is None and campaign_from_opaque:
            mark = fact.mark or fact.timestamp
            self._attribute_campaign(state, campaign_from_opaque, position, fx, mark, True)
        # The callback data (in every status of the message) names what the send log named
        # first: counts no longer wait for the send-log record, as if it had come later.
        if template_from_opaque and template_from_opaque == state.template:
            state.log_mark = 0
        if campaign_from_opaque and campaign_from_opaque == state.campaign:
            state.campaign_mark = 0
        state.category = state.category or fact.category or category_from_opaque

        implied = _IMPLIES.get(fact.status, ATTEMPTED | OTHER)
        new = implied & ~state.stages
        earlier = implied & state.stages & _SHIFTABLE
        state.stages |= new
        late = fact.timestamp < max(watermark, fact.mark) - self.lateness
        fx.late = late and bool(new)
        template = state.template or UNKNOWN_TEMPLATE
        minute = minute_of(fact.timestamp)
        if earlier and not late:
            outcomes = _SHIFTABLE_OUTCOMES[earlier]
            self._shift(state, outcomes, minute, position, fact.mark or fact.timestamp, fx)
        if new and not late:
            mark = fact.mark or fact.timestamp
            cells = _cells(state, template, mark)
            counted, deltas = state.counted, fx.deltas
            for bit, outcome in STAGE_OUTCOMES:
                if not new & bit:
                    continue
                label = failed_outcome(fact.error_class) if bit == FAILED else outcome
                counted.append(Counted(minute, label, position, template, None, mark))
                deltas.extend(
                    [BucketDelta(dim, key, minute, label, 1, vis) for dim, key, vis in cells]
                )
        if new & DELIVERED:
            state.delivered_ts = fact.timestamp
        if new & READ:
            state.read_ts = fact.timestamp
        if new & FAILED:
            kind = _FAILURE_FACTS.get(fact.error_class or "")
            if kind is None and fact.error_code is not None and is_retryable(fact.error_code):
                kind = RecipientFactKind.RETRYABLE_FAILURE
            if kind is not None:
                self._emit(state, fx, kind, fact.timestamp, position, code=fact.error_code)
        if fact.phone and fact.user_id and not state.stages & _FLAG_LINKED:
            state.stages |= _FLAG_LINKED
            self._emit(
                state,
                fx,
                RecipientFactKind.LINK,
                fact.timestamp,
                position,
                recipient=fact.phone,
                other=fact.user_id,
            )
        self._marketing_facts(state, fx, position)
        return state, fx

    def apply_send_log(
        self,
        state: MessageState | None,
        record: SendLogRecord,
        position: Position,
        mark: int = 0,
    ) -> tuple[MessageState, Effects]:
        """Apply a send-log record; ``mark`` is its partition's mark (see
        :mod:`streams.core.eventtime`): the counts it moves are visible to alerting once both
        the status and this record are read."""
        state = state if state is not None else MessageState()
        fx = Effects()
        if already_applied(state.applied, position):
            return state, self._replay_effects(state, position, fx, mark)
        mark_applied(state.applied, position)
        state.wamid = record.wamid
        state.recipient = state.recipient or (record.recipient or "")
        state.sender = state.sender or (record.phone_number_id or "")
        state.category = state.category or record.category
        sent_at = record.sent_at_seconds()
        if sent_at is not None:
            state.last_ts = max(state.last_ts, sent_at)
            state.first_ts = min(state.first_ts, sent_at) if state.first_ts else sent_at
        if state.campaign is None and record.campaign:
            self._attribute_campaign(state, record.campaign, position, fx, mark)
        if state.template is None:
            state.template = record.template
            state.log_mark = mark
            moved = [c for c in state.counted if c.template == UNKNOWN_TEMPLATE]
            for c in moved:
                c.template = record.template
                c.moved_at = position
            fx.deltas.extend(self._move(state, moved, record.template))
            fx.attributed_late = bool(moved)
        self._marketing_facts(state, fx, position)
        return state, fx

    def _repeat(
        self, state: MessageState, fact: StatusFact, position: Position, watermark: int, fx: Effects
    ) -> None:
        """A status seen before from another raw record (Meta's retry of the same POST, often on
        another raw partition): what it implies counts from the lower of the two marks (and the
        earlier minute), as if it had come first. Else which copy stage 1 read first, a
        question of partition speeds (a backlog after a restart), would decide the point from
        which alerting may use the count."""
        if fact.timestamp < max(watermark, fact.mark) - self.lateness:
            return  # too late for the buckets, as a first sighting would be
        implied = _IMPLIES.get(fact.status, ATTEMPTED | OTHER) & state.stages
        outcomes = frozenset(
            failed_outcome(fact.error_class) if bit == FAILED else outcome
            for bit, outcome in STAGE_OUTCOMES
            if implied & bit
        )
        mark = fact.mark or fact.timestamp
        self._shift(state, outcomes, minute_of(fact.timestamp), position, mark, fx)

    @staticmethod
    def _shift(
        state: MessageState,
        outcomes: frozenset[str],
        minute: int,
        position: Position,
        mark: int,
        fx: Effects,
    ) -> None:
        """Outcomes already counted (of ``outcomes``) that this status implies earlier than they
        were counted move to its ``minute``, and to its ``mark`` if that is lower in the same
        minute (so alerting may use it from the earliest point any of its statuses allows): the
        buckets and when each count is usable then do not depend on which status came first."""
        for c in state.counted:
            if c.outcome not in outcomes or (minute, mark) >= (c.minute, c.mark):
                continue
            campaign = bool(state.campaign)
            shift = Shift(position, c.minute, minute, c.template, campaign, mark, c.mark)
            c.shifts = [*c.shifts, shift]
            c.minute, c.mark = minute, mark
            fx.shifts.extend(_shift_deltas(state, c.outcome, shift))

    @staticmethod
    def _attribute_campaign(
        state: MessageState,
        campaign: str,
        position: Position,
        fx: Effects,
        mark: int,
        carried: bool = False,
    ) -> None:
        """The message's campaign is ``campaign`` (first known now, at ``position``, whose mark
        is ``mark``): what was counted before is added to the campaign's buckets. ``carried``:
        named by a status's callback data, which Meta repeats in every status of the message,
        so later counts do not depend on this input (their campaign is their own)."""
        state.campaign, state.campaign_mark = campaign, 0 if carried else mark
        for c in state.counted:
            c.campaigned_at = position
        fx.deltas.extend(_campaign_deltas(state, state.counted, mark))

    @staticmethod
    def _move(
        state: MessageState,
        moved: list[Counted],
        template: str,
        then: list[tuple[int, int]] | None = None,
    ) -> list[BucketDelta]:
        """-1 under "unknown", +1 under ``template``, in the minutes the outcomes are in now
        (or had ``then``: minute and mark)."""
        out = []
        named = visible_at(state.log_mark)
        for i, c in enumerate(moved):
            minute, mark = (c.minute, c.mark) if then is None else then[i]
            seen = max(visible_at(mark), named)
            out.append(
                BucketDelta(Dimension.TEMPLATE, UNKNOWN_TEMPLATE, minute, c.outcome, -1, seen)
            )
            out.append(BucketDelta(Dimension.TEMPLATE, template, minute, c.outcome, 1, seen))
        return out

    def _marketing_facts(self, state: MessageState, fx: Effects, position: Position) -> None:
        if state.category is None or not state.recipient:
            return
        marketing = _is_marketing(state.category)
        self._attempt_fact(state, fx, position, marketing)
        if not marketing:
            return
        if state.stages & DELIVERED and not state.stages & _FLAG_MKT_DELIVERED_FACT:
            state.stages |= _FLAG_MKT_DELIVERED_FACT
            self._emit(
                state, fx, RecipientFactKind.MARKETING_DELIVERED, state.delivered_ts, position
            )
        if state.stages & READ and not state.stages & _FLAG_MKT_READ_FACT:
            state.stages |= _FLAG_MKT_READ_FACT
            self._emit(state, fx, RecipientFactKind.MARKETING_READ, state.read_ts, position)

    def _attempt_fact(
        self, state: MessageState, fx: Effects, position: Position, marketing: bool
    ) -> None:
        """The send, at its earliest known time (the send log's ``sent_at`` or the first
        status), whichever input came first: an earlier time, the sending number or the
        template learned later is sent again (the recipient stage keeps the earliest per
        message, with what it learns), so the recipient's history does not depend on the
        arrival order. Non-marketing sends only cancel retry plans."""
        if not state.first_ts:
            return
        kind = RecipientFactKind.MARKETING_ATTEMPT if marketing else RecipientFactKind.SEND_ATTEMPT
        stages = state.stages
        known = (_FLAG_ATTEMPT_SENDER if state.sender else 0) | (
            _FLAG_ATTEMPT_TEMPLATE if state.template else 0
        )
        if stages & _FLAG_MKT_ATTEMPT_FACT:
            earlier = 0 < state.first_ts < state.attempt_ts
            if not (earlier or known & ~stages):
                return
        state.stages |= _FLAG_MKT_ATTEMPT_FACT | known
        state.attempt_ts = state.first_ts
        self._emit(state, fx, kind, state.first_ts, position)

    @staticmethod
    def _emit(
        state: MessageState,
        fx: Effects,
        kind: RecipientFactKind,
        ts: int,
        position: Position,
        recipient: str | None = None,
        other: str | None = None,
        code: int | None = None,
    ) -> None:
        # Several facts can come from one input item: each gets its own sub-position, so the
        # recipient stage (which applies each position once) keeps them all.
        sub = sum(1 for f in fx.facts if f.position[:2] == position[:2])
        detailed = kind in _DETAILED_FACTS  # sender and campaign only where stage 3 keeps them
        fact = RecipientFact(
            recipient=recipient or state.recipient,
            kind=kind,
            timestamp=ts,
            position=(position[0], position[1], position[2] * FACTS_PER_ITEM + sub),
            other=other,
            template=state.template,
            wamid=state.wamid,
            sender=(state.sender or None) if detailed else None,
            campaign=state.campaign if detailed else None,
            code=code,
        )
        if fact.recipient:
            state.emitted.append(fact)
            fx.facts.append(fact)

    def _replay_effects(
        self, state: MessageState, position: Position, fx: Effects, mark: int
    ) -> Effects:
        """The effects the input at ``position`` had when it was first applied."""
        fx.replayed = True
        for c in state.counted:
            if c.position == position:
                # counted under "unknown" if a send-log record moved it later, in the minute
                # it counted in before any shift
                template = UNKNOWN_TEMPLATE if c.moved_at is not None else c.template
                minute, mark = c.before(lambda shift: False)
                deltas = _deltas(
                    state, template, minute, c.outcome, 1, mark, c.campaigned_at is None
                )
                fx.deltas.extend(deltas)
            for shift in c.shifts:
                if shift.position == position:
                    fx.shifts.extend(_shift_deltas(state, c.outcome, shift))
        # moved and campaigned in the minute they counted in then: before later shifts
        moved = [c for c in state.counted if c.moved_at == position]
        if moved:
            then = [c.before(lambda s: s.template == UNKNOWN_TEMPLATE) for c in moved]
            fx.deltas.extend(self._move(state, moved, moved[0].template, then))
        campaigned = [c for c in state.counted if c.campaigned_at == position]
        if state.campaign and campaigned:
            then = [c.before(lambda s: not s.campaign) for c in campaigned]
            named = state.campaign_mark or mark  # carried: the mark of the status replayed
            fx.deltas.extend(_campaign_deltas(state, campaigned, named, then))
        fx.facts.extend(
            f
            for f in state.emitted
            if f.position[:2] == position[:2] and f.position[2] // FACTS_PER_ITEM == position[2]
        )
        return fx
