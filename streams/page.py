"""The overview page at ``/`` on every worker's web port, and the worker's summary log line.

Server-rendered HTML, no script and no front-end build: it refreshes itself (a ``<meta>``
refresh) and draws its bars as inline SVG, so it works with JavaScript off. Open incidents come
first (with the recommended action), then the templates, sending numbers, countries and
campaigns with the most limit errors in the last hour, recipients in a 131049 cool-down and
opted out, and the pipeline's health (consumer lag, this worker's counters), with links to the
JSON API and to Grafana. Every name that came from a webhook or the send log is escaped.

:func:`render` is a pure function of :class:`Overview` (unit-tested); :func:`gather` collects
the data through the API object (summed across workers, as the JSON endpoints are).
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web

from streams.core.aggregates import LIMIT_CLASSES
from streams.core.times import iso_utc
from streams.ports import PageSource
from streams.rankings import DIMS, RankingQuery

if TYPE_CHECKING:
    from streams.api import Api

log = logging.getLogger("streams.summary")

REFRESH_S = 30
TOP = 8
DELIVERY_DASHBOARD = "/d/wdm-delivery-overview"
PIPELINE_DASHBOARD = "/d/wdm-pipeline-health"
_TITLES = {
    "templates": "Templates",
    "senders": "Sending numbers",
    "countries": "Countries",
    "campaigns": "Campaigns",
}


@dataclass
class Overview:
    """Everything the page shows (JSON builtins, as the API returns them)."""

    app_id: str
    grafana_url: str
    now: float
    alerts: dict[str, Any] | None  # None: the alerting worker did not answer
    rankings: dict[str, dict[str, Any]]  # path segment -> ranking body
    recipients_in_cooldown: int = 0
    recipients_opted_out: int = 0
    templates_paused: int = 0
    workers: int = 1
    partial: bool = False  # a worker did not answer
    lag: dict[str, Any] | None = None  # /v1/health's consumer_lag
    counters: dict[str, Any] = field(default_factory=dict)  # this worker's stage counters


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _pct(ratio: float) -> str:
    return f"{ratio:.1%}"


def _bar(value: float, top: float, width: int = 120, color: str = "#c0392b") -> str:
    filled = 0 if top <= 0 else max(1, round(width * value / top)) if value > 0 else 0
    return (
        f'<svg class="bar" width="{width}" height="10" role="img" aria-label="{e(value)}">'
        f'<rect width="{width}" height="10" fill="#eee"/>'
        f'<rect width="{filled}" height="10" fill="{color}"/></svg>'
    )


def _grafana(base: str, path: str, **variables: str) -> str:
    query = "&".join(f"var-{k}={quote(v, safe='')}" for k, v in variables.items())
    return f"{base.rstrip('/')}{path}" + (f"?{query}" if query else "")


def _incident(incident: dict[str, Any], grafana: str) -> str:
    scope = incident["scope"]
    variables = {scope["kind"]: scope["key"]} if scope["kind"] != "account" else {}
    related = "".join(f"<li>{e(r['label'])}: {e(r['summary'])}</li>" for r in incident["related"])
    resolved = incident.get("resolved_at_iso")
    when = f"since {e(incident['since_iso'])}"
    if resolved:
        when = f"{e(incident['since_iso'])} to {e(resolved)}"
    action = incident.get("recommended_action")
    return (
        f'<article class="incident {e(incident["state"])}">'
        f"<h3>{e(incident['title'])}: {e(scope['label'])}</h3>"
        f'<p class="evidence">{e(scope["summary"])} &middot; {when}'
        f" &middot; {e(incident['severity'])} &middot; <code>{e(incident['id'])}</code></p>"
        + (f"<p><b>Also affected:</b></p><ul>{related}</ul>" if related else "")
        + (f'<p class="action"><b>What to do:</b> {e(action)}</p>' if action else "")
        + f'<p><a href="{e(_grafana(grafana, DELIVERY_DASHBOARD, **variables))}">'
        "Grafana dashboard</a></p></article>"
    )


def _alerts(overview: Overview) -> str:
    alerts = overview.alerts
    if alerts is None:
        return (
            '<section id="incidents"><h2>Open incidents</h2>'
            '<p class="warn">The worker that runs the alerting stage did not answer.</p>'
            "</section>"
        )
    opened = alerts["open"]
    body = (
        "".join(_incident(i, overview.grafana_url) for i in opened)
        if opened
        else '<p class="ok">Nothing is firing.</p>'
    )
    resolved = alerts["resolved"]
    history = ""
    if resolved:
        items = "".join(
            f"<li>{e(r['resolved_at_iso'])}: {e(r['title'])}: {e(r['scope']['label'])} "
            f"(since {e(r['since_iso'])})</li>"
            for r in resolved[:10]
        )
        more = f"<li>and {len(resolved) - 10} more</li>" if len(resolved) > 10 else ""
        history = f'<h3>Resolved in the last 24 h</h3><ul class="resolved">{items}{more}</ul>'
    return (
        f'<section id="incidents"><h2>Open incidents ({len(opened)})</h2>{body}{history}'
        '<p class="links"><a href="/v1/alerts">/v1/alerts</a></p></section>'
    )


def _ranking(kind: str, body: dict[str, Any]) -> str:
    field_name = DIMS[kind].noun
    entries = body["entries"]
    top = max((x["limit_errors"] for x in entries), default=0)
    rows = []
    for x in entries:
        name = x[field_name]
        badge = ""
        state = x.get("state")
        if state and state.get("paused"):
            badge = f' <span class="badge">{e(state["status"])}</span>'
        rows.append(
            f'<tr><td class="name"><a href="/v1/{kind}/{e(quote(name, safe=""))}">{e(name)}</a>'
            f"{badge}</td>"
            f'<td class="num">{x["limit_errors"]:,}</td><td>{_bar(x["limit_errors"], top)}</td>'
            f'<td class="num">{_pct(x["limit_error_ratio"])}</td>'
            f'<td class="num">{x["attempted"]:,}</td>'
            f'<td class="num">{_pct(x["failure_ratio"])}</td></tr>'
        )
    table = (
        "<table><thead><tr><th>name</th><th colspan=2>limit errors</th><th>of sends</th>"
        "<th>sends</th><th>failed</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        if rows
        else '<p class="muted">No traffic in the last hour.</p>'
    )
    more = f" (top {len(entries)} of {body['total']})" if body["total"] > len(entries) else ""
    return (
        f'<div class="ranking" id="{e(kind)}"><h3>{e(_TITLES[kind])}{more}</h3>{table}'
        f'<p class="links"><a href="/v1/{kind}?window=1h&amp;sort=limit_errors">'
        f"/v1/{kind}</a></p></div>"
    )


def _pipeline(overview: Overview) -> str:
    lag = overview.lag
    if lag is None:
        lag_html = '<p class="muted">Consumer lag not measured yet.</p>'
    else:
        top = max((row["seconds"] for row in lag["topics"]), default=0.0)
        rows = "".join(
            f"<tr><td>{e(row['group'])}</td><td>{e(row['topic'])}</td>"
            f'<td class="num">{row["records"]:,}</td>'
            f'<td class="num">{row["seconds"]:.1f} s</td>'
            f"<td>{_bar(row['seconds'], max(top, 60.0), color='#2c7fb8')}</td></tr>"
            for row in lag["topics"]
        )
        lag_html = (
            f"<table><thead><tr><th>consumer group</th><th>topic</th><th>records behind</th>"
            f"<th colspan=2>oldest waiting</th></tr></thead><tbody>{rows}</tbody></table>"
            f'<p class="muted">measured {e(lag["as_of_iso"])}</p>'
        )
    counters = "".join(
        f'<tr><td>{e(k)}</td><td class="num">{e(f"{v:,}" if isinstance(v, int) else v)}</td></tr>'
        for k, v in overview.counters.items()
    )
    return (
        '<section id="pipeline"><h2>Pipeline health</h2><div class="grid">'
        f"<div><h3>Kafka consumer lag</h3>{lag_html}</div>"
        f"<div><h3>This worker</h3><table><tbody>{counters}</tbody></table></div></div>"
        '<p class="links"><a href="/v1/health">/v1/health</a> &middot; '
        '<a href="/metrics">/metrics</a> &middot; '
        f'<a href="{e(_grafana(overview.grafana_url, PIPELINE_DASHBOARD))}">'
        "Grafana: pipeline health</a></p></section>"
    )


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;
background:#f6f7f9}
header{background:#1f3b57;color:#fff;padding:12px 24px}header a{color:#cde}
header h1{font-size:20px;margin:0}main{max-width:1280px;margin:0 auto;padding:8px 24px}
section{background:#fff;border:1px solid #dde;border-radius:6px;margin:14px 0;padding:4px 16px}
h2{font-size:17px}h3{font-size:15px;margin:10px 0 6px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:8px 24px}
table{border-collapse:collapse;width:100%}td,th{padding:3px 6px;text-align:left;
border-bottom:1px solid #eef}th{font-weight:600;color:#555}.num{text-align:right;
white-space:nowrap;font-variant-numeric:tabular-nums}td.name{max-width:260px;overflow-wrap:anywhere}
.incident{border-left:5px solid #c0392b;background:#fdf2f1;padding:4px 12px;margin:8px 0}
.incident.resolved{border-color:#888;background:#f4f4f4}.incident h3{margin:6px 0}
.evidence{color:#444}.action{background:#fff;padding:6px;border-radius:4px}
.ok{color:#1e7e34;font-weight:600}.warn{color:#b35c00;font-weight:600}.muted{color:#777}
.badge{background:#c0392b;color:#fff;border-radius:3px;padding:0 4px;font-size:11px}
.stat{display:inline-block;margin:4px 28px 8px 0}.stat b{display:block;font-size:24px}
.links{font-size:12px;color:#555}svg.bar{vertical-align:middle}
"""


