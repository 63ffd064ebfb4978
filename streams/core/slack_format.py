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

import datetime as dt
from typing import Any
from urllib.parse import urlencode

import msgspec

from streams.core.alerts import AlertSnapshot, AlertState, Notification, NotificationKind, ScopeKind
from streams.core.catalog import recommended_action

DEFAULT_DASHBOARD_PATH = "/d/whatsapp-delivery/whatsapp-delivery-monitor"
TOP_N = 5

_KIND_LABELS = {
    NotificationKind.FIRING: (":rotating_light:", "FIRING"),
    NotificationKind.UPDATED: (":rotating_light:", "UPDATED"),
    NotificationKind.REPEAT: (":repeat:", "STILL FIRING"),
    NotificationKind.RESOLVED: (":white_check_mark:", "RESOLVED"),
}


def escape(text: str) -> str:
    """Escape the three characters Slack mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> str:
    safe = escape(text).replace("`", "'")
    return f"`{safe}`"


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _when(ts: int) -> str:
    """Slack date formatting (shown in the reader's time zone), with a UTC fallback."""
    fallback = dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{ts}^{{date_short_pretty}} {{time}}|{fallback}>"


def _duration(seconds: int) -> str:
    if 0 < seconds < 60:  # the minute in progress, judged early
        return f"{seconds} s"
    minutes = max(0, seconds) // 60
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


def scope_label(snap: AlertSnapshot) -> str:
    """Plain words for a scope: ``template spring_sale on 1555...``, ``the whole account``."""
    scope = snap.scope
    if scope.kind is ScopeKind.ACCOUNT:
        return "the whole account"
    noun = {"template": "template", "sender": "sending number", "country": "country"}
    label = f"{noun[scope.kind.value]} {scope.key}"
    return f"{label} on sending number {scope.sender}" if scope.sender else label


def _scope_md(snap: AlertSnapshot) -> str:
    scope = snap.scope
    if scope.kind is ScopeKind.ACCOUNT:
        return "the whole account"
    noun = {"template": "template", "sender": "sending number", "country": "country"}
    text = f"{noun[scope.kind.value]} {_code(scope.key)}"
    return f"{text} on sending number {_code(scope.sender)}" if scope.sender else text


def evidence_summary(snap: AlertSnapshot) -> str:
    """Counts in words: ``300 of 1,000 sends (30.0%) in 5 min vs 2.0% baseline``."""
    e = snap.evidence
    window = f" in {_duration(e.window_seconds)}" if e.window_seconds else ""
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


def _affected(snaps: list[AlertSnapshot]) -> list[str]:
    groups: dict[str, dict[str, int]] = {"Templates": {}, "Sending numbers": {}, "Countries": {}}
    names = {
        ScopeKind.TEMPLATE: "Templates",
        ScopeKind.SENDER: "Sending numbers",
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
    emoji, label = _KIND_LABELS[n.kind]
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
                f"Last seen: {evidence_summary(head)}."
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
    what = f"*{escape(n.title)}* on {_scope_md(head)}: {evidence_summary(head)}."
    if e.detail and e.attempts:
        what += f" {escape(e.detail)}."
    started = head.firing_since or n.since
    what += f" Firing since {_when(started)}"
    if head.started_at < started:
        what += f" (first seen {_when(head.started_at)})"
    fields = [f"*Scope*\n{_scope_md(head)}"]
    if n.error_class is not None:
        fields.append(f"*Error class*\n{_code(n.error_class.value)}")
    if e.attempts or e.window_seconds:  # a counted rule (an event-driven one counts 1)
        of = f" of {e.attempts:,} sends" if e.attempts else ""
        fields.append(f"*Count*\n{e.count:,}{of}")
    if e.attempts:
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
    if n.error_class is not None:
        blocks.append(
            _section(f"*Recommended action*\n{escape(recommended_action(n.error_class))}")
        )
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
