"""The ranking endpoints, campaigns and ``/v1/alerts`` on two real workers sharing the topics:
every ranking sums both workers' partitions and equals the campaign's truth, in every sort order,
window and limit; bad parameters get 400 with a message; either worker answers ``/v1/alerts``
(one forwards to the other)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from test_pipeline_e2e import all_topics, produce_campaign, setup_topics

from streams.simulate import Campaign, CampaignSpec, generate
from testkit.kafka import wait_drained
from testkit.worker import WorkerProcess, free_port, get_json, unique_env, wait_until

pytestmark = [pytest.mark.kafka]

START = 1_767_225_600
SPEC = CampaignSpec(
    messages=3_000,
    start=START,
    duration=1_800,
    failure_ratio=0.2,
    campaigns=("spring-sale", "summer", "winback 2026", ""),
)
AT = START + 1_800 + 900  # after the last status (reads come up to 5 minutes later)
DIMENSIONS = {
    "templates": ("template", "templates"),
    "senders": ("sender", "senders"),
    "countries": ("country", "countries"),
    "campaigns": ("campaign", "campaigns"),
}


class Pair:
    def __init__(self, first: WorkerProcess, second: WorkerProcess, campaign: Campaign) -> None:
        self.workers = (first, second)
        self.campaign = campaign

    def get(self, path: str, worker: int = 0) -> tuple[int, Any]:
        return get_json(self.workers[worker].base_url + path)


@pytest.fixture(scope="module")
def pair(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("rankings")
    campaign = generate(SPEC, seed=23)
    env = unique_env(kafka_bootstrap, tmp / "a", DELIVERY_MONITOR_LAG_INTERVAL="2")
    settings = setup_topics(env)
    first = WorkerProcess(env, tmp / "worker-a.log")
    other = {**env, "DELIVERY_MONITOR_DATA_DIR": str(tmp / "b")}
    second = WorkerProcess({**other, "DELIVERY_MONITOR_WEB_PORT": str(free_port())}, tmp / "b.log")
    try:
        first.start()
        second.start()

        def both_assigned() -> bool:
            sizes = []
            for w in (first, second):
                _, health = get_json(f"{w.base_url}/v1/health")
                sizes.append(len(health["partitions"]["messages"]))
            return sum(sizes) == settings.topic_partitions and min(sizes) > 0

        try:
            wait_until(both_assigned, 90, "the two workers to share the partitions", 1.0)
            produce_campaign(kafka_bootstrap, settings, campaign)
            wait_drained(kafka_bootstrap, settings.app_id, all_topics(settings), 240)
        except AssertionError as exc:
            logs = "\n".join(f"--- {w.log_path.name}\n{w.log_tail(60)}" for w in (first, second))
            raise AssertionError(f"{exc}\n{logs}") from None
        yield Pair(first, second, campaign)
    finally:
        second.stop()
        first.stop()


def truth_of(pair: Pair, kind: str) -> dict[str, dict[str, int]]:
    expected = getattr(pair.campaign.truth, DIMENSIONS[kind][1])
    return {name: dict(+counts) for name, counts in expected.items()}


@pytest.mark.parametrize("kind", list(DIMENSIONS))
def test_each_ranking_sums_both_workers_and_equals_the_truth(pair: Pair, kind: str) -> None:
    field = DIMENSIONS[kind][0]
    truth = truth_of(pair, kind)
    for worker in (0, 1):
        status, body = pair.get(f"/v1/{kind}?window=24h&at={AT}&sort=name&limit=1000", worker)
        assert status == 200, body
        assert body["partial"] is False and body["as_of"] == AT and body["window"] == "24h"
        assert body["total"] == len(truth)
        assert [e[field] for e in body["entries"]] == sorted(truth)
        assert {e[field]: e["counts"] for e in body["entries"]} == truth
        for entry in body["entries"]:
            assert entry["attempted"] == truth[entry[field]]["attempted"]
            assert entry["failed"] == sum(
                n for k, n in truth[entry[field]].items() if k.startswith("failed.")
            )


@pytest.mark.parametrize(
    "sort", ["limit_errors", "limit_error_ratio", "failure_ratio", "attempted", "read"]
)
def test_sort_orders_and_limits(pair: Pair, sort: str) -> None:
    _, everything = pair.get(f"/v1/templates?window=24h&at={AT}&sort={sort}&limit=1000")
    keys = [(-e[sort], e["template"]) for e in everything["entries"]]
    assert keys == sorted(keys)
    status, top = pair.get(f"/v1/templates?window=24h&at={AT}&sort={sort}&limit=3", 1)
    assert status == 200
    assert top["total"] == everything["total"] == 12
    assert top["entries"] == everything["entries"][:3]


@pytest.mark.parametrize("window", ["5m", "1h"])
def test_shorter_windows_equal_the_per_name_endpoints(pair: Pair, window: str) -> None:
    at = START + 1_500
    for kind, (field, _) in DIMENSIONS.items():
        status, body = pair.get(f"/v1/{kind}?window={window}&at={at}&limit=1000")
        assert status == 200 and body["entries"], (kind, body)
        for entry in body["entries"]:
            name = entry[field]
            _, one = pair.get(f"/v1/{kind}/{quote(name, safe='')}?at={at}", 1)
            assert one["windows"][window]["counts"] == entry["counts"], (kind, name)
            assert one["windows"][window]["limit_errors"] == entry["limit_errors"]


def test_a_campaign_has_its_own_endpoint(pair: Pair) -> None:
    truth = truth_of(pair, "campaigns")
    assert set(truth) == {"spring-sale", "summer", "winback 2026"}
    for name, counts in truth.items():
        status, body = pair.get(f"/v1/campaigns/{quote(name)}?at={AT}")
        assert status == 200, body
        assert body["campaign"] == name and body["partial"] is False
        assert body["windows"]["24h"]["counts"] == counts


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("window=7d", "window must be one of 5m, 1h, 24h (got '7d')"),
        ("at=soon", "at must be unix seconds"),
        ("sort=worst", "sort must be one of"),
        ("limit=0", "limit must be an integer from 1 to 1000"),
        ("limit=5000", "limit must be an integer from 1 to 1000"),
    ],
)
def test_bad_parameters_get_400_with_a_message(pair: Pair, query: str, message: str) -> None:
    status, body = pair.get(f"/v1/campaigns?{query}")
    assert status == 400
    assert message in body["error"]


def test_either_worker_answers_what_is_firing_and_both_report_consumer_lag(pair: Pair) -> None:
    answers = [pair.get("/v1/alerts", worker) for worker in (0, 1)]
    assert [status for status, _ in answers] == [200, 200]
    assert answers[0][1] == answers[1][1]
    assert set(answers[0][1]) == {"as_of", "as_of_iso", "open", "resolved"}
    assert answers[0][1]["as_of"] > 0  # from the worker that runs the alerting stage

    def lag_measured() -> dict[str, Any] | None:
        _, health = pair.get("/v1/health", 1)
        return health["consumer_lag"]

    lag = wait_until(lag_measured, 30, "a consumer-lag measurement")
    groups = {row["group"] for row in lag["topics"]}
    app_id = pair.workers[0].env["DELIVERY_MONITOR_APP_ID"]
    assert groups == {app_id, f"{app_id}-ingest"}
    assert all(row["records"] >= 0 and row["seconds"] >= 0 for row in lag["topics"])


def test_a_worker_that_does_not_answer_makes_the_answer_partial(pair: Pair) -> None:
    """Last in this module: the second worker is killed, and until the group notices (its
    session timeout) the first one cannot ask it: the ranking and the per-name answers say
    ``partial`` and hold only the first worker's share."""
    complete = pair.get(f"/v1/templates?window=24h&at={AT}&sort=name&limit=1000")[1]
    assert pair.workers[1].kill() == -9
    status, body = pair.get(f"/v1/templates?window=24h&at={AT}&sort=name&limit=1000")
    assert status == 200 and body["partial"] is True
    assert sum(e["attempted"] for e in body["entries"]) < sum(
        e["attempted"] for e in complete["entries"]
    )
    name = complete["entries"][0]["template"]
    status, one = pair.get(f"/v1/templates/{name}?at={AT}")
    assert status == 200 and one["partial"] is True
