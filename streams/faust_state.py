"""Faust adapters: tables as partitioned KeyValues, batched sends, and our own offset commits.

:class:`BatchedTableKV` is the hot path: the stages' writes of a batch go to the table's local
store in one RocksDB write batch per partition and to its changelog topic as aiokafka record
batches (:class:`RecordBatcher`), instead of Faust's per-key ``table[key] = value`` (a changelog
send, its callbacks and a store put per key, ~100 us each). The records are the ones Faust
writes (same topic, partition, raw key and value, ``None`` deletes), so Faust's own recovery and
standbys restore them unchanged. :class:`FaustTableKV` keeps Faust's per-key path for the small
alerting table. :func:`run_batched` processes events in batches and commits their offsets
itself, only after the batch's state is written and its output sent, so a commit never covers an
event whose effects are not yet in Kafka (at-least-once, and the stages make replays idempotent).

Why not Faust's acks: the agents' topics are declared with ``acks=False`` so that Faust commits
nothing of them. Faust acks, and so commits, the records its stream skips while a rebalance is
under way without handing them to the agent (``faust.streams.Stream._py_aiter``), and it can
deliver a record twice (records fetched between resuming a partition and seeking it to the
committed offset come again after the seek). A commit could then pass records no stage has
written, and a record handled twice within one batch had its spike-detector counts signalled
twice. :class:`Progress` drops records delivered again and knows what to commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

from faust.streams import _current_event
from faust.types import TP
from rocksdict import BlockBasedOptions, Cache, Options, WriteBatch, WriteBufferManager

log = logging.getLogger(__name__)


class FaustTableKV:
    """A Faust table seen as a :class:`streams.state.KeyValue` (raw bytes keys and values)."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.events: dict[int, Any] = {}

    @contextlib.contextmanager
    def _on(self, partition: int) -> Iterator[None]:
        event = self.events.get(partition)
        if event is None:
            yield
            return
        token = _current_event.set(weakref.ref(event))
        try:
            yield
        finally:
            _current_event.reset(token)

    def get(self, partition: int, key: bytes) -> bytes | None:
        with self._on(partition):
            value: bytes | None = self.table.get(key)
            return value

    def set(self, partition: int, key: bytes, value: bytes) -> None:
        if partition not in self.events:
            raise RuntimeError(f"no event seen on partition {partition}: cannot write its state")
        with self._on(partition):
            self.table[key] = value

    def delete(self, partition: int, key: bytes) -> None:
        with self._on(partition), contextlib.suppress(KeyError):
            del self.table[key]

    def read(self, key: bytes) -> bytes | None:
        """Read outside stream processing (web views): any local partition."""
        value: bytes | None = self.table.get(key)
        return value


Records = dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]]


class RecordBatcher:
    """Sends records already assigned to partitions as aiokafka record batches.

    ``producer()`` returns the running ``aiokafka.AIOKafkaProducer`` (Faust's own, so the
    records share its connections and settings). One batch per partition, a new one when full.
    """

    def __init__(self, producer: Callable[[], Any]) -> None:
        self._producer = producer
        self.records: Records = {}
        self.sent: dict[tuple[str, int], int] = {}  # the last :meth:`send`'s offsets

    def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None) -> None:
        records = self.records.get((topic, partition))
        if records is None:
            records = self.records[(topic, partition)] = []
        records.append((key, value))

    async def send(self) -> dict[tuple[str, int], int]:
        """Send every added record; return once all are acknowledged, with the offset of the
        last record per (topic, partition). The records are kept if sending fails (a retry
        sends them all again)."""
        records = self.records
        if not records:
            return {}
        producer = self._producer()
        sent: list[tuple[tuple[str, int], int, Any]] = []
        for (topic, partition), items in records.items():
            batch, n = producer.create_batch(), 0
            for key, value in items:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    if n == 0:
                        raise ValueError(f"a record for {topic} does not fit in a batch")
                    fut = await producer.send_batch(batch, topic, partition=partition)
                    sent.append(((topic, partition), n, fut))
                    batch, n = producer.create_batch(), 0
                    batch.append(key=key, value=value, timestamp=None)
                n += 1
            fut = await producer.send_batch(batch, topic, partition=partition)
            sent.append(((topic, partition), n, fut))
        last: dict[tuple[str, int], int] = {}
        for tp, n, fut in sent:
            meta = await fut
            last[tp] = max(last.get(tp, -1), meta.offset + n - 1)
        self.records = {}
        self.sent = last
        return last


