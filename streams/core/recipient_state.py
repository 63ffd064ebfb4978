"""Stage 3 logic: what the monitor knows about one recipient (a phone number or a BSUID).

Recipients are keyed by phone number when it is known, else by BSUID; a ``LINK`` fact records
the pair so a BSUID-only event can be forwarded to the phone's state. Timestamps are event time.
Lists keep only their window (:class:`Windows`: 30 days of marketing deliveries and reads for
engagement, 7 days of failures, 2 days of sends with their template), at most
``MAX_EVENTS`` entries each, so a recipient's state is small and bounded; an idle recipient is
removed by the expiry sweep (see :func:`is_idle`).

Every answer derived from the state (advice, engagement, premature resends) is computed from
these histories at the time asked, so the same facts give the same answer in any arrival order.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import msgspec

from streams.core.engagement import DEFAULT_POLICY as DEFAULT_ENGAGEMENT
from streams.core.engagement import EngagementPolicy, engagement
from streams.core.facts import (
    Applied,
    RecipientFact,
    RecipientFactKind,
    already_applied,
    mark_applied,
)

DAY = 86_400
K = RecipientFactKind
#: Entries per history list at most (the oldest go first): WhatsApp's own per-user marketing
#: limit keeps real lists far shorter.
MAX_EVENTS = 200


@dataclass(frozen=True, slots=True)
class Windows:
    """How long the state keeps each history, before the recipient's newest event."""

    failures: int = 7 * DAY  # 131049 / 131026 failures (advice: 24 h and 7 d)
    engagement: int = 30 * DAY  # marketing delivered and read
    attempts: int = 2 * DAY  # sends with their template (resend storms, retry plans)


class Attempt(msgspec.Struct, array_like=True, gc=False):
    """A message sent to the recipient: a premature marketing resend is signalled with its
    template, sending number and campaign; any send cancels retry plans of its template."""

    ts: int
    template: str | None
    sender: str | None = None
    campaign: str | None = None
    marketing: bool = True
    wamid_hash: int = 0  # tells the failed message's own send apart from a resend


class OpenPlan(msgspec.Struct, array_like=True, gc=False):
    """A retry plan of this recipient not yet due or cancelled (its record is its own key)."""

    due: int
    wamid: str
    template: str | None
    failed_at: int


def wamid_hash(wamid: str | None) -> int:
    return zlib.crc32(wamid.encode()) if wamid else 0


class RecipientState(msgspec.Struct, array_like=True, gc=False):
    """Per-recipient counters and flags (see :class:`RecipientFactKind`).

    Fields are only ever added at the end (states are stored as msgpack arrays);
    ``marketing_attempts`` is no longer written (``attempts`` replaced it) but older states
    may hold it.
    """

    marketing_delivered: list[int] = []
    marketing_attempts: list[int] = []
    limit_failures: list[int] = []
    us_pause_ts: int = 0
    undeliverable: list[int] = []
    stop_ts: int = 0  # last opt-out (131050/498 failure or user_preferences stop)
    resume_ts: int = 0  # last user_preferences resume
    opt_out_source: str = ""
    csw_open_until: int = 0
    link: str | None = None
    last_ts: int = 0
    applied: Applied = {}
    # premature marketing sends already reported (wamid_hash of each; before: their times)
    premature_resends: list[int] = []
    advice_signature: str = ""  # of the advice last published to the advice topic
    marketing_read: list[int] = []
    last_inbound: int = 0
    attempts: list[Attempt] = []
    plans: list[OpenPlan] = []

    @property
    def opted_out(self) -> bool:
        return self.stop_ts > self.resume_ts

    def opted_out_at(self, at: int) -> bool:
        """Opted out at ``at``, from the last stop and resume known at or before it."""
        stop = self.stop_ts if self.stop_ts <= at else 0
        resume = self.resume_ts if self.resume_ts <= at else 0
        return stop > resume

    @property
    def last_limit_failure(self) -> int:
        return max(self.limit_failures, default=0)

    @property
    def last_engagement(self) -> int:
        """Newest marketing delivery, read or inbound message (what engagement looks back at)."""
        return max(
            self.marketing_delivered[-1] if self.marketing_delivered else 0,
            self.marketing_read[-1] if self.marketing_read else 0,
            self.last_inbound,
        )


