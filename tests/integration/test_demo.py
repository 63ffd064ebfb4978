"""``delivery-monitor demo``: its traffic is valid and spikes one template (pure check), and end
to end against a real broker and worker it raises exactly one alert, then resolves it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from streams.asyncutil import run_sync
from streams.core import parse_webhook
from streams.core.alerts import AlertBook, NotificationKind
from streams.core.detector import SpikeDetector, scope_of_bucket
from streams.settings import Settings
from streams.simulate import LiveSpec, LiveTraffic, Message, _outcome_class
from streams.topics import ensure_topics, source_topics
from testkit.slack import FakeSlack
from testkit.worker import REPO, WorkerProcess, get_json, unique_env, wait_until

SPIKE = "weekend_flash_deal"

# Compressed time: 30 s of event time per wall second, so the spike (1 min after the start,
# 2 min long) fires about 3 event minutes in and resolves about 13 event minutes in (~26 s).
# 360 statuses/s at this scale is 720 per event minute: what a small sender sends.
DEMO_ARGS = [
    "--time-scale",
    "30",
    "--rate",
    "360",
    "--spike-share",
    "0.08",
    "--spike-minutes",
    "2",
    "--duration",
    "34",
    "--seed",
    "11",
    "--progress",
    "log",
    "--progress-every",
    "5",
]


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    server = FakeSlack().start()
    yield server
    server.stop()


def text_of(post: dict[str, object]) -> str:
    return json.dumps(post)


def minute_counts(message: Message) -> tuple[int, list[str]]:
    """The minute and the outcomes a message adds to its buckets (as the pipeline counts)."""
    outcomes = ["attempted"]
    for status, _, code in message.statuses:
        if status == "failed" and code is not None:
            outcomes.append("failed." + _outcome_class(code, message.country))
    return min(ts for _, ts, _ in message.statuses) // 60, outcomes


def test_live_traffic_is_valid_webhooks_whose_only_incident_is_the_spike() -> None:
    """Without Kafka: 25 event minutes of the demo's default traffic (50 statuses/s) parse
    without defects, and the core detector and alert book make one incident of them: the
    spike template FIRING about 2 minutes into the spike, then RESOLVED."""
    start = 1_767_225_617.0
    traffic = LiveTraffic(LiveSpec(), start, seed=3)
    detector, book = SpikeDetector(), AlertBook()
    buckets: dict[int, dict[tuple[str, str], Counter[str]]] = defaultdict(
        lambda: defaultdict(Counter)
    )
    kinds: Counter[str] = Counter()
    notes = []
    created, ts = 0, start
    while ts < start + 25 * 60:
        while created < 50 * (ts - start) / traffic.statuses_per_message:
            created += 1
            message = traffic.send(ts)
            if message is not None:
                minute, outcomes = minute_counts(message)
                for dim, key in (
                    ("t", message.template),
                    ("s", message.sender),
                    ("c", message.country),
                ):
                    buckets[minute][(dim, key)].update(outcomes)
        for record in traffic.due(ts):
            kinds[record.kind] += 1
            if record.kind == "send_log":
                assert {"wamid", "template"} <= set(orjson.loads(record.value))
            else:
                assert parse_webhook(record.value).defects == ()
        if int(ts) % 60 == 0:  # a minute of event time is complete: add it, evaluate
            minute = int(ts) // 60
            for (dim, key), counts in buckets.pop(minute - 1, {}).items():
                errors = {k[7:]: v for k, v in counts.items() if k.startswith("failed.")}
                detector.add(scope_of_bucket(dim, key), minute - 1, counts["attempted"], errors)
            for note in book.apply(detector.evaluate(minute * 60)):
                notes.append(((minute * 60 - start) / 60, note.kind, str(note.headline.scope)))
        ts += 1.0
    assert kinds["statuses"] > 50_000 and kinds["inbound"] > 100 and kinds["send_log"] > 1_000
    assert [(kind, scope) for _, kind, scope in notes] == [
        (NotificationKind.FIRING, f"template:{SPIKE}"),
        (NotificationKind.RESOLVED, f"template:{SPIKE}"),
    ], notes
    fired_after, resolved_after = notes[0][0], notes[1][0]
    # minutes after the start: the spike begins after 1 minute and, this clear, fires on its
    # first complete minute (the detector's fast path)
    assert 1 < fired_after <= 4
    # the spike ends 6 minutes in: resolved once the rate is back to normal, within 10 minutes
    assert 6 < resolved_after <= 16


@pytest.mark.kafka
@pytest.mark.slow
def test_demo_spike_fires_one_alert_naming_the_spike_template_and_resolves(
    kafka_bootstrap: str,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
    fake_slack: FakeSlack,
) -> None:
    """The demo's realistic traffic (many templates, countries, replies, duplicates, out of
    order statuses) raises exactly one incident: a FIRING for the spike template, then its
    RESOLVED; the API shows the spike's 131049s and the first spiked recipient's cooldown."""
    env = unique_env(
        kafka_bootstrap,
        tmp_path / "state",
        DELIVERY_MONITOR_STORE="memory://",
        DELIVERY_MONITOR_SLACK_WEBHOOK_URL=fake_slack.url,
    )
    settings = Settings.from_env(env)
    run_sync(ensure_topics(kafka_bootstrap, source_topics(settings), 1), timeout_s=60)
    worker = start_worker(env)
    log_path = tmp_path / "demo.log"
    with log_path.open("wb") as log:
        demo = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "demo", *DEMO_ARGS],
            env={**os.environ, **env},
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: fake_slack.delivered(), 40, "the FIRING message at the fake Slack")
        firing = fake_slack.delivered()[0]
        assert "[FIRING]" in text_of(firing)
        assert SPIKE in text_of(firing)
        assert "Per-user marketing limit" in text_of(firing)

        status, template = get_json(f"{worker.base_url}/v1/templates/{SPIKE}")
        assert status == 200, template
        assert isinstance(template, dict)
        failed = template["windows"]["1h"]["failed_by_class"]
        assert failed.get("per_user_marketing_limit", 0) >= 10, template

        output = log_path.read_text()
        advice_url = re.search(r"curl -s (\S+/v1/recipients/\d+/advice)", output)
        assert advice_url is not None, output
        status, advice = get_json(advice_url[1])
        assert status == 200, advice
        assert isinstance(advice, dict)
        assert advice["may_send_marketing"] is False, advice
        assert "per_user_limit_cooldown" in advice["reasons"], advice

        assert demo.wait(timeout=60) == 0, log_path.read_text()
        wait_until(lambda: len(fake_slack.delivered()) >= 2, 15, "the RESOLVED message")
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    posts = [text_of(p) for p in fake_slack.delivered()]
    assert len(posts) == 2, posts  # one incident: nothing else fired
    assert "[RESOLVED]" in posts[1] and SPIKE in posts[1], posts[1]
    output = log_path.read_text()
    assert "SPIKE on weekend_flash_deal" in output  # the progress lines tell the story
    assert re.search(r"demo done: [\d,]+ statuses", output), output
