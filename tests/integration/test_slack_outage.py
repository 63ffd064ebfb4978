"""A Slack outage loses no alert, posts none twice, keeps each incident's order and does not hold
the stream.

Simulated time (no Kafka): the notifier on a fake clock against a real local HTTP server that
answers 500 or hangs while the fake clock is inside a 5-minute or 2-hour outage, then 200. The
notifier's backoff sleeps advance the fake clock, so hours pass in a few seconds.

Real time (Kafka, worker subprocesses): Slack down (500s and hangs) while a worker processes a
campaign with a 131049 spike and, with both alerts pending, another hour of traffic; the FIRING
and RESOLVED arrive after Slack recovers (the throughput cost of an outage is measured by
``python -m bench.slack_outage``, not asserted on wall-clock times here). A worker
stopped during an outage exits cleanly (faust does not wait for the pending alert) and its
restart delivers the alert; a worker joining during an outage neither stalls the rebalance nor
makes the alerts arrive twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from support import FakeClock, alert_campaign

from streams.app import internal_topic_names
from streams.asyncutil import run_sync
from streams.core.alerts import (
    AlertBook,
    Evaluation,
    Evidence,
    Finding,
    Notification,
    NotificationKind,
    Scope,
    Verdict,
)
from streams.core.catalog import ErrorClass
from streams.metrics import MonitorMetrics
from streams.settings import Secret, Settings
from streams.simulate import spike_campaign
from streams.slack import RetryPolicy, SlackNotifier, SlackOutcome
from streams.topics import ensure_topics, source_topics
from testkit.kafka import produce, wait_drained
from testkit.slack import OutageSlack
from testkit.worker import WorkerProcess, free_port, get_json, unique_env, wait_until

T0 = 1_751_000_000
GRAFANA = "https://grafana.example.com"
SECRET_PATH = "/services/T0000/B0000/SECRETTOKENxyz"
START = 1000.0  # the fake clock's start
#: A real (wall-clock) request timeout: a hang costs this much real time, SIMULATED_HANG_S of
#: simulated time.
REQUEST_TIMEOUT = 0.3
SIMULATED_HANG_S = 10.0
P = "whatsapp_monitor_"


@dataclass
class SimulatedSlack:
    """Answers like a Slack webhook: while the fake clock is before ``outage_ends``, every
    ``hang_every``-th request hangs (costing SIMULATED_HANG_S of fake time, until the client
    times out) and the others get 500; afterwards 200."""

    clock: FakeClock
    outage_ends: float = START
    hang_every: int = 2
    requests: list[tuple[float, int]] = field(default_factory=list)  # (fake time, status; 0 hang)
    delivered: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    probe: Callable[[], Any] | None = None  # called on every request, results kept in `seen`
    seen: list[Any] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    base: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        now = self.clock.now
        if self.probe is not None:
            self.seen.append(self.probe())
        if now < self.outage_ends:
            failed = sum(1 for _, status in self.requests if status != 200) + 1
            if failed % self.hang_every == 0:
                self.requests.append((now, 0))
                self.clock.now += SIMULATED_HANG_S
                await self.release.wait()  # the client gives up after REQUEST_TIMEOUT
                return web.Response(status=500, text="hang")
            self.requests.append((now, 500))
            return web.Response(status=500, text="service_unavailable")
        self.requests.append((now, 200))
        self.delivered.append((now, body))
        return web.Response(text="ok")

    def failed(self) -> int:
        return sum(1 for _, status in self.requests if status != 200)


@pytest.fixture
async def slack() -> AsyncIterator[SimulatedSlack]:
    fake = SimulatedSlack(FakeClock())
    app = web.Application()
    app.router.add_post("/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.base = f"http://{host}:{port}"
    yield fake
    fake.release.set()
    await runner.cleanup()


def finding(group: str, template: str, error_class: ErrorClass) -> Finding:
    return Finding(
        rule="spike",
        scope=Scope.for_template(template),
        group=group,
        verdict=Verdict.POSITIVE,
        evidence=Evidence(300, 1000, 0.3, 0.02, 1_440_000, 1e-40, 300),
        title=f"{error_class.value} spike",
        error_class=error_class,
    )


def two_incidents() -> list[Notification]:
    """FIRING a, FIRING b, RESOLVED a, RESOLVED b (two incidents, interleaved)."""
    a = finding(
        "spike:per_user_marketing_limit", "spring_sale", ErrorClass.PER_USER_MARKETING_LIMIT
    )
    b = finding("spike:opt_out", "winter_sale", ErrorClass.OPT_OUT)
    rules = frozenset({"spike"})
    book = AlertBook()
    out: list[Notification] = []
    for at, findings in ((T0, (a,)), (T0 + 60, (a, b)), (T0 + 120, (b,)), (T0 + 180, ())):
        (note,) = book.apply(Evaluation(at, rules, findings))
        out.append(note)
    kinds = [(n.incident, n.kind) for n in out]
    assert kinds == [
        (out[0].incident, NotificationKind.FIRING),
        (out[1].incident, NotificationKind.FIRING),
        (out[0].incident, NotificationKind.RESOLVED),
        (out[1].incident, NotificationKind.RESOLVED),
    ]
    return out


def make_notifier(
    slack: SimulatedSlack, outcomes: list[SlackOutcome], policy: RetryPolicy
) -> tuple[SlackNotifier, CollectorRegistry]:
    """A notifier on the fake clock, wired to the worker's metrics as the notifier agent does."""
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)

    def record(outcome: SlackOutcome) -> None:
        outcomes.append(outcome)
        metrics.slack_outcome(outcome)

    n = SlackNotifier(
        Secret(f"{slack.base}{SECRET_PATH}"),
        grafana_url=GRAFANA,
        policy=policy,
        on_outcome=record,
        clock=slack.clock,
        sleep=slack.clock.sleep,
        rng=random.Random(7),
    )
    metrics.watch_slack(n.backlog)

    def gauges() -> tuple[float | None, float | None]:
        return (
            registry.get_sample_value(P + "slack_pending_notifications"),
            registry.get_sample_value(P + "slack_oldest_pending_age_seconds"),
        )

    slack.probe = gauges
    return n, registry


