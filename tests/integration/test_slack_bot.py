"""The notifier's bot mode against a local server that answers Slack's Web API like Slack.

The notifier runs on a fake clock (its backoff and Retry-After waits advance it at once); the
HTTP is real. One path per scenario: the whole thread/edit lifecycle; routing to two channels;
a post whose answer is lost (500 after Slack posted it; a worker killed while it waited); a
restart after a notification was delivered; 429 with Retry-After; 500s; invalid_auth,
channel_not_found and not_in_channel (recorded, not retried, the queue goes on); a bot without
the history scope; and webhook mode routed to two webhooks.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from support import FakeClock, incident_lifecycle

from streams.core.alerts import Notification
from streams.core.routing import parse_routes
from streams.settings import Secret
from streams.slack import RetryPolicy, SlackNotifier, SlackOutcome
from streams.slack_threads import ThreadStore
from streams.state import DictKeyValue
from testkit.slack import FakeSlack, SlackApi

GRAFANA = "https://grafana.example.com"
FAST = RetryPolicy(initial_backoff=0.5, max_backoff=4.0, give_up_after=60.0, request_timeout=2.0)
ROUTES = """
[[route]]
name = "growth"
channel = "C0GROWTH"
templates = ["promo_*"]
"""


@pytest.fixture
def slack() -> Iterator[SlackApi]:
    server = SlackApi(["C0DEFAULT", "C0GROWTH", "C0SECRET"], outside=["C0SECRET"]).start()
    yield server
    server.stop()


def bot(
    slack: SlackApi,
    outcomes: list[SlackOutcome],
    *,
    store: ThreadStore | None = None,
    routes: str = "",
    token: str = SlackApi.TOKEN,
    channel: str = "C0DEFAULT",
    **kw: Any,
) -> SlackNotifier:
    clock = kw.pop("clock", FakeClock())
    return SlackNotifier(
        grafana_url=GRAFANA,
        bot_token=Secret(token),
        api_url=slack.api_url,
        channel=channel,
        routes=parse_routes(routes, "routes.toml", mode="bot") if routes else None,
        threads=store,
        policy=kw.pop("policy", FAST),
        clock=clock,
        sleep=clock.sleep,
        on_outcome=outcomes.append,
        **kw,
    )


async def deliver(n: SlackNotifier, *notes: Notification) -> list[SlackOutcome]:
    futures = [await n.submit(note) for note in notes]
    return list(await asyncio.wait_for(asyncio.gather(*futures), 30))


def texts(messages: list[Any]) -> list[str]:
    return [m.text.split("]")[0] + "]" for m in messages]


async def test_an_incident_is_one_message_its_thread_and_edits(slack: SlackApi) -> None:
    outcomes: list[SlackOutcome] = []
    notes = incident_lifecycle()
    async with bot(slack, outcomes) as n:
        assert await deliver(n, *notes) == [SlackOutcome.SENT] * 4
    (top,) = slack.top_level("C0DEFAULT")
    assert texts(slack.replies("C0DEFAULT", top.ts)) == [
        "[UPDATED]",
        "[STILL FIRING]",
        "[RESOLVED]",
    ]
    # edited twice: the UPDATED's new headline, then resolved
    assert [e["text"].split("]")[0] for e in top.edits] == ["[FIRING", "[RESOLVED"]
    assert top.text.startswith("[RESOLVED]") and "after 62 min" in json.dumps(top.blocks)
    assert top.metadata == {
        "event_type": "whatsapp_delivery_incident",
        "event_payload": {
            "incident": "spike:per_user_marketing_limit@1751000000",
            "notification": notes[0].id,
            "kind": "firing",
        },
    }
    assert outcomes == [SlackOutcome.SENT] * 4
    assert not slack.called("conversations.history")  # nothing was lost: no lookup


async def test_incidents_go_to_their_routed_channels_and_updates_follow_the_thread(
    slack: SlackApi,
) -> None:
    """An account-wide FIRING goes to the default channel; its UPDATED names promo_1, which
    the growth route takes: it starts a thread there too, and the default thread goes on. The
    RESOLVED closes both. spring_sale's incident stays in the default channel."""
    outcomes: list[SlackOutcome] = []
    promo = incident_lifecycle(template="promo_1", error_class="opt_out")
    sale = incident_lifecycle(template="spring_sale")
    async with bot(slack, outcomes, routes=ROUTES) as n:
        await deliver(n, promo[0], promo[1], sale[0], promo[3], sale[3])
    (growth,) = slack.top_level("C0GROWTH")
    assert growth.text.startswith("[RESOLVED]") and "promo_1" in growth.text
    assert texts(slack.replies("C0GROWTH", growth.ts)) == ["[RESOLVED]"]
    promo_top, sale_top = slack.top_level("C0DEFAULT")
    assert promo_top.text.startswith("[RESOLVED]") and "opt_out" in promo_top.text
    assert texts(slack.replies("C0DEFAULT", promo_top.ts)) == ["[UPDATED]", "[RESOLVED]"]
    assert sale_top.text.startswith("[RESOLVED]") and "spring_sale" in sale_top.text
    assert texts(slack.replies("C0DEFAULT", sale_top.ts)) == ["[RESOLVED]"]
    assert outcomes == [SlackOutcome.SENT] * 7  # per destination


