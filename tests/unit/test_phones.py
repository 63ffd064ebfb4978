"""Recipient ids as callers type them: wa_id digits, + and 00 prefixes, BSUIDs as given, national
formats refused unless a default region is configured (then read in that region)."""

from __future__ import annotations

import pytest

from streams.core.geography import locate_phone
from streams.core.phones import RecipientFormatError, check_region, normalize_recipient


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        # digits only: the WhatsApp wa_id convention (country code included)
        ("12125550147", "12125550147"),
        ("5511987654321", "5511987654321"),
        ("  447700900123 ", "447700900123"),
        # + and the country code, any separators
        ("+12125550147", "12125550147"),
        ("+1 212 555 0147", "12125550147"),
        ("+1 (212) 555-0147", "12125550147"),
        ("+55 11 98765-4321", "5511987654321"),
        ("+44 7700.900.123", "447700900123"),
        ("+49 30/1234567", "49301234567"),
        # 00: the international call prefix
        ("001 212 555 0147", "12125550147"),
        ("0044 7700 900123", "447700900123"),
        ("00447700900123", "447700900123"),
        # BSUIDs (and parent BSUIDs) stay as given
        ("US.13491208655302741918", "US.13491208655302741918"),
        ("US.ENT.11815799212886844830", "US.ENT.11815799212886844830"),
    ],
)
def test_unambiguous_formats(given: str, expected: str) -> None:
    assert normalize_recipient(given) == expected


def test_a_us_number_in_national_format_is_not_read_as_morocco() -> None:
    """(212) 555-0147 used to become 2125550147: Morocco (+212), and the advice then allowed
    marketing to a US number."""
    with pytest.raises(RecipientFormatError, match="national phone format needs its country"):
        normalize_recipient("(212) 555-0147")
    assert normalize_recipient("(212) 555-0147", "US") == "12125550147"
    assert locate_phone(normalize_recipient("(212) 555-0147", "US")).is_us


@pytest.mark.parametrize(
    ("given", "region", "expected"),
    [
        ("(212) 555-0147", "US", "12125550147"),
        ("212-555-0147", "US", "12125550147"),
        ("212 555 0147", "US", "12125550147"),
        ("1 212 555 0147", "US", "12125550147"),  # the country code without + is understood
        ("07700 900123", "GB", "447700900123"),  # a trunk prefix 0
        ("07700900123", "GB", "447700900123"),  # digits only but a leading 0: national
        ("(11) 98765-4321", "BR", "5511987654321"),
    ],
)
def test_national_formats_are_read_in_the_configured_region(
    given: str, region: str, expected: str
) -> None:
    assert normalize_recipient(given, region) == expected


@pytest.mark.parametrize(
    "given",
    [
        "(212) 555-0147",  # separators without + or 00
        "212 555 0147",
        "07700 900123",  # trunk prefix
        "07700900123",  # digits only, but no country code starts with 0
    ],
)
def test_national_formats_without_a_region_are_refused_with_how_to_write_them(given: str) -> None:
    with pytest.raises(RecipientFormatError) as caught:
        normalize_recipient(given)
    message = str(caught.value)
    assert "+1 212 555 0147" in message and "DELIVERY_MONITOR_DEFAULT_PHONE_REGION" in message


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ("", "not a phone number or a BSUID"),
        ("alice", "not a phone number or a BSUID"),
        ("12125550147; DROP", "not a phone number or a BSUID"),
        ("+", "not a phone number or a BSUID"),
        ("+1 212", "6 to 15 digits"),
        ("1234567890123456", "6 to 15 digits"),
        ("+0 212 555 0147", "no country code starts with 0"),
        ("12+125550147", "not a phone number or a BSUID"),  # a + only leads
        ("++12125550147", "not a phone number or a BSUID"),
    ],
)
def test_other_input_is_refused(given: str, fragment: str) -> None:
    with pytest.raises(RecipientFormatError, match=fragment):
        normalize_recipient(given)


def test_errors_never_repeat_the_number() -> None:
    for given in ("(212) 867-5309", "+1 867", "12+128675309", "(212) 86", "user 8675309"):
        with pytest.raises(RecipientFormatError) as caught:
            normalize_recipient(given, "US" if given == "(212) 86" else None)
        assert "867" not in str(caught.value)


def test_an_impossible_number_in_the_region_is_refused() -> None:
    with pytest.raises(RecipientFormatError, match="not a possible phone number in region US"):
        normalize_recipient("(212) 55", "US")


def test_region_codes_are_checked() -> None:
    assert check_region(" us ") == "US"
    with pytest.raises(ValueError, match="not a region code"):
        check_region("USA")
