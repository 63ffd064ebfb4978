"""Incidents as the alerts topic tells them, scored against a scenario's labels.

The alerts topic holds :class:`~streams.core.alerts.Notification` records (FIRING, UPDATED,
REPEAT, RESOLVED). :func:`incidents_of` groups them into :class:`Incident` values, one per
incident and firing (``incident`` and ``since``: an incident that resolves and fires again later
is a second one), with the kind of alert (:func:`alert_kind`), when it was notified first (event
time), its headline scope when it fired and at its end, and when it resolved.

:func:`score` matches incidents to the :class:`~streams.scenarios.Expected` labels of a scenario
(recall, precision, event-time detection and resolve delays); :func:`compare` says whether two
feeds of the same campaign raised the same incidents (key, kind, headline scope, firing minute).
Pure: the bench (``bench/alert_quality.py``) and the end-to-end test read the topic themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.core.alerts import Notification, NotificationKind, decode_notification
from streams.scenarios import Expected

#: Fields a notification (or its headline) may carry to name its kind of alert outright.


def alert_kind(notification: Notification) -> str:
    """spike, standing, storm or immediate: the notification's family."""
    return notification.family.value


@dataclass(frozen=True, order=True)
class Headline:
    """The scope an incident's message leads with."""

    kind: str
    key: str = ""
    sender: str = ""

    def __str__(self) -> str:
        if self.kind == "account":
            return "account"
        text = f"{self.kind}:{self.key}"
        return f"{text}@{self.sender}" if self.sender else text


@dataclass
class Incident:
    """One incident from its FIRING to its RESOLVED (or the end of the data)."""

    incident: str  # the notifications' incident key (the alert group)
    since: int
    kind: str
    rule: str
    error_class: str | None
    fired_at: int  # event time of the first FIRING (of the first notification without one)
    first_headline: Headline
    last_headline: Headline  # of the last FIRING, UPDATED or REPEAT
    resolved_at: int | None = None
    evidence: str = ""  # at FIRING: count / attempts (ratio) and detail
    resolve_evidence: str = ""
    notifications: list[tuple[str, int, str]] = field(default_factory=list)  # kind, at, headline

    @property
    def key(self) -> str:
        return f"{self.incident}@{self.since}"

    def signature(self) -> tuple[str, str, str, int]:
        """What must not depend on how the traffic arrived: incident key, kind, headline scope at
        FIRING and the event-time minute it fired in."""
        return (self.incident, self.kind, str(self.first_headline), self.fired_at // 60)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "rule": self.rule,
            "error_class": self.error_class,
            "fired_at": self.fired_at,
            "resolved_at": self.resolved_at,
            "headline_at_firing": str(self.first_headline),
            "headline_at_end": str(self.last_headline),
            "evidence": self.evidence,
            "resolve_evidence": self.resolve_evidence,
            "notifications": [list(n) for n in self.notifications],
        }


def _headline(n: Notification) -> Headline:
    scope = n.headline.scope
    return Headline(str(scope.kind), scope.key, scope.sender)


def _evidence(n: Notification) -> str:
    e = n.headline.evidence
    text = f"{e.count}"
    if e.attempts:
        text += f" of {e.attempts} ({100 * e.count / e.attempts:.1f} %)"
    if e.baseline_ratio is not None:
        text += f", baseline {100 * e.baseline_ratio:.2f} %"
    return text + (f"; {e.detail}" if e.detail else "")


def _seq(n: Notification) -> int:
    tail = n.id.rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def incidents_of(raws: Iterable[bytes]) -> list[Incident]:
    """The incidents of the alerts topic's records (values), in order of firing; a record seen
    twice (at-least-once delivery after a crash) counts once."""
    seen: dict[str, Notification] = {}
    for raw in raws:
        n = decode_notification(raw)
        seen.setdefault(n.id, n)
    ordered = sorted(seen.values(), key=lambda n: (n.at, n.incident, _seq(n)))
    out: dict[tuple[str, int], Incident] = {}
    for n in ordered:
        key = (n.incident, n.since)
        inc = out.get(key)
        headline = _headline(n)
        if inc is None:
            inc = out[key] = Incident(
                incident=n.incident,
                since=n.since,
                kind=alert_kind(n),
                rule=n.headline.rule,
                error_class=None if n.error_class is None else str(n.error_class),
                fired_at=n.at,
                first_headline=headline,
                last_headline=headline,
                evidence=_evidence(n),
            )
        inc.notifications.append((str(n.kind).upper(), n.at, str(headline)))
        if n.kind is NotificationKind.RESOLVED:
            inc.resolved_at = n.at
            inc.resolve_evidence = _evidence(n)
        else:
            inc.last_headline = headline
    return sorted(out.values(), key=lambda i: (i.fired_at, i.key))


# -- scoring against labels ---------------------------------------------------------------------


def covers(expected: Expected, headline: Headline) -> bool:
    """Whether an incident led by ``headline`` is about the labelled scope."""
    if headline.kind == expected.scope_kind and headline.key == expected.scope_key:
        return True
    return expected.account_ok and headline.kind == "account"


