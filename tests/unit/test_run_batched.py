"""The batch loop and the checkpoint's commit: what a Faust agent hands to a stage, when it
flushes and what it commits.

Faust can deliver a record twice and acks records it skips during a rebalance, so the agents'
topics have Faust's acks off and the agents commit: after a flush, the offset after the last
record handled per partition, and never a record handled before a rebalance."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest

from streams.runtime.batching import (
    BatchLoop,
    BatchPolicy,
    LogStarts,
    Progress,
    Seek,
    Taken,
    stalled,
)
from streams.runtime.checkpoint import Batch, Checkpoint, Step

Item = tuple[str, int] | Callable[[], None]


class FakeStream:
    """Yields events for (partition, offset) items; a callable item runs in between (a
    rebalance); then waits for ``done`` (so the ticker can flush what is left)."""

    def __init__(self, items: list[Item], done: asyncio.Event | None = None) -> None:
        self.items = items
        self.done = done

    def noack(self) -> FakeStream:
        return self

    async def events(self) -> AsyncIterator[Any]:
        for item in self.items:
            if callable(item):
                item()
                continue
            tp, offset = item
            yield SimpleNamespace(message=SimpleNamespace(tp=tp, offset=offset), value=b"")
            await asyncio.sleep(0)
        if self.done is not None:
            await self.done.wait()


class Committer:
    """The broker of a checkpoint that only commits (its COMMIT step is under test)."""

    def __init__(
        self, commit: Callable[[dict[Any, int]], Awaitable[None]], generation: Callable[[], int]
    ):
        self.commit = commit
        self._generation = generation

    @property
    def generation(self) -> int:
        return self._generation()


async def run_batched(
    stream: FakeStream,
    handle: Callable[[Any], None],
    flush: Callable[[], Awaitable[None]],
    policy: BatchPolicy,
    commit: Callable[[dict[Any, int]], Awaitable[None]],
    generation: Callable[[], int] = lambda: 0,
    progress: Progress | None = None,
    seek: Seek | None = None,
    starts: LogStarts | None = None,
) -> None:
    """An agent's loop as the runtime runs it: its flush, then its checkpoint's commit."""
    checkpoint = Checkpoint("test", (Step.COMMIT,), Committer(commit, generation))  # type: ignore[arg-type]

    async def flush_and_commit(taken: Taken) -> None:
        await flush()
        await checkpoint.run(Batch(taken=taken))

    loop = BatchLoop(
        handle, flush_and_commit, policy, generation, progress=progress, seek=seek, starts=starts
    )
    await loop.run(stream.events())


class Agent:
    def __init__(self) -> None:
        self.generation = 0
        self.log: list[tuple[str, object]] = []
        self.handled: list[tuple[str, int]] = []

    def handle(self, event: Any) -> None:
        self.handled.append((event.message.tp, event.message.offset))
        self.log.append(("handle", (event.message.tp, event.message.offset)))

    async def flush(self) -> None:
        self.log.append(("flush", len(self.handled)))
        await asyncio.sleep(0)

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.log.append(("commit", dict(offsets)))

    async def run(self, items: list[Item], max_events: int, **kw: Any) -> None:
        """run_batched over ``items`` (no ticker flush: each batch ends by size)."""
        await run_batched(
            FakeStream(items),
            self.handle,
            kw.pop("flush", self.flush),
            BatchPolicy(max_events=max_events, max_delay_s=60),
            self.commit,
            lambda: self.generation,
            **kw,
        )


async def test_a_record_delivered_again_is_handled_once_and_commits_follow_flushes() -> None:
    agent, progress = Agent(), Progress()
    items: list[Item] = [("a", 0), ("a", 1), ("b", 5), ("a", 1), ("a", 2), ("b", 5), ("b", 6)]
    await agent.run(items, 3, progress=progress)
    assert agent.handled == [("a", 0), ("a", 1), ("b", 5), ("a", 2), ("b", 6)]
    assert progress.redelivered == 2
    assert agent.log[3:5] == [("flush", 3), ("commit", {"a": 2, "b": 6})]
    # the second batch ("a" 2 and "b" 6) is not full: nothing flushed, nothing committed
    assert [e for e in agent.log if e[0] == "commit"] == [("commit", {"a": 2, "b": 6})]


async def test_records_handled_before_a_rebalance_are_never_committed() -> None:
    agent = Agent()

    def rebalance() -> None:
        agent.generation += 1

    items: list[Item] = [("a", 0), ("a", 1), rebalance, ("a", 0), ("a", 1), ("a", 2)]
    await agent.run(items, 5)
    # after the rebalance the records come again from the committed offset: handled again
    assert agent.handled == [("a", 0), ("a", 1), ("a", 0), ("a", 1), ("a", 2)]
    assert agent.log[-2:] == [("flush", 5), ("commit", {"a": 3})]


async def test_a_rebalance_during_the_flush_cancels_its_commit() -> None:
    agent = Agent()

    async def flush() -> None:
        await agent.flush()
        agent.generation += 1  # the partitions were revoked while the output was being sent

    await agent.run([("a", 0), ("a", 1)], 2, flush=flush)
    assert [e[0] for e in agent.log] == ["handle", "handle", "flush"]


async def test_a_quiet_stream_is_flushed_and_committed_by_the_ticker() -> None:
    agent, done = Agent(), asyncio.Event()

    async def commit(offsets: dict[Any, int]) -> None:
        await agent.commit(offsets)
        done.set()

    await asyncio.wait_for(
        run_batched(
            FakeStream([("a", 7), ("a", 8)], done),
            agent.handle,
            agent.flush,
            BatchPolicy(max_events=1_000, max_delay_s=0.01),
            commit,
        ),
        timeout=30,
    )
    assert agent.log[-2:] == [("flush", 2), ("commit", {"a": 9})]


def test_progress_forgets_a_generation_and_counts_what_it_drops() -> None:
    p = Progress()
    assert p.admit("a", 4, 0) and p.admit("a", 5, 0)
    assert not p.admit("a", 5, 0) and not p.admit("a", 2, 0)
    assert p.take() == (0, {"a": 6}) and p.count == 0
    assert not p.admit("a", 5, 0)  # handled in an earlier batch of the generation
    assert p.admit("a", 5, 1)  # a new generation reads from the committed offset again
    assert p.take() == (1, {"a": 6})
    assert p.redelivered == 3


async def test_a_record_skipped_inside_a_generation_is_read_again_after_a_seek() -> None:
    """Faust's stream drops records while its flow is stopped; a gap makes the batch loop seek
    back to the first missing offset, drop what was queued before the seek, and handle the
    missing record and those after it in order."""
    agent, seeks = Agent(), []

    async def seek(tp: Any, offset: int) -> None:
        seeks.append((tp, offset))

    items: list[Item] = [("a", 10), ("a", 12), ("a", 13)]  # 11 was skipped; 12, 13 queued
    items += [("a", 11), ("a", 12), ("a", 13), ("a", 14)]  # read again from 11
    gaps: list[int] = []
    progress = Progress(on_gap=lambda: gaps.append(1))
    await agent.run(items, 100, seek=seek, progress=progress)
    assert seeks == [("a", 11)]
    assert progress.gaps == len(gaps) == 1
    assert agent.handled == [("a", 10), ("a", 11), ("a", 12), ("a", 13), ("a", 14)]


async def test_a_real_gap_is_accepted_after_one_seek() -> None:
    """Compaction or transaction markers leave offsets without records: after the seek the
    record after the gap comes again, and is handled."""
    agent, seeks = Agent(), []

    async def seek(tp: Any, offset: int) -> None:
        seeks.append((tp, offset))

    items: list[Item] = [("a", 10), ("a", 12), ("a", 12), ("a", 13)]
    await agent.run(items, 100, seek=seek)
    assert seeks == [("a", 11)]
    assert agent.handled == [("a", 10), ("a", 12), ("a", 13)]


async def test_a_seek_that_brings_nothing_back_is_asked_for_again() -> None:
    """A seek lost on the way (the records keep coming from after the gap) is repeated after
    ``reseek_after`` dropped records, and the missing record is handled when it comes."""
    agent, seeks = Agent(), []

    async def seek(tp: Any, offset: int) -> None:
        seeks.append((tp, offset))

    items: list[Item] = [("a", 10), ("a", 12), *(("a", o) for o in range(13, 20))]
    items += [("a", 11), ("a", 12)]
    await agent.run(items, 100, seek=seek, progress=Progress(reseek_after=3))
    assert seeks == [("a", 11), ("a", 11), ("a", 11)]  # after 13-15 and after 16-18 dropped
    assert agent.handled == [("a", 10), ("a", 11), ("a", 12)]


async def test_a_gap_commits_nothing_past_it_before_the_missing_record_is_handled() -> None:
    agent = Agent()

    async def seek(tp: Any, offset: int) -> None:
        pass

    await agent.run([("a", 0), ("a", 1), ("a", 3), ("a", 4), ("a", 2), ("a", 3)], 2, seek=seek)
    commits = [e[1] for e in agent.log if e[0] == "commit"]
    assert commits == [{"a": 2}, {"a": 4}]


def test_the_faust_seeker_leaves_a_partition_it_no_longer_has() -> None:
    """aiokafka refuses to seek a partition no longer assigned; the agent goes on."""
    from streams.runtime.faust_runtime import FaustRuntime

    class Consumer:
        async def seek_wait(self, partitions: dict[Any, int]) -> None:
            raise RuntimeError("IllegalStateError: No current assignment for partition")

    runtime: Any = SimpleNamespace(app=SimpleNamespace(consumer=Consumer()))
    assert asyncio.run(FaustRuntime.seek(runtime, "a", 3)) is None


def test_the_faust_send_raises_kafkas_refusal_as_the_kafka_error_the_checkpoint_retries() -> None:
    """Faust wraps a KafkaError raised while queueing a record in its ProducerSendError, which
    is no KafkaError: unwrapped, the checkpoint retries it instead of crashing the agent."""
    from aiokafka.errors import KafkaError, KafkaTimeoutError
    from faust.exceptions import ProducerSendError

    from streams.runtime.faust_runtime import FaustRuntime

    class Topic:
        def __init__(self, kafka: bool) -> None:
            self.kafka = kafka

        async def send(self, **record: Any) -> Any:
            if not self.kafka:  # Faust's own refusal: not Kafka's, not retried
                raise ProducerSendError("No transaction producer found for : x")
            try:  # as faust.transport.drivers.aiokafka.Producer.send does
                raise KafkaTimeoutError("the producer's buffer is full")
            except KafkaError as exc:
                raise ProducerSendError(f"Error while sending: {exc!r}") from exc

    runtime: Any = SimpleNamespace(_topics={"out": Topic(kafka=True)})
    with pytest.raises(KafkaTimeoutError):
        asyncio.run(FaustRuntime.send(runtime, "out", b"k", b"v"))
    runtime = SimpleNamespace(_topics={"out": Topic(kafka=False)})
    with pytest.raises(ProducerSendError):
        asyncio.run(FaustRuntime.send(runtime, "out", b"k", b"v"))


def test_the_first_record_of_a_generation_after_the_committed_offset_is_a_gap() -> None:
    """Faust seeks to the committed offset after a rebalance; a first record past it means
    the stream dropped the records in between."""
    committed = {"a": 20, "b": 7}
    p = Progress(committed=committed.get)
    assert not p.admit("a", 22, 0)  # 20 and 21 dropped by the stream
    assert p.seeks == [("a", 20)]
    assert p.admit("b", 7, 0)  # from the committed offset: fine
    assert p.admit("c", 3, 0)  # nothing committed, log start unknown: nothing to compare with
    assert not p.admit("a", 23, 0)  # queued before the seek
    assert p.admit("a", 20, 0) and p.admit("a", 21, 0) and p.admit("a", 22, 0)
    assert p.take() == (0, {"a": 23, "b": 8, "c": 4})
    assert p.gaps == 1


def test_a_first_record_before_the_committed_offset_is_handled() -> None:
    """Records fetched before Faust's seek to the committed offset come first (then again);
    stages apply a replay once, so they are handled, not taken for a gap."""
    p = Progress(committed={"a": 20}.get)
    assert p.admit("a", 18, 0) and p.admit("a", 19, 0) and p.admit("a", 20, 0)
    assert not p.admit("a", 18, 0)
    assert p.seeks == [] and p.gaps == 0


def test_a_resync_reads_every_partition_again_from_the_record_it_needs_next() -> None:
    """After Faust cleared the queues: partitions handled in the generation come again after
    their last record, the others from their committed offset; what was fetched before the
    seek is dropped until that record comes."""
    p = Progress(committed={"a": 3, "b": 40}.get)
    assert p.admit("a", 3, 0) and p.admit("a", 4, 0)
    p.resync(0, ["a", "b", "c"])  # "c" has no committed offset: left alone
    assert sorted(p.seeks) == [("a", 5), ("b", 40)]
    assert not p.admit("a", 7, 0) and not p.admit("b", 41, 0)  # fetched before the seeks
    assert p.admit("a", 5, 0) and p.admit("b", 40, 0) and p.admit("c", 9, 0)
    assert p.take() == (0, {"a": 6, "b": 41, "c": 10})
    p.resync(1, ["a"])  # a new generation: from the committed offset again
    assert p.seeks[-1] == ("a", 3)


def test_the_clear_watch_reports_clears_while_flow_is_on_only() -> None:
    """Faust's flow control clears the queues it manages on suspend-and-clear (a revocation,
    followed by Faust's own seek) and on every resume (records already fetched are lost)."""
    from mode.utils.queues import FlowControlEvent

    from streams.runtime.faust_runtime import ClearWatch

    flow = FlowControlEvent()  # suspended, as Faust's is until the first assignment
    cleared: list[bool] = []
    watch = ClearWatch(flow, lambda: cleared.append(True))
    flow.clear()
    assert cleared == []
    flow.resume()
    assert cleared == [True]
    flow.suspend()
    flow.clear()
    assert cleared == [True]
    flow.resume()
    assert cleared == [True, True]
    del watch


