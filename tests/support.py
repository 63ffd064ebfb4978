"""Test helpers: the worker as a real subprocess, producing to the real broker, scraping metrics."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Self, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from streams.asyncutil import run_sync
from streams.core.alerts import (
    AlertBook,
    AlertPolicy,
    Evaluation,
    Evidence,
    Finding,
    Notification,
    Scope,
    Verdict,
)
from streams.core.catalog import ErrorClass
from streams.feed import consume_all_async
from streams.raw_consumer import ingest_group
from streams.settings import Settings
from streams.simulate import Campaign, spike_campaign
from streams.topics import ensure_topics, source_topics

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent


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


async def produce_async(
    bootstrap: str, topic: str, values: Iterable[bytes], keys: Iterable[bytes] | None = None
) -> int:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        max_request_size=4 * 1024 * 1024,
    )
    await producer.start()
    count = 0
    try:
        key_iter = iter(keys) if keys is not None else None
        for value in values:
            key = next(key_iter) if key_iter is not None else None
            await producer.send(topic, value, key=key)
            count += 1
        await producer.flush()
    finally:
        await producer.stop()
    return count


def produce(bootstrap: str, topic: str, values: Iterable[bytes]) -> int:
    """Produce ``values`` to ``topic`` (idempotent, acks=all); returns how many."""
    return asyncio.run(produce_async(bootstrap, topic, values))


async def committed_offsets_async(bootstrap: str, group: str, topic: str) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        return sum(
            meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0
        )
    finally:
        await admin.close()


def committed_offsets(bootstrap: str, group: str, topic: str) -> int:
    """Sum of the consumer group's committed offsets on ``topic`` (records it is done with)."""
    return asyncio.run(committed_offsets_async(bootstrap, group, topic))


async def list_topics_async(bootstrap: str) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()


def list_topics(bootstrap: str) -> list[str]:
    return asyncio.run(list_topics_async(bootstrap))


def consume_all(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes, dict[str, bytes]]]:
    return asyncio.run(consume_all_async(bootstrap, topic))


async def produce_keyed_async(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]
) -> int:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5
    )
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()
    return len(records)


