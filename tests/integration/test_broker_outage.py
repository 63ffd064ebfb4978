"""The worker rides out a broker outage: the broker stops for 30 s mid-stream and comes back on
the same port; the worker recovers without a restart, the counts stay exact, and the Kafka
client's retries do not flood the log."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_pipeline_e2e import all_topics, assert_counts_equal_truth, setup_topics

from streams.localkafka import LocalKafka
from streams.settings import Settings
from streams.simulate import CampaignSpec, generate
from testkit.kafka import produce, produce_keyed, wait_drained
from testkit.worker import WorkerProcess, unique_env, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_worker_recovers_from_a_30_second_broker_outage(tmp_path: Path) -> None:
    base = Settings.from_env()
    broker = LocalKafka(tmp_path / "kafka", base.cache_dir, base.kafka_version)
    bootstrap = broker.start().bootstrap
    worker = None
    try:
        campaign = generate(CampaignSpec(messages=6_000), seed=23)
        env = unique_env(bootstrap, tmp_path / "state", DELIVERY_MONITOR_STORE="rocksdb://")
        settings = setup_topics(env)
        half = len(campaign.payloads) // 2
        produce_keyed(bootstrap, settings.topic_send_log, campaign.send_log)
        produce(bootstrap, settings.topic_raw, campaign.payloads[:half])
        worker = WorkerProcess(env, tmp_path / "worker.log").start()
        consumed = "whatsapp_monitor_records_consumed_total"
        wait_until(
            lambda: (worker.metric(consumed, {"topic": settings.topic_raw}) or 0) > half // 3,
            60,
            "the worker to be mid-stream",
            0.05,
        )
        broker.stop()
        time.sleep(30)
        assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail()
        broker.start()
        produce(bootstrap, settings.topic_raw, campaign.payloads[half:])
        wait_drained(bootstrap, settings.app_id, all_topics(settings), 240, worker.log_tail())
        assert worker.proc.poll() is None  # recovered without a restart
        assert_counts_equal_truth(worker, campaign)
        # aiokafka retries metadata in a tight loop while the broker is down (333,000 error
        # lines, 34 MB, in these 30 s): each message shows once per 10 s (logs.RepeatLimit)
        log = worker.log_path.read_text(errors="replace").splitlines()
        library_errors = [line for line in log if " ERROR aiokafka" in line]
        assert len(library_errors) < 300, library_errors[-20:]
        assert any("held back" in line for line in library_errors)
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()