def _add(times: list[int], ts: int, horizon: int) -> None:
    times.append(ts)
    times.sort()
    while times and (times[0] < horizon or len(times) > MAX_EVENTS):
        times.pop(0)


def count_since(times: list[int], since: int, until: int) -> int:
    return sum(1 for t in times if since < t <= until)


def _add_attempt(state: RecipientState, fact: RecipientFact, marketing: bool, horizon: int) -> None:
    attempts = state.attempts
    wh = wamid_hash(fact.wamid)
    same = next((a for a in attempts if wh and a.wamid_hash == wh), None)
    if same is not None:  # the same send at an earlier time learned later: keep the earliest
        same.ts = min(same.ts, fact.timestamp)
        same.template = same.template or fact.template
        same.sender = same.sender or fact.sender
        same.campaign = same.campaign or fact.campaign
    else:
        attempts.append(
            Attempt(fact.timestamp, fact.template, fact.sender, fact.campaign, marketing, wh)
        )
    attempts.sort(key=lambda a: a.ts)
    while attempts and (attempts[0].ts < horizon or len(attempts) > MAX_EVENTS):
        attempts.pop(0)


def apply_fact(
    state: RecipientState | None,
    fact: RecipientFact,
    retention: int = 7 * DAY,
    windows: Windows = Windows(),
) -> tuple[RecipientState, bool]:
    """Apply ``fact`` once; returns the state and whether it changed anything.

    ``retention`` is the failures' window (kept as an argument for callers that set it)."""
    state = state if state is not None else RecipientState()
    if already_applied(state.applied, fact.position):
        return state, False
    mark_applied(state.applied, fact.position)
    ts = fact.timestamp
    state.last_ts = max(state.last_ts, ts)
    horizon = state.last_ts - retention
    kind = fact.kind
    if kind == K.MARKETING_DELIVERED:
        _add(state.marketing_delivered, ts, state.last_ts - windows.engagement)
    elif kind == K.MARKETING_READ:
        _add(state.marketing_read, ts, state.last_ts - windows.engagement)
    elif kind == K.MARKETING_ATTEMPT or kind == K.SEND_ATTEMPT:
        _add_attempt(state, fact, kind == K.MARKETING_ATTEMPT, state.last_ts - windows.attempts)
    elif kind == K.LIMIT_FAILURE:
        _add(state.limit_failures, ts, horizon)
    elif kind == K.US_PAUSE:
        state.us_pause_ts = max(state.us_pause_ts, ts)
    elif kind == K.UNDELIVERABLE:
        _add(state.undeliverable, ts, horizon)
    elif kind == K.OPT_OUT_FAILURE:
        if ts >= state.stop_ts:
            state.stop_ts, state.opt_out_source = ts, "error"
    elif kind == K.PREFERENCE_STOP:
        if ts >= state.stop_ts:
            state.stop_ts, state.opt_out_source = ts, "user_preferences"
    elif kind == K.PREFERENCE_RESUME:
        state.resume_ts = max(state.resume_ts, ts)
    elif kind == K.INBOUND_MESSAGE:
        state.csw_open_until = max(state.csw_open_until, ts + DAY)
        state.last_inbound = max(state.last_inbound, ts)
    elif kind == K.LINK:
        state.link = fact.other
    return state, True


