"""Bad input: a table of bodies that must raise ParseError with a precise path and reason, and
partly bad batches whose good items survive while every bad part is reported as a defect."""

from __future__ import annotations

import json
from typing import Any

import pytest

from streams.core import MAX_PAYLOAD_BYTES, Defect, ParseError, StatusEvent, parse_webhook
from streams.stages.ingest import IngestStage

VALUE = "$.entry[0].changes[0].value"


def status(**overrides: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": "wamid.A",
        "status": "delivered",
        "timestamp": "1750030073",
        "recipient_id": "919876543210",
    }
    item.update(overrides)
    return {key: value for key, value in item.items() if value is not ...}


def cloud(value: Any, field: str = "messages") -> bytes:
    change = {"field": field, "value": value}
    body = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [change]}]}
    return json.dumps(body).encode()


def statuses(*items: Any) -> bytes:
    return cloud({"metadata": {"phone_number_id": "2"}, "statuses": list(items)})


# (body, expected ParseError.path, a fragment of the expected reason)
REJECTED: list[tuple[bytes, str, str]] = [
    # empty body: a webhook POST always has JSON
    (b"", "$", "not valid JSON"),
    # plain text
    (b"hello", "$", "not valid JSON"),
    # truncated JSON
    (b'{"object": "whatsapp_business_account", "entry": [', "$", "not valid JSON"),
    # invalid UTF-8 inside a string
    (b'{"statuses": [{"id": "\xff"}]}', "$", "not valid JSON"),
    # a JSON array at the top level
    (b"[1, 2]", "$", "the body is an array"),
    # a JSON scalar at the top level
    (b"42", "$", "the body is a JSON scalar"),
    # an object that is not a webhook
    (b'{"hello": "world"}', "$", "not a WhatsApp webhook"),
    # a Messenger / Instagram webhook: same envelope, other object
    (b'{"object": "page", "entry": []}', "$.object", "not 'whatsapp_business_account'"),
    # the envelope without entries
    (b'{"object": "whatsapp_business_account"}', "$", "not a WhatsApp webhook"),
    # entry is not an array
    (b'{"object": "whatsapp_business_account", "entry": 5}', "$.entry", "Expected `array`"),
    # an entry without changes
    (b'{"object": "whatsapp_business_account", "entry": [{"id": "1"}]}', "$.entry[0]", "changes"),
    # a change without its field name
    (
        b'{"object": "whatsapp_business_account", "entry": [{"changes": [{"value": {}}]}]}',
        "$.entry[0].changes[0]",
        "missing required field `field`",
    ),
    # a messages change without a value
    (cloud(None), VALUE, "has no 'value'"),
    # statuses is not an array
    (cloud({"statuses": {"id": "x"}}), f"{VALUE}.statuses", "Expected `array`"),
    # a status item that is not an object
    (statuses("wamid.A"), f"{VALUE}.statuses[0]", "Expected `object`"),
    # a status without id
    (statuses(status(id=...)), f"{VALUE}.statuses[0]", "missing required field `id`"),
    # a status with an empty id
    (statuses(status(id="")), f"{VALUE}.statuses[0].id", "length >= 1"),
    # a status without status
    (statuses(status(status=...)), f"{VALUE}.statuses[0]", "missing required field `status`"),
    # a status whose status is not a string
    (statuses(status(status=3)), f"{VALUE}.statuses[0].status", "Expected `str`"),
    # a status without timestamp
    (statuses(status(timestamp=...)), f"{VALUE}.statuses[0]", "field `timestamp`"),
    # a placeholder timestamp
    (statuses(status(timestamp="TIMESTAMP")), f"{VALUE}.statuses[0].timestamp", "unix seconds"),
    # a millisecond timestamp (would wreck event-time windows)
    (statuses(status(timestamp=1750030073000)), f"{VALUE}.statuses[0].timestamp", "<="),
    # a negative timestamp
    (statuses(status(timestamp=-1)), f"{VALUE}.statuses[0].timestamp", ">= 0"),
    # a fractional timestamp
    (statuses(status(timestamp=1.5)), f"{VALUE}.statuses[0].timestamp", "unix seconds"),
    # an inbound message without sender
    (
        cloud({"messages": [{"id": "m", "timestamp": "1", "type": "text"}]}),
        f"{VALUE}.messages[0]",
        "neither 'from' nor 'from_user_id'",
    ),
    # a user preference without value
    (
        cloud({"user_preferences": [{"wa_id": "1", "timestamp": 1}]}, "user_preferences"),
        f"{VALUE}.user_preferences[0]",
        "missing required field `value`",
    ),
    # an account error without code
    (cloud({"errors": [{"title": "Rate limit hit"}]}), f"{VALUE}.errors[0]", "field `code`"),
    # On-Prem shape whose only status is bad
    (b'{"statuses": [{"id": "x", "status": "sent"}]}', "$.statuses[0]", "field `timestamp`"),
    # deeply nested garbage
    (b"[" * 100_000, "$", "not valid JSON"),
]


