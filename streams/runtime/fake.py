"""An in-memory runtime for the agents: topics, partitions, commits and rebalances, no broker.

:class:`FakeRuntime` is the agents' :class:`~streams.runtime.checkpoint.Broker` as
:class:`~streams.runtime.faust_runtime.FaustRuntime` is on a worker, and writes down, in
:attr:`FakeRuntime.log`, every step that reaches "Kafka" in the order it happens: a state write
batch to a local store, a send (which records, to which topic partitions), a commit. A test
drives an agent the way the worker does (:meth:`FakeRuntime.loop` is the same
:class:`~streams.runtime.batching.BatchLoop`), delivers records again, seeks, rebalances, and
reads the log, the topics and the stores. Nothing sleeps and no clock is read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aiokafka.errors import KafkaTimeoutError

from streams.runtime.batching import BatchLoop, BatchPolicy, Progress, Taken
from streams.runtime.checkpoint import Batcher, Checkpoint, Step
from streams.stages import partition_for

Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]


class TP(NamedTuple):
    topic: str
    partition: int


@dataclass(frozen=True)
class Message:
    """A record as an agent sees it (the fields of Faust's ``event.message`` it reads)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    timestamp: float | None = None  # seconds, as Faust gives it

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


@dataclass(frozen=True)
class Event:
    message: Message
    value: bytes


class FakeBatcher:
    """:class:`~streams.runtime.tables.RecordBatcher` onto the fake's topics."""

    def __init__(self, runtime: FakeRuntime) -> None:
        self.runtime = runtime
        self.records: dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]] = {}
        self.sent: dict[tuple[str, int], int] = {}

    def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None) -> None:
        self.records.setdefault((topic, partition), []).append((key, value))

    async def send(self) -> dict[tuple[str, int], int]:
        records = self.records
        if not records:
            return {}
        for topic, _ in records:
            self.runtime.refuse(topic)
        self.runtime.log.append(("send", sorted((tp, len(items)) for tp, items in records.items())))
        last = {
            tp: self.runtime.append(tp[0], tp[1], [(k, v, None) for k, v in items])
            for tp, items in records.items()
        }
        self.records, self.sent = {}, last
        return last


class MemoryTable:
    """A table with batched writes (:class:`~streams.runtime.tables.BatchedTableKV`) on dicts:
    writes are buffered until :meth:`commit` writes them to the store (logged as one state
    write batch) and queues their changelog records."""

    def __init__(self, runtime: FakeRuntime, name: str) -> None:
        self.runtime = runtime
        self.name = name
        self.changelog = f"{name}-changelog"
        self.store: dict[int, dict[bytes, bytes]] = {}
        self.persisted_offsets: dict[int, int] = {}
        self._pending: dict[int, dict[bytes, bytes | None]] = {}

    def get(self, partition: int, key: bytes) -> bytes | None:
        pending = self._pending.get(partition)
        if pending is not None and key in pending:
            return pending[key]
        return self.store.get(partition, {}).get(key)

    def set(self, partition: int, key: bytes, value: bytes) -> None:
        self._pending.setdefault(partition, {})[key] = value

    def delete(self, partition: int, key: bytes) -> None:
        self._pending.setdefault(partition, {})[key] = None

    def read(self, key: bytes, partition: int | None = None) -> bytes | None:
        parts = [partition] if partition is not None else list(self.store)
        for p in parts:
            value = self.store.get(p, {}).get(key)
            if value is not None:
                return value
        return None

    def read_many(self, partition: int, keys: list[bytes]) -> list[bytes | None]:
        return [self.store.get(partition, {}).get(key) for key in keys]

    def scan(self, partition: int, lo: bytes, hi: bytes) -> Iterator[tuple[bytes, bytes]]:
        data = self.store.get(partition, {})
        for key in sorted(k for k in data if lo <= k < hi):
            yield key, data[key]

    def discard(self, partition: int) -> None:
        self._pending.pop(partition, None)

    def commit(self, batcher: Batcher) -> None:
        pending, self._pending = self._pending, {}
        if not pending:
            return
        self.runtime.log.append(("write state", self.name, sorted(pending)))
        for partition, writes in pending.items():
            data = self.store.setdefault(partition, {})
            for key, value in writes.items():
                if value is None:
                    data.pop(key, None)
                else:
                    data[key] = value
                batcher.add(self.changelog, partition, key, value)

    def persisted(self, offsets: dict[tuple[str, int], int]) -> None:
        for (topic, partition), offset in offsets.items():
            if topic == self.changelog:
                self.persisted_offsets[partition] = offset


