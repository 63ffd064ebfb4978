"""The broker a benchmark runs on: KAFKA_BOOTSTRAP_SERVERS if set, else a local one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from streams.localkafka import LocalKafka
from streams.settings import Settings


@contextlib.contextmanager
def benchmark_broker(tmp: Path, heap: str = "1g") -> Iterator[str]:
    """Yield a bootstrap address; a local broker started here is stopped at the end."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    settings = Settings.from_env()
    broker = LocalKafka(tmp / "kafka", settings.cache_dir, settings.kafka_version, heap=heap)
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
