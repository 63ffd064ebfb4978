"""Stage 3 logic: what the monitor knows about one recipient (a phone number or a BSUID).

Recipients are keyed by phone number when it is known, else by BSUID; a ``LINK`` fact records
the pair so a BSUID-only event can be forwarded to the phone's state. Timestamps are event time.
Lists keep only the retention window (7 days by default), so a recipient's state is small and
bounded; an idle recipient is removed by the expiry sweep (opted-out ones are kept longer, since
an opt-out lasts until the user resumes).
"""

from __future__ import annotations

import msgspec

from streams.core.facts import (
    Applied,
    RecipientFact,
    RecipientFactKind,
    already_applied,
    mark_applied,
)

DAY = 86_400
K = RecipientFactKind


class RecipientState(msgspec.Struct, array_like=True, gc=False):
    """Per-recipient counters and flags (see :class:`RecipientFactKind`)."""

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
    premature_resends: list[int] = []  # marketing sends < 24 h after a 131049
    advice_signature: str = ""  # of the advice last published to the advice topic

    @property
    def opted_out(self) -> bool:
        return self.stop_ts > self.resume_ts

    @property
    def last_limit_failure(self) -> int:
        return max(self.limit_failures, default=0)


def _add(times: list[int], ts: int, horizon: int) -> None:
    times.append(ts)
    times.sort()
    while times and times[0] < horizon:
        times.pop(0)


def count_since(times: list[int], since: int, until: int) -> int:
    return sum(1 for t in times if since < t <= until)


def apply_fact(
    state: RecipientState | None, fact: RecipientFact, retention: int = 7 * DAY
) -> tuple[RecipientState, bool]:
    """Apply ``fact`` once; returns the state and whether it changed anything."""
    state = state if state is not None else RecipientState()
    if already_applied(state.applied, fact.position):
        return state, False
    mark_applied(state.applied, fact.position)
    ts = fact.timestamp
    state.last_ts = max(state.last_ts, ts)
    horizon = state.last_ts - retention
    kind = fact.kind
    if kind == K.MARKETING_DELIVERED:
        _add(state.marketing_delivered, ts, horizon)
    elif kind == K.MARKETING_ATTEMPT:
        last_limit = state.last_limit_failure
        if last_limit and 0 < ts - last_limit < DAY:
            _add(state.premature_resends, ts, horizon)
        _add(state.marketing_attempts, ts, horizon)
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
    elif kind == K.LINK:
        state.link = fact.other
    return state, True


def is_idle(state: RecipientState, watermark: int, retention: int, opt_out_retention: int) -> bool:
    """True when the state may be dropped: nothing happened within the retention."""
    keep = opt_out_retention if state.opted_out else retention
    return state.last_ts < watermark - keep


def recipient_view(state: RecipientState, recipient: str, now: int) -> dict[str, object]:
    """The JSON document of ``GET /v1/recipients/{id}`` (``recipient`` is the caller's input)."""
    return {
        "recipient": recipient,
        "as_of": now,
        "marketing_delivered": {
            "24h": count_since(state.marketing_delivered, now - DAY, now),
            "7d": count_since(state.marketing_delivered, now - 7 * DAY, now),
        },
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
    }