def render(overview: Overview) -> str:
    """The page's HTML."""
    as_of = next((b["as_of"] for b in overview.rankings.values() if b.get("as_of")), 0)
    event_time = iso_utc(as_of) if as_of else "no events yet"
    notes = []
    if overview.partial:
        notes.append("a worker did not answer: the numbers below miss its partitions")
    note = "".join(f'<p class="warn">{e(n)}</p>' for n in notes)
    rankings = "".join(_ranking(kind, body) for kind, body in overview.rankings.items())
    grafana = overview.grafana_url
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_S}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Delivery monitor: {e(overview.app_id)}</title><style>{_CSS}</style></head>"
        "<body><header><h1>WhatsApp delivery monitor</h1>"
        f"<div>{e(overview.app_id)} &middot; {overview.workers} worker(s) &middot; "
        f"page {e(iso_utc(overview.now))} &middot; newest event {e(event_time)} &middot; "
        f"refreshes every {REFRESH_S} s &middot; "
        f'<a href="{e(_grafana(grafana, DELIVERY_DASHBOARD))}">Grafana</a></div></header>'
        f"<main>{note}{_alerts(overview)}"
        '<section id="rankings"><h2>Most limit errors in the last hour</h2>'
        '<p class="muted">131049: per-user marketing limit and US marketing pause, by event '
        "time.</p>"
        f'<div class="grid">{rankings}</div></section>'
        '<section id="recipients"><h2>Recipients and templates</h2>'
        f'<div class="stat"><b>{overview.recipients_in_cooldown:,}</b>in a 131049 cool-down '
        "(do not resend for 24 h)</div>"
        f'<div class="stat"><b>{overview.recipients_opted_out:,}</b>opted out of marketing</div>'
        f'<div class="stat"><b>{overview.templates_paused:,}</b>templates paused or disabled'
        "</div></section>"
        f"{_pipeline(overview)}</main></body></html>"
    )


