"""The agents' batch loop: what reaches an agent, when it flushes, what it may commit.

The agents' topics have Faust's acks off (Faust commits nothing of them): :class:`BatchLoop`
hands each record to the agent once, flushes per batch and passes the batch's offsets to the
agent's flush, whose checkpoint (:mod:`streams.runtime.checkpoint`) commits them only after the
batch's state and outputs are in Kafka, so a commit never covers an event whose effects are not
(at-least-once, and the stages make replays idempotent).

Why not Faust's acks: Faust acks, and so commits, the records its stream skips while a
rebalance is under way without handing them to the agent (``faust.streams.Stream._py_aiter``),
and it can deliver a record twice (records fetched between resuming a partition and seeking it
to the committed offset come again after the seek). A commit could then pass records no stage
has written, and a record handled twice within one batch had its spike-detector counts
signalled twice. :class:`Progress` drops records delivered again and knows what to commit.

Nothing here imports Faust: an event is anything with ``.message`` (``tp``, ``topic``,
``partition``, ``offset``, ``timestamp``) and ``.value``, as Faust's events are and
:mod:`streams.runtime.fake`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class BatchPolicy:
    """When to flush: ``max_events`` handled, or ``max_delay_s`` after the last flush."""

    def __init__(self, max_events: int = 10_000, max_delay_s: float = 0.25) -> None:
        self.max_events = max_events
        self.max_delay_s = max_delay_s


class Progress:
    """What an agent handled in the current generation (rebalances seen), per partition.

    :meth:`admit` drops a record at or before the last one handled from its partition in the
    same generation (Kafka delivered it again). A record after a gap (Faust's stream drops
    records while its flow is stopped, and nothing delivers them again) is dropped too: after
    the last one handled, or, for the first record of a generation, after ``committed(tp)``
    (where Faust sought the partition to after the rebalance), or, when the group never
    committed it, after ``start(tp)`` (the log's first offset, where Kafka starts such a
    partition: see :class:`LogStarts`). Then
    :attr:`seeks` asks for the partition to be read again from the first missing offset; the
    records still queued from before that seek are dropped until the missing one comes, or
    the same gap again (then it is a real one: compaction, transaction markers). Should
    neither come within ``reseek_after`` dropped records (the seek was lost), the seek is
    asked for again.
    :meth:`take` hands over what the next commit may cover: the offset after the last record
    handled, per partition, of the records handled since the last call in the generation now
    current.
    """

    def __init__(
        self,
        reseek_after: int = 100_000,
        on_gap: Callable[[], object] = lambda: None,
        committed: Callable[[Any], int | None] = lambda tp: None,
        clock: Callable[[], float] = time.monotonic,
        start: Callable[[Any], int | None] = lambda tp: None,
    ) -> None:
        self.generation: int | None = None
        self.start = start
        self.clock = clock
        #: partition -> when a record of it last reached the agent (kept across generations)
        self.seen: dict[Any, float] = {}
        self.reseek_after = reseek_after
        self.on_gap = on_gap
        self.committed = committed
        self._last: dict[Any, int] = {}  # partition -> last offset handled in the generation
        self._pending: dict[Any, int] = {}  # the same, for records not yet taken
        # partition -> [missing, first offset after the gap, records dropped since the seek]
        self._refill: dict[Any, list[int]] = {}
        #: (partition, offset) to read again from, for the caller to seek
        self.seeks: list[tuple[Any, int]] = []
        #: records admitted since the last :meth:`take` (of any generation)
        self.count = 0
        #: records dropped as delivered again
        self.redelivered = 0
        #: gaps seen (each answered with a seek)
        self.gaps = 0

    def admit(self, tp: Any, offset: int, generation: int) -> bool:
        self.seen[tp] = self.clock()
        if generation != self.generation:
            self.generation = generation
            self._last, self._pending, self._refill, self.seeks = {}, {}, {}, []
        last = self._last.get(tp)
        refill = self._refill.get(tp)
        if refill is not None:
            missing, after, dropped = refill
            if offset != missing and offset != after:
                self.redelivered += 1  # queued before the seek
                refill[2] = dropped + 1
                if refill[2] >= self.reseek_after:
                    refill[2] = 0
                    self.seeks.append((tp, missing))
                return False
            del self._refill[tp]
        elif last is not None and offset <= last:
            self.redelivered += 1
            return False
        else:
            # the first record of the generation comes from the committed offset
            expected = self._first(tp) if last is None else last + 1
            if expected is not None and offset > expected:
                self._refill[tp] = [expected, offset, 0]
                self.seeks.append((tp, expected))
                self.gaps += 1
                self.on_gap()
                return False
        self._last[tp] = self._pending[tp] = offset
        self.count += 1
        return True

    def resync(self, generation: int, partitions: Iterable[Any]) -> None:
        """The records queued for the agent were dropped (see :class:`ClearWatch`): ask for
        each of ``partitions`` to be read again from the record it needs next (after the last
        one handled in ``generation``, or from its committed offset), and drop what comes
        until that record does."""
        if generation != self.generation:
            self.generation = generation
            self._last, self._pending, self._refill, self.seeks = {}, {}, {}, []
        for tp in partitions:
            last = self._last.get(tp)
            offset = self._first(tp) if last is None else last + 1
            if offset is not None:
                self._refill[tp] = [offset, -1, 0]
                self.seeks.append((tp, offset))

    def read_again(self, generation: int, tp: Any) -> None:
        """``tp`` stalled (see :func:`stalled`): read it again from the record it needs next
        (after the last one handled in ``generation``, or its committed offset), dropping what
        comes until that record does; from its start when the group never committed it."""
        if generation != self.generation:
            self.generation = generation
            self._last, self._pending, self._refill, self.seeks = {}, {}, {}, []
        last = self._last.get(tp)
        offset = last + 1 if last is not None else self._first(tp)
        if offset is None:  # from its start (Kafka resets an offset before it to the earliest)
            self.seeks.append((tp, 0))
            return
        self._refill[tp] = [offset, -1, 0]
        self.seeks.append((tp, offset))

    def _first(self, tp: Any) -> int | None:
        """Where the generation's first record of ``tp`` comes from, if known."""
        committed = self.committed(tp)
        return committed if committed is not None else self.start(tp)

    def needs_start(self, tp: Any, generation: int) -> bool:
        """Whether ``tp``'s next record would be the generation's first, with nothing to
        compare it with: the group never committed it and its log start is not known."""
        first = generation != self.generation or (tp not in self._last and tp not in self._refill)
        return first and self._first(tp) is None

    def take(self) -> tuple[int | None, dict[Any, int]]:
        """(generation, partition -> offset to commit) for the records admitted since the last
        call, and start counting anew."""
        taken = {tp: offset + 1 for tp, offset in self._pending.items()}
        self._pending, self.count = {}, 0
        return self.generation, taken


