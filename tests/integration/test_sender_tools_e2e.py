"""What senders act on, end to end on the broker, against a generated multi-week history:
engagement and tiers per recipient, GET and POST advice at any time, the audience pre-flight
CLI (with unknown and malformed recipients) and retry plans, with the worker SIGKILLed in one
run and a worker leaving the group in the other between the two halves of the history."""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
import random
import subprocess
import sys
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from history_support import (
    DAY,
    HOUR,
    SETTLE,
    expected_engagement,
    expected_group,
    expected_plans,
    partition_clock,
)

from streams.app import internal_topic_names
from streams.asyncutil import run_sync
from streams.settings import Settings
from streams.simulate import phone_for
from streams.simulate_history import History, HistorySpec, generate_history
from streams.stages import partition_for
from streams.topics import ensure_topics, source_topics
from testkit.kafka import consume_all, produce_keyed, wait_drained
from testkit.worker import REPO, WorkerProcess, free_port, get_json, unique_env, wait_until

pytestmark = [pytest.mark.kafka]
CONSUMED = "whatsapp_monitor_records_consumed_total"
KEEP = 2 * DAY  # RetryPolicy.keep_s


def halves(history: History) -> tuple[list[list[bytes]], list[list[tuple[bytes, bytes]]]]:
    """Webhooks and send log split at two days before the end (by event time)."""
    cut = history.end - 2 * DAY
    first, second = [], []
    for body in history.payloads:
        ts = max(int(t) for t in _timestamps(body))
        (first if ts < cut else second).append(body)
    sent = {m.wamid.encode(): m.sent_at for m in history.messages}
    log_first = [r for r in history.send_log if sent[r[0]] < cut]
    log_second = [r for r in history.send_log if sent[r[0]] >= cut]
    return [first, second], [log_first, log_second]


def _timestamps(body: bytes) -> list[str]:
    doc = json.loads(body)
    value = doc["entry"][0]["changes"][0]["value"]
    return [s["timestamp"] for s in value.get("statuses", []) + value.get("messages", [])]


def feed(
    bootstrap: str, settings: Settings, bodies: list[bytes], log: list[tuple[bytes, bytes]]
) -> None:
    """The send log, then the webhooks into one raw partition, in arrival order: retry timers
    run on event time, and a backlog spread over raw partitions that the worker reads unevenly
    is out of order by as much as it holds (README: retry plans)."""
    produce_keyed(bootstrap, settings.topic_send_log, log)
    asyncio.run(_produce_to_partition(bootstrap, settings.topic_raw, bodies))


