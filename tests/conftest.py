"""Shared fixtures: the real Kafka broker for the whole session, and workers under test.

Kafka comes from, in order: ``KAFKA_BOOTSTRAP_SERVERS`` (an existing cluster);
testcontainers when ``DELIVERY_MONITOR_TEST_KAFKA=testcontainers`` and a Docker engine answers;
otherwise the project's own launcher (Apache Kafka from Maven Central, KRaft, 127.0.0.1) at
``DELIVERY_MONITOR_KAFKA_VERSION`` (default 3.9.1).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streams.localkafka import LocalKafka
from streams.settings import Settings
from testkit.worker import WorkerProcess, unique_env


def docker_available() -> bool:
    """A Docker engine answers /_ping on DOCKER_HOST (default: the local unix socket)."""
    import socket

    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return bool(host)  # a remote engine: let testcontainers try it
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(3)
            sock.connect(host.removeprefix("unix://"))
            sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return b"OK" in sock.recv(4096)
    except OSError:
        return False


@pytest.fixture(scope="session")
def kafka_version() -> str:
    return Settings.from_env().kafka_version


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory, kafka_version: str) -> Iterator[str]:
    """Bootstrap address of a real Kafka broker shared by the session's tests."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    if os.environ.get("DELIVERY_MONITOR_TEST_KAFKA") == "testcontainers":
        if not docker_available():
            pytest.skip("DELIVERY_MONITOR_TEST_KAFKA=testcontainers but no Docker engine answers")
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    settings = Settings.from_env()
    broker = LocalKafka(
        tmp_path_factory.mktemp("kafka"), settings.cache_dir, kafka_version, heap="1g"
    )
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def start_worker(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory for real worker subprocesses; every one is stopped at the end of the test."""
    started: list[WorkerProcess] = []

    def factory(env: dict[str, str] | None = None, **overrides: str) -> WorkerProcess:
        env = env or unique_env(kafka_bootstrap, tmp_path / "state", **overrides)
        worker = WorkerProcess(env, tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        return worker.start()

    yield factory
    for worker in started:
        worker.stop()
