"""Stage 1's input: the raw webhook topic, read in batches with a plain aiokafka consumer.

Faust hands every record to an agent as its own event through a chain of queues and tasks
(~35 us of CPU per record, the largest single cost when most webhooks carry one status). Stage 1
keeps no state, so it does not need a Faust table or Faust's partition assignor: this loop reads
up to ``max_records`` records at a time (``getmany``) and gives each to ``handle``. A batch
spans polls, as the other stages' do (:class:`~streams.runtime.batching.BatchPolicy`): once
``policy.max_events`` records were handled, or ``policy.max_delay_s`` after the first of them,
it awaits ``flush`` (which sends the stage's output and returns once Kafka acknowledged it; also
whenever ``full()`` says the output grew large) and only then commits the batch's offsets. Live
traffic arrives a few records per poll: flushing and committing every poll cost more CPU than
the records themselves, and filled the messages topic with tiny records. That is
at-least-once: records read again after a crash or a rebalance become facts with the same input
positions, which stages 2 and 3 apply once.

Its consumer group is ``<app id>-ingest`` (Faust's group, ``<app id>``, owns the other topics;
the two cannot share a group because their assignors differ).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from streams.core.eventtime import received_at
from streams.runtime.batching import BatchPolicy

log = logging.getLogger(__name__)


def ingest_group(app_id: str) -> str:
    """The consumer group of the raw webhook topic."""
    return f"{app_id}-ingest"


class RawReader(Protocol):
    """What :func:`consume_raw` drives (stage 1: :class:`streams.stages.ingest.IngestStage`)."""

    #: the output grew large: flush before handling more
    full: bool
    #: raw partition -> newest trusted event time read (committed with the offsets)
    marks: dict[int, int]

    @property
    def marks_due(self) -> bool:
        """Marks to send although no record came (a partition became idle)."""
        ...

    def handle(self, topic: str, partition: int, offset: int, raw: bytes, received: int) -> None:
        """One record; ``received`` is when Kafka received it (unix seconds)."""

    def assign(self, partitions: Iterable[int], raw_partitions: int) -> None: ...

    def revoke(self, partitions: Iterable[int]) -> None: ...

    def restore_mark(self, partition: int, mark: int) -> None: ...

    def caught_up(self, partition: int, caught_up: bool) -> None: ...


MARK = "mark="


def commit_metadata(mark: int) -> str:
    """What is committed with a raw partition's offset: its mark, so a restart resumes it."""
    return f"{MARK}{mark}"


def mark_of(metadata: str | None) -> int:
    """The mark in committed metadata (0 when there is none)."""
    if metadata and metadata.startswith(MARK):
        try:
            return int(metadata[len(MARK) :])
        except ValueError:
            return 0
    return 0


