"""The monitor's Prometheus metrics, all in one place, on a registry the caller owns.

Label values are bounded: never a recipient, templates are capped (see the README's metrics
reference). Tests build a fresh ``CollectorRegistry`` each and read ``get_sample_value``.
Counters are fed from the stages' running totals after every flush (``observe_*``), so the hot
path only adds integers.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Info, disable_created_metrics

from streams import __version__

PREFIX = "whatsapp_monitor"

# ``*_created`` series double the exposition and no dashboard uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

KNOWN_STATUSES = ("sent", "delivered", "read", "failed", "played", "deleted", "warning", "unknown")


class MonitorMetrics:
    """Every metric the worker exports, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._last: dict[tuple[str, str], int] = {}
        self.build_info = Info(
            f"{PREFIX}_build", "Version of the delivery monitor", registry=registry
        )
        self.build_info.info({"version": __version__})
        self.records_consumed = Counter(
            f"{PREFIX}_records_consumed",
            "Kafka records consumed by the worker, per source topic",
            ["topic"],
            registry=registry,
        )
        self.dead_letters = Counter(
            f"{PREFIX}_dead_letters",
            "Inputs written to the dead-letter topic (rejected: unusable; partial: some items "
            "were bad)",
            ["stage", "kind"],
            registry=registry,
        )
        self.status_events = Counter(
            f"{PREFIX}_status_events",
            "Status webhook items received (duplicates included), by status",
            ["status"],
            registry=registry,
        )
        self.duplicates = Counter(
            f"{PREFIX}_duplicate_statuses",
            "Status items dropped because the same (wamid, status) was already counted",
            registry=registry,
        )
        self.replays = Counter(
            f"{PREFIX}_replayed_inputs",
            "Inputs seen again after a restart or rebalance (applied once)",
            ["stage"],
            registry=registry,
        )
        self.late_events = Counter(
            f"{PREFIX}_late_statuses",
            "Statuses older than the allowed lateness: counted per message, not in minute buckets",
            registry=registry,
        )
        self.late_attributions = Counter(
            f"{PREFIX}_late_attributions",
            "Send-log records that moved already counted statuses off template 'unknown'",
            registry=registry,
        )
        self.expired = Counter(
            f"{PREFIX}_expired_state_keys",
            "State removed by retention (messages after 7 d, buckets after 48 h, idle recipients)",
            ["kind"],
            registry=registry,
        )
        for stage in ("ingest", "send_log"):
            for kind in ("rejected", "partial"):
                self.dead_letters.labels(stage=stage, kind=kind)
        for status in KNOWN_STATUSES:
            self.status_events.labels(status=status)
        for stage in ("messages", "recipients"):
            self.replays.labels(stage=stage)
        for kind in ("message", "bucket", "recipient"):
            self.expired.labels(kind=kind)

    def precreate(self, topics: list[str]) -> None:
        """Create label sets at 0 so ``increase()`` sees the first record."""
        for topic in topics:
            self.records_consumed.labels(topic=topic)

    def _delta(self, name: str, label: str, total: int) -> int:
        key = (name, label)
        delta = total - self._last.get(key, 0)
        self._last[key] = total
        return delta

    def observe_ingest(self, stats: Any) -> None:
        for status, total in stats.by_status.items():
            label = status if status in KNOWN_STATUSES else "unknown"
            self.status_events.labels(status=label).inc(self._delta("status", status, total))

    def observe_messages(self, stats: Any) -> None:
        self.duplicates.inc(self._delta("dup", "", stats.duplicates))
        self.replays.labels(stage="messages").inc(self._delta("replay", "m", stats.replays))
        self.late_events.inc(self._delta("late", "", stats.late))
        self.late_attributions.inc(self._delta("attr", "", stats.attributed_late))
        self.expired.labels(kind="message").inc(self._delta("exp", "m", stats.expired_messages))
        self.expired.labels(kind="bucket").inc(self._delta("exp", "b", stats.expired_buckets))

    def observe_recipients(self, stats: Any) -> None:
        self.replays.labels(stage="recipients").inc(self._delta("replay", "r", stats.replays))
        self.expired.labels(kind="recipient").inc(self._delta("exp", "r", stats.expired))
