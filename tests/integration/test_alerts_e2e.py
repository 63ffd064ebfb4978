"""Spike alerts end to end: real broker, real worker, a local server that answers like Slack."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import alert_campaign

from streams.asyncutil import run_sync
from streams.settings import Settings
from streams.topics import ensure_topics, source_topics
from testkit.kafka import consume_all, produce
from testkit.slack import FakeSlack
from testkit.worker import WorkerProcess, unique_env, wait_until

pytestmark = [pytest.mark.kafka]


@pytest.fixture
def slack() -> Iterator[Callable[..., FakeSlack]]:
    servers: list[FakeSlack] = []

    def start(script: list[tuple[int, str, dict[str, str]]] | None = None) -> FakeSlack:
        server = FakeSlack(script).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def text_of(post: dict[str, object]) -> str:
    return json.dumps(post)


def run_spike(
    kafka_bootstrap: str,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
    fake: FakeSlack,
) -> tuple[WorkerProcess, Settings]:
    env = unique_env(
        kafka_bootstrap,
        tmp_path / "state",
        DELIVERY_MONITOR_STORE="memory://",
        DELIVERY_MONITOR_SLACK_WEBHOOK_URL=fake.url,
        DELIVERY_MONITOR_GRAFANA_URL="http://grafana.example.test",
    )
    settings = Settings.from_env(env)
    run_sync(ensure_topics(kafka_bootstrap, source_topics(settings), 1))
    worker = start_worker(env)
    produce(kafka_bootstrap, settings.topic_raw, alert_campaign().payloads)
    return worker, settings


def assert_one_incident(fake: FakeSlack, timeout_s: float = 120) -> None:
    def two_messages() -> bool:
        return len(fake.delivered()) >= 2

    wait_until(two_messages, timeout_s, "a firing and a resolve message at the fake Slack")
    time.sleep(3)  # nothing else may follow
    posts = fake.delivered()
    assert len(posts) == 2, [p.get("text") for p in posts]
    firing, resolved = posts
    assert "promo_spike" in text_of(firing)
    assert "131049" in text_of(firing) or "Per-user marketing limit" in text_of(firing)
    assert "Do not resend" in text_of(firing) or "24 h" in text_of(firing)
    assert "http://grafana.example.test" in text_of(firing)
    for other in ("promo_00", "promo_01", "promo_02", "promo_03", "promo_04"):
        assert other not in text_of(firing)
    assert "resolved" in text_of(resolved).lower()
    assert "promo_spike" in text_of(resolved)


def test_a_131049_spike_on_one_template_posts_one_firing_and_one_resolve(
    kafka_bootstrap: str,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
    slack: Callable[..., FakeSlack],
) -> None:
    fake = slack()
    worker, settings = run_spike(kafka_bootstrap, tmp_path, start_worker, fake)
    assert_one_incident(fake)
    alerts = consume_all(kafka_bootstrap, settings.topic_alerts)
    assert len(alerts) == 2  # written to the alerts topic before Slack was tried
    assert worker.metric("whatsapp_monitor_slack_deliveries_total", {"outcome": "sent"}) in (
        None,
        2.0,
    )


def test_slack_429_then_200_delivers_once_after_retry_after(
    kafka_bootstrap: str,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
    slack: Callable[..., FakeSlack],
) -> None:
    fake = slack([(429, "rate_limited", {"Retry-After": "2"})])
    run_spike(kafka_bootstrap, tmp_path, start_worker, fake)
    assert_one_incident(fake)
    first_try, first_ok = fake.posts[0][0], fake.posts[1][0]
    assert fake.posts[0][2] == 429 and first_ok - first_try >= 1.9


def test_slack_500_three_times_then_200_delivers_once(
    kafka_bootstrap: str,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
    slack: Callable[..., FakeSlack],
) -> None:
    fake = slack([(500, "rollup_error", {})] * 3)
    run_spike(kafka_bootstrap, tmp_path, start_worker, fake)
    assert_one_incident(fake)
    assert [status for _, _, status in fake.posts[:4]] == [500, 500, 500, 200]


def test_worker_killed_between_writing_and_sending_delivers_after_restart(
    kafka_bootstrap: str,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
    slack: Callable[..., FakeSlack],
) -> None:
    """The alert is in the alerts topic before Slack is tried: a SIGKILL while the POST hangs
    loses nothing; the restarted worker delivers it (at least once)."""
    fake = slack([(500, "hang", {"X-Test-Delay": "60"})])
    env = unique_env(
        kafka_bootstrap,
        tmp_path / "state",
        DELIVERY_MONITOR_STORE="rocksdb://",
        DELIVERY_MONITOR_SLACK_WEBHOOK_URL=fake.url,
    )
    settings = Settings.from_env(env)
    run_sync(ensure_topics(kafka_bootstrap, source_topics(settings), 1))
    worker = start_worker(env)
    produce(kafka_bootstrap, settings.topic_raw, alert_campaign().payloads)
    wait_until(lambda: len(fake.posts) >= 1, 120, "the first (hanging) POST")
    assert worker.kill() == -9
    assert "promo_spike" in text_of(fake.posts[0][1])
    assert len(consume_all(kafka_bootstrap, settings.topic_alerts)) >= 1
    start_worker(env)
    wait_until(
        lambda: any("promo_spike" in text_of(p) for p in fake.delivered()),
        120,
        "the firing message delivered after the restart",
    )
    firing = [p for p in fake.delivered() if "resolved" not in text_of(p).lower()]
    assert len(firing) == 1
