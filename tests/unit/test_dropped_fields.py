"""Webhook fields users need reach them: an account restriction's expiry and a ban's date in
the incident alert, a template's disable date in its state and alert, inbound messages' own
errors in a metric; a time that cannot be read is a defect, not a silent loss."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streams.core import parse_webhook
from streams.core.account_updates import unix_seconds
from streams.core.alerts import AlertBook
from streams.core.facts import decode_batch
from streams.core.immediate import (
    ACCOUNT_RESTRICTION,
    TEMPLATE_DISABLED,
    ImmediateRules,
)
from streams.core.keys import template_key
from streams.core.slack_format import render_slack_message
from streams.metrics import MonitorMetrics
from streams.stages import partition_for
from streams.stages.alerting import AlertingStage
from streams.stages.ingest import IngestStage
from streams.stages.messages import MessageStage, TemplateState
from streams.state import DictKeyValue, decode

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "whatsapp"
N = 4


def ingest(name: str) -> IngestStage:
    stage = IngestStage(N, N, clock=lambda: 1_767_225_700.0)
    stage.handle("raw", 0, 0, (FIXTURES / name).read_bytes())
    return stage


def account_alert_text(name: str) -> str:
    signals = ingest(name).drain_signals()
    assert signals is not None
    rules, book = ImmediateRules(), AlertBook()
    for account in signals.accounts:
        rules.observe(account)
    (fired,) = book.apply(rules.evaluate(1_767_225_660))
    assert fired.headline.rule == ACCOUNT_RESTRICTION
    return json.dumps(render_slack_message(fired, grafana_url="http://grafana"))


def test_an_account_restriction_alert_says_until_when() -> None:
    text = account_alert_text("SYNTHETIC_account_update_restriction_with_expiration.json")
    assert "RESTRICTED_BIZ_INITIATED_MESSAGING" in text
    assert "restricted until 2026-01-08T00:00:00Z" in text


def test_a_scheduled_ban_alert_gives_the_ban_date() -> None:
    text = account_alert_text("SYNTHETIC_account_update_schedule_for_disable_ban_date.json")
    assert "SCHEDULE_FOR_DISABLE" in text and "ban date January 9, 2026" in text


def test_a_disabled_template_keeps_its_disable_date_in_state_and_alert() -> None:
    stage = ingest("SYNTHETIC_message_template_status_update_disabled_disable_info.json")
    produced, _, _ = stage.drain()
    kv = DictKeyValue()
    messages = MessageStage(kv, N)
    for partition, value in produced.items():
        messages.handle_batch(partition, 0, value)
        messages.flush(partition)
    raw = kv.get(partition_for("spring_sale", N), template_key("spring_sale"))
    assert raw is not None
    state = decode(raw, TemplateState)
    assert (state.status, state.disabled_at) == ("DISABLED", 1_767_225_540)
    signals = messages.drain_signals()
    assert signals is not None
    alerting = AlertingStage()
    alerting.handle(signals)  # the signal's disable date reaches the immediate rules
    findings = alerting.immediate.evaluate(1_767_225_660).findings
    (disabled,) = (f for f in findings if f.rule == TEMPLATE_DISABLED)
    assert disabled.evidence.detail == "DISABLED (NONE), disabled 2025-12-31T23:59:00Z"


def test_inbound_message_errors_are_counted_by_class_and_code() -> None:
    stage = ingest("SYNTHETIC_inbound_unsupported_131051.json")
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    labels = {"error_class": "permanent", "error_code": "131051"}
    assert registry.get_sample_value("whatsapp_monitor_inbound_message_errors_total", labels) == 0
    metrics.observe_ingest(stage.stats)
    assert registry.get_sample_value("whatsapp_monitor_inbound_message_errors_total", labels) == 1
    # the message still opens the customer-service window
    _, recipients, _ = stage.drain()
    assert recipients


def test_an_unreadable_expiration_is_a_defect_and_the_event_is_kept(
    sample: Callable[[str], bytes],
) -> None:
    body = sample("SYNTHETIC_account_update_restriction_with_expiration.json").replace(
        b'"expiration": 1767398400', b'"expiration": "next tuesday"'
    )
    parsed = parse_webhook(body)
    (event,) = parsed.events
    assert event.restricted_until == 1_767_830_400  # type: ignore[union-attr]
    (defect,) = parsed.defects
    assert defect.path == "$.entry[0].changes[0].value.restriction_info[0].expiration"
    assert "ISO 8601" in defect.reason


def test_times_are_read_from_seconds_digits_and_iso_8601() -> None:
    assert unix_seconds(1_767_830_400) == 1_767_830_400
    assert unix_seconds("1767830400") == 1_767_830_400
    assert unix_seconds("2026-01-08T00:00:00.000Z") == 1_767_830_400
    assert unix_seconds("2026-01-08T01:00:00+01:00") == 1_767_830_400
    assert unix_seconds("2026-01-08T00:00:00") == 1_767_830_400  # no zone: UTC
    assert unix_seconds("soon") is None
    assert unix_seconds(1_767_830_400_000) is None  # milliseconds are not seconds
    assert unix_seconds(None) is None


@pytest.mark.parametrize("written", ["²", "١٢٣", "1767830400²", "١٧٦٧٨٣٠٤٠٠"])
def test_a_time_of_digits_that_are_not_ascii_is_a_defect_not_a_crash(written: str) -> None:
    """Found by tests/unit/test_stages_fuzz.py: ``str.isdigit`` accepts "²", which ``int``
    refuses: the ValueError escaped ``parse_webhook`` and stopped the ingest stage."""
    assert unix_seconds(written) is None
    value = {
        "event": "DISABLED",
        "message_template_name": "spring_sale",
        "disable_info": {"disable_date": written},
    }
    change = {"field": "message_template_status_update", "value": value}
    body = json.dumps(
        {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [change]}]}
    ).encode()
    stage = IngestStage(1, 1, clock=lambda: 1_767_225_700.0)
    stage.handle("raw", 0, 0, body)
    messages, _, (letter,) = stage.drain()
    assert messages and letter.partial and "disable_info.disable_date" in letter.reason


def test_a_group_status_is_about_its_participant_not_the_group() -> None:
    """A read in a group: the status fact names the participant (phone and BSUID), so the
    participant's history (engagement) gets the read; the group id is nobody's state."""
    messages, _, _ = ingest("SYNTHETIC_group_status_read_with_participant_bsuid.json").drain()
    facts = [f for raw in messages.values() for f in decode_batch(raw).statuses]
    (fact,) = facts
    assert (fact.wamid, fact.status) == ("wamid.GROUP-READ-1", "read")
    assert (fact.phone, fact.user_id) == ("16505551234", "US.13491208655302741918")
    assert fact.recipient == "16505551234"