async def submit_during_outage(
    n: SlackNotifier, clock: FakeClock, schedule: list[tuple[float, Notification]]
) -> list[asyncio.Future[SlackOutcome]]:
    """Submit each notification once the fake clock reaches its offset (as the alerts topic
    would hand them over while Slack is down)."""
    futures = []
    for offset, note in schedule:
        while clock.now < START + offset:
            await asyncio.sleep(0.001)
        futures.append(await n.submit(note))
    return futures


def text(body: dict[str, Any]) -> str:
    return str(body["text"])


@pytest.mark.parametrize(
    ("outage_s", "hang_every"),
    [(300.0, 2), (7200.0, 20)],
    ids=["5-minutes", "2-hours"],
)
async def test_an_outage_of_500s_and_hangs_delivers_every_alert_once_in_order_after_it(
    slack: SimulatedSlack,
    caplog: pytest.LogCaptureFixture,
    outage_s: float,
    hang_every: int,
) -> None:
    caplog.set_level(logging.DEBUG)
    slack.outage_ends = START + outage_s
    slack.hang_every = hang_every
    policy = RetryPolicy(request_timeout=REQUEST_TIMEOUT)  # defaults: 60 s cap, 24 h horizon
    outcomes: list[SlackOutcome] = []
    notes = two_incidents()
    n, registry = make_notifier(slack, outcomes, policy)
    async with n:
        schedule = [(0.0, notes[0]), (60.0, notes[1]), (120.0, notes[2]), (180.0, notes[3])]
        futures = await submit_during_outage(n, slack.clock, schedule)
        # the alerts topic hands the first one over again (a replay after a rebalance)
        assert await n.submit(notes[0]) is futures[0]
        results = await asyncio.wait_for(asyncio.gather(*futures), 60)

    assert results == [SlackOutcome.SENT] * 4
    # every notification exactly once, all after the outage, in the topic's order
    posted = [text(body) for _, body in slack.delivered]
    assert len(posted) == 4 and len(set(posted)) == 4
    assert [p.split("]")[0] for p in posted] == ["[FIRING", "[FIRING", "[RESOLVED", "[RESOLVED"]
    assert "spring_sale" in posted[0] and "spring_sale" in posted[2]
    assert "winter_sale" in posted[1] and "winter_sale" in posted[3]
    first_ok = slack.delivered[0][0]
    assert first_ok >= slack.outage_ends
    # retried all along, never more than the backoff cap apart: the recovery is noticed within
    # one cap (plus a hang) of the end of the outage
    assert first_ok <= slack.outage_ends + policy.max_backoff + SIMULATED_HANG_S
    assert max(slack.clock.sleeps) <= policy.max_backoff
    failed = slack.failed()
    assert failed >= outage_s / (policy.max_backoff + SIMULATED_HANG_S)
    assert failed <= outage_s / (policy.max_backoff / 2) + 8
    assert outcomes.count(SlackOutcome.RETRIED) == failed
    assert outcomes.count(SlackOutcome.SENT) == 4
    assert SlackOutcome.GAVE_UP not in outcomes and not n.failures
    # the gauges: four pending at the first delivery, the oldest waiting since before the outage
    pending, oldest = slack.seen[slack.requests.index((first_ok, 200))]
    assert pending == 4 and oldest is not None and oldest >= outage_s
    assert max(p for p, _ in slack.seen if p is not None) == 4
    assert registry.get_sample_value(P + "slack_pending_notifications") == 0
    assert registry.get_sample_value(P + "slack_oldest_pending_age_seconds") == 0
    assert n.backlog() == (0, 0.0)
    assert "SECRETTOKEN" not in caplog.text


