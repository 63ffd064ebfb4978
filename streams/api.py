"""The read API on the worker's web server (JSON).

- ``GET /v1/templates/{name}``, ``/v1/senders/{phone_number_id}``, ``/v1/countries/{cc}``,
  ``/v1/campaigns/{id}``: funnel counts and failure ratios over the last 5 minutes, 1 hour and
  24 hours of event time (ending at ``?at=<unix seconds>``, default: the newest event time
  seen). Minute buckets are partition-local, so the answer sums this worker's partitions and
  asks the other workers for theirs (``/v1/_local/...``).
- ``GET /v1/templates``, ``/v1/senders``, ``/v1/countries``, ``/v1/campaigns``: rankings
  (``?window=5m|1h|24h&at=...&sort=...&limit=N``, see :mod:`streams.rankings`), summed across
  workers the same way.
- ``GET /v1/recipients/{id}``: one recipient's state, answered by the worker that owns the key
  (requests are forwarded to it). Ids are read by :func:`streams.core.phones.normalize_recipient`
  (wa_id digits, ``+``/``00`` prefixes, BSUIDs; a national format only with a default region);
  an id it cannot read is a 400 (in ``POST /v1/advice``: an ``error`` in that item's place).
  (requests are forwarded to it).
- ``GET /v1/alerts``: open incidents and those resolved in the last 24 h (see
  :mod:`streams.views`), answered by the worker that runs the alerting stage (requests are
  forwarded to it).
- ``GET /v1/health``: liveness plus the partitions, watermarks and stage counters of this worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import msgspec
from aiohttp import web

from streams.core.advice import advise
from streams.core.aggregates import Bucket, sum_counts, summarize
from streams.core.geography import is_us_recipient
from streams.core.keys import (
    BucketId,
    Dimension,
    messages_meta_key,
    prefix_range,
    recipient_key,
    recipients_meta_key,
    template_key,
    template_of_key,
)
from streams.core.phones import RecipientFormatError, normalize_recipient
from streams.core.recipient_state import RecipientState, recipient_view
from streams.core.times import iso_utc
from streams.metrics import monitor_state
from streams.ports import ApiSource, Table
from streams.rankings import (
    DIMS,
    WINDOWS,
    BadQuery,
    HourCache,
    RankingQuery,
    local_counts,
    merge,
    parse_query,
    rank,
    window_minutes,
)
from streams.stages import partition_for
from streams.stages.alerting import AlertingStage
from streams.stages.messages import PartitionMeta, TemplateState
from streams.stages.recipients import RecipientMeta
from streams.state import decode
from streams.views import alerts_view

log = logging.getLogger(__name__)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def template_state_view(s: TemplateState) -> dict[str, Any]:
    return {
        "status": s.status,
        "status_reason": s.reason,
        "quality": s.quality,
        "category": s.category,
        "paused": s.status in ("PAUSED", "DISABLED"),
        "disabled_at": s.disabled_at,
    }


class Api:
    """The routes' handlers over what the API reads of the worker (:class:`ApiSource`)."""

    def __init__(self, monitor: ApiSource) -> None:
        self.m = monitor
        self.n = monitor.settings.topic_partitions
        self.region = monitor.settings.default_phone_region
        self.messages_topic, self.recipients_topic = (
            monitor.messages_topic.get_topic_name(),
            monitor.recipients_topic.get_topic_name(),
        )
        self.signals_topic = monitor.signals_topic.get_topic_name()
        self.hours = HourCache()
        monitor.messages.on_buckets_changed = self.hours.changed

    # -- partitions and owners ----------------------------------------------------------------
    def local_partitions(self, topic: str) -> list[int]:
        return sorted(p for t, p in self.m.runtime.assigned_actives() if t == topic)

    def _assigned(self) -> dict[str, list[int]]:
        """Every topic partition this worker actively consumes (for operators)."""
        out: dict[str, list[int]] = {}
        for topic, partition in self.m.runtime.assigned_actives():
            out.setdefault(topic, []).append(partition)
        return {topic: sorted(ps) for topic, ps in sorted(out.items())}

    def peers(self) -> list[str]:
        """Web URLs of the other workers that own partitions of the messages table."""
        me = self.m.runtime.canonical_url
        return [url for url in self.m.runtime.table_owners(self.m.messages_table.name) if url != me]

    def watermark(self) -> int:
        best = 0
        for p in self.local_partitions(self.messages_topic):
            raw = self.m.messages_kv.read(messages_meta_key(p), p)
            if raw is not None:
                best = max(best, decode(raw, PartitionMeta).watermark)
        return best

    # -- aggregates -----------------------------------------------------------------------------
    def local_counts(self, dim: Dimension, key: str, at: int) -> dict[str, dict[str, int]]:
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
        return None if raw is None else template_state_view(decode(raw, TemplateState))

    def local_template_states(self) -> dict[str, dict[str, Any]]:
        """Every template Meta said something about, on the local partitions (few)."""
        lo, hi = prefix_range(template_key(""))
        out = {}
        for p in self.local_partitions(self.messages_topic):
            for key, raw in self.m.messages_kv.scan(p, lo, hi):
                out[template_of_key(key)] = template_state_view(decode(raw, TemplateState))
        return out

    async def local(self, request: web.Request) -> web.Response:
        dim = DIMS[request.match_info["dim"]]
        key = request.match_info["key"]
        at = int(request.query["at"])
        body: dict[str, Any] = {"counts": self.local_counts(dim, key, at)}
        if dim == Dimension.TEMPLATE:
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
        state = self.local_template_state(key) if dim == Dimension.TEMPLATE else None
        partial = False
        results = await self.ask_peers(f"/v1/_local/{kind}/{quote(key, safe='')}?at={at}")
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
        body = {dim.noun: key, "as_of": at, "windows": windows, "partial": partial}
        if dim == Dimension.TEMPLATE:
            body["state"] = state
        return _json(body)

    # -- rankings -------------------------------------------------------------------------------
    def local_ranking(self, dim: Dimension, window: str, at: int) -> dict[str, Any]:
        first, end = window_minutes(window, at)
        partitions = self.local_partitions(self.messages_topic)
        counts = local_counts(self.m.messages_kv.scan, partitions, dim, first, end, self.hours)
        body: dict[str, Any] = {"counts": counts}
        if dim == Dimension.TEMPLATE:
            body["states"] = self.local_template_states()
        return body

    async def local_rankings(self, request: web.Request) -> web.Response:
        dim = DIMS[request.match_info["dim"]]
        return _json(self.local_ranking(dim, request.query["window"], int(request.query["at"])))

    async def ranking(self, request: web.Request) -> web.Response:
        """``GET /v1/<dimension>``: every name with traffic in the window, sorted, summed
        across workers (``partial`` when one did not answer)."""
        try:
            query = parse_query(request.query)
        except BadQuery as exc:
            return _json({"error": str(exc)}, 400)
        return _json(await self.ranking_data(request.match_info["dim"], query))

    async def ranking_data(self, kind: str, query: RankingQuery) -> dict[str, Any]:
        dim = DIMS[kind]
        at = query.at if query.at is not None else self.watermark()
        local = self.local_ranking(dim, query.window, at)
        counts, states = local["counts"], local.get("states", {})
        results = await self.ask_peers(f"/v1/_local/rankings/{kind}?window={query.window}&at={at}")
        for result in results:
            if result is not None:
                merge(counts, result["counts"])
                states = {**result.get("states", {}), **states}
        total, entries = rank(dim, counts, query)
        if dim == Dimension.TEMPLATE:
            for entry in entries:
                entry["state"] = states.get(entry["template"])
        return {
            "dimension": kind,
            "window": query.window,
            "as_of": at,
            "sort": query.sort,
            "limit": query.limit,
            "total": total,
            "partial": None in results,
            "entries": entries,
        }

    async def ask_peers(self, path: str) -> list[dict[str, Any] | None]:
        """``path`` of every other worker's API (``None`` for one that did not answer)."""
        peers = self.peers()
        if not peers:
            return []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            return list(await asyncio.gather(*(self.fetch_json(session, u + path) for u in peers)))

    @staticmethod
    async def fetch_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
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
    def _rid(self, given: str) -> str:
        return normalize_recipient(given, self.region)

    async def recipient(self, request: web.Request) -> web.Response:
        given = request.match_info["id"]
        try:
            rid = self._rid(given)
        except RecipientFormatError as exc:
            return _json({"recipient": given, "error": str(exc)}, 400)
        partition = partition_for(rid, self.n)
        if partition not in self.local_partitions(self.recipients_topic):
            return await self._forward(rid, request)
        raw = self.m.recipients_kv.read(recipient_key(rid), partition)
        meta_raw = self.m.recipients_kv.read(recipients_meta_key(partition), partition)
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
                meta_raw = self.m.recipients_kv.read(recipients_meta_key(partition), partition)
                watermark = decode(meta_raw, RecipientMeta).watermark if meta_raw else 0
                seen[partition] = max(watermark, wall)
            return seen[partition]

        return now

    def local_advice(self, given: str, now: Callable[[int], int], at: int | None = None) -> Any:
        """Advice for ``given`` as of ``at`` (default ``now(partition)``), as JSON builtins;
        an id that cannot be read gets its error in place of the advice."""
        try:
            rid = self._rid(given)
        except RecipientFormatError as exc:
            return {"recipient": given, "error": str(exc)}
        partition = partition_for(rid, self.n)
        raw = self.m.recipients_kv.read(recipient_key(rid), partition)
        when = now(partition) if at is None else at
        state = None if raw is None else decode(raw, RecipientState)
        advice = advise(state, given, when, is_us=is_us_recipient(rid), policy=self.m.advice_policy)
        return msgspec.to_builtins(advice)

    async def advice(self, request: web.Request) -> web.Response:
        given = request.match_info["id"]
        try:
            rid = self._rid(given)
        except RecipientFormatError as exc:
            return _json({"recipient": given, "error": str(exc)}, 400)
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
            try:
                rid = self._rid(given)
            except RecipientFormatError as exc:
                answers[i] = {"recipient": given, "error": str(exc)}
                continue
            if partition_for(rid, self.n) in local:
                answers[i] = self.local_advice(given, now, at)
            else:
                owner = self.owner_of(rid)
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
        owner = self.owner_of(rid)
        if owner is None:
            return _json({"error": "the owner of this recipient is not known yet"}, 503)
        return await self._forward_to(owner, request)

    @staticmethod
    async def _forward_to(owner: str, request: web.Request) -> web.Response:
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{owner}{request.rel_url}", headers={FORWARDED: "1"}) as resp,
        ):
            return web.Response(
                status=resp.status, body=await resp.read(), content_type="application/json"
            )

    def owner_of(self, key: str, table: Table | None = None) -> str | None:
        """Web URL of the worker that owns ``key`` of ``table`` (default: recipients)."""
        name = (table if table is not None else self.m.recipients_table).name
        return self.m.runtime.key_owner(name, key.encode())

    # -- alerts ---------------------------------------------------------------------------------
    def local_alerts(self) -> dict[str, Any]:
        """What is firing, from the alerting stage when it runs here (else as last saved)."""
        stage = self.m.alerting
        if 0 in self.m.alerting_kv.events:  # restored and running on this worker
            return alerts_view(stage.book.state, stage.evaluated)
        book, evaluated = AlertingStage.saved_book(self.m.alerting_kv)
        return alerts_view(book, evaluated)

    def alerting_owner(self) -> str | None:
        """``None`` when the alerting stage runs here (or nobody else is known to run it)."""
        if 0 in self.local_partitions(self.signals_topic):
            return None
        owner = self.owner_of("stage", self.m.alerting_table)
        me = self.m.runtime.canonical_url
        return None if owner == me else owner

    async def alerts(self, request: web.Request) -> web.Response:
        owner = self.alerting_owner()
        if owner is not None and FORWARDED not in request.headers:
            return await self._forward_to(owner, request)
        return _json(self.local_alerts())

    async def alerts_data(self) -> dict[str, Any] | None:
        """``GET /v1/alerts``'s body for the page (``None``: the owner did not answer)."""
        owner = self.alerting_owner()
        if owner is None:
            return self.local_alerts()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            return await self.fetch_json(session, f"{owner}/v1/alerts")

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
                "peers": self.peers(),
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
                # CPU seconds of each stage's own code since the worker started (streams.stage_cpu)
                "stage_cpu_s": self.m.cpu.snapshot(),
                "consumer_lag": self.consumer_lag(),
                "alerting": self.m.alerting.progress() if 0 in self.m.alerting_kv.events else None,
                "state": self.local_state(),
            }
        )

    def local_state(self) -> dict[str, int]:
        """Recipients in a cool-down and opted out, paused templates: this worker's partitions."""
        snap = monitor_state(self.m)
        return {
            "recipients_in_cooldown": snap.recipients_in_cooldown,
            "recipients_opted_out": snap.recipients_opted_out,
            "templates_paused": snap.templates_paused,
        }

    def consumer_lag(self) -> dict[str, Any] | None:
        """The last consumer-lag measurement (``None`` before the first)."""
        report = self.m.lag.latest
        if report is None:
            return None
        return {
            "as_of": report.at,
            "as_of_iso": iso_utc(report.at),
            "topics": report.by_topic(),
            "partitions": [dataclasses.asdict(p) for p in report.partitions],
        }


