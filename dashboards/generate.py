#!/usr/bin/env python3
"""Generate the Grafana dashboards of the WhatsApp delivery monitor (stdlib only).

    python dashboards/generate.py           # write dashboards/*.json
    python dashboards/generate.py --check   # exit 1 if the committed JSON is not the output

The JSON files are what Grafana loads (see dashboards/provisioning/); edit this file, never
the JSON, and commit both (a test checks they agree). Every query uses the ``${datasource}``
variable and ``$__rate_interval`` in ``rate()``, as grafana's dashboard-linter asks; every
panel query and variable query is run against a real Prometheus scraping a real worker in
tests/integration/test_prometheus.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 39
DS = {"type": "prometheus", "uid": "${datasource}"}
TAGS = ["whatsapp", "delivery-monitor"]
LIMIT = 'error_class=~"per_user_marketing_limit|us_marketing_pause"'
P = "whatsapp_monitor_"

Panel = dict[str, Any]


# -- building blocks ---------------------------------------------------------------------------
def target(expr: str, legend: str = "__auto", instant: bool = False, ref: str = "A") -> Panel:
    t: Panel = {
        "datasource": DS,
        "editorMode": "code",
        "expr": expr,
        "instant": instant,
        "legendFormat": legend,
        "range": not instant,
        "refId": ref,
    }
    return t


def targets(*items: tuple[str, str], instant: bool = False) -> list[Panel]:
    return [
        target(expr, legend, instant, chr(ord("A") + i)) for i, (expr, legend) in enumerate(items)
    ]


def _thresholds(red: float | None) -> Panel:
    steps: list[Panel] = [{"color": "green", "value": None}]
    if red is not None:
        steps.append({"color": "red", "value": red})
    return {"mode": "absolute", "steps": steps}


def timeseries(title: str, description: str, unit: str, queries: list[Panel]) -> Panel:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": queries,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "min": 0,
                "color": {"mode": "palette-classic"},
                "custom": {
                    "drawStyle": "line",
                    "lineInterpolation": "linear",
                    "lineWidth": 1,
                    "fillOpacity": 10,
                    "showPoints": "never",
                    "spanNulls": False,
                    "stacking": {"group": "A", "mode": "none"},
                },
                "thresholds": _thresholds(None),
            },
            "overrides": [],
        },
        "options": {
            "legend": {
                "calcs": [],
                "displayMode": "list",
                "placement": "bottom",
                "showLegend": True,
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(
    title: str, description: str, unit: str, queries: list[Panel], red: float | None = None
) -> Panel:
    for q in queries:
        if "$__range" in q["expr"]:  # a total over the whole range: one instant value
            q["instant"], q["range"] = True, False
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": queries,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "color": {"mode": "thresholds"},
                "thresholds": _thresholds(red),
            },
            "overrides": [],
        },
        "options": {
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "auto",
        },
    }


def bars(title: str, description: str, unit: str, queries: list[Panel]) -> Panel:
    """A horizontal bar gauge of an instant query (one bar per series)."""
    for q in queries:
        q["instant"], q["range"] = True, False
    return {
        "type": "bargauge",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": queries,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "min": 0,
                "color": {"mode": "continuous-GrYlRd"},
                "thresholds": _thresholds(None),
            },
            "overrides": [],
        },
        "options": {
            "displayMode": "gradient",
            "orientation": "horizontal",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showUnfilled": True,
            "valueMode": "color",
        },
    }


def row(title: str) -> Panel:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def layout(items: list[tuple[Panel, int, int]]) -> list[Panel]:
    """Place (panel, width, height) left to right on the 24-column grid; rows span the width."""
    out: list[Panel] = []
    x = y = line = 0
    for pid, (panel, w, h) in enumerate(items, start=1):
        if panel["type"] == "row":
            y += line
            x, line, w, h = 0, 0, 24, 1
        elif x + w > 24:
            x, y, line = 0, y + line, 0
        out.append({"id": pid, "gridPos": {"h": h, "w": w, "x": x, "y": y}, **panel})
        x += w
        line = max(line, h)
        if panel["type"] == "row":
            x, y, line = 0, y + 1, 0
    return out


def datasource_variable() -> Panel:
    return {
        "type": "datasource",
        "name": "datasource",
        "label": "Data source",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
    }


def query_variable(name: str, label: str, metric: str, label_name: str) -> Panel:
    query = f"label_values({metric}, {label_name})"
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DS,
        "definition": query,
        "query": {
            "qryType": 1,
            "query": query,
            "refId": "PrometheusVariableQueryEditor-VariableQuery",
        },
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "hide": 0,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "options": [],
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
    }


def dashboard(
    uid: str, title: str, description: str, panels: list[Panel], variables: list[Panel]
) -> Panel:
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [
            {
                "asDropdown": False,
                "icon": "external link",
                "includeVars": False,
                "keepTime": True,
                "tags": ["delivery-monitor"],
                "targetBlank": False,
                "title": "Delivery monitor",
                "type": "dashboards",
            }
        ],
        "liveNow": False,
        "panels": panels,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": TAGS,
        "templating": {"list": variables},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


# -- Delivery overview ---------------------------------------------------------------------------
def _ratio(numerator: str, denominator: str) -> str:
    return f"{numerator}\n/\n{denominator}"


def delivery_overview() -> Panel:
    s = 'sender=~"$sender"'
    t = 'template=~"$template"'
    g = 'campaign=~"$campaign"'
    msgs = f"{P}sender_messages_total"
    fails = f"{P}sender_failures_total"

    def over_range(outcome: str) -> str:
        return f'sum(increase({msgs}{{{s}, outcome="{outcome}"}}[$__range]))'

    attempted_range = over_range("attempted")
    items: list[tuple[Panel, int, int]] = [
        (row("Funnel"), 24, 1),
        (
            bars(
                "Delivery funnel",
                "Messages reaching each stage over the selected range, counted once per message "
                "after deduplication (a read without delivered counts as delivered).",
                "short",
                targets(
                    (
                        f"sum by (outcome) (increase({msgs}{{{s}, "
                        'outcome=~"attempted|sent|delivered|read|failed"}[$__range]))',
                        "{{outcome}}",
                    )
                ),
            ),
            8,
            8,
        ),
        (
            timeseries(
                "Funnel over time",
                "Messages per second reaching each funnel stage (event counted when processed).",
                "cps",
                targets(
                    (
                        f"sum by (outcome) (rate({msgs}{{{s}, "
                        'outcome=~"sent|delivered|read|failed"}[$__rate_interval]))',
                        "{{outcome}}",
                    )
                ),
            ),
            16,
            8,
        ),
        (
            stat(
                "Delivered",
                "Delivered / attempted over the selected range.",
                "percentunit",
                targets((_ratio(over_range("delivered"), attempted_range), "delivered")),
            ),
            6,
            4,
        ),
        (
            stat(
                "Read",
                "Read / delivered over the selected range.",
                "percentunit",
                targets((_ratio(over_range("read"), over_range("delivered")), "read")),
            ),
            6,
            4,
        ),
        (
            stat(
                "Failed",
                "Failed / attempted over the selected range.",
                "percentunit",
                targets((_ratio(over_range("failed"), attempted_range), "failed")),
                red=0.1,
            ),
            6,
            4,
        ),
        (
            stat(
                "Limit errors",
                "131049 failures (per-user marketing limit and US marketing pause) / attempted "
                "over the selected range.",
                "percentunit",
                targets(
                    (
                        _ratio(
                            f"sum(increase({fails}{{{s}, {LIMIT}}}[$__range]))", attempted_range
                        ),
                        "limit errors",
                    )
                ),
                red=0.05,
            ),
            6,
            4,
        ),
        (row("Failures"), 24, 1),
        (
            timeseries(
                "Failure ratio by error class",
                "Failed / attempted sends per error class (classes from the error catalog).",
                "percentunit",
                targets(
                    (
                        _ratio(
                            f"sum by (error_class) (rate({fails}{{{s}, "
                            'error_class=~"$error_class"}[$__rate_interval]))',
                            f"ignoring(error_class) group_left sum(rate({msgs}{{{s}, "
                            'outcome="attempted"}[$__rate_interval]))',
                        ),
                        "{{error_class}}",
                    )
                ),
            ),
            12,
            8,
        ),
        (
            timeseries(
                "131049: per-user limit vs US marketing pause",
                "131049 (and On-Prem 1026) failures per second: the per-user marketing limit "
                "(retry after 24 h) vs the US marketing pause (never retry).",
                "cps",
                targets(
                    (
                        f"sum by (error_class) (rate({fails}{{{s}, {LIMIT}}}[$__rate_interval]))",
                        "{{error_class}}",
                    )
                ),
            ),
            12,
            8,
        ),
        (
            bars(
                "Failures by error code",
                "Failed statuses per error code over the selected range (codes outside the "
                "catalog are 'other').",
                "short",
                targets(
                    (
                        "topk(15, sum by (error_code, error_class) "
                        f'(increase({P}failures_total{{error_class=~"$error_class"}}[$__range]))'
                        " > 0)",
                        "{{error_code}} {{error_class}}",
                    )
                ),
            ),
            12,
            8,
        ),
        (
            timeseries(
                "Unique statuses by pricing category",
                "Statuses per second after deduplication, by pricing category.",
                "cps",
                targets(
                    (
                        f"sum by (category) (rate({P}statuses_total[$__rate_interval]))",
                        "{{category}}",
                    )
                ),
            ),
            12,
            8,
        ),
        (row("Templates"), 24, 1),
        (
            bars(
                "Top templates by limit errors",
                "131049 failures per template over the selected range (templates beyond the "
                "label cap are '__other__').",
                "short",
                targets(
                    (
                        "topk(10, sum by (template) (increase("
                        f"{P}template_failures_total{{{t}, {LIMIT}}}[$__range])))",
                        "{{template}}",
                    )
                ),
            ),
            8,
            8,
        ),
        (
            timeseries(
                "Limit-error ratio by template",
                "131049 failures / attempted sends per template (the alert rule uses 10 minutes "
                "and at least 20 errors).",
                "percentunit",
                targets(
                    (
                        _ratio(
                            f"sum by (template) (rate({P}template_failures_total{{{t}, {LIMIT}}}"
                            "[$__rate_interval]))",
                            f"sum by (template) (rate({P}template_messages_total{{{t}, "
                            'outcome="attempted"}[$__rate_interval]))',
                        ),
                        "{{template}}",
                    )
                ),
            ),
            8,
            8,
        ),
        (
            bars(
                "Limit-error ratio now (5 min) by template",
                "The last 5 minutes of event time, computed by the workers from their tables "
                "(weighted by attempts across workers).",
                "percentunit",
                targets(
                    (
                        _ratio(
                            f"topk(10, sum by (template) ({P}template_limit_error_ratio{{{t}}} "
                            f"* {P}template_window_attempts)",
                            f"sum by (template) ({P}template_window_attempts{{{t}}}))",
                        ),
                        "{{template}}",
                    )
                ),
            ),
            8,
            8,
        ),
        (
            timeseries(
                "Sends by template",
                "Attempted sends per second per template.",
                "cps",
                targets(
                    (
                        f"sum by (template) (rate({P}template_messages_total{{{t}, "
                        'outcome="attempted"}[$__rate_interval]))',
                        "{{template}}",
                    )
                ),
            ),
            24,
            8,
        ),
        (row("Campaigns"), 24, 1),
        (
            bars(
                "Top campaigns by limit errors",
                "131049 failures per campaign over the selected range (campaign from "
                "biz_opaque_callback_data or the send log; messages without one are not counted "
                "here; campaigns beyond the label cap are '__other__').",
                "short",
                targets(
                    (
                        "topk(10, sum by (campaign) (increase("
                        f"{P}campaign_failures_total{{{g}, {LIMIT}}}[$__range])))",
                        "{{campaign}}",
                    )
                ),
            ),
            8,
            8,
        ),
        (
            timeseries(
                "Limit-error ratio by campaign",
                "131049 failures / attempted sends per campaign.",
                "percentunit",
                targets(
                    (
                        _ratio(
                            f"sum by (campaign) (rate({P}campaign_failures_total{{{g}, {LIMIT}}}"
                            "[$__rate_interval]))",
                            f"sum by (campaign) (rate({P}campaign_messages_total{{{g}, "
                            'outcome="attempted"}[$__rate_interval]))',
                        ),
                        "{{campaign}}",
                    )
                ),
            ),
            8,
            8,
        ),
        (
            timeseries(
                "Sends by campaign",
                "Attempted sends per second per campaign.",
                "cps",
                targets(
                    (
                        f"sum by (campaign) (rate({P}campaign_messages_total{{{g}, "
                        'outcome="attempted"}[$__rate_interval]))',
                        "{{campaign}}",
                    )
                ),
            ),
            8,
            8,
        ),
        (row("Sending numbers and countries"), 24, 1),
        (
            timeseries(
                "Limit-error ratio by sending number",
                "131049 failures / attempted sends per phone_number_id.",
                "percentunit",
                targets(
                    (
                        _ratio(
                            f"sum by (sender) (rate({fails}{{{s}, {LIMIT}}}[$__rate_interval]))",
                            f'sum by (sender) (rate({msgs}{{{s}, outcome="attempted"}}'
                            "[$__rate_interval]))",
                        ),
                        "{{sender}}",
                    )
                ),
            ),
            12,
            8,
        ),
        (
            bars(
                "Limit-error ratio now (5 min) by sending number",
                "The last 5 minutes of event time, computed by the workers from their tables.",
                "percentunit",
                targets(
                    (
                        _ratio(
                            f"sum by (sender) ({P}sender_limit_error_ratio{{{s}}} "
                            f"* {P}sender_window_attempts)",
                            f"sum by (sender) ({P}sender_window_attempts{{{s}}})",
                        ),
                        "{{sender}}",
                    )
                ),
            ),
            12,
            8,
        ),
        (
            bars(
                "Failure ratio by recipient country",
                "Failed / attempted over the selected range per recipient country (from the "
                "phone number; ZZ when unknown).",
                "percentunit",
                targets(
                    (
                        _ratio(
                            f"topk(15, sum by (country) (increase({P}country_messages_total"
                            '{outcome="failed"}[$__range]))',
                            f"sum by (country) (increase({P}country_messages_total"
                            '{outcome="attempted"}[$__range])))',
                        ),
                        "{{country}}",
                    )
                ),
            ),
            12,
            8,
        ),
        (
            timeseries(
                "Failures by recipient country",
                "Failures per second per recipient country, for the selected error classes.",
                "cps",
                targets(
                    (
                        f"sum by (country) (rate({P}country_failures_total"
                        '{error_class=~"$error_class"}[$__rate_interval]))',
                        "{{country}}",
                    )
                ),
            ),
            12,
            8,
        ),
        (row("Recipients and templates"), 24, 1),
        (
            stat(
                "Recipients in 131049 cool-down",
                "Recipients whose last per-user-limit failure is less than 24 h old (event "
                "time): resending to them within 24 h can extend the block.",
                "short",
                targets((f"sum({P}recipients_in_cooldown)", "in cool-down")),
            ),
            6,
            5,
        ),
        (
            stat(
                "Recipients opted out",
                "Recipients who stopped marketing messages (131050, or a user_preferences stop) "
                "and did not resume.",
                "short",
                targets((f"sum({P}recipients_opted_out)", "opted out")),
            ),
            6,
            5,
        ),
        (
            stat(
                "Templates paused",
                "Templates whose latest status update from Meta is PAUSED or DISABLED.",
                "short",
                targets((f"sum({P}templates_paused)", "paused")),
                red=1,
            ),
            6,
            5,
        ),
        (
            stat(
                "Alerts fired",
                "Alerts the stream detector fired over the selected range.",
                "short",
                targets((f'sum(increase({P}alerts_total{{kind="firing"}}[$__range]))', "fired")),
                red=1,
            ),
            6,
            5,
        ),
        (
            timeseries(
                "Opt-outs",
                "131050 failures per second (the recipient stopped marketing messages).",
                "cps",
                targets(
                    (
                        f'sum(rate({fails}{{{s}, error_class="opt_out"}}[$__rate_interval]))',
                        "opt-out failures",
                    )
                ),
            ),
            8,
            8,
        ),
        (
            timeseries(
                "Recipients in cool-down and opted out",
                "The two recipient gauges over time.",
                "short",
                targets(
                    (f"sum({P}recipients_in_cooldown)", "in 131049 cool-down"),
                    (f"sum({P}recipients_opted_out)", "opted out"),
                ),
            ),
            8,
            8,
        ),
        (
            timeseries(
                "Alert notifications by rule",
                "Notifications the stream detector emitted per rule (firing, updated, repeat, "
                "resolved).",
                "short",
                targets(
                    (
                        f"sum by (rule) (increase({P}alerts_total[$__rate_interval]))",
                        "{{rule}}",
                    )
                ),
            ),
            8,
            8,
        ),
    ]
    variables = [
        datasource_variable(),
        query_variable("sender", "Sending number", f"{P}sender_messages_total", "sender"),
        query_variable("template", "Template", f"{P}template_messages_total", "template"),
        query_variable("campaign", "Campaign", f"{P}campaign_messages_total", "campaign"),
        query_variable("error_class", "Error class", f"{P}failures_total", "error_class"),
    ]
    return dashboard(
        "wdm-delivery-overview",
        "WhatsApp delivery overview",
        "Delivery funnel, failures by error class, 131049 limit errors per template, campaign, "
        "sending number and country, recipients in cool-down, opt-outs and alerts.",
        layout(items),
        variables,
    )


# -- Pipeline health -----------------------------------------------------------------------------
def _quantile(q: float, by: str = "le") -> str:
    return (
        f"histogram_quantile({q}, sum by ({by}) "
        f"(rate({P}event_lag_seconds_bucket[$__rate_interval])))"
    )


def pipeline_health() -> Panel:
    items: list[tuple[Panel, int, int]] = [
        (row("Throughput"), 24, 1),
        (
            timeseries(
                "Records consumed",
                "Kafka records consumed per second by topic (raw webhooks, send log).",
                "cps",
                targets(
                    (
                        f"sum by (topic) (rate({P}records_consumed_total[$__rate_interval]))",
                        "{{topic}}",
                    )
                ),
            ),
            12,
            8,
        ),
        (
            timeseries(
                "Status items: received vs unique",
                "Status webhook items received (Meta's retries included) and unique statuses "
                "after deduplication.",
                "cps",
                targets(
                    (f"sum(rate({P}status_events_total[$__rate_interval]))", "received"),
                    (f"sum(rate({P}statuses_total[$__rate_interval]))", "unique"),
                ),
            ),
            12,
            8,
        ),
        (row("Lag"), 24, 1),
        (
            timeseries(
                "Consumer lag: seconds behind",
                "Per consumer group and topic, how long the oldest record not yet processed "
                "has waited (every worker measures every partition; the max is shown). It grows "
                "while a worker is stalled or too slow (the falling-behind alert fires over "
                "5 minutes).",
                "s",
                targets(
                    (
                        f"max by (group, topic) ({P}consumer_lag_seconds)",
                        "{{group}} {{topic}}",
                    )
                ),
            ),
            8,
            8,
        ),
        (
            timeseries(
                "Consumer lag: records behind",
                "Per consumer group and topic, records not yet committed (log end offset minus "
                "committed offset, summed over partitions).",
                "short",
                targets(
                    (
                        f"sum by (group, topic) (max by (group, topic, partition) "
                        f"({P}consumer_lag_records))",
                        "{{group}} {{topic}}",
                    )
                ),
            ),
            8,
            8,
        ),
        (
            timeseries(
                "Event-time lag p95 by status",
                "95th percentile of the wall clock at ingest minus the webhook timestamp, per "
                "status: Meta's delivery delay plus the monitor's backlog.",
                "s",
                targets((_quantile(0.95, "le, status"), "{{status}}")),
            ),
            8,
            8,
        ),
        (
            stat(
                "Newest event age",
                "Now minus the newest webhook event time any worker has seen (the 'no events' "
                "alert fires when this grows).",
                "s",
                targets((f"time() - max({P}last_event_timestamp_seconds)", "age")),
                red=900,
            ),
            8,
            6,
        ),
        (
            timeseries(
                "Statuses older than 5 minutes at ingest",
                "Share of status items processed more than 5 minutes after their event time "
                "(backlog or Meta's retries).",
                "percentunit",
                targets(
                    (
                        _ratio(
                            f'sum(rate({P}event_lag_seconds_bucket{{le="+Inf"}}[$__rate_interval]))'
                            f' - sum(rate({P}event_lag_seconds_bucket{{le="300.0"}}'
                            "[$__rate_interval]))",
                            f"sum(rate({P}event_lag_seconds_count[$__rate_interval]))",
                        ),
                        "older than 5 min",
                    )
                ),
            ),
            16,
            6,
        ),
        (row("Input quality"), 24, 1),
        (
            timeseries(
                "Dead letters",
                "Inputs written to the dead-letter topic per second (rejected: unusable; "
                "partial: some items of a body were bad).",
                "cps",
                targets(
                    (
                        f"sum by (stage, kind) (rate({P}dead_letters_total[$__rate_interval]))",
                        "{{stage}} {{kind}}",
                    )
                ),
            ),
            12,
            8,
        ),
        (
            timeseries(
                "Duplicates, replays and late statuses",
                "Meta's duplicate statuses dropped, inputs replayed after a restart (applied "
                "once), statuses too late for the minute buckets, late attributions, and "
                "partitions an agent read again because Faust's stream dropped a record.",
                "cps",
                targets(
                    (f"sum(rate({P}duplicate_statuses_total[$__rate_interval]))", "duplicates"),
                    (
                        f"sum by (stage) (rate({P}replayed_inputs_total[$__rate_interval]))",
                        "replayed {{stage}}",
                    ),
                    (f"sum(rate({P}late_statuses_total[$__rate_interval]))", "late"),
                    (
                        f"sum(rate({P}late_attributions_total[$__rate_interval]))",
                        "late attributions",
                    ),
                    (
                        f"sum by (agent) (rate({P}partition_reads_again_total[$__rate_interval]))",
                        "read again {{agent}}",
                    ),
                ),
            ),
            12,
            8,
        ),
        (
            timeseries(
                "Worker errors",
                "Batches an agent failed to flush (an error in the monitor: its batch is not "
                "committed and its counts may not reach alerting; the log has the traceback) "
                "and restarts of stage 1's raw consumer, per interval. Both should "
                "stay at 0.",
                "short",
                targets(
                    (
                        f"sum by (agent) (increase({P}flush_failures_total[$__rate_interval]))",
                        "flush failures {{agent}}",
                    ),
                    (
                        f"sum(increase({P}raw_consumer_restarts_total[$__rate_interval]))",
                        "raw consumer restarts",
                    ),
                ),
            ),
            12,
            8,
        ),
        (
            timeseries(
                "Expired state",
                "State keys removed by event-time retention per second.",
                "cps",
                targets(
                    (
                        f"sum by (kind) (rate({P}expired_state_keys_total[$__rate_interval]))",
                        "{{kind}}",
                    )
                ),
            ),
            12,
            8,
        ),
        (
            stat(
                "Label values folded into __other__",
                "Template names and sending numbers beyond the label caps over the selected "
                "range (raise DELIVERY_MONITOR_TEMPLATE_LABEL_CAP if this grows).",
                "short",
                targets(
                    (f"sum(increase({P}template_label_overflow_total[$__range]))", "templates"),
                    (f"sum(increase({P}sender_label_overflow_total[$__range]))", "senders"),
                ),
                red=1,
            ),
            12,
            8,
        ),
        (row("Alerting"), 24, 1),
        (
            timeseries(
                "Slack deliveries",
                "Slack webhook outcomes per second (sent, retried, rate_limited, "
                "failed_permanent, gave_up, dropped).",
                "cps",
                targets(
                    (
                        f"sum by (outcome) (rate({P}slack_deliveries_total[$__rate_interval]))",
                        "{{outcome}}",
                    )
                ),
            ),
            12,
            8,
        ),
        (
            timeseries(
                "Alert notifications by kind",
                "Notifications emitted by the stream detector per second, by kind.",
                "cps",
                targets(
                    (
                        f"sum by (kind) (rate({P}alerts_total[$__rate_interval]))",
                        "{{kind}}",
                    )
                ),
            ),
            12,
            8,
        ),
        (row("Workers and ingress"), 24, 1),
        (
            stat(
                "Workers",
                "Workers exporting metrics, by version.",
                "short",
                targets((f"count by (version) ({P}build_info)", "{{version}}")),
            ),
            6,
            6,
        ),
        (
            timeseries(
                "Scrape targets up",
                "Prometheus' up for the worker and ingress jobs (deploy/prometheus).",
                "short",
                targets(('sum by (job) (up{job=~"whatsapp-monitor-.*"})', "{{job}}")),
            ),
            6,
            6,
        ),
        (
            stat(
                "Ingress Kafka link",
                "1 while every ingress has a connected Kafka producer.",
                "short",
                targets((f"min({P}ingress_kafka_up)", "connected")),
            ),
            6,
            6,
        ),
        (
            timeseries(
                "Ingress produce latency p99",
                "From send to Kafka's ack of an accepted webhook POST.",
                "s",
                targets(
                    (
                        f"histogram_quantile(0.99, sum by (le) "
                        f"(rate({P}ingress_produce_latency_seconds_bucket[$__rate_interval])))",
                        "p99",
                    )
                ),
            ),
            6,
            6,
        ),
        (
            timeseries(
                "Ingress requests",
                "Webhook endpoint requests per second by method and status code.",
                "reqps",
                targets(
                    (
                        f"sum by (method, code) (rate({P}ingress_requests_total"
                        "[$__rate_interval]))",
                        "{{method}} {{code}}",
                    )
                ),
            ),
            12,
            8,
        ),
        (
            timeseries(
                "Ingress rejections",
                "Webhook requests refused per second, by reason (bad signature, too large, "
                "Kafka unavailable, ...).",
                "reqps",
                targets(
                    (
                        f"sum by (reason) (rate({P}ingress_rejections_total[$__rate_interval]))",
                        "{{reason}}",
                    )
                ),
            ),
            12,
            8,
        ),
    ]
    return dashboard(
        "wdm-pipeline-health",
        "WhatsApp delivery monitor: pipeline health",
        "Throughput, Kafka consumer lag, event-time lag, dead letters, duplicates, state "
        "expiry, Slack delivery and the webhook ingress.",
        layout(items),
        [datasource_variable()],
    )


DASHBOARDS = {
    "delivery-overview.json": delivery_overview,
    "pipeline-health.json": pipeline_health,
}


def render() -> dict[str, str]:
    """File name -> JSON text, exactly as committed."""
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def iter_queries(board: Panel) -> Iterator[tuple[str, str, bool]]:
    """(panel title, PromQL, instant) of every panel target of a dashboard's JSON."""
    for panel in board["panels"]:
        for t in panel.get("targets", []):
            yield panel["title"], t["expr"], bool(t.get("instant"))


def iter_variable_queries(board: Panel) -> Iterator[tuple[str, str]]:
    """(variable name, query) of every query variable."""
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            yield variable["name"], variable["query"]["query"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--check", action="store_true", help="fail if the JSON is out of date")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = HERE / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(
            f"out of date: {', '.join(stale)}; run python dashboards/generate.py", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