async def test_an_outage_longer_than_the_horizon_gives_up_counts_and_logs_it(
    slack: SimulatedSlack, caplog: pytest.LogCaptureFixture
) -> None:
    """The horizon is configurable: with 1 h, a 2-hour outage gives everything up after about
    1 h (every notification keeps its FIFO turn), counted as gave_up and logged."""
    caplog.set_level(logging.INFO)
    slack.outage_ends = START + 7200.0
    slack.hang_every = 20
    policy = RetryPolicy(request_timeout=REQUEST_TIMEOUT, give_up_after=3600.0)
    outcomes: list[SlackOutcome] = []
    notes = two_incidents()
    n, _ = make_notifier(slack, outcomes, policy)
    async with n:
        futures = [await n.submit(note) for note in notes]
        results = await asyncio.wait_for(asyncio.gather(*futures), 60)
    assert results == [SlackOutcome.GAVE_UP] * 4
    assert outcomes.count(SlackOutcome.GAVE_UP) == 4 and SlackOutcome.SENT not in outcomes
    assert [f.notification_id for f in n.failures] == [note.id for note in notes]
    assert all(START + 3600 - 120 <= f.at <= START + 3600 + 60 for f in n.failures)
    assert not slack.delivered
    assert caplog.text.count("given up after") == 4
    assert "SECRETTOKEN" not in caplog.text


def test_the_default_horizon_outlasts_a_day_and_the_settings_reach_the_policy() -> None:
    assert RetryPolicy().give_up_after >= 24 * 3600
    assert RetryPolicy().max_backoff == 60
    settings = Settings.from_env(
        {
            "DELIVERY_MONITOR_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/X",
            "DELIVERY_MONITOR_SLACK_MAX_BACKOFF": "30",
            "DELIVERY_MONITOR_SLACK_GIVE_UP_AFTER": "172800",
            "DELIVERY_MONITOR_SLACK_REQUEST_TIMEOUT": "5",
        }
    )
    n = SlackNotifier.from_settings(settings)
    assert n is not None
    assert (n.policy.max_backoff, n.policy.give_up_after, n.policy.request_timeout) == (
        30.0,
        172800.0,
        5.0,
    )
    assert Settings.from_env({}).slack_give_up_after_s == 24 * 3600


# --- a real worker on the real broker -------------------------------------------------------