def test_a_partition_behind_that_sent_nothing_for_a_while_is_stalled() -> None:
    """Seen after a SIGKILL and restart: Faust never fetched one send-log partition again."""
    wall = [100.0]
    progress = Progress(clock=lambda: wall[0])
    assert progress.admit("a", 0, 1)
    wall[0] = 130.0
    assert progress.admit("b", 0, 1)
    seen = progress.seen
    assert seen == {"a": 100.0, "b": 130.0}
    # "c" never sent anything since the rebalance at 90; only partitions behind count
    assert stalled(["a", "b", "c"], seen, 90.0, 150.0, 45.0) == ["a", "c"]
    assert stalled(["b"], seen, 90.0, 150.0, 45.0) == []
    # a recent rebalance (or recovery) restarts every partition's clock
    assert stalled(["a", "c"], seen, 140.0, 150.0, 45.0) == []


def test_a_stalled_partition_is_read_again_from_the_record_it_needs_next() -> None:
    committed = {"a": 40, "b": None}
    progress = Progress(committed=committed.get)
    assert progress.admit("a", 40, 1) and progress.admit("a", 41, 1)
    progress.read_again(1, "a")
    progress.read_again(1, "b")  # the group never committed it: from its start
    progress.read_again(1, "c")
    assert progress.seeks == [("a", 42), ("b", 0), ("c", 0)]
    assert not progress.admit("a", 43, 1)  # queued before the seek
    assert progress.admit("a", 42, 1) and progress.admit("a", 43, 1)
    assert progress.admit("b", 7, 1)  # its first record, wherever the log starts


