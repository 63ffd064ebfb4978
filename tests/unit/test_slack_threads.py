"""One Slack message per incident: the thread/edit plan of each notification, and the store of
what was posted (pure; a fake wall clock, no sleeping)."""

from __future__ import annotations

import asyncio
import json

from support import incident_lifecycle

from streams.core.alerts import NotificationKind
from streams.core.threads import (
    EVENT_TYPE,
    MAX_DONE,
    ChannelThread,
    ThreadRecord,
    message_metadata,
    metadata_of,
    plan,
    thread_key,
)
from streams.slack_threads import ThreadStore
from streams.state import DictKeyValue

GRAFANA = "https://grafana.example.com"


def header(payload: dict[str, object]) -> str:
    blocks = payload["blocks"]
    assert isinstance(blocks, list)
    return str(blocks[0]["text"]["text"]) if blocks[0]["type"] == "header" else ""


def test_the_lifecycle_is_one_message_its_thread_and_two_edits() -> None:
    """FIRING posts; UPDATED replies and edits; REPEAT only replies; RESOLVED edits (marked
    resolved, with its duration) and replies. A delivered notification plans nothing."""
    firing, updated, repeat, resolved = incident_lifecycle()
    assert [n.kind for n in (firing, updated, repeat, resolved)] == list(NotificationKind)
    thread = ChannelThread()
    first = plan(thread, firing, grafana_url=GRAFANA)
    assert first is not None and first.reply_to == "" and first.edit is None
    assert header(first.post).startswith(":rotating_light: FIRING")
    thread.ts, thread.channel_id = "1751000000.000100", "C0DEFAULT"
    thread.delivered(firing.id)
    assert plan(thread, firing, grafana_url=GRAFANA) is None

    second = plan(thread, updated, grafana_url=GRAFANA)
    assert second is not None and second.reply_to == thread.ts
    assert second.post["text"].startswith("[UPDATED]")
    assert "now on template `spring_sale`" in json.dumps(second.post)
    assert second.edit is not None  # the original shows the new headline, still firing
    assert header(second.edit).startswith(":rotating_light: FIRING") and "spring_sale" in header(
        second.edit
    )

    third = plan(thread, repeat, grafana_url=GRAFANA)
    assert third is not None and third.edit is None and third.reply_to == thread.ts
    assert third.post["text"].startswith("[STILL FIRING]")
    assert "for 61 min" in json.dumps(third.post)

    last = plan(thread, resolved, grafana_url=GRAFANA)
    assert last is not None and last.edit is not None and last.reply_to == thread.ts
    assert header(last.edit).startswith(":white_check_mark: RESOLVED")
    assert "after 62 min" in json.dumps(last.edit) and "after 62 min" in json.dumps(last.post)
    assert "Last seen" in json.dumps(last.edit)


def test_a_channel_without_the_incident_s_message_gets_it_in_full() -> None:
    """The FIRING went elsewhere or never got through: the RESOLVED starts the thread here."""
    resolved = incident_lifecycle()[-1]
    only = plan(ChannelThread(), resolved, grafana_url=GRAFANA)
    assert only is not None and only.reply_to == "" and only.edit is None
    assert header(only.post).startswith(":white_check_mark: RESOLVED")


def test_every_message_names_its_incident_and_notification_in_its_metadata() -> None:
    firing, updated, *_ = incident_lifecycle()
    assert thread_key(firing) == thread_key(updated) == "spike:per_user_marketing_limit@1751000000"
    meta = message_metadata(updated)
    assert meta["event_type"] == EVENT_TYPE
    assert metadata_of({"metadata": meta}) == {
        "incident": thread_key(updated),
        "notification": updated.id,
        "kind": "updated",
    }
    assert metadata_of({"metadata": {"event_type": "someone_else", "event_payload": {}}}) is None
    assert metadata_of({"text": "no metadata"}) is None


def test_a_thread_remembers_a_bounded_number_of_notifications() -> None:
    thread = ChannelThread(posting="x/1", posting_since=5.0)
    for i in range(MAX_DONE + 3):
        thread.delivered(f"x/{i}")
    assert len(thread.done) == MAX_DONE and thread.done[-1] == f"x/{MAX_DONE + 2}"
    assert (thread.posting, thread.posting_since) == ("", 0.0)


def test_the_store_persists_each_save_and_forgets_threads_unused_for_a_week() -> None:
    now = [1_000_000.0]
    persisted: list[int] = []
    kv = DictKeyValue()

    async def persist() -> None:
        persisted.append(kv.writes)

    store = ThreadStore(kv, persist, wall_clock=lambda: now[0])
    record = ThreadRecord(channels={"C0A": ChannelThread(ts="1.0")})
    asyncio.run(store.save("old@1", record))
    assert store.get("old@1").channels["C0A"].ts == "1.0" and persisted
    assert store.get("unknown@1").channels == {}
    now[0] += 6 * 86400
    asyncio.run(store.save("new@2", ThreadRecord(channels={})))
    assert store.get("old@1").channels  # six days: kept
    now[0] += 2 * 86400
    asyncio.run(store.save("new@2", ThreadRecord(channels={})))
    assert store.get("old@1").channels == {}  # untouched for eight days: gone
    assert store.get("new@2").touched == now[0]
    assert len(persisted) == 3


def test_the_store_keeps_at_most_max_records() -> None:
    store = ThreadStore(DictKeyValue(), wall_clock=lambda: 0.0, max_records=3)
    for i in range(5):
        asyncio.run(store.save(f"i@{i}", ThreadRecord(channels={"C": ChannelThread(ts=str(i))})))
    kept = [i for i in range(5) if store.get(f"i@{i}").channels]
    assert kept == [2, 3, 4]
