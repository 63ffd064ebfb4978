"""Alerts: stable keys, the pending / firing / resolved lifecycle, and incidents for Slack.

Every rule (the spike detector, the immediate rules, resend storms) evaluates at event time and
reports an :class:`Evaluation`: the :class:`Finding` of every scope that is elevated now. A scope
the rule evaluated but did not list is *clear*. The :class:`AlertBook` turns evaluations into the
:class:`Notification` records to send; it never reads a clock, so replaying the same evaluations
gives the same notifications (with the same ids).

An alert is keyed by rule and scope (:func:`alert_key`, e.g.
``spike:per_user_marketing_limit|template:spring_sale``) and moves through:

- *pending*: positive evaluations so far, fewer than the rule's ``for_evaluations``; any
  evaluation that is not positive (hold or clear) drops it;
- *firing*: after ``for_evaluations`` consecutive positives; a *hold* (still elevated, no longer
  significant) keeps it firing; ``resolve_evaluations`` consecutive clear evaluations resolve it
  (hysteresis: the rule decides what clear means, e.g. the ratio under half the floor).

Alerts are grouped Alertmanager-style into *incidents* by the finding's ``group`` (the spike
detector groups by error class), so a template's spike that also moves its sending number, its
country and the whole account is ONE message. The headline is the most specific firing scope
(template, then sending number, campaign, country, account; ties by count); the other firing
scopes are listed as related. Scopes that are not firing are never named.

Per incident: ``FIRING`` when its first alert fires; ``UPDATED`` when a more specific scope starts
firing than the headline already sent (the template that explains an account-wide spike);
``REPEAT`` every ``repeat_interval_seconds`` while it fires; ``RESOLVED`` when its last alert
resolves. ``cooldown_seconds`` is the quiet time after a ``RESOLVED``: an incident that fires again
within it is held back, and sent when the cooldown ends if it is still firing (a flapping incident
posts at most one FIRING/RESOLVED pair per cooldown). ``group_wait_seconds`` (default 0) delays an
incident's first FIRING to collect the related scopes that cross their thresholds a little later
(the account needs more evidence than the template); without it they join silently and are
listed in the next REPEAT and in the RESOLVED.

The book's state is a msgspec struct (:meth:`AlertBook.encode_state`) so it can be kept in a
table and survive restarts; notifications are frozen structs that encode to JSON for a topic.
"""

from __future__ import annotations

import enum
from collections import defaultdict

import msgspec

from streams.core.catalog import ErrorClass


class ScopeKind(enum.StrEnum):
    """What part of the sender's traffic an alert is about."""

    ACCOUNT = "account"
    COUNTRY = "country"
    CAMPAIGN = "campaign"
    SENDER = "sender"
    TEMPLATE = "template"


SPECIFICITY: dict[ScopeKind, int] = {
    ScopeKind.ACCOUNT: 0,
    ScopeKind.COUNTRY: 1,
    ScopeKind.CAMPAIGN: 2,
    ScopeKind.SENDER: 3,
    ScopeKind.TEMPLATE: 4,
}


class Family(enum.StrEnum):
    """The kinds of alert, by what fires them (see the README's Alerts section)."""

    SPIKE = "spike"  # statistics: a scope's error share rose above its own baseline
    STANDING = "standing"  # a policy in force (the US marketing pause): not an anomaly
    STORM = "storm"  # resend storms: marketing resent within 24 h of a 131049
    IMMEDIATE = "immediate"  # one event is enough: template paused, account restricted, ...