class _Assignment(ConsumerRebalanceListener):  # type: ignore[misc]
    """Tells the reader which partitions it has, and restores their committed marks."""

    def __init__(self, consumer: AIOKafkaConsumer, topic: str, reader: RawReader) -> None:
        self.consumer = consumer
        self.topic = topic
        self.reader = reader

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.reader.revoke(tp.partition for tp in revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        partitions = self.consumer.partitions_for_topic(self.topic) or set()
        self.reader.assign((tp.partition for tp in assigned), len(partitions))
        if not assigned:
            return
        try:
            committed = await self.consumer._coordinator.fetch_committed_offsets(assigned)
        except KafkaError as exc:  # the marks then restart from the records read again
            log.warning("could not read the committed marks of %s: %s", sorted(assigned), exc)
            return
        for tp, meta in committed.items():
            self.reader.restore_mark(tp.partition, mark_of(getattr(meta, "metadata", None)))


class _Positions(Protocol):
    def assignment(self) -> Iterable[Any]: ...

    def highwater(self, tp: Any) -> int | None: ...

    async def position(self, tp: Any) -> int: ...


class CaughtUp:
    """Tells the reader which assigned partitions are read to their end, without ever waiting
    for a position: aiokafka's ``position`` waits while a partition's position is being reset
    (for as long as that takes: the consumer would stop reading) and raises IllegalStateError
    when a rebalance takes the partition meanwhile. Each poll asks for the positions not asked
    for yet, lets the answers that are ready come in, and leaves the rest for a later poll."""

    def __init__(self, consumer: _Positions, reader: RawReader) -> None:
        self.consumer, self.reader = consumer, reader
        self._asked: dict[Any, asyncio.Future[int]] = {}

    async def poll(self) -> None:
        assigned = list(self.consumer.assignment())
        for tp in assigned:
            if tp not in self._asked and self.consumer.highwater(tp) is not None:
                self._asked[tp] = asyncio.ensure_future(self.consumer.position(tp))
        await asyncio.sleep(0)  # a known position is answered at once
        for tp, asked in list(self._asked.items()):
            if not asked.done():
                continue
            del self._asked[tp]
            end = self.consumer.highwater(tp)
            if asked.cancelled() or asked.exception() is not None or end is None:
                continue  # taken by a rebalance, or not known: asked again at the next poll
            if tp in assigned:
                self.reader.caught_up(tp.partition, asked.result() >= end)

    def close(self) -> None:
        for asked in self._asked.values():
            if asked.done() and not asked.cancelled():
                asked.exception()  # retrieved: asyncio does not report it as lost
            asked.cancel()
        self._asked.clear()


async def restarting(
    what: str,
    run: Callable[[], Awaitable[None]],
    *,
    on_restart: Callable[[], object] = lambda: None,
    pause_s: float = 5.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Await ``run`` and, whenever it fails, log why and run it again after ``pause_s``
    (cancelling stops it). For stage 1's consumer: an exception out of it would otherwise end
    the reading of the raw topic while the rest of the worker runs on. A new consumer reads
    again from the last commit; stages 2 and 3 apply what they see again once."""
    while True:
        try:
            await run()
            return
        except Exception:
            log.exception("%s failed; starting it again in %.0f s", what, pause_s)
            on_restart()
            await sleep(pause_s)


async def consume_raw(
    bootstrap: str,
    topic: str,
    group: str,
    reader: RawReader,
    flush: Callable[[], Awaitable[None]],
    *,
    session_timeout_s: float = 30.0,
    max_records: int = 10_000,
    policy: BatchPolicy | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
    on_records: Callable[[int], None] = lambda n: None,
    on_cpu: Callable[[float], None] = lambda s: None,
    cpu_clock: Callable[[], float] = time.thread_time,
) -> None:
    """Consume ``topic`` until cancelled (see the module docstring). ``on_cpu`` is given the
    CPU seconds ``reader.handle`` took for each poll's records (``flush`` not included)."""
    policy = policy if policy is not None else BatchPolicy()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=int(session_timeout_s * 1000),
        heartbeat_interval_ms=int(min(3.0, session_timeout_s / 4) * 1000),
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
    )
    await consumer.start()
    consumer.subscribe([topic], listener=_Assignment(consumer, topic, reader))
    caught_up = CaughtUp(consumer, reader)
    offsets: dict[Any, int] = {}  # the batch's partitions -> offset to commit
    handled = 0
    started = 0.0  # clock() when the batch's first record was handled
    try:
        while True:
            wait = policy.max_delay_s - (clock() - started) if offsets else policy.max_delay_s
            batches = await consumer.getmany(
                timeout_ms=max(0, int(wait * 1000)), max_records=max_records
            )
            count = 0
            now = wall()
            t0 = cpu_clock()
            for tp, records in batches.items():
                for r in records:
                    received = received_at(r.timestamp, now)
                    reader.handle(r.topic, r.partition, r.offset, r.value or b"", received)
                    if reader.full:  # keep each output record small: send, commit at the end
                        on_cpu(cpu_clock() - t0)
                        await flush()
                        t0 = cpu_clock()
                offsets[tp] = records[-1].offset + 1
                count += len(records)
            on_cpu(cpu_clock() - t0)
            await caught_up.poll()
            if count:
                on_records(count)
                if not handled:
                    started = clock()
                handled += count
            if not offsets:
                if reader.marks_due:
                    await flush()
                continue
            if handled < policy.max_events and clock() - started < policy.max_delay_s:
                continue
            await flush()
            committing = {
                tp: (offset, commit_metadata(reader.marks.get(tp.partition, 0)))
                for tp, offset in offsets.items()
            }
            offsets, handled = {}, 0
            try:
                await consumer.commit(committing)
            except (CommitFailedError, IllegalStateError) as exc:
                # a rebalance took some of these partitions: their new owner reads the records
                # again from the last commit (their output is already sent; replays apply once)
                log.info("raw offsets not committed after a rebalance: %s", exc)
            except KafkaError as exc:
                log.warning("raw offsets not committed (%s); they will be read again", exc)
    finally:
        # stopped (or failed, to be started again): this reader has no partition any more,
        # and aiokafka's stop does not say so (their marks are their next reader's to send)
        reader.revoke(sorted({tp.partition for tp in consumer.assignment()} | set(reader.marks)))
        caught_up.close()
        await consumer.stop()


async def retry_kafka(
    what: str, send: Callable[[], Awaitable[object]], pause_s: float = 1.0
) -> None:
    """Await ``send`` until it succeeds: output of a batch whose offsets are not committed yet
    is never dropped (``send`` must be safe to repeat; the stages apply repeats once)."""
    while True:
        try:
            await send()
            return
        except KafkaError as exc:
            log.warning("%s: Kafka refused (%s); retrying", what, exc)
            await asyncio.sleep(pause_s)
