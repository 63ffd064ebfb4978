"""Latency of POST /v1/advice with 10,000 recipients, on the local real broker and a worker.

    python -m bench.bench_advice [--recipients 10000] [--repeat 20] [--json]

Starts a local Kafka broker (unless KAFKA_BOOTSTRAP_SERVERS is set) and a worker, feeds it
statuses for half of the recipients (some with 131049), then times batch advice requests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench._broker import benchmark_broker, running_worker
from streams.app import internal_topic_names
from streams.settings import Settings
from streams.simulate import Message, envelope, status_item
from testkit.kafka import produce, wait_drained
from testkit.worker import WorkerProcess


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-advice-"))
    with (
        benchmark_broker(tmp) as bootstrap,
        running_worker(tmp, bootstrap) as (worker, settings, _),
    ):
        return measure(args, bootstrap, worker, settings)


def measure(
    args: argparse.Namespace, bootstrap: str, worker: WorkerProcess, settings: Settings
) -> int:
    now = int(time.time())
    recipients = [f"5511977{i:06d}" for i in range(args.recipients)]
    bodies = []
    for i, r in enumerate(recipients[: args.recipients // 2]):
        m = Message(
            f"wamid.BA{i}",
            "106540352242922",
            "15550783881",
            r,
            "BR",
            "t",
            "marketing",
            now - 600,
            [],
            True,
        )
        status = ("failed", now - 600, 131049) if i % 10 == 0 else ("delivered", now - 600, None)
        bodies.append(envelope(m.sender, m.display, [status_item(m, *status)]))
    produce(bootstrap, settings.topic_raw, bodies)
    wait_drained(
        bootstrap, settings.app_id, [settings.topic_raw, *internal_topic_names(settings)], 300
    )
    payload = json.dumps({"recipients": recipients}).encode()
    times = []
    for _ in range(args.repeat):
        req = urllib.request.Request(
            f"{worker.base_url}/v1/advice",
            data=payload,
            headers={"Content-Type": "application/json"},
        )
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=120) as resp:
            answers = json.loads(resp.read())["advice"]
        times.append(time.perf_counter() - t0)
        assert len(answers) == len(recipients)
        blocked = sum(1 for a in answers if not a["may_send_marketing"])
        assert blocked == len(range(0, args.recipients // 2, 10)), blocked
    times.sort()
    result = {
        "recipients_per_request": len(recipients),
        "requests": args.repeat,
        "p50_s": round(statistics.median(times), 4),
        "p99_s": round(times[min(len(times) - 1, int(len(times) * 0.99))], 4),
        "recipients_per_s": round(len(recipients) / statistics.median(times)),
    }
    print(
        json.dumps(result)
        if args.json
        else f"POST /v1/advice x{len(recipients)}: p50 {result['p50_s'] * 1000:.0f} ms, "
        f"p99 {result['p99_s'] * 1000:.0f} ms ({result['recipients_per_s']} recipients/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