def test_the_first_record_of_a_partition_never_committed_is_checked_against_its_log_start() -> None:
    """A new member's first assignment of a partition nobody committed: Faust's stream dropped
    the records fetched while its tables restored, and the first record handed over is past the
    log's start. Without a committed offset that went unnoticed (their offsets were committed
    with the next batch): now the log start is what the first record must be."""
    p = Progress(committed={"a": 20}.get, start={"c": 0, "a": 0}.get)
    assert not p.admit("c", 180, 0)  # 0-179 dropped by the stream
    assert p.seeks == [("c", 0)] and p.gaps == 1
    assert not p.admit("c", 181, 0)  # queued before the seek
    assert p.admit("c", 0, 0) and p.admit("c", 1, 0)
    assert p.admit("a", 20, 0)  # a committed offset comes first
    assert p.take() == (0, {"c": 2, "a": 21})


def test_only_a_first_record_without_anything_to_compare_with_needs_the_log_start() -> None:
    p = Progress(committed={"a": 20}.get, start={"b": 5}.get)
    assert not p.needs_start("a", 0) and not p.needs_start("b", 0)
    assert p.needs_start("c", 0)
    assert p.admit("c", 3, 0)
    assert not p.needs_start("c", 0)  # its next record follows this one
    assert p.needs_start("c", 1)  # a new generation starts from the log again


