"""The audience pre-flight of a 1,000,000-recipient list against a worker holding state.

    python -m bench.bench_audience [--recipients 1000000] [--known 500000] [--json]

Starts a local Kafka broker (unless KAFKA_BOOTSTRAP_SERVERS is set) and a worker (RocksDB
store), gives it state for ``--known`` recipients (a delivered marketing template each; every
tenth a 131049 instead), then runs ``delivery-monitor audience`` as users do over a gzip CSV of
``--recipients`` recipients (the known ones, unknown ones, 2% US numbers) and reports its wall
time, recipients per second, the CLI's peak RSS and the worker's RSS before and after.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench._broker import benchmark_broker, running_worker
from streams.app import internal_topic_names
from streams.settings import Settings
from streams.simulate import Message, envelope, status_item
from testkit.kafka import produce, wait_drained
from testkit.worker import REPO, WorkerProcess

PER_BODY = 50


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--known", type=int, default=500_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-audience-"))
    with (
        benchmark_broker(tmp) as bootstrap,
        running_worker(tmp, bootstrap, DELIVERY_MONITOR_LOG_LEVEL="warning") as running,
    ):
        return measure(args, tmp, bootstrap, *running)


def phone(i: int) -> str:
    return f"55119{i:08d}"


def state_bodies(known: int, now: int) -> list[bytes]:
    bodies = []
    for first in range(0, known, PER_BODY):
        items = []
        for i in range(first, min(first + PER_BODY, known)):
            m = Message(
                f"wamid.BAUD{i}", "106540352242922", "15550783881", phone(i), "BR",
                "spring_sale", "marketing", now - 3_600, [], True,
            )  # fmt: skip
            status = ("failed", now - 3_600, 131049) if i % 10 == 0 else ("delivered", now, None)
            items.append(status_item(m, *status))
        bodies.append(envelope("106540352242922", "15550783881", items))
    return bodies


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:  # exited
        pass
    return 0


def measure(
    args: argparse.Namespace,
    tmp: Path,
    bootstrap: str,
    worker: WorkerProcess,
    settings: Settings,
    env: dict[str, str],
) -> int:
    assert worker.proc is not None
    now = int(time.time())
    produce(bootstrap, settings.topic_raw, state_bodies(args.known, now))
    topics = [settings.topic_raw, *internal_topic_names(settings)]
    wait_drained(bootstrap, settings.app_id, topics, 1_800)
    rss_before = rss_kib(worker.proc.pid)
    path = tmp / "list.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("name,phone\n")
        for i in range(args.recipients):
            us = i % 50 == 49
            f.write(f"r{i},+{'1212555' + f'{i % 10_000:04d}' if us else phone(i)}\n")
    started = time.perf_counter()
    cli = subprocess.Popen(
        [
            sys.executable, "-m", "streams.cli", "audience", str(path),
            "--url", worker.base_url, "--out", str(tmp / "out"), "--progress", "none",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
    )  # fmt: skip
    # the child's own peak, sampled from /proc (VmHWM starts again at exec; the rusage of a
    # child counts the pages it shared with this process when it was forked)
    peak = [0]

    def sample() -> None:
        while cli.poll() is None:
            peak[0] = max(peak[0], rss_kib(cli.pid, "VmHWM"))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, errors = cli.communicate()
    sampler.join()
    wall = time.perf_counter() - started
    cli_peak_mib = peak[0] / 1024
    assert cli.returncode == 0, errors[-2000:]
    summary = json.loads((tmp / "out" / "summary.json").read_text())
    assert summary["recipients"] == args.recipients, summary
    result = {
        "recipients": args.recipients,
        "known_recipients": args.known,
        "seconds": round(wall, 1),
        "recipients_per_s": round(args.recipients / wall),
        "cli_peak_rss_mib": round(cli_peak_mib, 1),
        "worker_rss_before_mib": round(rss_before / 1024, 1),
        "worker_rss_after_mib": round(rss_kib(worker.proc.pid) / 1024, 1),
        "worker_peak_rss_mib": round(rss_kib(worker.proc.pid, "VmHWM") / 1024, 1),
        "groups": summary["groups"],
        "would_hit_131049_now": summary["would_hit_131049_now"],
    }
    print(
        json.dumps(result)
        if args.json
        else f"audience of {args.recipients:,} recipients ({args.known:,} known): "
        f"{wall:.1f} s, {result['recipients_per_s']:,} recipients/s; CLI peak RSS "
        f"{cli_peak_mib:.0f} MiB; worker RSS {result['worker_rss_before_mib']} -> "
        f"{result['worker_rss_after_mib']} MiB; {summary['groups']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