class Scope(msgspec.Struct, frozen=True):
    """One scope: the whole account, a sending number, a template or a recipient country.

    ``sender`` narrows a template scope to one sending number (resend storms are counted per
    template and sender); it is empty otherwise.
    """

    kind: ScopeKind
    key: str = ""
    sender: str = ""

    @classmethod
    def for_account(cls) -> Scope:
        return cls(ScopeKind.ACCOUNT)

    @classmethod
    def for_sender(cls, sender: str) -> Scope:
        return cls(ScopeKind.SENDER, sender)

    @classmethod
    def for_template(cls, template: str, sender: str = "") -> Scope:
        return cls(ScopeKind.TEMPLATE, template, sender)

    @classmethod
    def for_country(cls, country: str) -> Scope:
        return cls(ScopeKind.COUNTRY, country)

    @classmethod
    def for_campaign(cls, campaign: str) -> Scope:
        return cls(ScopeKind.CAMPAIGN, campaign)

    @property
    def specificity(self) -> int:
        return SPECIFICITY[self.kind] * 2 + (1 if self.sender else 0)

    def __str__(self) -> str:
        if self.kind is ScopeKind.ACCOUNT:
            return "account"
        text = f"{self.kind.value}:{self.key}"
        return f"{text}@{self.sender}" if self.sender else text


def alert_key(rule: str, scope: Scope) -> str:
    """The stable key of an alert: rule and scope (``spike:opt_out|country:BR``)."""
    return f"{rule}|{scope}"


class Severity(enum.StrEnum):
    WARNING = "warning"
    CRITICAL = "critical"


class Verdict(enum.StrEnum):
    """A rule's judgement of one scope in one evaluation (unlisted scopes are clear)."""

    POSITIVE = "positive"  # the condition holds: counts toward firing
    HOLD = "hold"  # not positive, but not clear either: keeps a firing alert firing
    CLEAR = "clear"  # clear, listed to say why (the evidence a resolve message shows)


class Evidence(msgspec.Struct, frozen=True):
    """The numbers behind a finding, in the rule's window.

    ``count`` is the errors (or events, or recipients) counted; ``attempts`` the sends they are a
    share of (0 when the rule is not a ratio); ``baseline_ratio`` the scope's own trailing rate
    the window was tested against, ``p_value`` the test's result.
    """

    count: int
    attempts: int = 0
    ratio: float = 0.0
    baseline_ratio: float | None = None
    baseline_attempts: int = 0
    p_value: float | None = None
    window_seconds: int = 0
    detail: str = ""
    #: the largest parts by name, e.g. {"templates": [("promo", 12), ...]}: what a message
    #: names (never a recipient)
    breakdown: dict[str, list[tuple[str, int]]] = {}


class Finding(msgspec.Struct, frozen=True):
    """One scope found elevated by one rule, with the rule's lifecycle parameters."""

    rule: str
    scope: Scope
    group: str
    verdict: Verdict
    evidence: Evidence
    title: str
    error_class: ErrorClass | None = None
    severity: Severity = Severity.WARNING
    for_evaluations: int = 1
    resolve_evaluations: int = 1
    notify_resolve: bool = True
    family: Family = Family.IMMEDIATE
    #: when the condition began, from the data itself (an event's time, the resend that made a
    #: storm); None: the evaluation that found it (the spike detector's statistics)
    since: int | None = None
    #: seconds between reminders while it fires (0: the book's policy)
    repeat_seconds: int = 0
    #: a level above every one notified while it fires is worth an UPDATED (a storm that grew
    #: past a step; 0: never)
    update_level: int = 0

    @property
    def key(self) -> str:
        # the group names the error class for the spike rule: one alert per class and scope,
        # so an opt-out HOLD on a template never overwrites its firing 131049 alert
        return alert_key(self.group, self.scope)


class Evaluation(msgspec.Struct, frozen=True):
    """One evaluation round at event time ``at``: every scope of ``rules`` not listed is clear."""

    at: int
    rules: frozenset[str]
    findings: tuple[Finding, ...] = ()


class AlertState(enum.StrEnum):
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


class NotificationKind(enum.StrEnum):
    FIRING = "firing"
    UPDATED = "updated"
    REPEAT = "repeat"
    RESOLVED = "resolved"


class AlertSnapshot(msgspec.Struct, frozen=True):
    """An alert as a notification shows it: its last evidence and its times (event time)."""

    key: str
    rule: str
    group: str
    scope: Scope
    state: AlertState
    title: str
    evidence: Evidence
    error_class: ErrorClass | None
    severity: Severity
    started_at: int  # first positive evaluation of the streak that fired
    firing_since: int | None = None
    resolved_at: int | None = None
    notify_resolve: bool = True
    family: Family = Family.SPIKE
    #: the last clear evaluation's evidence (why it resolved), when the rule gave one
    resolve_evidence: Evidence | None = None