def test_a_resync_reads_a_partition_never_committed_again_from_its_log_start() -> None:
    p = Progress(start={"c": 0}.get)
    assert p.admit("c", 0, 0)
    p.resync(1, ["c"])  # the queues were cleared in a new generation
    assert p.seeks == [("c", 0)]
    assert not p.admit("c", 7, 1) and p.admit("c", 0, 1)


class Starts:
    def __init__(self, starts: dict[str, int], fail: bool = False) -> None:
        self.starts, self.fail = starts, fail
        self.asked: list[list[str]] = []

    async def fetch(self, partitions: list[Any]) -> dict[Any, int]:
        self.asked.append(list(partitions))
        if self.fail:
            raise RuntimeError("broker gone")
        return {tp: self.starts[tp] for tp in partitions}


async def test_run_batched_reads_a_partition_never_committed_from_its_log_start() -> None:
    agent, seeks, log = Agent(), [], Starts({"c": 0})

    async def seek(tp: Any, offset: int) -> None:
        seeks.append((tp, offset))

    items: list[Item] = [("c", 2), ("c", 3), ("c", 0), ("c", 1), ("c", 2), ("c", 3)]
    starts = LogStarts(log.fetch)
    await agent.run(items, 100, seek=seek, starts=starts, progress=Progress(start=starts.get))
    assert seeks == [("c", 0)]
    assert agent.handled == [("c", 0), ("c", 1), ("c", 2), ("c", 3)]
    assert log.asked == [["c"]]  # once: then the partition's records follow each other