async def test_a_post_whose_answer_is_lost_is_found_instead_of_posted_twice(
    slack: SlackApi,
) -> None:
    """Slack posts the FIRING but answers 500 (then the RESOLVED's reply likewise): the retry
    finds each in the history by its metadata instead of posting it again."""
    slack.fail("chat.postMessage", "internal_error", status=500, after=True, times=1)
    outcomes: list[SlackOutcome] = []
    notes = incident_lifecycle()
    async with bot(slack, outcomes) as n:
        assert await deliver(n, notes[0]) == [SlackOutcome.SENT]
        slack.fail("chat.postMessage", "internal_error", status=500, after=True)
        assert await deliver(n, notes[3]) == [SlackOutcome.SENT]
    (top,) = slack.top_level("C0DEFAULT")
    assert texts(slack.replies("C0DEFAULT", top.ts)) == ["[RESOLVED]"]
    assert len(slack.called("chat.postMessage")) == 2  # no third post
    assert len(slack.called("conversations.history")) == 1
    assert len(slack.called("conversations.replies")) == 1
    assert outcomes == [SlackOutcome.RETRIED, SlackOutcome.SENT] * 2


async def test_a_restart_after_a_post_whose_answer_never_came_keeps_one_message(
    slack: SlackApi,
) -> None:
    """The first notifier records its intent, posts, and dies while Slack's answer hangs; the
    next one (same store, as after a restart) finds the message and goes on in its thread."""
    store = ThreadStore(DictKeyValue())
    slack.fail("chat.postMessage", "hang", status=500, after=True, delay=60)
    notes = incident_lifecycle()
    first = bot(slack, [], store=store)
    await first.start()
    await first.submit(notes[0])
    while not slack.top_level("C0DEFAULT"):
        await asyncio.sleep(0.01)
    await first.abandon()  # killed: its delivery never finishes
    await first.stop()
    outcomes: list[SlackOutcome] = []
    async with bot(slack, outcomes, store=store) as second:
        assert await deliver(second, notes[0], notes[3]) == [SlackOutcome.SENT] * 2
    (top,) = slack.top_level("C0DEFAULT")
    assert texts(slack.replies("C0DEFAULT", top.ts)) == ["[RESOLVED]"]
    assert top.text.startswith("[RESOLVED]")
    assert len(slack.called("chat.postMessage")) == 2  # the FIRING once, the reply once
    assert len(slack.called("conversations.history")) == 1  # found, not posted again


async def test_a_notification_delivered_before_a_restart_is_not_sent_again(
    slack: SlackApi,
) -> None:
    """Delivered and recorded, but the alerts topic's offset was not committed yet: the
    restarted notifier reads it again and skips it."""
    store = ThreadStore(DictKeyValue())
    notes = incident_lifecycle()
    async with bot(slack, [], store=store) as first:
        await deliver(first, notes[0], notes[1])
    outcomes: list[SlackOutcome] = []
    async with bot(slack, outcomes, store=store) as second:
        assert await deliver(second, notes[1], notes[3]) == [SlackOutcome.SENT] * 2
    (top,) = slack.top_level("C0DEFAULT")
    assert texts(slack.replies("C0DEFAULT", top.ts)) == ["[UPDATED]", "[RESOLVED]"]
    assert outcomes == [SlackOutcome.SENT]  # only the RESOLVED was sent


async def test_429_waits_retry_after_then_posts_once(slack: SlackApi) -> None:
    slack.fail("chat.postMessage", "ratelimited", status=429, retry_after=7)
    clock = FakeClock()
    outcomes: list[SlackOutcome] = []
    async with bot(slack, outcomes, clock=clock) as n:
        assert await deliver(n, incident_lifecycle()[0]) == [SlackOutcome.SENT]
    assert len(slack.top_level("C0DEFAULT")) == 1
    assert outcomes == [SlackOutcome.RATE_LIMITED, SlackOutcome.RETRIED, SlackOutcome.SENT]
    assert clock.now - 1000.0 >= 7  # the bucket waited Retry-After on the fake clock
    assert not slack.called("conversations.history")  # a 429 is never ambiguous


