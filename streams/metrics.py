"""The monitor's Prometheus metrics, all in one place, on a registry the caller owns.

Label values are bounded: never a recipient, templates are capped (see the README's metrics
reference). Tests build a fresh ``CollectorRegistry`` each and read ``get_sample_value``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Info, disable_created_metrics

from streams import __version__

PREFIX = "whatsapp_monitor"

# ``*_created`` series double the exposition and no dashboard uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]


class MonitorMetrics:
    """Every metric the worker exports, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
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

    def precreate(self, topics: list[str]) -> None:
        """Create label sets at 0 so ``increase()`` sees the first record."""
        for topic in topics:
            self.records_consumed.labels(topic=topic)