MAX_BATCH = 10_000
#: header of a request one worker forwards to another (never forwarded again)
FORWARDED = "X-Delivery-Monitor-Forwarded"


def _optional_at(value: object) -> int | None:
    """``at`` of an advice request: None, or unix seconds (int or digits)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(value)
    return int(value)


def register(monitor: ApiSource, web_app: web.Application) -> Api:
    """The JSON API's routes (:mod:`streams.sender_api` registers its own next to them)."""
    api = Api(monitor)
    web_app.router.add_get("/v1/health", api.health)
    web_app.router.add_get("/v1/alerts", api.alerts)
    web_app.router.add_get("/v1/recipients/{id}", api.recipient)
    web_app.router.add_get("/v1/recipients/{id}/advice", api.advice)
    web_app.router.add_post("/v1/advice", api.advice_batch)
    web_app.router.add_post("/v1/_local/advice", api.local_advice_batch)
    dims = "|".join(DIMS)
    web_app.router.add_get(f"/v1/_local/rankings/{{dim:{dims}}}", api.local_rankings)
    web_app.router.add_get(f"/v1/_local/{{dim:{dims}}}/{{key}}", api.local)
    web_app.router.add_get(f"/v1/{{dim:{dims}}}", api.ranking)
    web_app.router.add_get(f"/v1/{{dim:{dims}}}/{{key}}", api.aggregate)
    return api