def faust_producer(app: Any) -> Callable[[], Any]:
    """The aiokafka producer inside Faust's producer (started with the app)."""

    def get() -> Any:
        return app.producer._ensure_producer()

    return get


class BatchedTableKV:
    """A Faust table as a :class:`streams.state.KeyValue` whose writes are applied per batch.

    ``set``/``delete`` are buffered (and visible to ``get`` at once); :meth:`commit` writes the
    buffer to the local store (one RocksDB write batch per partition) and queues the changelog
    records on ``batcher``; after the batcher has sent them, :meth:`persisted` records their
    offsets in the store as Faust does, so a restart replays only newer changelog records.
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        self._pending: dict[int, dict[bytes, bytes | None]] = {}

    @property
    def _rocks(self) -> bool:
        return hasattr(self.table.data, "_db_for_partition")

    def get(self, partition: int, key: bytes) -> bytes | None:
        pending = self._pending.get(partition)
        if pending is not None and key in pending:
            return pending[key]
        store = self.table.data
        if self._rocks:
            value: bytes | None = store._db_for_partition(partition).get(key)
            return value
        return store.data.get(key)  # type: ignore[no-any-return]

    def set(self, partition: int, key: bytes, value: bytes) -> None:
        self._pending.setdefault(partition, {})[key] = value

    def delete(self, partition: int, key: bytes) -> None:
        self._pending.setdefault(partition, {})[key] = None

    def read(self, key: bytes, partition: int | None = None) -> bytes | None:
        """Read outside stream processing (web views), as last flushed: from any local
        partition, or only from ``partition`` when the caller knows the key's."""
        if partition is not None:
            return self.read_many(partition, [key])[0]
        value: bytes | None = self.table.get(key)
        return value

    def read_many(self, partition: int, keys: list[bytes]) -> list[bytes | None]:
        """:meth:`read` of several keys of one partition: one RocksDB multi-get (Faust's own
        ``table.get`` asks every local database whether it may hold a key, key by key)."""
        dbs = getattr(self.table.data, "_dbs", None)
        db = dbs.get(partition) if dbs is not None else None
        if db is None:  # the memory store, or a partition whose database is not open here
            return [self.table.get(key) for key in keys]
        values: list[bytes | None] = db.get(keys)
        return values

    def scan(self, partition: int, lo: bytes, hi: bytes) -> Iterator[tuple[bytes, bytes]]:
        """The keys ``lo <= key < hi`` of one partition and their values, in key order, as last
        flushed (web views: one RocksDB range iteration; the memory store is searched whole)."""
        dbs = getattr(self.table.data, "_dbs", None)
        if dbs is not None:
            db = dbs.get(partition)
            if db is None:
                return
            for key, value in db.items(from_key=lo):
                if key >= hi:
                    return
                yield key, value
            return
        data = self.table.data.data
        owner = getattr(self.table.data, "_key_partition", {})
        for key in sorted(k for k in data if lo <= k < hi):
            if owner.get(key, partition) == partition:
                yield key, data[key]

    def discard(self, partition: int) -> None:
        self._pending.pop(partition, None)

    def commit(self, batcher: RecordBatcher) -> None:
        """Write the buffered changes to the store and queue their changelog records."""
        pending, self._pending = self._pending, {}
        topic = self.table.changelog_topic.get_topic_name()
        store = self.table.data
        rocks = self._rocks
        for partition, writes in pending.items():
            if rocks:
                batch = WriteBatch(raw_mode=True)
                for key, value in writes.items():
                    if value is None:
                        batch.delete(key)
                    else:
                        batch.put(key, value)
                store._db_for_partition(partition).write(batch)
            else:
                data, owner = store.data, store._key_partition
                for key, value in writes.items():
                    if value is None:
                        data.pop(key, None)
                        owner.pop(key, None)
                    else:
                        data[key] = value
                        owner[key] = partition
            records = batcher.records.setdefault((topic, partition), [])
            records.extend(writes.items())

    def persisted(self, offsets: dict[tuple[str, int], int]) -> None:
        """Remember the changelog offsets written (Faust's ``set_persisted_offset``)."""
        topic = self.table.changelog_topic.get_topic_name()
        for (name, partition), offset in offsets.items():
            if name == topic:
                self.table.data.set_persisted_offset(TP(topic, partition), offset)