async def gather(api: Api, monitor: PageSource) -> Overview:
    """The page's data, summed across workers like the JSON endpoints."""
    query = RankingQuery("1h", None, "limit_errors", TOP)
    alerts, *bodies = await asyncio.gather(
        api.alerts_data(), *(api.ranking_data(kind, query) for kind in DIMS)
    )
    local = api.local_state()
    peers = await api.ask_peers("/v1/health")
    totals = dict(local)
    for health in peers:
        if health is not None:
            for key in totals:
                totals[key] += health.get("state", {}).get(key, 0)
    s = monitor.ingest.stats
    m = monitor.messages.stats
    counters: dict[str, Any] = {
        "statuses received": s.statuses,
        "dead letters": s.dead_letters,
        "duplicate statuses dropped": m.duplicates,
        "late statuses (not in minute buckets)": m.late,
        "send-log records": m.send_log,
        "partitions (messages)": ", ".join(str(p) for p in api.local_partitions(api.messages_topic))
        or "none yet",
    }
    return Overview(
        app_id=monitor.settings.app_id,
        grafana_url=monitor.settings.grafana_url,
        now=time.time(),
        alerts=alerts,
        rankings=dict(zip(DIMS, bodies, strict=True)),
        recipients_in_cooldown=totals["recipients_in_cooldown"],
        recipients_opted_out=totals["recipients_opted_out"],
        templates_paused=totals["templates_paused"],
        workers=1 + len(peers),
        partial=None in peers or any(b["partial"] for b in bodies),
        lag=api.consumer_lag(),
        counters=counters,
    )


