"""Kafka consumer lag of the worker's consumer groups, per topic partition, on a timer.

- records behind: the partition's log end offset minus the group's committed offset (minus the
  log start offset when the group has committed nothing yet);
- seconds behind: how long the oldest record not yet committed has been waiting: now minus the
  timestamp of the record at the committed offset (0 when nothing is behind). It grows while a
  stalled worker leaves records unprocessed, even when no new ones arrive.

The groups are stage 1's ``<app id>-ingest`` (the raw webhook topic) and Faust's ``<app id>``
(the repartition topics, the send log, the signals and the alerts topics). Offsets come from an
admin client (committed) and a consumer of no group (log start and end, and one record of each
partition that is behind, fetched with a small fetch size). Every worker measures every
partition of both groups (the numbers do not depend on who measures; aggregate with ``max``),
every ``interval_s`` seconds, never per scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError, KafkaError
from aiokafka.structs import TopicPartition

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    records: int
    seconds: float


@dataclass(frozen=True, slots=True)
class LagReport:
    """One measurement: ``at`` (unix seconds) and every partition's lag."""

    at: float
    partitions: tuple[PartitionLag, ...]

    def by_topic(self) -> list[dict[str, Any]]:
        """Per group and topic: records behind (sum) and seconds behind (max)."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for p in self.partitions:
            row = out.setdefault(
                (p.group, p.topic),
                {"group": p.group, "topic": p.topic, "records": 0, "seconds": 0.0},
            )
            row["records"] += p.records
            row["seconds"] = max(row["seconds"], p.seconds)
        return [out[k] for k in sorted(out)]


class ConsumerLag:
    """Measures the lag of ``groups`` (group -> the topics it consumes) on ``bootstrap``."""

    def __init__(
        self,
        bootstrap: str,
        groups: Mapping[str, list[str]],
        interval_s: float = 15.0,
        clock: Callable[[], float] = time.time,
        fetch_timeout_s: float = 2.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.groups = dict(groups)
        self.interval_s = interval_s
        self.clock = clock
        self.fetch_timeout_s = fetch_timeout_s
        #: the last measurement (``None`` before the first one succeeds)
        self.latest: LagReport | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        self._admin = admin
        await admin.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            max_partition_fetch_bytes=64 * 1024,
            fetch_max_bytes=1024 * 1024,
        )
        await self._consumer.start()

    async def stop(self) -> None:
        consumer, admin, self._consumer, self._admin = self._consumer, self._admin, None, None
        if consumer is not None:
            await consumer.stop()
        if admin is not None:
            await admin.close()

    async def run(self) -> None:
        """Measure every ``interval_s`` until cancelled. A failed measurement is logged and the
        previous one kept (``latest.at`` says how old it is); the clients are made again for
        the next one. Measuring the lag is never worth stopping the worker."""
        try:
            while True:
                try:
                    if self._admin is None:
                        await self.start()
                    self.latest = await self.measure()
                except (KafkaError, OSError) as exc:
                    log.warning("consumer lag not measured: %s", exc)
                    await self._reset()
                except Exception:
                    log.warning("consumer lag not measured", exc_info=True)
                    await self._reset()
                await asyncio.sleep(self.interval_s)
        finally:
            await self.stop()

    async def _reset(self) -> None:
        with contextlib.suppress(Exception):
            await self.stop()

    async def measure(self) -> LagReport:
        admin, consumer = self._admin, self._consumer
        assert admin is not None and consumer is not None, "start() first"
        topics = sorted({t for ts in self.groups.values() for t in ts})
        described = await admin.describe_topics(topics)
        partitions = {
            d["topic"]: sorted(p["partition"] for p in d["partitions"])
            for d in described
            if not d.get("error_code")
        }
        tps = [TopicPartition(t, p) for t in topics for p in partitions.get(t, [])]
        if not tps:
            return LagReport(self.clock(), ())
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        behind: dict[tuple[str, TopicPartition], tuple[int, int]] = {}  # -> (from offset, records)
        for group, group_topics in sorted(self.groups.items()):
            try:
                committed = await admin.list_consumer_group_offsets(group)
            except GroupCoordinatorNotAvailableError:  # a fresh cluster: no offsets topic yet
                log.debug("consumer lag of %s: no group coordinator yet", group)
                continue
            for tp in tps:
                if tp.topic not in group_topics:
                    continue
                meta = committed.get(tp)
                done = meta.offset if meta is not None and meta.offset >= 0 else starts[tp]
                done = max(done, starts[tp])
                behind[(group, tp)] = (done, max(0, ends[tp] - done))
        oldest = await self._timestamps(
            {tp: offset for (_, tp), (offset, records) in behind.items() if records}
        )
        now = self.clock()
        out = []
        for (group, tp), (offset, records) in sorted(behind.items()):
            ts = oldest.get((tp, offset)) if records else None
            seconds = max(0.0, now - ts) if ts is not None else 0.0
            out.append(PartitionLag(group, tp.topic, tp.partition, records, round(seconds, 3)))
        return LagReport(now, tuple(out))

    async def _timestamps(self, wanted: dict[TopicPartition, int]) -> dict[tuple[Any, int], float]:
        """(partition, offset) -> timestamp (seconds) of the first record at or after offset
        (the groups read disjoint topics: one offset per partition)."""
        consumer = self._consumer
        assert consumer is not None
        out: dict[tuple[Any, int], float] = {}
        if not wanted:
            return out
        consumer.assign(list(wanted))
        for tp, offset in wanted.items():
            consumer.seek(tp, offset)
        deadline = time.monotonic() + self.fetch_timeout_s
        missing = set(wanted)
        while missing and time.monotonic() < deadline:
            batches = await consumer.getmany(*missing, timeout_ms=200)
            for tp, records in batches.items():
                if records and tp in missing:
                    out[(tp, wanted[tp])] = records[0].timestamp / 1000
                    missing.discard(tp)
        consumer.assign([])
        return out