async def _produce_to_partition(bootstrap: str, topic: str, bodies: list[bytes]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        for body in bodies:
            await producer.send(topic, body, partition=0)
        await producer.flush()
    finally:
        await producer.stop()


def topics_of(settings: Settings) -> list[str]:
    return [settings.topic_raw, settings.topic_send_log, *internal_topic_names(settings)]


def check_engagement_and_advice(worker: WorkerProcess, history: History) -> None:
    at = history.end
    tiers = set()
    for recipient, truth in history.truth.items():
        status, body = get_json(f"{worker.base_url}/v1/recipients/{recipient}?at={at}")
        expected = expected_engagement(truth, at)
        if status == 404:  # gone with its retention: nothing in the last 30 days
            assert expected["tier"] == "unknown", truth.persona
            continue
        assert status == 200 and isinstance(body, dict), body
        got = {
            "tier": body["engagement_tier"],
            "marketing_delivered_7d": body["marketing_delivered"]["7d"],
            "marketing_delivered_30d": body["marketing_delivered"]["30d"],
            "marketing_read_7d": body["marketing_read"]["7d"],
            "marketing_read_30d": body["marketing_read"]["30d"],
            "last_inbound": body["last_inbound"],
        }
        assert got == expected, truth.persona
        tiers.add(got["tier"])
    assert tiers >= {"engaged", "cooling", "unengaged"}
    # GET and POST advice agree at any time, and say what the truth says
    recipients = sorted(history.truth)
    for when in (at, at - 8 * HOUR, at - 30 * HOUR):
        request = urllib.request.Request(
            f"{worker.base_url}/v1/advice",
            data=json.dumps({"recipients": recipients, "at": when}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as resp:
            batch = json.loads(resp.read())["advice"]
        for recipient, posted in zip(recipients, batch, strict=True):
            status, got = get_json(f"{worker.base_url}/v1/recipients/{recipient}/advice?at={when}")
            assert status == 200 and got == posted
            group, not_before = expected_group(history.truth[recipient], when)
            assert posted["may_send_marketing"] == (group == "send_now"), recipient
            if group == "wait":
                assert posted["not_before"] == not_before


def check_audience(worker: WorkerProcess, history: History, tmp: Path) -> None:
    """The CLI as users run it, over a gzip CSV: the history's recipients (formatted several
    ways), unknown ones and malformed lines."""
    rng = random.Random(4)
    rows: list[tuple[str, str]] = []  # (name, phone as written)
    expected: dict[str, tuple[str, int | None]] = {}
    for recipient, truth in history.truth.items():
        written = f"+{recipient}" if rng.random() < 0.5 else recipient
        rows.append(("known", written))
        expected[written] = expected_group(truth, history.end)
    for country in ("BR", "DE", "US", "IN") * 5:
        phone = phone_for(country, rng)
        rows.append(("new", phone))
        expected[phone] = ("never" if country == "US" else "send_now", None)
    lines = ["name,phone"] + [f"{n},{p}" for n, p in rows]
    bad = {len(lines) + 1: "not a phone", len(lines) + 2: "digits", len(lines) + 3: "no column 2"}
    lines += ["x,hello", "y,12345", "z"]
    rng.shuffle(lines[1:])  # type: ignore[arg-type]  # (a list slice: shuffled in place below)
    path = tmp / "audience.csv.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    out = tmp / "audience-out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli",
            "audience",
            str(path),
            "--url",
            worker.base_url,
            "--at",
            str(history.end),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr  # some lines were bad
    reported = [line for line in done.stderr.splitlines() if line.startswith(f"{path}:")]
    assert {int(line.split(":")[1]) for line in reported} == set(bad), done.stderr
    for line in reported:
        assert bad[int(line.split(":")[1])] in line
    got: dict[str, tuple[str, int | None]] = {}
    for group in ("send_now", "wait", "never"):
        with (out / f"{group}.csv").open() as f:
            for row in csv.DictReader(f):
                assert row["recipient"] not in got
                got[row["recipient"]] = (group, int(row["not_before"]) if group == "wait" else None)
    assert got == expected
    summary = json.loads((out / "summary.json").read_text())
    counts = defaultdict(int)
    for group, _ in expected.values():
        counts[group] += 1
    assert summary["groups"] == counts and summary["bad_lines"] == 3
    assert summary["at"] == history.end
    assert "would fail with 131049 if sent now" in done.stdout


def check_retries(
    bootstrap: str, settings: Settings, history: History, workers: list[WorkerProcess]
) -> tuple[int, int, dict[str, str]]:
    """Every retryable failure has one plan (records of its key: the same plan, then due or
    cancelled), at the right time; due ones are due, cancelled ones never came due. Returns
    (plans due, plans cancelled, the last status of each)."""
    expected = expected_plans(history)
    records: dict[str, list[dict[str, object]]] = defaultdict(list)
    for key, value, _ in consume_all(bootstrap, settings.topic_retries):
        assert key is not None
        records[key.decode()].append(json.loads(value))
    assert set(records) == set(expected)  # none for the other failures
    clock = partition_clock(history, settings.topic_partitions)
    due = cancelled = 0
    final: dict[str, str] = {}
    for wamid, plan in expected.items():
        statuses = [r["status"] for r in records[wamid]]
        assert {r["due"] for r in records[wamid]} == {plan.due}, wamid
        assert {r["failed_at"] for r in records[wamid]} == {plan.failed_at}
        assert not ("due" in statuses and "cancelled" in statuses), statuses
        now = clock[partition_for(plan.recipient, settings.topic_partitions)]
        came = "due" if plan.due + SETTLE + 60 <= now else "planned"
        if plan.cancelled and plan.cancelled_by_opaque:
            assert statuses[-1] == "cancelled", (wamid, records[wamid])
        elif plan.cancelled:  # once its resend's template is known (the send log came first)
            assert statuses[-1] in ("cancelled", came), wamid
        elif plan.due + SETTLE > now or came == "due":  # (within a minute after: either)
            assert statuses[-1] == came, wamid
        due += statuses[-1] == "due"
        cancelled += statuses[-1] == "cancelled"
        final[wamid] = str(statuses[-1])
    # the API lists them by due time, from every worker (a worker that just joined may still
    # be restoring its partitions from the changelogs: asked again until it has them)
    cut = history.end - DAY
    must, must_not = set(), set()
    for wamid, plan in expected.items():
        now = clock[partition_for(plan.recipient, settings.topic_partitions)]
        if plan.due > cut or plan.due + KEEP + SETTLE + 60 <= now:  # deleted two days after
            must_not.add(wamid)
        elif plan.due + KEEP + SETTLE > now:
            must.add(wamid)
    for worker in workers:

        def listing(url: str = worker.base_url) -> list[dict[str, object]] | None:
            status, body = get_json(f"{url}/v1/retries?due_before={cut}&status=all&limit=10000")
            assert status == 200 and isinstance(body, dict) and body["partial"] is False
            listed = {r["wamid"] for r in body["retries"]}
            return body["retries"] if must <= listed and not listed & must_not else None

        retries = wait_until(listing, 60, "the retry plans listed as expected", 1.0)
        dues = [int(str(r["due"])) for r in retries]
        assert dues == sorted(dues)
    return due, cancelled, final


def setup(bootstrap: str, tmp_path: Path) -> tuple[dict[str, str], Settings, History]:
    env = unique_env(
        bootstrap,
        tmp_path / "a",
        DELIVERY_MONITOR_STORE="rocksdb://",
        DELIVERY_MONITOR_SESSION_TIMEOUT="6",
    )
    settings = Settings.from_env(env)
    run_sync(ensure_topics(bootstrap, source_topics(settings), 1))
    return env, settings, generate_history(HistorySpec(recipients=360), seed=21)


def test_sender_tools_across_a_sigkill(
    kafka_bootstrap: str, tmp_path: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    env, settings, history = setup(kafka_bootstrap, tmp_path)
    (first, second), (log_first, log_second) = halves(history)
    worker = start_worker(env)
    feed(kafka_bootstrap, settings, first, log_first)
    wait_drained(kafka_bootstrap, settings.app_id, topics_of(settings), 120, worker.log_tail())
    consumed = len(first)
    feed(kafka_bootstrap, settings, second, log_second)
    # killed as soon as it reads the second half (its output may be part-way in Kafka)
    wait_until(
        lambda: (worker.metric(CONSUMED, {"topic": settings.topic_raw}) or 0) > consumed,
        60,
        "the worker to read the second half",
        0.05,
    )
    assert worker.kill() == -9
    before = defaultdict(set)
    for key, value, _ in consume_all(kafka_bootstrap, settings.topic_retries):
        before[key].add(json.loads(value)["status"])
    pending = {key.decode() for key, statuses in before.items() if statuses == {"planned"}}
    worker = start_worker(env)
    wait_drained(kafka_bootstrap, settings.app_id, topics_of(settings), 180, worker.log_tail())
    due, cancelled, final = check_retries(kafka_bootstrap, settings, history, [worker])
    assert due >= 20 and cancelled >= 20
    # plans still waiting at the kill came due (or were cancelled) after the restart
    assert sum(final[w] in ("due", "cancelled") for w in pending) >= 5
    check_engagement_and_advice(worker, history)
    check_audience(worker, history, tmp_path)


def test_sender_tools_across_a_rebalance(
    kafka_bootstrap: str, tmp_path: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    env, settings, history = setup(kafka_bootstrap, tmp_path)
    (first, second), (log_first, log_second) = halves(history)
    one = start_worker(env)
    two = start_worker(
        {
            **env,
            "DELIVERY_MONITOR_DATA_DIR": str(tmp_path / "b"),
            "DELIVERY_MONITOR_WEB_PORT": str(free_port()),
        }
    )

    def shared() -> bool:
        sizes = [
            len(get_json(f"{w.base_url}/v1/health")[1]["partitions"]["recipients"])
            for w in (one, two)
        ]  # type: ignore[index]
        return sum(sizes) == settings.topic_partitions and min(sizes) > 0

    wait_until(shared, 90, "the two workers to share the partitions", 1.0)
    feed(kafka_bootstrap, settings, first, log_first)
    wait_drained(kafka_bootstrap, settings.app_id, topics_of(settings), 120, one.log_tail())
    assert two.stop() == 0  # its partitions, their plans and timers move to the other worker
    feed(kafka_bootstrap, settings, second, log_second)
    wait_drained(kafka_bootstrap, settings.app_id, topics_of(settings), 180, one.log_tail())
    # a worker joins again: partitions move back; the API sums and forwards across both
    two = start_worker(
        {
            **env,
            "DELIVERY_MONITOR_DATA_DIR": str(tmp_path / "c"),
            "DELIVERY_MONITOR_WEB_PORT": str(free_port()),
        }
    )
    wait_until(shared, 90, "the two workers to share the partitions again", 1.0)
    due, cancelled, _ = check_retries(kafka_bootstrap, settings, history, [one, two])
    assert due >= 20 and cancelled >= 20
    check_audience(one, history, tmp_path)
