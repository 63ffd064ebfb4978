"""Rules, dashboards and the exposition against Debian's real promtool and Prometheus.

- ``promtool check rules|config`` and ``promtool test rules`` on deploy/prometheus.
- A real Prometheus (1 s scrapes) scraping a real worker and a real webhook ingress, fed with a
  generated campaign (131049 failures to US and non-US numbers, opt-outs, duplicates, garbage)
  on the real broker: every dashboard panel query and every variable query returns data, every
  metric name the dashboards and rules use is in the exposition, every rule evaluates cleanly,
  and the exposition passes ``promtool check metrics``.

The binaries come from Debian's ``prometheus`` package (``.ci/run`` installs it). A missing
binary fails these tests; ``DELIVERY_MONITOR_SKIP_PROMETHEUS=1`` skips them instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.app import internal_topic_names
from streams.asyncutil import run_sync
from streams.settings import Settings
from streams.simulate import Campaign, CampaignSpec, generate
from streams.topics import ensure_topics, source_topics
from testkit.kafka import produce, produce_keyed, wait_drained
from testkit.worker import REPO, WorkerProcess, free_port, unique_env, wait_until

RULES_DIR = REPO / "deploy" / "prometheus"
NAME = re.compile(r"\b(whatsapp_monitor_[a-zA-Z0-9_]+|up|ALERTS)\b")
VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
GRAFANA_INTERVALS = {"__rate_interval": "30s", "__range": "10m", "__interval": "5s"}


def binary(name: str) -> str:
    """Path of a Prometheus binary; fails (or skips when asked to) when it is missing."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else "")
    if path:
        return path
    if os.environ.get("DELIVERY_MONITOR_SKIP_PROMETHEUS") == "1":
        pytest.skip(f"{name} not installed and DELIVERY_MONITOR_SKIP_PROMETHEUS=1")
    pytest.fail(
        f"{name} not found: install Debian's prometheus package (apt-get install prometheus), "
        "or set DELIVERY_MONITOR_SKIP_PROMETHEUS=1 to skip these tests"
    )


def promtool(*args: str, stdin: bytes | None = None, cwd: Path = RULES_DIR) -> str:
    result = subprocess.run(
        [binary("promtool"), *args], input=stdin, capture_output=True, cwd=cwd, timeout=120
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "dashboards_generate", REPO / "dashboards" / "generate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generator = load_generator()


def dashboards() -> dict[str, dict[str, Any]]:
    return {n: json.loads((REPO / "dashboards" / n).read_text()) for n in generator.DASHBOARDS}


# -- promtool on the rules --------------------------------------------------------------------
def test_promtool_check_rules_and_config() -> None:
    """rules.yml and the example prometheus.yml (which loads it) are valid."""
    assert "SUCCESS: 12 rules found" in promtool("check", "rules", "rules.yml")
    assert "valid prometheus config" in promtool("check", "config", "prometheus.yml")


def test_promtool_rule_unit_tests_pass() -> None:
    """rules_test.yml: each alert not firing, pending, firing, held by keep_firing_for, resolved."""
    assert "SUCCESS" in promtool("test", "rules", "rules_test.yml")


# -- a real Prometheus scraping a real worker -------------------------------------------------
@dataclass
class Stack:
    worker: WorkerProcess
    ingress_url: str
    prometheus_url: str
    settings: Settings
    opted_out_min: int
    produced_raw: int

    def query(self, expr: str, instant: bool) -> dict[str, Any]:
        now = time.time()
        if instant:
            path, params = "/api/v1/query", {"query": expr, "time": f"{now:.3f}"}
        else:
            params = {"query": expr, "start": f"{now - 40:.3f}", "end": f"{now:.3f}", "step": "2"}
            path = "/api/v1/query_range"
        data = urllib.parse.urlencode(params).encode()
        try:
            with urllib.request.urlopen(self.prometheus_url + path, data=data, timeout=30) as resp:
                body: dict[str, Any] = json.loads(resp.read())
        except urllib.error.HTTPError as err:
            body = json.loads(err.read())
        return body

    def value(self, expr: str) -> float | None:
        result = self.query(expr, instant=True)["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.prometheus_url + path, timeout=30) as resp:
            return json.loads(resp.read())


class Process:
    """A subprocess in its own process group with its output in a log file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=REPO,
                start_new_session=True,
            )

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.proc.args[:3]} exited:\n{self.log.read_text()[-3000:]}")
        return True

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def http_ok(url: str, method: str = "GET", body: bytes | None = None) -> bool:
    try:
        request = urllib.request.Request(url, data=body, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=5) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def prometheus_config(worker_port: int, ingress_port: int) -> str:
    """The example config's jobs and rules, scraping every second (JSON is YAML)."""
    return json.dumps(
        {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(RULES_DIR / "rules.yml")],
            "scrape_configs": [
                {
                    "job_name": "whatsapp-monitor-worker",
                    "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}],
                },
                {
                    "job_name": "whatsapp-monitor-ingress",
                    "static_configs": [{"targets": [f"127.0.0.1:{ingress_port}"]}],
                },
            ],
        }
    )


def template_paused(name: str, ts: int) -> bytes:
    return json.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": "102290129340398",
                    "time": ts,
                    "changes": [
                        {
                            "field": "message_template_status_update",
                            "value": {
                                "event": "PAUSED",
                                "message_template_id": 1689556908129832,
                                "message_template_name": name,
                                "message_template_language": "en_US",
                                "reason": "LOW_QUALITY",
                            },
                        }
                    ],
                }
            ],
        }
    ).encode()


