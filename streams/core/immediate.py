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
:meth:`ResendStormRule.record`; the rule counts distinct recipients per template and sending
number in the window and alerts at ``threshold`` recipients, naming the template and the count.

Event-driven rules keep the latest event per template / number / account (event time; an older
event arriving late does not undo a newer one). Both classes return an
:class:`~streams.core.alerts.Evaluation` for the :class:`~streams.core.alerts.AlertBook`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import defaultdict
from typing import TypeVar

import msgspec

from streams.core.alerts import Evaluation, Evidence, Finding, Scope, Severity, Verdict
from streams.core.catalog import ErrorClass

DAY = 86_400

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


def iso_utc(ts: int) -> str:
    """Unix seconds as ISO 8601 UTC (``2026-05-01T12:00:00Z``), for alert details."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Active(msgspec.Struct):
    """The latest event of one event-driven alert: firing (with its finding) or cleared."""

    ts: int
    finding: Finding | None


def _finding(
    rule: str, scope: Scope, evidence: Evidence, *, notify_resolve: bool = True
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
    )


class ImmediateState(msgspec.Struct, array_like=True, gc=False):
    """What :class:`ImmediateRules` and :class:`ResendStormRule` remember, to be saved and
    restored (small: bounded by the event TTL and the windows)."""

    events: list[tuple[str, Scope, int, Finding | None]] = []
    errors: list[tuple[str, Scope, dict[int, int]]] = []
    resends: list[tuple[Scope, list[tuple[int, int]]]] = []


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
        self._events: dict[tuple[str, Scope], _Active] = {}
        self._errors: dict[tuple[str, Scope], dict[int, int]] = defaultdict(dict)

    def export(self, into: ImmediateState) -> None:
        into.events = [(r, sc, a.ts, a.finding) for (r, sc), a in _by_key(self._events)]
        into.errors = [(r, sc, dict(m)) for (r, sc), m in _by_key(self._errors) if m]

    def load(self, state: ImmediateState) -> None:
        self._events = {(r, sc): _Active(ts, f) for r, sc, ts, f in state.events}
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
        current = self._events.get((rule, scope))
        if current is not None and ts < current.ts:
            return  # a late, older event does not undo a newer one
        finding = None
        if evidence is not None:
            finding = _finding(rule, scope, evidence, notify_resolve=notify_resolve)
        self._events[(rule, scope)] = _Active(ts, finding)

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

    def evaluate(self, now: int) -> Evaluation:
        cfg = self.config
        findings: list[Finding] = []
        for key, active in list(self._events.items()):
            if now - active.ts >= cfg.event_ttl_seconds:
                del self._events[key]
            elif active.finding is not None:
                findings.append(active.finding)
        lo, hi = (now - cfg.window_seconds) // 60, now // 60
        for (rule, scope), minutes in list(self._errors.items()):
            for minute in [m for m in minutes if m < lo]:
                del minutes[minute]
            if not minutes:
                del self._errors[(rule, scope)]
                continue
            count = sum(n for m, n in minutes.items() if m < hi)
            if count >= cfg.threshold(rule):
                evidence = Evidence(count, window_seconds=cfg.window_seconds)
                findings.append(_finding(rule, scope, evidence))
        findings.sort(key=lambda f: f.key)
        return Evaluation(at=now, rules=IMMEDIATE_RULES, findings=tuple(findings))


def is_premature_resend(
    last_limit_failure: int | None, attempt_ts: int, hold_seconds: int = DAY
) -> bool:
    """True when a marketing send at ``attempt_ts`` comes less than 24 h after a 131049."""
    if not last_limit_failure:
        return False
    return 0 <= attempt_ts - last_limit_failure < hold_seconds


class ResendStormConfig(msgspec.Struct, frozen=True):
    window_seconds: int = 3600
    threshold: int = 10  # distinct recipients per template and sender in the window
    resolve_evaluations: int = 5


class ResendStormRule:
    """Counts premature resends per template and sending number (see the module docstring).

    Recipients are kept only as 64-bit numbers of their digests, to count them.
    """

    def __init__(self, config: ResendStormConfig | None = None) -> None:
        self.config = config or ResendStormConfig()
        self._resends: dict[Scope, list[tuple[int, int]]] = defaultdict(list)

    def record(self, template: str, sender: str, ts: int, recipient: str) -> None:
        """One premature resend of ``template`` from ``sender`` to ``recipient`` at ``ts``."""
        # a stable number (not hash(): it changes between processes, and the state is saved)
        number = int.from_bytes(hashlib.blake2b(recipient.encode(), digest_size=8).digest())
        self._resends[Scope.for_template(template, sender)].append((ts, number))

    def export(self, into: ImmediateState) -> None:
        into.resends = [(sc, list(v)) for sc, v in sorted(self._resends.items(), key=_str_key) if v]

    def load(self, state: ImmediateState) -> None:
        self._resends = defaultdict(list, {sc: list(v) for sc, v in state.resends})

    def evaluate(self, now: int) -> Evaluation:
        cfg = self.config
        lo = now - cfg.window_seconds
        findings: list[Finding] = []
        for scope in sorted(self._resends, key=str):
            kept = [(ts, r) for ts, r in self._resends[scope] if ts >= lo]
            if not kept:
                del self._resends[scope]
                continue
            self._resends[scope] = kept
            current = [r for ts, r in kept if ts < now]
            recipients = len(set(current))
            if recipients < cfg.threshold:
                continue
            detail = (
                f"{len(current)} resends to {recipients} recipients less than 24 h after 131049"
            )
            evidence = Evidence(recipients, window_seconds=cfg.window_seconds, detail=detail)
            findings.append(
                Finding(
                    rule=RESEND_STORM,
                    scope=scope,
                    group=RESEND_STORM,
                    verdict=Verdict.POSITIVE,
                    evidence=evidence,
                    title=_TITLES[RESEND_STORM],
                    error_class=ErrorClass.PER_USER_MARKETING_LIMIT,
                    resolve_evaluations=cfg.resolve_evaluations,
                )
            )
        return Evaluation(at=now, rules=frozenset({RESEND_STORM}), findings=tuple(findings))
