"""Recipient advice: may a marketing template be sent to this recipient now, and if not, when.

Policy (DOMAIN.md; every duration configurable in :class:`AdvicePolicy`):

- **per-user marketing limit** (131049, On-Prem 1026): not before the last failure + 24 h
  (Meta: wait at least 24 hours).
- **resend storm**: a marketing send less than 24 h after a 131049 can make the user
  unreachable for up to another 24 h, so each such premature resend pushes the earliest time
  to that resend + 24 h.

Everything is judged from the recipient's history as of ``now`` (facts with a later event time
are ignored), never from the order in which the facts arrived: a resend is premature when some
131049 of the recipient precedes it by less than 24 h, whichever of the two the monitor learned
of first.
- **US marketing pause**: WhatsApp delivers no marketing templates to US numbers (+1 with a US
  area code): never, until Meta lifts the pause.
- **opted out** (131050 / 498 failures, ``user_preferences`` stop): never, until the user
  resumes.
- **undeliverable**: 3 or more 131026 failures within 7 days: suppressed until 7 days after the
  last one (the number is likely not on WhatsApp).

Advice also says whether a customer-service window is open (a marketing template sent inside
it does not count toward the per-user limit: a good moment), how many marketing templates
the recipient received in the last 24 h and 7 days, and the recipient's engagement
(:mod:`streams.core.engagement`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import msgspec

from streams.core.engagement import DEFAULT_POLICY as DEFAULT_ENGAGEMENT
from streams.core.engagement import Engagement, EngagementPolicy, engagement, window_open
from streams.core.geography import is_us_recipient
from streams.core.recipient_state import RecipientState, count_since

HOUR = 3_600
DAY = 24 * HOUR


class AdviceReason(enum.StrEnum):
    PER_USER_LIMIT = "per_user_limit_cooldown"
    RESEND_STORM = "resend_storm_extension"
    US_MARKETING_PAUSE = "us_marketing_pause"
    OPTED_OUT = "opted_out"
    UNDELIVERABLE = "undeliverable"


@dataclass(frozen=True, slots=True)
class AdvicePolicy:
    cooldown_s: int = DAY
    resend_extension_s: int = DAY
    undeliverable_threshold: int = 3
    undeliverable_window_s: int = 7 * DAY
    undeliverable_suppress_s: int = 7 * DAY
    engagement: EngagementPolicy = DEFAULT_ENGAGEMENT


class Advice(msgspec.Struct, frozen=True):
    """The answer for one recipient at ``as_of`` (event time, unix seconds)."""

    recipient: str
    as_of: int
    may_send_marketing: bool
    reasons: tuple[AdviceReason, ...]
    not_before: int | None  # earliest time a marketing template may be sent; None = never
    never_until_resume: bool  # opted out: only the user can lift it
    customer_service_window_open: bool
    customer_service_window_open_until: int | None
    marketing_delivered_24h: int
    marketing_delivered_7d: int
    last_limit_failure: int | None
    known: bool
    engagement: Engagement | None = None


def storm_until(state: RecipientState, now: int, cooldown: int, extension: int) -> int:
    """End of the resend-storm extension at ``now`` (0: none): the latest marketing send made
    less than ``cooldown`` after a 131049, plus ``extension``; from facts at or before ``now``."""
    failures = [f for f in state.limit_failures if f <= now]
    if not failures:
        return 0
    sends = [a.ts for a in state.attempts if a.marketing and a.ts <= now]
    sends += [t for t in state.marketing_attempts if t <= now]  # states written before attempts
    until = 0
    for t in sends:
        if t + extension > until and any(0 < t - f < cooldown for f in failures):
            until = t + extension
    return until


def advise(
    state: RecipientState | None,
    recipient: str,
    now: int,
    *,
    is_us: bool,
    policy: AdvicePolicy = AdvicePolicy(),
) -> Advice:
    """Advice for ``recipient`` at ``now`` from what the monitor knows (``state``), as of
    ``now``: facts with a later event time do not count."""
    s = state if state is not None else RecipientState()
    reasons: list[AdviceReason] = []
    never = False
    not_before = 0
    opted_out = s.opted_out_at(now)
    if is_us:
        reasons.append(AdviceReason.US_MARKETING_PAUSE)
        never = True
    if opted_out:
        reasons.append(AdviceReason.OPTED_OUT)
        never = True
    last_limit = max((f for f in s.limit_failures if f <= now), default=0)
    if last_limit and now < last_limit + policy.cooldown_s:
        reasons.append(AdviceReason.PER_USER_LIMIT)
        not_before = max(not_before, last_limit + policy.cooldown_s)
    storm = storm_until(s, now, policy.cooldown_s, policy.resend_extension_s)
    if storm > now:
        reasons.append(AdviceReason.RESEND_STORM)
        not_before = max(not_before, storm)
    recent_undeliverable = [
        t for t in s.undeliverable if now - policy.undeliverable_window_s < t <= now
    ]
    if len(recent_undeliverable) >= policy.undeliverable_threshold:
        until = max(recent_undeliverable) + policy.undeliverable_suppress_s
        if until > now:
            reasons.append(AdviceReason.UNDELIVERABLE)
            not_before = max(not_before, until)
    blocked = never or not_before > now
    return Advice(
        recipient=recipient,
        as_of=now,
        may_send_marketing=not blocked,
        reasons=tuple(reasons),
        not_before=None if never else (not_before if not_before > now else now),
        never_until_resume=opted_out,
        customer_service_window_open=window_open(s, now),
        customer_service_window_open_until=s.csw_open_until or None,
        marketing_delivered_24h=count_since(s.marketing_delivered, now - DAY, now),
        marketing_delivered_7d=count_since(s.marketing_delivered, now - 7 * DAY, now),
        last_limit_failure=last_limit or None,
        known=state is not None,
        engagement=engagement(state, now, policy.engagement),
    )


def advice_record(
    state: RecipientState | None, recipient: str, now: int, policy: AdvicePolicy = AdvicePolicy()
) -> tuple[str, bytes]:
    """The advice topic's record for ``recipient`` (a normalized id) at ``now`` (JSON), and its
    signature: what a sender acts on (may send, reasons, not before, the customer-service
    window, the engagement tier). A record is published only when its signature changed."""
    advice = advise(state, recipient, now, is_us=is_us_recipient(recipient), policy=policy)
    tier = advice.engagement.tier if advice.engagement is not None else ""
    signature = (
        f"{advice.may_send_marketing}|{','.join(advice.reasons)}|"
        f"{None if advice.may_send_marketing else advice.not_before}|"
        f"{advice.customer_service_window_open_until}|{tier}"
    )
    return signature, msgspec.json.encode(advice)