class SharedRocksDB:
    """One memory budget for every RocksDB database of the process.

    Faust opens one database per table partition, each with its own block cache and memtables,
    so RSS grows with the partition count and keeps creeping up for as long as the caches fill
    (Faust's defaults: a 2 GiB cache and 3 x 64 MiB memtables per database). Here all
    databases share one LRU block cache of ``memory_mb`` that also holds index and filter
    blocks, and memtables are charged to that same cache through one write buffer manager
    (flushes start when memtables of all databases reach half the budget), so the process's
    RocksDB memory levels off at about ``memory_mb`` whatever the partitions or the state size.
    """

    def __init__(self, memory_mb: int, write_buffer_mb: int) -> None:
        #: the budget, in bytes
        self.limit = memory_mb * 2**20
        self.write_buffer_mb = write_buffer_mb
        self.cache = Cache(self.limit)
        self.write_buffers = WriteBufferManager.new_write_buffer_manager_with_cache(
            self.limit // 2, False, self.cache
        )

    def install(self, table: Any) -> bool:
        """Make ``table``'s RocksDB store (if it is one) open its databases on this budget;
        False for another store (``memory://``)."""
        store = table.data
        options = getattr(store, "rocksdb_options", None)
        if options is None or not getattr(options, "use_rocksdict", False):
            return False

        def as_options() -> Options:
            db_options = Options(raw_mode=True)
            db_options.create_if_missing(True)
            db_options.set_max_open_files(options.max_open_files)
            db_options.set_write_buffer_size(self.write_buffer_mb * 2**20)
            db_options.set_max_write_buffer_number(2)
            db_options.set_target_file_size_base(options.target_file_size_base)
            db_options.set_write_buffer_manager(self.write_buffers)
            table_options = BlockBasedOptions()
            table_options.set_bloom_filter(options.bloom_filter_size, True)
            table_options.set_block_cache(self.cache)
            table_options.set_cache_index_and_filter_blocks(True)
            table_options.set_pin_l0_filter_and_index_blocks_in_cache(True)
            db_options.set_block_based_table_factory(table_options)
            return db_options

        options.as_options = as_options
        return True

    def usage(self) -> int:
        """Bytes now held in the shared cache (blocks and charged memtables)."""
        return int(self.cache.get_usage())


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


class ClearWatch:
    """Told when Faust clears its stream queues while flow is on.

    Faust's ``flow_control.resume()`` clears every queue it manages, and recovery calls it
    twice per rebalance: the second time after the streams were sought to their committed
    offsets and may have fetched records already. Those records are gone; nothing fetches
    them again. Registered with the flow control as if it were one more queue, this calls
    ``on_clear`` then (a clear while flow is off belongs to a revocation: Faust seeks to the
    committed offsets after it)."""

    def __init__(self, flow_control: Any, on_clear: Callable[[], object]) -> None:
        self.flow_control = flow_control
        self.on_clear = on_clear
        flow_control.manage_queue(self)

    def clear(self) -> None:
        if self.flow_control.is_active():
            self.on_clear()


