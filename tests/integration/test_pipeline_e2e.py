"""The pipeline on the real broker: a generated campaign in, exact counts out of the HTTP API."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.app import internal_topic_names
from streams.asyncutil import run_sync
from streams.settings import Settings
from streams.simulate import Campaign, CampaignSpec, generate
from streams.topics import ensure_topics, source_topics
from testkit.kafka import consume_all, produce, produce_keyed, wait_drained
from testkit.worker import WorkerProcess, get_json, unique_env, wait_until

pytestmark = [pytest.mark.kafka]


def setup_topics(env: dict[str, str]) -> Settings:
    settings = Settings.from_env(env)
    run_sync(ensure_topics(env["KAFKA_BOOTSTRAP_SERVERS"], source_topics(settings), 1))
    return settings


def all_topics(settings: Settings) -> list[str]:
    return [settings.topic_raw, settings.topic_send_log, *internal_topic_names(settings)]


def assert_counts_equal_truth(worker: WorkerProcess, campaign: Campaign) -> None:
    truth = campaign.truth
    for path, expected in (
        ("templates", truth.templates),
        ("senders", truth.senders),
        ("countries", truth.countries),
        ("campaigns", truth.campaigns),
    ):
        for name, counts in expected.items():
            status, body = get_json(f"{worker.base_url}/v1/{path}/{name}")
            assert status == 200, body
            assert isinstance(body, dict)
            got = body["windows"]["24h"]["counts"]
            assert got == dict(+counts), f"{path}/{name}: got {got}, truth {dict(+counts)}"
            assert body["partial"] is False
    # every status was attributed in the end (send log before or after the statuses)
    _, unknown = get_json(f"{worker.base_url}/v1/templates/unknown")
    assert isinstance(unknown, dict)
    assert unknown["windows"]["24h"]["counts"] == {}
    rng = random.Random(1)
    delivered = list(truth.marketing_delivered)
    sample = set(rng.sample(delivered, min(150, len(delivered)))) | set(truth.limit_failures)
    for recipient in sample:
        status, body = get_json(f"{worker.base_url}/v1/recipients/{recipient}")
        assert status == 200, body
        assert isinstance(body, dict)
        assert body["marketing_delivered"]["7d"] == truth.marketing_delivered[recipient]
        assert body["limit_failures"]["7d"] == truth.limit_failures[recipient]


def produce_campaign(bootstrap: str, settings: Settings, campaign: Campaign) -> None:
    """Half of the send log before the webhooks, half after (statuses before their record)."""
    half = len(campaign.send_log) // 2
    produce_keyed(bootstrap, settings.topic_send_log, campaign.send_log[:half])
    produce(bootstrap, settings.topic_raw, campaign.payloads)
    produce_keyed(bootstrap, settings.topic_send_log, campaign.send_log[half:])


def assert_dead_letters_are_the_garbage(bootstrap: str, settings: Settings, c: Campaign) -> None:
    records = consume_all(bootstrap, settings.topic_dead_letter)
    rejected = {k: v for k, v, h in records if h.get("dlq.partial") == b"false"}
    assert sorted(rejected.values()) == sorted(c.garbage)  # byte for byte
    for key, _, headers in records:
        assert key is not None and headers["dlq.topic"] == settings.topic_raw.encode()
        assert headers["dlq.reason"]


def test_campaign_counts_through_the_api_equal_the_truth(
    kafka_bootstrap: str, tmp_path: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    """20,000 messages: 10% duplicate POSTs, shuffled, batched, 1% garbage, half of the send
    log after the statuses; every count read back over HTTP equals the generated truth."""
    campaign = generate(CampaignSpec(messages=20_000), seed=11)
    assert len(campaign.garbage) > 100
    env = unique_env(kafka_bootstrap, tmp_path / "state")
    settings = setup_topics(env)
    worker = start_worker(env)
    produce_campaign(kafka_bootstrap, settings, campaign)
    wait_drained(kafka_bootstrap, settings.app_id, all_topics(settings), 240, worker.log_tail())
    assert_counts_equal_truth(worker, campaign)
    assert_dead_letters_are_the_garbage(kafka_bootstrap, settings, campaign)
    duplicates = worker.metric("whatsapp_monitor_duplicate_statuses_total")
    assert duplicates is not None and duplicates > 0
    rejected = worker.metric(
        "whatsapp_monitor_dead_letters_total", {"stage": "ingest", "kind": "rejected"}
    )
    assert rejected == len(campaign.garbage)


@pytest.mark.kafka_smoke
def test_small_campaign_exact_on_this_broker_version(
    kafka_bootstrap: str, tmp_path: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    """A 2,000-message campaign counts exactly (the smoke check run on Kafka 3.9 and 4.x)."""
    campaign = generate(CampaignSpec(messages=2_000), seed=12)
    env = unique_env(kafka_bootstrap, tmp_path / "state", DELIVERY_MONITOR_STORE="memory://")
    settings = setup_topics(env)
    worker = start_worker(env)
    produce_campaign(kafka_bootstrap, settings, campaign)
    wait_drained(kafka_bootstrap, settings.app_id, all_topics(settings), 120, worker.log_tail())
    assert_counts_equal_truth(worker, campaign)


def test_sigkill_mid_stream_then_restart_counts_stay_exact(
    kafka_bootstrap: str, tmp_path: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    """SIGKILL while the campaign streams in, restart on the same state (RocksDB + changelogs):
    the replayed inputs are applied once, counts equal the truth."""
    campaign = generate(CampaignSpec(messages=10_000), seed=13)
    env = unique_env(kafka_bootstrap, tmp_path / "state", DELIVERY_MONITOR_STORE="rocksdb://")
    settings = setup_topics(env)
    produce_campaign(kafka_bootstrap, settings, campaign)
    consumed = "whatsapp_monitor_records_consumed_total"
    labels = {"topic": settings.topic_raw}
    total = len(campaign.payloads)
    for fraction in (0.15, 0.35):
        worker = start_worker(env)
        at_kill = wait_until(
            lambda w=worker, f=fraction: (n := w.metric(consumed, labels) or 0) >= f * total and n,
            120,
            f"the worker to consume part of the raw topic ({fraction})",
            0.05,
        )
        assert worker.kill() == -9
        assert at_kill < total  # killed mid-stream, not after it drained
    worker = start_worker(env)
    wait_drained(kafka_bootstrap, settings.app_id, all_topics(settings), 240, worker.log_tail())
    assert_counts_equal_truth(worker, campaign)


def test_idle_recipients_messages_and_old_buckets_expire_in_event_time(
    kafka_bootstrap: str, tmp_path: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    """A recipient idle for longer than the retention (8 days of event time, 30 days after a
    marketing delivery: engagement counts it) is removed, and so are its messages (7 days) and
    the template's minute buckets (48 hours). The recipients stage's event time is its slowest
    messages partition's: the later traffic reaches it from each of them."""
    from streams.simulate import Message, envelope, status_item
    from streams.stages import partition_for

    env = unique_env(kafka_bootstrap, tmp_path / "state", DELIVERY_MONITOR_STORE="memory://")
    settings = setup_topics(env)
    n = settings.topic_partitions
    worker = start_worker(env)
    t0 = 1_767_225_600
    old = "5511987000001"

    def msg(wamid: str, recipient: str, ts: int, template: str) -> Message:
        return Message(
            wamid,
            "106540352242922",
            "15550783881",
            recipient,
            "BR",
            template,
            "marketing",
            ts,
            [],
            True,
        )

    def body(m: Message, status: str, ts: int, code: int | None = None) -> bytes:
        return envelope(m.sender, m.display, [status_item(m, status, ts, code)])

    first = msg("wamid.OLD-1", old, t0, "old_promo")
    limited = msg("wamid.OLD-2", old, t0 + 5, "old_promo")
    produce(
        kafka_bootstrap,
        settings.topic_raw,
        [
            body(first, "sent", t0),
            body(first, "delivered", t0 + 2),
            body(limited, "failed", t0 + 5, 131049),
        ],
    )
    wait_drained(kafka_bootstrap, settings.app_id, all_topics(settings), 60)
    status, state = get_json(f"{worker.base_url}/v1/recipients/{old}")
    assert status == 200 and isinstance(state, dict)
    assert state["marketing_delivered"]["7d"] == 1 and state["limit_failures"]["7d"] == 1
    _, tpl = get_json(f"{worker.base_url}/v1/templates/old_promo?at={t0 + 60}")
    assert isinstance(tpl, dict) and tpl["windows"]["5m"]["counts"]["attempted"] == 2

    # 31 days later other traffic moves event time forward on the same partitions.
    later = t0 + 31 * 86_400
    r_part = partition_for(old, n)
    m_parts = {partition_for(first.wamid, n), partition_for(limited.wamid, n)}
    bodies, i = [], 0
    covered: set[tuple[str, int]] = set()
    while len(covered) < n + len(m_parts):
        recipient = f"55119871{i:05d}"  # never the old recipient
        m = msg(f"wamid.NEW-{i}", recipient, later + i, "new_promo")
        i += 1
        if partition_for(recipient, n) == r_part:
            covered.add(("r", partition_for(m.wamid, n)))
        if partition_for(m.wamid, n) in m_parts:
            covered.add(("m", partition_for(m.wamid, n)))
        bodies += [body(m, "sent", later + i), body(m, "delivered", later + i + 1)]
    produce(kafka_bootstrap, settings.topic_raw, bodies)
    wait_drained(kafka_bootstrap, settings.app_id, all_topics(settings), 60)

    status, gone = get_json(f"{worker.base_url}/v1/recipients/{old}")
    assert status == 404, gone
    _, tpl = get_json(f"{worker.base_url}/v1/templates/old_promo?at={t0 + 60}")
    assert isinstance(tpl, dict) and tpl["windows"]["24h"]["counts"] == {}
    expired = {
        kind: worker.metric("whatsapp_monitor_expired_state_keys_total", {"kind": kind})
        for kind in ("message", "bucket", "recipient")
    }
    assert expired["recipient"] == 1, expired
    assert expired["message"] == 2, expired
    assert expired["bucket"] and expired["bucket"] >= 3, expired  # template, sender, country
