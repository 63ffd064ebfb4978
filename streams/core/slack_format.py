"""Slack Block Kit messages for incident notifications (pure: builds the JSON payload only).

A firing message says what happened (rule or error class, the headline scope, counts, the ratio
against the scope's own baseline, since when), the affected templates, sending numbers and
countries (only scopes that are firing in this incident), the recommended action from the error
catalog, and a link to the Grafana dashboard narrowed to the headline scope. A resolve message
is short, in the same style. ``text`` is always set: it is the notification and fallback text.
Bot mode's thread adds a compact reply per update (:func:`render_thread_reply`) and the
incident's first message as it reads after an update (:func:`render_original`).

Names that come from webhooks (templates) are escaped for Slack mrkdwn, so a template named
``<!channel>`` cannot ping anyone; Slack's size limits (header 150 chars, section text 3000,
10 fields) are respected by truncation.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import msgspec

from streams.core.alerts import (
    AlertSnapshot,
    AlertState,
    Family,
    Notification,
    NotificationKind,
    ScopeKind,
    excess,
)
from streams.core.catalog import recommended_action
from streams.core.times import iso_utc

DEFAULT_DASHBOARD_PATH = "/d/wdm-delivery-overview/whatsapp-delivery-overview"
TOP_N = 5

_KIND_LABELS = {
    NotificationKind.FIRING: (":rotating_light:", "FIRING"),
    NotificationKind.UPDATED: (":rotating_light:", "UPDATED"),
    NotificationKind.REPEAT: (":repeat:", "STILL FIRING"),
    NotificationKind.RESOLVED: (":white_check_mark:", "RESOLVED"),
}
#: A standing condition is a policy in force, not an emergency: it says so.
_STANDING_LABELS = {
    NotificationKind.FIRING: (":no_entry:", "STANDING CONDITION"),
    NotificationKind.UPDATED: (":no_entry:", "STANDING CONDITION"),
    NotificationKind.REPEAT: (":calendar:", "DAILY REMINDER"),
    NotificationKind.RESOLVED: (":white_check_mark:", "ENDED"),
}

_STORM_ACTION = (
    "Stop resending marketing to recipients less than 24 h after their 131049: each resend can "
    "block them for another 24 h. Make the sender's retry logic wait (the advice topic and "
    "GET /v1/recipients/{id}/advice give every recipient's earliest time)."
)
_STANDING_ACTION = (
    "Remove US numbers (+1 with a US area code) from marketing audiences and never retry them: "
    "WhatsApp delivers no marketing templates to US numbers. The advice topic lists each of "
    "them as us_marketing_pause."
)


def incident_action(head: AlertSnapshot) -> str:
    """What to do about an incident, by its kind, else by its error class."""
    if head.family is Family.STORM:
        return _STORM_ACTION
    if head.family is Family.STANDING:
        return _STANDING_ACTION
    return recommended_action(head.error_class) if head.error_class is not None else ""


def escape(text: str) -> str:
    """Escape the three characters Slack mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> str:
    safe = escape(text).replace("`", "'")
    return f"`{safe}`"


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _when(ts: int) -> str:
    """ISO 8601 in UTC, as the log and the overview page show times."""
    return iso_utc(ts)


def _duration(seconds: int) -> str:
    if 0 < seconds < 60:  # the minute in progress, judged early
        return f"{seconds} s"
    minutes = max(0, seconds) // 60
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


_NOUNS = {
    ScopeKind.TEMPLATE: "template",
    ScopeKind.SENDER: "sending number",
    ScopeKind.COUNTRY: "country",
    ScopeKind.CAMPAIGN: "campaign",
}


def scope_label(snap: AlertSnapshot) -> str:
    """Plain words for a scope: ``template spring_sale on 1555...``, ``the whole account``."""
    scope = snap.scope
    if scope.kind is ScopeKind.ACCOUNT:
        return "the whole account"
    label = f"{_NOUNS[scope.kind]} {scope.key}"
    return f"{label} on sending number {scope.sender}" if scope.sender else label


def _scope_md(snap: AlertSnapshot) -> str:
    scope = snap.scope
    if scope.kind is ScopeKind.ACCOUNT:
        return "the whole account"
    text = f"{_NOUNS[scope.kind]} {_code(scope.key)}"
    return f"{text} on sending number {_code(scope.sender)}" if scope.sender else text


def evidence_summary(snap: AlertSnapshot) -> str:
    """Counts in words: ``300 of 1,000 sends (30.0%) in 5 min vs 2.0% baseline``."""
    e = snap.evidence
    window = f" in {_duration(e.window_seconds)}" if e.window_seconds else ""
    if snap.family in (Family.STANDING, Family.STORM) and e.detail:
        return e.detail
    if e.attempts:
        text = f"{e.count:,} of {e.attempts:,} sends ({e.ratio:.1%}){window}"
        if e.baseline_ratio is not None:
            text += f" vs {e.baseline_ratio:.1%} baseline"
        return text
    if e.detail:
        return e.detail + window
    return f"{e.count:,}{window}"


