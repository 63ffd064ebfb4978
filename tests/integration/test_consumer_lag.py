"""Consumer lag measured on the real broker: records behind (log end - committed) and seconds
behind (now - timestamp of the oldest record not committed) per group, topic and partition."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from streams.lag import ConsumerLag
from streams.topics import TopicSpec, ensure_topics
from testkit.worker import free_port

T0 = 1_767_225_600.0


async def scenario(bootstrap: str) -> None:
    tag = uuid.uuid4().hex[:8]
    busy, idle, group = f"lag-{tag}-busy", f"lag-{tag}-idle", f"lag-{tag}"
    await ensure_topics(bootstrap, [TopicSpec(busy, 2), TopicSpec(idle, 1)], 1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(10):  # partition 0: records stamped T0, T0 + 10, ..., T0 + 90
            await producer.send_and_wait(
                busy, b"x", partition=0, timestamp_ms=int((T0 + 10 * i) * 1000)
            )
        for _ in range(3):
            await producer.send_and_wait(busy, b"y", partition=1, timestamp_ms=int(T0 * 1000))
    finally:
        await producer.stop()
    # the group is done with 4 records of partition 0 and all of partition 1
    committer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await committer.start()
    try:
        committer.assign([TopicPartition(busy, 0), TopicPartition(busy, 1)])
        await committer.commit(
            {
                TopicPartition(busy, 0): OffsetAndMetadata(4, ""),
                TopicPartition(busy, 1): OffsetAndMetadata(3, ""),
            }
        )
    finally:
        await committer.stop()
    lag = ConsumerLag(bootstrap, {group: [busy, idle], f"{group}-none": []}, clock=lambda: T0 + 100)
    await lag.start()
    try:
        report = await lag.measure()
        second = await lag.measure()  # the consumer is reusable
    finally:
        await lag.stop()
    rows = {(p.topic, p.partition): (p.records, p.seconds) for p in report.partitions}
    assert rows == {
        (busy, 0): (6, 60.0),  # the oldest waiting record (offset 4) was stamped T0 + 40
        (busy, 1): (0, 0.0),
        (idle, 0): (0, 0.0),  # empty, nothing committed
    }
    assert {p.group for p in report.partitions} == {group}
    assert report.at == T0 + 100
    assert report.by_topic() == [
        {"group": group, "topic": busy, "records": 6, "seconds": 60.0},
        {"group": group, "topic": idle, "records": 0, "seconds": 0.0},
    ]
    assert second.partitions == report.partitions


@pytest.mark.kafka
def test_records_and_seconds_behind_per_partition(kafka_bootstrap: str) -> None:
    asyncio.run(scenario(kafka_bootstrap))


async def nothing_committed(bootstrap: str) -> None:
    tag = uuid.uuid4().hex[:8]
    topic = f"lag-{tag}-new"
    await ensure_topics(bootstrap, [TopicSpec(topic, 1)], 1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"x", timestamp_ms=int(T0 * 1000))
        await producer.send_and_wait(topic, b"x", timestamp_ms=int((T0 + 5) * 1000))
    finally:
        await producer.stop()
    lag = ConsumerLag(bootstrap, {f"never-{tag}": [topic]}, clock=lambda: T0 + 30)
    await lag.start()
    try:
        for _ in range(60):  # a fresh broker has no group coordinator for a moment
            report = await lag.measure()
            if report.partitions:
                break
            await asyncio.sleep(0.5)
    finally:
        await lag.stop()
    [row] = report.partitions
    assert (row.records, row.seconds) == (2, 30.0)  # a group that committed nothing yet


@pytest.mark.kafka
def test_a_group_that_committed_nothing_is_behind_from_the_log_start(kafka_bootstrap: str) -> None:
    asyncio.run(nothing_committed(kafka_bootstrap))


async def unreachable() -> None:
    lag = ConsumerLag(f"127.0.0.1:{free_port()}", {"g": ["t"]}, interval_s=0.1)
    task = asyncio.ensure_future(lag.run())
    await asyncio.sleep(1.5)  # several failed attempts
    assert not task.done()  # it keeps trying; the worker is never stopped by it
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert lag.latest is None


def test_an_unreachable_broker_is_retried_and_never_ends_the_task() -> None:
    asyncio.run(unreachable())