Seek = Callable[[Any, int], Awaitable[object]]


def stalled(
    behind: Iterable[Any], seen: Mapping[Any, float], since: float, now: float, after_s: float
) -> list[Any]:
    """Of the partitions ``behind`` (records the group has not committed), those no record of
    which reached the agent for ``after_s`` (counting from ``since``, the last rebalance):
    Faust stopped fetching them. Seen after a SIGKILL and restart: one partition of the send
    log never fetched again (its records, and new ones, stayed behind until the next
    rebalance) while the others were read."""
    return [tp for tp in behind if now - max(seen.get(tp, since), since) >= after_s]


async def admit(
    progress: Progress,
    event: Any,
    generation: Callable[[], int],
    seek: Seek | None,
    starts: LogStarts | None = None,
) -> int | None:
    """``progress.admit`` for ``event``, then the seeks it asks for; returns the generation it
    was admitted in, or None when it was dropped. The first record of a partition the group
    never committed waits until its log start is known (``starts``)."""
    message = event.message
    if starts is not None and progress.needs_start(message.tp, generation()):
        await starts.learn([message.tp])
    handled_in = generation()
    admitted = progress.admit(message.tp, message.offset, handled_in)
    if progress.seeks:
        await apply_seeks(progress, seek)
    return handled_in if admitted else None


