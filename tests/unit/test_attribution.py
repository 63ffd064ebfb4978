"""Template attribution from biz_opaque_callback_data: JSON, key=value pairs, bare names, config."""

from __future__ import annotations

import pytest

from streams.core import Attribution, AttributionConfig, decode_callback_data
from streams.core.attribution import NO_ATTRIBUTION

NONE = Attribution()


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
        # key=value pairs with spaces and an unrelated key
        (
            "template=spring_sale; campaign = c-42 ;order=991",
            Attribution("spring_sale", "c-42", None, "pairs"),
        ),
        # pairs with only a campaign
        ("campaign=black-friday", Attribution(None, "black-friday", None, "pairs")),
        # the bare template name
        ("order_confirmation", Attribution("order_confirmation", None, None, "raw")),
        ("  order_confirmation  ", Attribution("order_confirmation", None, None, "raw")),
        # free text is not a template name
        ("sent by the nightly job", NONE),
        # malformed JSON is not guessed at
        ('{"template": "x"', NONE),
        # JSON that is not an object
        ("[1, 2]", NONE),
        # JSON without any configured key
        ('{"order": 991}', NONE),
        # non-string values other than numbers are ignored
        ('{"template": {"name": "x"}, "campaign": true}', NONE),
        # pairs without any configured key
        ("order=991;user=7", NONE),
        # empty and missing
        ("", NONE),
        (None, NONE),
    ],
)
def test_default_decoding(data: str | None, expected: Attribution) -> None:
    assert decode_callback_data(data) == expected


def test_first_configured_key_wins() -> None:
    data = '{"tpl": "second", "template": "first"}'
    assert decode_callback_data(data).template == "first"


def test_custom_keys_and_separators() -> None:
    config = AttributionConfig(
        template_keys=("t",),
        campaign_keys=("c",),
        category_keys=("k",),
        pair_separator="&",
        key_value_separator=":",
    )
    assert decode_callback_data("t:promo&c:7&k:utility", config) == Attribution(
        "promo", "7", "utility", "pairs"
    )
    assert decode_callback_data("template=promo", config) == NONE  # '=' is not the separator


def test_raw_strings_can_be_disabled() -> None:
    """Senders who put opaque tracking ids in the field do not want them read as templates."""
    config = AttributionConfig(raw_is_template=False)
    assert decode_callback_data("order_confirmation", config) == NONE
    assert decode_callback_data("template=x", config).template == "x"


def test_oversized_data_is_ignored() -> None:
    assert decode_callback_data("a" * 5000) == NONE


def test_results_are_cached() -> None:
    first = decode_callback_data("template=cached_one")
    assert decode_callback_data("template=cached_one") is first


def test_deeply_nested_json_is_ignored_not_raised() -> None:
    """A short opaque string can nest deeper than the JSON decoder recurses: no attribution,
    no exception (an exception would crash stage 2 on the same record after every restart)."""
    data = '{"t":' + "[" * 1000 + "]" * 1000 + "}"
    assert decode_callback_data(data) == NO_ATTRIBUTION
