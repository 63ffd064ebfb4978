"""The monitor's Prometheus metrics, all in one place, on a registry the caller owns.

Label values are bounded: never a recipient; templates, sending numbers and campaigns are capped
(the first ``template_label_cap`` / ``sender_label_cap`` / ``campaign_label_cap`` values keep
their name, later ones are counted under ``__other__`` and in an overflow counter); error codes
outside the catalog are ``other``; statuses, categories and error classes are closed sets. Tests
build a fresh ``CollectorRegistry`` each and read ``get_sample_value``.

How values get here, keeping the per-event cost to plain dict increments:

- Counters are fed from the stages' stats after every flush (``observe_*``): running totals of
  scalar fields become increments through ``_delta``; the dict fields keyed by template, sender,
  country, status or error code are *pending* counts the stage accumulates and ``observe_*``
  takes (resets) each time, so their memory is bounded by one batch.
- The event-lag histogram: the ingest stage counts events per (status, bucket index of
  ``LAG_BUCKETS``); this module keeps the cumulative counts and exposes them at scrape time.
- Gauges derived from tables (recipients in a 131049 cool-down, opted out, paused templates, the
  current 5-minute limit-error ratio) are computed at scrape time by a collector
  (:meth:`MonitorMetrics.watch`) from small counts the stages maintain incrementally: no table
  is scanned on a scrape (see :func:`monitor_state`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, disable_created_metrics
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from streams import __version__
from streams.core.alerts import NotificationKind
from streams.core.attribution import UNATTRIBUTED_REASONS
from streams.core.catalog import CATALOG, ErrorClass
from streams.core.detector import RULE as SPIKE_RULE
from streams.core.immediate import IMMEDIATE_RULES, RESEND_STORM
from streams.core.keys import Dimension
from streams.ports import GaugeSource
from streams.stages.ingest import LAG_BUCKETS, IngestStats
from streams.stages.messages import MessageStats
from streams.stages.recipients import RecipientStats

if TYPE_CHECKING:
    from streams.lag import LagReport

log = logging.getLogger(__name__)

PREFIX = "whatsapp_monitor"

# ``*_created`` series double the exposition and no dashboard uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

KNOWN_STATUSES = ("sent", "delivered", "read", "failed", "played", "deleted", "warning", "unknown")
#: Funnel outcomes of a message (``outcome`` label of the ``*_messages_total`` counters).
FUNNEL = ("attempted", "sent", "delivered", "read", "failed")
OUTCOMES = frozenset((*FUNNEL, "played", "deleted", "warning", "other_status"))
#: Pricing categories Meta reports; anything else is ``other``, none known is ``unknown``.
CATEGORIES = frozenset(
    {
        "marketing",
        "marketing_lite",
        "utility",
        "authentication",
        "authentication_international",
        "service",
        "referral_conversion",
    }
)
ERROR_CLASSES = frozenset(c.value for c in ErrorClass)
#: Failure classes created at 0 for every template, sender and country on first sight (the ones
#: the alert rules divide), so ``increase()`` sees their first error.
PRECREATED_CLASSES = ("per_user_marketing_limit", "us_marketing_pause", "opt_out")
#: Classes of the codes Meta reports as account-level errors: created at 0 per catalog code.
ACCOUNT_ERROR_CLASSES = frozenset(
    {
        ErrorClass.THROUGHPUT,
        ErrorClass.SPAM_QUALITY,
        ErrorClass.ACCOUNT_ENFORCEMENT,
        ErrorClass.TRANSIENT,
    }
)
ALERT_RULES = (SPIKE_RULE, *sorted(IMMEDIATE_RULES), RESEND_STORM)
#: Values of streams.slack.SlackOutcome (not imported: this module must not pull slack_sdk).
SLACK_OUTCOMES = ("sent", "retried", "rate_limited", "failed_permanent", "gave_up", "dropped")
OTHER = "__other__"
DEFAULT_LABEL_CAP = 100
#: Distinct folded values remembered so the overflow counter counts each once (bounded memory:
#: beyond this a value seen again after being forgotten is counted again).
FOLDED_MEMORY = 100_000


def error_code_label(code: int | None) -> str:
    """A catalog code as itself, any other code as ``other``, no code as ``none``."""
    if code is None:
        return "none"
    return str(code) if code in CATALOG else "other"


def category_label(category: str | None) -> str:
    if not category:
        return "unknown"
    category = category.lower()
    return category if category in CATEGORIES else "other"


def status_label(status: str) -> str:
    return status if status in KNOWN_STATUSES else "unknown"


def class_label(error_class: str | None) -> str:
    if error_class is not None and error_class in ERROR_CLASSES:
        return error_class
    return "unknown"


def split_outcome(outcome: str) -> tuple[str, str | None]:
    """A bucket outcome as (funnel outcome, error class): ``failed.<class>`` -> failed, class."""
    if outcome.startswith("failed."):
        return "failed", class_label(outcome[7:])
    return (outcome if outcome in OUTCOMES else "other_status"), None


class CappedLabel:
    """The first ``cap`` distinct values keep their name; later ones become ``__other__``.

    ``on_admit(value)`` runs once per admitted value (to create its label sets at 0). Each value
    folded into ``__other__`` increments ``overflow`` once.
    """

    def __init__(self, cap: int, overflow: Counter, on_admit: Callable[[str], None]) -> None:
        self.cap = cap
        self._overflow = overflow
        self._on_admit = on_admit
        self._admitted: set[str] = set()
        self._folded: dict[str, None] = {}  # insertion-ordered set

    def __call__(self, value: str) -> str:
        if value in self._admitted:
            return value
        if value != OTHER and len(self._admitted) < self.cap:
            self._admitted.add(value)
            self._on_admit(value)
            return value
        if value not in self._folded:
            self._folded[value] = None
            self._overflow.inc()
            if len(self._folded) > FOLDED_MEMORY:
                del self._folded[next(iter(self._folded))]
        return OTHER

    def peek(self, value: str) -> str:
        """The label of ``value`` without admitting or counting it (scrape-time gauges)."""
        return value if value in self._admitted else OTHER

    @property
    def admitted(self) -> int:
        return len(self._admitted)


#: the worker's Faust agents (labels of the per-agent metrics)
AGENTS = ("messages", "recipients", "alerting", "notifier")


def per_agent_counter(registry: CollectorRegistry, name: str, doc: str) -> Counter:
    """A counter labelled by agent, every agent's series exported from the start (at 0)."""
    counter = Counter(f"{PREFIX}_{name}", doc, ["agent"], registry=registry)
    for agent in AGENTS:
        counter.labels(agent=agent)
    return counter


