"""Faust tables as the stages' key-value stores, batched record sends, one RocksDB budget.

:class:`BatchedTableKV` is the hot path: the stages' writes of a batch go to the table's local
store in one RocksDB write batch per partition and to its changelog topic as aiokafka record
batches (:class:`RecordBatcher`), instead of Faust's per-key ``table[key] = value`` (a changelog
send, its callbacks and a store put per key, ~100 us each). The records are the ones Faust
writes (same topic, partition, raw key and value, ``None`` deletes), so Faust's own recovery and
standbys restore them unchanged. :class:`FaustTableKV` keeps Faust's per-key path for the small
alerting table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from faust.types import TP
from rocksdict import BlockBasedOptions, Cache, Options, WriteBatch, WriteBufferManager

from streams.runtime import faust_private

if TYPE_CHECKING:
    from streams.runtime.checkpoint import Batcher


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
        with faust_private.current_event(event):
            yield

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
        return faust_private.is_rocksdb(self.table.data)

    def get(self, partition: int, key: bytes) -> bytes | None:
        pending = self._pending.get(partition)
        if pending is not None and key in pending:
            return pending[key]
        store = self.table.data
        if self._rocks:
            value: bytes | None = faust_private.rocksdb_partition(store, partition).get(key)
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
        dbs = faust_private.open_rocksdb_partitions(self.table.data)
        db = dbs.get(partition) if dbs is not None else None
        if db is None:  # the memory store, or a partition whose database is not open here
            return [self.table.get(key) for key in keys]
        values: list[bytes | None] = db.get(keys)
        return values

    def scan(self, partition: int, lo: bytes, hi: bytes) -> Iterator[tuple[bytes, bytes]]:
        """The keys ``lo <= key < hi`` of one partition and their values, in key order, as last
        flushed (web views: one RocksDB range iteration; the memory store is searched whole)."""
        dbs = faust_private.open_rocksdb_partitions(self.table.data)
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
        owner = faust_private.memory_key_partitions(self.table.data)
        for key in sorted(k for k in data if lo <= k < hi):
            if owner.get(key, partition) == partition:
                yield key, data[key]

    def discard(self, partition: int) -> None:
        self._pending.pop(partition, None)

    def commit(self, batcher: Batcher) -> None:
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
                faust_private.rocksdb_partition(store, partition).write(batch)
            else:
                data, owner = store.data, faust_private.memory_key_partitions(store)
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

        def as_options() -> Options:
            options = faust_private.rocksdb_options(store)
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

        return faust_private.swap_rocksdb_options(store, as_options)

    def usage(self) -> int:
        """Bytes now held in the shared cache (blocks and charged memtables)."""
        return int(self.cache.get_usage())
