"""The worker as users run it (a subprocess of ``python -m streams.cli worker``), its
environment under test, and polling and HTTP helpers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

from streams.asyncutil import run_sync
from streams.settings import Settings
from streams.topics import ensure_topics, source_topics

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent  # the repository: the worker runs from here


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    probe: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.2
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")


#: for tests whose incidents must not depend on a pause in the feed (a SIGKILL, a late send log)
IDLE_AS_IN_PRODUCTION = {"DELIVERY_MONITOR_ALERT_IDLE_SECONDS": "30"}


def unique_env(bootstrap: str, data_dir: Path, **overrides: str) -> dict[str, str]:
    """Environment for one worker under test: its own app id, topics, data dir and port."""
    tag = uuid.uuid4().hex[:10]
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "DELIVERY_MONITOR_APP_ID": f"test-{tag}",
        "DELIVERY_MONITOR_TOPIC_RAW": f"t-{tag}.raw",
        "DELIVERY_MONITOR_TOPIC_SEND_LOG": f"t-{tag}.send-log",
        "DELIVERY_MONITOR_TOPIC_DEAD_LETTER": f"t-{tag}.dead-letter",
        "DELIVERY_MONITOR_TOPIC_ALERTS": f"t-{tag}.alerts",
        "DELIVERY_MONITOR_TOPIC_RETRIES": f"t-{tag}.retries",
        "DELIVERY_MONITOR_DATA_DIR": str(data_dir),
        "DELIVERY_MONITOR_WEB_PORT": str(free_port()),
        "DELIVERY_MONITOR_LOG_LEVEL": "info",
        # a SIGKILLed worker's partitions move after this many seconds
        "DELIVERY_MONITOR_SESSION_TIMEOUT": "8",
        # alerting stops waiting for a quiet input (the unused send log) after 5 s, not 30: a
        # test's incident resolves 25 s sooner; tests that pause or kill mid-feed and compare
        # incidents keep the production 30 s (IDLE_AS_IN_PRODUCTION)
        "DELIVERY_MONITOR_ALERT_IDLE_SECONDS": "5",
    }
    env.update(overrides)
    return env


class WorkerProcess:
    """``delivery-monitor worker`` as users run it, in its own process group."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.port = int(env["DELIVERY_MONITOR_WEB_PORT"])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 90.0) -> WorkerProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=REPO,
            )
        wait_until(self._ready, timeout_s, f"worker /metrics on port {self.port}")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"worker exited with {self.proc.returncode} during start:\n{self.log_tail()}"
            )
        try:
            self.get("/metrics", timeout_s=2)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
        return True

    def get(self, path: str, timeout_s: float = 10.0) -> bytes:
        with urllib.request.urlopen(self.base_url + path, timeout=timeout_s) as resp:
            body: bytes = resp.read()
            return body

    def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """Value of one sample scraped over HTTP (``None`` if absent)."""
        text = self.get("/metrics").decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in (labels or {}).items()
                ):
                    return float(sample.value)
        return None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int | None:
        if self.proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(30)


def memory_worker(
    bootstrap: str, tmp_path: Path, start_worker: Callable[..., WorkerProcess], **overrides: str
) -> tuple[WorkerProcess, Settings]:
    """A worker with in-memory tables on fresh topics (created first, one partition each for the
    inputs), and its settings."""
    env = unique_env(bootstrap, tmp_path / "state", DELIVERY_MONITOR_STORE="memory://", **overrides)
    settings = Settings.from_env(env)
    run_sync(ensure_topics(bootstrap, source_topics(settings), 1))
    return start_worker(env), settings


def get_json(url: str, timeout_s: float = 30.0) -> tuple[int, object]:
    import json

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")
