"""The runtime under the agents on a worker: Faust's app, topics, tables, consumer and hooks.

:class:`FaustRuntime` is the :class:`~streams.runtime.checkpoint.Broker` of the agents (sends
that wait until Kafka has a record, commits, partition counts, record batches), runs each agent
on its topics with a :class:`~streams.runtime.batching.BatchLoop`, counts rebalances
(``generation``), reads partitions again when Faust dropped their records (:class:`ClearWatch`,
:meth:`FaustRuntime.read_stalled_partitions`) and answers the adapters' questions about
placement (:class:`streams.ports.Placement`). Faust's private parts are reached only through
:mod:`streams.runtime.faust_private`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import Any

import faust
from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError

from streams.metadata_pacing import pace_metadata_updates
from streams.ports import LagSource
from streams.runtime import faust_private
from streams.runtime.batching import (
    BatchLoop,
    BatchPolicy,
    LogStarts,
    Progress,
    Taken,
    apply_seeks,
    stalled,
)
from streams.runtime.tables import BatchedTableKV, FaustTableKV, RecordBatcher
from streams.settings import Settings

log = logging.getLogger(__name__)

#: How often the agents' partitions are checked for a stall, and how long a partition behind
#: may send its agent nothing before it is fetched again (lag is measured every 15 s).
STALL_CHECK_S = 10.0
STALL_AFTER_S = 45.0


def broker_urls(bootstrap: str) -> list[str]:
    """faust broker URLs for a Kafka ``host:port[,host:port...]`` bootstrap string."""
    return [f"kafka://{hostport.strip()}" for hostport in bootstrap.split(",") if hostport.strip()]


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
        faust_private.watch_queue_clears(flow_control, self)

    def clear(self) -> None:
        if faust_private.flow_is_on(self.flow_control):
            self.on_clear()


class FaustRuntime:
    """One worker's Faust app and what the agents and adapters need of it."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        policy: BatchPolicy | None = None,
        on_read_again: Callable[[str], object] = lambda agent: None,
        on_flush_failure: Callable[[str], object] = lambda agent: None,
    ) -> None:
        self.settings = settings
        #: told the agent's name whenever one of its partitions is read again
        self.on_read_again = on_read_again
        #: told the agent's name whenever one of its flushes fails (see BatchLoop)
        self.on_flush_failure = on_flush_failure
        self.policy = policy if policy is not None else BatchPolicy()
        datadir = settings.data_dir / "worker" / settings.app_id
        datadir.mkdir(parents=True, exist_ok=True)
        self.app = faust.App(
            settings.app_id,
            broker=broker_urls(bootstrap),
            store=settings.store,
            datadir=str(datadir),
            web_host=settings.web_host,
            web_port=settings.web_port,
            web_in_thread=False,
            topic_partitions=settings.topic_partitions,
            topic_replication_factor=settings.topic_replication_factor,
            processing_guarantee=settings.processing_guarantee,
            autodiscover=False,
            web_enabled=True,
            broker_session_timeout=settings.session_timeout_s,
            broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 4),
            stream_buffer_maxsize=16_384,
            producer_linger=0.005,
            producer_max_batch_size=512 * 1024,
        )
        #: rebalances seen: records handled in an older generation are never committed
        self.generation = 0
        self._quiet_since = time.monotonic()  # the last rebalance or recovery
        self._topics: dict[str, Any] = {}
        self._partition_counts: dict[str, int] = {}
        self._progresses: list[tuple[str, Progress, frozenset[str]]] = []
        #: where partitions nobody committed start (what their first record must be)
        self.starts = LogStarts(self._earliest_offsets)
        self._seeking: set[asyncio.Future[None]] = set()
        self._clear_watch = ClearWatch(self.app.flow_control, self._on_queues_cleared)

    # -- declaring topics, tables and agents -----------------------------------------------
    def topic(self, *names: str, **kw: Any) -> Any:
        """A topic of raw bytes (keys and values); kept by name for :meth:`send` (the first
        declaration of a name is the one sent through)."""
        topic = self.app.topic(
            *names,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            **kw,
        )
        for name in names:
            self._topics.setdefault(name, topic)
        return topic

    def table(self, name: str, partitions: int, help: str) -> Any:
        return self.app.Table(
            name, partitions=partitions, key_type=bytes, value_type=bytes, help=help
        )

    def batched_kv(self, table: Any) -> BatchedTableKV:
        return BatchedTableKV(table)

    def per_key_kv(self, table: Any) -> FaustTableKV:
        return FaustTableKV(table)

    def changelog_topic(self, table: Any) -> str:
        return str(table.changelog_topic.get_topic_name())

    def agent(
        self, name: str, topic: Any, run: Callable[[AsyncIterable[Any]], Awaitable[None]]
    ) -> None:
        """Run ``run`` over the records of ``topic`` (declared with ``acks=False``: the agent
        commits), one instance per worker."""

        async def agent(stream: Any) -> None:
            await run(stream.noack().events())

        self.app.agent(topic, name=name, concurrency=1)(agent)

    def batch_loop(
        self,
        name: str,
        topic: Any,
        handle: Callable[[Any], None],
        flush: Callable[[Taken], Awaitable[None]],
        full: Callable[[], bool] = lambda: False,
    ) -> BatchLoop:
        """The batch loop of the agent ``name`` on ``topic`` (this worker's commits, seeks
        and rebalances)."""
        return BatchLoop(
            handle,
            flush,
            self.policy,
            lambda: self.generation,
            full,
            progress=self.progress(name, topic),
            seek=self.seek,
            starts=self.starts,
            name=name,
            on_flush_failure=lambda: self.on_flush_failure(name),
        )

    def progress(self, name: str, topic: Any) -> Progress:
        """What the agent ``name`` handled of ``topic``'s partitions (redeliveries, gaps)."""
        progress = Progress(
            on_gap=lambda: self.on_read_again(name),
            committed=self.committed,
            start=self.starts.get,
        )
        self._progresses.append((name, progress, frozenset(topic.topics)))
        return progress

    def task(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run ``fn`` as a task of the app (started with the worker)."""

        async def task() -> None:
            await fn()

        task.__name__ = task.__qualname__ = getattr(fn, "__name__", "task")
        self.app.task(task)

    def every(self, interval_s: float, fn: Callable[[], Awaitable[None]], name: str) -> None:
        """Run ``fn`` every ``interval_s`` seconds while the worker runs."""

        async def timer() -> None:
            await fn()

        timer.__name__ = timer.__qualname__ = name
        self.app.timer(interval=interval_s, name=name)(timer)

    def on_revoked(self, callback: Callable[[list[tuple[str, int]]], None]) -> None:
        """On every rebalance, before the partitions go: the generation moves on, then
        ``callback`` hears which (topic, partition) this worker loses."""

        async def revoked(app: Any, revoked: Any, **kwargs: Any) -> None:
            self.generation += 1
            self.starts.forget()
            self._quiet_since = time.monotonic()
            callback([(tp.topic, tp.partition) for tp in revoked])

        self.app.on_partitions_revoked.connect(revoked)  # type: ignore[arg-type]

    def on_assigned(self, callback: Callable[[set[str]], Awaitable[None]]) -> None:
        """After every rebalance: ``callback`` hears the topics this worker has partitions of."""

        async def assigned(app: Any, assigned: Any, **kwargs: Any) -> None:
            await callback({tp.topic for tp in assigned})

        self.app.on_partitions_assigned.connect(assigned)  # type: ignore[arg-type]

    # -- the agents' Broker ----------------------------------------------------------------
    def producer(self) -> Any:
        """The aiokafka producer inside Faust's (started with the app)."""
        return faust_private.aiokafka_producer(self.app)

    async def start_producer(self) -> None:
        await self.app.producer.maybe_start()
        # a broker outage must not make the producer spin on metadata (see the module)
        pace_metadata_updates(self.producer().client)

    def batcher(self) -> RecordBatcher:
        return RecordBatcher(self.producer)

    async def partitions(self, topic: str) -> int:
        """How many partitions ``topic`` has (keyed records go where Kafka's default
        partitioner would put them)."""
        n = self._partition_counts.get(topic)
        if n is None:
            n = self._partition_counts[topic] = len(await self.producer().partitions_for(topic))
        return n

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        *,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Send and wait until Kafka has it: an agent commits its inputs after this, and
        Faust's send only queues (stage 1's own consumer commits without Faust's flush).
        Kafka's refusal is raised as the KafkaError it is, which the checkpoint retries (Faust
        wraps one raised while queueing in its ProducerSendError)."""
        try:
            sent = await self._topics[topic].send(
                key=key, value=value, partition=partition, headers=headers
            )
        except ProducerSendError as exc:
            if isinstance(exc.__cause__, KafkaError):
                raise exc.__cause__ from exc
            raise
        await sent

    async def commit(self, offsets: dict[Any, int]) -> object:
        return await faust_private.commit_offsets(self.app, offsets)

    async def _earliest_offsets(self, partitions: list[Any]) -> Any:
        return await self.app.consumer.earliest_offsets(*partitions)

    def committed(self, tp: Any) -> int | None:
        return faust_private.committed_offset(self.app, tp)

    async def seek(self, tp: Any, offset: int) -> None:
        """Seek a partition of Faust's consumer (the records come again from ``offset``). A
        partition a rebalance took away meanwhile is left alone: its next owner reads it from
        the committed offset."""
        try:
            # seek_wait seeks in Faust's consumer thread, where aiokafka's fetcher runs
            # (Consumer.seek calls aiokafka from this thread: its fetcher then crashed the worker
            # with a KeyError once, after a read-again at a first assignment)
            await self.app.consumer.seek_wait({tp: offset})
        except Exception as exc:  # IllegalStateError: no longer assigned
            log.warning("%s: could not seek to %d (%r)", tp, offset, exc)

    def resume(self, tp: Any) -> None:
        """Have Faust's consumer fetch a partition again (back in the set it fetches)."""
        self.app.consumer.resume_partitions([tp])

    # -- reading again ---------------------------------------------------------------------
    def _assignment(self) -> Iterable[Any] | None:
        try:
            assignment: Iterable[Any] = self.app.consumer.assignment()
        except Exception:  # not started, or stopping
            return None
        return assignment

    def _on_queues_cleared(self) -> None:
        """Faust dropped the records queued for the agents: read them again."""
        assigned = self._assignment()
        if assigned is None:
            return
        assigned = list(assigned)
        for _, progress, topics in self._progresses:
            progress.resync(self.generation, [tp for tp in assigned if tp.topic in topics])
            if progress.seeks:
                future = asyncio.ensure_future(apply_seeks(progress, self.seek, logging.DEBUG))
                self._seeking.add(future)
                future.add_done_callback(self._seeking.discard)

    async def read_stalled_partitions(self, lag: LagSource) -> None:
        """A partition behind by a recent lag measurement that sent its agent nothing for
        STALL_AFTER_S (after the last rebalance and recovery) is fetched again."""
        now, report = time.monotonic(), lag.latest
        if self.app.in_recovery:
            self._quiet_since = now
            return
        if report is None or time.time() - report.at > 2 * self.settings.lag_interval_s:
            return
        assigned = self._assignment()
        if assigned is None:
            return
        assigned = list(assigned)
        behind = {
            (p.topic, p.partition)
            for p in report.partitions
            if p.group == self.settings.app_id and p.records > 0
        }
        for agent, progress, topics in self._progresses:
            mine = [
                tp for tp in assigned if tp.topic in topics and (tp.topic, tp.partition) in behind
            ]
            for tp in stalled(mine, progress.seen, self._quiet_since, now, STALL_AFTER_S):
                log.warning(
                    "%s: behind, and nothing from it for %.0f s: fetching it again",
                    tp,
                    STALL_AFTER_S,
                )
                self.on_read_again(agent)
                self.resume(tp)
                progress.read_again(self.generation, tp)
                progress.seen[tp] = now  # tried: the next try after STALL_AFTER_S again
            await apply_seeks(progress, self.seek)

    # -- placement (streams.ports.Placement) -----------------------------------------------
    def assigned_actives(self) -> list[tuple[str, int]]:
        """The (topic, partition) this worker actively consumes; none before the first
        assignment."""
        try:
            actives = faust_private.assigned_actives(self.app)
        except Exception:  # not assigned yet
            return []
        return [(tp.topic, tp.partition) for tp in actives]

    def table_owners(self, table: str) -> list[str]:
        """Web URLs of the workers owning partitions of ``table`` (none when unknown)."""
        try:
            return [url.rstrip("/") for url in faust_private.table_owner_urls(self.app, table)]
        except Exception:
            return []

    def key_owner(self, table: str, key: bytes) -> str | None:
        """Web URL of the worker owning ``key`` of ``table`` (None when unknown)."""
        try:
            return faust_private.key_owner_url(self.app, table, key).rstrip("/")
        except Exception:
            return None

    @property
    def canonical_url(self) -> str:
        return str(self.app.conf.canonical_url).rstrip("/")

    @property
    def web_app(self) -> Any:
        """The aiohttp application the worker serves."""
        return faust_private.web_app(self.app)
