"""Slack notifier: delivers incident notifications, never blocking the caller.

Two modes. **Webhook** (``DELIVERY_MONITOR_SLACK_WEBHOOK_URL``): every notification is a new
message at an incoming webhook. **Bot** (``DELIVERY_MONITOR_SLACK_BOT_TOKEN``): one message per
incident and channel, its updates replied in its thread and the message edited in place
(:mod:`streams.slack_threads`). In both, a routing file (:mod:`streams.core.routing`) can send
incidents to several channels or webhooks.

``submit()`` / ``send()`` only enqueue; one sender task delivers the queue in order (FIFO: a
notification never overtakes an earlier one, so an incident's RESOLVED never reaches Slack
before its FIRING). Every HTTP request goes through :meth:`SlackNotifier.call`:

- posts are paced to ``rate_per_second`` per destination (a token bucket on an injected clock;
  Slack allows about 1 message/s per channel or webhook, with short bursts);
- 429: waits ``Retry-After`` (the whole queue waits), then retries;
- 5xx, timeouts, connection errors and Slack's own ``internal_error``-like errors (an outage):
  retried with exponential backoff, capped at ``max_backoff`` and with equal jitter, for as long
  as the outage lasts; the messages behind wait their turn;
- any other refusal (webhook 400/403/404/410; Web API ``invalid_auth``, ``channel_not_found``,
  ``not_in_channel``...): not retried, recorded as a permanent failure; one that means the
  webhook or token itself is unusable sets :attr:`SlackNotifier.broken`;
- a message still undelivered ``give_up_after`` seconds (default 24 h) after it was enqueued is
  given up and recorded (every message gets at least one attempt; the horizon runs from
  enqueueing, so a backlog is not given up one whole horizon per message).

``submit()`` returns a future that completes with the message's final outcome (sent,
failed_permanent or gave_up) so the caller can acknowledge its input then, and it remembers
recent ids: a notification submitted again (a replay after a rebalance) is matched to the
delivery already under way or done instead of being posted twice. :meth:`SlackNotifier.abandon`
drops what is pending when another worker took the alerts over (that worker posts it).
:meth:`SlackNotifier.backlog` says how many messages are not final yet and how long the oldest
has waited (for gauges).

Every outcome is reported to an optional ``on_outcome`` callback (wire Prometheus counters
there); failures are also kept in :attr:`SlackNotifier.failures`. slack_sdk's own retry
handlers are off: they cannot bound the total time, share one 429 pause across the queue, use
an injected clock or report outcomes. Webhook URLs and the bot token are secrets: never logged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import aiohttp

from streams.core.alerts import Notification
from streams.core.routing import CHANNEL_ID, RoutingError, RoutingTable, parse_routes
from streams.core.slack_format import DEFAULT_DASHBOARD_PATH
from streams.settings import Secret, Settings
from streams.slack_api import SLACK_API_URL, Answer, SlackOutcome, WebApi, Webhooks
from streams.slack_threads import BotDelivery, ThreadStore, WebhookDelivery
from streams.state import DictKeyValue

__all__ = ["RetryPolicy", "SlackNotifier", "SlackOutcome", "TokenBucket", "load_routes"]

log = logging.getLogger(__name__)


class OutcomeRecorder(Protocol):
    """Called once per outcome, e.g. ``lambda o: counter.labels(outcome=o.value).inc()``."""

    def __call__(self, outcome: SlackOutcome, /) -> None: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry timing (seconds). ``give_up_after`` runs from enqueueing; ``max_backoff`` caps the
    wait between two attempts, so a recovered Slack is noticed within about that long."""

    initial_backoff: float = 1.0
    max_backoff: float = 60.0
    multiplier: float = 2.0
    give_up_after: float = 24 * 3600.0
    request_timeout: float = 10.0
    max_retry_after: float = 300.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_backoff=settings.slack_max_backoff_s,
            give_up_after=settings.slack_give_up_after_s,
            request_timeout=settings.slack_request_timeout_s,
        )

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Delay before retry number ``retry`` (1-based): exponential, with equal jitter."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


@dataclass(frozen=True, slots=True)
class DeliveryFailure:
    """A message that was not delivered (``status`` None: no HTTP answer)."""

    notification_id: str
    outcome: SlackOutcome
    status: int | None
    reason: str
    attempts: int
    at: float
    destination: str = ""  # a channel, or a webhook route's name


