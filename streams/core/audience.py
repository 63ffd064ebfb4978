"""Audience pre-flight: which recipients of a list may get a marketing template now, which must
wait (until when, why) and which never, with a summary of the list.

- ``never``: the US marketing pause, an opt-out (until the user resumes) or an undeliverable
  number (repeated 131026);
- ``wait``: a 131049 cool-down or a resend-storm extension (``not_before`` says until when);
- ``send_now``: everything else (recipients the monitor does not know included).

One :func:`verdict` per recipient (a line of ``POST /v1/audience``); :class:`AudienceSummary`
tallies verdicts in constant memory per distinct country, tier, reason and minute.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field

import msgspec

from streams.core.advice import Advice, AdviceReason


class Group(enum.StrEnum):
    SEND_NOW = "send_now"
    WAIT = "wait"
    NEVER = "never"


#: Reasons that put a recipient in ``never``, in the order one is named.
NEVER_REASONS = (
    AdviceReason.US_MARKETING_PAUSE,
    AdviceReason.OPTED_OUT,
    AdviceReason.UNDELIVERABLE,
)
#: Reasons for which a marketing template sent now fails with 131049.
LIMIT_REASONS = frozenset(
    {
        AdviceReason.PER_USER_LIMIT,
        AdviceReason.RESEND_STORM,
        AdviceReason.US_MARKETING_PAUSE,
    }
)


class Verdict(msgspec.Struct, omit_defaults=True):
    """One recipient of the list: ``n`` is its index in the request, ``recipient`` as given."""

    n: int
    recipient: str
    group: Group | None = None
    reason: str | None = None  # reasons joined with "+" (wait, never)
    not_before: int | None = None  # wait only
    country: str | None = None
    tier: str | None = None
    known: bool = False
    hits_131049: bool = False  # a marketing template sent now would fail with 131049
    error: str | None = None  # the recipient could not be judged (bad input, owner down)


def verdict(n: int, advice: Advice, country: str) -> Verdict:
    """The verdict for one recipient from its advice (as of the pre-flight's time)."""
    never = [r for r in NEVER_REASONS if r in advice.reasons]
    tier = advice.engagement.tier if advice.engagement is not None else None
    hits = any(r in LIMIT_REASONS for r in advice.reasons)
    if never:
        group, reason, not_before = Group.NEVER, "+".join(never), None
    elif not advice.may_send_marketing:
        group, reason, not_before = Group.WAIT, "+".join(advice.reasons), advice.not_before
    else:
        group, reason, not_before = Group.SEND_NOW, None, None
    return Verdict(
        n=n,
        recipient=advice.recipient,
        group=group,
        reason=reason,
        not_before=not_before,
        country=country,
        tier=tier,
        known=advice.known,
        hits_131049=hits and not advice.may_send_marketing,
    )


@dataclass
class AudienceSummary:
    """Counts over the verdicts of one list; ``at`` is the time the verdicts are for."""

    at: int
    total: int = 0
    errors: int = 0
    groups: Counter[str] = field(default_factory=Counter)
    reasons: Counter[tuple[str, str]] = field(default_factory=Counter)  # (group, reason)
    countries: Counter[str] = field(default_factory=Counter)
    tiers: Counter[str] = field(default_factory=Counter)
    hits_131049: int = 0
    #: when the recipients that may be messaged at all may be: minute -> recipients
    ready_by_minute: Counter[int] = field(default_factory=Counter)

    def add(self, v: Verdict) -> None:
        self.total += 1
        if v.error is not None or v.group is None:
            self.errors += 1
            return
        self.groups[v.group] += 1
        if v.reason:
            self.reasons[(v.group, v.reason)] += 1
        self.countries[v.country or "ZZ"] += 1
        self.tiers[v.tier or "unknown"] += 1
        self.hits_131049 += v.hits_131049
        if v.group == Group.SEND_NOW:
            self.ready_by_minute[self.at // 60] += 1
        elif v.group == Group.WAIT and v.not_before is not None:
            self.ready_by_minute[-(-v.not_before // 60)] += 1

    def ready_by(self, share: float) -> int | None:
        """The time (unix seconds, rounded up to the minute) by which ``share`` of the
        recipients that may be messaged at all may be; None if there are none."""
        reachable = sum(self.ready_by_minute.values())
        if not reachable:
            return None
        need = share * reachable
        seen = 0
        for minute in sorted(self.ready_by_minute):
            seen += self.ready_by_minute[minute]
            if seen >= need - 1e-9:
                return max(minute * 60, self.at)
        return None  # pragma: no cover - the loop reaches ``reachable``

    def to_json(self) -> dict[str, object]:
        judged = self.total - self.errors
        return {
            "at": self.at,
            "recipients": self.total,
            "errors": self.errors,
            "groups": {g.value: self.groups.get(g.value, 0) for g in Group},
            "reasons": {f"{g}:{r}": n for (g, r), n in sorted(self.reasons.items())},
            "countries": dict(self.countries.most_common()),
            "engagement_tiers": dict(self.tiers.most_common()),
            "would_hit_131049_now": self.hits_131049,
            "would_hit_131049_share": round(self.hits_131049 / judged, 4) if judged else 0.0,
            "may_be_messaged_by": {
                "50%": self.ready_by(0.5),
                "90%": self.ready_by(0.9),
                "100%": self.ready_by(1.0),
            },
        }