#: A campaign with one 131049 spike (FIRING, then RESOLVED): large enough that draining it takes
#: a while, so the outage overlaps the processing.
CAMPAIGN_PER_MINUTE = 100
CAMPAIGN_START = 1_767_225_600  # spike_campaign's default start


@pytest.fixture
def outage_slack() -> Iterator[Callable[[], OutageSlack]]:
    servers: list[OutageSlack] = []

    def start() -> OutageSlack:
        server = OutageSlack(hang_s=30.0).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def worker_env(bootstrap: str, state: Path, slack: OutageSlack, store: str) -> dict[str, str]:
    env = unique_env(
        bootstrap,
        state,
        DELIVERY_MONITOR_STORE=store,
        DELIVERY_MONITOR_SLACK_WEBHOOK_URL=slack.url,
        DELIVERY_MONITOR_GRAFANA_URL="http://grafana.example.test",
        # notice a recovered Slack within seconds, not the production minute
        DELIVERY_MONITOR_SLACK_REQUEST_TIMEOUT="2",
        DELIVERY_MONITOR_SLACK_MAX_BACKOFF="3",
    )
    settings = Settings.from_env(env)
    run_sync(ensure_topics(bootstrap, source_topics(settings), 1))
    return env


def assert_firing_then_resolved_once(slack: OutageSlack) -> None:
    wait_until(lambda: len(slack.delivered()) >= 2, 120, "the FIRING and the RESOLVED")
    time.sleep(3)  # nothing else may follow
    posted = [str(p["text"]) for p in slack.delivered()]
    assert len(posted) == 2, posted
    firing, resolved = posted
    assert firing.startswith("[FIRING]") and "promo_spike" in firing
    assert resolved.startswith("[RESOLVED]") and "promo_spike" in resolved


@pytest.mark.kafka
@pytest.mark.slow
def test_a_slack_outage_delays_the_alerts_not_the_stream(
    kafka_bootstrap: str,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
    outage_slack: Callable[[], OutageSlack],
) -> None:
    """The stream drains a campaign, and then another hour of traffic, while Slack refuses or
    hangs on every alert: pending alerts never hold the pipeline. How much an outage costs the
    stream's throughput is measured, not asserted, by ``python -m bench.slack_outage``."""
    campaign = spike_campaign(per_minute=CAMPAIGN_PER_MINUTE)
    down = outage_slack()
    down.down()
    env = worker_env(kafka_bootstrap, tmp_path / "outage", down, "memory://")
    settings = Settings.from_env(env)
    topics = [settings.topic_raw, *internal_topic_names(settings)]
    worker = start_worker(env)
    produce(kafka_bootstrap, settings.topic_raw, campaign.payloads)
    wait_drained(kafka_bootstrap, settings.app_id, topics, 300, "(the campaign)")
    # the alert fires once alerting's clock passes the spike (it waits for the unused send
    # log to be quiet for DELIVERY_MONITOR_ALERT_IDLE_SECONDS at startup), and Slack refuses it
    wait_until(lambda: down.failed() >= 1, 90, "Slack refusing the FIRING")
    pending = P + "slack_pending_notifications"
    wait_until(lambda: worker.metric(pending) == 2, 60, "FIRING and RESOLVED pending")
    # with both alerts stuck, the stream goes on: another hour of traffic without a spike, a day
    # later (some of its recipients had a 131049 in the campaign: sooner, they are a resend storm)
    consumed = P + "records_consumed_total"
    before = worker.metric(consumed, {"topic": settings.topic_raw}) or 0
    later = spike_campaign(seed=5, spike_ratio=0.01, start=CAMPAIGN_START + 25 * 3600)
    produce(kafka_bootstrap, settings.topic_raw, later.payloads)
    wait_drained(kafka_bootstrap, settings.app_id, topics, 300, "(a day later, Slack down)")
    assert worker.metric(consumed, {"topic": settings.topic_raw}) == before + len(later.payloads)
    assert down.is_down() and not down.delivered()
    assert worker.metric(pending) == 2
    first_failure = down.posts[0][0]
    wait_until(lambda: time.monotonic() - first_failure >= 20, 60, "a 20 s outage at least")
    assert (worker.metric(P + "slack_oldest_pending_age_seconds") or 0) >= 20
    down.recover()
    assert_firing_then_resolved_once(down)
    outcome = P + "slack_deliveries_total"
    assert worker.metric(outcome, {"outcome": "sent"}) == 2
    assert (worker.metric(outcome, {"outcome": "retried"}) or 0) >= down.failed()
    assert worker.metric(outcome, {"outcome": "gave_up"}) == 0
    assert worker.metric(pending) == 0
    worker.stop()