def preference_stop(phone: str, ts: int) -> bytes:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
        "contacts": [{"wa_id": phone}],
        "user_preferences": [
            {
                "wa_id": phone,
                "detail": "User requested to stop marketing messages",
                "category": "marketing_messages",
                "value": "stop",
                "timestamp": ts,
            }
        ],
    }
    entry = {"id": "102290129340398", "changes": [{"value": value, "field": "user_preferences"}]}
    return json.dumps({"object": "whatsapp_business_account", "entry": [entry]}).encode()


def feed(bootstrap: str, settings: Settings, campaign: Campaign, topics: list[str]) -> None:
    """Half of the send log before the webhooks, half after; wait until all is processed."""
    half = len(campaign.send_log) // 2
    produce_keyed(bootstrap, settings.topic_send_log, campaign.send_log[:half])
    produce(bootstrap, settings.topic_raw, campaign.payloads)
    produce_keyed(bootstrap, settings.topic_send_log, campaign.send_log[half:])
    wait_drained(bootstrap, settings.app_id, topics, 180)


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_bin = binary("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    ingress_port = free_port()
    env = unique_env(
        kafka_bootstrap,
        tmp / "state",
        DELIVERY_MONITOR_STORE="memory://",
        DELIVERY_MONITOR_INGRESS_PORT=str(ingress_port),
    )
    settings = Settings.from_env(env)
    run_sync(ensure_topics(kafka_bootstrap, source_topics(settings), 1))
    topics = [settings.topic_raw, settings.topic_send_log, *internal_topic_names(settings)]
    processes: list[Process] = []
    worker = WorkerProcess(env, tmp / "worker.log")
    try:
        worker.start()
        ingress = Process(
            [sys.executable, "-m", "streams.cli", "ingress", "--insecure-no-signature"],
            tmp / "ingress.log",
            env,
        )
        processes.append(ingress)
        ingress_url = f"http://127.0.0.1:{ingress_port}"
        wait_until(lambda: ingress.alive() and http_ok(ingress_url + "/metrics"), 60, "ingress")
        config = tmp / "prometheus.yml"
        config.write_text(prometheus_config(worker.port, ingress_port))
        prom_port = free_port()
        prometheus = Process(
            [
                prometheus_bin,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ],
            tmp / "prometheus.log",
        )
        processes.append(prometheus)
        prometheus_url = f"http://127.0.0.1:{prom_port}"
        wait_until(
            lambda: prometheus.alive() and http_ok(prometheus_url + "/-/ready"), 60, "prometheus"
        )

        now = int(time.time())
        # An older campaign with the whole lifecycle (reads, late send-log records), then a
        # recent one (no reads, so the last 5 minutes of event time still have sends) with
        # more failures: 131049 to US (pause) and other numbers (per-user limit), 131050.
        older = generate(CampaignSpec(messages=1_200, start=now - 3_000, duration=1_200), seed=31)
        recent = generate(
            CampaignSpec(
                messages=1_200, start=now - 660, duration=600, read_ratio=0.0, failure_ratio=0.25
            ),
            seed=32,
        )
        probe = Stack(worker, ingress_url, prometheus_url, settings, 0, 0)
        feed(kafka_bootstrap, settings, older, topics)
        # a counter series first scraped at its final value has no increase(): the recent
        # campaign's counts must come after a scrape of the older one's
        drained_at = time.time()
        wait_until(
            lambda: (probe.value('timestamp(up{job="whatsapp-monitor-worker"})') or 0) > drained_at,
            60,
            "a scrape of the older campaign's counts",
        )
        feed(kafka_bootstrap, settings, recent, topics)
        # Through the ingress, as Meta would POST them: a template paused, a user opting out.
        posts = [template_paused("promo_04", now - 60), preference_stop("5511987654321", now - 30)]
        for body in posts:
            assert http_ok(ingress_url + "/webhook", "POST", body)
        wait_drained(kafka_bootstrap, settings.app_id, topics, 60)
        produced = len(older.payloads) + len(recent.payloads) + len(posts)
        opted_out = {
            m.recipient
            for m in older.messages + recent.messages
            for status, _, code in m.statuses
            if code == 131050
        }
        s = Stack(worker, ingress_url, prometheus_url, settings, len(opted_out) + 1, produced)
        consumed = f'whatsapp_monitor_records_consumed_total{{topic="{settings.topic_raw}"}}'
        wait_until(lambda: s.value(consumed) == produced, 60, "Prometheus to scrape the totals")
        wait_until(
            lambda: (s.value('count_over_time(up{job="whatsapp-monitor-worker"}[1m])') or 0) >= 3,
            60,
            "three scrapes",
        )
        yield s
    finally:
        for process in reversed(processes):
            process.stop()
        worker.stop()


def substitute(expr: str, values: dict[str, str]) -> str:
    """What Grafana does to a query before it sends it: variables and $__ intervals."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in GRAFANA_INTERVALS:
            return GRAFANA_INTERVALS[name]
        return values[name]

    return VARIABLE.sub(replace, expr)


def has_data(body: dict[str, Any]) -> bool:
    if body.get("status") != "success":
        return False
    result = body["data"]["result"]
    if body["data"]["resultType"] == "matrix":
        return any(series["values"] for series in result)
    return bool(result)


def variable_values(stack: Stack, board: dict[str, Any]) -> dict[str, list[str]]:
    """Each query variable's values, resolved through Prometheus' label-values API."""
    out = {}
    for name, query in generator.iter_variable_queries(board):
        match = re.fullmatch(r"label_values\((\w+), (\w+)\)", query)
        assert match, f"unsupported variable query {query!r}"
        metric, label = match.groups()
        selector = urllib.parse.urlencode({"match[]": metric})
        body = stack.get(f"/api/v1/label/{label}/values?{selector}")
        assert body["status"] == "success"
        out[name] = body["data"]
    return out


@pytest.mark.kafka
def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    """Every panel query of both dashboards, with every variable at All (.*) and then at a real
    value, and every variable query, returns data from Prometheus."""
    failures = []
    checked = 0
    for board_name, board in dashboards().items():
        values = variable_values(stack, board)
        for name, found in values.items():
            if not found:
                failures.append(f"{board_name}: variable ${name} has no values")
        everything = dict.fromkeys(values, ".*")
        preferred = {"error_class": "per_user_marketing_limit"}
        real = {
            name: preferred.get(name)
            if preferred.get(name) in found
            else next(v for v in sorted(found) if v not in ("__other__", "unknown"))
            for name, found in values.items()
        }
        for choice in (everything, real):
            for title, expr, instant in generator.iter_queries(board):
                query = substitute(expr, choice)
                body = stack.query(query, instant)
                checked += 1
                if not has_data(body):
                    failures.append(f"{board_name}: {title} with {choice}: {query}\n -> {body}")
    assert not failures, "\n".join(failures)
    assert checked > 100


@pytest.mark.kafka
def test_every_metric_in_dashboards_and_rules_is_in_the_exposition(stack: Stack) -> None:
    exposition = stack.worker.get("/metrics").decode()
    exposition += urllib.request.urlopen(stack.ingress_url + "/metrics", timeout=10).read().decode()
    exported = {
        sample.name
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }
    used = set()
    for board in dashboards().values():
        for _, expr, _ in generator.iter_queries(board):
            used |= set(NAME.findall(expr))
        for _, query in generator.iter_variable_queries(board):
            used |= set(NAME.findall(query))
    rules = (RULES_DIR / "rules.yml").read_text()
    used |= set(NAME.findall(rules))
    assert used - exported - {"up", "ALERTS"} == set()


@pytest.mark.kafka
def test_exposition_passes_promtool_check_metrics(stack: Stack) -> None:
    """The worker's and the ingress's /metrics, after real traffic, lint clean."""
    for text in (
        stack.worker.get("/metrics"),
        urllib.request.urlopen(stack.ingress_url + "/metrics", timeout=10).read(),
    ):
        assert b"whatsapp_monitor_" in text
        output = promtool("check", "metrics", stdin=text)
        assert output.strip() == "", output


@pytest.mark.kafka
def test_rules_evaluate_cleanly_on_real_data(stack: Stack) -> None:
    """Prometheus loaded every rule of rules.yml and evaluates each without error."""
    body = stack.get("/api/v1/rules")
    rules = [r for group in body["data"]["groups"] for r in group["rules"]]
    assert len(rules) == 12

    def healthy() -> bool:
        body = stack.get("/api/v1/rules")
        rules = [r for group in body["data"]["groups"] for r in group["rules"]]
        return all(r["health"] == "ok" for r in rules)

    wait_until(healthy, 10, "every rule evaluated once")
    for rule in stack.get("/api/v1/rules")["data"]["groups"][0]["rules"]:
        assert rule["health"] == "ok" and not rule.get("lastError"), rule


@pytest.mark.kafka
def test_scrape_time_gauges_on_a_real_worker(stack: Stack) -> None:
    """Cool-downs, opt-outs, the paused template and the 5-minute ratios, as Prometheus sees
    them after the campaign and the two webhooks posted through the ingress."""
    assert (stack.value("sum(whatsapp_monitor_recipients_in_cooldown)") or 0) > 0
    assert stack.value("sum(whatsapp_monitor_recipients_opted_out)") == stack.opted_out_min
    assert stack.value("sum(whatsapp_monitor_templates_paused)") == 1
    ratios = stack.query("whatsapp_monitor_template_limit_error_ratio", instant=True)
    templates = {r["metric"]["template"] for r in ratios["data"]["result"]}
    assert {f"promo_{i:02d}" for i in range(12)} <= templates
    limit = stack.value(
        'sum(whatsapp_monitor_failures_total{error_code="131049", '
        'error_class=~"per_user_marketing_limit|us_marketing_pause"})'
    )
    assert limit and limit > 10
    us_pause = stack.value(
        'sum(whatsapp_monitor_sender_failures_total{error_class="us_marketing_pause"})'
    )
    assert us_pause and us_pause > 0
    lag_count = stack.value("sum(whatsapp_monitor_event_lag_seconds_count)")
    assert lag_count and lag_count > 0