@pytest.mark.parametrize(("body", "path", "reason"), REJECTED)
def test_malformed_body_raises_parse_error_with_path_and_reason(
    body: bytes, path: str, reason: str
) -> None:
    with pytest.raises(ParseError) as caught:
        parse_webhook(body)
    assert caught.value.path == path
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"{path}: ")


def test_body_larger_than_3_mb_is_rejected_unread() -> None:
    body = b" " * (MAX_PAYLOAD_BYTES + 1)
    with pytest.raises(ParseError, match="larger than the 3145728 limit"):
        parse_webhook(body)


def test_body_of_almost_3_mb_parses() -> None:
    """Meta batches up to 1000 updates per POST; a big valid body is not rejected."""
    items = [status(id=f"wamid.{i}", biz_opaque_callback_data="x" * 2500) for i in range(1000)]
    body = statuses(*items)
    assert 2_500_000 < len(body) <= MAX_PAYLOAD_BYTES
    assert len(parse_webhook(body).events) == 1000


def test_partly_bad_batch_keeps_good_items_in_order_and_reports_each_bad_one() -> None:
    body = statuses(
        status(id="wamid.1"),
        status(id="wamid.2", timestamp=...),
        "not an object",
        status(id="wamid.4", status="read"),
    )
    parsed = parse_webhook(body)
    assert [e.wamid for e in parsed.statuses] == ["wamid.1", "wamid.4"]
    assert parsed.defects == (
        Defect(f"{VALUE}.statuses[1]", "Object missing required field `timestamp`"),
        Defect(f"{VALUE}.statuses[2]", "Expected `object`, got `str`"),
    )


def test_bad_optional_field_drops_only_that_field() -> None:
    """A wrong pricing category type loses the category, not the delivery status."""
    pricing = {"pricing_model": "PMP", "type": "regular", "category": 7}
    (event,) = parse_webhook(statuses(status(pricing=pricing))).statuses
    parsed = parse_webhook(statuses(status(pricing=pricing)))
    assert (event.pricing_model, event.pricing_type, event.pricing_category) == (
        "PMP",
        "regular",
        None,
    )
    assert parsed.defects == (
        Defect(f"{VALUE}.statuses[0].pricing.category", "Expected `str | null`, got `int`"),
    )


def test_unusable_error_item_is_reported_and_the_failed_status_kept() -> None:
    body = statuses(status(status="failed", errors=[{"title": "no code"}, {"code": 131049}]))
    parsed = parse_webhook(body)
    (event,) = parsed.statuses
    assert event.error_code == 131049
    assert parsed.defects == (
        Defect(f"{VALUE}.statuses[0].errors[0]", "Object missing required field `code`"),
    )