async def test_500s_are_retried_with_backoff_and_posted_once(slack: SlackApi) -> None:
    slack.fail("chat.postMessage", "internal_error", status=500, times=3)
    clock = FakeClock()
    outcomes: list[SlackOutcome] = []
    async with bot(slack, outcomes, clock=clock, rate_per_second=100.0) as n:
        assert await deliver(n, incident_lifecycle()[0]) == [SlackOutcome.SENT]
    assert len(slack.top_level("C0DEFAULT")) == 1
    assert outcomes == [SlackOutcome.RETRIED] * 3 + [SlackOutcome.SENT]
    backoffs = clock.sleeps
    assert len(backoffs) == 3 and all(0.25 <= b <= 2.0 for b in backoffs)
    # each retry of an ambiguous failure looked first
    assert len(slack.called("conversations.history")) == 3


async def test_permanent_errors_are_recorded_not_retried_and_the_queue_goes_on(
    slack: SlackApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    promo = incident_lifecycle("promo_1")[1]
    sale = incident_lifecycle("spring_sale", error_class="opt_out")[1]
    routes = ROUTES.replace("C0GROWTH", "C0SECRET")  # the bot is not a member there
    outcomes: list[SlackOutcome] = []
    async with bot(slack, outcomes, routes=routes) as n:
        assert await deliver(n, promo, sale) == [SlackOutcome.FAILED_PERMANENT, SlackOutcome.SENT]
    async with bot(slack, outcomes, channel="C0NOWHERE") as n:
        assert await deliver(n, sale) == [SlackOutcome.FAILED_PERMANENT]
    async with bot(slack, outcomes, token="xoxb-wrong-SECRETTOKEN") as n:
        assert await deliver(n, promo, sale) == [SlackOutcome.FAILED_PERMANENT] * 2
        assert n.broken == "invalid_auth"
    reasons = [(f.reason, f.destination, f.attempts) for f in n.failures]
    assert reasons == [("invalid_auth", "C0DEFAULT", 1)] * 2
    errors = [c[4] for c in slack.calls]
    assert errors == ["not_in_channel", "", "channel_not_found", "invalid_auth", "invalid_auth"]
    assert (
        outcomes
        == [SlackOutcome.FAILED_PERMANENT, SlackOutcome.SENT] + [SlackOutcome.FAILED_PERMANENT] * 3
    )
    assert "SECRETTOKEN" not in caplog.text and "SECRETTOKEN" not in repr(n)


async def test_without_the_history_scope_a_lost_post_is_posted_again_with_a_warning(
    slack: SlackApi, caplog: pytest.LogCaptureFixture
) -> None:
    """The documented duplicate: the bot cannot read the channel, so it cannot find the post."""
    slack.fail("chat.postMessage", "internal_error", status=500, after=True)
    slack.fail("conversations.history", "missing_scope")
    async with bot(slack, []) as n:
        assert await deliver(n, incident_lifecycle()[0]) == [SlackOutcome.SENT]
    assert len(slack.top_level("C0DEFAULT")) == 2
    assert "may show twice" in caplog.text


async def test_webhook_mode_routes_to_several_webhooks_and_never_logs_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    default, growth = FakeSlack().start(), FakeSlack().start()
    try:
        routes = parse_routes(
            f'[[route]]\nname = "growth"\nwebhook = "{growth.url}"\ntemplates = ["promo_*"]\n',
            "routes.toml",
            mode="webhook",
        )
        clock, outcomes = FakeClock(), []
        n = SlackNotifier(
            Secret(default.url),
            grafana_url=GRAFANA,
            routes=routes,
            threads=ThreadStore(DictKeyValue()),
            policy=FAST,
            clock=clock,
            sleep=clock.sleep,
            on_outcome=outcomes.append,
        )
        promo = incident_lifecycle("promo_9")
        sale = incident_lifecycle("spring_sale", error_class="opt_out")
        async with n:
            # the UPDATEDs name their templates; promo_9's goes to the growth webhook
            assert await deliver(n, promo[1], sale[1]) == [SlackOutcome.SENT] * 2
            n.send(promo[1])  # read again after a restart: the store knows it was delivered
            await n.join()
        assert [str(p["text"])[:9] for p in growth.delivered()] == ["[UPDATED]"]
        assert "spring_sale" in str(default.delivered()[0]["text"])
        assert len(default.delivered()) == 1  # the replay was recognised as delivered
        assert outcomes == [SlackOutcome.SENT] * 2
        assert "/services/" not in caplog.text and "/services/" not in repr(n)
    finally:
        default.stop()
        growth.stop()
