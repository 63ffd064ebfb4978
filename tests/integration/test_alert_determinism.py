"""One campaign fed three ways (paced, as a backlog, with the send log late) to three workers on
the real broker: the same incidents and the same advice for every recipient (issue #17).

The campaign is the ``mixed`` scenario of :mod:`streams.scenarios` (45 minutes of event time: a
131049 spike on a small template, US numbers in one number's marketing audience, a retry job on
another number resending to recipients within 24 h of their 131049). The paced feed compresses
event time 60x; the three workers run side by side.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from streams.asyncutil import run_sync
from streams.feed import produce, wait_quiet, worker_inputs
from streams.incidents import Incident, incidents_of
from streams.scenarios import Scenario, build, feed_order
from streams.settings import Settings
from streams.topics import ensure_topics, source_topics
from testkit.kafka import wait_drained
from testkit.worker import IDLE_AS_IN_PRODUCTION, WorkerProcess, get_json, unique_env, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

FEEDS = ("paced", "backlog", "send_log_late")
COMPRESSION = 60.0


@dataclass
class Fed:
    worker: WorkerProcess
    settings: Settings
    produced: dict[str, int]
    incidents: list[Incident]
    advice: dict[str, Any]


def assigned(worker: WorkerProcess) -> bool:
    status, body = get_json(worker.base_url + "/v1/health")
    parts = body.get("partitions", {}) if status == 200 and isinstance(body, dict) else {}
    return bool(parts.get("messages")) and bool(parts.get("recipients"))


def advice_at(worker: WorkerProcess, recipients: list[str], at: int) -> dict[str, Any]:
    """Every recipient's advice as of event time ``at``: one ``POST /v1/advice`` when the API
    takes ``at`` there, else ``GET /v1/recipients/{id}/advice?at=`` one by one."""
    request = urllib.request.Request(
        worker.base_url + "/v1/advice",
        data=json.dumps({"recipients": recipients, "at": at}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        answers = json.loads(resp.read())["advice"]
    if all(a.get("as_of") == at for a in answers):
        return dict(zip(recipients, answers, strict=True))

    def one(r: str) -> Any:
        status, body = get_json(f"{worker.base_url}/v1/recipients/{r}/advice?at={at}")
        assert status == 200, (r, body)
        return body

    with ThreadPoolExecutor(8) as pool:
        return dict(zip(recipients, pool.map(one, recipients), strict=True))


@pytest.fixture(scope="module")
def campaign() -> Scenario:
    return build("mixed")


@pytest.fixture(scope="module")
def fed(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, campaign: Scenario
) -> Iterator[dict[str, Fed]]:
    tmp = tmp_path_factory.mktemp("determinism")
    workers: dict[str, WorkerProcess] = {}
    settings: dict[str, Settings] = {}
    produced: dict[str, dict[str, int]] = {}
    for feed in FEEDS:
        env = unique_env(
            kafka_bootstrap,
            tmp / feed / "state",
            DELIVERY_MONITOR_STORE="memory://",
            **IDLE_AS_IN_PRODUCTION,
        )
        settings[feed] = Settings.from_env(env)
        run_sync(ensure_topics(kafka_bootstrap, source_topics(settings[feed]), 1))
        workers[feed] = WorkerProcess(env, tmp / f"{feed}.log")
    try:
        backlog = feed_order(campaign.records, "backlog")
        stats = asyncio.run(produce(kafka_bootstrap, settings["backlog"], backlog))
        produced["backlog"] = {"raw": stats.raw, "send_log": stats.send_log}
        with ThreadPoolExecutor(len(FEEDS)) as pool:
            list(pool.map(lambda w: w.start(timeout_s=180), workers.values()))
        for w in workers.values():
            wait_until(lambda w=w: assigned(w), 120, f"partitions for the worker on {w.port}")

        async def live() -> None:
            late = feed_order(campaign.records, "send_log_late")
            split = sum(1 for _, r in late if r.kind != "send_log")

            async def send_log_late() -> None:
                first = await produce(kafka_bootstrap, settings["send_log_late"], late[:split])
                await asyncio.sleep(3.0)
                second = await produce(kafka_bootstrap, settings["send_log_late"], late[split:])
                produced["send_log_late"] = {"raw": first.raw, "send_log": second.send_log}

            paced = produce(kafka_bootstrap, settings["paced"], campaign.records, COMPRESSION)
            stats, _ = await asyncio.gather(paced, send_log_late())
            produced["paced"] = {"raw": stats.raw, "send_log": stats.send_log}

        asyncio.run(live())
        for feed in FEEDS:
            s = settings[feed]
            wait_drained(kafka_bootstrap, s.app_id, worker_inputs(s), 300, f"({feed} feed)")

        async def quiet() -> list[list[bytes]]:
            waits = (wait_quiet(kafka_bootstrap, settings[f], 20, 90) for f in FEEDS)
            return list(await asyncio.gather(*waits))

        at = int(campaign.end) + 60
        recipients = campaign.recipients()
        yield {
            feed: Fed(
                workers[feed],
                settings[feed],
                produced[feed],
                incidents_of(raw),
                advice_at(workers[feed], recipients, at),
            )
            for feed, raw in zip(FEEDS, asyncio.run(quiet()), strict=True)
        }
    finally:
        for w in workers.values():
            w.stop()


def describe(incidents: list[Incident], start: int) -> list[str]:
    return [
        f"{i.incident} {i.kind} {i.first_headline} -> {i.last_headline} "
        f"fired at minute {(i.fired_at - start) / 60:.1f}"
        for i in incidents
    ]


def test_every_feed_reaches_its_worker_and_the_paced_one_raises_the_spike(
    fed: dict[str, Fed], campaign: Scenario
) -> None:
    raw = sum(1 for _, r in campaign.records if r.kind != "send_log")
    logs = sum(1 for _, r in campaign.records if r.kind == "send_log")
    for feed, f in fed.items():
        assert f.produced == {"raw": raw, "send_log": logs}, feed
        status, health = get_json(f.worker.base_url + "/v1/health")
        assert status == 200 and isinstance(health, dict)
        assert health["ingest"]["records"] == raw, feed
        assert health["messages"]["send_log"] == logs, feed
    spikes = [
        i
        for i in fed["paced"].incidents
        if i.kind == "spike" and str(i.last_headline) == "template:promo_small"
    ]
    assert spikes, describe(fed["paced"].incidents, campaign.start)


@pytest.mark.parametrize("feed", ["backlog", "send_log_late"])
def test_the_same_incidents_as_the_paced_feed(
    fed: dict[str, Fed], campaign: Scenario, feed: str
) -> None:
    """Same incident keys, kinds, headline scopes at FIRING and firing minutes."""
    paced = sorted(i.signature() for i in fed["paced"].incidents)
    other = sorted(i.signature() for i in fed[feed].incidents)
    assert other == paced, (
        f"paced: {describe(fed['paced'].incidents, campaign.start)}; "
        f"{feed}: {describe(fed[feed].incidents, campaign.start)}"
    )


@pytest.mark.parametrize("feed", ["backlog", "send_log_late"])
def test_the_same_advice_for_every_recipient_as_the_paced_feed(
    fed: dict[str, Fed], feed: str
) -> None:
    paced, other = fed["paced"].advice, fed[feed].advice
    differ = sorted(r for r in paced if paced[r] != other.get(r))
    how = Counter(f"{paced[r]['reasons']} -> {(other.get(r) or {}).get('reasons')}" for r in differ)
    assert not differ, f"{len(differ)} of {len(paced)} recipients differ (paced -> {feed}): {how}"


def test_the_advice_compared_is_as_of_the_event_time_asked(
    fed: dict[str, Fed], campaign: Scenario
) -> None:
    """The advice compared above is real: one answer per recipient, as of the time asked, with
    recipients held back for each reason the campaign gives (131049 cooldowns, resends within
    24 h of one, the US pause)."""
    advice = fed["paced"].advice
    at = int(campaign.end) + 60
    assert set(advice) == set(campaign.recipients())
    assert {a["as_of"] for a in advice.values()} == {at}
    reasons = {r for a in advice.values() for r in a["reasons"]}
    assert {"per_user_limit_cooldown", "resend_storm_extension", "us_marketing_pause"} <= reasons