def faust_seeker(app: Any) -> Seek:
    """Seek a partition of Faust's consumer (the records come again from ``offset``). A
    partition a rebalance took away meanwhile is left alone: its next owner reads it from the
    committed offset."""

    async def seek(tp: Any, offset: int) -> object:
        try:
            return await app.consumer.seek(tp, offset)
        except Exception as exc:  # IllegalStateError: no longer assigned
            log.warning("%s: could not seek to %d (%r)", tp, offset, exc)
            return None

    return seek


def faust_resumer(app: Any) -> Callable[[Any], None]:
    """Have Faust's consumer fetch a partition again (``resume_partitions``: back in the set
    it fetches, out of the paused one)."""

    def resume(tp: Any) -> None:
        app.consumer.resume_partitions([tp])

    return resume


def faust_log_starts(app: Any) -> LogStarts:
    """The log starts of Faust's consumer's partitions (``beginning_offsets``)."""

    async def fetch(partitions: list[Any]) -> Mapping[Any, int]:
        starts: Mapping[Any, int] = await app.consumer.earliest_offsets(*partitions)
        return starts

    return LogStarts(fetch)


def faust_committed(app: Any) -> Callable[[Any], int | None]:
    """The committed offset Faust knows for a partition (read at the rebalance, then updated
    by each commit), or None."""

    def committed(tp: Any) -> int | None:
        offset: int | None = app.consumer._committed_offset.get(tp)
        return offset

    return committed


Commit = Callable[[dict[Any, int]], Awaitable[object]]


def faust_committer(app: Any) -> Commit:
    """Commit offsets the way Faust commits acked ones (``Consumer._commit_offsets``): first
    flush Faust's producer, which still holds the changelog records of writes through Faust's
    own ``table[key] = value`` (the alerting table), then commit in Faust's group; partitions
    no longer assigned are left out."""

    async def commit(offsets: dict[Any, int]) -> object:
        return await app.consumer._commit_offsets(offsets)

    return commit


async def run_batched(
    stream: Any,
    handle: Callable[[Any], None],
    flush: Callable[[], Awaitable[None]],
    policy: BatchPolicy,
    commit: Commit,
    generation: Callable[[], int] = lambda: 0,
    full: Callable[[], bool] = lambda: False,
    progress: Progress | None = None,
    seek: Seek | None = None,
    starts: LogStarts | None = None,
) -> None:
    """Drive ``stream`` (a topic declared with ``acks=False``): ``handle`` each event,
    ``flush`` per batch, then ``commit`` the batch's offsets.

    A batch ends after ``policy.max_events`` events, when ``full()`` (the output grew large) or
    every ``policy.max_delay_s`` (a ticker task flushes a quiet stream). ``handle`` is
    synchronous and ``flush`` does all its state writes before its first ``await``, so a flush
    covers exactly the events handled before it; events handled while it awaits its sends belong
    to the next batch. ``handle`` must not raise for bad input: stages turn bad input into dead
    letters. A record Kafka delivers again in the same generation is not handled again.

    ``generation()`` changes on every rebalance: events handled before one are never committed
    (their partition's unflushed state was dropped, and Kafka delivers them again from the
    committed offset; the stages apply the replay once).
    """
    progress = progress if progress is not None else Progress()
    lock = asyncio.Lock()

    async def flush_pending() -> None:
        async with lock:
            if not progress.count:
                return
            handled_in, offsets = progress.take()
            await flush()
            if offsets and handled_in == generation():
                await commit(offsets)

    async def ticker() -> None:
        while True:
            await asyncio.sleep(policy.max_delay_s)
            if progress.count:
                await flush_pending()

    task = asyncio.ensure_future(ticker())
    try:
        async for event in stream.noack().events():
            if await admit(progress, event, generation, seek, starts) is None:
                continue
            handle(event)
            if progress.count >= policy.max_events or full():
                await flush_pending()
    finally:
        task.cancel()