def dashboard_url(grafana_url: str, dashboard_path: str, notification: Notification) -> str:
    """The dashboard, narrowed to the headline scope, over the incident's time range."""
    head = notification.headline
    params: list[tuple[str, str]] = [
        ("from", str((notification.since - 3600) * 1000)),
        (
            "to",
            str((notification.at + 600) * 1000)
            if notification.kind is NotificationKind.RESOLVED
            else "now",
        ),
    ]
    if head.scope.kind is not ScopeKind.ACCOUNT:
        params.append((f"var-{head.scope.kind.value}", head.scope.key))
    if head.scope.sender:
        params.append(("var-sender", head.scope.sender))
    return f"{grafana_url.rstrip('/')}{dashboard_path}?{urlencode(params)}"


def resolve_summary(snap: AlertSnapshot) -> str:
    """Why it resolved: the last clear evaluation against the scope's own baseline."""
    e = snap.resolve_evidence
    if e is None or not e.attempts:
        return f"Last seen: {evidence_summary(snap)}."
    text = f"Back to {e.count:,} of {e.attempts:,} sends ({e.ratio:.1%})"
    if e.window_seconds:
        text += f" in {_duration(e.window_seconds)}"
    if e.baseline_ratio is not None:
        text += f", in line with its usual {e.baseline_ratio:.1%}"
    if e.p_value is not None:
        text += f" (p = {e.p_value:.2g})"
    return text + "."


def carrying_campaign(n: Notification) -> tuple[str, float] | None:
    """The campaign that carries most of a spike (its share of the headline's excess errors),
    when one does."""
    head_excess = excess(n.headline.evidence)
    if head_excess <= 0:
        return None
    best = max(
        (s for s in n.related if s.scope.kind is ScopeKind.CAMPAIGN),
        key=lambda s: excess(s.evidence),
        default=None,
    )
    if best is None:
        return None
    share = min(1.0, excess(best.evidence) / head_excess)
    return (best.scope.key, share) if share >= 0.5 else None


def _affected(snaps: list[AlertSnapshot]) -> list[str]:
    groups: dict[str, dict[str, int]] = {
        "Templates": {},
        "Sending numbers": {},
        "Campaigns": {},
        "Countries": {},
    }
    names = {
        ScopeKind.TEMPLATE: "Templates",
        ScopeKind.SENDER: "Sending numbers",
        ScopeKind.CAMPAIGN: "Campaigns",
        ScopeKind.COUNTRY: "Countries",
    }
    for s in snaps:
        if s.scope.kind is ScopeKind.ACCOUNT:
            continue
        bucket = groups[names[s.scope.kind]]
        bucket[s.scope.key] = max(bucket.get(s.scope.key, 0), s.evidence.count)
        if s.scope.sender:
            senders = groups["Sending numbers"]
            senders[s.scope.sender] = max(senders.get(s.scope.sender, 0), s.evidence.count)
    lines = []
    for label, counts in groups.items():
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_N]
        if top:
            items = ", ".join(f"{_code(k)} ({n:,})" for k, n in top)
            more = f" and {len(counts) - TOP_N} more" if len(counts) > TOP_N else ""
            lines.append(f"*{label}:* {items}{more}")
    if any(s.scope.kind is ScopeKind.ACCOUNT for s in snaps):
        lines.append("*Whole account:* also spiking")
    return lines


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _truncate(text, 3000)}}


def render_slack_message(
    notification: Notification,
    *,
    grafana_url: str,
    dashboard_path: str = DEFAULT_DASHBOARD_PATH,
) -> dict[str, Any]:
    """The webhook payload (``text`` + ``blocks``) for one notification."""
    n, head = notification, notification.headline
    labels = _STANDING_LABELS if head.family is Family.STANDING else _KIND_LABELS
    emoji, label = labels[n.kind]
    url = dashboard_url(grafana_url, dashboard_path, n)
    header = _truncate(f"{emoji} {label}: {n.title}: {scope_label(head)}", 150)
    link = f"<{escape(url)}|Open the Grafana dashboard>"
    text = f"[{label}] {escape(n.title)}: {escape(scope_label(head))}: {evidence_summary(head)}"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": True}}
    ]
    if n.kind is NotificationKind.RESOLVED:
        resolved_at = head.resolved_at or n.at
        blocks.append(
            _section(
                f"*{escape(n.title)}* on {_scope_md(head)} resolved {_when(resolved_at)} after "
                f"{_duration(resolved_at - n.since)} (firing since {_when(n.since)}). "
                f"{resolve_summary(head)}"
            )
        )
        if n.related:
            also = ", ".join(_scope_md(s) for s in n.related[:10])
            blocks.append(_section(f"*Also affected during the incident:* {also}"))
    else:
        blocks.extend(_firing_blocks(n, head))
    blocks.append(
        {
            "type": "actions",
            "elements": [
                {
                    "type": "button",
                    "text": {"type": "plain_text", "text": "Open Grafana dashboard"},
                    "url": url,
                }
            ],
        }
    )
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": _truncate(
                        f"{link} · incident {_code(n.incident)} · notification {_code(n.id)} "
                        f"· severity {n.severity.value}",
                        3000,
                    ),
                }
            ],
        }
    )
    return {"text": _truncate(f"{text} · {link}", 3000), "blocks": blocks[:50]}


