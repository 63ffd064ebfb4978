"""The throughput baseline: a plain aiokafka consumer that parses every raw webhook body with
the project's parser and keeps no state (the consume-and-parse ceiling of one Python process).

    python -m bench.baseline BOOTSTRAP TOPIC RECORDS

Run as its own process by the benchmark (so its CPU and peak RSS are its own); prints one JSON
object: seconds (from the consumer's start to the last record), records, status events parsed,
CPU seconds over the same span, peak RSS. The consumer is configured like the worker's raw
consumer (streams.raw_consumer): same fetch sizes, same batch size.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path


def peak_rss() -> int:
    """VmHWM of this process (ru_maxrss may carry the parent's RSS from before the exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


async def consume(bootstrap: str, topic: str, expected: int) -> dict[str, float | int]:
    from aiokafka import AIOKafkaConsumer

    from streams.core import parse_webhook

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
    )
    await consumer.start()
    statuses = records = rejected = 0
    cpu0 = time.process_time()
    start = time.perf_counter()
    try:
        while records < expected:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for rs in batch.values():
                for r in rs:
                    records += 1
                    try:
                        statuses += len(parse_webhook(r.value or b"").statuses)
                    except ValueError:
                        rejected += 1
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu0
    finally:
        await consumer.stop()
    return {
        "seconds": round(seconds, 3),
        "records": records,
        "rejected": rejected,
        "status_events": statuses,
        "cpu_s": round(cpu, 2),
        "peak_rss": peak_rss(),
    }


def main(argv: list[str]) -> int:
    bootstrap, topic, expected = argv[0], argv[1], int(argv[2])
    print(json.dumps(asyncio.run(consume(bootstrap, topic, expected))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
