"""Local HTTP servers that answer like Slack: an incoming webhook (scripted, or down for a
while) and the Web API the bot mode uses."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Iterable
from typing import Any, Self

from testkit.worker import free_port


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
        result: dict[str, Any] | None = {"ok": False, "error": "not_authed"} if not token else None
        if token and token != self.TOKEN:
            result = {"ok": False, "error": "invalid_auth"}
        if result is None and (scripted is None or scripted.after):
            result = self.carry_out(method, {k: _json_field(v) for k, v in args.items()})
        status, headers = 200, {}
        if scripted is not None:
            status, result = scripted.status, {"ok": False, "error": scripted.error}
            if scripted.retry_after is not None:
                headers["Retry-After"] = str(int(scripted.retry_after))
        assert result is not None  # carried out, refused, or scripted
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
