"""Throughput of the full worker against a same-run baseline: ``bench.run throughput`` alone.

    python -m bench.bench_pipeline [--events 230000 | --messages 100000] [--json] [--profile F]

Kept for old command lines: it runs the throughput section of ``bench/run.py`` (pre-produced
realistic workload, the baseline consumer + parser in its own process, then the full worker
until its groups have drained) and prints the old flat figures. ``--messages`` sizes the workload
as the old ``generate(CampaignSpec(messages=N))`` did (about 2.34 status events per message);
``--profile`` records a py-spy profile (raw format, GIL only) of the worker's first 20 s.
Results are not written to ``bench/results``; use ``make bench`` for that.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._broker import benchmark_broker_info
from bench.run import parser as run_parser
from bench.sections import Bench, throughput
from testkit.worker import WorkerProcess

EVENTS_PER_MESSAGE = 2.34  # of streams.simulate.generate's default spec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--events", type=int, help="status events (default 230,000)")
    size.add_argument("--messages", type=int, help="messages, as the old benchmark sized it")
    parser.add_argument("--store", default="rocksdb://")
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", help="write a py-spy raw profile of the worker here")
    args = parser.parse_args()
    events = args.events or round((args.messages or 100_000) * EVENTS_PER_MESSAGE)
    run_args = run_parser().parse_args(
        ["throughput", "--events", str(events), "--store", args.store, "--seed", str(args.seed)]
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))

    def profile(workers: list[WorkerProcess]) -> None:
        if not args.profile or workers[0].proc is None:
            return
        py_spy = str(Path(sys.executable).parent / "py-spy")
        pid = str(workers[0].proc.pid)
        subprocess.Popen(
            [py_spy, "record", "-o", args.profile, "-f", "raw", "-d", "20", "--gil", "-p", pid],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    try:
        result = measure(args, run_args, tmp, events, profile)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the broker's and the worker's data
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:36s} {v}")
    return 0


def measure(
    args: argparse.Namespace,
    run_args: argparse.Namespace,
    tmp: Path,
    events: int,
    profile: Callable[[list[WorkerProcess]], None],
) -> dict[str, Any]:
    with benchmark_broker_info(tmp) as broker:
        bench = Bench(
            bootstrap=broker.bootstrap,
            kafka_version=broker.version,
            broker_pid=broker.pid,
            tmp=tmp,
            cache=run_args.out / "cache",
            logs=tmp / "logs",
            args=run_args,
            log=lambda text: print(text, file=sys.stderr, flush=True),
            on_workers=profile,
        )
        r = throughput(bench)
    w, base = r["worker"], r["baseline"]
    return {
        "events": events,
        "payloads": r["workload"]["payloads"],
        "status_events": r["workload"]["status_events"],
        "produce_s": r["produce"]["seconds"],
        "baseline_events_per_s": base["events_per_s"],
        "worker_events_per_s": w["events_per_s"],
        "ratio_worker_to_baseline": r["ratio_worker_to_baseline"],
        "worker_cpu_s_per_million_events": w["cpu_s_per_million_events"],
        "baseline_cpu_s_per_million_events": base["cpu_s_per_million_events"],
        "worker_peak_rss_mb": w["peak_rss_mb"][0],
        "worker_drain_s": w["seconds"],
        "store": args.store,
    }


if __name__ == "__main__":
    sys.exit(main())
