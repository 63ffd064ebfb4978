"""A real 5-minute Slack outage under a steady workload: alerts lost or doubled? stream slowed?

    python -m bench.slack_outage [--outage 300] [--rate 1000] [--out result.json]

A real worker on the real broker (``KAFKA_BOOTSTRAP_SERVERS`` or a local one) with the
production Slack settings (10 s request timeout, backoff capped at 60 s, 24 h horizon) posts
to a local server that answers like a Slack incoming webhook. A producer feeds the raw topic at
a steady rate all along: back-to-back 40-minute campaigns (event time), each with a 131049
spike on its own template, so every campaign fires one incident (FIRING, then RESOLVED).

Phases (wall clock): warm-up, ``--before`` seconds with Slack up, ``--outage`` seconds with
Slack down (answers alternate between 500 and a 30 s hang), then Slack up again until every
notification is delivered. Printed (and written to ``--out``) as JSON: the worker's throughput
(raw records consumed per second) and consumer lag per phase and the ratio outage/before;
notifications written, delivered after the recovery, missing and duplicated (every 200 POST is
matched to its notification by its exact payload), whether each incident's FIRING came before
its RESOLVED, and the pending-notification gauges' maximum.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench._broker import benchmark_broker
from streams.app import internal_topic_names
from streams.asyncutil import run_sync
from streams.core.alerts import NotificationKind, decode_notification
from streams.core.slack_format import render_slack_message
from streams.settings import Settings
from streams.simulate import spike_campaign
from streams.topics import ensure_topics, source_topics
from testkit.kafka import group_lag_async
from testkit.slack import OutageSlack
from testkit.worker import IDLE_AS_IN_PRODUCTION, WorkerProcess, unique_env

CAMPAIGN_START = 1_767_225_600
CAMPAIGN_S = 40 * 60  # spike_campaign's length in event time
GRAFANA = "http://grafana.example.test"
P = "whatsapp_monitor_"


def campaigns(per_minute: int) -> Iterator[bytes]:
    """Back-to-back campaigns, each with a spike on its own template (one incident each)."""
    k = 0
    while True:
        k += 1
        yield from spike_campaign(
            per_minute=per_minute,
            start=CAMPAIGN_START + (k - 1) * CAMPAIGN_S,
            spike_template=f"promo_spike_{k:03d}",
            seed=k,
        ).payloads


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(worker: WorkerProcess, raw_topic: str) -> dict[str, float]:
    wanted = {
        (P + "records_consumed_total", raw_topic): "consumed",
        (P + "slack_pending_notifications", None): "pending",
        (P + "slack_oldest_pending_age_seconds", None): "oldest_age_s",
    }
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(worker.get("/metrics").decode()):
        for sample in family.samples:
            name = wanted.get((sample.name, sample.labels.get("topic")))
            if name is not None:
                out[name] = float(sample.value)
    return out


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, bootstrap: str) -> None:
        self.args, self.tmp, self.bootstrap = args, tmp, bootstrap
        self.slack = OutageSlack(hang_s=30.0)
        self.env = unique_env(
            bootstrap,
            tmp / "state",
            DELIVERY_MONITOR_STORE=args.store,
            DELIVERY_MONITOR_SLACK_WEBHOOK_URL=self.slack.url,
            DELIVERY_MONITOR_GRAFANA_URL=GRAFANA,
            **IDLE_AS_IN_PRODUCTION,
        )
        self.settings = Settings.from_env(self.env)
        self.worker = WorkerProcess(self.env, tmp / "worker.log")
        self.phase = "warmup"
        self.produced = 0
        self.samples: list[dict[str, Any]] = []
        self.marks: dict[str, dict[str, float]] = {}

    async def produce_steadily(self, stop: asyncio.Event) -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        await producer.start()
        bodies = campaigns(self.args.per_minute)
        tick, carry, due = 0.1, 0.0, time.monotonic()
        try:
            while not stop.is_set():
                carry += self.args.rate * tick
                for _ in range(int(carry)):
                    await producer.send(self.settings.topic_raw, next(bodies))
                    self.produced += 1
                carry -= int(carry)
                due += tick
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            await producer.flush()
        finally:
            await producer.stop()

    async def sample(self) -> dict[str, Any]:
        assert self.worker.proc is not None
        row: dict[str, Any] = await asyncio.to_thread(scrape, self.worker, self.settings.topic_raw)
        row |= {
            "t": time.monotonic(),
            "phase": self.phase,
            "cpu_s": cpu_seconds(self.worker.proc.pid),
            "produced": self.produced,
        }
        return row

    async def sampler(self) -> None:
        from aiokafka.errors import KafkaError

        n = 0
        while True:
            row = await self.sample()
            if n % 3 == 0:
                with contextlib.suppress(KafkaError):  # no group coordinator yet
                    row["lag"] = await group_lag_async(
                        self.bootstrap, self.settings.app_id, [self.settings.topic_raw]
                    )
            self.samples.append(row)
            n += 1
            await asyncio.sleep(2.0)

    async def enter(self, phase: str) -> None:
        snapshot = await self.sample()
        self.marks[f"{self.phase}_end"] = self.marks[f"{phase}_start"] = snapshot
        self.phase = phase
        print(f"{time.strftime('%H:%M:%S')} {phase}", file=sys.stderr, flush=True)

    async def run(self) -> dict[str, Any]:
        args = self.args
        self.slack.start()
        run_sync(ensure_topics(self.bootstrap, source_topics(self.settings), 1))
        await asyncio.to_thread(self.worker.start)
        stop = asyncio.Event()
        producing = asyncio.create_task(self.produce_steadily(stop))
        sampling = asyncio.create_task(self.sampler())
        try:
            await asyncio.sleep(args.warmup)
            await self.enter("before")
            await asyncio.sleep(args.before)
            await self.enter("outage")
            self.slack.down(args.outage)
            outage_start = time.monotonic()
            await asyncio.sleep(args.outage)
            recovery = time.monotonic()
            await self.enter("after")
            # Slack is up again: keep the workload on until the backlog is delivered
            while True:
                await asyncio.sleep(2.0)
                row = self.samples[-1]
                if time.monotonic() - recovery >= args.after and row.get("pending") == 0:
                    break
                if time.monotonic() - recovery > 30 * 60:
                    raise RuntimeError("the Slack backlog was not delivered in 30 minutes")
            await self.enter("done")
            stop.set()
            await producing
            await self.drained()
        finally:
            stop.set()
            sampling.cancel()
            if not producing.done():
                producing.cancel()
        return await self.report(outage_start, recovery)

    async def drained(self) -> None:
        """Wait until the worker has processed every record and Slack has every notification."""
        from aiokafka.errors import KafkaError

        topics = [self.settings.topic_raw, *internal_topic_names(self.settings)]
        deadline = time.monotonic() + 30 * 60
        while time.monotonic() < deadline:
            await asyncio.sleep(5.0)
            with contextlib.suppress(KafkaError):
                lag = await group_lag_async(self.bootstrap, self.settings.app_id, topics)
                if lag == 0 and self.samples[-1].get("pending") == 0:
                    await asyncio.sleep(5.0)  # a last notification may be on its way
                    if self.samples[-1].get("pending") == 0:
                        return
        raise RuntimeError("the worker did not drain in 30 minutes")

    async def notifications(self) -> list[tuple[float, Any]]:
        """Every notification of the alerts topic with its write time (monotonic clock)."""
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            self.settings.topic_alerts,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        skew = time.time() - time.monotonic()
        out = []
        try:
            while batch := await consumer.getmany(timeout_ms=3000):
                for records in batch.values():
                    out += [
                        (r.timestamp / 1000 - skew, decode_notification(r.value)) for r in records
                    ]
        finally:
            await consumer.stop()
        return out

    async def report(self, outage_start: float, recovery: float) -> dict[str, Any]:
        written = await self.notifications()
        by_payload: dict[str, str] = {}
        first_written: dict[str, float] = {}
        order: list[str] = []
        notes = {}
        for at, n in written:
            payload = render_slack_message(n, grafana_url=GRAFANA)
            by_payload[json.dumps(payload, sort_keys=True)] = n.id
            if n.id not in first_written:
                first_written[n.id] = at
                order.append(n.id)
                notes[n.id] = n
        delivered: list[tuple[float, str]] = []
        failed = {"500": 0, "hang": 0}
        unmatched = 0
        for at, body, status in self.slack.posts:
            if status != 200:
                failed["500" if status == 500 else "hang"] += 1
                continue
            nid = by_payload.get(json.dumps(body, sort_keys=True))
            if nid is None:
                unmatched += 1
            else:
                delivered.append((at, nid))
        delivered_ids = [nid for _, nid in delivered]
        first_delivery = {nid: at for at, nid in reversed(delivered)}
        held = [nid for nid in order if first_written[nid] < recovery <= first_delivery.get(nid, 0)]
        # per incident, in delivery order: as written (FIRING before RESOLVED), never reordered
        per_incident: dict[str, list[str]] = {}
        for nid in dict.fromkeys(delivered_ids):
            per_incident.setdefault(notes[nid].incident, []).append(nid)
        in_order = all(
            ids == sorted(ids, key=order.index) and notes[ids[0]].kind is NotificationKind.FIRING
            for ids in per_incident.values()
        )

        def phase(name: str) -> dict[str, Any]:
            start, end = self.marks[f"{name}_start"], self.marks[f"{name}_end"]
            seconds = end["t"] - start["t"]
            consumed = end["consumed"] - start["consumed"]
            lags = [s["lag"] for s in self.samples if s["phase"] == name and "lag" in s]
            return {
                "seconds": round(seconds, 1),
                "produced_per_s": round((end["produced"] - start["produced"]) / seconds, 1),
                "consumed_per_s": round(consumed / seconds, 1),
                "worker_cpu_ms_per_1000_records": round(
                    (end["cpu_s"] - start["cpu_s"]) / max(consumed, 1) * 1e6, 1
                ),
                "max_consumer_lag": max(lags, default=None),
            }

        before, outage, after = phase("before"), phase("outage"), phase("after")
        during = [s for s in self.samples if s["phase"] == "outage"]
        return {
            "outage_s": round(recovery - outage_start, 1),
            "rate_per_s": self.args.rate,
            "throughput": {
                "before": before,
                "outage": outage,
                "after": after,
                "ratio_outage_to_before": round(
                    outage["consumed_per_s"] / before["consumed_per_s"], 3
                ),
            },
            "slack": {
                "failed_posts_during_outage": failed,
                "max_pending_notifications": max(int(s.get("pending", 0)) for s in self.samples),
                "max_oldest_pending_age_s": round(
                    max((s.get("oldest_age_s", 0.0) for s in during), default=0.0), 1
                ),
            },
            "alerts": {
                "notifications_written": len(order),
                "written_during_outage": sum(
                    1 for nid in order if outage_start <= first_written[nid] < recovery
                ),
                "delivered": len(set(delivered_ids)),
                "delivered_after_recovery": len(held),
                "duplicates": len(delivered_ids) - len(set(delivered_ids)),
                "missing": len(set(order) - set(delivered_ids)),
                "unmatched_posts": unmatched,
                "fired_and_resolved_in_order": in_order,
                "recovery_to_first_delivery_s": round(
                    min((first_delivery[n] for n in held), default=recovery) - recovery, 1
                ),
                "recovery_to_last_delivery_s": round(
                    max((first_delivery[n] for n in held), default=recovery) - recovery, 1
                ),
            },
            "worker_log": str(self.worker.log_path),
        }

    def close(self) -> None:
        self.worker.stop()
        self.slack.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage", type=float, default=300.0, help="seconds Slack is down")
    parser.add_argument("--before", type=float, default=90.0, help="seconds measured before")
    parser.add_argument("--after", type=float, default=60.0, help="seconds at least after")
    parser.add_argument("--warmup", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=600.0, help="raw webhooks per second")
    parser.add_argument("--per-minute", type=int, default=30, help="campaign sends/template/min")
    parser.add_argument("--store", default="rocksdb://")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-slack-outage-"))
    with benchmark_broker(tmp) as bootstrap:
        bench = Bench(args, tmp, bootstrap)
        try:
            result = asyncio.run(bench.run())
        finally:
            bench.close()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    ok = not result["alerts"]["missing"] and not result["alerts"]["duplicates"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