def produce_keyed(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> int:
    """Produce (key, value) records with the default (murmur2) partitioner, as a sender would."""
    return asyncio.run(produce_keyed_async(bootstrap, topic, records))


def get_json(url: str, timeout_s: float = 30.0) -> tuple[int, object]:
    import json

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


async def group_lag_async(bootstrap: str, group: str, topics: list[str]) -> int:
    """Records of ``topics`` not yet committed by ``group`` (end offset - committed); the raw
    topic's offsets are those of the worker's ingest group, ``<group>-ingest``."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        # the raw webhook topic is read by the worker's ingest group (streams.raw_consumer)
        committed = await admin.list_consumer_group_offsets(ingest_group(group))
        committed.update(await admin.list_consumer_group_offsets(group))
        described = await admin.describe_topics(topics)
        partitions = [
            tp
            for d in described
            for tp in _tps(d["topic"], {p["partition"] for p in d["partitions"]})
        ]
        if len({tp.topic for tp in partitions}) != len(topics):  # type: ignore[attr-defined]
            raise KafkaError(f"not every topic of {topics} is known yet")
        ends = await consumer.end_offsets(partitions)
        lag = 0
        for tp, end in ends.items():
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            lag += max(0, end - done)
        return lag
    finally:
        await consumer.stop()
        await admin.close()


def _tps(topic: str, partitions: set[int]) -> list[object]:
    from aiokafka.structs import TopicPartition

    return [TopicPartition(topic, p) for p in sorted(partitions)]


def group_lag(bootstrap: str, group: str, topics: list[str]) -> int:
    return asyncio.run(group_lag_async(bootstrap, group, topics))


def wait_drained(
    bootstrap: str, group: str, topics: list[str], timeout_s: float, what: str = ""
) -> None:
    """Wait until ``group`` has committed everything in ``topics`` (twice in a row)."""
    streak = 0

    from aiokafka.errors import KafkaError

    def probe() -> bool:
        nonlocal streak
        try:
            lag = group_lag(bootstrap, group, topics)
        except KafkaError:  # e.g. no group coordinator yet on a fresh broker
            lag = -1
        streak = streak + 1 if lag == 0 else 0
        return streak >= 2

    wait_until(probe, timeout_s, f"consumer group {group} to drain {topics} {what}", 1.0)


class LocalSlack:
    """A local HTTP server that answers POSTs like a Slack incoming webhook, in a background
    thread. Subclasses decide each answer (:meth:`answer`); every POST is recorded as
    ``(monotonic arrival, JSON body, status)``, status 0 for a POST left hanging."""

    PATH = "/services/T000/B000/XXXX"

    def __init__(self) -> None:
        import threading

        self.posts: list[tuple[float, dict[str, object], int]] = []
        self.port = free_port()
        self._ready = threading.Event()
        self._stop = asyncio.Event()  # set in the server's loop: it ends hangs and the server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.PATH}"

    async def answer(self, payload: dict[str, object]) -> tuple[int, str, dict[str, str]]:
        """(status, body, headers) for one POST, recorded in :attr:`posts` by the subclass."""
        raise NotImplementedError

    async def hang(self, seconds: float) -> None:
        """Keep a POST waiting up to ``seconds`` (less if the server stops)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def routes(self, app: Any) -> None:
        """Add the server's routes to the aiohttp ``app`` (here: the webhook)."""
        from aiohttp import web

        async def hook(request: web.Request) -> web.Response:
            status, body, headers = await self.answer(await request.json())
            return web.Response(status=status, text=body, headers=headers)

        app.router.add_post(self.PATH, hook)

    def _run(self) -> None:
        from aiohttp import web

        async def main() -> None:
            app = web.Application()
            self.routes(app)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(main())
        finally:
            self._loop.close()

    def start(self) -> Self:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def delivered(self) -> list[dict[str, object]]:
        """Bodies of the POSTs that were answered 200, in arrival order."""
        return [p for _, p, status in self.posts if status == 200]


class FakeSlack(LocalSlack):
    """Slack that answers from a script.

    ``script`` lists the answers to give in order (status, body, headers); after it runs out
    every POST gets ``200 ok``. A header ``X-Test-Delay: <seconds>`` in a scripted answer holds
    that answer for so long (a Slack that hangs) and is not sent.
    """

    def __init__(self, script: list[tuple[int, str, dict[str, str]]] | None = None) -> None:
        super().__init__()
        self.script = list(script or [])

    async def answer(self, payload: dict[str, object]) -> tuple[int, str, dict[str, str]]:
        status, body, headers = self.script.pop(0) if self.script else (200, "ok", {})
        self.posts.append((time.monotonic(), payload, status))
        headers = dict(headers or {})
        delay = float(headers.pop("X-Test-Delay", "0"))
        if delay:
            await self.hang(delay)
        return status, body, headers


class OutageSlack(LocalSlack):
    """Slack that can be down for a while.

    Up: ``200 ok``. Down (:meth:`down`, until :meth:`recover` or the given number of seconds):
    answers alternate between ``500`` and a hang of ``hang_s`` seconds (a client with a shorter
    timeout gives up first), so both failure paths are exercised.
    """

    def __init__(self, hang_s: float = 30.0) -> None:
        super().__init__()
        self.hang_s = hang_s
        self._down_until = 0.0
        self._failed = 0

    def down(self, seconds: float = float("inf")) -> None:
        self._down_until = time.monotonic() + seconds

    def recover(self) -> None:
        self._down_until = 0.0

    def is_down(self) -> bool:
        return time.monotonic() < self._down_until

    async def answer(self, payload: dict[str, object]) -> tuple[int, str, dict[str, str]]:
        if not self.is_down():
            self.posts.append((time.monotonic(), payload, 200))
            return 200, "ok", {}
        self._failed += 1
        if self._failed % 2:
            self.posts.append((time.monotonic(), payload, 500))
            return 500, "service_unavailable", {}
        self.posts.append((time.monotonic(), payload, 0))
        await self.hang(self.hang_s)
        return 500, "hang", {}

    def failed(self) -> int:
        """POSTs answered 500 or left hanging."""
        return sum(1 for _, _, status in self.posts if status != 200)


@dataclasses.dataclass
class Posted:
    """A message the local Slack Web API holds (``thread_ts``: the parent of a reply)."""

    channel: str
    ts: str
    text: str
    blocks: list[Any]
    metadata: dict[str, Any] | None = None
    thread_ts: str | None = None
    edits: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def as_slack(self, with_metadata: bool, replies: int) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "message", "ts": self.ts, "text": self.text}
        out.update({"blocks": self.blocks, "bot_id": "B0BOT", "user": "U0BOT"})
        if self.thread_ts or replies:
            out["thread_ts"] = self.thread_ts or self.ts
        if replies:
            out["reply_count"] = replies
        if with_metadata and self.metadata:
            out["metadata"] = self.metadata
        return out


