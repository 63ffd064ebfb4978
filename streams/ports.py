"""What the adapters read of a running worker, as narrow protocols.

The HTTP API (:mod:`streams.api`, :mod:`streams.sender_api`), the overview page
(:mod:`streams.page`) and the scrape-time gauges (:mod:`streams.metrics`) are handed the worker
(:class:`streams.app.Monitor`, which wires them) but type against these protocols only, which
``Monitor`` satisfies structurally: none of them imports :mod:`streams.app`, so the wiring
depends on the adapters and never the other way round (``tests/unit/test_import_rules.py``
keeps it so). Members are read-only properties: the adapters read the worker's parts, they
never replace one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from streams.core.advice import AdvicePolicy
from streams.settings import Settings
from streams.stage_cpu import StageCpu
from streams.stages.alerting import AlertingStage
from streams.stages.ingest import IngestStage
from streams.stages.messages import MessageStage
from streams.stages.recipients import RecipientStage
from streams.state import KeyValue

if TYPE_CHECKING:
    from prometheus_client import Counter

    from streams.lag import LagReport


class Topic(Protocol):
    """A Faust topic: its name."""

    def get_topic_name(self) -> str: ...


class Table(Protocol):
    """A Faust table: its name (the key of its partitions' owners in the router)."""

    @property
    def name(self) -> str: ...


class TableReader(Protocol):
    """Reads of a table's flushed state outside stream processing
    (:class:`streams.runtime.tables.BatchedTableKV`)."""

    def read(self, key: bytes, partition: int | None = None) -> bytes | None: ...

    def read_many(self, partition: int, keys: list[bytes]) -> list[bytes | None]: ...

    def scan(self, partition: int, lo: bytes, hi: bytes) -> Iterable[tuple[bytes, bytes]]: ...


class AlertingStore(KeyValue, Protocol):
    """The alerting table (:class:`streams.runtime.tables.FaustTableKV`): ``events`` has partition
    0 once this worker runs the alerting stage."""

    @property
    def events(self) -> Mapping[int, Any]: ...


class LagSource(Protocol):
    """The consumer-lag measurement (:class:`streams.lag.ConsumerLag`)."""

    @property
    def latest(self) -> LagReport | None: ...


class FailureCounters(Protocol):
    """The metric the summary line reads (:class:`streams.metrics.MonitorMetrics`)."""

    @property
    def failures(self) -> Counter: ...


class Placement(Protocol):
    """Where partitions and keys live, and the worker's timers
    (:class:`streams.runtime.faust_runtime.FaustRuntime`): the adapters ask this, never Faust."""

    def assigned_actives(self) -> list[tuple[str, int]]:
        """The (topic, partition) this worker actively consumes (none before assignment)."""

    def table_owners(self, table: str) -> list[str]:
        """Web URLs of the workers owning partitions of ``table``."""

    def key_owner(self, table: str, key: bytes) -> str | None:
        """Web URL of the worker owning ``key`` of ``table`` (None when unknown)."""

    @property
    def canonical_url(self) -> str: ...

    def every(self, interval_s: float, fn: Callable[[], Awaitable[None]], name: str) -> None:
        """Run ``fn`` every ``interval_s`` seconds while the worker runs."""


class GaugeSource(Protocol):
    """What the scrape-time gauges read (:func:`streams.metrics.monitor_state`)."""

    @property
    def runtime(self) -> Placement: ...

    @property
    def messages_topic(self) -> Topic: ...

    @property
    def recipients_topic(self) -> Topic: ...

    @property
    def messages(self) -> MessageStage: ...

    @property
    def recipients(self) -> RecipientStage: ...


class ApiSource(GaugeSource, Protocol):
    """What the HTTP API reads (:mod:`streams.api`, :mod:`streams.sender_api`)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def signals_topic(self) -> Topic: ...

    @property
    def messages_table(self) -> Table: ...

    @property
    def recipients_table(self) -> Table: ...

    @property
    def alerting_table(self) -> Table: ...

    @property
    def messages_kv(self) -> TableReader: ...

    @property
    def recipients_kv(self) -> TableReader: ...

    @property
    def alerting_kv(self) -> AlertingStore: ...

    @property
    def ingest(self) -> IngestStage: ...

    @property
    def alerting(self) -> AlertingStage: ...

    @property
    def advice_policy(self) -> AdvicePolicy: ...

    @property
    def lag(self) -> LagSource: ...

    @property
    def cpu(self) -> StageCpu: ...


class PageSource(ApiSource, Protocol):
    """What the overview page and the summary line read (:mod:`streams.page`)."""

    @property
    def metrics(self) -> FailureCounters: ...
