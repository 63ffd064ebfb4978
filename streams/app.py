"""The one place that wires Faust: app, topics, agents and web routes.

Agents stay thin (decode, call the core, update tables, emit); everything else lives in the core
or in an adapter module.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import faust
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from streams.metrics import MonitorMetrics
from streams.settings import Settings

log = logging.getLogger(__name__)


def broker_urls(bootstrap: str) -> list[str]:
    """faust broker URLs for a Kafka ``host:port[,host:port...]`` bootstrap string."""
    return [f"kafka://{hostport.strip()}" for hostport in bootstrap.split(",") if hostport.strip()]


def create_app(
    settings: Settings, bootstrap: str, registry: CollectorRegistry | None = None
) -> faust.App:
    """Build the monitor's Faust app for ``bootstrap`` (no I/O happens until it runs)."""
    registry = registry if registry is not None else CollectorRegistry()
    metrics = MonitorMetrics(registry)
    metrics.precreate([settings.topic_raw])

    datadir = settings.data_dir / "worker" / settings.app_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
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
    )
    raw_topic = app.topic(
        settings.topic_raw,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        allow_empty=True,
    )

    @app.agent(raw_topic, name="raw_webhooks", concurrency=1)
    async def consume_raw(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        counter = metrics.records_consumed.labels(topic=settings.topic_raw)
        async for _ in stream:
            counter.inc()
            yield None

    web_app: Any = app.web.web_app  # type: ignore[attr-defined]  # faust's aiohttp driver
    web_app.router.add_get("/metrics", make_aiohttp_handler(registry))
    app.monitor_metrics = metrics  # type: ignore[attr-defined]
    return app


def agent_names(app: Any) -> list[str]:
    """Names of the agents registered on ``app`` (for the CLI's startup summary)."""
    return sorted(app.agents.keys())
