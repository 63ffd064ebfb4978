"""The benchmark: ``make bench`` or ``python -m bench.run [sections...] [--events N] [--out DIR]``.

On the local real Kafka broker (or KAFKA_BOOTSTRAP_SERVERS), runs the sections asked for (all
but ``steady`` by default; ``--steady-minutes N`` adds it):

- ``throughput``: a pre-produced realistic workload (default 1,000,000 status events) drained
  by a same-run baseline (plain aiokafka consumer + the project's parser, no state) and by the
  full worker: events/s, CPU seconds per million events, peak RSS, worker/baseline;
- ``memory``: N distinct recipients (default: as many as --events) through a worker with the
  RocksDB store: RSS per tracked recipient (target <= 300 B);
- ``latency``: paced live traffic at 50 % of the throughput section's worker events/s (or
  ``--rate``) for 60 s; probe webhooks to /metrics and to the API, p50/p99 (target p99 to
  /metrics < 2 s);
- ``alert``: a 131049 spike after a quiet baseline, to the FIRING message at a local server
  answering like Slack's incoming webhook (target <= 60 s);
- ``steady``: paced traffic for N minutes, worker RSS growth over the last half (<= 10 %);
- ``scaling``: the throughput workload drained by 1 and by 2 workers, on the default partition
  count and on ``--scaling-partitions``;
- ``outage``: a broker of its own stopped for 30 s mid-stream: the worker's CPU and log while
  Kafka is down (targets <= 0.2 cores, <= 256 KiB), and the drain once it is back.

Writes ``<out>/latest.json`` (every figure, the machine, Kafka, the commit, the load on the
machine per section), ``<out>/latest.md`` (the short table, also printed) and a dated copy of the
JSON. Workloads are cached under ``<out>/cache`` by kind, seed and size.
``python -m bench.write_benchmarks_md`` renders ``BENCHMARKS.md`` from a results file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench._broker import benchmark_broker_info
from bench.harness import LoadMeter, git_info, machine_info
from bench.report import render_summary
from bench.sections import DEFAULT_ALERT_PHASE, SECTIONS, Bench

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

DEFAULT_SECTIONS = ["throughput", "memory", "latency", "alert", "scaling", "outage"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "sections",
        nargs="*",
        metavar="SECTION",
        help=f"any of {', '.join(SECTIONS)} (default: {' '.join(DEFAULT_SECTIONS)}, "
        "plus steady with --steady-minutes)",
    )
    p.add_argument("--events", type=int, default=1_000_000, help="status events (throughput)")
    p.add_argument("--recipients", type=int, help="distinct recipients (memory; default: --events)")
    p.add_argument(
        "--memory-per-body", type=int, default=1, help="statuses per webhook body (memory)"
    )
    p.add_argument("--out", type=Path, default=BENCH / "results", help="results directory")
    p.add_argument("--seed", type=int, default=9, help="workload seed")
    p.add_argument("--store", default="rocksdb://", help="worker table store (throughput...)")
    p.add_argument("--rate", type=float, help="offered load for latency/steady (events/s)")
    p.add_argument(
        "--load", type=float, default=0.5, help="offered load as a share of the max (0.5)"
    )
    p.add_argument("--latency-seconds", type=float, default=60.0)
    p.add_argument("--latency-warmup-s", type=float, default=10.0)
    p.add_argument("--probe-every-s", type=float, default=0.5)
    p.add_argument("--metric-poll-s", type=float, default=0.1)
    p.add_argument("--api-poll-s", type=float, default=0.2)
    p.add_argument("--alert-rate", type=float, default=30.0, help="messages/s in the alert run")
    p.add_argument(
        "--alert-baseline-s",
        type=float,
        default=300.0,
        help="background traffic before the spike (300: fills the 5-minute window)",
    )
    p.add_argument("--alert-timeout-s", type=float, default=600.0)
    p.add_argument(
        "--alert-phase",
        type=float,
        default=DEFAULT_ALERT_PHASE,
        help=f"second of the minute the spike starts at ({DEFAULT_ALERT_PHASE:g}: the worst case "
        "of whole-minute evaluation; negative: wherever the quiet period ends)",
    )
    p.add_argument("--steady-minutes", type=float, default=0.0)
    p.add_argument("--steady-sample-s", type=float, default=5.0)
    p.add_argument("--scaling-events", type=int, help="default: --events")
    p.add_argument(
        "--scaling-partitions",
        type=int,
        default=8,
        help="a second partition count for scaling (0: only the default)",
    )
    p.add_argument(
        "--retries", type=int, default=1, help="drains tried again after a worker crash (1)"
    )
    p.add_argument("--keep-tmp", action="store_true", help="keep the broker and worker dirs")
    return p


def streams_digest() -> str:
    """A digest of the worker's code (streams/**/*.py): shows if it changed during a run."""
    h = hashlib.sha256()
    for path in sorted((REPO / "streams").rglob("*.py")):
        h.update(str(path.relative_to(REPO)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def new_results(module: str, argv: list[str] | None, args: argparse.Namespace) -> dict[str, Any]:
    """A results file before its sections: the command, options, machine, commit and code."""
    return {
        "schema": 1,
        "started_at": now_iso(),
        "finished_at": None,
        "command": " ".join([f"python -m {module}", *(argv if argv is not None else sys.argv[1:])]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine_info(),
        "git": git_info(),
        "streams_digest": streams_digest(),
        "kafka": {},
        "sections": {},
    }


def write(results: dict[str, Any], out: Path, stamp: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=1, default=str)
    (out / "latest.json").write_text(text)
    (out / f"run-{stamp}.json").write_text(text)
    (out / "latest.md").write_text(render_summary(results))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser().error(f"unknown section(s) {unknown}: choose from {list(SECTIONS)}")
    sections = args.sections or DEFAULT_SECTIONS + (["steady"] if args.steady_minutes else [])
    if "steady" in sections and not args.steady_minutes:
        args.steady_minutes = 10.0
    if args.recipients is None:
        args.recipients = args.events
    out: Path = args.out
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    tmp = Path(tempfile.mkdtemp(prefix="bench-run-"))
    results = new_results("bench.run", argv, args)
    failed = False
    try:
        with benchmark_broker_info(tmp) as broker:
            results["kafka"] = {"version": broker.version, "where": broker.where}
            bench = Bench(
                bootstrap=broker.bootstrap,
                kafka_version=broker.version,
                broker_pid=broker.pid,
                tmp=tmp,
                cache=out / "cache",
                logs=out / "logs" / stamp,
                args=args,
                log=log,
            )
            for name in sections:
                log(f"section {name}")
                meter = LoadMeter([broker.pid] if broker.pid else []).start()
                cpu0 = time.process_time()
                context = {
                    "started_at": now_iso(),
                    "machine": results["machine"],
                    "git": git_info(),
                    "streams_digest": streams_digest(),
                    "kafka": results["kafka"],
                }
                try:
                    data = SECTIONS[name](bench)
                    section: dict[str, Any] = {"status": "ok", **data}
                except Exception as exc:
                    failed = True
                    traceback.print_exc()
                    section = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[-3000:]}
                load = meter.stop()
                load["bench_process_cores"] = round(
                    (time.process_time() - cpu0) / max(load["seconds"], 0.001), 2
                )
                section.update(context, machine_load=load, finished_at=now_iso())
                results["sections"][name] = section
                bench.results[name] = section
                write(results, out, stamp)
    finally:
        results["finished_at"] = now_iso()
        write(results, out, stamp)
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"kept {tmp}")
    print(render_summary(results), end="")
    log(f"results in {out / 'latest.json'} and {out / 'latest.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
