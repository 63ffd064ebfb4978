"""A future-dated webhook in the middle of traffic changes nothing the monitor knows: every
recipient's state and advice, opt-outs and cool-downs included, stay as they were; the hostile
item is dead-lettered with its reason and counted."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from streams.app import internal_topic_names
from streams.simulate import Message, envelope, status_item
from testkit.kafka import consume_all, produce, wait_drained
from testkit.worker import WorkerProcess, get_json, memory_worker

pytestmark = [pytest.mark.kafka]
DAY = 86_400
SENDER, DISPLAY = "106540352242922", "15550783881"


def message(wamid: str, recipient: str, ts: int) -> Message:
    return Message(
        wamid, SENDER, DISPLAY, recipient, "BR", "spring_sale", "marketing", ts, [], True
    )


def inbound(who: str, ts: int) -> bytes:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": DISPLAY, "phone_number_id": SENDER},
        "contacts": [{"wa_id": who}],
        "messages": [{"from": who, "id": f"wamid.in{ts}", "timestamp": str(ts), "type": "text"}],
    }
    change = {"field": "messages", "value": value}
    return orjson.dumps(
        {"object": "whatsapp_business_account", "entry": [{"id": "W", "changes": [change]}]}
    )


def state_of(worker: WorkerProcess, who: str) -> dict[str, object]:
    status, body = get_json(f"{worker.base_url}/v1/recipients/{who}")
    assert status == 200 and isinstance(body, dict), body
    return body


def advice_of(worker: WorkerProcess, who: str, at: int) -> dict[str, object]:
    status, body = get_json(f"{worker.base_url}/v1/recipients/{who}/advice?at={at}")
    assert status == 200 and isinstance(body, dict), body
    body.pop("as_of", None)
    return body


def test_a_webhook_dated_2100_erases_nothing(
    kafka_bootstrap: str, tmp_path: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    worker, settings = memory_worker(kafka_bootstrap, tmp_path, start_worker)
    now = int(time.time())
    t = now - 2 * 3_600
    opted_out, limited, reader = "5511987650001", "5511987650002", "5511987650003"
    stranger = "5511987650009"
    m1, m2, m3 = (
        message(f"wamid.TT-{i}", r, t) for i, r in enumerate((opted_out, limited, reader))
    )
    before = [
        envelope(SENDER, DISPLAY, [status_item(m1, "failed", t, 131050)]),
        envelope(SENDER, DISPLAY, [status_item(m2, "failed", t + 60, 131049)]),
        envelope(
            SENDER,
            DISPLAY,
            [status_item(m3, "sent", t + 120, None), status_item(m3, "delivered", t + 125, None)],
        ),
        inbound(reader, t + 200),
    ]
    hostile = inbound(stranger, 4_102_444_800)  # 2100-01-01
    after = [inbound(reader, t + 300)]
    topics = [settings.topic_raw, *internal_topic_names(settings)]
    produce(kafka_bootstrap, settings.topic_raw, before)
    wait_drained(kafka_bootstrap, settings.app_id, topics, 90)
    at = t + 3_600
    states = {who: state_of(worker, who) for who in (opted_out, limited, reader)}
    advice = {who: advice_of(worker, who, at) for who in (opted_out, limited, reader)}

    produce(kafka_bootstrap, settings.topic_raw, [hostile, *after])
    wait_drained(kafka_bootstrap, settings.app_id, topics, 90)

    for who in (opted_out, limited):  # unchanged: not erased, not moved on
        got = state_of(worker, who)
        assert got.pop("as_of") is not None and states[who].pop("as_of") is not None
        assert got == states[who], who
        assert advice_of(worker, who, at) == advice[who], who
    assert state_of(worker, opted_out)["opted_out"] is True
    assert advice_of(worker, opted_out, at)["may_send_marketing"] is False
    limited_advice = advice_of(worker, limited, at)
    assert limited_advice["reasons"] == ["per_user_limit_cooldown"]
    assert limited_advice["not_before"] == t + 60 + DAY
    assert state_of(worker, reader)["last_event"] == t + 300  # later traffic still counts
    status, _ = get_json(f"{worker.base_url}/v1/recipients/{stranger}")
    assert status == 404  # the item dated 2100 was not used

    dead = [headers for _, _, headers in consume_all(kafka_bootstrap, settings.topic_dead_letter)]
    reasons = [h["dlq.reason"].decode() for h in dead]
    assert any("after Kafka received the record" in r for r in reasons), reasons
    assert all(h["dlq.partial"] == b"true" for h in dead)
    untrusted = worker.metric(
        "whatsapp_monitor_untrusted_timestamps_total", {"stage": "ingest", "verdict": "future"}
    )
    assert untrusted == 1
    _, health = get_json(f"{worker.base_url}/v1/health")
    assert isinstance(health, dict)
    assert json.dumps(health).count("4102444800") == 0  # no watermark moved to 2100


def test_a_status_dated_2010_first_costs_the_alert_clock_a_day_not_sixteen_years(
    kafka_bootstrap: str, tmp_path: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    """A trusted but ancient status as a fresh monitor's first input: the alert clock starts at
    its minute and passes over the empty years (it used to judge each 15-second point up to
    now: minutes of CPU with the worker's event loop blocked)."""
    worker, settings = memory_worker(kafka_bootstrap, tmp_path, start_worker)
    old = 1_262_304_000 + 600  # 2010-01-01T00:10:00Z
    t = int(time.time()) - 3_600
    first = message("wamid.OLD-1", "5511987650101", old)
    produce(
        kafka_bootstrap,
        settings.topic_raw,
        [envelope(SENDER, DISPLAY, [status_item(first, "sent", old, None)])],
    )
    topics = [settings.topic_raw, *internal_topic_names(settings)]
    wait_drained(kafka_bootstrap, settings.app_id, topics, 90)
    later = [
        envelope(SENDER, DISPLAY, [status_item(message(f"wamid.NEW-{i}", r, t), "sent", t, None)])
        for i, r in enumerate(f"55119876502{i:02d}" for i in range(20))
    ]
    produce(kafka_bootstrap, settings.topic_raw, later)
    wait_drained(kafka_bootstrap, settings.app_id, topics, 90)

    deadline = time.monotonic() + 60
    alerting: dict[str, object] = {}
    while time.monotonic() < deadline:
        _, health = get_json(f"{worker.base_url}/v1/health")
        assert isinstance(health, dict)
        alerting = health.get("alerting") or {}
        if int(str(alerting.get("points_skipped") or 0)) > 10**6:
            break
        time.sleep(1)
    skipped, judged = int(str(alerting["points_skipped"])), int(str(alerting["points_judged"]))
    assert skipped > (t - old) // 15 - 2 * 5_760, alerting  # the years in between
    assert judged < 3 * 5_760, alerting  # the old minute's day and the hour of traffic
    status, body = get_json(f"{worker.base_url}/v1/templates/spring_sale")
    assert status == 200 and isinstance(body, dict), body
