"""Immediate alert rules (incidents on their own, no statistics) and resend storms.

Immediate rules, fed by the WABA-level webhooks and by failure counts per error code:

- ``template_paused`` / ``template_disabled``: a template status update PAUSED / DISABLED
  (132015 / 132016 follow). PAUSED clears on REINSTATED, APPROVED or UNPAUSED; DISABLED is final,
  so it is held for ``event_ttl_seconds`` and never posts a resolve.
- ``template_quality_red``: template quality RED (or status FLAGGED); clears on GREEN / YELLOW.
- ``phone_quality``: a sending number FLAGGED or its messaging limit DOWNGRADEd; clears on
  UNFLAGGED / UPGRADE.
- ``account_restriction``: an account restriction, violation or ban (``account_update``); clears
  on a REINSTATE ban state, else expires after ``event_ttl_seconds`` without a resolve post. The
  evidence says until when (``restricted until <ISO 8601 UTC>``) and the ban date, when given.
- ``billing_error``: any 131042 (business payment issue: every send fails) in the window.
- ``spam_rate_limit_burst``: at least ``spam_burst_threshold`` 131048 / 471 failures from one
  sending number in the window.
- ``throughput_burst``: at least ``throughput_burst_threshold`` throughput errors (130429, 131064)
  from one sending number in the window. Fed by account-level errors (``value.errors``, no
  message); failed statuses with those codes go to the spike detector instead.

Resend storms: a marketing template re-sent to a recipient less than 24 h after that recipient's
131049 (Meta: resending within 24 h can block the user for another 24 h). The recipients stage
decides with :func:`is_premature_resend` and reports each case to
:meth:`ResendStormRule.record`; the rule counts distinct recipients per sending number in the
window (whatever the template: a storm is a sender's resend policy, not one template's) and
alerts at ``threshold`` recipients: one incident per sending number, naming how many recipients
(never who), the top templates and campaigns, updated as it grows.

Judged on event time, not on arrival: an evaluation at ``now`` uses only events before ``now``
(an event read early, ahead of the evaluations, waits for its time; a later event of the same
template / number / account read early does not hide an earlier one), and every finding says
when its condition began from the data itself (``since``: the event's time, the minute a burst
reached its threshold, the resend that made a storm), so the same events give the same
incidents at the same times however they arrive. Both classes return an
:class:`~streams.core.alerts.Evaluation` for the :class:`~streams.core.alerts.AlertBook`.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from typing import TypeVar

import msgspec

from streams.core.alerts import (
    Evaluation,
    Evidence,
    Family,
    Finding,
    Scope,
    ScopeKind,
    Severity,
    Verdict,
)
from streams.core.catalog import ErrorClass
from streams.core.times import iso_utc

DAY = 86_400
_NEVER = 1 << 62  # first_time() of a rule keeping nothing

TEMPLATE_PAUSED = "template_paused"
TEMPLATE_DISABLED = "template_disabled"
TEMPLATE_QUALITY_RED = "template_quality_red"
PHONE_QUALITY = "phone_quality"
ACCOUNT_RESTRICTION = "account_restriction"
BILLING_ERROR = "billing_error"
SPAM_BURST = "spam_rate_limit_burst"
THROUGHPUT_BURST = "throughput_burst"
RESEND_STORM = "resend_storm"

IMMEDIATE_RULES = frozenset(
    {
        TEMPLATE_PAUSED,
        TEMPLATE_DISABLED,
        TEMPLATE_QUALITY_RED,
        PHONE_QUALITY,
        ACCOUNT_RESTRICTION,
        BILLING_ERROR,
        SPAM_BURST,
        THROUGHPUT_BURST,
    }
)

BILLING_CODES = frozenset({131042})
SPAM_CODES = frozenset({131048, 471})
THROUGHPUT_CODES = frozenset({130429, 131064})
ACCOUNT_FIRING_EVENTS = frozenset({"ACCOUNT_RESTRICTION", "ACCOUNT_VIOLATION", "ACCOUNT_BANNED"})
ACCOUNT_FIRING_BANS = frozenset({"DISABLE", "SCHEDULE_FOR_DISABLE"})

_TITLES = {
    TEMPLATE_PAUSED: "Template paused",
    TEMPLATE_DISABLED: "Template disabled",
    TEMPLATE_QUALITY_RED: "Template quality RED",
    PHONE_QUALITY: "Sending number quality flag / downgrade",
    ACCOUNT_RESTRICTION: "Account restricted or banned",
    BILLING_ERROR: "Billing error (131042): every send fails",
    SPAM_BURST: "Spam rate limit burst (131048)",
    THROUGHPUT_BURST: "Throughput limit burst (130429 / 131064)",
    RESEND_STORM: "Resend storm: marketing resent < 24 h after 131049",
}
_CLASSES = {
    TEMPLATE_PAUSED: ErrorClass.TEMPLATE,
    TEMPLATE_DISABLED: ErrorClass.TEMPLATE,
    TEMPLATE_QUALITY_RED: ErrorClass.TEMPLATE,
    PHONE_QUALITY: ErrorClass.SPAM_QUALITY,
    ACCOUNT_RESTRICTION: ErrorClass.ACCOUNT_ENFORCEMENT,
    BILLING_ERROR: ErrorClass.ACCOUNT_ENFORCEMENT,
    SPAM_BURST: ErrorClass.SPAM_QUALITY,
    THROUGHPUT_BURST: ErrorClass.THROUGHPUT,
    RESEND_STORM: ErrorClass.PER_USER_MARKETING_LIMIT,
}


class TemplateStatusChange(msgspec.Struct, frozen=True):
    """``message_template_status_update``: ``event`` is PAUSED, DISABLED, REINSTATED, ..."""

    template: str
    event: str
    ts: int
    reason: str | None = None
    disabled_at: int | None = None  # DISABLED: when (``disable_info.disable_date``)


class TemplateQualityChange(msgspec.Struct, frozen=True):
    """``message_template_quality_update``: ``quality`` is GREEN, YELLOW or RED."""

    template: str
    quality: str
    ts: int
    previous: str | None = None


class PhoneQualityChange(msgspec.Struct, frozen=True):
    """``phone_number_quality_update`` of one sending number (the key the buckets use)."""

    sender: str
    event: str
    ts: int
    current_limit: str | None = None


class AccountEvent(msgspec.Struct, frozen=True):
    """``account_update``: restrictions, violations and the ban state of the account."""

    event: str
    ts: int
    restriction_types: tuple[str, ...] = ()
    ban_state: str | None = None
    violation_type: str | None = None
    restricted_until: int | None = None  # unix seconds: when the last restriction expires
    ban_date: str | None = None  # as Meta words it


class ErrorCount(msgspec.Struct, frozen=True):
    """``count`` failures with error ``code`` from sending number ``sender`` at ``ts``."""

    code: int
    sender: str
    ts: int
    count: int = 1


ImmediateInput = (
    TemplateStatusChange | TemplateQualityChange | PhoneQualityChange | AccountEvent | ErrorCount
)


class ImmediateConfig(msgspec.Struct, frozen=True):
    window_seconds: int = 600
    spam_burst_threshold: int = 20
    billing_threshold: int = 1
    event_ttl_seconds: int = DAY
    #: throughput errors (130429, 131064) from one sending number in the window
    throughput_burst_threshold: int = 20

    def threshold(self, rule: str) -> int:
        """The count at which the error-count ``rule`` fires."""
        if rule == BILLING_ERROR:
            return self.billing_threshold
        if rule == THROUGHPUT_BURST:
            return self.throughput_burst_threshold
        return self.spam_burst_threshold


class _Active(msgspec.Struct):
    """One event of one event-driven alert: firing (with its finding) or cleared."""

    ts: int
    finding: Finding | None


def _finding(
    rule: str, scope: Scope, evidence: Evidence, *, notify_resolve: bool = True, since: int
) -> Finding:
    return Finding(
        rule=rule,
        scope=scope,
        group=f"{rule}:{scope}",
        verdict=Verdict.POSITIVE,
        evidence=evidence,
        title=_TITLES[rule],
        error_class=_CLASSES[rule],
        severity=Severity.CRITICAL,
        notify_resolve=notify_resolve,
        family=Family.IMMEDIATE,
        since=since,
    )


class Resend(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One premature resend: when, to whom (a number from the recipient's digest), what."""

    ts: int
    recipient: int
    template: str
    campaign: str
    send: int = 0  # a number of the send's wamid (0: not known)


