"""Delivering one notification to its destinations: webhooks, or threaded messages (bot mode).

:class:`BotDelivery` keeps one message per incident and channel (:mod:`streams.core.threads`):
the FIRING is posted, later notifications reply in its thread and edit it. Before a message is
posted, the intent (``posting``) is saved durably in the :class:`ThreadStore`; once Slack
answers, the message's ``ts`` and the notification's id are saved. A notification met again
(a restart, a rebalance: the alerts topic is read from its last committed offset) is skipped if
it was delivered, and if its post may have reached Slack without the answer reaching us, the
message is looked up first (``conversations.history`` / ``conversations.replies`` with
``include_all_metadata``: every message carries the incident and notification ids) instead of
being posted again. A post that failed ambiguously (no answer, a 5xx) is looked up the same way
before it is retried. Edits (``chat.update``) are safe to repeat and are done before the reply.

:class:`WebhookDelivery` posts the full message to each routed webhook (webhooks cannot edit or
thread); with a store, it remembers what was delivered, so only a crash between Slack's answer
and that save (milliseconds) can post a message twice.

Every HTTP request goes through the notifier's :meth:`~streams.slack.SlackNotifier.call`
(pacing, 429 ``Retry-After``, backoff, give-up): one retry machinery for both modes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from streams.core.alerts import Notification
from streams.core.keys import THREAD_INDEX_KEY, thread_record_key
from streams.core.routing import Route, RoutingTable
from streams.core.slack_format import render_slack_message
from streams.core.threads import (
    ChannelThread,
    ThreadPlan,
    ThreadRecord,
    message_metadata,
    metadata_of,
    plan,
    thread_key,
)
from streams.settings import Secret
from streams.slack_api import Answer, SlackOutcome, WebApi, Webhooks, explain
from streams.state import KeyValue, decode, encode

log = logging.getLogger(__name__)

DAY = 86_400.0
#: How far before the first attempt a lost post is searched for (clock skew with Slack).
LOOKBACK_S = 120.0
#: History pages read when looking for a lost post (200 messages each).
MAX_PAGES = 5

Request = Callable[[], Awaitable[Answer]]


class Caller(Protocol):
    """The notifier's retry machinery (:meth:`streams.slack.SlackNotifier.call`)."""

    async def call(
        self, key: str, label: str, request: Request, deadline: float, *, paced: bool = True
    ) -> tuple[SlackOutcome, Answer]: ...

    def sent(self, label: str, destination: str = "") -> None: ...


class ThreadStore:
    """Per incident (``group@since``), a :class:`ThreadRecord`, in partition 0 of ``kv``.

    :meth:`save` returns once the record is durable (``persist``: e.g. the table's changelog
    records acknowledged by Kafka). Records untouched for ``retention_s`` are deleted (an index
    key lists every record with its last change); a firing incident's REPEAT keeps it fresh.
    """

    def __init__(
        self,
        kv: KeyValue,
        persist: Callable[[], Awaitable[None]] | None = None,
        *,
        wall_clock: Callable[[], float] = time.time,
        retention_s: float = 7 * DAY,
        max_records: int = 5000,
    ) -> None:
        self.kv, self._persist, self._wall = kv, persist, wall_clock
        self.retention_s, self.max_records = retention_s, max_records

    def get(self, key: str) -> ThreadRecord:
        raw = self.kv.get(0, thread_record_key(key))
        return decode(raw, ThreadRecord) if raw is not None else ThreadRecord(channels={})

    async def save(self, key: str, record: ThreadRecord) -> None:
        now = record.touched = self._wall()
        self.kv.set(0, thread_record_key(key), encode(record))
        raw = self.kv.get(0, THREAD_INDEX_KEY)
        index: dict[str, float] = decode(raw, dict[str, float]) if raw is not None else {}
        index.pop(key, None)
        index[key] = now  # last: the index is kept in order of last change
        stale = [k for k, t in index.items() if now - t > self.retention_s]
        stale += [k for k in list(index)[: max(0, len(index) - self.max_records)]]
        for old in stale:
            if index.pop(old, None) is not None:
                self.kv.delete(0, thread_record_key(old))
        self.kv.set(0, THREAD_INDEX_KEY, encode(index))
        if self._persist is not None:
            await self._persist()


