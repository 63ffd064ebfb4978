"""Two workers share the topics: the API answers from either (buckets summed across workers,
recipients forwarded to their owner); when one stops, the other takes its partitions over,
restores their state from the changelogs, and the counts stay exact."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
from test_pipeline_e2e import all_topics, produce_campaign, setup_topics

from streams.simulate import Campaign, CampaignSpec, generate
from testkit.kafka import wait_drained
from testkit.worker import WorkerProcess, free_port, get_json, unique_env, wait_until

pytestmark = [pytest.mark.kafka]


def assert_exact_from(worker: WorkerProcess, campaign: Campaign) -> None:
    for name, counts in campaign.truth.templates.items():
        status, body = get_json(f"{worker.base_url}/v1/templates/{name}")
        assert status == 200 and isinstance(body, dict), body
        assert body["partial"] is False
        assert body["windows"]["24h"]["counts"] == dict(+counts), name
    rng = random.Random(3)
    for recipient in rng.sample(sorted(campaign.truth.marketing_delivered), 40):
        status, body = get_json(f"{worker.base_url}/v1/recipients/{recipient}")
        assert status == 200 and isinstance(body, dict), body
        assert body["marketing_delivered"]["7d"] == campaign.truth.marketing_delivered[recipient]


def test_api_answers_from_either_worker_and_survives_one_stopping(
    kafka_bootstrap: str, tmp_path: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    campaign = generate(CampaignSpec(messages=4_000), seed=17)
    env = unique_env(kafka_bootstrap, tmp_path / "a", DELIVERY_MONITOR_STORE="rocksdb://")
    settings = setup_topics(env)
    first = start_worker(env)
    second = start_worker(
        {
            **env,
            "DELIVERY_MONITOR_DATA_DIR": str(tmp_path / "b"),
            "DELIVERY_MONITOR_WEB_PORT": str(free_port()),
        }
    )

    def both_assigned() -> bool:
        sizes = []
        for w in (first, second):
            _, health = get_json(f"{w.base_url}/v1/health")
            assert isinstance(health, dict)
            sizes.append(len(health["partitions"]["messages"]))
        return sum(sizes) == settings.topic_partitions and min(sizes) > 0

    wait_until(both_assigned, 90, "the two workers to share the partitions", 1.0)
    produce_campaign(kafka_bootstrap, settings, campaign)
    wait_drained(kafka_bootstrap, settings.app_id, all_topics(settings), 240)
    assert_exact_from(first, campaign)
    assert_exact_from(second, campaign)

    assert second.stop() == 0
    wait_until(
        lambda: (
            len(get_json(f"{first.base_url}/v1/health")[1]["partitions"]["messages"])  # type: ignore[index]
            == settings.topic_partitions
        ),
        90,
        "the remaining worker to own every partition",
        1.0,
    )
    wait_until(
        lambda: get_json(f"{first.base_url}/v1/templates/promo_00")[0] == 200,
        30,
        "the API to answer after the rebalance",
    )
    assert_exact_from(first, campaign)
