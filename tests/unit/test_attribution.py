"""Template attribution from biz_opaque_callback_data: only what clearly names a template is a
template (JSON, key=value pairs, a valid template name, the operator's format); tracking ids
are unattributed, with a reason."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from streams.core import Attribution, AttributionConfig, decode_callback_data
from streams.core.aggregates import Bucket, sum_counts
from streams.core.attribution import (
    NO_ATTRIBUTION,
    UNATTRIBUTED_REASONS,
    PatternError,
    compile_pattern,
)
from streams.core.facts import FactBatch, StatusFact, encode_batch
from streams.core.keys import BucketId
from streams.metrics import MonitorMetrics
from streams.stages.messages import MessageStage
from streams.state import DictKeyValue, decode

NONE = Attribution()
T0 = 1_767_225_600


def unattributed(reason: str) -> Attribution:
    return Attribution(unattributed=reason)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # JSON object with template, campaign and category
        (
            '{"template": "spring_sale", "campaign": "c-42", "category": "marketing"}',
            Attribution("spring_sale", "c-42", "marketing", "json"),
        ),
        # JSON with alternative key names and a numeric campaign id
        (
            '{"template_name": "welcome", "campaign_id": 42}',
            Attribution("welcome", "42", None, "json"),
        ),
        # key=value pairs separated by ';', with spaces and an unrelated key
        (
            "template=spring_sale; campaign = c-42 ;order=991",
            Attribution("spring_sale", "c-42", None, "pairs"),
        ),
        # pairs separated by '&' (a query string): the campaign is not glued to the template
        (
            "template=spring_sale&campaign=c-42",
            Attribution("spring_sale", "c-42", None, "pairs"),
        ),
        # both separators in one value
        (
            "template=spring_sale&campaign=c-42;category=marketing",
            Attribution("spring_sale", "c-42", "marketing", "pairs"),
        ),
        # percent-encoded values are decoded
        (
            "template=spring_sale&campaign=black%20friday%2026",
            Attribution("spring_sale", "black friday 26", None, "pairs"),
        ),
        # pairs with only a campaign name no template
        (
            "campaign=black-friday",
            Attribution(None, "black-friday", None, "pairs", "no_template_key"),
        ),
        # a valid bare template name
        ("order_confirmation", Attribution("order_confirmation", None, None, "raw")),
        ("  order_confirmation  ", Attribution("order_confirmation", None, None, "raw")),
        ("welcome_2", Attribution("welcome_2", None, None, "raw")),
        # a UUID is a tracking id, not a template
        ("3f2b1c9e-4d5a-4b6c-8d7e-9f0a1b2c3d4e", unattributed("not_a_template_name")),
        # the same UUID without dashes (lowercase hex: a valid name by the letter of the rule)
        ("3f2b1c9e4d5a4b6c8d7e9f0a1b2c3d4e", unattributed("not_a_template_name")),
        # order ids
        ("order:12345", unattributed("not_a_template_name")),
        ("12345", unattributed("not_a_template_name")),
        # uppercase, dots, dashes and spaces are not in template names
        ("Spring_Sale", unattributed("not_a_template_name")),
        ("spring.sale", unattributed("not_a_template_name")),
        ("spring-sale", unattributed("not_a_template_name")),
        ("sent by the nightly job", unattributed("not_a_template_name")),
        # malformed JSON is not guessed at
        ('{"template": "x"', unattributed("malformed")),
        # JSON that is not an object
        ("[1, 2]", unattributed("not_a_template_name")),
        # JSON without any configured key
        ('{"order": 991}', Attribution(None, None, None, "json", "no_template_key")),
        # non-string values other than numbers are ignored
        (
            '{"template": {"name": "x"}, "campaign": true}',
            Attribution(None, None, None, "json", "no_template_key"),
        ),
        # pairs without any configured key
        ("order=991;user=7", Attribution(None, None, None, "pairs", "no_template_key")),
        # empty, blank and missing: nothing to attribute, and not "unattributed"
        ("", NONE),
        ("   ", NONE),
        (None, NONE),
        # longer than anything Meta echoes back
        ("a" * 5000, unattributed("too_long")),
        # the longest valid name (Meta allows 512 characters)
        ("a" * 512, Attribution("a" * 512, None, None, "raw")),
        ("a" * 513, unattributed("not_a_template_name")),
        # hex without digits can be a name; a hash is not
        ("deadbeefcafebabe", Attribution("deadbeefcafebabe", None, None, "raw")),
        ("9b74c9897bac770ffc029102a200c5de", unattributed("not_a_template_name")),
        # a customer id made of a phone number is no name (found by test_stages_fuzz.py: it
        # became a template label and bucket name); a date in a name is no phone number
        ("cust_5511987650001", unattributed("not_a_template_name")),
        ("u12129876503", unattributed("not_a_template_name")),
        ("promo_123456789", unattributed("not_a_template_name")),
        ("promo_20260501", Attribution("promo_20260501", None, None, "raw")),
    ],
)
def test_default_decoding(data: str | None, expected: Attribution) -> None:
    assert decode_callback_data(data) == expected


def test_every_reason_is_in_the_closed_label_set() -> None:
    for data in ("3f2b-1c9e", '{"order": 1}', "{x", "a" * 5000):
        reason = decode_callback_data(data).unattributed
        assert reason in UNATTRIBUTED_REASONS


def test_first_configured_key_wins() -> None:
    data = '{"tpl": "second", "template": "first"}'
    assert decode_callback_data(data).template == "first"


def test_custom_keys_and_separators() -> None:
    config = AttributionConfig(
        template_keys=("t",),
        campaign_keys=("c",),
        category_keys=("k",),
        pair_separators="|",
        key_value_separator=":",
    )
    assert decode_callback_data("t:promo|c:7|k:utility", config) == Attribution(
        "promo", "7", "utility", "pairs"
    )
    # '=' is not the separator here: a bare string that is no template name
    assert decode_callback_data("template=promo", config).template is None


def test_raw_strings_can_be_disabled() -> None:
    """Senders who put opaque tracking ids in the field do not want them read as templates."""
    config = AttributionConfig(raw_is_template=False)
    assert decode_callback_data("order_confirmation", config) == unattributed("not_a_template_name")
    assert decode_callback_data("template=x", config).template == "x"


def test_an_operator_format_reads_template_and_campaign_from_a_bare_string() -> None:
    config = AttributionConfig(raw_pattern=r"(?P<campaign>c\d+)/(?P<template>[A-Za-z_]+)/\d+")
    assert decode_callback_data("c42/Spring_Sale/991", config) == Attribution(
        "Spring_Sale", "c42", None, "pattern"
    )
    # not the operator's format: the template-name rule still applies, then unattributed
    assert decode_callback_data("order_confirmation", config).template == "order_confirmation"
    assert decode_callback_data("order:12345", config).unattributed == "not_a_template_name"
    # the pattern must match the whole string
    assert decode_callback_data("x c42/Spring_Sale/991", config).template is None


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("(unclosed", "not a valid regular expression"),
        (r"tpl-([a-z]+)", "needs a named group 'template'"),
    ],
)
def test_a_bad_operator_format_is_refused_with_a_clear_error(pattern: str, message: str) -> None:
    with pytest.raises(PatternError, match=message):
        compile_pattern(pattern)


def test_results_are_cached() -> None:
    first = decode_callback_data("template=cached_one")
    assert decode_callback_data("template=cached_one") is first


def test_deeply_nested_json_is_ignored_not_raised() -> None:
    """A short opaque string can nest deeper than the JSON decoder recurses: no attribution,
    no exception (an exception would crash stage 2 on the same record after every restart)."""
    data = '{"t":' + "[" * 1000 + "]" * 1000 + "}"
    assert decode_callback_data(data).template is None
    assert decode_callback_data(data) != NO_ATTRIBUTION


# --- in the messages stage: unattributed messages stay under template "unknown" -----------


def _status(wamid: str, status: str, opaque: str | None, offset: int) -> StatusFact:
    return StatusFact(
        wamid=wamid,
        status=status,
        timestamp=T0,
        sender="106540352242922",
        phone="5511987650001",
        user_id=None,
        country="BR",
        is_us=False,
        opaque=opaque,
        category="marketing",
        error_code=None,
        error_class=None,
        origin=(0, offset, 0),
    )


def test_tracking_ids_count_under_unknown_and_as_unattributed_once_per_message() -> None:
    kv = DictKeyValue()
    stage = MessageStage(kv, 1)
    statuses = [
        _status("wamid.A", "sent", "3f2b1c9e-4d5a-4b6c-8d7e-9f0a1b2c3d4e", 0),
        _status("wamid.A", "delivered", "3f2b1c9e-4d5a-4b6c-8d7e-9f0a1b2c3d4e", 1),
        _status("wamid.B", "sent", "order:12345", 2),
        _status("wamid.C", "sent", "template=spring_sale&campaign=c-42", 3),
        _status("wamid.D", "sent", None, 4),
    ]
    stage.handle_batch(0, 0, encode_batch(FactBatch(statuses=statuses)))
    stage.flush(0)
    assert dict(stage.stats.unattributed) == {"not_a_template_name": 2}
    minute = T0 // 60

    def template_counts(name: str) -> dict[str, int]:
        raw = kv.get(0, BucketId("t", name, 0, minute).encode().encode())
        return sum_counts([decode(raw, Bucket) if raw is not None else None])

    assert template_counts("unknown") == {"attempted": 3, "sent": 3, "delivered": 1}
    assert template_counts("spring_sale") == {"attempted": 1, "sent": 1}
    for name in (
        "3f2b1c9e-4d5a-4b6c-8d7e-9f0a1b2c3d4e",
        "order:12345",
        "spring_sale&campaign=c-42",
    ):
        assert template_counts(name) == {}
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    metrics.observe_messages(stage.stats)
    got = registry.get_sample_value(
        "whatsapp_monitor_unattributed_callback_data_total", {"reason": "not_a_template_name"}
    )
    assert got == 2
    assert (
        registry.get_sample_value(
            "whatsapp_monitor_template_messages_total",
            {"template": "order:12345", "outcome": "sent"},
        )
        is None
    )
