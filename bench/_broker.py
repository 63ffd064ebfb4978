"""The broker a benchmark runs on: KAFKA_BOOTSTRAP_SERVERS if set, else a local one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from streams.asyncutil import run_sync
from streams.localkafka import LocalKafka
from streams.settings import Settings
from streams.topics import ensure_topics, source_topics
from testkit.worker import IDLE_AS_IN_PRODUCTION, WorkerProcess, unique_env


@dataclass(frozen=True)
class Broker:
    bootstrap: str
    version: str  # the local broker's version; for an external one, what the settings say
    where: str  # "local" (started here) or "external" (KAFKA_BOOTSTRAP_SERVERS)
    pid: int | None  # the local broker's JVM


@contextlib.contextmanager
def benchmark_broker_info(tmp: Path, heap: str = "1g") -> Iterator[Broker]:
    """A :class:`Broker`; a local broker started here is stopped at the end."""
    settings = Settings.from_env()
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        version = os.environ.get("DELIVERY_MONITOR_KAFKA_VERSION", "unknown")
        yield Broker(external, version, "external", None)
        return
    broker = LocalKafka(tmp / "kafka", settings.cache_dir, settings.kafka_version, heap=heap)
    info = broker.start()
    try:
        yield Broker(info.bootstrap, info.version, "local", info.pid)
    finally:
        broker.stop()


@contextlib.contextmanager
def benchmark_broker(tmp: Path, heap: str = "1g") -> Iterator[str]:
    """Yield a bootstrap address; a local broker started here is stopped at the end."""
    with benchmark_broker_info(tmp, heap) as broker:
        yield broker.bootstrap


@contextlib.contextmanager
def running_worker(
    tmp: Path, bootstrap: str, **env: str
) -> Iterator[tuple[WorkerProcess, Settings, dict[str, str]]]:
    """A worker (RocksDB store) on ``bootstrap`` with its topics created; stopped at the end."""
    worker_env = unique_env(
        bootstrap,
        tmp / "state",
        DELIVERY_MONITOR_STORE="rocksdb://",
        **{**IDLE_AS_IN_PRODUCTION, **env},
    )
    settings = Settings.from_env(worker_env)
    run_sync(ensure_topics(bootstrap, source_topics(settings), 1))
    worker = WorkerProcess(worker_env, tmp / "worker.log").start()
    try:
        yield worker, settings, worker_env
    finally:
        worker.stop()
