"""Slack bot mode end to end: real broker, the worker as a subprocess, a local server that
answers Slack's Web API like Slack (``testkit.slack.SlackApi``).

A 131049 spike gives one top-level message in the channel its template is routed to, its thread
holds the updates, and it ends edited as resolved; two templates spiking one after the other go
to their two channels; a worker SIGKILLed right after Slack took the FIRING (its answer never
came back) leaves one top-level message: the restarted worker finds it by its metadata.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import alert_campaign

from streams.asyncutil import run_sync
from streams.settings import Settings
from streams.simulate import spike_campaign
from streams.topics import ensure_topics, source_topics
from testkit.kafka import produce
from testkit.slack import Posted, SlackApi
from testkit.worker import IDLE_AS_IN_PRODUCTION, WorkerProcess, unique_env, wait_until

pytestmark = [pytest.mark.kafka]

P = "whatsapp_monitor_"
START = 1_767_225_600
ROUTES = """\
[[route]]
name = "alpha team"
channel = "C0ALPHA"
templates = ["promo_alpha"]

[[route]]
name = "beta team"
channel = "C0BETA"
templates = ["promo_beta"]
"""


@pytest.fixture
def slack() -> Iterator[SlackApi]:
    server = SlackApi(["C0DEFAULT", "C0ALPHA", "C0BETA"]).start()
    yield server
    server.stop()


def bot_env(
    kafka_bootstrap: str, state: Path, slack: SlackApi, store: str, **extra: str
) -> dict[str, str]:
    env = unique_env(
        kafka_bootstrap,
        state,
        DELIVERY_MONITOR_STORE=store,
        DELIVERY_MONITOR_SLACK_BOT_TOKEN=SlackApi.TOKEN,
        DELIVERY_MONITOR_SLACK_CHANNEL="C0DEFAULT",
        DELIVERY_MONITOR_SLACK_API_URL=slack.api_url,
        DELIVERY_MONITOR_GRAFANA_URL="http://grafana.example.test",
        **{**IDLE_AS_IN_PRODUCTION, **extra},
    )
    run_sync(ensure_topics(kafka_bootstrap, source_topics(Settings.from_env(env)), 1))
    return env


def resolved_thread(slack: SlackApi, channel: str) -> Posted | None:
    """The channel's one top-level message once it is edited as resolved and its thread
    ends with the RESOLVED reply."""
    tops = slack.top_level(channel)
    if len(tops) != 1 or not tops[0].text.startswith("[RESOLVED]"):
        return None
    replies = slack.replies(channel, tops[0].ts)
    return tops[0] if replies and replies[-1].text.startswith("[RESOLVED]") else None


def assert_one_resolved_incident(slack: SlackApi, channel: str, template: str) -> None:
    top = wait_until(lambda: resolved_thread(slack, channel), 120, f"{channel} resolved")
    time.sleep(3)  # nothing else may follow
    assert slack.top_level(channel) == [top]
    assert template in top.text and "http://grafana.example.test" in str(top.blocks)
    assert [e["text"][:10] for e in top.edits][-1] == "[RESOLVED]"
    replies = [r.text.split("]")[0] + "]" for r in slack.replies(channel, top.ts)]
    assert replies[-1] == "[RESOLVED]" and set(replies) <= {
        "[UPDATED]",
        "[STILL FIRING]",
        "[RESOLVED]",
    }
    assert top.metadata is not None
    assert top.metadata["event_payload"]["notification"].endswith("/1")  # the FIRING


def test_two_templates_spiking_go_to_their_channels_as_one_thread_each(
    kafka_bootstrap: str,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
    slack: SlackApi,
) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES)
    env = bot_env(
        kafka_bootstrap,
        tmp_path / "state",
        slack,
        "memory://",
        DELIVERY_MONITOR_SLACK_ROUTES=str(routes),
    )
    worker = start_worker(env)
    # one spike after the other (the second 55 minutes of event time later): two incidents
    alpha = spike_campaign(minutes=55, spike_template="promo_alpha", start=START)
    beta = spike_campaign(minutes=55, spike_template="promo_beta", start=START + 55 * 60, seed=7)
    produce(kafka_bootstrap, Settings.from_env(env).topic_raw, alpha.payloads + beta.payloads)
    assert_one_resolved_incident(slack, "C0ALPHA", "promo_alpha")
    assert_one_resolved_incident(slack, "C0BETA", "promo_beta")
    assert slack.top_level("C0DEFAULT") == []
    posts = len(slack.called("chat.postMessage"))
    assert worker.metric(P + "slack_deliveries_total", {"outcome": "sent"}) == posts
    assert worker.metric(P + "slack_deliveries_total", {"outcome": "failed_permanent"}) == 0
    assert not slack.called("conversations.history")  # nothing lost, nothing looked up


def test_a_worker_killed_right_after_slack_took_the_firing_leaves_one_message(
    kafka_bootstrap: str,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
    slack: SlackApi,
) -> None:
    """Slack posts the FIRING but its answer hangs; the worker is SIGKILLed meanwhile. The
    restarted worker reads the FIRING again, finds the message in the channel's history (the
    intent to post it was saved before posting) and threads the RESOLVED under it."""
    slack.fail("chat.postMessage", "hang", status=500, after=True, delay=120)
    env = bot_env(
        kafka_bootstrap,
        tmp_path / "state",
        slack,
        "rocksdb://",
        DELIVERY_MONITOR_SLACK_REQUEST_TIMEOUT="60",
    )
    worker = start_worker(env)
    produce(kafka_bootstrap, Settings.from_env(env).topic_raw, alert_campaign().payloads)
    wait_until(lambda: slack.top_level("C0DEFAULT"), 120, "the FIRING posted")
    assert worker.kill() == -9
    assert not slack.top_level("C0DEFAULT")[0].edits
    start_worker(env)
    assert_one_resolved_incident(slack, "C0DEFAULT", "promo_spike")
    assert len(slack.called("conversations.history")) >= 1