def summary_line(
    overview: Overview, seconds: float, statuses_per_s: float, limit_errors: int, url: str
) -> str:
    """One line for the log: throughput, limit errors, what is firing, lag, the page."""
    alerts = overview.alerts
    if alerts is None:
        firing = "open incidents unknown (the alerting worker did not answer)"
    else:
        opened = alerts["open"]
        firing = f"{len(opened)} open incident{'s' if len(opened) != 1 else ''}"
        if opened:
            first = opened[0]
            firing += f" ({first['title']}: {first['scope']['label']}, since {first['since_iso']})"
    lag = overview.lag
    behind = max((row["seconds"] for row in lag["topics"]), default=0.0) if lag else None
    lag_text = f", consumer lag {behind:.1f} s" if behind is not None else ""
    return (
        f"summary: {statuses_per_s:,.1f} statuses/s, {limit_errors:,} limit errors in the last "
        f"{seconds:.0f} s, {firing}{lag_text} | {url}"
    )


class Summary:
    """Once a minute (the setting): statuses per second and limit errors since the last line,
    read from this worker's counters, and the open incidents."""

    def __init__(self, api: Api, monitor: PageSource, clock: Any = time.monotonic) -> None:
        self.api, self.monitor, self.clock = api, monitor, clock
        self._last = (clock(), self._totals())
        s = monitor.settings
        self.url = f"http://{s.web_host}:{s.web_port}/"

    def _totals(self) -> tuple[int, int]:
        """(statuses received, unique limit errors counted) by this worker so far."""
        limit = 0.0
        for family in self.monitor.metrics.failures.collect():
            for sample in family.samples:
                if sample.labels.get("error_class") in LIMIT_CLASSES:
                    limit += sample.value
        return self.monitor.ingest.stats.statuses, int(limit)

    async def line(self) -> str:
        now, totals = self.clock(), self._totals()
        (then, (statuses, limits)), self._last = self._last, (now, totals)
        seconds = max(1e-9, now - then)
        rate = (totals[0] - statuses) / seconds
        overview = await gather(self.api, self.monitor)
        return summary_line(overview, seconds, rate, totals[1] - limits, self.url)


def register(monitor: PageSource, web_app: web.Application, api: Api) -> None:
    """The page at ``/`` and, every ``summary_interval_s``, the summary line in the log."""

    async def page(request: web.Request) -> web.Response:
        overview = await gather(api, monitor)
        return web.Response(
            text=render(overview),
            content_type="text/html",
            headers={"Cache-Control": "no-store", "Content-Security-Policy": "script-src 'none'"},
        )

    web_app.router.add_get("/", page)
    interval = monitor.settings.summary_interval_s
    if interval > 0:
        summary = Summary(api, monitor)

        async def log_summary() -> None:
            try:
                log.info("%s", await summary.line())
            except Exception:  # a summary line is never worth stopping the worker
                log.warning("summary line failed", exc_info=True)

        monitor.runtime.every(interval, log_summary, "log_summary")
