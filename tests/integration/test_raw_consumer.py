"""Stage 1's raw consumer on the real broker: a batch spans polls until it is large or old
enough, and its offsets are committed only after its flush.

The consumer reads at most 50 records per poll here, so 600 records take a dozen polls or
more; the batch clock is injected, so "old enough" happens when the test says.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest
from support import committed_offsets_async, produce_async

from streams.faust_state import BatchPolicy
from streams.raw_consumer import consume_raw
from streams.topics import TopicSpec, ensure_topics

pytestmark = [pytest.mark.kafka]

RECORDS = 600


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """What the consumer handed over: the records, and how many had been handled at each flush."""

    def __init__(self) -> None:
        self.handled: list[tuple[int, int]] = []  # (partition, offset)
        self.flushes: list[int] = []

    def handle(self, topic: str, partition: int, offset: int, value: bytes) -> None:
        self.handled.append((partition, offset))

    async def flush(self) -> None:
        self.flushes.append(len(self.handled))

    async def all_handled(self) -> bool:
        return len(self.handled) == RECORDS


async def eventually(
    condition: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 60
) -> None:
    """Wait for an effect of the consumer (not for a batch window: the batch clock is fake)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def run_consumer(
    bootstrap: str, policy: BatchPolicy
) -> tuple[Recorder, Clock, Callable[[], Awaitable[int]], asyncio.Task[None], str]:
    tag = uuid.uuid4().hex[:10]
    topic, group = f"t-{tag}.raw", f"g-{tag}"
    await ensure_topics(bootstrap, [TopicSpec(topic, 2)], 1)
    await produce_async(bootstrap, topic, (b"body %d" % i for i in range(RECORDS)))
    recorder, clock = Recorder(), Clock()
    task = asyncio.ensure_future(
        consume_raw(
            bootstrap,
            topic,
            group,
            recorder.handle,
            recorder.flush,
            max_records=50,
            policy=policy,
            clock=clock,
        )
    )

    async def committed() -> int:
        return await committed_offsets_async(bootstrap, group, topic)

    return recorder, clock, committed, task, topic


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_batch_spans_polls_until_its_delay(kafka_bootstrap: str) -> None:
    recorder, clock, committed, task, _ = await run_consumer(
        kafka_bootstrap, BatchPolicy(max_events=10_000, max_delay_s=5.0)
    )
    try:
        await eventually(recorder.all_handled, "every record handled")
        # a dozen polls and more, no flush yet: the batch is not old enough
        assert recorder.flushes == []
        assert await committed() == 0

        clock.now += 5.0

        async def flushed_and_committed() -> bool:
            return bool(recorder.flushes) and await committed() == RECORDS

        await eventually(flushed_and_committed, "the batch flushed and committed")
        assert recorder.flushes == [RECORDS]
        assert sorted(recorder.handled) == sorted(set(recorder.handled))  # each record once
    finally:
        await stop(task)


async def test_a_batch_ends_at_its_size_and_commits_only_what_was_flushed(
    kafka_bootstrap: str,
) -> None:
    recorder, clock, committed, task, _ = await run_consumer(
        kafka_bootstrap, BatchPolicy(max_events=200, max_delay_s=5.0)
    )
    try:
        await eventually(recorder.all_handled, "every record handled")
        # every flush so far was due to size: at least 200 records since the one before
        sizes = [b - a for a, b in zip([0, *recorder.flushes], recorder.flushes, strict=False)]
        assert sizes and all(size >= 200 for size in sizes), sizes
        flushed = recorder.flushes[-1]

        async def caught_up() -> bool:
            return await committed() == flushed

        await eventually(caught_up, "the flushed records committed")
        if flushed < RECORDS:  # the rest is a batch younger than its delay: not committed
            assert await committed() == flushed
            clock.now += 5.0

            async def rest_committed() -> bool:
                return await committed() == RECORDS

            await eventually(rest_committed, "the rest flushed once old enough")
        assert recorder.flushes[-1] == RECORDS
    finally:
        await stop(task)
