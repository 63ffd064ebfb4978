"""Recipient advice end to end: a 131049 makes the API and the advice topic say 'not before'."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.app import internal_topic_names
from streams.simulate import Message, envelope, status_item
from testkit.kafka import consume_all, produce, wait_drained
from testkit.worker import WorkerProcess, get_json, memory_worker

pytestmark = [pytest.mark.kafka]
DAY = 86_400


def message(wamid: str, recipient: str, ts: int) -> Message:
    return Message(
        wamid,
        "106540352242922",
        "15550783881",
        recipient,
        "BR",
        "spring_sale",
        "marketing",
        ts,
        [],
        True,
    )


def test_131049_gives_not_before_failure_plus_cooldown_in_api_topic_and_batch(
    kafka_bootstrap: str, tmp_path: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    worker, settings = memory_worker(kafka_bootstrap, tmp_path, start_worker)
    failed_at = int(time.time()) - 3_600
    limited, fine, us = "5511987650001", "5511987650002", "12125550123"
    bodies = []
    m1, m2, m3 = (
        message(f"wamid.ADV-{i}", r, failed_at) for i, r in enumerate((limited, fine, us))
    )
    bodies.append(envelope(m1.sender, m1.display, [status_item(m1, "failed", failed_at, 131049)]))
    bodies.append(
        envelope(
            m2.sender,
            m2.display,
            [
                status_item(m2, "sent", failed_at, None),
                status_item(m2, "delivered", failed_at + 5, None),
            ],
        )
    )
    bodies.append(envelope(m3.sender, m3.display, [status_item(m3, "failed", failed_at, 131049)]))
    produce(kafka_bootstrap, settings.topic_raw, bodies)
    wait_drained(
        kafka_bootstrap, settings.app_id, [settings.topic_raw, *internal_topic_names(settings)], 60
    )

    status, advice = get_json(f"{worker.base_url}/v1/recipients/{limited}/advice")
    assert status == 200 and isinstance(advice, dict)
    assert advice["may_send_marketing"] is False
    assert advice["reasons"] == ["per_user_limit_cooldown"]
    assert advice["not_before"] == failed_at + DAY
    _, ok = get_json(f"{worker.base_url}/v1/recipients/{fine}/advice")
    assert isinstance(ok, dict) and ok["may_send_marketing"] is True
    assert ok["marketing_delivered_24h"] == 1
    _, paused = get_json(f"{worker.base_url}/v1/recipients/+1%20212%20555%200123/advice")
    assert isinstance(paused, dict) and paused["not_before"] is None
    assert "us_marketing_pause" in paused["reasons"]

    records = {k: json.loads(v) for k, v, _ in consume_all(kafka_bootstrap, settings.topic_advice)}
    assert records[limited.encode()]["not_before"] == failed_at + DAY
    assert records[limited.encode()]["may_send_marketing"] is False
    assert records[fine.encode()]["may_send_marketing"] is True

    batch = [f"55119877{i:05d}" for i in range(9_997)] + [limited, fine, us]
    request = urllib.request.Request(
        f"{worker.base_url}/v1/advice",
        data=json.dumps({"recipients": batch}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        answers = json.loads(resp.read())["advice"]
    assert [a["recipient"] for a in answers] == batch
    assert answers[-3]["not_before"] == failed_at + DAY and not answers[-3]["may_send_marketing"]
    assert answers[-2]["may_send_marketing"] and answers[-1]["not_before"] is None
    assert all(a["may_send_marketing"] and not a["known"] for a in answers[:-3])
    check_phone_formats(worker.base_url, us)


def check_phone_formats(base_url: str, us: str) -> None:
    """The US recipient typed in every unambiguous format gets its advice; a national format
    (no default region configured) and text that is no phone are 400s that say what to send;
    in a batch, a bad id gets an error in its place and the others their advice."""
    for typed in (us, f"+{us}", "+1 (212) 555-0123", "001 212 555 0123", "0012125550123"):
        path = urllib.parse.quote(typed, safe="")
        status, advice = get_json(f"{base_url}/v1/recipients/{path}/advice")
        assert status == 200 and isinstance(advice, dict), typed
        assert advice["recipient"] == typed
        assert "us_marketing_pause" in advice["reasons"] and not advice["may_send_marketing"]
        status, state = get_json(f"{base_url}/v1/recipients/{path}")
        assert status == 200 and isinstance(state, dict) and state["known"], typed
    for typed, fragment in (
        ("(212) 555-0123", "national phone format needs its country"),
        ("212 555 0123", "national phone format needs its country"),
        ("alice", "not a phone number or a BSUID"),
    ):
        path = urllib.parse.quote(typed, safe="")
        for url in (f"{base_url}/v1/recipients/{path}", f"{base_url}/v1/recipients/{path}/advice"):
            status, body = get_json(url)
            assert status == 400 and isinstance(body, dict), (url, body)
            assert fragment in body["error"] and body["recipient"] == typed
    batch = ["(212) 555-0123", "+1 212 555 0123", "US.13491208655302741918", "x"]
    request = urllib.request.Request(
        f"{base_url}/v1/advice",
        data=json.dumps({"recipients": batch}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        assert resp.status == 200
        answers = json.loads(resp.read())["advice"]
    assert [a["recipient"] for a in answers] == batch
    assert "national phone format" in answers[0]["error"] and "may_send_marketing" not in answers[0]
    assert "us_marketing_pause" in answers[1]["reasons"]
    assert answers[2]["may_send_marketing"] is False and not answers[2]["known"]  # a US BSUID
    assert "not a phone number" in answers[3]["error"]