@dataclass(slots=True)
class _Job:
    """One notification for one destination, with its incident's record and thread there."""

    notification: Notification
    key: str  # the incident (thread_key)
    record: ThreadRecord
    thread: ChannelThread  # the record's entry for this destination
    route: Route
    deadline: float


def _worst(outcomes: list[SlackOutcome]) -> SlackOutcome:
    for bad in (SlackOutcome.GAVE_UP, SlackOutcome.FAILED_PERMANENT):
        if bad in outcomes:
            return bad
    return SlackOutcome.SENT if outcomes else SlackOutcome.FAILED_PERMANENT


class _Delivery:
    """What both modes share: the routes, the store, the rendering settings."""

    def __init__(
        self,
        caller: Caller,
        routes: RoutingTable,
        store: ThreadStore | None,
        *,
        grafana_url: str,
        dashboard_path: str,
    ) -> None:
        self.caller, self.routes, self.store = caller, routes, store
        self.render = {"grafana_url": grafana_url, "dashboard_path": dashboard_path}

    def key_of(self, route: Route) -> str:
        """The destination's key in a :class:`ThreadRecord` (and its rate-limit bucket)."""
        raise NotImplementedError

    def destinations(self, notification: Notification, record: ThreadRecord) -> list[Route]:
        """The routed destinations, plus those already holding the incident's messages (its
        thread stays where it started when the routing facts change, e.g. after an UPDATED)."""
        out = {self.key_of(r): r for r in self.routes.route(notification)}
        configured = {self.key_of(r): r for r in self.routes.destinations()}
        for key in record.channels:
            if key not in out:
                route = configured.get(key) or self.unconfigured(key)
                if route is not None:
                    out[key] = route
        if not out:
            log.error("slack notification %s: no route takes it and no default", notification.id)
        return list(out.values())

    def unconfigured(self, key: str) -> Route | None:
        """A destination of an earlier notification no longer in the routing file."""
        return None

    async def save(self, job: _Job) -> None:
        if self.store is not None:
            await self.store.save(job.key, job.record)

    async def deliver(self, notification: Notification, deadline: float) -> SlackOutcome:
        key = thread_key(notification)
        record = self.store.get(key) if self.store is not None else ThreadRecord(channels={})
        outcomes = []
        for route in self.destinations(notification, record):
            thread = record.channels.setdefault(self.key_of(route), ChannelThread())
            if notification.id in thread.done:
                log.info(
                    "slack notification %s was delivered to %s before: not sent again",
                    notification.id,
                    route.name,
                )
                outcomes.append(SlackOutcome.SENT)
                continue
            job = _Job(notification, key, record, thread, route, deadline)
            outcomes.append(await self.one(job))
        return _worst(outcomes)

    async def one(self, job: _Job) -> SlackOutcome:
        """Deliver ``job`` (the thread there has not had it yet)."""
        raise NotImplementedError


class WebhookDelivery(_Delivery):
    """The full message to every routed incoming webhook (keys: route names, never URLs)."""

    def __init__(self, caller: Caller, webhooks: Webhooks, routes: RoutingTable, **kw: Any):
        super().__init__(caller, routes, **kw)
        self.webhooks = webhooks

    def key_of(self, route: Route) -> str:
        return route.name

    async def one(self, job: _Job) -> SlackOutcome:
        note, route = job.notification, job.route
        payload = render_slack_message(note, **self.render)
        url = Secret(route.target)
        outcome, _ = await self.caller.call(
            route.name, note.id, lambda: self.webhooks.post(url, payload), job.deadline
        )
        if outcome is SlackOutcome.SENT:
            job.thread.delivered(note.id)
            await self.save(job)
            self.caller.sent(note.id, route.name)
        return outcome


