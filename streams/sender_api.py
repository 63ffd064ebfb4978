"""HTTP routes for what senders act on before and after a campaign (see README):

- ``POST /v1/audience[?at=]``: the pre-flight of a recipient list. The body is read as it
  arrives (one recipient per line, any size) and answered as it is read: one JSON verdict per
  line (:class:`streams.core.audience.Verdict`), recipients owned by other workers forwarded to
  them in chunks, so memory stays bounded whatever the list's size. The time the verdicts are
  for is in the ``X-Audience-At`` response header.
- ``GET /v1/retries?due_before=&limit=&status=``: retry plans by due time, from every worker.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from itertools import islice
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec
from aiohttp import web

from streams.core.advice import advise
from streams.core.audience import Verdict, verdict
from streams.core.geography import recipient_geography
from streams.core.keys import PLAN_PREFIX, plan_key, recipient_key, recipients_meta_key
from streams.core.phones import normalize_recipient
from streams.core.recipient_state import RecipientState
from streams.core.retries import PlanStatus, RetryPlan, plan_record
from streams.stages import partition_for
from streams.stages.recipients import RecipientMeta
from streams.state import decode

if TYPE_CHECKING:
    from streams.api import Api

log = logging.getLogger(__name__)

#: Recipients judged (and forwarded) per step of a pre-flight.
CHUNK = 2_000
#: Longest line of a pre-flight body; longer ones get an error verdict.
MAX_LINE = 512
MAX_RETRIES_LIMIT = 10_000
_verdicts = msgspec.json.Encoder()
_BSUID = re.compile(r"^[A-Z]{2}\.[0-9A-Za-z]{6,64}$")


def valid_recipient(given: str, region: str | None = None) -> str:
    """The recipient id of a list entry (a phone in a form the API reads, national formats in
    ``region`` when set, or a BSUID); ValueError with the reason when it is neither."""
    if not given.strip():
        raise ValueError("empty recipient")
    rid = normalize_recipient(given, region)
    if rid.isdigit():
        if not 8 <= len(rid) <= 15:
            raise ValueError(f"{len(rid)} digits: a phone number has 8-15 with its country code")
        return rid
    if _BSUID.match(rid):
        return rid
    raise ValueError("not a phone number (with country code) nor a BSUID (CC.digits)")


async def body_lines(content: aiohttp.StreamReader) -> AsyncIterator[str | None]:
    """Lines of a request body as they arrive; None for a line that is too long or not
    UTF-8 (it still counts: verdicts refer to lines by their index)."""
    carry = b""
    skipping = False
    async for chunk in content.iter_chunked(1 << 16):
        parts = (carry + chunk).split(b"\n")
        carry = parts.pop()
        for raw in parts:
            if skipping:
                skipping = False
                yield None
                continue
            yield _line(raw)
        if len(carry) > MAX_LINE:
            skipping, carry = True, b""
    if skipping:
        yield None
    elif carry.strip():
        yield _line(carry)


def _line(raw: bytes) -> str | None:
    if len(raw) > MAX_LINE:
        return None
    try:
        return raw.decode().strip()
    except UnicodeDecodeError:
        return None


class SenderApi:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.m = api.m

    # -- pre-flight ------------------------------------------------------------------------------
    def resolve_at(self, request: web.Request) -> int:
        """``?at=`` or now: the wall clock, or this worker's newest event time if later (a
        replay of future-dated logs), so every worker judges the list at the same time."""
        if "at" in request.query:
            return int(request.query["at"])
        newest = 0
        for p in self.api.local_partitions(self.api.recipients_topic):
            raw = self.m.recipients_kv.read(recipients_meta_key(p), p)
            if raw is not None:
                newest = max(newest, decode(raw, RecipientMeta).watermark)
        return max(newest, int(time.time()))

    def judge(self, items: list[tuple[int, str | None]], at: int) -> list[Verdict]:
        """Verdicts for recipients this worker owns (bad lines get an error verdict)."""
        out: list[Verdict] = []
        by_partition: dict[int, list[tuple[int, str, str]]] = {}
        for n, given in items:
            if given is None:
                out.append(Verdict(n, "", error=f"not a UTF-8 line of at most {MAX_LINE} bytes"))
                continue
            try:
                rid = valid_recipient(given, self.api.region)
            except ValueError as exc:
                out.append(Verdict(n, given, error=str(exc)))
                continue
            by_partition.setdefault(partition_for(rid, self.api.n), []).append((n, given, rid))
        policy = self.m.advice_policy
        for p, group in by_partition.items():
            keys = [recipient_key(rid) for _, _, rid in group]
            for (n, given, rid), raw in zip(
                group, self.m.recipients_kv.read_many(p, keys), strict=True
            ):
                state = decode(raw, RecipientState) if raw is not None else None
                geo = recipient_geography(rid)
                advice = advise(state, given, at, is_us=geo.is_us, policy=policy)
                out.append(verdict(n, advice, geo.country))
        return out

    async def audience(self, request: web.Request) -> web.StreamResponse:
        try:
            at = self.resolve_at(request)
        except ValueError:
            return web.json_response({"error": "at must be unix seconds"}, status=400)
        response = web.StreamResponse(
            headers={"Content-Type": "application/x-ndjson", "X-Audience-At": str(at)}
        )
        await response.prepare(request)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            chunk: list[tuple[int, str | None]] = []
            n = 0
            async for line in body_lines(request.content):
                chunk.append((n, line))
                n += 1
                if len(chunk) >= CHUNK:
                    await self._answer(session, chunk, at, response)
                    chunk = []
            if chunk:
                await self._answer(session, chunk, at, response)
        await response.write_eof()
        return response

    async def _answer(
        self,
        session: aiohttp.ClientSession,
        chunk: list[tuple[int, str | None]],
        at: int,
        response: web.StreamResponse,
    ) -> None:
        """Judge one chunk: local recipients here, the others by their owners, concurrently."""
        local_partitions = set(self.api.local_partitions(self.api.recipients_topic))
        mine: list[tuple[int, str | None]] = []
        remote: dict[str, list[tuple[int, str | None]]] = {}
        owners: dict[int, str | None] = {}
        for n, given in chunk:
            try:
                rid = valid_recipient(given, self.api.region) if given else ""
            except ValueError:
                rid = ""
            p = partition_for(rid, self.api.n) if rid else -1
            if p < 0 or p in local_partitions:
                mine.append((n, given))
                continue
            if p not in owners:
                owners[p] = self.api.owner_of(rid)
            owner = owners[p]
            if owner is None:
                mine.append((n, None))  # judged as an error below
            else:
                remote.setdefault(owner, []).append((n, given))
        results = await asyncio.gather(
            *(self._forward(session, owner, items, at) for owner, items in remote.items())
        )
        verdicts = self.judge(mine, at)
        for found in results:
            verdicts.extend(found)
        await response.write(b"".join(_verdicts.encode(v) + b"\n" for v in verdicts))

    async def _forward(
        self,
        session: aiohttp.ClientSession,
        owner: str,
        items: list[tuple[int, str | None]],
        at: int,
    ) -> list[Verdict]:
        try:
            async with session.post(
                f"{owner}/v1/_local/audience", json={"at": at, "items": items}
            ) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise aiohttp.ClientError(f"status {resp.status}")
            return msgspec.json.decode(body, type=list[Verdict])
        except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError) as exc:
            log.warning("worker %s did not judge %d recipients: %s", owner, len(items), exc)
            return [
                Verdict(n, given or "", error="the owning worker did not answer, retry")
                for n, given in items
            ]

    async def local_audience(self, request: web.Request) -> web.Response:
        body = await request.json()
        items = [(int(n), given) for n, given in body["items"]]
        return web.Response(
            body=_verdicts.encode(self.judge(items, int(body["at"]))),
            content_type="application/json",
        )

    # -- retry plans -----------------------------------------------------------------------------
    def local_retries(self, due_before: int, limit: int, statuses: set[str]) -> list[RetryPlan]:
        """Plans of this worker's partitions due at or before ``due_before``, by due time."""
        stop = plan_key(due_before + 1, "")
        found: list[RetryPlan] = []
        for p in self.api.local_partitions(self.api.recipients_topic):
            # plans of other statuses are skipped by reading on; at most ``limit`` per partition
            start, kept = PLAN_PREFIX, 0
            while True:
                raws = [v for _, v in islice(self.m.recipients_kv.scan(p, start, stop), 1_000)]
                plans = [decode(raw, RetryPlan) for raw in raws]
                for plan in plans:
                    if plan.status in statuses and kept < limit:
                        found.append(plan)
                        kept += 1
                if len(raws) < 1_000 or kept >= limit:
                    break
                last = plans[-1]
                start = plan_key(last.due, last.wamid) + b"\x00"
        found.sort(key=lambda plan: (plan.due, plan.wamid))
        return found[:limit]

    def _retry_query(self, request: web.Request) -> tuple[int, int, set[str]]:
        due_before = int(request.query.get("due_before", str(2**40)))
        limit = min(int(request.query.get("limit", "1000")), MAX_RETRIES_LIMIT)
        status = request.query.get("status", "planned,due")
        statuses = {s.value for s in PlanStatus} if status == "all" else set(status.split(","))
        if not statuses <= {s.value for s in PlanStatus} or limit < 1:
            raise ValueError(status)
        return due_before, limit, statuses

    async def retries(self, request: web.Request) -> web.Response:
        try:
            due_before, limit, statuses = self._retry_query(request)
        except ValueError:
            return web.json_response(
                {
                    "error": "due_before: unix seconds; limit: 1..10000; "
                    "status: planned, due, cancelled (comma-separated) or all"
                },
                status=400,
            )
        plans = [plan_record(p) for p in self.local_retries(due_before, limit, statuses)]
        partial = False
        peers = self.api.peers()
        if peers:
            query = f"due_before={due_before}&limit={limit}&status={','.join(sorted(statuses))}"
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
                results = await asyncio.gather(
                    *(self.api.fetch_json(session, f"{u}/v1/_local/retries?{query}") for u in peers)
                )
            for result in results:
                if result is None:
                    partial = True
                else:
                    plans.extend(result["retries"])
        plans.sort(key=lambda r: (int(str(r["due"])), str(r["wamid"])))
        return web.json_response(
            {"due_before": due_before, "retries": plans[:limit], "partial": partial}
        )

    async def local_retries_view(self, request: web.Request) -> web.Response:
        due_before, limit, statuses = self._retry_query(request)
        plans = self.local_retries(due_before, limit, statuses)
        return web.json_response({"retries": [plan_record(p) for p in plans]})


def register(api: Api, web_app: Any) -> SenderApi:
    sender = SenderApi(api)
    web_app.router.add_post("/v1/audience", sender.audience)
    web_app.router.add_post("/v1/_local/audience", sender.local_audience)
    web_app.router.add_get("/v1/retries", sender.retries)
    web_app.router.add_get("/v1/_local/retries", sender.local_retries_view)
    return sender