@dataclass
class Match:
    expected: Expected
    incident: Incident | None
    detection_s: int | None = None  # first FIRING - onset (event time)
    resolve_s: int | None = None  # RESOLVED - end (event time), for labels with an end

    def to_json(self) -> dict[str, Any]:
        e = self.expected
        return {
            "label": e.label,
            "kind": e.kind,
            "error_class": e.error_class,
            "scope": f"{e.scope_kind}:{e.scope_key}",
            "onset": e.onset,
            "end": e.end,
            "clear": e.clear,
            "detected": self.incident is not None,
            "incident": None if self.incident is None else self.incident.key,
            "detection_s": self.detection_s,
            "resolve_s": self.resolve_s,
            "resolved": None if self.incident is None else self.incident.resolved_at is not None,
        }


@dataclass
class Score:
    matches: list[Match]
    raised: list[Incident]
    false: list[tuple[Incident, str]]  # incidents that match no label, and why

    @property
    def true_positives(self) -> int:
        return sum(1 for m in self.matches if m.incident is not None)

    @property
    def recall(self) -> float | None:
        return self.true_positives / len(self.matches) if self.matches else None

    @property
    def precision(self) -> float | None:
        """Incidents that matched a label over incidents raised (an account-wide incident
        matching several per-number labels counts once)."""
        matched = {m.incident.key for m in self.matches if m.incident is not None}
        return len(matched) / len(self.raised) if self.raised else None

    def to_json(self) -> dict[str, Any]:
        return {
            "expected": len(self.matches),
            "raised": len(self.raised),
            "true_positives": self.true_positives,
            "false_incidents": len(self.false),
            "recall": self.recall,
            "precision": self.precision,
            "matches": [m.to_json() for m in self.matches],
            "false": [{**i.to_json(), "why": why} for i, why in self.false],
            "incidents": [i.to_json() for i in self.raised],
        }


def _about(e: Expected, i: Incident, data_end: float, before_s: int, after_s: int) -> bool:
    same = i.kind == e.kind and i.error_class == e.error_class and covers(e, i.last_headline)
    until = (e.end if e.end is not None else data_end) + after_s
    return same and e.onset - before_s <= i.fired_at <= until


def score(
    expected: Sequence[Expected],
    incidents: Sequence[Incident],
    data_end: float,
    before_s: int = 120,
    after_s: int = 600,
) -> Score:
    """Match incidents to labels, one to one: an incident matches a label with the same kind and
    error class whose scope its final headline covers (:func:`covers`), first notified between
    ``before_s`` before the onset and ``after_s`` after the end (or the end of the data). Each
    label takes the earliest such incident; every other incident is false, a second incident
    about an already matched label included (a flapping or split incident). An incident headed
    by the account may cover several per-number labels (one standing condition or storm for the
    account instead of one per sending number)."""
    used: set[str] = set()  # incidents no other label may take
    matched: set[str] = set()
    matches: list[Match] = []
    for e in sorted(expected, key=lambda x: x.onset):
        found = next(
            (
                i
                for i in incidents
                if i.key not in used and _about(e, i, data_end, before_s, after_s)
            ),
            None,
        )
        m = Match(e, found)
        if found is not None:
            matched.add(found.key)
            if not (e.account_ok and found.last_headline.kind == "account"):
                used.add(found.key)
            m.detection_s = found.fired_at - e.onset
            if e.end is not None and found.resolved_at is not None:
                m.resolve_s = found.resolved_at - e.end
        matches.append(m)
    false: list[tuple[Incident, str]] = []
    for i in incidents:
        if i.key in matched:
            continue
        twin = next((e for e in expected if _about(e, i, data_end, before_s, after_s)), None)
        if twin is not None:
            why = f"a second incident about {twin.label!r}"
        else:
            near = [e for e in expected if e.kind == i.kind and e.error_class == i.error_class]
            why = "no label of its kind and class"
            if near:
                why = f"headline {i.last_headline} is not {near[0].scope_kind}:{near[0].scope_key}"
        false.append((i, why))
    return Score(matches, list(incidents), false)


@dataclass
class Comparison:
    same: bool
    missing: list[tuple[str, str, str, int]]  # in the reference, not in the other feed
    extra: list[tuple[str, str, str, int]]  # in the other feed only

    def to_json(self) -> dict[str, Any]:
        return {
            "same": self.same,
            "missing": [list(s) for s in self.missing],
            "extra": [list(s) for s in self.extra],
        }


def compare(reference: Sequence[Incident], other: Sequence[Incident]) -> Comparison:
    """Whether ``other`` raised the same incidents as ``reference`` (:meth:`Incident.signature`:
    key, kind, headline scope at FIRING, firing minute)."""
    ref = sorted(i.signature() for i in reference)
    got = sorted(i.signature() for i in other)
    missing = [s for s in ref if s not in got]
    extra = [s for s in got if s not in ref]
    return Comparison(not missing and not extra, missing, extra)
