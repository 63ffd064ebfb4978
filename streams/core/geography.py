"""Recipient geography: the country of a recipient and whether it is a US number.

Why it matters: since 2025-04-01 WhatsApp delivers no marketing templates to US numbers (+1 with a
US area code; Canada and the Caribbean share +1 and are not paused), and those sends fail with the
same 131049 as the per-user marketing limit. Telling them apart needs the recipient's country.

Countries come from the ``phonenumbers`` metadata (libphonenumber), never from a home-made prefix
table. ``phonenumbers.parse`` costs about 10 microseconds, far too slow per status event, so a
number is resolved once per *prefix* and cached:

- a calling code shared by a single region (``91`` India, ``55`` Brazil...) resolves from the
  calling code alone; the number's own validity is not checked (Meta already delivered or
  rejected it; the monitor only needs where it points);
- ``+1`` (NANP) resolves per area code, the way the US pause is defined;
- the few other calling codes shared by several regions (``44`` GB/JE/GG/IM, ``7`` RU/KZ,
  ``39`` IT/VA...) resolve per calling code plus six national digits (libphonenumber needs at
  most five to tell these regions apart), from the first number seen with that prefix; a number
  ``phonenumbers`` cannot place falls back to the calling code's main region (GB, RU, IT...).

The four-digit prefix table holds at most 10,000 entries by construction; the longer-prefix cache
is bounded (oldest entry evicted). Placeholders, garbage, group ids and unassigned codes give
``Geography("ZZ", False)``; nothing here raises.

A BSUID (business-scoped user id, ``US.13491208655302741918``) starts with an ISO country code;
it is used when no phone number is known.
"""

from __future__ import annotations

import contextlib
from typing import Final, NamedTuple

import phonenumbers

UNKNOWN_COUNTRY: Final = "ZZ"

US_REGIONS: Final = frozenset({"US"})
"""Regions treated as "US" for the marketing pause. US territories with their own ISO code (PR,
GU, VI, AS, MP) are not included: Meta defines the pause by "US area code", unverified for them."""


class Geography(NamedTuple):
    """Where a recipient is: ISO 3166-1 alpha-2 country ("ZZ" if unknown) and the US flag."""

    country: str
    is_us: bool


UNKNOWN: Final = Geography(UNKNOWN_COUNTRY, False)

_REGION_GEO: Final[dict[str, Geography]] = {
    region: Geography(region, region in US_REGIONS)
    for region in phonenumbers.SUPPORTED_REGIONS
    if len(region) == 2 and region.isalpha()
}

# Exchanges used to place a NANP area code: any valid one gives the area code's region.
_NANP_PROBES: Final = ("2345678", "3456789", "7654321")
_NATIONAL_DIGITS_FOR_SHARED_CODES: Final = 6


class _SharedCode(NamedTuple):
    """Marks a prefix whose calling code several regions share (not NANP)."""

    key_length: int
    fallback: Geography


def _region_geo(region: str | None) -> Geography:
    return _REGION_GEO.get(region, UNKNOWN) if region else UNKNOWN


def _region_of(e164_digits: str) -> str | None:
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse("+" + e164_digits))
    except phonenumbers.NumberParseException:
        return None


class GeographyResolver:
    """Resolves phone numbers and BSUIDs to :class:`Geography` with bounded prefix caches."""

    __slots__ = ("_by_long_prefix", "_by_prefix", "_max_long_prefixes")

    def __init__(self, max_long_prefixes: int = 16384) -> None:
        self._by_prefix: dict[str, Geography | _SharedCode] = {}
        self._by_long_prefix: dict[str, Geography] = {}
        self._max_long_prefixes = max_long_prefixes

    def phone(self, phone: str) -> Geography:
        """Geography of an E.164 number given as digits, with or without a leading ``+``."""
        digits = phone[1:] if phone[:1] == "+" else phone
        if not (6 <= len(digits) <= 15 and digits.isascii() and digits.isdigit()):
            return UNKNOWN
        found = self._by_prefix.get(digits[:4])
        if found is None:
            found = self._by_prefix[digits[:4]] = self._resolve_prefix(digits)
        if isinstance(found, Geography):
            return found
        return self._resolve_shared(digits, found)

    @staticmethod
    def bsuid(user_id: str) -> Geography:
        """Geography from the country prefix of a BSUID such as ``US.13491208655302741918``."""
        if user_id[2:3] != ".":
            return UNKNOWN
        return _REGION_GEO.get(user_id[:2], UNKNOWN)

    def recipient(self, phone: str | None, user_id: str | None) -> Geography:
        """Geography from the phone when it can be placed, else from the BSUID, else unknown."""
        if phone:
            geo = self.phone(phone)
            if geo.country != UNKNOWN_COUNTRY or not user_id:
                return geo
        return self.bsuid(user_id) if user_id else UNKNOWN

    def cache_sizes(self) -> tuple[int, int]:
        """Entries in the prefix table and in the long-prefix cache (for tests and metrics)."""
        return len(self._by_prefix), len(self._by_long_prefix)

    @staticmethod
    def _resolve_prefix(digits: str) -> Geography | _SharedCode:
        if digits[0] == "0":
            return UNKNOWN  # national format: no calling code starts with 0
        for length in (1, 2, 3):
            regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(int(digits[:length]))
            if regions:
                break
        else:
            return UNKNOWN  # no calling code starts this way
        if length == 1 and digits[0] == "1":
            area = digits[1:4]
            for probe in _NANP_PROBES:
                geo = _region_geo(_region_of("1" + area + probe))
                if geo is not UNKNOWN:
                    return geo
            return UNKNOWN  # unassigned area code, e.g. 555
        if len(regions) == 1:
            return _region_geo(regions[0])  # "001" (non-geographic) stays unknown
        return _SharedCode(length + _NATIONAL_DIGITS_FOR_SHARED_CODES, _region_geo(regions[0]))

    def _resolve_shared(self, digits: str, shared: _SharedCode) -> Geography:
        key = digits[: shared.key_length]
        geo = self._by_long_prefix.get(key)
        if geo is not None:
            return geo
        region = _region_of(digits)
        geo = shared.fallback if region is None else _region_geo(region)
        cache = self._by_long_prefix
        if len(cache) >= self._max_long_prefixes:
            with contextlib.suppress(StopIteration, KeyError, RuntimeError):  # racing eviction
                del cache[next(iter(cache))]
        cache[key] = geo
        return geo


_DEFAULT: Final = GeographyResolver()


def locate_phone(phone: str) -> Geography:
    """Geography of a phone number using the process-wide cached resolver."""
    return _DEFAULT.phone(phone)


def locate_recipient(phone: str | None, user_id: str | None) -> Geography:
    """Geography of a recipient (phone first, then BSUID) using the process-wide resolver."""
    return _DEFAULT.recipient(phone, user_id)


def recipient_geography(rid: str) -> Geography:
    """Country of a normalized recipient id (phone digits, else a BSUID's region)."""
    if rid.isdigit():
        return locate_recipient(rid, None)
    return locate_recipient(None, rid)


def is_us_recipient(rid: str) -> bool:
    """US number (+1 with a US area code) or a US BSUID: the US marketing pause applies."""
    return recipient_geography(rid).is_us


def default_resolver() -> GeographyResolver:
    """The process-wide resolver used by :func:`streams.core.parse.parse_webhook`."""
    return _DEFAULT
