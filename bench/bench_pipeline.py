"""Throughput of the full worker against a same-run baseline, on the local real broker.

    python bench/bench_pipeline.py [--messages 100000] [--json]

1. pre-produces a generated campaign (mostly single-status payloads, some batched, duplicates,
   several templates/senders/countries) so producing is not measured;
2. baseline: a plain aiokafka consumer reads the raw topic and parses every body with the
   project's parser, keeping no state (the consume-and-parse ceiling of one Python process);
3. the full worker (parse, dedup, attribution, tables, metrics, detector) runs until its group
   has drained every topic; reports status events/s, CPU seconds per million events, peak RSS and
   the ratio worker/baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _broker import benchmark_broker
from support import WorkerProcess, group_lag, produce_async, unique_env

from streams.app import internal_topic_names
from streams.asyncutil import run_sync
from streams.core import parse_webhook
from streams.settings import Settings
from streams.simulate import CampaignSpec, generate
from streams.topics import ensure_topics, source_topics


async def baseline(bootstrap: str, topic: str, expected: int) -> tuple[float, int]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    statuses = records = 0
    start = time.perf_counter()
    try:
        while records < expected:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for rs in batch.values():
                for r in rs:
                    records += 1
                    try:  # noqa: SIM105 - the hot loop of the baseline
                        statuses += len(parse_webhook(r.value).statuses)
                    except ValueError:
                        pass
    finally:
        await consumer.stop()
    return time.perf_counter() - start, statuses


def proc_stats(pid: int) -> tuple[float, int]:
    """CPU seconds (user+system) and peak RSS bytes of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    peak = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
    return cpu, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--store", default="rocksdb://")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", help="write a py-spy raw profile of the worker here")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    with benchmark_broker(tmp) as bootstrap:
        return measure(args, tmp, bootstrap)


def measure(args: argparse.Namespace, tmp: Path, bootstrap: str) -> int:
    worker = None
    try:
        env = unique_env(
            bootstrap,
            tmp / "state",
            DELIVERY_MONITOR_STORE=args.store,
            DELIVERY_MONITOR_LOG_LEVEL="warning",
        )
        settings = Settings.from_env(env)
        run_sync(ensure_topics(bootstrap, source_topics(settings), 1))
        campaign = generate(CampaignSpec(messages=args.messages, garbage_ratio=0.001), seed=9)
        t0 = time.perf_counter()
        asyncio.run(produce_async(bootstrap, settings.topic_raw, campaign.payloads))
        produce_s = time.perf_counter() - t0
        base_s, statuses = asyncio.run(
            baseline(bootstrap, settings.topic_raw, len(campaign.payloads))
        )
        topics = [settings.topic_raw, *internal_topic_names(settings)]
        worker = WorkerProcess(env, tmp / "worker.log")
        t0 = time.perf_counter()
        worker.start()
        ready_s = time.perf_counter() - t0
        assert worker.proc is not None
        if args.profile:
            import subprocess

            subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "-o",
                    args.profile,
                    "-f",
                    "raw",
                    "-d",
                    "20",
                    "-p",
                    str(worker.proc.pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        from aiokafka.errors import KafkaError

        while True:
            try:
                if group_lag(bootstrap, settings.app_id, topics) == 0:
                    break
            except KafkaError:
                pass  # no group coordinator yet
            time.sleep(0.5)
        worker_s = time.perf_counter() - t0 - ready_s
        cpu_s, peak_rss = proc_stats(worker.proc.pid)
        result = {
            "messages": args.messages,
            "payloads": len(campaign.payloads),
            "status_events": statuses,
            "produce_s": round(produce_s, 2),
            "baseline_events_per_s": round(statuses / base_s),
            "worker_events_per_s": round(statuses / worker_s),
            "ratio_worker_to_baseline": round(base_s / worker_s, 3),
            "worker_cpu_s_per_million_events": round(cpu_s / statuses * 1e6, 1),
            "worker_peak_rss_mb": round(peak_rss / 2**20, 1),
            "worker_start_s": round(ready_s, 2),
            "store": args.store,
        }
        if args.json:
            print(json.dumps(result))
        else:
            for k, v in result.items():
                print(f"{k:36s} {v}")
        return 0
    finally:
        if worker is not None:
            worker.stop()


if __name__ == "__main__":
    sys.exit(main())
