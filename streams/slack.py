"""Slack notifier: posts incident notifications to an incoming webhook, never blocking the caller.

``submit()`` / ``send()`` render the Block Kit payload
(:func:`streams.core.slack_format.render_slack_message`) and only enqueue it; one sender task
delivers the queue in order (FIFO: a notification never overtakes an earlier one, so an
incident's RESOLVED never reaches Slack before its FIRING):

- at most ``rate_per_second`` messages per webhook (a token bucket on an injected clock; Slack
  allows about 1/s with short bursts);
- 429: waits ``Retry-After`` (the whole queue waits: the limit is per webhook), then retries;
- 5xx, timeouts and connection errors (an outage): retried with exponential backoff, capped at
  ``max_backoff`` and with equal jitter, for as long as the outage lasts; the messages behind
  wait their turn;
- 400 / 403 / 404 / 410 (and any other 4xx): not retried, recorded as a permanent failure;
  403 / 404 / 410 mean the webhook itself is broken (revoked, channel gone or archived) and
  set :attr:`SlackNotifier.webhook_broken`;
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
there); failures are also kept in :attr:`SlackNotifier.failures`.

HTTP goes through slack_sdk's ``AsyncWebhookClient`` with its retry handlers switched off: this
module owns retrying, because slack_sdk's handlers cannot bound the total time, share one 429
pause across the queue, use an injected clock or report outcomes. The webhook URL is a secret:
it is never logged (slack_sdk's own debug logging, which prints the URL, is muted) and
exceptions are logged by type only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import aiohttp
from slack_sdk.webhook.async_client import AsyncWebhookClient

from streams.core.alerts import Notification
from streams.core.slack_format import DEFAULT_DASHBOARD_PATH, render_slack_message
from streams.settings import Secret, Settings

log = logging.getLogger(__name__)

# slack_sdk logs the full webhook URL at DEBUG; its client gets a logger that never logs.
_sdk_logger = logging.Logger("streams.slack.sdk", level=logging.CRITICAL)
_sdk_logger.disabled = True

PERMANENT_STATUSES = frozenset({400, 403, 404, 410})
BROKEN_WEBHOOK_STATUSES = frozenset({403, 404, 410})


class SlackOutcome(enum.StrEnum):
    """What happened to one delivery attempt or message (metric label values)."""

    SENT = "sent"
    RETRIED = "retried"
    RATE_LIMITED = "rate_limited"
    FAILED_PERMANENT = "failed_permanent"
    GAVE_UP = "gave_up"
    DROPPED = "dropped"  # the queue was full; the message was never attempted


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
    """A queued message; ``outcome`` (from :meth:`SlackNotifier.submit`) gets its final outcome."""

    label: str
    payload: dict[str, Any]
    enqueued_at: float
    outcome: asyncio.Future[SlackOutcome] | None = None


def _retry_after(headers: Any) -> float | None:
    raw = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


class SlackNotifier:
    """Queue + one sender task for one incoming webhook (see the module docstring)."""

    def __init__(
        self,
        webhook_url: Secret,
        *,
        grafana_url: str,
        dashboard_path: str = DEFAULT_DASHBOARD_PATH,
        policy: RetryPolicy | None = None,
        rate_per_second: float = 1.0,
        burst: int = 1,
        queue_size: int = 1000,
        on_outcome: OutcomeRecorder | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        max_failures_kept: int = 100,
        max_ids_kept: int = 10_000,
    ) -> None:
        if not webhook_url:
            raise ValueError("no Slack webhook URL configured")
        self._url = webhook_url
        self.grafana_url, self.dashboard_path = grafana_url, dashboard_path
        self.policy = policy or RetryPolicy()
        self._clock, self._sleep = clock, sleep
        self._rng = rng or random.Random()
        self._bucket = TokenBucket(rate_per_second, burst, clock)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(queue_size)
        self._enqueued_at: collections.deque[float] = collections.deque()  # not final yet
        self._outcomes: collections.OrderedDict[str, asyncio.Future[SlackOutcome]] = (
            collections.OrderedDict()
        )
        self._max_ids_kept = max_ids_kept
        self._on_outcome = on_outcome
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._client: AsyncWebhookClient | None = None
        self.failures: collections.deque[DeliveryFailure] = collections.deque(
            maxlen=max_failures_kept
        )
        self.webhook_broken: str | None = None  # Slack's error, e.g. "no_service"

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> SlackNotifier | None:
        """A notifier for ``settings.slack_webhook_url``, or None when none is configured."""
        if not settings.slack_webhook_url:
            return None
        kwargs.setdefault("policy", RetryPolicy.from_settings(settings))
        return cls(settings.slack_webhook_url, grafana_url=settings.grafana_url, **kwargs)

    def __repr__(self) -> str:
        return f"SlackNotifier(webhook_url={self._url!r}, queued={self._queue.qsize()})"

    async def start(self) -> None:
        """Open the HTTP session and start the sender task (idempotent)."""
        if self._task is not None:
            return
        timeout = aiohttp.ClientTimeout(total=self.policy.request_timeout)
        self._session = aiohttp.ClientSession(timeout=timeout)
        self._client = AsyncWebhookClient(
            self._url.value, session=self._session, retry_handlers=[], logger=_sdk_logger
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
        payload = render_slack_message(
            notification, grafana_url=self.grafana_url, dashboard_path=self.dashboard_path
        )
        item = _Item(notification.id, payload, self._clock(), outcome)
        try:
            await self._queue.put(item)
        except BaseException:  # cancelled while waiting for room: never queued
            self._outcomes.pop(notification.id, None)
            raise
        self._enqueued_at.append(item.enqueued_at)  # no await in between: in queue order
        return outcome

    def send(self, notification: Notification) -> bool:
        """Enqueue ``notification``; returns False (and records DROPPED) when the queue is full."""
        payload = render_slack_message(
            notification, grafana_url=self.grafana_url, dashboard_path=self.dashboard_path
        )
        return self.send_payload(notification.id, payload)

    def send_payload(self, label: str, payload: dict[str, Any]) -> bool:
        """Enqueue a ready webhook payload; ``label`` names it in logs and failures."""
        item = _Item(label, payload, self._clock())
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            log.warning("slack queue full, dropped notification %s", label)
            self._record(label, SlackOutcome.DROPPED, None, "queue full", 0)
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
        self, label: str, outcome: SlackOutcome, status: int | None, reason: str, attempts: int
    ) -> None:
        self._emit(outcome)
        self.failures.append(
            DeliveryFailure(label, outcome, status, reason, attempts, self._clock())
        )

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            outcome = SlackOutcome.GAVE_UP
            try:
                outcome = await self._deliver(
                    item.label, item.payload, item.enqueued_at + self.policy.give_up_after
                )
            except asyncio.CancelledError:  # stopped or abandoned: not delivered by this sender
                if item.outcome is not None:
                    item.outcome.cancel()
                raise
            except Exception as exc:  # never let one message stop the sender
                log.error("slack notification %s: unexpected %s", item.label, type(exc).__name__)
                self._record(item.label, SlackOutcome.GAVE_UP, None, type(exc).__name__, 0)
            finally:
                if self._enqueued_at:
                    self._enqueued_at.popleft()
                self._queue.task_done()
            if item.outcome is not None and not item.outcome.done():
                item.outcome.set_result(outcome)

    async def _acquire(self) -> None:
        while (wait := self._bucket.reserve()) > 0:
            await self._sleep(wait)

    async def _post(self, payload: dict[str, Any]) -> tuple[int | None, str, float | None]:
        assert self._client is not None
        try:
            response = await self._client.send_dict(payload)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return None, type(exc).__name__, None
        return response.status_code, (response.body or "")[:100], _retry_after(response.headers)

    async def _deliver(self, label: str, payload: dict[str, Any], deadline: float) -> SlackOutcome:
        """Post until delivered, permanently refused, or ``deadline`` (at least one attempt)."""
        policy = self.policy
        attempts = 0
        while True:
            await self._acquire()
            attempts += 1
            status, reason, retry_after = await self._post(payload)
            if status == 200:
                self._emit(SlackOutcome.SENT)
                log.info("slack notification %s delivered (attempts=%d)", label, attempts)
                return SlackOutcome.SENT
            if status is not None and 400 <= status < 500 and status != 429:
                if status in BROKEN_WEBHOOK_STATUSES:
                    self.webhook_broken = reason or str(status)
                log.error(
                    "slack notification %s rejected: HTTP %d %s (not retried%s)",
                    label,
                    status,
                    reason,
                    "; the webhook is broken" if status in BROKEN_WEBHOOK_STATUSES else "",
                )
                self._record(label, SlackOutcome.FAILED_PERMANENT, status, reason, attempts)
                return SlackOutcome.FAILED_PERMANENT
            if status == 429:
                self._emit(SlackOutcome.RATE_LIMITED)
                wait = (
                    retry_after if retry_after is not None else policy.backoff(attempts, self._rng)
                )
                wait = min(wait, policy.max_retry_after)
            else:
                wait = policy.backoff(attempts, self._rng)
            if self._clock() + wait > deadline:
                log.error(
                    "slack notification %s given up after %d attempts: %s",
                    label,
                    attempts,
                    f"HTTP {status} {reason}" if status is not None else reason,
                )
                self._record(label, SlackOutcome.GAVE_UP, status, reason, attempts)
                return SlackOutcome.GAVE_UP
            self._emit(SlackOutcome.RETRIED)
            log.warning(
                "slack notification %s attempt %d failed (%s), retrying in %.1fs",
                label,
                attempts,
                f"HTTP {status}" if status is not None else reason,
                wait,
            )
            if status == 429:
                self._bucket.pause_until(self._clock() + wait)
            else:
                await self._sleep(wait)