class ImmediateState(msgspec.Struct, array_like=True, gc=False):
    """What :class:`ImmediateRules` and :class:`ResendStormRule` remember, to be saved and
    restored (small: bounded by the event TTL and the windows)."""

    events: list[tuple[str, Scope, int, Finding | None]] = []
    errors: list[tuple[str, Scope, dict[int, int]]] = []
    resends: list[tuple[Scope, list[tuple[int, int]]]] = []  # storms before they were per sender
    storms: list[tuple[str, list[Resend]]] = []


V = TypeVar("V")


def _str_key(item: tuple[object, object]) -> str:
    return str(item[0])


def _by_key(d: dict[tuple[str, Scope], V]) -> list[tuple[tuple[str, Scope], V]]:
    """Items in a stable order (scopes do not compare), so equal states encode equally."""
    return sorted(d.items(), key=_str_key)


class ImmediateRules:
    """The immediate rules; :meth:`observe` events, :meth:`evaluate` at event time."""

    def __init__(self, config: ImmediateConfig | None = None) -> None:
        self.config = config or ImmediateConfig()
        #: per alert, its events in time order (the latest before an evaluation decides)
        self._events: dict[tuple[str, Scope], list[_Active]] = {}
        self._errors: dict[tuple[str, Scope], dict[int, int]] = defaultdict(dict)

    def export(self, into: ImmediateState) -> None:
        into.events = [
            (r, sc, a.ts, a.finding) for (r, sc), events in _by_key(self._events) for a in events
        ]
        into.errors = [(r, sc, dict(m)) for (r, sc), m in _by_key(self._errors) if m]

    def load(self, state: ImmediateState) -> None:
        self._events = {}
        for r, sc, ts, f in state.events:
            self._events.setdefault((r, sc), []).append(_Active(ts, f))
        for events in self._events.values():
            events.sort(key=lambda a: a.ts)
        self._errors = defaultdict(dict, {(r, sc): dict(m) for r, sc, m in state.errors})

    def observe(self, event: ImmediateInput) -> None:
        if isinstance(event, ErrorCount):
            self._count(event)
        elif isinstance(event, TemplateStatusChange):
            self._template_status(event)
        elif isinstance(event, TemplateQualityChange):
            scope, quality = Scope.for_template(event.template), event.quality.upper()
            if quality == "RED":
                detail = f"quality {event.previous or '?'} -> RED"
                self._set(TEMPLATE_QUALITY_RED, scope, event.ts, Evidence(1, detail=detail))
            elif quality in ("GREEN", "YELLOW"):
                self._set(TEMPLATE_QUALITY_RED, scope, event.ts, None)
        elif isinstance(event, PhoneQualityChange):
            scope, name = Scope.for_sender(event.sender), event.event.upper()
            if name in ("FLAGGED", "DOWNGRADE"):
                detail = f"{name}, messaging limit {event.current_limit or 'unknown'}"
                self._set(PHONE_QUALITY, scope, event.ts, Evidence(1, detail=detail))
            elif name in ("UNFLAGGED", "UPGRADE"):
                self._set(PHONE_QUALITY, scope, event.ts, None)
        else:
            self._account(event)

    def _template_status(self, event: TemplateStatusChange) -> None:
        scope, name = Scope.for_template(event.template), event.event.upper()
        detail = name + (f" ({event.reason})" if event.reason else "")
        if event.disabled_at:
            detail += f", disabled {iso_utc(event.disabled_at)}"
        evidence = Evidence(1, detail=detail)
        if name == "PAUSED":
            self._set(TEMPLATE_PAUSED, scope, event.ts, evidence)
        elif name == "DISABLED":
            self._set(TEMPLATE_PAUSED, scope, event.ts, None)
            self._set(TEMPLATE_DISABLED, scope, event.ts, evidence, notify_resolve=False)
        elif name == "FLAGGED":
            self._set(TEMPLATE_QUALITY_RED, scope, event.ts, evidence)
        elif name in ("REINSTATED", "APPROVED", "UNPAUSED"):
            self._set(TEMPLATE_PAUSED, scope, event.ts, None)
            self._set(TEMPLATE_QUALITY_RED, scope, event.ts, None)
            self._set(TEMPLATE_DISABLED, scope, event.ts, None)

    def _account(self, event: AccountEvent) -> None:
        scope, name = Scope.for_account(), event.event.upper()
        ban = (event.ban_state or "").upper()
        if ban == "REINSTATE":
            self._set(ACCOUNT_RESTRICTION, scope, event.ts, None)
        elif name in ACCOUNT_FIRING_EVENTS or ban in ACCOUNT_FIRING_BANS:
            parts = [name, *event.restriction_types, ban, event.violation_type or ""]
            if event.restricted_until:
                parts.append(f"restricted until {iso_utc(event.restricted_until)}")
            if event.ban_date:
                parts.append(f"ban date {event.ban_date}")
            detail = ", ".join(p for p in parts if p)
            evidence = Evidence(1, detail=detail)
            self._set(ACCOUNT_RESTRICTION, scope, event.ts, evidence, notify_resolve=False)

    def _set(
        self,
        rule: str,
        scope: Scope,
        ts: int,
        evidence: Evidence | None,
        *,
        notify_resolve: bool = True,
    ) -> None:
        finding = None
        if evidence is not None:
            finding = _finding(rule, scope, evidence, notify_resolve=notify_resolve, since=ts)
        events = self._events.setdefault((rule, scope), [])
        # in time order; an event at the same time as a kept one replaces it (a replay)
        events[:] = [a for a in events if a.ts != ts]
        events.append(_Active(ts, finding))
        events.sort(key=lambda a: a.ts)

    def _count(self, event: ErrorCount) -> None:
        if event.code in BILLING_CODES:
            key = (BILLING_ERROR, Scope.for_account())
        elif event.code in SPAM_CODES:
            key = (SPAM_BURST, Scope.for_sender(event.sender))
        elif event.code in THROUGHPUT_CODES:
            key = (THROUGHPUT_BURST, Scope.for_sender(event.sender))
        else:
            return
        minutes = self._errors[key]
        minute = event.ts // 60
        minutes[minute] = minutes.get(minute, 0) + event.count

    def first_time(self) -> int:
        """The earliest event time of an event or error kept (a large number when none):
        evaluations before it find nothing and change nothing."""
        times = [a.ts for events in self._events.values() for a in events]
        times += [m * 60 for minutes in self._errors.values() for m in minutes]
        return min(times, default=_NEVER)

    def evaluate(self, now: int) -> Evaluation:
        """The alerts in force at event time ``now``: per alert, the latest of its events
        before ``now`` (unless older than ``event_ttl_seconds``); per error burst, the errors of
        the complete minutes of the window before ``now``."""
        cfg = self.config
        findings: list[Finding] = []
        for key, events in list(self._events.items()):
            past = [a for a in events if a.ts < now]
            if past:  # only the latest past event still matters, and those to come
                events[:] = events[len(past) - 1 :]
            if not events or (events[-1].ts < now and now - events[-1].ts >= cfg.event_ttl_seconds):
                del self._events[key]
                continue
            if past and past[-1].finding is not None and now - past[-1].ts < cfg.event_ttl_seconds:
                findings.append(past[-1].finding)
        lo, hi = (now - cfg.window_seconds) // 60, now // 60
        for (rule, scope), minutes in list(self._errors.items()):
            for minute in [m for m in minutes if m < lo]:
                del minutes[minute]
            if not minutes:
                del self._errors[(rule, scope)]
                continue
            count = sum(n for m, n in minutes.items() if m < hi)
            threshold = cfg.threshold(rule)
            if count >= threshold:
                since = _burst_start(minutes, hi, threshold, cfg.window_seconds // 60)
                evidence = Evidence(count, window_seconds=cfg.window_seconds)
                findings.append(_finding(rule, scope, evidence, since=since))
        findings.sort(key=lambda f: f.key)
        return Evaluation(at=now, rules=IMMEDIATE_RULES, findings=tuple(findings))


def _burst_start(minutes: dict[int, int], hi: int, threshold: int, width: int) -> int:
    """When the burst ending before minute ``hi`` reached ``threshold`` errors within ``width``
    minutes (the end of that minute; event time)."""
    first = min(minutes)
    for m in range(first, hi):
        if sum(minutes.get(x, 0) for x in range(m - width + 1, m + 1)) >= threshold:
            return (m + 1) * 60
    return hi * 60


def is_premature_resend(
    last_limit_failure: int | None, attempt_ts: int, hold_seconds: int = DAY
) -> bool:
    """True when a marketing send at ``attempt_ts`` comes less than 24 h after a 131049."""
    if not last_limit_failure:
        return False
    return 0 <= attempt_ts - last_limit_failure < hold_seconds


class ResendStormConfig(msgspec.Struct, frozen=True):
    window_seconds: int = 3600
    threshold: int = 10  # distinct recipients per sending number in the window
    resolve_evaluations: int = 5
    top: int = 3  # templates and campaigns named


#: Recipient counts at which a firing storm is worth an UPDATED (it grew).
STORM_STEPS = (10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000)


class ResendStormRule:
    """Counts premature resends per sending number (see the module docstring).

    Recipients are kept only as 64-bit numbers of their digests, to count them.
    """

    def __init__(self, config: ResendStormConfig | None = None) -> None:
        self.config = config or ResendStormConfig()
        self._resends: dict[str, list[Resend]] = defaultdict(list)

    def record(
        self,
        template: str,
        sender: str,
        ts: int,
        recipient: str,
        campaign: str = "",
        send: int = 0,
    ) -> None:
        """One premature resend of ``template`` from ``sender`` to ``recipient`` at ``ts``;
        ``send`` tells one send apart: signalled again (an earlier time or its campaign learned
        later, whatever the order of arrival) it replaces what was known of it."""
        # a stable number (not hash(): it changes between processes, and the state is saved)
        number = int.from_bytes(hashlib.blake2b(recipient.encode(), digest_size=8).digest())
        resend = Resend(ts, number, template, campaign, send)
        kept = self._resends[sender or "unknown"]
        if resend in kept:  # the same resend signalled again (a replay): counted once
            return
        if send:
            before = next((r for r in kept if r.send == send and r.recipient == number), None)
            if before is not None:
                resend = Resend(
                    min(ts, before.ts), number, template, campaign or before.campaign, send
                )
                kept.remove(before)
        kept.append(resend)

    def resends_in(self, scope: Scope, lo: int, hi: int) -> int:
        """Premature resends in ``[lo, hi)`` that belong to ``scope``."""
        return sum(
            1
            for sender, kept in self._resends.items()
            for r in kept
            if lo <= r.ts < hi and _belongs(r, sender, scope)
        )

    def export(self, into: ImmediateState) -> None:
        into.storms = [(sender, list(v)) for sender, v in sorted(self._resends.items()) if v]

    def load(self, state: ImmediateState) -> None:
        self._resends = defaultdict(list, {sender: list(v) for sender, v in state.storms})

    def first_time(self) -> int:
        """The earliest time of a resend kept (a large number when none): evaluations before
        it find nothing and change nothing."""
        return min((r.ts for kept in self._resends.values() for r in kept), default=_NEVER)

    def evaluate(self, now: int) -> Evaluation:
        """Storms at event time ``now``: resends in the window before ``now``."""
        cfg = self.config
        lo = now - cfg.window_seconds
        findings: list[Finding] = []
        for sender in sorted(self._resends):
            # two windows are kept: when a storm began is found by sliding over them
            kept = [r for r in self._resends[sender] if r.ts >= lo - cfg.window_seconds]
            if not kept:
                del self._resends[sender]
                continue
            self._resends[sender] = kept
            current = [r for r in kept if lo <= r.ts < now]
            recipients = len({r.recipient for r in current})
            if recipients < cfg.threshold:
                continue
            findings.append(self._finding(sender, kept, current, recipients, now))
        return Evaluation(at=now, rules=frozenset({RESEND_STORM}), findings=tuple(findings))

    def _finding(
        self, sender: str, kept: list[Resend], current: list[Resend], recipients: int, now: int
    ) -> Finding:
        cfg = self.config
        templates = _top((r.template for r in current), cfg.top)
        campaigns = _top((r.campaign for r in current if r.campaign), cfg.top)
        detail = (
            f"{len(current)} marketing resends to {recipients} recipients less than 24 h after "
            f"their 131049; templates: {_listed(templates)}"
        )
        if campaigns:
            detail += f"; campaigns: {_listed(campaigns)}"
        step = max((s for s in STORM_STEPS if s <= recipients), default=cfg.threshold)
        evidence = Evidence(
            recipients,
            window_seconds=cfg.window_seconds,
            detail=detail,
            breakdown={"templates": templates, "campaigns": campaigns},
        )
        scope = Scope.for_sender(sender)
        return Finding(
            rule=RESEND_STORM,
            scope=scope,
            group=f"{RESEND_STORM}|{scope}",
            verdict=Verdict.POSITIVE,
            evidence=evidence,
            title=_TITLES[RESEND_STORM],
            error_class=ErrorClass.PER_USER_MARKETING_LIMIT,
            resolve_evaluations=cfg.resolve_evaluations,
            family=Family.STORM,
            since=_storm_start(kept, now, cfg.window_seconds, cfg.threshold),
            update_level=step,
        )


def _belongs(r: Resend, sender: str, scope: Scope) -> bool:
    """Whether resend ``r`` from ``sender`` is part of ``scope``'s traffic (never of a
    country's: a resend's country is not kept)."""
    kind = scope.kind
    if kind is ScopeKind.COUNTRY or (scope.sender and sender != scope.sender):
        return False
    if kind is ScopeKind.SENDER:
        return sender == scope.key
    if kind is ScopeKind.TEMPLATE:
        return r.template == scope.key
    if kind is ScopeKind.CAMPAIGN:
        return r.campaign == scope.key
    return True


def _storm_start(resends: list[Resend], now: int, window: int, threshold: int) -> int:
    """The time of the resend that last took the window's distinct recipients to
    ``threshold`` (the storm's start, from the data alone)."""
    ordered = sorted((r for r in resends if r.ts < now), key=lambda r: (r.ts, r.recipient))
    counts: dict[int, int] = {}
    start, below, left = ordered[0].ts if ordered else now, True, 0
    for r in ordered:
        while ordered[left].ts < r.ts - window + 1:
            gone = ordered[left].recipient
            counts[gone] -= 1
            if not counts[gone]:
                del counts[gone]
            left += 1
        counts[r.recipient] = counts.get(r.recipient, 0) + 1
        if len(counts) >= threshold:
            if below:
                start, below = r.ts, False
        else:
            below = True
    return start


def _top(values: Iterable[str], n: int) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def _listed(items: list[tuple[str, int]]) -> str:
    return ", ".join(f"{name} ({n})" for name, n in items) or "-"