class Notification(msgspec.Struct, frozen=True):
    """A message to send about an incident; ``id`` is stable (dedupe on it downstream)."""

    id: str
    kind: NotificationKind
    incident: str
    at: int
    since: int
    title: str
    error_class: ErrorClass | None
    severity: Severity
    headline: AlertSnapshot
    related: tuple[AlertSnapshot, ...] = ()
    family: Family = Family.SPIKE


_notification_encoder = msgspec.json.Encoder()
_notification_decoder = msgspec.json.Decoder(Notification)


def encode_notification(notification: Notification) -> bytes:
    """JSON for the alerts topic."""
    return _notification_encoder.encode(notification)


def decode_notification(raw: bytes) -> Notification:
    return _notification_decoder.decode(raw)


class AlertPolicy(msgspec.Struct, frozen=True):
    """Notification pacing per incident (seconds of event time)."""

    cooldown_seconds: int = 600
    repeat_interval_seconds: int = 4 * 3600
    group_wait_seconds: int = 0


class AlertRecord(msgspec.Struct):
    """The book's state of one pending or firing alert."""

    finding: Finding
    state: AlertState
    started_at: int
    positives: int = 0
    clears: int = 0
    firing_since: int | None = None
    cleared: Evidence | None = None  # the last clear evaluation's evidence

    def snapshot(self, resolved_at: int | None = None) -> AlertSnapshot:
        f = self.finding
        return AlertSnapshot(
            key=f.key,
            rule=f.rule,
            group=f.group,
            scope=f.scope,
            state=AlertState.RESOLVED if resolved_at is not None else self.state,
            title=f.title,
            evidence=f.evidence,
            error_class=f.error_class,
            severity=f.severity,
            started_at=self.started_at,
            firing_since=self.firing_since,
            resolved_at=resolved_at,
            notify_resolve=f.notify_resolve,
            family=f.family,
            resolve_evidence=self.cleared if resolved_at is not None else None,
        )


class IncidentRecord(msgspec.Struct):
    """The book's state of one incident (alert group)."""

    notified: bool = False
    since: int = 0
    last_notified_at: int = 0
    headline: str = ""
    seq: int = 0
    resolved_at: int | None = None
    waiting_since: int | None = None
    members: dict[str, AlertSnapshot] = {}
    #: member -> the highest update_level notified while the incident fires (a storm back down
    #: to a step it passed is no news)
    levels: dict[str, int] = {}


#: Resolved incidents the book remembers (``BookState.resolved``): 24 h of event time, at most
#: this many (for ``GET /v1/alerts`` and the overview page).
RESOLVED_KEEP_SECONDS = 24 * 3600
RESOLVED_MAX = 200


class BookState(msgspec.Struct):
    alerts: dict[str, AlertRecord] = {}
    incidents: dict[str, IncidentRecord] = {}
    #: the last message of each incident resolved in the last 24 h (also those whose resolve is
    #: not notified), oldest first
    resolved: list[Notification] = []


def _headline_order(s: AlertSnapshot) -> tuple[int, int, str]:
    return (-s.scope.specificity, -s.evidence.count, s.key)


def excess(evidence: Evidence) -> float:
    """Errors above what the scope's own baseline expects in the window (all of them when the
    rule has no baseline)."""
    if evidence.baseline_ratio is None or not evidence.attempts:
        return float(evidence.count)
    return evidence.count - evidence.attempts * evidence.baseline_ratio


#: A scope heads an incident when it carries at least this share of the largest excess of the
#: incident's scopes: a template that explains its number's spike heads it, one template among
#: eight equally hit does not (the number does).
HEADLINE_SHARE = 0.5


