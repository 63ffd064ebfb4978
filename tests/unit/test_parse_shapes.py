"""Webhook shapes beyond the samples: batching order, unknown statuses, groups, BSUIDs, system
messages, opt-outs, template/account fields, ignored fields and On-Prem variants."""

from __future__ import annotations

import json
from typing import Any

from streams.core import (
    AccountErrorEvent,
    AccountUpdateEvent,
    ContactLinkEvent,
    ErrorClass,
    GeographyResolver,
    InboundMessageEvent,
    Status,
    StatusEvent,
    TemplateCategoryEvent,
    UserPreferenceEvent,
    parse_webhook,
)


def envelope(*entries: dict[str, Any]) -> bytes:
    return json.dumps({"object": "whatsapp_business_account", "entry": list(entries)}).encode()


def entry(*changes: dict[str, Any], waba: str = "W1", time: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": waba, "changes": list(changes)}
    if time is not None:
        out["time"] = time
    return out


def messages_change(**value: Any) -> dict[str, Any]:
    meta = {"display_phone_number": "15550783881", "phone_number_id": "P1"}
    return {
        "field": "messages",
        "value": {"messaging_product": "whatsapp", "metadata": meta, **value},
    }


def status(wamid: str, state: str = "delivered", **extra: Any) -> dict[str, Any]:
    return {"id": wamid, "status": state, "timestamp": "1750030073", **extra}


def only_status(**extra: Any) -> StatusEvent:
    body = envelope(entry(messages_change(statuses=[status("wamid.X", **extra)])))
    (event,) = parse_webhook(body).events
    assert isinstance(event, StatusEvent)
    return event


def test_batches_keep_every_item_in_payload_order() -> None:
    """Several entries x changes x statuses: all items, in the order Meta sent them."""
    body = envelope(
        entry(
            messages_change(statuses=[status("a1"), status("a2")]),
            messages_change(statuses=[status("b1")]),
            waba="W1",
        ),
        entry(messages_change(statuses=[status("c1"), status("c2"), status("c3")]), waba="W2"),
    )
    parsed = parse_webhook(body)
    assert [(e.waba_id, e.wamid) for e in parsed.statuses] == [
        ("W1", "a1"),
        ("W1", "a2"),
        ("W1", "b1"),
        ("W2", "c1"),
        ("W2", "c2"),
        ("W2", "c3"),
    ]


def test_unknown_status_value_is_kept_not_raised() -> None:
    event = only_status(state="pending_review")
    assert (event.status, event.raw_status) == (Status.UNKNOWN, "pending_review")


def test_status_values_are_matched_case_insensitively_but_kept_raw() -> None:
    event = only_status(state="DELIVERED")
    assert (event.status, event.raw_status) == (Status.DELIVERED, "DELIVERED")


def test_played_and_onprem_deleted_and_warning_statuses_are_known() -> None:
    assert only_status(state="played").status is Status.PLAYED
    onprem = {"statuses": [status("w1", "deleted"), status("w2", "warning")]}
    parsed = parse_webhook(json.dumps(onprem).encode())
    assert [e.status for e in parsed.statuses] == [Status.DELETED, Status.WARNING]
    assert {e.source for e in parsed.statuses} == {"onprem"}


def test_numeric_ids_and_string_error_codes_are_normalised() -> None:
    """Some BSPs send ids as numbers and codes as strings; both parse."""
    event = only_status(
        state="failed", recipient_id=919876543210, errors=[{"code": "131049", "title": "t"}]
    )
    assert event.recipient_phone == "919876543210"
    assert (event.error_code, event.country, event.is_us) == (131049, "IN", False)
    assert event.error_class is ErrorClass.PER_USER_MARKETING_LIMIT


def test_131049_to_canadian_number_is_the_per_user_limit_not_the_us_pause() -> None:
    event = only_status(state="failed", recipient_id="14165551234", errors=[{"code": 131049}])
    assert (event.country, event.is_us) == ("CA", False)
    assert event.error_class is ErrorClass.PER_USER_MARKETING_LIMIT


def test_group_status_is_keyed_by_group_and_has_no_phone() -> None:
    event = only_status(
        recipient_id="120363040151234567",
        recipient_type="group",
        recipient_participant_id="16505551234",
    )
    assert event.recipient_key == "120363040151234567"
    assert event.recipient_phone is None
    assert event.recipient_participant_id == "16505551234"
    assert (event.recipient_type, event.country) == ("group", "ZZ")


def test_phone_is_filled_from_contacts_when_status_names_only_the_bsuid() -> None:
    contact = {"wa_id": "447400123456", "user_id": "GB.123", "profile": {"name": "A"}}
    body = envelope(
        entry(
            messages_change(contacts=[contact], statuses=[status("w", recipient_user_id="GB.123")])
        )
    )
    link, event = parse_webhook(body).events
    assert link == ContactLinkEvent(
        phone="447400123456",
        user_id="GB.123",
        parent_user_id=None,
        source="cloud",
        waba_id="W1",
        phone_number_id="P1",
    )
    assert isinstance(event, StatusEvent)
    assert (event.recipient_key, event.recipient_phone, event.country) == (
        "GB.123",
        "447400123456",
        "GB",
    )


def test_system_message_announces_a_changed_number() -> None:
    message = {
        "from": "16505551234",
        "id": "wamid.S",
        "timestamp": "1750000000",
        "type": "system",
        "system": {"body": "x", "wa_id": "16505550000", "type": "user_changed_number"},
    }
    body = envelope(entry(messages_change(messages=[message])))
    (event,) = parse_webhook(body).events
    assert isinstance(event, InboundMessageEvent)
    assert (event.system_type, event.system_new_phone, event.user_key) == (
        "user_changed_number",
        "16505550000",
        "16505551234",
    )


def test_inbound_message_from_bsuid_only_is_keyed_by_bsuid() -> None:
    message = {"from_user_id": "BR.777", "timestamp": 1750000001, "type": "text"}
    (event,) = parse_webhook(envelope(entry(messages_change(messages=[message])))).events
    assert isinstance(event, InboundMessageEvent)
    assert (event.user_key, event.from_phone, event.wamid) == ("BR.777", None, None)


def test_user_preference_stop_is_an_opt_out() -> None:
    pref = {"wa_id": "16505551234", "value": "stop", "category": "marketing_messages"}
    change = {"field": "user_preferences", "value": {"user_preferences": [pref]}}
    (event,) = parse_webhook(envelope(entry(change, time=1731700000))).events
    assert isinstance(event, UserPreferenceEvent)
    assert event.is_opt_out
    assert event.timestamp == 1731700000  # falls back to the entry time


def test_account_error_takes_the_entry_time() -> None:
    change = messages_change(errors=[{"code": 131056, "title": "pair rate limit"}])
    (event,) = parse_webhook(envelope(entry(change, time=1750000000))).events
    assert isinstance(event, AccountErrorEvent)
    assert (event.code, event.error_class, event.timestamp) == (
        131056,
        ErrorClass.PAIR_RATE_LIMIT,
        1750000000,
    )


def test_template_category_update_reports_old_and_new_category() -> None:
    value = {
        "message_template_id": 42,
        "message_template_name": "spring_sale",
        "message_template_language": "en_US",
        "previous_category": "UTILITY",
        "new_category": "MARKETING",
    }
    change = {"field": "template_category_update", "value": value}
    (event,) = parse_webhook(envelope(entry(change, time=1751000000))).events
    assert event == TemplateCategoryEvent(
        previous_category="UTILITY",
        new_category="MARKETING",
        correct_category=None,
        template_id="42",
        template_name="spring_sale",
        template_language="en_US",
        timestamp=1751000000,
        waba_id="W1",
    )


def test_account_update_reports_restrictions_and_ban_state() -> None:
    value = {
        "phone_number": "15550783881",
        "event": "ACCOUNT_RESTRICTION",
        "restriction_info": [{"restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING"}],
        "ban_info": {"waba_ban_state": ["SCHEDULE_FOR_DISABLE"]},
    }
    (event,) = parse_webhook(envelope(entry({"field": "account_update", "value": value}))).events
    assert isinstance(event, AccountUpdateEvent)
    assert event.restriction_types == ("RESTRICTED_BIZ_INITIATED_MESSAGING",)
    assert (event.event, event.ban_state) == ("ACCOUNT_RESTRICTION", "SCHEDULE_FOR_DISABLE")


def test_unconsumed_fields_are_listed_as_ignored_never_errors() -> None:
    """An unknown field's value is not judged, even when it clashes with our shapes."""
    security = {"field": "security", "value": {"statuses": "not-a-list", "event": 5}}
    body = envelope(entry(security, messages_change(statuses=[status("w")]), {"field": "calls"}))
    parsed = parse_webhook(body)
    assert [e.wamid for e in parsed.statuses] == ["w"]
    assert parsed.ignored_fields == ("security", "calls")
    assert parsed.defects == ()


def test_body_with_only_ignored_fields_is_empty_not_an_error() -> None:
    parsed = parse_webhook(envelope(entry({"field": "history", "value": {}})))
    assert (parsed.events, parsed.defects, parsed.ignored_fields) == ((), (), ("history",))


def test_onprem_inbound_messages_and_errors_parse() -> None:
    body = {
        "contacts": [{"wa_id": "919876543210"}],
        "messages": [{"from": "919876543210", "id": "m1", "timestamp": "1", "type": "text"}],
        "errors": [{"code": 1015, "title": "Too many requests", "details": "slow down"}],
    }
    inbound, error = parse_webhook(json.dumps(body).encode()).events
    assert isinstance(inbound, InboundMessageEvent)
    assert (inbound.source, inbound.user_key) == ("onprem", "919876543210")
    assert isinstance(error, AccountErrorEvent)
    assert (error.error_class, error.details) == (ErrorClass.API_RATE, "slow down")


def test_envelope_without_object_key_is_accepted_as_cloud() -> None:
    body = json.dumps({"entry": [entry(messages_change(statuses=[status("w")]))]}).encode()
    assert [e.source for e in parse_webhook(body).statuses] == ["cloud"]


def test_geography_resolver_can_be_injected() -> None:
    resolver = GeographyResolver()
    body = envelope(entry(messages_change(statuses=[status("w", recipient_id="919876543210")])))
    (event,) = parse_webhook(body, geography=resolver).statuses
    assert event.country == "IN"
    assert resolver.cache_sizes()[0] == 1