class TokenBucket:
    """``rate`` tokens per second, up to ``burst``; :meth:`pause_until` empties it for a 429."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = float(burst)
        self.updated = clock()
        self.paused_until = 0.0

    def reserve(self) -> float:
        """Take a token and return 0, or return how long to wait before asking again."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if now < self.paused_until:
            return self.paused_until - now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def pause_until(self, until: float) -> None:
        self.paused_until = max(self.paused_until, until)
        self.tokens = 0.0


@dataclass(frozen=True, slots=True)
class _Item:
    """A queued notification; ``outcome`` (from :meth:`SlackNotifier.submit`) gets its final
    outcome."""

    notification: Notification
    enqueued_at: float
    outcome: asyncio.Future[SlackOutcome] | None = None


def load_routes(settings: Settings) -> RoutingTable | None:
    """The routing file's table with the settings' default destination, or None when Slack is
    not configured. Raises :class:`RoutingError` (``path:line: reason``) for a bad file."""
    bot = bool(settings.slack_bot_token)
    default = settings.slack_channel if bot else settings.slack_webhook_url.value
    path = settings.slack_routes
    if path is None:
        if bot and not default:
            raise RoutingError(
                "DELIVERY_MONITOR_SLACK_BOT_TOKEN is set but no channel: set "
                "DELIVERY_MONITOR_SLACK_CHANNEL (a channel ID) or DELIVERY_MONITOR_SLACK_ROUTES"
            )
        return RoutingTable().with_default(default) if default else None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RoutingError(f"{path}: cannot read the routing file: {exc}") from None
    table = parse_routes(text, str(path), mode="bot" if bot else "webhook").with_default(default)
    if table.default is None:
        where = "DELIVERY_MONITOR_SLACK_CHANNEL" if bot else "DELIVERY_MONITOR_SLACK_WEBHOOK_URL"
        raise RoutingError(
            f"{path}:1: no default destination for incidents no route takes: add "
            f'default = "..." to the file or set {where}'
        )
    return table


def describe_slack(settings: Settings) -> str:
    """One line for the worker's start: the Slack mode and destinations (no secrets). Raises
    :class:`RoutingError` for a bad routing file (the worker refuses to start)."""
    table = load_routes(settings)
    if table is None:
        return "Slack: not configured (alerts go to the log and the alerts topic)"
    if settings.slack_bot_token:
        names = [r.target for r in table.destinations()]
        odd = [c for c in names if not CHANNEL_ID.match(c)]
        if odd:
            log.warning(
                "slack: %s do not look like channel IDs: posting works with a #name, but "
                "editing and finding a post after a crash need the ID (C0123...)",
                ", ".join(odd),
            )
        where = ", ".join(names)
        return f"Slack: bot mode (threads), {len(table.routes)} routes, channels {where}"
    return f"Slack: webhook mode, {len(table.routes)} routes"


