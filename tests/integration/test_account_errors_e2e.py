"""Account-level errors (value.errors) end to end on the real broker: counted in metrics and in
the sending number's API windows, and alerting (spam and throughput bursts) in the worker log
and the alerts topic."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.app import internal_topic_names
from streams.core.alerts import NotificationKind, decode_notification
from streams.simulate import Message, envelope, errors_envelope, status_item
from testkit.kafka import consume_all, produce, wait_drained
from testkit.worker import WorkerProcess, get_json, memory_worker, wait_until

pytestmark = [pytest.mark.kafka]

SPAMMY, THROTTLED = "106540352242922", "106540352242923"


def test_value_errors_are_counted_once_and_alert_per_sending_number(
    kafka_bootstrap: str, tmp_path: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    worker, settings = memory_worker(kafka_bootstrap, tmp_path, start_worker)
    t0 = (int(time.time()) - 900) // 60 * 60
    delivered = Message(
        "wamid.ACCT-1", SPAMMY, "15550783881", "5511987650001", "BR", "spring_sale",
        "marketing", t0 + 120, [], True,
    )  # fmt: skip
    bodies = [
        errors_envelope(SPAMMY, [131048] * 25, t0 + 5),
        errors_envelope(THROTTLED, [130429] * 12 + [131064] * 8, t0 + 10),
        errors_envelope(THROTTLED, [131000], t0 + 11),  # transient: counted, no alert
        # a status a little later moves event time past the errors' minute
        envelope(SPAMMY, "15550783881", [status_item(delivered, "delivered", t0 + 120, None)]),
    ]
    produce(kafka_bootstrap, settings.topic_raw, bodies)
    wait_drained(
        kafka_bootstrap, settings.app_id, [settings.topic_raw, *internal_topic_names(settings)], 60
    )

    def scraped(name: str, **labels: str) -> float | None:
        return worker.metric(f"whatsapp_monitor_{name}_total", labels)

    assert scraped("account_errors", error_class="spam_quality", error_code="131048") == 25
    assert scraped("account_errors", error_class="throughput", error_code="130429") == 12
    assert scraped("account_errors", error_class="throughput", error_code="131064") == 8
    assert scraped("account_errors", error_class="transient", error_code="131000") == 1
    assert scraped("sender_account_errors", sender=THROTTLED, error_class="throughput") == 20
    assert scraped("failures", error_class="spam_quality", error_code="131048") == 0

    status, body = get_json(f"{worker.base_url}/v1/senders/{SPAMMY}?at={t0 + 120}")
    assert status == 200 and isinstance(body, dict)
    window = body["windows"]["5m"]
    assert window["account_errors"] == 25
    assert window["account_errors_by_class"] == {"spam_quality": 25}
    assert window["account_errors_by_code"] == {"131048": 25}
    assert (window["delivered"], window["failed"]) == (1, 0)  # not failures of messages
    _, throttled = get_json(f"{worker.base_url}/v1/senders/{THROTTLED}?at={t0 + 120}")
    assert isinstance(throttled, dict)
    assert throttled["windows"]["1h"]["account_errors_by_class"] == {
        "throughput": 20,
        "transient": 1,
    }

    def firing() -> dict[str, str]:
        found = {}
        for _, value, _ in consume_all(kafka_bootstrap, settings.topic_alerts):
            n = decode_notification(value)
            if n.kind is NotificationKind.FIRING:
                found[n.headline.rule] = n.headline.scope.key
        return found

    wait_until(lambda: len(firing()) >= 2, 120, "spam and throughput burst alerts")
    assert firing() == {"spam_rate_limit_burst": SPAMMY, "throughput_burst": THROTTLED}
    log = worker.log_path.read_text(errors="replace")
    assert "ALERT FIRING" in log and "Spam rate limit burst (131048)" in log
    assert "Throughput limit burst (130429 / 131064)" in log