def _firing_blocks(n: Notification, head: AlertSnapshot) -> list[dict[str, Any]]:
    e = head.evidence
    what = f"*{escape(n.title)}* on {_scope_md(head)}: {escape(evidence_summary(head))}."
    if e.detail and e.attempts and head.family is Family.SPIKE:
        what += f" {escape(e.detail)}."
    campaign = carrying_campaign(n)
    if campaign is not None:
        what += f" Mostly campaign {_code(campaign[0])} ({campaign[1]:.0%} of the excess errors)."
    started = head.firing_since or n.since
    what += f" Firing since {_when(started)}"
    if head.started_at < started:
        what += f" (first seen {_when(head.started_at)})"
    fields = [f"*Scope*\n{_scope_md(head)}", f"*Kind*\n{head.family.value}"]
    if n.error_class is not None:
        fields.append(f"*Error class*\n{_code(n.error_class.value)}")
    if head.family is Family.SPIKE and (e.attempts or e.window_seconds):
        of = f" of {e.attempts:,} sends" if e.attempts else ""
        fields.append(f"*Count*\n{e.count:,}{of}")
    if e.attempts and head.family is Family.SPIKE:
        base = f" vs {e.baseline_ratio:.2%} baseline" if e.baseline_ratio is not None else ""
        fields.append(f"*Ratio*\n{e.ratio:.1%}{base}")
    if e.p_value is not None:
        p = f"{e.p_value:.1e}" if e.p_value > 0 else "< 1e-300"
        fields.append(f"*Significance*\np = {p} (binomial test vs baseline)")
    fields.append(f"*Since*\n{_when(n.since)}")
    current = [head, *(s for s in n.related if s.state is not AlertState.RESOLVED)]
    blocks = [
        _section(what + "."),
        {
            "type": "section",
            "fields": [{"type": "mrkdwn", "text": _truncate(f, 2000)} for f in fields[:10]],
        },
    ]
    affected = _affected(current)
    if affected:
        blocks.append(_section("*Top affected*\n" + "\n".join(affected)))
    action = incident_action(head)
    if action:
        blocks.append(_section(f"*Recommended action*\n{escape(action)}"))
    return blocks


# --- bot mode: the incident's thread (streams.core.threads) --------------------------------


def render_original(
    notification: Notification,
    *,
    grafana_url: str,
    dashboard_path: str = DEFAULT_DASHBOARD_PATH,
) -> dict[str, Any]:
    """The incident's top-level message as it reads after ``notification`` (edited in place):
    the firing message with the latest evidence, or the resolve message once resolved."""
    shown = notification
    if notification.kind is not NotificationKind.RESOLVED:
        shown = msgspec.structs.replace(notification, kind=NotificationKind.FIRING)
    return render_slack_message(shown, grafana_url=grafana_url, dashboard_path=dashboard_path)


def render_thread_reply(notification: Notification) -> dict[str, Any]:
    """A compact reply in the incident's thread: what changed, in one line."""
    n, head = notification, notification.headline
    emoji, label = _KIND_LABELS[n.kind]
    if n.kind is NotificationKind.RESOLVED:
        resolved_at = head.resolved_at or n.at
        what = (
            f"{_when(resolved_at)} after {_duration(resolved_at - n.since)}. "
            f"Last seen on {_scope_md(head)}: {evidence_summary(head)}."
        )
    elif n.kind is NotificationKind.UPDATED:
        what = f"now on {_scope_md(head)}: {evidence_summary(head)}."
    else:
        what = f"for {_duration(n.at - n.since)} on {_scope_md(head)}: {evidence_summary(head)}."
    if n.related and n.kind is not NotificationKind.RESOLVED:
        what += f" Also firing: {', '.join(_scope_md(s) for s in n.related[:5])}."
    text = f"[{label}] {escape(n.title)}: {escape(scope_label(head))}: {evidence_summary(head)}"
    return {
        "text": _truncate(text, 3000),
        "blocks": [
            _section(f"{emoji} *{label}* {what}"),
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"notification {_code(n.id)}"}],
            },
        ],
    }
