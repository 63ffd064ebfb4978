"""Recipient geography: country via phonenumbers, the US flag, BSUID countries, bounded caches."""

from __future__ import annotations

import phonenumbers
import pytest
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from streams.core import Geography, GeographyResolver, locate_phone, locate_recipient


@pytest.mark.parametrize(
    ("phone", "country", "is_us"),
    [
        ("16505551234", "US", True),  # Meta's sample recipient, California
        ("+12125550100", "US", True),  # leading + accepted
        ("18002345678", "US", True),  # toll-free is US
        ("14165551234", "CA", False),  # Toronto: +1 but Canada
        ("16045551234", "CA", False),  # Vancouver
        ("18765551234", "JM", False),  # Jamaica shares +1
        ("17875551234", "PR", False),  # Puerto Rico has its own ISO code
        ("919999999999", "IN", False),
        ("6283180783170", "ID", False),  # the real Meedan capture
        ("447400123456", "GB", False),
        ("447797123456", "JE", False),  # Jersey shares +44
        ("74951234567", "RU", False),
        ("77012345678", "KZ", False),  # Kazakhstan shares +7
        ("390669812345", "VA", False),  # Vatican shares +39
        ("5511987654321", "BR", False),
    ],
)
def test_phone_country_and_us_flag(phone: str, country: str, is_us: bool) -> None:
    assert GeographyResolver().phone(phone) == Geography(country, is_us)


@pytest.mark.parametrize(
    "phone",
    [
        "",
        "PHONE_NUMBER",  # library fixture placeholder
        "91xxxxxxxxxx",  # masked in Meta's docs
        "{{END_USER_PHONE_NUMBER}}",  # BSP template placeholder
        "<WHATSAPP_USER_PHONE_NUMBER>",
        "12345",  # too short
        "1234567890123456",  # longer than E.164 allows
        "0612345678",  # national format, no calling code
        "15550783881",  # +1 555 is not an assigned area code
        "80012345678",  # +800 international freephone: no country
        "٩١٩٨٧٦٥٤٣٢١٠",  # non-ASCII digits
        "+",
    ],
)
def test_unknown_or_placeholder_numbers_are_zz(phone: str) -> None:
    assert GeographyResolver().phone(phone) == Geography("ZZ", False)


def _example_numbers() -> list[tuple[str, str]]:
    out = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is not None:
                e164 = phonenumbers.format_number(example, PhoneNumberFormat.E164)
                out.append((e164[1:], phonenumbers.region_code_for_number(example) or "ZZ"))
    return out


def test_cached_resolution_agrees_with_phonenumbers_for_every_region() -> None:
    """The prefix cache gives what phonenumbers.parse gives, for each region's example numbers."""
    resolver = GeographyResolver()
    examples = _example_numbers()
    assert len(examples) > 400
    mismatches = [(n, want) for n, want in examples if resolver.phone(n).country != want]
    assert mismatches == []
    # and again from warm caches
    assert [resolver.phone(n).country for n, _ in examples] == [want for _, want in examples]


def test_prefix_table_and_long_prefix_cache_stay_bounded() -> None:
    resolver = GeographyResolver(max_long_prefixes=50)
    for i in range(3000):
        resolver.phone(f"4477{i:04d}12345")  # +44 is shared: long-prefix cache
        resolver.phone(f"91{i:04d}654321")
        resolver.phone(f"1{200 + i % 800}5551234")
    by_prefix, by_long_prefix = resolver.cache_sizes()
    assert by_long_prefix <= 50
    assert by_prefix <= 10_000  # four-digit prefixes, by construction


def test_same_prefix_resolves_once() -> None:
    resolver = GeographyResolver()
    for suffix in range(100):
        resolver.phone(f"1650555{suffix:04d}")
    assert resolver.cache_sizes() == (1, 0)


@pytest.mark.parametrize(
    ("user_id", "expected"),
    [
        ("US.13491208655302741918", Geography("US", True)),
        ("US.ENT.11815799212886844830", Geography("US", True)),
        ("IN.998877", Geography("IN", False)),
        ("XX.1", Geography("ZZ", False)),  # not a region
        ("us.1", Geography("ZZ", False)),  # the prefix is upper case
        ("13491208655302741918", Geography("ZZ", False)),
        ("", Geography("ZZ", False)),
    ],
)
def test_bsuid_country_prefix(user_id: str, expected: Geography) -> None:
    assert GeographyResolver.bsuid(user_id) == expected


def test_recipient_prefers_the_phone_and_falls_back_to_the_bsuid() -> None:
    assert locate_recipient("14165551234", "US.1") == Geography("CA", False)
    assert locate_recipient("PHONE_NUMBER", "US.1") == Geography("US", True)
    assert locate_recipient(None, "BR.1") == Geography("BR", False)
    assert locate_recipient(None, None) == Geography("ZZ", False)
    assert locate_phone("16505551234").is_us