class MemoryStore:
    """A table with per-key writes (:class:`~streams.runtime.tables.FaustTableKV`): ``events``
    says which partitions this worker runs (the alerting stage's partition 0)."""

    def __init__(self) -> None:
        self.data: dict[tuple[int, bytes], bytes] = {}
        self.events: dict[int, Any] = {}

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self.data.get((partition, key))

    def set(self, partition: int, key: bytes, value: bytes) -> None:
        if partition not in self.events:
            raise RuntimeError(f"no event seen on partition {partition}: cannot write its state")
        self.data[(partition, key)] = value

    def delete(self, partition: int, key: bytes) -> None:
        self.data.pop((partition, key), None)

    def read(self, key: bytes) -> bytes | None:
        return next((v for (_, k), v in self.data.items() if k == key), None)


@dataclass
class FakeRuntime:
    """Topics as lists per partition, committed offsets, a generation per rebalance."""

    #: partitions of a topic not in ``partition_counts``
    partitions_per_topic: int = 4
    partition_counts: dict[str, int] = field(default_factory=lambda: {"alerts": 1, "signals": 1})
    generation: int = 0
    topics: dict[str, dict[int, list[Record]]] = field(default_factory=dict)
    committed: dict[Any, int] = field(default_factory=dict)
    #: ("write state", table, partitions), ("send", [((topic, partition), n), ...]),
    #: ("commit", {tp: offset}), ("refused", topic), in the order they happened
    log: list[tuple[Any, ...]] = field(default_factory=list)
    #: (tp, offset) of every seek asked for
    seeks: list[tuple[Any, int]] = field(default_factory=list)
    #: topic -> how many more sends to it Kafka refuses (a KafkaTimeoutError, nothing written)
    refusals: dict[str, int] = field(default_factory=dict)

    # -- the agents' Broker ----------------------------------------------------------------
    def batcher(self) -> FakeBatcher:
        return FakeBatcher(self)

    async def partitions(self, topic: str) -> int:
        return self.partition_counts.get(topic, self.partitions_per_topic)

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        *,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.refuse(topic)
        if partition is None:
            n = await self.partitions(topic)
            partition = 0 if key is None else partition_for(key.decode(), n)
        self.log.append(("send", [((topic, partition), 1)]))
        self.append(topic, partition, [(key, value, headers)])

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.log.append(("commit", dict(offsets)))
        self.committed.update(offsets)

    async def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp, offset))

    def refuse(self, topic: str) -> None:
        """Raise Kafka's refusal of a send to ``topic`` while :attr:`refusals` asks for one."""
        left = self.refusals.get(topic, 0)
        if left > 0:
            self.refusals[topic] = left - 1
            self.log.append(("refused", topic))
            raise KafkaTimeoutError(f"the fake refused a send to {topic}")

    # -- the test's side -------------------------------------------------------------------
    def append(self, topic: str, partition: int, records: list[Record]) -> int:
        """Append to a topic partition; the offset of the last record."""
        log = self.topics.setdefault(topic, {}).setdefault(partition, [])
        log.extend(records)
        return len(log) - 1

    def records(self, topic: str, partition: int) -> list[Record]:
        return self.topics.get(topic, {}).get(partition, [])

    def events(
        self, topic: str, partition: int, start: int = 0, end: int | None = None
    ) -> list[Event]:
        """The records of a topic partition from ``start`` as an agent receives them."""
        records = self.records(topic, partition)
        return [
            Event(Message(topic, partition, offset, key), value or b"")
            for offset, (key, value, _) in enumerate(records)
            if offset >= start and (end is None or offset < end)
        ]

    def sends_to(self, topic: str) -> list[int]:
        """Positions in :attr:`log` of the sends that wrote to ``topic``."""
        return [
            i
            for i, entry in enumerate(self.log)
            if entry[0] == "send" and any(tp[0] == topic for tp, _ in entry[1])
        ]

    def steps(self) -> list[str]:
        """The log's entries by kind: "write state", "send" or "commit"."""
        return [entry[0] for entry in self.log]

    def rebalance(self) -> None:
        """A rebalance began: records handled before it are of an older generation."""
        self.generation += 1

    def progress(self) -> Progress:
        return Progress(committed=self.committed.get, clock=lambda: 0.0)

    def loop(
        self,
        handle: Callable[[Any], None],
        flush: Callable[[Taken], Awaitable[None]],
        full: Callable[[], bool] = lambda: False,
        max_events: int = 1_000_000,
    ) -> BatchLoop:
        """The batch loop the worker runs an agent in (flushes when a test says, or by size)."""
        return BatchLoop(
            handle,
            flush,
            BatchPolicy(max_events=max_events, max_delay_s=3600.0),
            lambda: self.generation,
            full,
            progress=self.progress(),
            seek=self.seek,
        )

    def checkpoint(self, name: str, order: tuple[Step, ...], stage: str = "") -> Checkpoint:
        return Checkpoint(
            name,
            order,
            self,
            signals_topic="signals",
            dead_letter_topic="dead-letters",
            dead_letter_stage=stage,
            retry_pause_s=0.0,
        )
