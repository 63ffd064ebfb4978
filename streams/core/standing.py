"""Standing conditions: a policy in force, reported as such, never as a spike.

Since 2025-04-01 WhatsApp delivers no marketing template to a US number (+1 with a US area code):
such a send fails with 131049, and the error catalog calls it the US marketing pause. Every US
recipient in a marketing audience fails, every minute, at the same rate: it is not an anomaly
to test against a baseline but a condition to fix once (remove US numbers from marketing
audiences; the advice topic lists each of them as ``us_marketing_pause``, never to be retried).

:class:`StandingRule` reports it as ONE incident for the account while it lasts: firing from the
first minute with a US-pause failure (its ``since``, from the data), reminded once a day
(``repeat_seconds``), resolved after a whole day without one. The evidence counts the US
recipients (distinct) and the failed messages of the last 24 hours and names the top sending
numbers, templates and campaigns. Counts come from the spike detector's minute tallies (the
class is tallied there, never judged) and from :meth:`StandingRule.record`, so they follow
event time exactly like the detector's.
"""

from __future__ import annotations

import msgspec

from streams.core.alerts import Evaluation, Evidence, Family, Finding, Scope, ScopeKind, Verdict
from streams.core.catalog import ErrorClass
from streams.core.detector import SpikeDetector

US_PAUSE = "us_marketing_pause"
DAY = 86_400
_CLASS = ErrorClass.US_MARKETING_PAUSE


class StandingConfig(msgspec.Struct, frozen=True):
    window_seconds: int = DAY
    repeat_seconds: int = DAY
    top: int = 3
    #: distinct recipients remembered per hour (beyond it the count says "at least")
    recipients_per_hour: int = 10_000


class StandingState(msgspec.Struct, array_like=True, gc=False):
    """What :class:`StandingRule` keeps, to be saved: per hour, the US recipients (as 64-bit
    numbers of their digests) and whether the hour had more than it keeps."""

    hours: dict[int, list[int]] = {}
    capped: list[int] = []


class StandingRule:
    def __init__(self, config: StandingConfig | None = None) -> None:
        self.config = config or StandingConfig()
        self._hours: dict[int, set[int]] = {}
        self._capped: set[int] = set()
        self._changed: set[int] = set()  # hours changed since take_changes

    def take_changes(self) -> set[int]:
        """Hours changed or forgotten since the last call (to save)."""
        changed, self._changed = self._changed, set()
        return changed

    def touch_all(self) -> None:
        self._changed |= set(self._hours)

    def record(self, minute: int, recipient: int) -> None:
        """A US-pause failure of ``recipient`` (a number of its digest) in ``minute``."""
        hour = minute // 60
        kept = self._hours.setdefault(hour, set())
        if recipient in kept:
            return
        if len(kept) < self.config.recipients_per_hour:
            kept.add(recipient)
            self._changed.add(hour)
        else:
            self._capped.add(hour)

    def export(self) -> StandingState:
        return StandingState(
            {h: sorted(v) for h, v in sorted(self._hours.items())}, sorted(self._capped)
        )

    def load(self, state: StandingState) -> None:
        self._hours = {h: set(v) for h, v in state.hours.items()}
        self._capped = set(state.capped)

    def evaluate(self, now: int, detector: SpikeDetector) -> Evaluation:
        """The US marketing pause at event time ``now``: the day of complete minutes before."""
        cfg = self.config
        hi = now // 60
        lo = hi - cfg.window_seconds // 60
        for hour in [h for h in self._hours if (h + 1) * 60 <= lo]:
            del self._hours[hour]
            self._capped.discard(hour)
            self._changed.add(hour)
        rules = frozenset({US_PAUSE})
        account = Scope.for_account()
        failures = detector.window(account, lo, hi).errors.get(_CLASS, 0)
        if not failures:
            return Evaluation(at=now, rules=rules)
        parts: dict[ScopeKind, list[tuple[str, int]]] = {}
        for scope in detector.scopes():
            if scope.kind in (ScopeKind.SENDER, ScopeKind.TEMPLATE, ScopeKind.CAMPAIGN):
                n = detector.window(scope, lo, hi).errors.get(_CLASS, 0)
                if n:
                    parts.setdefault(scope.kind, []).append((scope.key, n))
        top = {
            kind: sorted(v, key=lambda kv: (-kv[1], kv[0]))[: cfg.top] for kind, v in parts.items()
        }
        recipients, capped = self._recipients(lo, hi)
        first = detector.first_minute(account, _CLASS, lo, hi)
        who = f"{'at least ' if capped else ''}{recipients} US recipients" if recipients else ""
        detail = (
            f"{who + ' were sent' if who else 'sent'} marketing templates in the last 24 h: "
            f"{failures} failed with 131049 (WhatsApp delivers no marketing to US numbers)"
        )
        for kind, label in (
            (ScopeKind.SENDER, "numbers"),
            (ScopeKind.TEMPLATE, "templates"),
            (ScopeKind.CAMPAIGN, "campaigns"),
        ):
            if kind in top:
                detail += f"; {label}: " + ", ".join(f"{k} ({n})" for k, n in top[kind])
        evidence = Evidence(
            recipients or failures,
            attempts=failures,
            window_seconds=cfg.window_seconds,
            detail=detail,
            breakdown={
                "senders": top.get(ScopeKind.SENDER, []),
                "templates": top.get(ScopeKind.TEMPLATE, []),
                "campaigns": top.get(ScopeKind.CAMPAIGN, []),
            },
        )
        finding = Finding(
            rule=US_PAUSE,
            scope=account,
            group=f"standing:{US_PAUSE}",
            verdict=Verdict.POSITIVE,
            evidence=evidence,
            title="US marketing pause: marketing templates sent to US numbers",
            error_class=_CLASS,
            family=Family.STANDING,
            since=(first if first is not None else hi) * 60,
            repeat_seconds=cfg.repeat_seconds,
        )
        return Evaluation(at=now, rules=rules, findings=(finding,))

    def _recipients(self, lo: int, hi: int) -> tuple[int, bool]:
        """Distinct US recipients in minutes ``[lo, hi)`` (by whole hours) and whether some
        hour had more than it kept."""
        hours = [h for h in self._hours if lo // 60 <= h <= (hi - 1) // 60]
        seen: set[int] = set()
        for h in hours:
            seen |= self._hours[h]
        return len(seen), any(h in self._capped for h in hours)