def headline_first(members: list[AlertSnapshot]) -> list[AlertSnapshot]:
    """``members`` with the headline first: the most specific scope that explains most of the
    incident (see :data:`HEADLINE_SHARE`); campaigns are context, never the headline unless
    nothing else fires."""
    ordered = sorted(members, key=_headline_order)
    if len(ordered) < 2:
        return ordered
    top = max(excess(s.evidence) for s in ordered)
    for s in ordered:
        if s.scope.kind is not ScopeKind.CAMPAIGN and excess(s.evidence) >= HEADLINE_SHARE * top:
            return [s, *(o for o in ordered if o is not s)]
    return ordered


class AlertBook:
    """Pending / firing / resolved alerts and their incidents; see the module docstring."""

    def __init__(self, policy: AlertPolicy | None = None, state: BookState | None = None) -> None:
        self.policy = policy or AlertPolicy()
        self.state = state if state is not None else BookState()

    def encode_state(self) -> bytes:
        return msgspec.msgpack.encode(self.state)

    @classmethod
    def from_encoded_state(cls, raw: bytes, policy: AlertPolicy | None = None) -> AlertBook:
        return cls(policy, msgspec.msgpack.decode(raw, type=BookState))

    def alerts(self) -> list[AlertSnapshot]:
        """Every pending and firing alert, by key."""
        return [self.state.alerts[k].snapshot() for k in sorted(self.state.alerts)]

    @property
    def idle(self) -> bool:
        """No alert or incident open (not even one cooling down): an evaluation that finds
        nothing changes nothing."""
        return not self.state.alerts and not self.state.incidents

    def apply(self, evaluation: Evaluation) -> list[Notification]:
        """Absorb one evaluation round; returns the notifications to send, in incident order."""
        at = evaluation.at
        alerts = self.state.alerts
        listed: set[str] = set()
        resolved: list[AlertSnapshot] = []
        for finding in evaluation.findings:
            listed.add(finding.key)
            resolved.extend(self._absorb(finding, at))
        for key, record in list(alerts.items()):
            if key in listed or record.finding.rule not in evaluation.rules:
                continue
            if record.state is AlertState.PENDING:
                del alerts[key]
                continue
            record.clears += 1
            if record.clears >= record.finding.resolve_evaluations:
                del alerts[key]
                resolved.append(record.snapshot(resolved_at=at))
        return self._notify(at, resolved)

    def _absorb(self, finding: Finding, at: int) -> list[AlertSnapshot]:
        """Apply one finding; returns the snapshot of an alert it resolved."""
        alerts = self.state.alerts
        record = alerts.get(finding.key)
        if finding.verdict is Verdict.CLEAR:
            if record is None:
                return []
            if record.state is AlertState.PENDING:
                del alerts[finding.key]
                return []
            record.clears += 1
            record.cleared = finding.evidence
            if record.clears >= record.finding.resolve_evaluations:
                del alerts[finding.key]
                return [record.snapshot(resolved_at=at)]
            return []
        if finding.verdict is Verdict.HOLD:
            if record is None:
                return []
            if record.state is AlertState.PENDING:  # the streak of positives is broken
                del alerts[finding.key]
                return []
            record.finding, record.clears = finding, 0
            return []
        if record is None:
            started = finding.since if finding.since is not None else at
            record = alerts[finding.key] = AlertRecord(
                finding, AlertState.PENDING, started_at=started
            )
        record.finding, record.clears = finding, 0
        if record.state is AlertState.PENDING:
            record.positives += 1
            if record.positives >= finding.for_evaluations:
                since = finding.since if finding.since is not None else at
                record.state, record.firing_since = AlertState.FIRING, since
        return []

    def _notify(self, at: int, resolved: list[AlertSnapshot]) -> list[Notification]:
        incidents = self.state.incidents
        firing: dict[str, list[AlertSnapshot]] = defaultdict(list)
        firing_records: dict[str, list[AlertRecord]] = defaultdict(list)
        for record in self.state.alerts.values():
            if record.state is AlertState.FIRING:
                firing[record.finding.group].append(record.snapshot())
                firing_records[record.finding.group].append(record)
        for snap in resolved:
            incident = incidents.get(snap.group)
            if incident is not None and snap.key in incident.members:
                incident.members[snap.key] = snap
        out: list[Notification] = []
        cooldown = self.policy.cooldown_seconds
        for group in sorted(set(firing) | set(incidents)):
            now_firing = headline_first(firing.get(group, []))
            incident = incidents.get(group)
            if incident is None:
                incident = incidents[group] = IncidentRecord(members={})
            if now_firing:
                cooling = incident.resolved_at is not None and at - incident.resolved_at < cooldown
                if not incident.notified:
                    if cooling:
                        continue  # held back; sent when the cooldown ends if still firing
                    if incident.waiting_since is None:
                        incident.waiting_since = at
                    if at - incident.waiting_since < self.policy.group_wait_seconds:
                        continue  # collecting related alerts first
                for snap in now_firing:
                    incident.members[snap.key] = snap
                levels = self._update_levels(firing_records.get(group, []))
                if not incident.notified:
                    incident.notified, incident.members = True, {s.key: s for s in now_firing}
                    incident.waiting_since = None
                    incident.since = min(s.firing_since or at for s in now_firing)
                    incident.levels = levels
                    out.append(self._message(group, incident, NotificationKind.FIRING, at))
                    continue
                previous = incident.members.get(incident.headline)
                # a member left firing after the headline resolved is what remains of the
                # incident, not a new explanation of it: no UPDATED naming it
                more_specific = previous is None or (
                    previous.state is not AlertState.RESOLVED
                    and now_firing[0].scope.specificity > previous.scope.specificity
                )
                grew = any(n > incident.levels.get(m, 0) for m, n in levels.items())
                for member, level in levels.items():
                    incident.levels[member] = max(level, incident.levels.get(member, 0))
                repeat = min(
                    (r.finding.repeat_seconds for r in firing_records.get(group, [])),
                    default=0,
                )
                if more_specific or grew:
                    out.append(self._message(group, incident, NotificationKind.UPDATED, at))
                elif at - incident.last_notified_at >= (
                    repeat or self.policy.repeat_interval_seconds
                ):
                    out.append(self._message(group, incident, NotificationKind.REPEAT, at))
            elif incident.notified:
                message = self._message(group, incident, NotificationKind.RESOLVED, at)
                if any(s.notify_resolve for s in incident.members.values()):
                    out.append(message)
                self._remember_resolved(message)
                incident.notified, incident.resolved_at, incident.members = False, at, {}
            elif incident.resolved_at is None or at - incident.resolved_at >= cooldown:
                del incidents[group]
            else:
                incident.waiting_since = None
        return out

    @staticmethod
    def _update_levels(records: list[AlertRecord]) -> dict[str, int]:
        return {r.finding.key: r.finding.update_level for r in records if r.finding.update_level}

    def _remember_resolved(self, message: Notification) -> None:
        kept = self.state.resolved
        kept.append(message)
        oldest = message.at - RESOLVED_KEEP_SECONDS
        self.state.resolved = [n for n in kept if n.at >= oldest][-RESOLVED_MAX:]

    def _message(
        self, group: str, incident: IncidentRecord, kind: NotificationKind, at: int
    ) -> Notification:
        members = sorted(incident.members.values(), key=_headline_order)
        if kind is NotificationKind.RESOLVED:
            headline = incident.members.get(incident.headline) or members[0]
            related = tuple(s for s in members if s.key != headline.key)
        else:
            current = headline_first([s for s in members if s.state is not AlertState.RESOLVED])
            headline, related = current[0], tuple(current[1:])
            incident.headline = headline.key
        incident.seq += 1
        incident.last_notified_at = at
        return Notification(
            id=f"{group}@{incident.since}/{incident.seq}",
            kind=kind,
            incident=group,
            at=at,
            since=incident.since,
            title=headline.title,
            error_class=headline.error_class,
            severity=max((s.severity for s in members), key=_severity_rank),
            headline=headline,
            related=related,
            family=headline.family,
        )


def _severity_rank(severity: Severity) -> int:
    return 1 if severity is Severity.CRITICAL else 0
