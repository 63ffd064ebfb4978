"""Start, probe and stop a single-node KRaft broker (combined broker+controller) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from streams.localkafka.distribution import ensure_distribution, kafka_major, require_tool

log = logging.getLogger(__name__)

STATE_FILE = "broker.json"
PORTS_FILE = "ports.json"


class LocalKafkaError(RuntimeError):
    """The local broker could not be started or stopped; the message says why."""


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    """What a running local broker is: where to connect and how to stop it."""

    pid: int
    bootstrap: str
    controller_port: int
    version: str
    data_dir: str
    log_file: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> BrokerInfo:
        return cls(**json.loads(text))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # TIME_WAIT connections of a broker just stopped do not stop Kafka binding the port
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _cluster_id() -> str:
    """16 random bytes, base64url without padding (22 characters), as Kafka expects.

    Like Kafka's own ``Uuid.randomUuid()``, an id starting with ``-`` is drawn again: the
    storage tool would read it as an option (about 1 start in 64 failed that way).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _pid_is_broker(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            return b"kafka.Kafka" in cmdline.read_bytes()
        except OSError:
            return False
    return True


def read_running_broker(data_dir: Path) -> BrokerInfo | None:
    """The broker started from ``data_dir`` if it is still running, else ``None``."""
    state = data_dir / STATE_FILE
    if not state.exists():
        return None
    try:
        info = BrokerInfo.from_json(state.read_text())
    except (ValueError, TypeError):
        return None
    return info if _pid_is_broker(info.pid) else None


async def _admin_round_trip_async(bootstrap: str, timeout_s: float) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # refused connects are expected while the broker starts
    try:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
        )
        await asyncio.wait_for(admin.start(), timeout_s)
        try:
            await asyncio.wait_for(admin.describe_cluster(), timeout_s)
        finally:
            await admin.close()
    finally:
        quiet.setLevel(level)  # the process's own Kafka clients log as configured


