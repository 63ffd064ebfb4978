"""Feed a scenario's records (:mod:`streams.scenarios`) to a worker's topics, and read what it
alerted.

Webhook bodies go to the raw topic without a key (as the ingress and the replay produce them),
send-log records to the send-log topic keyed by wamid (as a sender would). :func:`produce` sends
records as fast as Kafka takes them, or *paced*: record ``k`` at
``t0 + (at_k - at_0) / compression`` of the wall clock, so an hour of event time takes two
minutes at 30x, in the order and at the pace a live sender's traffic would come. Used by the
alert-quality benchmark (``bench/alert_quality.py``) and the end-to-end test
(``tests/integration/test_alert_determinism.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from streams.settings import Settings
from streams.simulate import LiveRecord

TICK_S = 0.02  # a paced producer sends what is due at most this often
MAX_PENDING = 5_000  # unacknowledged sends of an unpaced producer


@dataclass
class FeedStats:
    raw: int = 0
    send_log: int = 0
    seconds: float = 0.0
    behind_s: float = 0.0  # a paced producer's worst lag behind its schedule (wall seconds)


def kafka_producer(bootstrap: str, client_id: str = "whatsapp-delivery-monitor-feed") -> Any:
    """An idempotent ``acks=all`` producer for webhook bodies (up to 4 MB) and send-log
    records; start and stop it yourself."""
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        max_request_size=4 * 1024 * 1024,
    )


async def produce(
    bootstrap: str,
    settings: Settings,
    records: Sequence[tuple[float, LiveRecord]],
    compression: float | None = None,
    on_time: Callable[[float], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FeedStats:
    """Produce ``records`` ((event time, record), in the order given) to the topics of
    ``settings``; with ``compression`` paced at that many event seconds per wall second,
    otherwise unpaced. ``on_time`` is called with the event time of every batch sent (paced:
    the schedule's event time), e.g. to kill a worker at a chosen moment; it must not block."""
    stats = FeedStats()
    producer = kafka_producer(bootstrap)
    await producer.start()
    t0 = clock()
    pending: list[asyncio.Future[Any]] = []
    try:
        i = 0
        first = records[0][0] if records else 0.0
        while i < len(records):
            if compression is None:
                due = len(records)
            else:
                now = first + (clock() - t0) * compression
                due = i
                while due < len(records) and records[due][0] <= now:
                    due += 1
                if due == i:
                    wait = (records[i][0] - first) / compression - (clock() - t0)
                    await asyncio.sleep(min(TICK_S, max(0.0, wait)))
                    continue
                stats.behind_s = max(stats.behind_s, (now - records[i][0]) / compression)
            for _, record in records[i:due]:
                pending.append(await _send(producer, settings, record, stats))
                if len(pending) >= MAX_PENDING:
                    await asyncio.gather(*pending)
                    pending.clear()
            i = due
            if compression is not None:
                await asyncio.gather(*pending)  # acknowledged: back-pressure when Kafka is slow
                pending.clear()
            if on_time is not None:
                on_time(records[due - 1][0])
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    stats.seconds = clock() - t0
    return stats


async def _send(
    producer: Any, settings: Settings, record: LiveRecord, stats: FeedStats
) -> asyncio.Future[Any]:
    if record.kind == "send_log":
        stats.send_log += 1
        future: asyncio.Future[Any] = await producer.send(
            settings.topic_send_log, record.value, key=record.key
        )
        return future
    stats.raw += 1
    future = await producer.send(settings.topic_raw, record.value, key=None)
    return future


async def consume_all_async(
    bootstrap: str, topic: str, idle_s: float = 2.0
) -> list[tuple[bytes | None, bytes, dict[str, bytes]]]:
    """Every record of ``topic`` from the beginning: (key, value, headers); reads until no
    record came for ``idle_s``."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        fetch_max_bytes=8 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    out: list[tuple[bytes | None, bytes, dict[str, bytes]]] = []
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=int(idle_s * 1000))
            if not batch:
                break
            for partition_records in batch.values():
                for r in partition_records:
                    out.append((r.key, r.value, dict(r.headers or ())))
    finally:
        await consumer.stop()
    return out


async def notifications(bootstrap: str, settings: Settings, idle_s: float = 1.0) -> list[bytes]:
    """The values of the alerts topic so far (notifications as JSON)."""
    return [v for _, v, _ in await consume_all_async(bootstrap, settings.topic_alerts, idle_s)]


def worker_inputs(settings: Settings) -> list[str]:
    """The topics a worker reads (the raw topic by its ingest group, the others by its Faust
    group): all consumed means every input reached the alerting stage."""
    app = settings.app_id
    return [
        settings.topic_raw,
        settings.topic_send_log,
        f"{app}-messages",
        f"{app}-recipients",
        f"{app}-signals",
    ]


async def wait_quiet(
    bootstrap: str,
    settings: Settings,
    quiet_s: float,
    max_s: float,
    poll_s: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
) -> list[bytes]:
    """The alerts topic once no new notification came for ``quiet_s`` (or after ``max_s``):
    after a worker drained its inputs, its last minutes are judged only when the wall clock
    moves event time past the end of the data."""
    t0 = clock()
    seen: list[bytes] = []
    changed = t0
    while True:
        now = await notifications(bootstrap, settings, idle_s=0.5)
        if len(now) != len(seen):
            seen, changed = now, clock()
        elif clock() - changed >= quiet_s or clock() - t0 >= max_s:
            return seen
        await asyncio.sleep(poll_s)
