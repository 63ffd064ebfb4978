"""Retry plans: for a failed message, when it may be sent again and why (or never).

A plan is made for every failed status whose error the catalog says may be retried:

- **per-user marketing limit** (131049, On-Prem 1026; ``RetryKind.NOT_BEFORE``): after the
  catalog's hours (24 h) from the failure, plus a jitter of up to ``limit_jitter_s`` (1 h) so a
  campaign's retries do not all land in one minute;
- **backoff** (pair rate limit 131056, transient errors) and **slow down** (throughput 130429,
  API rate limits): ``backoff_s`` / ``slow_down_s`` after the failure, plus a jitter of up to
  the same again.

Never a plan for the US marketing pause, opt-outs, undeliverable (131026), permanent or
template/account errors (``FIX``, ``NEVER``) or unknown codes. The jitter is a hash of the wamid,
so a replay or a restart makes the same plan; the plan depends only on the failure, not on the
order in which the monitor learns of it.

A plan is ``planned`` until it comes due (published again as ``due``) or is ``cancelled`` by a
later send (attempt or delivery) of the same template to the same recipient.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

import msgspec

from streams.core.catalog import ErrorClass, RetryKind, lookup

HOUR = 3_600
DAY = 24 * HOUR

#: Classes never retried whatever the catalog's retry kind (the sender should drop the message).
_NEVER_CLASSES = frozenset(
    {
        ErrorClass.US_MARKETING_PAUSE,
        ErrorClass.OPT_OUT,
        ErrorClass.UNDELIVERABLE,
        ErrorClass.PERMANENT,
        ErrorClass.EXPERIMENT,
        ErrorClass.UNKNOWN,
    }
)
_PLANNED_KINDS = frozenset({RetryKind.NOT_BEFORE, RetryKind.BACKOFF, RetryKind.SLOW_DOWN})


class PlanStatus(enum.StrEnum):
    PLANNED = "planned"
    DUE = "due"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Delays of retry plans (seconds); see the module docstring."""

    limit_jitter_s: int = HOUR
    backoff_s: int = 60
    slow_down_s: int = 60
    #: a plan comes due once the partition's event time is this far past it, so a resend that
    #: arrives a little out of order still cancels it first
    settle_s: int = 120
    #: closed plans (due or cancelled) stay listed this long after their due time
    keep_s: int = 2 * DAY
    #: minutes of the timer index (and plans in them) visited per flush at most: a backlog
    #: that moves event time by weeks in one batch is caught up over the next flushes
    sweep_budget: int = 100_000


DEFAULT_POLICY = RetryPolicy()


def is_retryable(code: int) -> bool:
    """True when a failure with ``code`` gets a retry plan (the catalog's retry advice)."""
    info = lookup(code)
    return info.retry.kind in _PLANNED_KINDS and info.error_class not in _NEVER_CLASSES


class RetryPlan(msgspec.Struct, array_like=True, gc=False):
    """One failed message's plan (state of the recipients stage; a record of the retries
    topic, see :func:`plan_record`)."""

    wamid: str
    recipient: str
    template: str | None
    sender: str | None
    campaign: str | None
    code: int
    error_class: str
    retry: str  # the catalog's RetryKind
    failed_at: int
    due: int
    status: str = PlanStatus.PLANNED
    cancelled_at: int | None = None  # event time of the send that cancelled it


def jitter(wamid: str, span: int) -> int:
    """A deterministic offset in ``[0, span)`` from the wamid (the same after any replay)."""
    if span <= 0:
        return 0
    digest = hashlib.blake2b(wamid.encode(), digest_size=8).digest()
    return int.from_bytes(digest) % span


def make_plan(
    wamid: str,
    recipient: str,
    code: int,
    failed_at: int,
    *,
    limit: bool,
    template: str | None = None,
    sender: str | None = None,
    campaign: str | None = None,
    policy: RetryPolicy = DEFAULT_POLICY,
) -> RetryPlan | None:
    """The plan for a failed message, or None when it must not be retried.

    ``limit`` says the failure is the per-user marketing limit for this recipient (a 131049 /
    1026 that is not the US pause: the caller knows the recipient's country)."""
    info = lookup(code)
    if limit:
        hours = info.retry.hours if info.retry.kind is RetryKind.NOT_BEFORE else None
        delay = (hours or 24) * HOUR + jitter(wamid, policy.limit_jitter_s)
        error_class, retry = ErrorClass.PER_USER_MARKETING_LIMIT, RetryKind.NOT_BEFORE
    elif is_retryable(code):
        base = policy.slow_down_s if info.retry.kind is RetryKind.SLOW_DOWN else policy.backoff_s
        if info.retry.kind is RetryKind.NOT_BEFORE and info.retry.hours:
            base = info.retry.hours * HOUR
        delay = base + jitter(wamid, base)
        error_class, retry = info.error_class, info.retry.kind
    else:
        return None
    return RetryPlan(
        wamid=wamid,
        recipient=recipient,
        template=template,
        sender=sender,
        campaign=campaign,
        code=code,
        error_class=str(error_class),
        retry=str(retry),
        failed_at=failed_at,
        due=failed_at + delay,
    )


def cancels(plan: RetryPlan, send_ts: int, template: str | None) -> bool:
    """True when a send at ``send_ts`` of ``template`` to the plan's recipient cancels it: a
    later send of the same template (any template when the plan's is unknown)."""
    return (
        plan.status == PlanStatus.PLANNED
        and send_ts > plan.failed_at
        and (plan.template is None or template == plan.template)
    )


def plan_record(plan: RetryPlan) -> dict[str, object]:
    """The JSON object of the retries topic and ``GET /v1/retries`` (documented in README)."""
    return {
        "wamid": plan.wamid,
        "status": plan.status,
        "recipient": plan.recipient,
        "template": plan.template,
        "campaign": plan.campaign,
        "sender": plan.sender,
        "error_code": plan.code,
        "error_class": plan.error_class,
        "retry": plan.retry,
        "failed_at": plan.failed_at,
        "due": plan.due,
        "cancelled_at": plan.cancelled_at,
    }
