"""Producing to, reading from and measuring consumer lag on a real Kafka broker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from streams.feed import consume_all_async
from streams.raw_consumer import ingest_group
from testkit.worker import wait_until


async def produce_async(
    bootstrap: str, topic: str, values: Iterable[bytes], keys: Iterable[bytes] | None = None
) -> int:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        max_request_size=4 * 1024 * 1024,
    )
    await producer.start()
    count = 0
    try:
        key_iter = iter(keys) if keys is not None else None
        for value in values:
            key = next(key_iter) if key_iter is not None else None
            await producer.send(topic, value, key=key)
            count += 1
        await producer.flush()
    finally:
        await producer.stop()
    return count


def produce(bootstrap: str, topic: str, values: Iterable[bytes]) -> int:
    """Produce ``values`` to ``topic`` (idempotent, acks=all); returns how many."""
    return asyncio.run(produce_async(bootstrap, topic, values))


async def committed_offsets_async(bootstrap: str, group: str, topic: str) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        return sum(
            meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0
        )
    finally:
        await admin.close()


def committed_offsets(bootstrap: str, group: str, topic: str) -> int:
    """Sum of the consumer group's committed offsets on ``topic`` (records it is done with)."""
    return asyncio.run(committed_offsets_async(bootstrap, group, topic))


async def list_topics_async(bootstrap: str) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()


def list_topics(bootstrap: str) -> list[str]:
    return asyncio.run(list_topics_async(bootstrap))


def consume_all(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes, dict[str, bytes]]]:
    return asyncio.run(consume_all_async(bootstrap, topic))


async def produce_keyed_async(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]
) -> int:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5
    )
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()
    return len(records)


def produce_keyed(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> int:
    """Produce (key, value) records with the default (murmur2) partitioner, as a sender would."""
    return asyncio.run(produce_keyed_async(bootstrap, topic, records))


async def group_lag_async(bootstrap: str, group: str, topics: list[str]) -> int:
    """Records of ``topics`` not yet committed by ``group`` (end offset - committed); the raw
    topic's offsets are those of the worker's ingest group, ``<group>-ingest``."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        # the raw webhook topic is read by the worker's ingest group (streams.raw_consumer)
        committed = await admin.list_consumer_group_offsets(ingest_group(group))
        committed.update(await admin.list_consumer_group_offsets(group))
        described = await admin.describe_topics(topics)
        partitions = [
            tp
            for d in described
            for tp in _tps(d["topic"], {p["partition"] for p in d["partitions"]})
        ]
        if len({tp.topic for tp in partitions}) != len(topics):  # type: ignore[attr-defined]
            raise KafkaError(f"not every topic of {topics} is known yet")
        ends = await consumer.end_offsets(partitions)
        lag = 0
        for tp, end in ends.items():
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            lag += max(0, end - done)
        return lag
    finally:
        await consumer.stop()
        await admin.close()


def _tps(topic: str, partitions: set[int]) -> list[object]:
    from aiokafka.structs import TopicPartition

    return [TopicPartition(topic, p) for p in sorted(partitions)]


def group_lag(bootstrap: str, group: str, topics: list[str]) -> int:
    return asyncio.run(group_lag_async(bootstrap, group, topics))


def wait_drained(
    bootstrap: str, group: str, topics: list[str], timeout_s: float, what: str = ""
) -> None:
    """Wait until ``group`` has committed everything in ``topics`` (twice in a row)."""
    streak = 0

    from aiokafka.errors import KafkaError

    def probe() -> bool:
        nonlocal streak
        try:
            lag = group_lag(bootstrap, group, topics)
        except KafkaError:  # e.g. no group coordinator yet on a fresh broker
            lag = -1
        streak = streak + 1 if lag == 0 else 0
        return streak >= 2

    try:
        wait_until(probe, timeout_s, f"consumer group {group} to drain {topics} {what}", 1.0)
    except AssertionError as timed_out:
        try:  # which topic is behind says which stage stalled
            behind: object = {t: group_lag(bootstrap, group, [t]) for t in topics}
        except KafkaError as e:
            behind = repr(e)
        raise AssertionError(f"{timed_out}\nlag by topic: {behind}") from None
