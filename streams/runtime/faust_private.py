"""Every access to a private (underscored, or undocumented) part of faust-streaming, in one file.

Faust is pinned to one version (pyproject.toml) because of these: when it is upgraded, this file
is the list to check. Each function says why the public API does not do.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from faust.streams import _current_event


@contextlib.contextmanager
def current_event(event: Any) -> Iterator[None]:
    """Make ``event`` Faust's current event: a table write outside the agent's own iteration
    (a flush, a timer) then goes to ``event``'s partition (Faust reads ``_current_event``)."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def aiokafka_producer(app: Any) -> Any:
    """The running aiokafka producer inside Faust's producer: record batches
    (``create_batch``/``send_batch``) have no Faust API (``Producer._ensure_producer``)."""
    return app.producer._ensure_producer()


def rocksdb_partition(store: Any, partition: int) -> Any:
    """The RocksDB database of one table partition, opened if needed: a write batch and a
    partition-local read have no Faust API (``Store._db_for_partition``)."""
    return store._db_for_partition(partition)


def is_rocksdb(store: Any) -> bool:
    """Whether a table's store is Faust's RocksDB store (it has per-partition databases)."""
    return hasattr(store, "_db_for_partition")


def open_rocksdb_partitions(store: Any) -> dict[int, Any] | None:
    """The RocksDB databases open here, by partition (``Store._dbs``), None for another
    store: a multi-get or a range scan of one partition has no Faust API."""
    return getattr(store, "_dbs", None)


def memory_key_partitions(store: Any) -> dict[bytes, int]:
    """The memory store's key -> partition map (``Store._key_partition``), which Faust keeps
    for its own per-key writes: batched writes must keep it too, or recovery and revocation
    lose track of the keys."""
    owner: dict[bytes, int] = store._key_partition
    return owner


def swap_rocksdb_options(store: Any, as_options: Callable[[], Any]) -> bool:
    """Have the RocksDB store open its databases with ``as_options()``: Faust builds them from
    ``RocksDBOptions.as_options`` and takes no shared cache or write buffer manager. False
    when the store is not RocksDB (rocksdict)."""
    options = getattr(store, "rocksdb_options", None)
    if options is None or not getattr(options, "use_rocksdict", False):
        return False
    options.as_options = as_options
    return True


def rocksdb_options(store: Any) -> Any:
    """Faust's ``RocksDBOptions`` of a store (the settings our own options keep)."""
    return store.rocksdb_options


def committed_offset(app: Any, tp: Any) -> int | None:
    """The committed offset Faust's consumer knows for ``tp`` (read at the rebalance, then
    updated by each commit; ``Consumer._committed_offset``): no public accessor."""
    offset: int | None = app.consumer._committed_offset.get(tp)
    return offset


async def commit_offsets(app: Any, offsets: dict[Any, int]) -> object:
    """Commit offsets the way Faust commits acked ones (``Consumer._commit_offsets``): it first
    flushes Faust's producer (the alerting table's changelog, written by Faust's per-key path)
    and leaves out partitions no longer assigned. ``Consumer.commit`` commits acked records
    only, and the agents' topics have acks off."""
    return await app.consumer._commit_offsets(offsets)


def watch_queue_clears(flow_control: Any, queue: Any) -> None:
    """Register ``queue`` (anything with ``clear()``) with Faust's flow control as if it were
    one of its stream queues: Faust clears them, dropping fetched records, on every resume,
    and says so nowhere else (``FlowControlEvent.manage_queue``)."""
    flow_control.manage_queue(queue)


def flow_is_on(flow_control: Any) -> bool:
    """Whether Faust's flow control is active (a clear while it is off is a revocation's)."""
    return bool(flow_control.is_active())


def assigned_actives(app: Any) -> set[Any]:
    """The partitions this worker actively consumes (standbys left out): only Faust's
    assignor knows them (``app.assignor``)."""
    actives: set[Any] = app.assignor.assigned_actives()
    return actives


def table_owner_urls(app: Any, table: str) -> list[str]:
    """The web URLs of the workers owning partitions of ``table`` (``app.router``)."""
    return [str(url) for url in app.router.table_metadata(table)]


def key_owner_url(app: Any, table: str, key: bytes) -> str:
    """The web URL of the worker owning ``key`` of ``table`` (``app.router``)."""
    return str(app.router.key_store(table, key))


def web_app(app: Any) -> Any:
    """The aiohttp application under Faust's web server (``app.web.web_app``, the aiohttp
    driver's): routes are added to it directly, with aiohttp's own handlers."""
    return app.web.web_app