@pytest.mark.parametrize("code", [2**63, 2**64, 2**70, -(2**63) - 1, str(2**64)])
def test_an_error_code_beyond_64_bits_is_a_defect_not_a_stopped_ingest_stage(
    code: int | str,
) -> None:
    """Found by tests/unit/test_stages_fuzz.py: such a code used to reach the facts, whose
    msgpack encoding raised OverflowError in ``IngestStage.drain`` (the raw consumer stopped
    before committing, the batch's facts unsent)."""
    failed = status(status="failed", errors=[{"code": code}])
    body = cloud(
        {"metadata": {"phone_number_id": "2"}, "statuses": [failed], "errors": [{"code": code}]}
    )
    parsed = parse_webhook(body)
    (event,) = parsed.statuses
    assert event.status == "failed" and event.error_code is None
    assert [d.path for d in parsed.defects] == [
        f"{VALUE}.statuses[0].errors[0].code",
        f"{VALUE}.errors[0].code",
    ]
    stage = IngestStage(1, 1, clock=lambda: 1_750_030_100)
    stage.handle("raw", 0, 0, body)
    messages, _, (letter,) = stage.drain()
    assert messages and letter.partial and "errors[0].code" in letter.reason
    assert parse_webhook(cloud({"errors": [{"code": 2**63 - 1}]})).events  # the largest kept


def test_bad_item_in_one_entry_does_not_affect_other_entries() -> None:
    good = {"field": "messages", "value": {"statuses": [status(id="wamid.ok")]}}
    bad = {"field": "messages", "value": {"statuses": [status(id=17)]}}
    body = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [bad]}, {"id": "2", "changes": [good]}],
    }
    parsed = parse_webhook(json.dumps(body).encode())
    assert [(e.waba_id, e.wamid) for e in parsed.statuses] == [("2", "wamid.ok")]
    assert [d.path for d in parsed.defects] == ["$.entry[0].changes[0].value.statuses[0].id"]


def test_all_bad_items_raise_with_every_defect_attached() -> None:
    with pytest.raises(ParseError) as caught:
        parse_webhook(statuses(status(id=...), status(timestamp="x")))
    assert [d.path for d in caught.value.defects] == [
        f"{VALUE}.statuses[0]",
        f"{VALUE}.statuses[1].timestamp",
    ]
    assert "2 defects" in caught.value.reason


def test_reasons_do_not_echo_phone_numbers() -> None:
    """A defect reason or error message never carries a full phone number into logs."""
    body = b'{"object": "16505551234", "entry": []}'
    with pytest.raises(ParseError) as caught:
        parse_webhook(body)
    assert "16505551234" not in str(caught.value)
    assert "1234" in str(caught.value)  # masked to the last four digits
    parsed = parse_webhook(statuses(status(), status(recipient_id=["16505551234"])))
    assert all("16505551234" not in str(d) for d in parsed.defects)
    assert len(parsed.defects) == 1


def test_status_event_is_returned_not_raised_for_unexpected_extra_keys() -> None:
    """BSP extras and new Meta keys are ignored."""
    (event,) = parse_webhook(statuses(status(gs_id="x", new_meta_key={"a": [1]}))).events
    assert isinstance(event, StatusEvent)


@pytest.mark.parametrize("cloud", [True, False])
def test_a_defect_after_a_dropped_item_names_its_own_index(cloud: bool) -> None:
    """Items the lenient decode drops (not objects) do not shift the paths of later defects."""
    items = {
        "statuses": [{"id": "wamid.A", "status": "sent", "timestamp": 1_700_000_000}],
        "messages": [None, 7, {"id": "wamid.in", "timestamp": 1_700_000_000}],
        "user_preferences": [None, {"value": "stop"}, "x", {"value": "resume"}],
    }
    if cloud:
        body: dict[str, Any] = {
            "object": "whatsapp_business_account",
            "entry": [{"id": "1", "changes": [{"field": "messages", "value": items}]}],
        }
        value = "$.entry[0].changes[0].value"
    else:
        body, value = items, "$"
    parsed = parse_webhook(json.dumps(body).encode())
    paths = {d.path for d in parsed.defects if "neither" in d.reason}
    assert paths == {
        f"{value}.messages[2]",
        f"{value}.user_preferences[1]",
        f"{value}.user_preferences[3]",
    }