@pytest.mark.kafka
def test_a_worker_stopped_during_an_outage_exits_cleanly_and_its_restart_delivers(
    kafka_bootstrap: str,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
    outage_slack: Callable[[], OutageSlack],
) -> None:
    """faust waits at shutdown (and at every rebalance) for the messages it tracks: a pending
    alert must not hold the worker until the outage ends or it is killed."""
    slack = outage_slack()
    slack.down()
    env = worker_env(kafka_bootstrap, tmp_path / "state", slack, "rocksdb://")
    settings = Settings.from_env(env)
    worker = start_worker(env)
    produce(kafka_bootstrap, settings.topic_raw, alert_campaign().payloads)
    pending = P + "slack_pending_notifications"
    wait_until(lambda: worker.metric(pending) == 2, 120, "FIRING and RESOLVED pending")
    wait_until(lambda: slack.failed() >= 2, 60, "two failed POSTs")
    assert worker.stop(timeout_s=60) == 0  # SIGTERM: a clean exit, not a SIGKILL after 60 s
    slack.recover()
    start_worker(env)
    assert_firing_then_resolved_once(slack)


@pytest.mark.kafka
@pytest.mark.slow
def test_a_worker_joining_during_an_outage_neither_stalls_the_group_nor_doubles_the_alerts(
    kafka_bootstrap: str,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
    outage_slack: Callable[[], OutageSlack],
) -> None:
    """A rebalance while alerts wait for Slack: faust does not wait for them, so the group
    rebalances and drains while Slack is still down. Whichever worker owns the alerts afterwards
    posts them once: the old owner matches the replayed notifications to its pending deliveries,
    or drops them when the new owner is the other worker."""
    slack = outage_slack()
    slack.down()
    env = worker_env(kafka_bootstrap, tmp_path / "a", slack, "rocksdb://")
    settings = Settings.from_env(env)
    first = start_worker(env)
    produce(kafka_bootstrap, settings.topic_raw, alert_campaign().payloads)
    pending = P + "slack_pending_notifications"
    wait_until(lambda: first.metric(pending) == 2, 120, "FIRING and RESOLVED pending")
    second = start_worker(
        {
            **env,
            "DELIVERY_MONITOR_DATA_DIR": str(tmp_path / "b"),
            "DELIVERY_MONITOR_WEB_PORT": str(free_port()),
        }
    )

    def alerts_owner() -> WorkerProcess | None:
        owners = []
        for worker in (first, second):
            _, health = get_json(f"{worker.base_url}/v1/health")
            assert isinstance(health, dict)
            if health["assigned"].get(settings.topic_alerts):
                owners.append(worker)
            if not health["partitions"]["messages"]:
                return None  # the rebalance is not over
        return owners[0] if len(owners) == 1 else None

    owner = wait_until(alerts_owner, 90, "the two workers to share the partitions", 1.0)
    # the group processes on: another hour of the same traffic, without a spike
    later = spike_campaign(seed=5, spike_ratio=0.01, start=CAMPAIGN_START + 3600)
    produce(kafka_bootstrap, settings.topic_raw, later.payloads)
    topics = [settings.topic_raw, *internal_topic_names(settings)]
    wait_drained(kafka_bootstrap, settings.app_id, topics, 120)
    assert slack.is_down() and not slack.delivered()
    print("the alerts", "moved to the new worker" if owner is second else "stayed")
    slack.recover()
    assert_firing_then_resolved_once(slack)