class SlackNotifier:
    """Queue + one sender task for Slack (see the module docstring)."""

    def __init__(
        self,
        webhook_url: Secret | None = None,
        *,
        grafana_url: str,
        dashboard_path: str = DEFAULT_DASHBOARD_PATH,
        bot_token: Secret | None = None,
        api_url: str = SLACK_API_URL,
        channel: str = "",
        routes: RoutingTable | None = None,
        threads: ThreadStore | None = None,
        policy: RetryPolicy | None = None,
        rate_per_second: float = 1.0,
        burst: int = 1,
        queue_size: int = 1000,
        on_outcome: OutcomeRecorder | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        max_failures_kept: int = 100,
        max_ids_kept: int = 10_000,
    ) -> None:
        self._token = bot_token if bot_token else None
        default = channel if self._token else (webhook_url.value if webhook_url else "")
        self.routes = (routes or RoutingTable()).with_default(default)
        if self.routes.default is None and not self.routes.routes:
            raise ValueError("no Slack webhook URL or channel configured")
        self.mode = "bot" if self._token else "webhook"
        self._api_url = api_url
        self._render = {"grafana_url": grafana_url, "dashboard_path": dashboard_path}
        if self._token is not None and threads is None:
            threads = ThreadStore(DictKeyValue(), wall_clock=wall_clock)
        self.threads = threads
        self.policy = policy or RetryPolicy()
        self._clock, self._wall, self._sleep = clock, wall_clock, sleep
        self._rng = rng or random.Random()
        self._rate, self._burst = rate_per_second, burst
        self._buckets: dict[str, TokenBucket] = {}
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(queue_size)
        self._enqueued_at: collections.deque[float] = collections.deque()  # not final yet
        self._outcomes: collections.OrderedDict[str, asyncio.Future[SlackOutcome]] = (
            collections.OrderedDict()
        )
        self._max_ids_kept = max_ids_kept
        self._on_outcome = on_outcome
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._delivery: BotDelivery | WebhookDelivery | None = None
        self.failures: collections.deque[DeliveryFailure] = collections.deque(
            maxlen=max_failures_kept
        )
        self.broken: str | None = None  # Slack's error, e.g. "no_service", "invalid_auth"

    @property
    def webhook_broken(self) -> str | None:
        return self.broken

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> SlackNotifier | None:
        """A notifier for the settings' webhook or bot token (and routing file), or None when
        Slack is not configured. Raises :class:`RoutingError` for a bad routing file."""
        routes = load_routes(settings)
        if routes is None:
            return None
        kwargs.setdefault("policy", RetryPolicy.from_settings(settings))
        return cls(
            settings.slack_webhook_url or None,
            grafana_url=settings.grafana_url,
            bot_token=settings.slack_bot_token or None,
            api_url=settings.slack_api_url,
            channel=settings.slack_channel,
            routes=routes,
            **kwargs,
        )

    def __repr__(self) -> str:
        return (
            f"SlackNotifier(mode={self.mode}, destinations={len(self.routes.destinations())}, "
            f"queued={self._queue.qsize()})"
        )

    async def start(self) -> None:
        """Open the HTTP session and start the sender task (idempotent)."""
        if self._task is not None:
            return
        timeout = aiohttp.ClientTimeout(total=self.policy.request_timeout)
        self._session = aiohttp.ClientSession(timeout=timeout)
        if self._token is not None:
            assert self.threads is not None
            api = WebApi(self._token, self._api_url, self._session)
            self._delivery = BotDelivery(
                self, api, self.routes, store=self.threads, wall_clock=self._wall, **self._render
            )
        else:
            self._delivery = WebhookDelivery(
                self, Webhooks(self._session), self.routes, store=self.threads, **self._render
            )
        self._task = asyncio.create_task(self._run(), name="slack-notifier")

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Deliver what is queued (up to ``drain_timeout`` seconds), then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), drain_timeout)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def abandon(self) -> int:
        """Drop every message that is not final yet (another worker owns the alerts now and
        posts them); returns how many. Their futures are cancelled and their ids forgotten."""
        dropped = len(self._enqueued_at)
        running = self._task is not None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            item = self._queue.get_nowait()
            self._queue.task_done()
            if item.outcome is not None:
                item.outcome.cancel()
        self._enqueued_at.clear()
        for notification_id, outcome in list(self._outcomes.items()):
            if outcome.cancelled():
                del self._outcomes[notification_id]
        self._task = asyncio.create_task(self._run(), name="slack-notifier") if running else None
        if dropped:
            log.info("slack: %d pending notifications left to the alerts' new owner", dropped)
        return dropped

    async def __aenter__(self) -> SlackNotifier:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def join(self) -> None:
        """Wait until every queued message is delivered or given up."""
        await self._queue.join()

    def backlog(self) -> tuple[int, float]:
        """Messages queued or being retried (not final yet), and the oldest one's age (s)."""
        if not self._enqueued_at:
            return 0, 0.0
        return len(self._enqueued_at), max(0.0, self._clock() - self._enqueued_at[0])

    def knows(self, notification_id: str) -> bool:
        """Whether ``notification_id`` was submitted recently (queued, under way or final)."""
        return notification_id in self._outcomes

    async def submit(self, notification: Notification) -> asyncio.Future[SlackOutcome]:
        """Enqueue ``notification`` (waiting for room when the queue is full); the future
        completes with its final outcome. An id submitted before returns that delivery's
        future: the message is not posted again."""
        known = self._outcomes.get(notification.id)
        if known is not None and not known.cancelled():
            log.info("slack notification %s submitted again: not queued twice", notification.id)
            return known
        outcome: asyncio.Future[SlackOutcome] = asyncio.get_running_loop().create_future()
        self._outcomes[notification.id] = outcome
        while len(self._outcomes) > self._max_ids_kept:
            self._outcomes.popitem(last=False)
        item = _Item(notification, self._clock(), outcome)
        try:
            await self._queue.put(item)
        except BaseException:  # cancelled while waiting for room: never queued
            self._outcomes.pop(notification.id, None)
            raise
        self._enqueued_at.append(item.enqueued_at)  # no await in between: in queue order
        return outcome

    def send(self, notification: Notification) -> bool:
        """Enqueue ``notification``; returns False (and records DROPPED) when the queue is full."""
        item = _Item(notification, self._clock())
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            log.warning("slack queue full, dropped notification %s", notification.id)
            self._record(notification.id, SlackOutcome.DROPPED, None, "queue full", 0)
            return False
        self._enqueued_at.append(item.enqueued_at)
        return True

    def _emit(self, outcome: SlackOutcome) -> None:
        if self._on_outcome is not None:
            try:
                self._on_outcome(outcome)
            except Exception:
                log.exception("slack outcome callback failed")

    def _record(
        self,
        label: str,
        outcome: SlackOutcome,
        status: int | None,
        reason: str,
        attempts: int,
        destination: str = "",
    ) -> None:
        self._emit(outcome)
        self.failures.append(
            DeliveryFailure(label, outcome, status, reason, attempts, self._clock(), destination)
        )

    def sent(self, label: str, destination: str = "") -> None:
        """A notification reached one destination (counted once per destination)."""
        self._emit(SlackOutcome.SENT)
        log.info("slack notification %s delivered to %s", label, destination or "Slack")

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            label = item.notification.id
            outcome = SlackOutcome.GAVE_UP
            try:
                assert self._delivery is not None
                deadline = item.enqueued_at + self.policy.give_up_after
                outcome = await self._delivery.deliver(item.notification, deadline)
            except asyncio.CancelledError:  # stopped or abandoned: not delivered by this sender
                if item.outcome is not None:
                    item.outcome.cancel()
                raise
            except Exception as exc:  # never let one message stop the sender
                log.error("slack notification %s: unexpected %s", label, type(exc).__name__)
                self._record(label, SlackOutcome.GAVE_UP, None, type(exc).__name__, 0)
            finally:
                if self._enqueued_at:
                    self._enqueued_at.popleft()
                self._queue.task_done()
            if item.outcome is not None and not item.outcome.done():
                item.outcome.set_result(outcome)

    def _bucket(self, key: str) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst, self._clock)
        return bucket

    async def _acquire(self, key: str) -> None:
        bucket = self._bucket(key)
        while (wait := bucket.reserve()) > 0:
            await self._sleep(wait)

    async def call(
        self,
        key: str,
        label: str,
        request: Callable[[], Awaitable[Answer]],
        deadline: float,
        *,
        paced: bool = True,
    ) -> tuple[SlackOutcome, Answer]:
        """``request`` until Slack takes it (SENT, not counted here: see :meth:`sent`), refuses
        it for good, or ``deadline`` passes (at least one attempt). ``key`` names the
        destination (its rate-limit bucket; never a secret), ``label`` the notification."""
        policy = self.policy
        attempts = 0
        while True:
            if paced:
                await self._acquire(key)
            attempts += 1
            answer = await request()
            if answer.ok:
                return SlackOutcome.SENT, answer
            if not answer.retryable:
                if answer.broken:
                    self.broken = answer.error or str(answer.status)
                log.error(
                    "slack notification %s to %s rejected: %s (not retried%s)",
                    label,
                    key,
                    answer.describe(),
                    "; the webhook or token is broken" if answer.broken else "",
                )
                self._record(
                    label, SlackOutcome.FAILED_PERMANENT, answer.status, answer.error, attempts, key
                )
                return SlackOutcome.FAILED_PERMANENT, answer
            if answer.status == 429:
                self._emit(SlackOutcome.RATE_LIMITED)
                wait = answer.retry_after
                wait = wait if wait is not None else policy.backoff(attempts, self._rng)
                wait = min(wait, policy.max_retry_after)
            else:
                wait = policy.backoff(attempts, self._rng)
            if self._clock() + wait > deadline:
                log.error(
                    "slack notification %s to %s given up after %d attempts: %s",
                    label,
                    key,
                    attempts,
                    answer.describe(),
                )
                self._record(
                    label, SlackOutcome.GAVE_UP, answer.status, answer.error, attempts, key
                )
                return SlackOutcome.GAVE_UP, answer
            self._emit(SlackOutcome.RETRIED)
            log.warning(
                "slack notification %s to %s attempt %d failed (%s), retrying in %.1fs",
                label,
                key,
                attempts,
                answer.describe(),
                wait,
            )
            if answer.status == 429 and paced:
                self._bucket(key).pause_until(self._clock() + wait)
            else:
                await self._sleep(wait)
