"""Slack over HTTP: incoming webhooks and the Web API, one :class:`Answer` per request.

Both go through slack_sdk (``AsyncWebhookClient``, ``AsyncWebClient``) with their retry
handlers off and their loggers muted (slack_sdk logs webhook URLs at DEBUG): the notifier
(:mod:`streams.slack`) owns retrying. An :class:`Answer` says whether Slack took a request,
refused it for good, or may be asked again, and whether a failed request may still have been
acted on (``ambiguous``: no answer, or a 5xx, after the request was sent). Secrets (the webhook
URL, the bot token) never appear in an answer, a log line or an exception text here.

:data:`EXPLANATIONS` turns Slack's error codes into what to do about them (``slack test``).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from streams.settings import Secret

#: Slack's Web API, unless DELIVERY_MONITOR_SLACK_API_URL says otherwise.
SLACK_API_URL = "https://slack.com/api/"

# slack_sdk logs the full webhook URL at DEBUG; its clients get a logger that never logs.
_sdk_logger = logging.Logger("streams.slack.sdk", level=logging.CRITICAL)
_sdk_logger.disabled = True

#: ``ok: false`` errors that are worth asking again (Slack's side failed); any other is final.
RETRYABLE_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
#: Errors that mean the token or the webhook itself is unusable (every message would fail).
BROKEN_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "token_revoked",
        "token_expired",
        "account_inactive",
        "no_service",
        "invalid_token",
        "channel_is_archived",
        "action_prohibited",
    }
)
#: Webhook statuses that mean the webhook itself is broken (revoked, channel gone, archived).
BROKEN_WEBHOOK_STATUSES = frozenset({403, 404, 410})

EXPLANATIONS = {
    "invalid_auth": "the bot token is not valid: check DELIVERY_MONITOR_SLACK_BOT_TOKEN "
    "(a bot token starts with xoxb-)",
    "not_authed": "no bot token was sent: set DELIVERY_MONITOR_SLACK_BOT_TOKEN",
    "token_revoked": "the bot token was revoked (the app was uninstalled?): reinstall the app",
    "token_expired": "the bot token expired: reinstall the app or turn token rotation off",
    "account_inactive": "the bot's app or workspace was deactivated",
    "channel_not_found": "channel {channel} does not exist or the bot cannot see it: give the "
    "channel ID (channel details > About, C0123...), and invite the bot to a private channel",
    "not_in_channel": "the bot is not a member of {channel}: type /invite @<your app> there",
    "is_archived": "channel {channel} is archived",
    "missing_scope": "the bot token lacks a scope ({detail}): add chat:write (and "
    "channels:history, groups:history to find posts after a crash) and reinstall the app",
    "restricted_action": "a workspace admin restricted posting in {channel}",
    "ratelimited": "Slack rate-limited the request: try again in a minute",
    "no_service": "the webhook URL was revoked or its app removed: create a new webhook",
    "invalid_token": "the webhook URL is not valid (403 invalid_token): copy it again",
    "channel_is_archived": "the webhook's channel is archived (410)",
    "action_prohibited": "a workspace admin restricted this webhook (403 action_prohibited)",
}


class SlackOutcome(enum.StrEnum):
    """What happened to one delivery attempt or message (metric label values)."""

    SENT = "sent"
    RETRIED = "retried"
    RATE_LIMITED = "rate_limited"
    FAILED_PERMANENT = "failed_permanent"
    GAVE_UP = "gave_up"
    DROPPED = "dropped"  # the queue was full; the message was never attempted


@dataclass(frozen=True, slots=True)
class Answer:
    """Slack's answer to one request: HTTP ``status`` (None: none came) and ``error`` (Slack's
    error code, the webhook's body, or the exception type; "" when it went through)."""

    status: int | None
    error: str = ""
    retry_after: float | None = None
    data: dict[str, Any] = field(default_factory=dict)
    #: False when the request surely never reached Slack (the connection was refused)
    reached: bool = True

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error

    @property
    def retryable(self) -> bool:
        return not self.ok and (
            self.status is None
            or self.status == 429
            or self.status >= 500
            or self.error in RETRYABLE_ERRORS
        )

    @property
    def ambiguous(self) -> bool:
        """Failed, yet Slack may have acted on it (a post may exist): look before posting."""
        return not self.ok and self.reached and (self.status is None or self.status >= 500)

    @property
    def broken(self) -> bool:
        """The token or the webhook is unusable (not only this message)."""
        return self.error in BROKEN_ERRORS or (
            self.status in BROKEN_WEBHOOK_STATUSES and not self.data  # a webhook's answer
        )

    def describe(self) -> str:
        if self.status is None:
            return self.error
        return f"HTTP {self.status} {self.error}".rstrip()


def explain(answer: Answer, channel: str = "") -> str:
    """What an error means and what to do about it, in one sentence."""
    hint = EXPLANATIONS.get(answer.error)
    if hint is None:
        if answer.status is None:
            return f"Slack did not answer ({answer.error})"
        return f"Slack refused the request ({answer.describe()})"
    detail = str(answer.data.get("needed") or "")
    return hint.format(channel=channel or "the channel", detail=detail or "see the app's scopes")


def _retry_after(headers: Any) -> float | None:
    raw = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


def _no_answer(exc: BaseException) -> Answer:
    refused = isinstance(exc, aiohttp.ClientConnectorError)  # nothing was sent
    return Answer(None, type(exc).__name__, reached=not refused)


class Webhooks:
    """POSTs to incoming webhooks (one client per URL, sharing ``session``)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._clients: dict[str, AsyncWebhookClient] = {}

    async def post(self, url: Secret, payload: dict[str, Any]) -> Answer:
        client = self._clients.get(url.value)
        if client is None:
            client = self._clients[url.value] = AsyncWebhookClient(
                url.value, session=self._session, retry_handlers=[], logger=_sdk_logger
            )
        try:
            response = await client.send_dict(payload)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return _no_answer(exc)
        body = (response.body or "")[:100]
        status = response.status_code
        return Answer(status, "" if status == 200 else body, _retry_after(response.headers))


class WebApi:
    """Calls to Slack's Web API with a bot token (``Authorization: Bearer``)."""

    def __init__(self, token: Secret, base_url: str, session: aiohttp.ClientSession) -> None:
        self._client = AsyncWebClient(
            token.value,
            base_url=base_url,
            session=session,
            retry_handlers=[],
            logger=_sdk_logger,
        )

    async def call(self, method: str, args: dict[str, Any], *, read: bool = False) -> Answer:
        """``method`` with ``args`` (JSON body; query parameters when ``read``, a GET)."""
        try:
            if read:
                response = await self._client.api_call(method, http_verb="GET", params=args)
            else:
                response = await self._client.api_call(method, json=args)
        except SlackApiError as exc:
            return _refused(exc.response)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return _no_answer(exc)
        except SlackClientError as exc:  # e.g. a body that is not JSON
            return Answer(None, type(exc).__name__)
        data = response.data if isinstance(response.data, dict) else {}
        return Answer(response.status_code, "", None, data)


def _refused(response: Any) -> Answer:
    """The answer inside a SlackApiError (``ok: false``, or an HTTP error)."""
    status = getattr(response, "status_code", None) or getattr(response, "status", None)
    data = getattr(response, "data", None)
    data = data if isinstance(data, dict) else {}
    error = str(data.get("error") or ("ratelimited" if status == 429 else f"http_{status}"))
    headers = getattr(response, "headers", None)
    return Answer(int(status) if status else None, error, _retry_after(headers), data)