@dataclasses.dataclass
class Scripted:
    """A forced answer to one call of ``method``: Slack's ``error`` (``ok: false``) with an
    HTTP ``status`` (429 with ``retry_after``), held ``delay`` seconds; ``after``: the call is
    carried out first (a post that reaches Slack whose answer is lost)."""

    method: str
    error: str = ""
    status: int = 200
    retry_after: float | None = None
    delay: float = 0.0
    after: bool = False


class SlackApi(LocalSlack):
    """A local server that answers the Slack Web API methods the bot mode uses as Slack does:
    ``auth.test``, ``chat.postMessage`` (``thread_ts``, ``metadata``), ``chat.update``,
    ``conversations.history`` and ``conversations.replies`` (``oldest``, ``cursor``,
    ``include_all_metadata``). Bodies are JSON or forms (reads take query parameters); the token
    comes as ``Authorization: Bearer`` or a ``token`` parameter; errors are HTTP 200 with
    ``ok: false`` (``not_authed``, ``invalid_auth``, ``channel_not_found``, ``not_in_channel``,
    ``message_not_found``, ``thread_not_found``), a rate limit is 429 with ``Retry-After``.
    Channels the bot is not a member of are ``outside``. :meth:`fail` scripts answers."""

    TOKEN = "xoxb-0000-1111-SECRETTOKENxyz"

    def __init__(
        self, channels: Iterable[str] = ("C0DEFAULT",), *, outside: Iterable[str] = ()
    ) -> None:
        super().__init__()
        self.messages: dict[str, list[Posted]] = {c: [] for c in channels}
        self.outside = set(outside)
        self.script: list[Scripted] = []
        #: (monotonic arrival, method, arguments, HTTP status, error)
        self.calls: list[tuple[float, str, dict[str, Any], int, str]] = []
        self._last_ts = 0.0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def fail(self, method: str, error: str = "", times: int = 1, **kw: Any) -> Self:
        """Answer the next ``times`` calls of ``method`` with :class:`Scripted` (``kw``)."""
        self.script += [Scripted(method, error, **kw) for _ in range(times)]
        return self

    def top_level(self, channel: str) -> list[Posted]:
        return [m for m in self.messages.get(channel, []) if m.thread_ts is None]

    def replies(self, channel: str, ts: str) -> list[Posted]:
        return [m for m in self.messages.get(channel, []) if m.thread_ts == ts]

    def called(self, method: str) -> list[dict[str, Any]]:
        return [args for _, m, args, _, _ in self.calls if m == method]

    def routes(self, app: Any) -> None:
        from aiohttp import web

        async def api(request: web.Request) -> web.Response:
            args: dict[str, Any] = dict(request.query)
            if request.method == "POST":
                if request.content_type == "application/json":
                    args.update(await request.json())
                else:
                    args.update({k: v for k, v in (await request.post()).items()})
            auth = request.headers.get("Authorization", "")
            token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
            token = args.pop("token", token)
            method = request.match_info["method"]
            status, body, headers = await self.answer_api(method, args, token)
            return web.json_response(body, status=status, headers=headers)

        app.router.add_route("*", "/api/{method}", api)

    async def answer_api(
        self, method: str, args: dict[str, Any], token: str | None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        scripted = next((s for s in self.script if s.method == method), None)
        if scripted is not None:
            self.script.remove(scripted)
        result = {"ok": False, "error": "not_authed"} if not token else None
        if token and token != self.TOKEN:
            result = {"ok": False, "error": "invalid_auth"}
        if result is None and (scripted is None or scripted.after):
            result = self.carry_out(method, {k: _json_field(v) for k, v in args.items()})
        status, headers = 200, {}
        if scripted is not None:
            status, result = scripted.status, {"ok": False, "error": scripted.error}
            if scripted.retry_after is not None:
                headers["Retry-After"] = str(int(scripted.retry_after))
        self.calls.append((time.monotonic(), method, args, status, str(result.get("error", ""))))
        if scripted is not None and scripted.delay:
            await self.hang(scripted.delay)
        return status, result, headers

    def carry_out(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        if method == "auth.test":
            return {"ok": True, "team": "Test", "user": "monitor", "user_id": "U0BOT"}
        channel = str(args.get("channel", ""))
        if channel not in self.messages:
            return {"ok": False, "error": "channel_not_found"}
        held = self.messages[channel]
        if method == "chat.postMessage":
            return self._post(channel, held, args)
        if method == "chat.update":
            target = next((m for m in held if m.ts == args.get("ts")), None)
            if target is None:
                return {"ok": False, "error": "message_not_found"}
            target.text = str(args.get("text", target.text))
            target.blocks = list(args.get("blocks", target.blocks))
            target.edits.append(args)
            return {"ok": True, "channel": channel, "ts": target.ts, "text": target.text}
        if method in ("conversations.history", "conversations.replies"):
            return self._read(method, held, args)
        return {"ok": False, "error": "unknown_method"}

    def _post(self, channel: str, held: list[Posted], args: dict[str, Any]) -> dict[str, Any]:
        if channel in self.outside:
            return {"ok": False, "error": "not_in_channel"}
        if not args.get("text") and not args.get("blocks"):
            return {"ok": False, "error": "no_text"}
        parent = args.get("thread_ts")
        if parent and not any(m.ts == parent and m.thread_ts is None for m in held):
            return {"ok": False, "error": "thread_not_found"}
        self._last_ts = max(time.time(), self._last_ts + 0.000001)
        message = Posted(
            channel,
            f"{self._last_ts:.6f}",
            str(args.get("text", "")),
            list(args.get("blocks", [])),
            args.get("metadata"),
            parent,
        )
        held.append(message)
        return {"ok": True, "channel": channel, "ts": message.ts, "message": {"text": message.text}}

    def _read(self, method: str, held: list[Posted], args: dict[str, Any]) -> dict[str, Any]:
        with_metadata = str(args.get("include_all_metadata", "")).lower() in ("1", "true")
        oldest = float(args.get("oldest") or 0)
        if method == "conversations.history":
            found = [m for m in reversed(held) if m.thread_ts is None]  # newest first
        else:
            parent = [m for m in held if m.ts == args.get("ts") and m.thread_ts is None]
            if not parent:
                return {"ok": False, "error": "thread_not_found"}
            found = parent + [m for m in held if m.thread_ts == args.get("ts")]
        found = [m for m in found if float(m.ts) >= oldest]
        start, limit = int(args.get("cursor") or 0), int(args.get("limit") or 100)
        page = found[start : start + limit]
        more = start + limit < len(found)
        return {
            "ok": True,
            "messages": [
                m.as_slack(with_metadata, len(self.replies(m.channel, m.ts))) for m in page
            ],
            "has_more": more,
            "response_metadata": {"next_cursor": str(start + limit) if more else ""},
        }


def _json_field(value: Any) -> Any:
    """Form bodies carry ``blocks`` and ``metadata`` as JSON text, as Slack accepts them."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        import json

        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value


def alert_campaign() -> Campaign:
    """The spike campaign of the tests that wait for a FIRING and its RESOLVED: 31 clean minutes
    after the spike (the default has 17). Judged as a backlog, the 40-minute campaign's incident
    now and then (about 1 run in 20 under CPU load) still held at its last minute, so its RESOLVED
    came only once the wall clock moved event time past the data, 60 s or more later, and a test
    waiting 120 s failed (CI, 2026-12-02); 24 of 24 runs of this one resolved within 3.2 s."""
    return spike_campaign(minutes=55)


class FakeClock:
    """Monotonic time that moves only when the code under test sleeps (or a test moves it)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def incident_lifecycle(
    template: str = "spring_sale",
    error_class: str = "per_user_marketing_limit",
    at: int = 1_751_000_000,
) -> list[Notification]:
    """FIRING (the whole account), UPDATED (the template joins: more specific), REPEAT (an hour
    later) and RESOLVED of one incident, as the alert book writes them."""
    cls = ErrorClass(error_class)

    def finding(scope: Scope, count: int) -> Finding:
        return Finding(
            rule="spike",
            scope=scope,
            group=f"spike:{cls.value}",
            verdict=Verdict.POSITIVE,
            evidence=Evidence(count, 1000, count / 1000, 0.02, 1_440_000, 1e-30, 300),
            title=f"{cls.value} spike",
            error_class=cls,
        )

    book = AlertBook(AlertPolicy(repeat_interval_seconds=3600))
    account, sale = finding(Scope.for_account(), 400), finding(Scope.for_template(template), 300)
    rules = frozenset({"spike"})
    rounds = [(at, (account,)), (at + 60, (account, sale)), (at + 3660, (account, sale))]
    out = [n for t, found in rounds for n in book.apply(Evaluation(t, rules, found))]
    return out + book.apply(Evaluation(at + 3720, rules, ()))