@dataclass(frozen=True, slots=True)
class StateSnapshot:
    """What the scrape-time gauges show, read from the stages (see :func:`monitor_state`)."""

    recipients_in_cooldown: int = 0
    recipients_opted_out: int = 0
    templates_paused: int = 0
    #: (dim, key) -> (attempted, limit errors) over the last 5 minutes of event time (dim: a
    #: :class:`~streams.core.keys.Dimension`, template or sending number).
    recent: Mapping[tuple[str, str], tuple[int, int]] = field(default_factory=dict)


class _Dimension:
    """The two counters of one dimension (template, sender, country): outcomes and failures.

    With ``cap``, the first ``cap`` values keep their name and ``overflow`` counts the others
    (folded into ``__other__``); without, every value is its own label (countries: about 250
    ISO codes). A value's label sets are created at 0 when it is first seen.
    """

    def __init__(
        self,
        label: str,
        help_noun: str,
        registry: CollectorRegistry,
        cap: int | None = None,
        overflow: Counter | None = None,
    ) -> None:
        self.messages = Counter(
            f"{PREFIX}_{label}_messages",
            f"Messages per {help_noun} reaching each funnel outcome (attempted, sent, delivered, "
            "read, failed), counted once per message after deduplication",
            [label, "outcome"],
            registry=registry,
        )
        self.failures = Counter(
            f"{PREFIX}_{label}_failures",
            f"Failed messages per {help_noun} by error class, counted once per message",
            [label, "error_class"],
            registry=registry,
        )
        self.cap: CappedLabel | None = None
        self._seen: set[str] = set()
        if cap is not None:
            assert overflow is not None
            self.cap = CappedLabel(cap, overflow, self.precreate)
            self.precreate(OTHER)

    def precreate(self, value: str) -> None:
        for outcome in FUNNEL:
            self.messages.labels(value, outcome)
        for cls in PRECREATED_CLASSES:
            self.failures.labels(value, cls)

    def label(self, key: str) -> str:
        if self.cap is not None:
            return self.cap(key)
        if key not in self._seen:
            self._seen.add(key)
            self.precreate(key)
        return key

    def count(self, key: str, outcome: str, n: int) -> None:
        value = self.label(key)
        funnel, error_class = split_outcome(outcome)
        self.messages.labels(value, funnel).inc(n)
        if error_class is not None:
            self.failures.labels(value, error_class).inc(n)