def premature_resends(
    state: RecipientState, fact: RecipientFact, cooldown: int = DAY
) -> tuple[list[Attempt], int]:
    """Marketing sends that ``fact`` (just applied) shows to be premature resends (less than
    ``cooldown`` after a 131049 of this recipient), and how many of them were not reported
    before; marks them reported (by message). The send or the failure may come first: each
    is reported as soon as its template and sending number are known (the messages stage
    sends a send again when it learns them), and again when its send comes again with an
    earlier time or its campaign (a repeat changes nothing: the storm rule keeps one resend
    per send)."""
    if fact.kind == K.MARKETING_ATTEMPT:
        wh = wamid_hash(fact.wamid)
        candidates = [
            a
            for a in state.attempts
            if a.wamid_hash == wh and any(0 < a.ts - f < cooldown for f in state.limit_failures)
        ]
    elif fact.kind == K.LIMIT_FAILURE:
        f = fact.timestamp
        candidates = [a for a in state.attempts if 0 < a.ts - f < cooldown]
    else:
        return [], 0
    candidates = [a for a in candidates if a.marketing and a.template and a.sender]
    reported = state.premature_resends
    found = [a for a in candidates if a.wamid_hash not in reported]
    if found:
        reported.extend(a.wamid_hash for a in found)
        live = {a.wamid_hash for a in state.attempts}  # sends that left the window are done
        state.premature_resends = [h for h in reported if h in live][-MAX_EVENTS:]
    if fact.kind == K.MARKETING_ATTEMPT:
        return candidates, len(found)  # reported before or not: what is known of it now
    return found, len(found)


def is_idle(
    state: RecipientState,
    watermark: int,
    retention: int,
    opt_out_retention: int,
    engaged_retention: int = 0,
) -> bool:
    """True when the state may be dropped: nothing happened within the retention, no
    engagement (marketing delivered or read, an inbound message) within the engagement's
    retention, and no opt-out (kept ``opt_out_retention``: it lasts until resume)."""
    return idle_at(
        state.opted_out,
        bool(state.plans),
        state.last_ts,
        state.last_engagement,
        watermark,
        retention,
        opt_out_retention,
        engaged_retention,
    )


def idle_at(
    opted_out: bool,
    open_plans: bool,
    last_ts: int,
    last_engagement: int,
    watermark: int,
    retention: int,
    opt_out_retention: int,
    engaged_retention: int = 0,
) -> bool:
    """:func:`is_idle` of a state with these properties (the native step returns them)."""
    if opted_out:
        return last_ts < watermark - opt_out_retention
    if open_plans:
        return False
    return last_ts < watermark - retention and last_engagement < watermark - engaged_retention


def recipient_view(
    state: RecipientState,
    recipient: str,
    now: int,
    policy: EngagementPolicy = DEFAULT_ENGAGEMENT,
) -> dict[str, object]:
    """The JSON document of ``GET /v1/recipients/{id}`` (``recipient`` is the caller's input)."""
    return {
        "recipient": recipient,
        "as_of": now,
        "marketing_delivered": {
            "24h": count_since(state.marketing_delivered, now - DAY, now),
            "7d": count_since(state.marketing_delivered, now - 7 * DAY, now),
            "30d": count_since(state.marketing_delivered, now - 30 * DAY, now),
        },
        "marketing_read": {
            "7d": count_since(state.marketing_read, now - 7 * DAY, now),
            "30d": count_since(state.marketing_read, now - 30 * DAY, now),
        },
        "last_inbound": state.last_inbound or None,
        "engagement_tier": engagement(state, now, policy).tier,
        "limit_failures": {
            "24h": count_since(state.limit_failures, now - DAY, now),
            "7d": count_since(state.limit_failures, now - 7 * DAY, now),
        },
        "last_limit_failure": state.last_limit_failure or None,
        "us_marketing_pause_seen": state.us_pause_ts or None,
        "undeliverable_7d": count_since(state.undeliverable, now - 7 * DAY, now),
        "opted_out": state.opted_out,
        "opt_out_source": state.opt_out_source if state.opted_out else None,
        "customer_service_window_open_until": state.csw_open_until or None,
        "customer_service_window_open": state.csw_open_until > now,
        "linked_id": state.link,
        "last_event": state.last_ts,
        "open_retry_plans": len(state.plans),
    }