class LogStarts:
    """The first offset of each partition the group never committed: where Kafka starts a
    consumer on it (``auto_offset_reset=earliest``), so what the first record of a generation
    must be. Without it, records Faust's stream dropped before that first record (fetched while
    a new member's tables were still restoring) went unnoticed, and their offsets were
    committed with the next batch: seen as send-log records never applied on a worker's first
    assignment. Learned when such a partition's first record comes; forgotten at every
    rebalance (retention moves them)."""

    def __init__(self, fetch: Callable[[list[Any]], Awaitable[Mapping[Any, int]]]) -> None:
        self._fetch = fetch
        self.known: dict[Any, int] = {}

    def get(self, tp: Any) -> int | None:
        return self.known.get(tp)

    async def learn(self, partitions: list[Any]) -> None:
        missing = [tp for tp in partitions if tp not in self.known]
        if not missing:
            return
        try:
            self.known.update(await self._fetch(missing))
        except Exception as exc:  # the record is then taken unchecked, as before
            log.warning("could not read the log start of %s: %r", missing, exc)

    def forget(self) -> None:
        self.known.clear()


async def apply_seeks(progress: Progress, seek: Seek | None, level: int = logging.WARNING) -> None:
    """Seek the partitions ``progress`` asks to read again."""
    while progress.seeks:
        tp, offset = progress.seeks.pop()
        log.log(level, "%s: reading again from offset %d (records were dropped)", tp, offset)
        if seek is not None:
            await seek(tp, offset)


@dataclass(frozen=True)
class Taken:
    """What a flush may commit: the offset after the last record handled, per partition, of
    the records handled in ``generation`` since the last flush."""

    generation: int | None = None
    offsets: dict[Any, int] = field(default_factory=dict)


class BatchLoop:
    """Drive an agent over its records: ``handle`` each one admitted, ``flush(taken)`` per batch.

    A batch ends after ``policy.max_events`` records, when ``full()`` (the output grew large) or
    every ``policy.max_delay_s`` (:meth:`run`'s ticker flushes a quiet stream). ``handle`` is
    synchronous and ``flush`` does all its state writes before its first ``await``, so a flush
    covers exactly the records handled before it; records handled while it awaits its sends
    belong to the next batch. ``handle`` must not raise for bad input: stages turn bad input
    into dead letters. A record Kafka delivers again in the same generation is not handled again.

    ``generation()`` changes on every rebalance: records handled before one are never committed
    (their partition's unflushed state was dropped, and Kafka delivers them again from the
    committed offset; the stages apply the replay once): the checkpoint checks ``taken``.
    """

    def __init__(
        self,
        handle: Callable[[Any], None],
        flush: Callable[[Taken], Awaitable[None]],
        policy: BatchPolicy,
        generation: Callable[[], int] = lambda: 0,
        full: Callable[[], bool] = lambda: False,
        progress: Progress | None = None,
        seek: Seek | None = None,
        starts: LogStarts | None = None,
        *,
        name: str = "agent",
        on_flush_failure: Callable[[], object] = lambda: None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.handle = handle
        self.flush = flush
        self.name = name
        self.on_flush_failure = on_flush_failure
        self.sleep = sleep
        self.policy = policy
        self.generation = generation
        self.full = full
        self.progress = progress if progress is not None else Progress()
        self.seek = seek
        self.starts = starts
        self._lock = asyncio.Lock()

    async def offer(self, event: Any) -> None:
        """One record from the stream: handled unless it came again; a full batch flushes."""
        progress = self.progress
        if await admit(progress, event, self.generation, self.seek, self.starts) is None:
            return
        self.handle(event)
        if progress.count >= self.policy.max_events or self.full():
            await self.flush_pending()

    async def flush_pending(self) -> None:
        """Flush the records handled since the last flush (if any)."""
        async with self._lock:
            if not self.progress.count:
                return
            handled_in, offsets = self.progress.take()
            try:
                await self.flush(Taken(handled_in, offsets))
            except Exception:
                # not bad input (stages dead-letter that) and not Kafka refusing (the
                # checkpoint retries): a bug. Counted and logged here, whichever path flushed.
                self.on_flush_failure()
                log.exception("%s: a flush failed; its batch is not committed", self.name)
                raise

    async def run(self, events: AsyncIterable[Any]) -> None:
        """Offer every event of ``events``, and flush a quiet stream every ``max_delay_s``."""

        async def ticker() -> None:
            while True:
                await self.sleep(self.policy.max_delay_s)
                if self.progress.count:
                    # logged and counted by flush_pending; the ticker must outlive a failure,
                    # or a quiet stream would never be flushed (committed, signalled) again
                    with contextlib.suppress(Exception):
                        await self.flush_pending()

        task = asyncio.ensure_future(ticker())
        try:
            async for event in events:
                await self.offer(event)
        finally:
            task.cancel()