class MonitorMetrics:
    """Every metric the worker exports, registered on ``registry``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        template_label_cap: int = DEFAULT_LABEL_CAP,
        sender_label_cap: int = DEFAULT_LABEL_CAP,
        campaign_label_cap: int = DEFAULT_LABEL_CAP,
    ) -> None:
        self.registry = registry
        self._last: dict[tuple[str, str], int] = {}
        r = registry
        self.build_info = Info(f"{PREFIX}_build", "Version of the delivery monitor", registry=r)
        self.build_info.info({"version": __version__})
        # -- pipeline health ------------------------------------------------------------------
        self.records_consumed = Counter(
            f"{PREFIX}_records_consumed",
            "Kafka records consumed by the worker, per source topic",
            ["topic"],
            registry=r,
        )
        self.dead_letters = Counter(
            f"{PREFIX}_dead_letters",
            "Inputs written to the dead-letter topic (rejected: unusable; partial: some items "
            "were bad)",
            ["stage", "kind"],
            registry=r,
        )
        self.status_events = Counter(
            f"{PREFIX}_status_events",
            "Status webhook items received (duplicates included), by status",
            ["status"],
            registry=r,
        )
        self.duplicates = Counter(
            f"{PREFIX}_duplicate_statuses",
            "Status items dropped because the same (wamid, status) was already counted",
            registry=r,
        )
        self.replays = Counter(
            f"{PREFIX}_replayed_inputs",
            "Inputs seen again after a restart or rebalance (applied once)",
            ["stage"],
            registry=r,
        )
        self.reads_again = per_agent_counter(
            r,
            "partition_reads_again",
            "Times an agent found a record missing inside a rebalance generation (Faust's "
            "stream dropped it) and read its partition again from the missing offset",
        )
        self.flush_failures = per_agent_counter(
            r,
            "flush_failures",
            "Batches an agent failed to flush (an error in the monitor, logged with its "
            "traceback; the batch was not committed and its signals may be lost)",
        )
        self.raw_consumer_restarts = Counter(
            f"{PREFIX}_raw_consumer_restarts",
            "Times stage 1's raw topic consumer failed and was started again (it reads again "
            "from the last commit; the log says why)",
            registry=r,
        )
        self.late_events = Counter(
            f"{PREFIX}_late_statuses",
            "Statuses older than the allowed lateness: counted per message, not in minute buckets",
            registry=r,
        )
        self.late_attributions = Counter(
            f"{PREFIX}_late_attributions",
            "Send-log records that moved already counted statuses off template 'unknown'",
            registry=r,
        )
        self.untrusted = Counter(
            f"{PREFIX}_untrusted_timestamps",
            "Timestamps not used as given: later than the allowed skew after Kafka received the "
            "record or before 2009 (refused: the item is dead-lettered), or in milliseconds "
            "(converted; send log only)",
            ["stage", "verdict"],
            registry=r,
        )
        for stage in ("ingest", "send_log"):
            for verdict in ("future", "too_old", "milliseconds"):
                self.untrusted.labels(stage, verdict)
        self.alert_clock = Gauge(
            f"{PREFIX}_alert_evaluated_timestamp_seconds",
            "Event time up to which the alerting stage has judged (every input read past it; "
            "0 on workers that do not own alerting)",
            registry=r,
        )
        self.alert_late = Counter(
            f"{PREFIX}_alert_late_counts",
            "Minute-bucket counts that reached alerting after their minute was judged (from an "
            "input it had stopped waiting for): judged again, not lost",
            registry=r,
        )
        self.expired = Counter(
            f"{PREFIX}_expired_state_keys",
            "State removed by retention (messages after 7 d, buckets after 48 h, idle recipients)",
            ["kind"],
            registry=r,
        )
        self.last_event = Gauge(
            f"{PREFIX}_last_event_timestamp_seconds",
            "Newest webhook event time this worker's ingest stage has seen (unix seconds; 0 "
            "before the first event)",
            registry=r,
        )
        self.event_lag = _LagHistogram(
            f"{PREFIX}_event_lag_seconds",
            "Wall clock at ingest minus the status webhook's timestamp, by status (Meta's "
            "delivery delay plus the monitor's backlog)",
        )
        r.register(self.event_lag)
        # -- alerting -------------------------------------------------------------------------
        self.alerts = Counter(
            f"{PREFIX}_alerts",
            "Alert notifications emitted by the stream detector, by rule and kind (firing, "
            "updated, repeat, resolved)",
            ["rule", "kind"],
            registry=r,
        )
        self.slack_deliveries = Counter(
            f"{PREFIX}_slack_deliveries",
            "Slack webhook delivery outcomes (sent, retried, rate_limited, failed_permanent, "
            "gave_up, dropped)",
            ["outcome"],
            registry=r,
        )
        self.slack_pending = Gauge(
            f"{PREFIX}_slack_pending_notifications",
            "Slack notifications queued or being retried: not yet delivered, refused or given "
            "up (grows during a Slack outage, drains after it)",
            registry=r,
        )
        self.slack_oldest_pending_age = Gauge(
            f"{PREFIX}_slack_oldest_pending_age_seconds",
            "How long the oldest pending Slack notification has waited (0 when none waits)",
            registry=r,
        )
        self.rocksdb_memory = Gauge(
            f"{PREFIX}_rocksdb_memory_bytes",
            "RocksDB memory of this worker: its one block cache shared by every table "
            "partition, memtables charged to it (levels off at the limit)",
            registry=r,
        )
        self.rocksdb_memory_limit = Gauge(
            f"{PREFIX}_rocksdb_memory_limit_bytes",
            "RocksDB memory budget of this worker (DELIVERY_MONITOR_ROCKSDB_MEMORY_MB)",
            registry=r,
        )
        # -- deliveries (messages stage, after deduplication) ---------------------------------
        self.statuses = Counter(
            f"{PREFIX}_statuses",
            "Unique statuses (duplicates and replays dropped) by status and pricing category",
            ["status", "category"],
            registry=r,
        )
        self.failures = Counter(
            f"{PREFIX}_failures",
            "Unique failed statuses by error class and error code (catalog codes; others are "
            "'other', none is 'none')",
            ["error_class", "error_code"],
            registry=r,
        )
        self.account_errors = Counter(
            f"{PREFIX}_account_errors",
            "Account-level errors (value.errors: not tied to a message, e.g. 130429 throughput) "
            "by error class and error code (catalog codes; others are 'other'), counted once "
            "per webhook item",
            ["error_class", "error_code"],
            registry=r,
        )
        self.inbound_errors = Counter(
            f"{PREFIX}_inbound_message_errors",
            "Errors on inbound messages (messages[].errors, e.g. 131051 unsupported message "
            "type) by error class and error code; counted at ingest (a replayed webhook counts "
            "again)",
            ["error_class", "error_code"],
            registry=r,
        )
        self.unattributed = Counter(
            f"{PREFIX}_unattributed_callback_data",
            "Messages whose biz_opaque_callback_data named no template (counted once per "
            "message, under template 'unknown' until the send log names it), by reason: "
            "not_a_template_name, no_template_key, malformed, too_long",
            ["reason"],
            registry=r,
        )
        self.template_overflow = Counter(
            f"{PREFIX}_template_label_overflow",
            f"Distinct template names counted under template='{OTHER}' (beyond the label cap)",
            registry=r,
        )
        self.sender_overflow = Counter(
            f"{PREFIX}_sender_label_overflow",
            f"Distinct sending numbers counted under sender='{OTHER}' (beyond the label cap)",
            registry=r,
        )
        self.templates = _Dimension(
            "template", "template", r, template_label_cap, self.template_overflow
        )
        self.senders = _Dimension(
            "sender", "sending number (phone_number_id)", r, sender_label_cap, self.sender_overflow
        )
        self.campaign_overflow = Counter(
            f"{PREFIX}_campaign_label_overflow",
            f"Distinct campaign ids counted under campaign='{OTHER}' (beyond the label cap)",
            registry=r,
        )
        self.countries = _Dimension("country", "recipient country", r)
        self.sender_account_errors = Counter(
            f"{PREFIX}_sender_account_errors",
            "Account-level errors per sending number (phone_number_id; capped like the sender "
            "label) by error class",
            ["sender", "error_class"],
            registry=r,
        )
        self.campaigns = _Dimension(
            "campaign",
            "campaign (from biz_opaque_callback_data or the send log; messages without one are "
            "not counted here)",
            r,
            campaign_label_cap,
            self.campaign_overflow,
        )
        self._dims: dict[str, _Dimension] = {
            Dimension.TEMPLATE: self.templates,
            Dimension.SENDER: self.senders,
            Dimension.COUNTRY: self.countries,
            Dimension.CAMPAIGN: self.campaigns,
        }
        self._precreate()

    def _precreate(self) -> None:
        for stage in ("ingest", "send_log"):
            for kind in ("rejected", "partial"):
                self.dead_letters.labels(stage=stage, kind=kind)
        for status in KNOWN_STATUSES:
            self.status_events.labels(status=status)
        for stage in ("messages", "recipients"):
            self.replays.labels(stage=stage)
        for kind in ("message", "bucket", "recipient"):
            self.expired.labels(kind=kind)
        for rule in ALERT_RULES:
            for notification in NotificationKind:
                self.alerts.labels(rule=rule, kind=notification.value)
        for outcome in SLACK_OUTCOMES:
            self.slack_deliveries.labels(outcome=outcome)
        for status in ("sent", "delivered", "read", "failed"):
            for category in ("marketing", "utility", "authentication", "service", "unknown"):
                self.statuses.labels(status=status, category=category)
        for info in CATALOG.values():
            self.failures.labels(info.error_class.value, str(info.code))
            if info.error_class is ErrorClass.PER_USER_MARKETING_LIMIT:
                self.failures.labels(ErrorClass.US_MARKETING_PAUSE.value, str(info.code))
        for cls in (ErrorClass.TEMPLATE, ErrorClass.PERMANENT, ErrorClass.UNKNOWN):
            self.failures.labels(cls.value, "other")
        self.failures.labels(ErrorClass.UNKNOWN.value, "none")
        for reason in UNATTRIBUTED_REASONS:
            self.unattributed.labels(reason=reason)
        for info in CATALOG.values():
            if info.error_class in ACCOUNT_ERROR_CLASSES:
                self.account_errors.labels(info.error_class.value, str(info.code))
        self.account_errors.labels(ErrorClass.UNKNOWN.value, "other")
        self.inbound_errors.labels(ErrorClass.PERMANENT.value, "131051")

    def precreate(self, topics: list[str]) -> None:
        """Create label sets at 0 so ``increase()`` sees the first record."""
        for topic in topics:
            self.records_consumed.labels(topic=topic)

    def watch(self, monitor: GaugeSource) -> None:
        """Serve the scrape-time gauges of ``monitor``'s state (see :func:`monitor_state`)."""
        self.watch_state(lambda: monitor_state(monitor))

    def watch_state(self, source: Callable[[], StateSnapshot]) -> None:
        """Serve the scrape-time gauges from ``source()``, called once per scrape."""
        self.registry.register(_StateCollector(self, source))

    def _delta(self, name: str, label: str, total: int) -> int:
        key = (name, label)
        delta = total - self._last.get(key, 0)
        self._last[key] = total
        return delta

    # -- feeds --------------------------------------------------------------------------------
    def observe_ingest(self, stats: IngestStats) -> None:
        for status, total in stats.by_status.items():
            label = status_label(status)
            self.status_events.labels(status=label).inc(self._delta("status", status, total))
        if stats.last_event_ts:
            self.last_event.set(stats.last_event_ts)
        self._untrusted("ingest", stats.untrusted)
        for (error_class, code), n in stats.take_inbound_errors().items():
            self.inbound_errors.labels(class_label(error_class), error_code_label(code)).inc(n)
        counts, sums = stats.take_lag()
        for (status, index), n in counts.items():
            self.event_lag.add(status_label(status), index, n)
        for status, lag_sum in sums.items():
            self.event_lag.add_sum(status_label(status), lag_sum)

    def observe_messages(self, stats: MessageStats) -> None:
        self.duplicates.inc(self._delta("dup", "", stats.duplicates))
        self.replays.labels(stage="messages").inc(self._delta("replay", "m", stats.replays))
        self.late_events.inc(self._delta("late", "", stats.late))
        self.late_attributions.inc(self._delta("attr", "", stats.attributed_late))
        self.expired.labels(kind="message").inc(self._delta("exp", "m", stats.expired_messages))
        self.expired.labels(kind="bucket").inc(self._delta("exp", "b", stats.expired_buckets))
        self._untrusted("send_log", stats.untrusted)
        counted, unique, failures = stats.take_metric_counts()
        for (dim, key, outcome), n in counted.items():
            d = self._dims.get(dim)
            if d is not None and n > 0:
                d.count(key or "unknown", outcome, n)
        for (status, category), n in unique.items():
            self.statuses.labels(status_label(status), category_label(category)).inc(n)
        for (error_class, code), n in failures.items():
            self.failures.labels(class_label(error_class), error_code_label(code)).inc(n)
        for reason, n in stats.take_unattributed().items():
            self.unattributed.labels(reason=reason).inc(n)
        for (sender, error_class, code), n in stats.take_account_errors().items():
            cls = class_label(error_class)
            self.account_errors.labels(cls, error_code_label(code)).inc(n)
            self.sender_account_errors.labels(self.senders.label(sender), cls).inc(n)

    def _untrusted(self, stage: str, counts: Mapping[Any, int]) -> None:
        for verdict, total in counts.items():
            label = str(verdict)
            self.untrusted.labels(stage, label).inc(self._delta(f"untrusted-{stage}", label, total))

    def observe_alerting(self, evaluated: int, late: int) -> None:
        """The alerting stage's clock (event time judged) and its late counts since the last
        call."""
        self.alert_clock.set(evaluated)
        self.alert_late.inc(late)

    def observe_recipients(self, stats: RecipientStats) -> None:
        self.replays.labels(stage="recipients").inc(self._delta("replay", "r", stats.replays))
        self.expired.labels(kind="recipient").inc(self._delta("exp", "r", stats.expired))

    def slack_outcome(self, outcome: Any) -> None:
        """Feed for the Slack notifier's outcomes (sent, retried, rate_limited, ...)."""
        self.slack_deliveries.labels(outcome=str(outcome)).inc()

    def watch_slack(self, backlog: Callable[[], tuple[int, float]]) -> None:
        """Serve the pending-notification gauges from ``backlog()`` (count, oldest age in
        seconds: :meth:`streams.slack.SlackNotifier.backlog`), read at scrape time."""
        self.slack_pending.set_function(lambda: backlog()[0])
        self.slack_oldest_pending_age.set_function(lambda: backlog()[1])

    def watch_rocksdb(self, usage: Callable[[], int], limit: int) -> None:
        """Serve the RocksDB memory gauges: ``usage()`` read at scrape time, ``limit`` bytes."""
        self.rocksdb_memory.set_function(usage)
        self.rocksdb_memory_limit.set(limit)

    def watch_lag(self, source: Callable[[], LagReport | None]) -> None:
        """Serve the consumer-lag gauges from ``source()`` (the last measurement of
        :class:`streams.lag.ConsumerLag`), read at scrape time."""
        self.registry.register(_LagCollector(source))

    def watch_stage_cpu(self, seconds: Mapping[str, float]) -> None:
        """Serve the CPU seconds per stage (:class:`streams.stage_cpu.StageCpu`'s ``seconds``),
        read at scrape time."""
        self.registry.register(_StageCpuCollector(seconds))

    def alert_notified(self, notification: Any) -> None:
        """Feed for every notification the alert book emits (rule of its headline, kind)."""
        self.alerts.labels(rule=notification.headline.rule, kind=str(notification.kind)).inc()


