"""Faust adapters: a table as a partitioned KeyValue, and batched processing with manual acks.

Faust writes a table key to the changelog partition of the *current event*; stages flush the
keys of several partitions at once, so :class:`FaustTableKV` sets the current event to the last
event seen on the partition being written. :func:`run_batched` processes events with acks
disabled and acks them only after the batch's state is written and its output sent, so a commit
never covers an event whose effects are not yet in Kafka (at-least-once, and the stages make
replays idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from faust.streams import _current_event

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


class BatchPolicy:
    """When to flush: ``max_events`` handled, or ``max_delay_s`` after the last flush."""

    def __init__(self, max_events: int = 10_000, max_delay_s: float = 0.25) -> None:
        self.max_events = max_events
        self.max_delay_s = max_delay_s


async def run_batched(
    stream: Any,
    handle: Callable[[Any], None],
    flush: Callable[[], Awaitable[None]],
    policy: BatchPolicy,
    generation: Callable[[], int] = lambda: 0,
) -> None:
    """Drive ``stream`` with manual acks: ``handle`` each event, ``flush`` per batch, then ack.

    A batch ends after ``policy.max_events`` events or every ``policy.max_delay_s`` (a ticker
    task flushes a quiet stream). ``handle`` is synchronous and ``flush`` does all its state
    writes before its first ``await``, so a flush covers exactly the events handled before it;
    events handled while it awaits its sends belong to the next batch. ``handle`` must not raise
    for bad input: stages turn bad input into dead letters.

    ``generation()`` changes on every rebalance: events handled before one are never acked
    (their partition's unflushed state was dropped, and faust delivers them again from the
    committed offset; the stages apply the replay once).
    """
    manual = stream.noack()
    pending: list[tuple[Any, int]] = []
    lock = asyncio.Lock()

    async def flush_pending() -> None:
        async with lock:
            batch = pending[:]
            pending.clear()
            if not batch:
                return
            await flush()
            current = generation()
            for done, handled_in in batch:
                if handled_in == current:
                    await manual.ack(done)

    async def ticker() -> None:
        while True:
            await asyncio.sleep(policy.max_delay_s)
            if pending:
                await flush_pending()

    task = asyncio.ensure_future(ticker())
    try:
        async for event in manual.events():
            handle(event)
            pending.append((event, generation()))
            if len(pending) >= policy.max_events:
                await flush_pending()
    finally:
        task.cancel()
