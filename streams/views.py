"""What is firing, as JSON builtins: ``GET /v1/alerts`` and the overview page read this.

Built from the alert book's state (:class:`streams.core.alerts.BookState`): open incidents are the
groups with a firing alert (notified or still held back by a cooldown or ``group_wait``), each
with its kind (spike, standing, storm, immediate), headline scope (the most specific firing
scope that explains most of it), evidence, since when, the other firing scopes and the
recommended action (the text the Slack message carries);
resolved incidents are the book's history of the last 24 h of event time. Times are unix
seconds with an ISO 8601 UTC twin (``*_iso``) for people.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import msgspec

from streams.core.alerts import (
    RESOLVED_KEEP_SECONDS,
    AlertSnapshot,
    AlertState,
    BookState,
    Notification,
    headline_first,
)
from streams.core.catalog import ErrorClass
from streams.core.slack_format import evidence_summary, incident_action, scope_label
from streams.core.times import iso_utc


def _scope(snap: AlertSnapshot) -> dict[str, Any]:
    return {
        "kind": snap.scope.kind.value,
        "key": snap.scope.key,
        "sender": snap.scope.sender,
        "label": scope_label(snap),
        "evidence": msgspec.to_builtins(snap.evidence),
        "summary": evidence_summary(snap),
    }


def _incident(
    incident_id: str,
    headline: AlertSnapshot,
    related: list[AlertSnapshot],
    since: int,
    error_class: ErrorClass | None,
) -> dict[str, Any]:
    return {
        "id": incident_id,
        "kind": headline.family.value,
        "rule": headline.rule,
        "title": headline.title,
        "error_class": None if error_class is None else error_class.value,
        "severity": headline.severity.value,
        "since": since,
        "since_iso": iso_utc(since),
        "scope": _scope(headline),
        "related": [_scope(s) for s in related],
        "recommended_action": incident_action(headline) or None,
    }


def open_incidents(state: BookState) -> list[dict[str, Any]]:
    """Every incident with a firing alert, the longest firing first."""
    firing: dict[str, list[AlertSnapshot]] = defaultdict(list)
    for record in state.alerts.values():
        if record.state is AlertState.FIRING:
            firing[record.finding.group].append(record.snapshot())
    out = []
    for group, snaps in firing.items():
        ordered = headline_first(snaps)
        incident = state.incidents.get(group)
        notified = incident is not None and incident.notified
        since = incident.since if incident is not None and notified else 0
        since = since or min(s.firing_since or s.started_at for s in snaps)
        head = ordered[0]
        view = _incident(group, head, ordered[1:], since, head.error_class)
        view["state"] = "firing"
        view["notified"] = notified
        out.append(view)
    return sorted(out, key=lambda v: (v["since"], v["id"]))


def resolved_incidents(state: BookState, now: int) -> list[dict[str, Any]]:
    """Incidents resolved in the 24 h of event time before ``now``, the newest first."""
    out = []
    for n in reversed(state.resolved):
        if n.at < now - RESOLVED_KEEP_SECONDS:
            continue
        out.append(_resolved(n))
    return out


def _resolved(n: Notification) -> dict[str, Any]:
    view = _incident(n.incident, n.headline, list(n.related), n.since, n.error_class)
    view["state"] = "resolved"
    view["resolved_at"] = n.at
    view["resolved_at_iso"] = iso_utc(n.at)
    return view


def alerts_view(state: BookState, now: int) -> dict[str, Any]:
    """The body of ``GET /v1/alerts`` (``now``: the alerting stage's event time)."""
    return {
        "as_of": now,
        "as_of_iso": iso_utc(now) if now else None,
        "open": open_incidents(state),
        "resolved": resolved_incidents(state, now),
    }