class _LagHistogram:
    """A histogram fed with pre-bucketed counts (``LAG_BUCKETS``), exposed at scrape time."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self._counts: dict[str, list[int]] = {}
        self._sums: dict[str, float] = defaultdict(float)
        for status in KNOWN_STATUSES:
            self._row(status)

    def _row(self, status: str) -> list[int]:
        row = self._counts.get(status)
        if row is None:
            row = self._counts[status] = [0] * (len(LAG_BUCKETS) + 1)  # the last one: +Inf
        return row

    def add(self, status: str, index: int, n: int) -> None:
        self._row(status)[min(index, len(LAG_BUCKETS))] += n

    def add_sum(self, status: str, total: float) -> None:
        self._sums[status] += total

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=["status"])]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=["status"])
        for status, row in sorted(self._counts.items()):
            cumulative, buckets = 0, []
            for bound, n in zip((*(_fmt(b) for b in LAG_BUCKETS), "+Inf"), row, strict=True):
                cumulative += n
                buckets.append((bound, float(cumulative)))
            family.add_metric([status], buckets, sum_value=self._sums[status])
        return [family]


def _fmt(bound: float) -> str:
    return repr(float(bound))


class _StageCpuCollector:
    """CPU seconds each stage's own code used (handle and flush; see streams.stage_cpu)."""

    def __init__(self, seconds: Mapping[str, float]) -> None:
        self.seconds = seconds

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(
            f"{PREFIX}_stage_cpu_seconds",
            "CPU seconds this worker spent in each stage's own code (its handle and flush "
            "calls; Kafka clients, Faust and the event loop are not in any stage)",
            labels=["stage"],
        )

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for stage, seconds in self.seconds.items():
            family.add_metric([stage], seconds)
        yield family


