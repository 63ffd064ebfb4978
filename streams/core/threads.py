"""One Slack message per incident and channel: its thread, edits, and what was posted (pure).

In bot mode an incident's first notification (FIRING) is a top-level message; every later one
(UPDATED, REPEAT, RESOLVED) is a reply in its thread, and UPDATED and RESOLVED also edit the
top-level message (latest evidence; then marked resolved with its duration). A notification for
a channel that has no message of the incident yet (the FIRING went elsewhere, or never got
through) is posted top-level in full and starts the thread there.

:class:`ThreadRecord` is what the notifier keeps per incident (``group@since``, the stable part
of its notification ids) and channel: the ``ts`` of the top-level message, the notifications
already delivered, and the one whose post may have reached Slack without its answer reaching
us (``posting``: recorded before posting). Every message carries :func:`message_metadata` naming
the incident and the notification, so a post whose answer was lost (a crash, a timeout) is found
again in the channel's history instead of being posted twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from streams.core.alerts import Notification, NotificationKind
from streams.core.slack_format import (
    DEFAULT_DASHBOARD_PATH,
    render_original,
    render_slack_message,
    render_thread_reply,
)

#: The metadata event type of the monitor's messages (how a lost post is recognised).
EVENT_TYPE = "whatsapp_delivery_incident"
#: Notification ids remembered per channel (an incident has few; REPEATs come every 4 h).
MAX_DONE = 64


class ChannelThread(msgspec.Struct):
    """An incident's messages in one channel (or at one webhook: then only ``done``)."""

    ts: str = ""  # the top-level message ("": none yet)
    channel_id: str = ""  # as Slack answered (chat.update wants the id, not a #name)
    done: list[str] = []  # notifications delivered here, oldest first
    posting: str = ""  # a notification posted here whose answer may have been lost
    posting_since: float = 0.0  # wall clock (unix s) of its first attempt

    def delivered(self, notification_id: str) -> None:
        self.done = [*self.done, notification_id][-MAX_DONE:]
        self.posting, self.posting_since = "", 0.0


class ThreadRecord(msgspec.Struct):
    """Per incident: its messages per destination key (a channel, or a webhook route name)."""

    channels: dict[str, ChannelThread] = {}
    touched: float = 0.0  # wall clock of the last change (records unused for a week go)


def thread_key(notification: Notification) -> str:
    """The incident a notification belongs to, ``group@since`` (its id without ``/seq``)."""
    return f"{notification.incident}@{notification.since}"


def message_metadata(notification: Notification) -> dict[str, Any]:
    """Slack message metadata naming the incident and the notification (not shown to users)."""
    return {
        "event_type": EVENT_TYPE,
        "event_payload": {
            "incident": thread_key(notification),
            "notification": notification.id,
            "kind": notification.kind.value,
        },
    }


def metadata_of(message: dict[str, Any]) -> dict[str, Any] | None:
    """The monitor's metadata payload of a message from ``conversations.history``, if any."""
    metadata = message.get("metadata")
    if not isinstance(metadata, dict) or metadata.get("event_type") != EVENT_TYPE:
        return None
    payload = metadata.get("event_payload")
    return payload if isinstance(payload, dict) else None


@dataclass(frozen=True, slots=True)
class ThreadPlan:
    """What to send for one notification in one channel: an edit of the top-level message
    (``chat.update``, None: none), then one message, top-level or in the thread ``reply_to``."""

    post: dict[str, Any]
    reply_to: str = ""
    edit: dict[str, Any] | None = None


def plan(
    thread: ChannelThread,
    notification: Notification,
    *,
    grafana_url: str,
    dashboard_path: str = DEFAULT_DASHBOARD_PATH,
) -> ThreadPlan | None:
    """The plan for ``notification`` in a channel whose state is ``thread`` (None: delivered
    there already). The edit comes first: repeating it after a crash changes nothing."""
    if notification.id in thread.done:
        return None
    render = {"grafana_url": grafana_url, "dashboard_path": dashboard_path}
    if not thread.ts:
        return ThreadPlan(render_slack_message(notification, **render))
    edit = None
    if notification.kind in (NotificationKind.UPDATED, NotificationKind.RESOLVED):
        edit = render_original(notification, **render)
    return ThreadPlan(render_thread_reply(notification), reply_to=thread.ts, edit=edit)