async def test_a_log_start_that_cannot_be_read_leaves_the_record_unchecked() -> None:
    agent, log = Agent(), Starts({}, fail=True)
    starts = LogStarts(log.fetch)
    await agent.run([("c", 2), ("c", 3)], 100, starts=starts, progress=Progress(start=starts.get))
    assert agent.handled == [("c", 2), ("c", 3)] and log.asked == [["c"]]


async def test_log_starts_are_forgotten_at_a_rebalance() -> None:
    log = Starts({"c": 0})
    starts = LogStarts(log.fetch)
    await starts.learn(["c"])
    await starts.learn(["c"])
    assert starts.get("c") == 0 and log.asked == [["c"]]
    starts.forget()
    log.starts["c"] = 40  # retention removed the head meanwhile
    await starts.learn(["c"])
    assert starts.get("c") == 40


class Ticks:
    """The batch loop's ``sleep``: returns when the test ticks (no time passes)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[None] = asyncio.Queue()

    async def sleep(self, seconds: float) -> None:
        await self.queue.get()

    def tick(self) -> None:
        self.queue.put_nowait(None)


async def until(condition: Callable[[], object]) -> None:
    for _ in range(1_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("never happened")


async def test_a_failed_flush_is_counted_and_logged_and_the_ticker_flushes_the_next_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A flush raising (a bug: bad input is dead-lettered, Kafka's refusals are retried) is
    counted and logged with its traceback; the ticker lives on, so a quiet stream is still
    flushed and committed afterwards."""
    handled: list[int] = []
    flushed: list[dict[Any, int]] = []
    failures: list[int] = []

    async def flush(taken: Taken) -> None:
        if not failures:
            raise RuntimeError("a bug in a stage")
        flushed.append(dict(taken.offsets))

    feed: asyncio.Queue[int | None] = asyncio.Queue()

    async def events() -> AsyncIterator[Any]:
        while (offset := await feed.get()) is not None:
            yield SimpleNamespace(message=SimpleNamespace(tp="a", offset=offset), value=b"")

    ticks = Ticks()
    loop = BatchLoop(
        lambda event: handled.append(event.message.offset),
        flush,
        BatchPolicy(max_events=1_000, max_delay_s=60),
        name="messages",
        on_flush_failure=lambda: failures.append(1),
        sleep=ticks.sleep,
    )
    run = asyncio.ensure_future(loop.run(events()))
    for offset in (0, 1):
        feed.put_nowait(offset)
    await until(lambda: len(handled) == 2)
    with caplog.at_level(logging.ERROR, logger="streams.runtime.batching"):
        ticks.tick()
        await until(lambda: failures)
    (failed,) = [r for r in caplog.records if "a flush failed" in r.getMessage()]
    assert failed.getMessage().startswith("messages:") and failed.exc_info is not None
    feed.put_nowait(2)
    await until(lambda: len(handled) == 3)
    ticks.tick()
    await until(lambda: flushed)
    assert flushed == [{"a": 3}] and failures == [1]
    feed.put_nowait(None)
    await run


async def test_a_flush_failing_inline_is_counted_and_raised_to_the_runtime() -> None:
    """A batch flushed because it is full: the failure goes up to the agent's runtime (Faust
    restarts the agent), counted first."""
    failures: list[int] = []

    async def flush(taken: Taken) -> None:
        raise RuntimeError("a bug in a stage")

    loop = BatchLoop(
        lambda event: None,
        flush,
        BatchPolicy(max_events=2, max_delay_s=60),
        on_flush_failure=lambda: failures.append(1),
        sleep=Ticks().sleep,
    )
    with pytest.raises(RuntimeError, match="a bug"):
        await loop.run(FakeStream([("a", 0), ("a", 1), ("a", 2)]).events())
    assert failures == [1]