class _LagCollector:
    """Consumer lag per group, topic and partition, as last measured (not per scrape)."""

    def __init__(self, source: Callable[[], LagReport | None]) -> None:
        self.source = source

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        labels = ["group", "topic", "partition"]
        return (
            GaugeMetricFamily(
                f"{PREFIX}_consumer_lag_records",
                "Records of the partition its consumer group has not committed yet (log end "
                "offset minus committed offset)",
                labels=labels,
            ),
            GaugeMetricFamily(
                f"{PREFIX}_consumer_lag_seconds",
                "Age of the oldest record of the partition its consumer group has not committed "
                "(now minus that record's timestamp; 0 when nothing is behind)",
                labels=labels,
            ),
            GaugeMetricFamily(
                f"{PREFIX}_consumer_lag_measured_timestamp_seconds",
                "When this worker last measured the consumer lag (unix seconds)",
            ),
        )

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        report = self.source()
        if report is None:
            return
        records, seconds, measured = self._families()
        for p in report.partitions:
            labels = [p.group, p.topic, str(p.partition)]
            records.add_metric(labels, p.records)
            seconds.add_metric(labels, p.seconds)
        measured.add_metric([], report.at)
        yield from (records, seconds, measured)


class _StateCollector:
    """Gauges computed at scrape time from a :class:`StateSnapshot` (no table scans)."""

    def __init__(self, metrics: MonitorMetrics, source: Callable[[], StateSnapshot]) -> None:
        self.metrics = metrics
        self.source = source

    def _families(self) -> dict[str, GaugeMetricFamily]:
        def gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)

        return {
            "cooldown": gauge(
                "recipients_in_cooldown",
                "Recipients whose last 131049 (per-user marketing limit) failure is less than "
                "24 h before their partition's event-time watermark: do not resend to them",
            ),
            "opted_out": gauge(
                "recipients_opted_out",
                "Recipients opted out of marketing (131050/498 or a user_preferences stop, not "
                "resumed)",
            ),
            "paused": gauge(
                "templates_paused",
                "Templates whose last status update from Meta is PAUSED or DISABLED",
            ),
            f"{Dimension.TEMPLATE}_ratio": gauge(
                "template_limit_error_ratio",
                "Limit errors (131049 per-user limit and US pause) / attempted sends per "
                "template over the last 5 minutes of event time (this worker's partitions)",
                ["template"],
            ),
            f"{Dimension.TEMPLATE}_attempts": gauge(
                "template_window_attempts",
                "Attempted sends per template in the same 5-minute window (to weight ratios "
                "across workers)",
                ["template"],
            ),
            f"{Dimension.SENDER}_ratio": gauge(
                "sender_limit_error_ratio",
                "Limit errors / attempted sends per sending number over the last 5 minutes of "
                "event time (this worker's partitions)",
                ["sender"],
            ),
            f"{Dimension.SENDER}_attempts": gauge(
                "sender_window_attempts",
                "Attempted sends per sending number in the same 5-minute window",
                ["sender"],
            ),
        }

    def describe(self) -> Iterable[Metric]:
        return list(self._families().values())

    def collect(self) -> Iterator[Metric]:
        try:
            snap = self.source()
        except Exception:
            log.warning("state gauges unavailable on this scrape", exc_info=True)
            return
        f = self._families()
        f["cooldown"].add_metric([], snap.recipients_in_cooldown)
        f["opted_out"].add_metric([], snap.recipients_opted_out)
        f["paused"].add_metric([], snap.templates_paused)
        m = self.metrics
        gauged: dict[str, _Dimension] = {
            Dimension.TEMPLATE: m.templates,
            Dimension.SENDER: m.senders,
        }
        folded: dict[tuple[str, str], list[int]] = {}
        for (dim, key), (attempts, limit) in snap.recent.items():
            d = gauged.get(dim)
            if d is None or d.cap is None:
                continue
            cell = folded.setdefault((dim, d.cap.peek(key)), [0, 0])
            cell[0] += attempts
            cell[1] += limit
        for (dim, label), (attempts, limit) in sorted(folded.items()):
            if attempts <= 0:
                continue
            f[f"{dim}_ratio"].add_metric([label], limit / attempts)
            f[f"{dim}_attempts"].add_metric([label], attempts)
        yield from f.values()