def admin_round_trip(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """True when the broker at ``bootstrap`` answers an admin request (DescribeCluster)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(asyncio.run, _admin_round_trip_async(bootstrap, timeout_s))
        try:
            future.result(timeout=timeout_s + 5)
        except Exception:
            return False
    return True


_LOG4J1 = """\
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.controller=INFO
"""

_LOG4J2 = """\
status = warn
name = LocalKafka
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
"""


class LocalKafka:
    """A single-node KRaft Kafka broker in a child JVM, with its data under ``data_dir``.

    ``start()`` returns when an admin round trip succeeds; ``stop()`` sends SIGTERM and kills
    after ``stop_timeout_s``. Restarting the same ``data_dir`` keeps topics, offsets and ports
    (when they are still free), so a stop/start looks like a broker outage to clients.
    """

    def __init__(
        self,
        data_dir: Path,
        cache_dir: Path,
        version: str,
        *,
        heap: str = "768m",
        offsets_partitions: int = 4,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.cache_dir = Path(cache_dir)
        self.version = version
        self.heap = heap
        self.offsets_partitions = offsets_partitions
        self._proc: subprocess.Popen[bytes] | None = None
        self.info: BrokerInfo | None = None

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def bootstrap(self) -> str:
        if self.info is None:
            raise LocalKafkaError("the local broker is not running")
        return self.info.bootstrap

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _ports(self) -> tuple[int, int]:
        saved = self.data_dir / PORTS_FILE
        if saved.exists():
            ports = json.loads(saved.read_text())
            port, cport = int(ports["port"]), int(ports["controller_port"])
            if _port_is_free(port) and _port_is_free(cport):
                return port, cport
            if (self.data_dir / "kraft-logs" / "meta.properties").exists():
                raise LocalKafkaError(
                    f"ports {port}/{cport} of the broker in {self.data_dir} are taken; "
                    "stop what uses them or remove that data directory"
                )
        port, cport = _free_port(), _free_port()
        while cport == port:
            cport = _free_port()
        saved.write_text(json.dumps({"port": port, "controller_port": cport}))
        return port, cport

    def _write_config(self, port: int, cport: int) -> Path:
        logs = self.data_dir / "kraft-logs"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{cport}",
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(logs),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": str(self.offsets_partitions),
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": str(self.offsets_partitions),
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.segment.bytes": str(64 * 1024 * 1024),
            "message.max.bytes": str(4 * 1024 * 1024),
            "replica.fetch.max.bytes": str(4 * 1024 * 1024),
        }
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def _log_options(self) -> list[str]:
        if kafka_major(self.version) >= 4:
            cfg = self.data_dir / "log4j2.properties"
            cfg.write_text(_LOG4J2)
            return [f"-Dlog4j2.configurationFile=file:{cfg}"]
        cfg = self.data_dir / "log4j.properties"
        cfg.write_text(_LOG4J1)
        return [f"-Dlog4j.configuration=file:{cfg}"]

    def _java(self, lib: Path, main: str, *args: str) -> list[str]:
        java = require_tool("java", "run the local Apache Kafka broker")
        return [
            java,
            "-Xms256m",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.data_dir}",
            *self._log_options(),
            "-cp",
            f"{lib}/*",
            main,
            *args,
        ]

    def _format(self, lib: Path, config: Path) -> None:
        if (self.data_dir / "kraft-logs" / "meta.properties").exists():
            return
        cmd = self._java(
            lib, "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(config)
        )
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise LocalKafkaError(
                f"formatting KRaft storage failed (exit {proc.returncode}): "
                + (proc.stderr or proc.stdout).strip()[-2000:]
            )

    def start(self, timeout_s: float = 120.0) -> BrokerInfo:
        """Start the broker (fetching it first if needed); return once it answers."""
        running = read_running_broker(self.data_dir)
        if running is not None:
            self.info = running
            return running
        require_tool("java", "run the local Apache Kafka broker")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lib = ensure_distribution(self.version, self.cache_dir)
        port, cport = self._ports()
        config = self._write_config(port, cport)
        self._format(lib, config)
        cmd = self._java(lib, "kafka.Kafka", str(config))
        with self.log_file.open("ab") as logf:
            self._proc = subprocess.Popen(
                cmd,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        info = BrokerInfo(
            pid=self._proc.pid,
            bootstrap=f"127.0.0.1:{port}",
            controller_port=cport,
            version=self.version,
            data_dir=str(self.data_dir),
            log_file=str(self.log_file),
        )
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:
                raise LocalKafkaError(
                    f"the Kafka broker exited with code {self._proc.returncode} during start; "
                    f"last lines of {self.log_file}:\n{self._log_tail()}"
                )
            if admin_round_trip(info.bootstrap, timeout_s=3.0):
                break
            if time.monotonic() > deadline:
                self._terminate(self._proc.pid, 10.0)
                raise LocalKafkaError(
                    f"the Kafka broker did not answer within {timeout_s:.0f}s; "
                    f"see {self.log_file}:\n{self._log_tail()}"
                )
            time.sleep(0.25)
        (self.data_dir / STATE_FILE).write_text(info.to_json())
        self.info = info
        log.info("Kafka %s ready at %s (pid %d)", self.version, info.bootstrap, info.pid)
        return info

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _terminate(self, pid: int, timeout_s: float) -> None:
        """SIGTERM the broker's process group; SIGKILL it if it is still up after the timeout."""
        proc = self._proc if self._proc is not None and self._proc.pid == pid else None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        if proc is not None:
            try:
                proc.wait(timeout_s)
                return
            except subprocess.TimeoutExpired:
                pass
        else:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and _pid_is_broker(pid):
                time.sleep(0.1)
            if not _pid_is_broker(pid):
                return
        log.warning("Kafka broker pid %d ignored SIGTERM for %.0fs; killing it", pid, timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        if proc is not None:
            proc.wait(timeout_s)

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the broker of this data dir (SIGTERM, then SIGKILL). False if none was running."""
        info = self.info or read_running_broker(self.data_dir)
        if info is None or not _pid_is_broker(info.pid):
            (self.data_dir / STATE_FILE).unlink(missing_ok=True)
            self.info = None
            return False
        self._terminate(info.pid, timeout_s)
        (self.data_dir / STATE_FILE).unlink(missing_ok=True)
        self.info = None
        self._proc = None
        return True
