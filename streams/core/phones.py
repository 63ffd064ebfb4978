"""Recipient ids as callers type them: phone numbers in their usual formats, and BSUIDs.

The monitor keys recipients by the phone as WhatsApp writes it in ``wa_id``: the country code
and the national number as digits, no ``+`` (``12125550147``). Callers of the API type numbers
in many ways; a national number read as if it had a country code points to another country
(``(212) 555-0147`` is not Morocco's 212), so only unambiguous forms are read without help:

- digits only: the ``wa_id`` convention, country code included (``12125550147``);
- ``+`` and the country code, any spaces, dots, dashes, slashes or parentheses
  (``+1 (212) 555-0147``);
- ``00`` and the country code (the international call prefix: ``001 212 555 0147``);
- a BSUID (business-scoped user id such as ``US.13491208655302741918``): kept as given.

Anything else that looks like a phone (separators without ``+`` or ``00``, or a leading ``0``
trunk prefix) is a national format: it is read in ``default_region`` when one is configured
(with ``phonenumbers``, so ``(212) 555-0147`` in ``US`` is ``12125550147``), else refused with
a :class:`RecipientFormatError` saying how to write it. Error messages never repeat the input.
"""

from __future__ import annotations

import re
from typing import Final

import phonenumbers

REGION_SETTING: Final = "DELIVERY_MONITOR_DEFAULT_PHONE_REGION"

_BSUID: Final = re.compile(r"[A-Z]{2}\.[A-Za-z0-9._-]{1,128}")
_PHONE_CHARS: Final = re.compile(r"\+?[\d\s().\-/]+")
_SEPARATORS: Final = re.compile(r"[\s().\-/]")
_MIN_DIGITS, _MAX_DIGITS = 6, 15  # E.164 allows at most 15 digits


class RecipientFormatError(ValueError):
    """A recipient id the API cannot read; the message says what to send instead."""


def check_region(region: str) -> str:
    """``region`` as an upper-case ISO 3166 code ``phonenumbers`` knows; ValueError if not."""
    code = region.strip().upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"{region!r} is not a region code such as US, GB or BR")
    return code


def _national(text: str, region: str | None) -> str:
    if region is None:
        raise RecipientFormatError(
            "a national phone format needs its country: send the number as digits with the "
            "country code (the WhatsApp wa_id, e.g. 12125550147), with + (e.g. +1 212 555 "
            f"0147) or with 00 (e.g. 001 212 555 0147), or set {REGION_SETTING}"
        )
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        number = None
    if number is None or not phonenumbers.is_possible_number(number):
        raise RecipientFormatError(f"not a possible phone number in region {region}")
    return f"{number.country_code}{number.national_number}"


def _e164_digits(digits: str) -> str:
    if not _MIN_DIGITS <= len(digits) <= _MAX_DIGITS:
        raise RecipientFormatError(
            f"a phone number has {_MIN_DIGITS} to {_MAX_DIGITS} digits with its country code"
        )
    if digits[0] == "0":
        raise RecipientFormatError("no country code starts with 0")
    return digits


def normalize_recipient(raw: str, default_region: str | None = None) -> str:
    """The recipient key of ``raw``: ``wa_id`` digits for a phone, a BSUID as given.

    Raises :class:`RecipientFormatError` for a national format without ``default_region``, and
    for text that is neither a phone number nor a BSUID.
    """
    text = raw.strip()
    if _BSUID.fullmatch(text):
        return text
    if not text or not _PHONE_CHARS.fullmatch(text):
        raise RecipientFormatError(
            "not a phone number or a BSUID: send digits with the country code (wa_id, e.g. "
            "12125550147), +<country code><number>, or a BSUID such as US.1349120865530274191"
        )
    digits = _SEPARATORS.sub("", text)
    if digits.startswith("+"):
        return _e164_digits(digits[1:])
    if digits.startswith("00"):
        return _e164_digits(digits[2:])
    if digits == text and not digits.startswith("0"):
        return _e164_digits(digits)  # the wa_id convention
    return _national(text, default_region)
