"""The read API on the worker's web server (JSON).

- ``GET /v1/templates/{name}``, ``/v1/senders/{phone_number_id}``, ``/v1/countries/{cc}``:
  funnel counts and failure ratios over the last 5 minutes, 1 hour and 24 hours of event time
  (ending at ``?at=<unix seconds>``, default: the newest event time seen). Minute buckets are
  partition-local, so the answer sums this worker's partitions and asks the other workers for
  theirs (``/v1/_local/...``).
- ``GET /v1/recipients/{id}``: one recipient's state, answered by the worker that owns the key
  (requests are forwarded to it).
- ``GET /v1/health``: liveness plus the partitions, watermarks and stage counters of this worker.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec
from aiohttp import web

from streams.core.advice import advise
from streams.core.aggregates import Bucket, BucketId, sum_counts, summarize
from streams.core.geography import Geography, locate_recipient
from streams.core.recipients import RecipientState, recipient_view
from streams.stages import partition_for
from streams.stages.messages import PartitionMeta, TemplateState, meta_key, template_key
from streams.stages.recipients import RecipientMeta, recipient_key, recipient_meta_key
from streams.state import decode

if TYPE_CHECKING:
    from streams.app import Monitor

log = logging.getLogger(__name__)

WINDOWS = {"5m": 5, "1h": 60, "24h": 1440}
DIMS = {"templates": "t", "senders": "s", "countries": "c"}
_PHONE = re.compile(r"^\+?[\d\s().-]{6,}$")


def normalize_recipient(raw: str) -> str:
    """A phone in any common format becomes its digits; a BSUID is kept as given."""
    raw = raw.strip()
    if _PHONE.match(raw):
        return re.sub(r"\D", "", raw)
    return raw


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


class Api:
    def __init__(self, monitor: Monitor) -> None:
        self.m = monitor
        self.n = monitor.settings.topic_partitions
        self.messages_topic, self.recipients_topic = (
            monitor.messages_topic.get_topic_name(),
            monitor.recipients_topic.get_topic_name(),
        )

    # -- partitions and owners ----------------------------------------------------------------
    def local_partitions(self, topic: str) -> list[int]:
        try:
            actives = self.m.app.assignor.assigned_actives()
        except Exception:
            return []
        return sorted(tp.partition for tp in actives if tp.topic == topic)

    def _assigned(self) -> dict[str, list[int]]:
        """Every topic partition this worker actively consumes (for operators)."""
        try:
            actives = self.m.app.assignor.assigned_actives()
        except Exception:
            return {}
        out: dict[str, list[int]] = {}
        for tp in actives:
            out.setdefault(tp.topic, []).append(tp.partition)
        return {topic: sorted(ps) for topic, ps in sorted(out.items())}

    def _peers(self) -> list[str]:
        """Web URLs of the other workers that own partitions of the messages table."""
        try:
            metadata = self.m.app.router.table_metadata(self.m.messages_table.name)
        except Exception:
            return []
        me = str(self.m.app.conf.canonical_url).rstrip("/")
        return [str(url).rstrip("/") for url in metadata if str(url).rstrip("/") != me]

    def watermark(self) -> int:
        best = 0
        for p in self.local_partitions(self.messages_topic):
            raw = self.m.messages_kv.read(meta_key(p), p)
            if raw is not None:
                best = max(best, decode(raw, PartitionMeta).watermark)
        return best

    # -- aggregates -----------------------------------------------------------------------------
    def local_counts(self, dim: str, key: str, at: int) -> dict[str, dict[str, int]]:
        """Every window's counts from one read of the longest window's minute buckets (one
        multi-get per local partition)."""
        end = at // 60
        minutes = range(end - max(WINDOWS.values()) + 1, end + 1)
        found: list[tuple[int, Bucket]] = []  # (minute, bucket) of every partition
        for p in self.local_partitions(self.messages_topic):
            keys = [BucketId(dim, key, p, minute).encode().encode() for minute in minutes]
            for minute, raw in zip(minutes, self.m.messages_kv.read_many(p, keys), strict=True):
                if raw is not None:
                    found.append((minute, decode(raw, Bucket)))
        return {
            label: sum_counts(b for minute, b in found if minute > end - n)
            for label, n in WINDOWS.items()
        }

    def local_template_state(self, name: str) -> dict[str, Any] | None:
        raw = self.m.messages_kv.read(template_key(name))
        if raw is None:
            return None
        s = decode(raw, TemplateState)
        return {
            "status": s.status,
            "status_reason": s.reason,
            "quality": s.quality,
            "category": s.category,
            "paused": s.status in ("PAUSED", "DISABLED"),
        }

    async def local(self, request: web.Request) -> web.Response:
        dim = DIMS[request.match_info["dim"]]
        key = request.match_info["key"]
        at = int(request.query["at"])
        body: dict[str, Any] = {"counts": self.local_counts(dim, key, at)}
        if dim == "t":
            body["state"] = self.local_template_state(key)
        return _json(body)

    async def aggregate(self, request: web.Request) -> web.Response:
        kind = request.match_info["dim"]
        dim, key = DIMS[kind], request.match_info["key"]
        try:
            at = int(request.query["at"]) if "at" in request.query else self.watermark()
        except ValueError:
            return _json({"error": "at must be unix seconds"}, 400)
        counts = self.local_counts(dim, key, at)
        state = self.local_template_state(key) if dim == "t" else None
        partial = False
        peers = self._peers()
        if peers:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
                results = await asyncio.gather(
                    *(self._fetch(session, f"{u}/v1/_local/{kind}/{key}?at={at}") for u in peers)
                )
            for result in results:
                if result is None:
                    partial = True
                    continue
                for label, more in result["counts"].items():
                    merged = dict(counts.get(label, {}))
                    for outcome, n in more.items():
                        merged[outcome] = merged.get(outcome, 0) + n
                    counts[label] = merged
                state = state or result.get("state")
        windows = {}
        for label, c in counts.items():
            summary = summarize(c)
            windows[label] = {**summary._asdict(), "counts": c}
        body = {DIMS_NAMES[dim]: key, "as_of": at, "windows": windows, "partial": partial}
        if dim == "t":
            body["state"] = state
        return _json(body)

    @staticmethod
    async def _fetch(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
        try:
            async with session.get(url) as resp:
                if resp.status != 200:
                    return None
                data: dict[str, Any] = await resp.json()
                return data
        except (TimeoutError, aiohttp.ClientError):
            log.warning("worker %s did not answer", url.split("/v1/")[0])
            return None

    # -- recipients -----------------------------------------------------------------------------
    async def recipient(self, request: web.Request) -> web.Response:
        given = request.match_info["id"]
        rid = normalize_recipient(given)
        partition = partition_for(rid, self.n)
        if partition not in self.local_partitions(self.recipients_topic):
            return await self._forward(rid, request)
        raw = self.m.recipients_kv.read(recipient_key(rid), partition)
        meta_raw = self.m.recipients_kv.read(recipient_meta_key(partition), partition)
        now = decode(meta_raw, RecipientMeta).watermark if meta_raw else int(time.time())
        if "at" in request.query:
            now = int(request.query["at"])
        if raw is None:
            return _json({"recipient": given, "known": False, "as_of": now}, 404)
        view = recipient_view(
            decode(raw, RecipientState), given, now, self.m.advice_policy.engagement
        )
        view["known"] = True
        return _json(view)

    # -- advice -------------------------------------------------------------------------------
    def clock(self) -> Callable[[int], int]:
        """ "Now" per recipients partition for one request: the wall clock, or the partition's
        newest event time if that is later (a replay of future-dated logs); each partition's
        watermark is read once per request."""
        wall = int(time.time())
        seen: dict[int, int] = {}

        def now(partition: int) -> int:
            if partition not in seen:
                meta_raw = self.m.recipients_kv.read(recipient_meta_key(partition), partition)
                watermark = decode(meta_raw, RecipientMeta).watermark if meta_raw else 0
                seen[partition] = max(watermark, wall)
            return seen[partition]

        return now

    def local_advice(self, given: str, now: Callable[[int], int], at: int | None = None) -> Any:
        """Advice for ``given`` as of ``at`` (default ``now(partition)``), as JSON builtins."""
        rid = normalize_recipient(given)
        partition = partition_for(rid, self.n)
        raw = self.m.recipients_kv.read(recipient_key(rid), partition)
        when = now(partition) if at is None else at
        state = None if raw is None else decode(raw, RecipientState)
        advice = advise(state, given, when, is_us=is_us_recipient(rid), policy=self.m.advice_policy)
        return msgspec.to_builtins(advice)

    async def advice(self, request: web.Request) -> web.Response:
        given = request.match_info["id"]
        rid = normalize_recipient(given)
        if partition_for(rid, self.n) not in self.local_partitions(self.recipients_topic):
            return await self._forward(rid, request)
        at = int(request.query["at"]) if request.query.get("at", "").isdigit() else None
        return _json(self.local_advice(given, self.clock(), at))

    async def advice_batch(self, request: web.Request) -> web.Response:
        """``POST /v1/advice`` with ``{"recipients": [...], "at": <unix seconds>}`` (at most
        10,000; ``at`` optional, also as ``?at=``: the same answers as GET at that time)."""
        try:
            body = await request.json()
            recipients = body["recipients"]
            if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
                raise TypeError
            at = _optional_at(body.get("at", request.query.get("at")))
        except (ValueError, KeyError, TypeError):
            return _json(
                {
                    "error": 'expected {"recipients": ["<phone or BSUID>", ...]} '
                    "and an optional integer at (unix seconds)"
                },
                400,
            )
        if len(recipients) > MAX_BATCH:
            return _json({"error": f"at most {MAX_BATCH} recipients per request"}, 413)
        local = set(self.local_partitions(self.recipients_topic))
        now = self.clock()
        answers: dict[int, Any] = {}
        remote: dict[str, list[int]] = {}
        for i, given in enumerate(recipients):
            rid = normalize_recipient(given)
            if partition_for(rid, self.n) in local:
                answers[i] = self.local_advice(given, now, at)
            else:
                owner = self._owner(rid)
                if owner is None:
                    answers[i] = {"recipient": given, "error": "owner unknown, retry"}
                else:
                    remote.setdefault(owner, []).append(i)
        if remote:
            timeout = aiohttp.ClientTimeout(total=30)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                for owner, indexes in remote.items():
                    payload = {"recipients": [recipients[i] for i in indexes], "at": at}
                    try:
                        async with session.post(f"{owner}/v1/_local/advice", json=payload) as r:
                            remote_answers = (await r.json())["advice"]
                    except (aiohttp.ClientError, TimeoutError, KeyError):
                        remote_answers = [
                            {"recipient": recipients[i], "error": "owner did not answer"}
                            for i in indexes
                        ]
                    for i, answer in zip(indexes, remote_answers, strict=True):
                        answers[i] = answer
        return _json({"advice": [answers[i] for i in range(len(recipients))]})

    async def local_advice_batch(self, request: web.Request) -> web.Response:
        body = await request.json()
        now, at = self.clock(), _optional_at(body.get("at"))
        return _json({"advice": [self.local_advice(r, now, at) for r in body["recipients"]]})

    async def _forward(self, rid: str, request: web.Request) -> web.Response:
        owner = self._owner(rid)
        if owner is None:
            return _json({"error": "the owner of this recipient is not known yet"}, 503)
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{owner}{request.rel_url}") as resp,
        ):
            return web.Response(
                status=resp.status, body=await resp.read(), content_type="application/json"
            )

    def _owner(self, rid: str) -> str | None:
        try:
            url = self.m.app.router.key_store(self.m.recipients_table.name, rid.encode())
        except Exception:
            return None
        return str(url).rstrip("/")

    async def health(self, request: web.Request) -> web.Response:
        s = self.m.messages.stats
        return _json(
            {
                "status": "ok",
                "app_id": self.m.settings.app_id,
                "partitions": {
                    "messages": self.local_partitions(self.messages_topic),
                    "recipients": self.local_partitions(self.recipients_topic),
                },
                "watermark": self.watermark(),
                "peers": self._peers(),
                "assigned": self._assigned(),
                "ingest": {
                    "records": self.m.ingest.stats.records,
                    "statuses": self.m.ingest.stats.statuses,
                    "dead_letters": self.m.ingest.stats.dead_letters,
                    "partial": self.m.ingest.stats.partial,
                },
                "messages": {
                    "statuses": s.statuses,
                    "duplicates": s.duplicates,
                    "replays": s.replays,
                    "late": s.late,
                    "send_log": s.send_log,
                    "attributed_late": s.attributed_late,
                },
                "recipients": {
                    "facts": self.m.recipients.stats.facts,
                    "applied": self.m.recipients.stats.applied,
                },
            }
        )


DIMS_NAMES = {"t": "template", "s": "sender", "c": "country"}
MAX_BATCH = 10_000


def _optional_at(value: object) -> int | None:
    """``at`` of an advice request: None, or unix seconds (int or digits)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(value)
    return int(value)


def recipient_geography(rid: str) -> Geography:
    """Country of a normalized recipient id (phone digits, else a BSUID's region)."""
    if rid.isdigit():
        return locate_recipient(rid, None)
    return locate_recipient(None, rid)


def is_us_recipient(rid: str) -> bool:
    """US number (+1 with a US area code) or a US BSUID: the US marketing pause applies."""
    return recipient_geography(rid).is_us


def register(monitor: Monitor, web_app: web.Application) -> Api:
    api = Api(monitor)
    web_app.router.add_get("/v1/health", api.health)
    web_app.router.add_get("/v1/recipients/{id}", api.recipient)
    web_app.router.add_get("/v1/recipients/{id}/advice", api.advice)
    web_app.router.add_post("/v1/advice", api.advice_batch)
    web_app.router.add_post("/v1/_local/advice", api.local_advice_batch)
    web_app.router.add_get("/v1/_local/{dim:templates|senders|countries}/{key}", api.local)
    web_app.router.add_get("/v1/{dim:templates|senders|countries}/{key}", api.aggregate)
    from streams import sender_api  # audience pre-flight and retry plans (it imports this module)

    sender_api.register(api, web_app)
    return api
