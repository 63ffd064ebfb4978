"""The Grafana dashboards, their provisioning and the Prometheus/Alertmanager examples, checked
without Grafana or Prometheus (the queries themselves run in tests/integration/test_prometheus.py).
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from streams.ingress import IngressMetrics
from streams.lag import LagReport, PartitionLag
from streams.metrics import MonitorMetrics, StateSnapshot
from streams.stages.messages import MessageStats

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "dashboards"
DEPLOY = REPO / "deploy"
RANGE = re.compile(r"\[([^\]]+)\]")
NAME = re.compile(r"\b(whatsapp_monitor_[a-zA-Z0-9_]+|up|ALERTS)\b")


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dashboards_generate", DASHBOARDS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generator = load_generator()


def boards() -> Iterator[tuple[str, dict[str, Any]]]:
    for name in generator.DASHBOARDS:
        yield name, json.loads((DASHBOARDS / name).read_text())


def rule_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def exposition_names() -> set[str]:
    """Sample names a worker and an ingress export (fed with one of everything)."""
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    metrics.watch_state(lambda: StateSnapshot(1, 1, 1, {("t", "a"): (2, 1), ("s", "b"): (2, 1)}))
    metrics.precreate(["whatsapp.webhooks.raw"])
    lag = LagReport(1.0, (PartitionLag("app", "app-messages", 0, 5, 2.5),))
    metrics.watch_lag(lambda: lag)
    stats = MessageStats()
    stats.counted["c", "BR", "failed.opt_out"] = 1
    metrics.observe_messages(stats)
    IngressMetrics(registry)
    return {s.name for family in registry.collect() for s in family.samples}


def test_committed_json_is_the_generators_output() -> None:
    """Edit dashboards/generate.py and run it; never edit the JSON by hand."""
    for name, text in generator.render().items():
        assert (DASHBOARDS / name).read_text() == text, (
            f"run: python dashboards/generate.py ({name})"
        )
    assert generator.main(["--check"]) == 0


def test_dashboards_use_the_current_schema_and_a_sound_grid() -> None:
    uids = set()
    for name, board in boards():
        assert board["schemaVersion"] >= 39, name
        assert board["uid"] not in uids and len(board["uid"]) <= 40
        uids.add(board["uid"])
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name
        cells: set[tuple[int, int]] = set()
        for panel in board["panels"]:
            g = panel["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24, (name, panel["title"])
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{name}: {panel['title']} overlaps"
                    cells.add((x, y))


def test_every_panel_uses_the_datasource_variable_a_unit_and_a_description() -> None:
    """What grafana's dashboard-linter asks (datasource, units, descriptions)."""
    for name, board in boards():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            where = f"{name}: {panel['title']}"
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            assert panel["description"], where
            assert panel["fieldConfig"]["defaults"]["unit"], where
            assert panel["targets"], where
            for t in panel["targets"]:
                assert t["datasource"]["uid"] == "${datasource}", where
        for v in variables.values():
            if v["type"] == "query":
                assert v["datasource"]["uid"] == "${datasource}"
                assert v["refresh"] == 2  # on time range change
                assert re.fullmatch(r"label_values\(\w+, \w+\)", v["query"]["query"])


def test_delivery_overview_has_the_sender_template_campaign_and_error_class_variables() -> None:
    board = dict(boards())["delivery-overview.json"]
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["datasource", "sender", "template", "campaign", "error_class"]
    exprs = " ".join(e for _, e, _ in generator.iter_queries(board))
    for variable in ("$sender", "$template", "$campaign", "$error_class"):
        assert variable in exprs
    titles = {p["title"] for p in board["panels"]}
    for expected in (
        "Delivery funnel",
        "Failure ratio by error class",
        "131049: per-user limit vs US marketing pause",
        "Top templates by limit errors",
        "Top campaigns by limit errors",
        "Failure ratio by recipient country",
        "Recipients in 131049 cool-down",
        "Recipients opted out",
        "Alerts fired",
    ):
        assert expected in titles


def test_rate_windows_are_grafana_intervals_never_hard_coded() -> None:
    for name, board in boards():
        for title, expr, instant in generator.iter_queries(board):
            for window in RANGE.findall(expr):
                assert window in ("$__rate_interval", "$__range"), (name, title, window)
                if window == "$__range":  # a total over the dashboard's range
                    assert instant, (name, title)


def test_every_metric_in_dashboards_and_rules_is_exported() -> None:
    """The unit-level twin of the integration check against a real worker's exposition."""
    exported = exposition_names() | {"up", "ALERTS"}
    used = set()
    for _, board in boards():
        for _, expr, _ in generator.iter_queries(board):
            used |= set(NAME.findall(expr))
        for _, query in generator.iter_variable_queries(board):
            used |= set(NAME.findall(query))
    for expr in rule_exprs():
        used |= set(NAME.findall(expr))
    assert used - exported == set()
    assert len(used) > 25


def test_provisioning_files_point_grafana_at_the_dashboards_and_prometheus() -> None:
    dashboards = yaml.safe_load((DASHBOARDS / "provisioning" / "dashboards.yml").read_text())
    assert dashboards["apiVersion"] == 1
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    sources = yaml.safe_load((DASHBOARDS / "provisioning" / "datasources.yml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["jsonData"]["timeInterval"]  # so $__rate_interval is at least 4 scrapes


def test_prometheus_config_scrapes_the_jobs_the_rules_and_dashboards_name() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == {"whatsapp-monitor-worker", "whatsapp-monitor-ingress"}
    assert config["rule_files"] == ["rules.yml"]
    named = set(re.findall(r'job="([^"]+)"', " ".join(rule_exprs())))
    assert named <= jobs
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    for rule in rules["groups"][0]["rules"]:
        assert "for" in rule and "keep_firing_for" in rule, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description", "dashboard"} <= set(rule["annotations"])


@pytest.mark.parametrize("receiver", ["whatsapp-slack", "whatsapp-slack-critical"])
def test_alertmanager_example_routes_to_slack_with_resolves(receiver: str) -> None:
    config = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    routed = {config["route"]["receiver"]} | {r["receiver"] for r in config["route"]["routes"]}
    assert routed <= set(receivers)
    (slack,) = receivers[receiver]["slack_configs"]
    assert slack["send_resolved"] is True
    assert "api_url" not in slack and slack["api_url_file"]  # the URL is a secret
    assert "{{" in slack["text"] and "{{" in slack["title"]