def monitor_state(monitor: GaugeSource) -> StateSnapshot:
    """The scrape-time gauges of one worker, from what its stages maintain incrementally.

    - recipients opted out / in a 131049 cool-down: per-partition counters in each recipients
      partition's meta record, updated on state transitions (and expiry), restored with the
      table: one small read per partition this worker owns.
    - paused templates: a per-partition counter in the messages partition meta, updated when a
      template's status moves in or out of PAUSED/DISABLED.
    - 5-minute limit-error ratios: the messages stage's in-memory window of (attempted, limit
      errors) per template / sender and minute for the last minutes of event time (refilled
      from new traffic after a restart or rebalance).
    """
    actives = monitor.runtime.assigned_actives()
    messages_topic = monitor.messages_topic.get_topic_name()
    recipients_topic = monitor.recipients_topic.get_topic_name()
    m_parts = sorted(partition for topic, partition in actives if topic == messages_topic)
    r_parts = sorted(partition for topic, partition in actives if topic == recipients_topic)
    in_cooldown, opted_out = monitor.recipients.gauges(r_parts)
    return StateSnapshot(
        recipients_in_cooldown=in_cooldown,
        recipients_opted_out=opted_out,
        templates_paused=monitor.messages.paused_templates(m_parts),
        recent=monitor.messages.recent.totals(),
    )


__all__ = [
    "PREFIX",
    "CappedLabel",
    "MonitorMetrics",
    "StateSnapshot",
    "monitor_state",
]
