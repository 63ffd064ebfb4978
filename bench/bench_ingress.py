"""Load run of the webhook ingress: N signed POSTs from concurrent clients, then count the records.

Run ``python -m bench.bench_ingress`` (``--json`` for machine-readable output). It starts its own
local Kafka broker in a temporary directory unless ``KAFKA_BOOTSTRAP_SERVERS`` is set, runs
``delivery-monitor ingress`` as users run it (its own process, a fresh raw topic), sends
``--requests`` distinct signed status webhooks from ``--concurrency`` aiohttp clients, and then
reads the raw topic back: the run fails (exit 1) unless it holds exactly one record per POST.

Latency is measured by the client, per request, from send to the end of the response, so it
includes Kafka's acknowledgement. On a shared machine the figures vary run to run; the record
count must not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.ingress import SIGNATURE_HEADER, sign
from streams.localkafka import LocalKafka
from streams.settings import Settings
from testkit.worker import REPO, free_port

SECRET = "bench-app-secret"


def webhook(i: int) -> bytes:
    """A distinct delivered-status webhook (about 600 bytes, as Meta sends one status)."""
    return (
        '{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{'
        '"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881",'
        '"phone_number_id":"106540352242922"},"statuses":[{"id":"wamid.HBgLMTY1MDM4Nzk0MzkVAgAR'
        f'GBI{i:012d}","status":"delivered","timestamp":"{1_751_000_000 + i // 100}",'
        '"recipient_id":"16505551234","conversation":{"id":"6ceb9d929c1a3b5d2a3a27a7ab8c6a5b",'
        '"origin":{"type":"marketing"}},"pricing":{"billable":true,"pricing_model":"PMP",'
        '"category":"marketing","type":"regular"}}]},"field":"messages"}]}]}'
    ).encode()


async def wait_healthy(
    http: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the ingress exited with {proc.returncode} during start")
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(url + "/health") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.2)
    raise SystemExit("the ingress did not become healthy within 120 s")


async def load(url: str, n: int, concurrency: int) -> tuple[float, list[float], Counter[int]]:
    bodies: Iterator[int] = iter(range(n))
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    secret = SECRET.encode()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def client() -> None:
            for i in bodies:
                body = webhook(i)
                headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body)}
                started = time.perf_counter()
                async with http.post(url + "/webhook", data=body, headers=headers) as resp:
                    await resp.read()
                latencies.append(time.perf_counter() - started)
                statuses[resp.status] += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies, statuses


async def count_records(bootstrap: str, topic: str, partitions: int) -> tuple[int, int]:
    """(records, distinct values) in ``topic``, read from the beginning to the end offsets."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        values: set[bytes] = set()
        records = 0
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            for batch in (await consumer.getmany(timeout_ms=1000, max_records=10_000)).values():
                records += len(batch)
                values.update(r.value for r in batch)
        return records, len(values)
    finally:
        await consumer.stop()


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def run(args: argparse.Namespace, bootstrap: str, workdir: Path) -> dict[str, object]:
    tag = uuid.uuid4().hex[:8]
    topic = f"bench-ingress-{tag}.raw"
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "DELIVERY_MONITOR_APP_SECRET": SECRET,
        "DELIVERY_MONITOR_TOPIC_RAW": topic,
        "DELIVERY_MONITOR_TOPIC_SEND_LOG": f"bench-ingress-{tag}.send-log",
        "DELIVERY_MONITOR_TOPIC_DEAD_LETTER": f"bench-ingress-{tag}.dead-letter",
        "DELIVERY_MONITOR_TOPIC_ALERTS": f"bench-ingress-{tag}.alerts",
        "DELIVERY_MONITOR_DATA_DIR": str(workdir / "state"),
        "DELIVERY_MONITOR_LOG_LEVEL": "warning",
    }
    log = (workdir / "ingress.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "ingress", "--port", str(port)],
        env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, url, proc)
        seconds, latencies, statuses = await load(url, args.requests, args.concurrency)
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()
    partitions = Settings.from_env(env).topic_partitions  # what the ingress created
    records, distinct = await count_records(bootstrap, topic, partitions)
    latencies.sort()
    return {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds": round(seconds, 3),
        "requests_per_s": round(args.requests / seconds, 1),
        "latency_p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "latency_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "latency_max_ms": round(latencies[-1] * 1000, 2),
        "records": records,
        "distinct_records": distinct,
        "exact": records == distinct == args.requests == statuses[200],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="signed POSTs to send")
    parser.add_argument("--concurrency", type=int, default=50, help="concurrent clients")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingress-"))
    broker: LocalKafka | None = None
    try:
        bootstrap = settings.bootstrap_servers
        if not bootstrap:
            broker = LocalKafka(workdir / "kafka", settings.cache_dir, settings.kafka_version)
            bootstrap = broker.start().bootstrap
        result = asyncio.run(run(args, bootstrap, workdir))
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['requests']:,} signed POSTs, {result['concurrency']} concurrent clients: "
            f"{result['requests_per_s']:,.0f} requests/s ({result['seconds']} s), "
            f"latency p50 {result['latency_p50_ms']} ms, p99 {result['latency_p99_ms']} ms, "
            f"max {result['latency_max_ms']} ms; statuses {result['statuses']}\n"
            f"records in the raw topic: {result['records']:,} "
            f"({result['distinct_records']:,} distinct): "
            + ("exactly one per POST" if result["exact"] else "MISMATCH")
        )
    return 0 if result["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