class BotDelivery(_Delivery):
    """Threaded, edited messages through the Web API (keys: channels)."""

    def __init__(
        self,
        caller: Caller,
        api: WebApi,
        routes: RoutingTable,
        *,
        store: ThreadStore,
        wall_clock: Callable[[], float] = time.time,
        **kw: Any,
    ) -> None:
        super().__init__(caller, routes, store=store, **kw)
        self.api, self._wall = api, wall_clock

    def key_of(self, route: Route) -> str:
        return route.target

    def unconfigured(self, key: str) -> Route | None:
        return Route(key, key)  # a channel: its thread can still be followed

    async def one(self, job: _Job) -> SlackOutcome:
        note, thread = job.notification, job.thread
        while True:
            steps = plan(thread, note, **self.render)
            if steps is None:
                return SlackOutcome.SENT
            outcome, answer = await self._send(job, steps)
            if outcome is not SlackOutcome.SENT:
                return outcome
            if not steps.reply_to:
                thread.ts = str(answer.data.get("ts", ""))
                thread.channel_id = str(answer.data.get("channel") or job.route.target)
            found = answer.data.get("found")
            if found is not None and found != note.id:
                # the incident's message was there already (an earlier notification's post
                # whose answer was lost): this one replies to it
                thread.posting = ""
                await self.save(job)
                continue
            thread.delivered(note.id)
            await self.save(job)
            self.caller.sent(note.id, job.route.name)
            return SlackOutcome.SENT

    async def _send(self, job: _Job, steps: ThreadPlan) -> tuple[SlackOutcome, Answer]:
        """The edit (if any), then the post: its intent saved first, and looked up before it
        is posted (again) when an earlier attempt may have reached Slack."""
        notification, thread, route, deadline = (
            job.notification,
            job.thread,
            job.route,
            job.deadline,
        )
        channel = thread.channel_id or route.target
        edit = steps.edit
        if edit is not None:
            edit_args = {"channel": channel, "ts": thread.ts, **edit}
            await self.caller.call(
                route.target,
                notification.id + " (edit)",
                lambda: self.api.call("chat.update", edit_args),
                deadline,
                paced=False,
            )
        top = not steps.reply_to
        # a top-level post of this incident here may have reached Slack (any notification of
        # it); a reply, only if it was this notification's
        look = bool(thread.posting) if top else thread.posting == notification.id
        if not look:
            thread.posting, thread.posting_since = notification.id, self._wall()
            await self.save(job)
        args = {"channel": channel, **steps.post, "metadata": message_metadata(notification)}
        if not top:
            args["thread_ts"] = steps.reply_to

        async def attempt() -> Answer:
            nonlocal look
            if look:
                found = await self._find(channel, job.key, notification.id, thread, top)
                if not found.ok or found.data.get("ts"):
                    return found  # Slack failed (retried), or the post is there
            answer = await self.api.call("chat.postMessage", args)
            look = answer.ambiguous
            return answer

        return await self.caller.call(route.target, notification.id, attempt, deadline)

    async def _find(
        self, channel: str, key: str, notification_id: str, thread: ChannelThread, top: bool
    ) -> Answer:
        """Look for a post whose answer was lost: a top-level message of incident ``key``, or
        the reply of ``notification_id`` in the thread. An ok answer with ``ts`` (and
        ``found``: its notification id) when found, without when not; a failure to retry."""
        args: dict[str, Any] = {
            "channel": channel,
            "oldest": f"{max(0.0, thread.posting_since - LOOKBACK_S):.6f}",
            "inclusive": True,
            "limit": 200,
            "include_all_metadata": True,
        }
        method = "conversations.history" if top else "conversations.replies"
        if not top:
            args["ts"] = thread.ts
        for _ in range(MAX_PAGES):
            answer = await self.api.call(method, args, read=True)
            if not answer.ok:
                if answer.retryable:
                    return answer
                log.warning(
                    "slack: cannot look for a post of %s in %s whose answer was lost (%s); "
                    "posting it, so it may show twice",
                    notification_id,
                    channel,
                    explain(answer, channel),
                )
                return Answer(200)
            for message in answer.data.get("messages") or ():
                meta = metadata_of(message)
                if meta is None or meta.get("incident") != key:
                    continue
                is_top = message.get("thread_ts") in (None, message.get("ts"))
                if (top and is_top) or (
                    not top and not is_top and meta.get("notification") == notification_id
                ):
                    log.info("slack: %s was posted before (found in %s)", notification_id, method)
                    found = {"ts": message.get("ts"), "channel": channel}
                    return Answer(200, data={**found, "found": meta.get("notification")})
            cursor = (answer.data.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                break
            args["cursor"] = cursor
        return Answer(200)
