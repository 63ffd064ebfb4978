"""Stage 1's raw consumer on the real broker: a batch spans polls until it is large or old
enough, and its offsets are committed only after its flush.

The consumer reads at most 50 records per poll here, so 600 records take a dozen polls or
more; the batch clock is injected, so "old enough" happens when the test says.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable

import pytest

from streams.raw_consumer import consume_raw
from streams.runtime.batching import BatchPolicy
from streams.topics import TopicSpec, ensure_topics
from testkit.kafka import committed_offsets_async, produce_async

pytestmark = [pytest.mark.kafka]

RECORDS = 600


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """What the consumer handed over: the records, how many had been handled at each flush,
    and the marks it was told to restore (its own mark: the newest offset handled)."""

    full = False
    marks_due = False

    def __init__(self) -> None:
        self.handled: list[tuple[int, int]] = []  # (partition, offset)
        self.flushes: list[int] = []
        self.marks: dict[int, int] = {}
        self.restored: dict[int, int] = {}
        self.assigned: set[int] = set()
        self.received: list[int] = []

    def handle(self, topic: str, partition: int, offset: int, value: bytes, received: int) -> None:
        self.handled.append((partition, offset))
        self.marks[partition] = max(self.marks.get(partition, 0), 1_000 + offset)
        self.received.append(received)

    def assign(self, partitions: Iterable[int], raw_partitions: int) -> None:
        self.assigned |= set(partitions)

    def revoke(self, partitions: Iterable[int]) -> None:
        self.assigned -= set(partitions)

    def restore_mark(self, partition: int, mark: int) -> None:
        self.restored[partition] = mark

    def caught_up(self, partition: int, caught_up: bool) -> None:
        pass

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
            recorder,
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


async def test_marks_are_committed_with_the_offsets_and_restored_after_a_restart(
    kafka_bootstrap: str,
) -> None:
    """A restarted reader resumes each raw partition's mark from the commit, so the records it
    reads again get the marks they would have had without the restart."""
    recorder, clock, committed, task, topic = await run_consumer(
        kafka_bootstrap, BatchPolicy(max_events=10_000, max_delay_s=5.0)
    )
    try:
        await eventually(recorder.all_handled, "every record handled")
        clock.now += 5.0

        async def all_committed() -> bool:
            return await committed() == RECORDS

        await eventually(all_committed, "the batch committed")
        assert recorder.assigned == {0, 1}
        assert all(abs(r - time.time()) < 120 for r in recorder.received)  # broker time
    finally:
        await stop(task)
    marks = dict(recorder.marks)
    again = Recorder()
    group = f"g-{topic.removeprefix('t-').removesuffix('.raw')}"
    restarted = asyncio.ensure_future(
        consume_raw(kafka_bootstrap, topic, group, again, again.flush, policy=BatchPolicy())
    )
    try:

        async def restored() -> bool:
            return again.restored == marks

        await eventually(restored, "the committed marks restored")
    finally:
        await stop(restarted)


async def test_a_stopped_consumer_gives_up_its_partitions(kafka_bootstrap: str) -> None:
    """However the consumer ends (cancelled, or failed and started again by the worker), its
    reader no longer counts the partitions as its own: their marks are their next reader's."""
    recorder, _, _, task, _ = await run_consumer(kafka_bootstrap, BatchPolicy(max_events=50))

    async def assigned() -> bool:
        return recorder.assigned == {0, 1}

    await eventually(assigned, "both partitions assigned")
    await stop(task)
    assert recorder.assigned == set()
