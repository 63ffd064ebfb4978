"""The Slack notifier against a real local HTTP server that answers like Slack's webhooks.

One path per scenario: 200 "ok"; 429 with Retry-After then 200; 500 three times then 200; 404
"no_service"; a server that never answers (timeout); a closed port (connection refused); the
notifier agent's ``submit`` (waits for room, one post per id) and ``abandon`` (after a
rebalance). Most tests run the notifier on a fake clock (backoff sleeps advance it instantly);
the 429 test uses the real clock and a real 1 s Retry-After. Long outages: test_slack_outage.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from aiohttp import web
from support import FakeClock

from streams.core.alerts import (
    AlertBook,
    Evaluation,
    Evidence,
    Finding,
    Notification,
    Scope,
    Verdict,
)
from streams.core.catalog import ErrorClass, recommended_action
from streams.settings import Secret, Settings
from streams.slack import RetryPolicy, SlackNotifier, SlackOutcome

T0 = 1_751_000_000
GRAFANA = "https://grafana.example.com"
SECRET_PATH = "/services/T0000/B0000/SECRETTOKENxyz"
FAST = RetryPolicy(initial_backoff=0.5, max_backoff=4.0, give_up_after=10.0, request_timeout=2.0)


@dataclass
class Arrival:
    path: str
    at: float  # real monotonic time
    fake_at: float  # the fake clock at arrival
    body: dict[str, Any]


@dataclass
class FakeSlack:
    """Answers like Slack; the path chooses the scenario; records every request."""

    clock: FakeClock = field(default_factory=FakeClock)
    arrivals: list[Arrival] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    base: str = ""

    def hits(self, path: str) -> list[Arrival]:
        return [a for a in self.arrivals if a.path == path]

    async def handle(self, request: web.Request) -> web.Response:
        path = request.path.removeprefix(SECRET_PATH)
        body = await request.json()
        self.arrivals.append(Arrival(path, time.monotonic(), self.clock.now, body))
        seen = len(self.hits(path))
        if path == "/ratelimited" and seen == 1:
            return web.Response(status=429, text="rate_limited", headers={"Retry-After": "1"})
        if path == "/flaky" and seen <= 3:
            return web.Response(status=500, text="rollup_error")
        if path == "/revoked":
            return web.Response(status=404, text="no_service")
        if path == "/silent":
            await self.release.wait()
        return web.Response(text="ok")

    def url(self, path: str) -> Secret:
        return Secret(f"{self.base}{SECRET_PATH}{path}")


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    fake = FakeSlack()
    app = web.Application()
    app.router.add_post("/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, access_log=None)  # the fake server is not under test
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.base = f"http://{host}:{port}"
    yield fake
    fake.release.set()
    await runner.cleanup()


def notifier(slack: FakeSlack, path: str, outcomes: list[SlackOutcome], **kw: Any) -> SlackNotifier:
    kw.setdefault("policy", FAST)
    kw.setdefault("clock", slack.clock)
    kw.setdefault("sleep", slack.clock.sleep)
    return SlackNotifier(slack.url(path), grafana_url=GRAFANA, on_outcome=outcomes.append, **kw)


def spike_notification() -> Notification:
    f = Finding(
        rule="spike",
        scope=Scope.for_template("spring_sale"),
        group="spike:per_user_marketing_limit",
        verdict=Verdict.POSITIVE,
        evidence=Evidence(300, 1000, 0.3, 0.02, 1_440_000, 1e-40, 300),
        title="Per-user marketing limit (131049) spike",
        error_class=ErrorClass.PER_USER_MARKETING_LIMIT,
    )
    (note,) = AlertBook().apply(Evaluation(T0, frozenset({"spike"}), (f,)))
    return note


async def test_ok_posts_the_block_kit_message(slack: FakeSlack) -> None:
    outcomes: list[SlackOutcome] = []
    async with notifier(slack, "/ok", outcomes) as n:
        assert n.send(spike_notification())
        await n.join()
    (arrival,) = slack.hits("/ok")
    payload = arrival.body
    assert payload["text"].startswith("[FIRING] Per-user marketing limit (131049) spike")
    assert payload["blocks"][0]["type"] == "header"
    text = json.dumps(payload)
    assert "spring_sale" in text
    assert json.dumps(recommended_action(ErrorClass.PER_USER_MARKETING_LIMIT))[1:-1] in text
    (button,) = next(b for b in payload["blocks"] if b["type"] == "actions")["elements"]
    assert button["url"].startswith(GRAFANA + "/d/wdm-delivery-overview/")
    assert "var-template=spring_sale" in button["url"]
    assert outcomes == [SlackOutcome.SENT]


async def test_429_waits_retry_after_then_delivers_exactly_once(slack: FakeSlack) -> None:
    """Real clock: the second request comes at least Retry-After (1 s) after the 429."""
    outcomes: list[SlackOutcome] = []
    n = notifier(slack, "/ratelimited", outcomes, clock=time.monotonic, sleep=asyncio.sleep)
    async with n:
        n.send(spike_notification())
        await asyncio.wait_for(n.join(), 5)
    first, second = slack.hits("/ratelimited")
    assert second.at - first.at >= 0.95
    assert first.body == second.body
    assert outcomes == [SlackOutcome.RATE_LIMITED, SlackOutcome.RETRIED, SlackOutcome.SENT]
    assert list(n.failures) == []


async def test_500_three_times_then_delivers_once_with_backoff(slack: FakeSlack) -> None:
    outcomes: list[SlackOutcome] = []
    async with notifier(slack, "/flaky", outcomes, rate_per_second=100.0) as n:
        n.send(spike_notification())
        await n.join()
    assert len(slack.hits("/flaky")) == 4  # three 500s, one 200
    assert outcomes == [SlackOutcome.RETRIED] * 3 + [SlackOutcome.SENT]
    # exponential backoff with equal jitter: retry i waits in [c/2, c], c = 0.5 * 2^(i-1)
    # (a fast token bucket here, so that every sleep is a backoff)
    assert len(slack.clock.sleeps) == 3
    for i, slept in enumerate(slack.clock.sleeps, start=1):
        ceiling = 0.5 * 2 ** (i - 1)
        assert ceiling / 2 <= slept <= ceiling


async def test_404_no_service_is_not_retried_and_marks_the_webhook_broken(
    slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    outcomes: list[SlackOutcome] = []
    async with notifier(slack, "/revoked", outcomes) as n:
        n.send(spike_notification())
        await n.join()
    assert len(slack.hits("/revoked")) == 1
    assert outcomes == [SlackOutcome.FAILED_PERMANENT]
    (failure,) = n.failures
    assert (failure.status, failure.reason, failure.attempts) == (404, "no_service", 1)
    assert n.webhook_broken == "no_service"
    assert "SECRETTOKEN" not in caplog.text  # the webhook URL is never logged
    assert "SECRETTOKEN" not in repr(n)


async def test_a_server_that_never_answers_is_retried_then_given_up_within_the_bound(
    slack: FakeSlack,
) -> None:
    policy = RetryPolicy(initial_backoff=1.0, give_up_after=5.0, request_timeout=0.2)
    outcomes: list[SlackOutcome] = []
    started = time.monotonic()
    async with notifier(slack, "/silent", outcomes, policy=policy) as n:
        n.send(spike_notification())
        await asyncio.wait_for(n.join(), 10)
    assert time.monotonic() - started < 5
    attempts = len(slack.hits("/silent"))
    assert attempts >= 2
    assert outcomes == [SlackOutcome.RETRIED] * (attempts - 1) + [SlackOutcome.GAVE_UP]
    assert sum(slack.clock.sleeps) <= policy.give_up_after
    (failure,) = n.failures
    assert failure.outcome is SlackOutcome.GAVE_UP and failure.status is None
    assert "Timeout" in failure.reason


async def test_a_backlog_behind_an_outage_is_bounded_from_enqueue_time(slack: FakeSlack) -> None:
    """Three messages queued while Slack never answers: the budget runs from enqueueing, so the
    whole backlog is given up within one budget, not one budget per message."""
    policy = RetryPolicy(initial_backoff=1.0, give_up_after=5.0, request_timeout=0.2)
    outcomes: list[SlackOutcome] = []
    async with notifier(slack, "/silent", outcomes, policy=policy) as n:
        for _ in range(3):
            n.send(spike_notification())
        await asyncio.wait_for(n.join(), 10)
    assert outcomes.count(SlackOutcome.GAVE_UP) == 3
    assert all(f.attempts >= 1 for f in n.failures)  # every message is tried at least once
    # one budget for the backlog, plus one paced (1/s) last attempt per queued message
    assert max(f.at for f in n.failures) - 1000.0 <= policy.give_up_after + 3


async def test_connection_refused_is_retried_then_given_up(
    slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outcomes: list[SlackOutcome] = []
    url = Secret(f"http://127.0.0.1:{port}{SECRET_PATH}")
    n = SlackNotifier(
        url,
        grafana_url=GRAFANA,
        policy=FAST,
        clock=slack.clock,
        sleep=slack.clock.sleep,
        on_outcome=outcomes.append,
    )
    async with n:
        n.send(spike_notification())
        await asyncio.wait_for(n.join(), 10)
    assert outcomes.count(SlackOutcome.RETRIED) >= 2
    assert outcomes[-1] is SlackOutcome.GAVE_UP
    assert sum(slack.clock.sleeps) <= FAST.give_up_after
    assert n.failures[0].reason.startswith("ClientConnector")
    assert "SECRETTOKEN" not in caplog.text


async def test_messages_are_paced_to_one_per_second(slack: FakeSlack) -> None:
    outcomes: list[SlackOutcome] = []
    async with notifier(slack, "/ok", outcomes) as n:
        for _ in range(3):
            n.send(spike_notification())
        await n.join()
    assert [a.fake_at - 1000.0 for a in slack.hits("/ok")] == pytest.approx([0.0, 1.0, 2.0])
    assert outcomes == [SlackOutcome.SENT] * 3


async def test_send_only_enqueues_and_a_full_queue_drops(slack: FakeSlack) -> None:
    outcomes: list[SlackOutcome] = []
    async with notifier(slack, "/ok", outcomes, queue_size=1) as n:
        started = time.perf_counter()
        assert n.send(spike_notification())
        assert not n.send(spike_notification())  # no await in between: the queue is full
        assert time.perf_counter() - started < 0.1
        await n.join()
    assert outcomes == [SlackOutcome.DROPPED, SlackOutcome.SENT]
    assert len(slack.hits("/ok")) == 1


def test_no_webhook_url_means_no_notifier() -> None:
    assert SlackNotifier.from_settings(Settings()) is None
    configured = Settings(slack_webhook_url=Secret("https://hooks.slack.com/services/X"))
    n = SlackNotifier.from_settings(configured)
    assert n is not None and "hooks.slack.com" not in repr(n)


def numbered(note: Notification, i: int) -> Notification:
    return msgspec.structs.replace(note, id=f"{note.id}#{i}")


async def test_submit_waits_for_room_and_an_id_submitted_again_is_posted_once(
    slack: FakeSlack,
) -> None:
    """The notifier agent's path: a full queue makes ``submit`` wait (nothing is dropped); a
    replayed notification (same id) gets the first submission's future."""
    outcomes: list[SlackOutcome] = []
    notes = [numbered(spike_notification(), i) for i in range(3)]
    async with notifier(slack, "/ok", outcomes, queue_size=1) as n:
        futures = [await n.submit(note) for note in notes]
        assert await n.submit(notes[0]) is futures[0]
        assert n.knows(notes[0].id)
        assert await asyncio.gather(*futures) == [SlackOutcome.SENT] * 3
        assert await n.submit(notes[1]) is futures[1]  # already delivered: not posted again
        await n.join()
    assert outcomes == [SlackOutcome.SENT] * 3
    assert len(slack.hits("/ok")) == 3
    assert n.backlog() == (0, 0.0)


async def test_abandon_drops_what_is_pending_so_the_new_owner_alone_posts_it(
    slack: FakeSlack,
) -> None:
    """After a rebalance moved the alerts elsewhere: the POST under way and the queue are
    dropped, their futures cancelled and their ids forgotten (submitting again posts)."""
    outcomes: list[SlackOutcome] = []
    notes = [numbered(spike_notification(), i) for i in range(2)]
    async with notifier(slack, "/silent", outcomes) as n:
        futures = [await n.submit(note) for note in notes]
        while not slack.hits("/silent"):
            await asyncio.sleep(0.01)
        assert n.backlog()[0] == 2
        assert await n.abandon() == 2
        assert all(f.cancelled() for f in futures)
        assert n.backlog() == (0, 0.0) and not n.knows(notes[1].id)
        slack.release.set()
        again = await n.submit(notes[1])
        assert again is not futures[1]
        assert await asyncio.wait_for(again, 10) is SlackOutcome.SENT
    abandoned, posted = slack.hits("/silent")  # the first note's POST was cut short
    assert abandoned.body != posted.body
    assert outcomes == [SlackOutcome.SENT]
