"""``delivery-monitor slack test``: a test message to each configured destination, and what is
wrong when one fails (bad token, channel not found, bot not in the channel, revoked webhook).

Exit codes: 0 every destination took the message; 1 one refused it or Slack did not answer;
2 Slack is not configured, or the routing file is bad (``path:line: reason``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from streams.core.routing import Route
from streams.settings import Secret, Settings
from streams.slack import load_routes
from streams.slack_api import Answer, WebApi, Webhooks, explain

TEXT = (
    ":white_check_mark: Test message from the WhatsApp delivery monitor "
    "(`delivery-monitor slack test`): incidents routed here will show up in this channel."
)


class NotConfigured(Exception):
    """Slack is not configured, or asked for something its mode cannot do."""


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the report: ``ok`` False means the destination cannot be used."""

    destination: str
    ok: bool
    message: str


async def check(settings: Settings, channel: str | None = None) -> list[Check]:
    """Send the test message with the configured mode; one :class:`Check` per destination
    (bot mode: first one for the token itself)."""
    table = load_routes(settings)
    if table is None:
        raise NotConfigured(
            "Slack is not configured: set DELIVERY_MONITOR_SLACK_BOT_TOKEN and "
            "DELIVERY_MONITOR_SLACK_CHANNEL (bot mode), or DELIVERY_MONITOR_SLACK_WEBHOOK_URL"
        )
    routes = table.destinations()
    timeout = aiohttp.ClientTimeout(total=settings.slack_request_timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        if not settings.slack_bot_token:
            if channel:
                raise NotConfigured(
                    "--channel needs the bot mode: a webhook posts to its own channel"
                )
            hooks = Webhooks(session)
            return [
                _result(r.name, await hooks.post(Secret(r.target), {"text": TEXT}), "")
                for r in routes
            ]
        api = WebApi(settings.slack_bot_token, settings.slack_api_url, session)
        auth = await api.call("auth.test", {})
        if not auth.ok:
            return [Check("bot token", False, explain(auth))]
        who = (
            f"token ok: bot {auth.data.get('user', '?')} in workspace {auth.data.get('team', '?')}"
        )
        results = [Check("bot token", True, who)]
        targets = [Route(channel, channel)] if channel else routes
        for route in targets:
            results.append(await _bot_check(api, route))
        return results


async def _bot_check(api: WebApi, route: Route) -> Check:
    posted = await api.call("chat.postMessage", {"channel": route.target, "text": TEXT})
    if not posted.ok:
        return _result(route.name, posted, route.target)
    channel_id = str(posted.data.get("channel") or route.target)
    history = await api.call(
        "conversations.history", {"channel": channel_id, "limit": 1}, read=True
    )
    note = f"posted to {channel_id} (ts {posted.data.get('ts')})"
    if not history.ok:
        note += (
            f"; but the bot cannot read its history ({explain(history, channel_id)}): after a "
            "crash it cannot find a post whose answer was lost, which may then show twice"
        )
    return Check(route.name, True, note)


def _result(name: str, answer: Answer, channel: str) -> Check:
    if answer.ok:
        return Check(name, True, "posted")
    return Check(name, False, explain(answer, channel))


def run(settings: Settings, channel: str | None, out: Callable[[str], None] = print) -> int:
    """The command: prints one line per destination; returns the exit code (raises
    :class:`NotConfigured` and :class:`~streams.core.routing.RoutingError`: exit code 2)."""
    results = asyncio.run(check(settings, channel))
    for result in results:
        out(f"{'ok  ' if result.ok else 'FAIL'} {result.destination}: {result.message}")
    return 0 if all(r.ok for r in results) else 1
