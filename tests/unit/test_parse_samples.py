"""Every sample body in tests/fixtures/whatsapp parses to the events a careful reader expects.

Each case lists, event by event, the fields that matter; a new sample without a case fails
``test_every_sample_has_expectations``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from streams.core import (
    AccountErrorEvent,
    AccountUpdateEvent,
    ContactLinkEvent,
    ErrorClass,
    InboundMessageEvent,
    ParseError,
    PhoneNumberQualityEvent,
    Status,
    StatusError,
    StatusEvent,
    TemplateQualityEvent,
    TemplateStatusEvent,
    UserPreferenceEvent,
    lookup,
    parse_webhook,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "whatsapp"

META_WABA = "102290129340398"
META_PNID = "106540352242922"
META_DISPLAY = "15550783881"
META_CLOUD = {"waba_id": META_WABA, "phone_number_id": META_PNID, "source": "cloud"}
T131049 = "This message was not delivered to maintain healthy ecosystem engagement."
D131049 = "In order to maintain a healthy ecosystem engagement, the message failed to be delivered."
T131050 = (
    "Unable to deliver the message. This recipient has chosen to stop receiving marketing "
    "messages on WhatsApp from your business"
)
WAMID_SENT = "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA="
WAMID_FAILED = "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI0QUQ2MjA4NEYyRkExNjMyREUA"
BSUID = "US.13491208655302741918"
PARENT_BSUID = "US.ENT.11815799212886844830"

NO_PRICING = {"pricing_model": None, "pricing_type": None, "pricing_category": None}
PMP_MARKETING = {"pricing_model": "PMP", "pricing_type": "regular", "pricing_category": "marketing"}
US_PHONE = {
    "recipient_key": "16505551234",
    "recipient_phone": "16505551234",
    "recipient_user_id": None,
    "country": "US",
    "is_us": True,
}
SENT_MARKETING_PMP = {
    "wamid": WAMID_SENT,
    "status": Status.SENT,
    "raw_status": "sent",
    "timestamp": 1750030073,
    "display_phone_number": META_DISPLAY,
    **META_CLOUD,
    **US_PHONE,
    **PMP_MARKETING,
    "conversation_origin": "marketing",
    "errors": (),
    "error_class": None,
}
FAILED_131049_US = {
    "wamid": WAMID_FAILED,
    "status": Status.FAILED,
    "timestamp": 1751142888,
    **META_CLOUD,
    **US_PHONE,
    **NO_PRICING,
    "conversation_origin": None,
    "errors": (StatusError(131049, T131049, D131049),),
    # +1 650 is a US area code: since 2025-04-01 this is the US marketing pause, not the limit.
    "error_class": ErrorClass.US_MARKETING_PAUSE,
}

# sample file -> list of (event type, expected field values); ParseError cases are separate.
EXPECTED: dict[str, list[tuple[type[Any], dict[str, Any]]]] = {
    "SYNTHETIC_batched_two_statuses_one_change_from_meta_examples.json": [
        (StatusEvent, SENT_MARKETING_PMP),
        (StatusEvent, FAILED_131049_US),
    ],
    "SYNTHETIC_account_update_restriction_with_expiration.json": [
        (
            AccountUpdateEvent,
            {
                "event": "ACCOUNT_RESTRICTION",
                "restriction_types": (
                    "RESTRICTED_ADD_PHONE_NUMBER_ACTION",
                    "RESTRICTED_BIZ_INITIATED_MESSAGING",
                ),
                "restricted_until": 1767830400,  # the later of the two expirations
                "ban_date": None,
                "timestamp": 1767225600,
            },
        )
    ],
    "SYNTHETIC_account_update_schedule_for_disable_ban_date.json": [
        (
            AccountUpdateEvent,
            {
                "event": "DISABLED_UPDATE",
                "ban_state": "SCHEDULE_FOR_DISABLE",
                "ban_date": "January 9, 2026",
                "restricted_until": None,
            },
        )
    ],
    "SYNTHETIC_group_status_read_with_participant_bsuid.json": [
        (
            StatusEvent,
            {
                "wamid": "wamid.GROUP-READ-1",
                "status": Status.READ,
                "recipient_type": "group",
                "recipient_key": "120363025555555555",
                "recipient_phone": None,
                "recipient_participant_id": "16505551234",
                "recipient_participant_user_id": BSUID,
            },
        )
    ],
    "SYNTHETIC_inbound_unsupported_131051.json": [
        (
            InboundMessageEvent,
            {
                "wamid": "wamid.INBOUND-UNSUPPORTED-1",
                "message_type": "unsupported",
                "user_key": "16505551234",
                "errors": (
                    StatusError(
                        131051, "Message type unknown", "Message type is currently not supported."
                    ),
                ),
            },
        ),
    ],
    "SYNTHETIC_message_template_status_update_disabled_disable_info.json": [
        (
            TemplateStatusEvent,
            {"event": "DISABLED", "template_name": "spring_sale", "disabled_at": 1767225540},
        )
    ],
    "bsp_enablex_status_failed_131047.json": [
        (
            StatusEvent,
            {
                "source": "onprem",
                "status": Status.FAILED,
                "timestamp": 1683871427,
                "waba_id": None,
                "display_phone_number": "918888888888",  # the BSP's business_phone
                "recipient_key": "919999999999",
                "country": "IN",
                "is_us": False,
                "errors": (
                    StatusError(
                        131047,
                        "Message failed to send because more than 24 hours have passed since the "
                        "customer last replied to this number.",
                        None,
                    ),
                ),
                "error_class": ErrorClass.CSW_RULE,
            },
        )
    ],
    "bsp_gupshup_v3_status_sent_marketing_pmp.json": [
        (
            StatusEvent,
            {
                "wamid": "{{WA_MESSAGE_ID}}",
                "status": Status.SENT,
                "timestamp": 1710930461,
                "waba_id": "112535025189792",
                "phone_number_id": "{{PHONE_ID}}",
                "recipient_key": "{{END_USER_PHONE_NUMBER}}",
                "country": "ZZ",  # placeholder, not a number
                "is_us": False,
                **PMP_MARKETING,
                "conversation_origin": "service",
            },
        )
    ],
    "meta_doc_bsuid_status_delivered_to_bsuid_no_phone.json": [
        (
            StatusEvent,
            {
                "status": Status.DELIVERED,
                "timestamp": 1750030073,
                **META_CLOUD,
                "recipient_key": BSUID,
                "recipient_phone": None,
                "recipient_user_id": BSUID,
                "recipient_parent_user_id": PARENT_BSUID,
                "country": "US",  # from the BSUID prefix: no phone is known
                "is_us": True,
                **PMP_MARKETING,
            },
        )
    ],
    "meta_doc_bsuid_status_delivered_to_phone_with_parent_bsuid.json": [
        (
            ContactLinkEvent,
            {"phone": "16505551234", "user_id": BSUID, "parent_user_id": PARENT_BSUID},
        ),
        (
            StatusEvent,
            {
                "wamid": WAMID_SENT,
                "status": Status.DELIVERED,
                "recipient_key": BSUID,  # the BSUID wins over the phone as the recipient key
                "recipient_phone": "16505551234",
                "recipient_user_id": BSUID,
                "country": "US",
                **PMP_MARKETING,
            },
        ),
    ],
    "meta_doc_bsuid_status_failed_131049_sent_to_phone_no_contacts.json": [
        (StatusEvent, {**FAILED_131049_US, "wamid": WAMID_SENT, "timestamp": 1750030073}),
    ],
    "meta_doc_inbound_text.json": [
        (
            InboundMessageEvent,
            {
                "wamid": "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
                "timestamp": 1749416383,
                **META_CLOUD,
                "user_key": "16505551234",
                "from_phone": "16505551234",
                "message_type": "text",
                "system_type": None,
            },
        )
    ],
    "meta_doc_message_template_quality_update_green_to_yellow.json": [
        (
            TemplateQualityEvent,
            {
                "previous_quality": "GREEN",
                "new_quality": "YELLOW",
                "template_id": "806312974732579",
                "template_name": "welcome_template",
                "template_language": "en-US",
                "timestamp": 1674864290,
                "waba_id": META_WABA,
            },
        )
    ],
    "meta_doc_message_template_status_update_approved.json": [
        (
            TemplateStatusEvent,
            {
                "event": "APPROVED",
                "template_id": "1689556908129832",
                "template_name": "order_confirmation",
                "reason": "NONE",
                "category": "UTILITY",
                "timestamp": 1751247548,
            },
        )
    ],
    "meta_doc_message_template_status_update_rejected_invalid_format.json": [
        (
            TemplateStatusEvent,
            {
                "event": "REJECTED",
                "template_name": "abandoned_cart",
                "template_language": "en",
                "reason": "INVALID_FORMAT",
                "category": "MARKETING",
            },
        )
    ],
    "meta_doc_onprem_status_failed_1026_receiver_incapable.json": [
        (
            StatusEvent,
            {
                "source": "onprem",
                "wamid": "gBGGFlAwCWFvAgkyHMGKnRu4JeA",
                "status": Status.FAILED,
                "timestamp": 1670394125,
                "recipient_key": "91xxxxxxxxxx",  # masked in Meta's docs
                "country": "ZZ",
                "errors": (StatusError(1026, "Receiver Incapable", None),),
                "error_class": ErrorClass.PER_USER_MARKETING_LIMIT,
            },
        )
    ],
    "meta_doc_phone_number_quality_update_throughput_upgrade.json": [
        (
            PhoneNumberQualityEvent,
            {
                "event": "THROUGHPUT_UPGRADE",
                "display_phone_number": META_DISPLAY,
                "current_limit": "TIER_UNLIMITED",
                "timestamp": 1748454394,
                "waba_id": META_WABA,
            },
        )
    ],
    "meta_doc_status_delivered_service_cbp.json": [
        (
            StatusEvent,
            {
                "wamid": "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI3MTE5MjVBOTE3MDk5QUVFM0YA",
                "status": Status.DELIVERED,
                "timestamp": 1750263773,
                **US_PHONE,
                "pricing_model": "CBP",
                "pricing_type": None,
                "pricing_category": "service",
                "conversation_origin": "service",
                "error_class": None,
            },
        )
    ],
    "meta_doc_status_failed_131049.json": [(StatusEvent, FAILED_131049_US)],
    "meta_doc_status_sent_marketing_pmp.json": [(StatusEvent, SENT_MARKETING_PMP)],
    "meta_doc_status_sent_v24_no_conversation_no_pricing.json": [
        (StatusEvent, {**SENT_MARKETING_PMP, **NO_PRICING, "conversation_origin": None})
    ],
    "meta_doc_user_preferences_resume.json": [
        (
            UserPreferenceEvent,
            {
                "preference": "resume",
                "category": "marketing_messages",
                "detail": "User requested to resume marketing messages",
                "timestamp": 1731705721,
                "user_key": "16505551234",
                "phone": "16505551234",
                "waba_id": META_WABA,
                "phone_number_id": META_PNID,
                "is_opt_out": False,
            },
        )
    ],
    "meta_doc_value_errors_130429.json": [
        (
            AccountErrorEvent,
            {
                "code": 130429,
                "title": "Rate limit hit",
                "details": "Message failed to send because there were too many messages sent "
                "from this phone number in a short period of time",
                "error_class": ErrorClass.THROUGHPUT,
                "timestamp": None,
                **META_CLOUD,
            },
        )
    ],
    "netflie_batched_two_changes_one_entry_inbound_text.json": [
        (InboundMessageEvent, {"timestamp": 1669233778, "user_key": "PHONE_NUMBER"}),
        (InboundMessageEvent, {"timestamp": 1669233779, "waba_id": "WHATSAPP_BUSINESS_ACCOUNT_ID"}),
    ],
    "netflie_status_delivered_marketing_cbp.json": [
        (
            StatusEvent,
            {
                "wamid": "wamid.ID",
                "status": Status.DELIVERED,
                "timestamp": 1685626673,
                "waba_id": "108536708899139",
                "country": "ZZ",
                "pricing_model": "CBP",
                "pricing_category": "marketing",
                "conversation_origin": "marketing",
            },
        )
    ],
    "real_meedan_status_failed_131050_stopped_marketing.json": [
        (
            StatusEvent,
            {
                "wamid": "wamid.HBgNNjI4MzE4MDc4MzE3MBUCABEYEkQxOUJFMzUwN0M1NjJDNzg1MwA=",
                "status": Status.FAILED,
                "timestamp": 1750224806,
                "waba_id": "112799291857759",
                "phone_number_id": "183815411472659",
                "display_phone_number": "6289680060088",
                "recipient_phone": "6283180783170",
                "country": "ID",
                "is_us": False,
                "errors": (StatusError(131050, T131050, T131050),),
                "error_class": ErrorClass.OPT_OUT,
            },
        )
    ],
}

# Samples whose only status has a placeholder timestamp ("TIMESTAMP", "<WEBHOOK_SENT_TIMESTAMP>"):
# a status without a usable event time is rejected, with the path of the bad field.
PLACEHOLDER_TIMESTAMP = {
    "bsp_neuapix_onprem_status_failed_131014_placeholders.json": b'"TIMESTAMP"',
    "bsp_neuapix_onprem_status_sent_cbp_placeholders.json": b'"TIMESTAMP"',
    "meta_doc_onprem_status_failed_498_stopped_marketing_placeholders.json": (
        b'"<WEBHOOK_SENT_TIMESTAMP>"'
    ),
}


def test_every_sample_has_expectations() -> None:
    """No sample file goes untested."""
    names = {path.name for path in FIXTURES.glob("*.json")}
    assert names == set(EXPECTED) | set(PLACEHOLDER_TIMESTAMP)


def _fields(event: object) -> dict[str, Any]:
    values = msgspec.structs.asdict(event)  # type: ignore[arg-type]
    for name in ("is_opt_out", "error_code"):
        if hasattr(event, name):
            values[name] = getattr(event, name)
    return values


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_parses_to_expected_events(name: str, sample: Callable[[str], bytes]) -> None:
    parsed = parse_webhook(sample(name))
    assert parsed.defects == ()
    assert parsed.ignored_fields == ()
    assert [type(e) for e in parsed.events] == [kind for kind, _ in EXPECTED[name]]
    for event, (_, expected) in zip(parsed.events, EXPECTED[name], strict=True):
        actual = _fields(event)
        assert {key: actual[key] for key in expected} == expected


@pytest.mark.parametrize("name", sorted(PLACEHOLDER_TIMESTAMP))
def test_placeholder_timestamp_sample_is_rejected_with_path(
    name: str, sample: Callable[[str], bytes]
) -> None:
    with pytest.raises(ParseError) as caught:
        parse_webhook(sample(name))
    assert caught.value.path == "$.statuses[0].timestamp"
    assert "unix seconds" in caught.value.reason
    assert len(caught.value.defects) == 1


def _with_timestamp(raw: bytes, placeholder: bytes) -> bytes:
    assert placeholder in raw
    return raw.replace(placeholder, b'"1670394125"')


def test_onprem_498_with_real_timestamp_is_an_opt_out(sample: Callable[[str], bytes]) -> None:
    """On-Prem opt-out 498; the recipient comes from message.recipient_id (no recipient_id)."""
    name = "meta_doc_onprem_status_failed_498_stopped_marketing_placeholders.json"
    (event,) = parse_webhook(_with_timestamp(sample(name), PLACEHOLDER_TIMESTAMP[name])).events
    assert isinstance(event, StatusEvent)
    assert (event.source, event.wamid, event.status) == (
        "onprem",
        "<WHATSAPP_MESSAGE_ID>",
        "failed",
    )
    assert event.recipient_key == "<WHATSAPP_USER_PHONE_NUMBER>"
    assert (event.error_code, event.error_class) == (498, ErrorClass.OPT_OUT)
    assert event.timestamp == 1670394125


def test_onprem_131014_with_real_timestamp_is_a_permanent_error(
    sample: Callable[[str], bytes],
) -> None:
    name = "bsp_neuapix_onprem_status_failed_131014_placeholders.json"
    (event,) = parse_webhook(_with_timestamp(sample(name), PLACEHOLDER_TIMESTAMP[name])).events
    assert isinstance(event, StatusEvent)
    assert event.primary_error == StatusError(
        131014, "Request for url https://URL.jpg failed with error: 404 (Not Found)", None
    )
    assert event.error_class is ErrorClass.PERMANENT
    assert event.country == "ZZ"  # "PHONE_NUMBER" placeholder


def test_onprem_sent_cbp_with_real_timestamp_keeps_legacy_pricing(
    sample: Callable[[str], bytes],
) -> None:
    name = "bsp_neuapix_onprem_status_sent_cbp_placeholders.json"
    (event,) = parse_webhook(_with_timestamp(sample(name), PLACEHOLDER_TIMESTAMP[name])).events
    assert isinstance(event, StatusEvent)
    assert (event.status, event.wamid) == (Status.SENT, "WHATSAPP_MESSAGE_ID")
    assert (event.pricing_model, event.pricing_type, event.pricing_category) == (
        "CBP",
        None,
        "user_initiated",
    )
    assert event.conversation_origin == "user_initiated"


def test_onprem_1026_is_flagged_ambiguous_in_the_catalog(sample: Callable[[str], bytes]) -> None:
    (event,) = parse_webhook(
        sample("meta_doc_onprem_status_failed_1026_receiver_incapable.json")
    ).events
    assert isinstance(event, StatusEvent)
    assert event.error_code == 1026
    assert lookup(1026).ambiguous


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_events_round_trip_through_json_with_their_kind_tag(
    name: str, sample: Callable[[str], bytes]
) -> None:
    """The pipeline can carry events as JSON and decode them back to the same values."""
    from streams.core.events import Event

    for event in parse_webhook(sample(name)).events:
        encoded = msgspec.json.encode(event)
        assert msgspec.json.decode(encoded, type=Event) == event
