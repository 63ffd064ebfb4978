"""Template attribution from ``biz_opaque_callback_data``.

A ``failed`` status carries no pricing and no template, so the only way to tell which template,
campaign or category failed is a value the sender attached to the send request and WhatsApp echoes
back: ``biz_opaque_callback_data`` (up to 512 characters). Many senders put their own tracking ids
there (UUIDs, ``order:12345``), so a value is read as a template only when it clearly names one:

1. a JSON object: ``{"template": "spring_sale", "campaign": "c-42", "category": "marketing"}``;
2. ``key=value`` pairs separated by ``;`` or ``&`` (keys and values percent-decoded):
   ``template=spring_sale;campaign=c-42``, ``template=spring_sale&campaign=c-42``;
3. a bare string that fully matches the operator's format
   (:attr:`AttributionConfig.raw_pattern`, a regular expression with a named group ``template``
   and optional groups ``campaign`` and ``category``);
4. a bare string that is a valid WhatsApp template name (lowercase letters, digits and
   underscores, at most 512 characters) with at least one letter, not a long hex token with
   digits and without a run of 9 or more digits (a bare number, a dashless UUID or
   ``cust_5511987650001``, a phone number inside, is an id, not a name); only if
   :attr:`AttributionConfig.raw_is_template`.

Which keys name the template, campaign and category is configurable (first matching key wins).
Anything else names no template: :attr:`Attribution.unattributed` says why, from a small closed
set (:data:`UNATTRIBUTED_REASONS`, a metric label), and the value itself is never used as a
label. Absent or empty data is not "unattributed": there was nothing to read. Nothing raises.
Results are cached (bounded LRU) because callback data repeats across a campaign.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import unquote

import msgspec

AttributionSource = Literal["json", "pairs", "pattern", "raw", "none"]
UnattributedReason = Literal["not_a_template_name", "no_template_key", "malformed", "too_long"]

UNATTRIBUTED_REASONS: Final[tuple[UnattributedReason, ...]] = (
    "not_a_template_name",  # a bare string that is no template name (a UUID, order:12345, text)
    "no_template_key",  # JSON or key=value pairs without a configured template key
    "malformed",  # starts like JSON but is not a JSON object
    "too_long",  # longer than anything Meta echoes back
)

#: WhatsApp's rule for template names: lowercase letters, digits, underscores; 512 at most.
TEMPLATE_NAME: Final = re.compile(r"[a-z0-9_]{1,512}")
_HAS_LETTER: Final = re.compile(r"[a-z]")
_HEX_TOKEN: Final = re.compile(r"(?=[a-f]*[0-9])[0-9a-f]{16,}")  # with a digit: an id
#: a phone number with its country code (most have 10 to 15 digits) or another numeric id; a
#: date (``promo_20260501``) is shorter
_DIGIT_RUN: Final = re.compile(r"[0-9]{9}")
_MAX_LENGTH: Final = 4096
_PAIR_SPLIT: Final = re.compile(r"[;&]")


class PatternError(ValueError):
    """An operator-configured callback-data format that cannot be used."""


@functools.cache
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The compiled ``raw_pattern``; raises :class:`PatternError` with what is wrong."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise PatternError(f"not a valid regular expression: {exc}") from None
    if "template" not in compiled.groupindex:
        raise PatternError("needs a named group 'template', e.g. ^tpl-(?P<template>[a-z0-9_]+)$")
    return compiled


@dataclass(frozen=True, slots=True)
class AttributionConfig:
    """How to read ``biz_opaque_callback_data``; frozen so it can key the decode cache."""

    template_keys: tuple[str, ...] = ("template", "template_name", "tpl")
    campaign_keys: tuple[str, ...] = ("campaign", "campaign_id", "cid")
    category_keys: tuple[str, ...] = ("category", "cat")
    raw_is_template: bool = True
    pair_separators: str = ";&"
    key_value_separator: str = "="
    #: a regular expression (fully matched) with a named group ``template``: the operator's
    #: own format for bare strings; checked before the template-name rule
    raw_pattern: str | None = None


DEFAULT_CONFIG: Final = AttributionConfig()


@dataclass(frozen=True, slots=True)
class Attribution:
    """Template, campaign and category a status belongs to, as far as the callback data says;
    ``unattributed`` is why non-empty data named no template."""

    template: str | None = None
    campaign: str | None = None
    category: str | None = None
    source: AttributionSource = "none"
    unattributed: UnattributedReason | None = None


NO_ATTRIBUTION: Final = Attribution()


def _text(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return None


def _pick(mapping: dict[str, object], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        found = _text(mapping.get(key))
        if found is not None:
            return found
    return None


def _from_mapping(
    mapping: dict[str, object], config: AttributionConfig, source: AttributionSource
) -> Attribution:
    template = _pick(mapping, config.template_keys)
    return Attribution(
        template=template,
        campaign=_pick(mapping, config.campaign_keys),
        category=_pick(mapping, config.category_keys),
        source=source,
        unattributed=None if template is not None else "no_template_key",
    )


def _pairs(text: str, config: AttributionConfig) -> dict[str, object]:
    splitter = (
        _PAIR_SPLIT
        if config.pair_separators == ";&"
        else re.compile("[" + re.escape(config.pair_separators) + "]")
    )
    pairs: dict[str, object] = {}
    for part in splitter.split(text):
        key, sep, value = part.partition(config.key_value_separator)
        key = unquote(key).strip()
        if sep and key and key not in pairs:
            pairs[key] = unquote(value)
    return pairs


def is_template_name(text: str) -> bool:
    """A valid WhatsApp template name that is not an id: lowercase letters, digits and
    underscores, at least one letter, not a long hex token with digits (a dashless UUID or a
    hash) and without a run of 9 or more digits (a phone number: never a metric label)."""
    return (
        TEMPLATE_NAME.fullmatch(text) is not None
        and _HAS_LETTER.search(text) is not None
        and _HEX_TOKEN.fullmatch(text) is None
        and _DIGIT_RUN.search(text) is None
    )


def _bare(text: str, config: AttributionConfig) -> Attribution:
    if config.raw_pattern:
        match = compile_pattern(config.raw_pattern).fullmatch(text)
        if match is not None and match["template"]:
            groups = match.groupdict()
            return Attribution(
                template=match["template"],
                campaign=groups.get("campaign") or None,
                category=groups.get("category") or None,
                source="pattern",
            )
    if config.raw_is_template and is_template_name(text):
        return Attribution(template=text, source="raw")
    return Attribution(unattributed="not_a_template_name")


@functools.lru_cache(maxsize=8192)
def decode_callback_data(
    data: str | None, config: AttributionConfig = DEFAULT_CONFIG
) -> Attribution:
    """Template, campaign and category encoded in ``biz_opaque_callback_data``."""
    if not data or not data.strip():
        return NO_ATTRIBUTION
    if len(data) > _MAX_LENGTH:
        return Attribution(unattributed="too_long")
    text = data.strip()
    if text.startswith("{"):
        try:
            decoded = msgspec.json.decode(text)
        except (msgspec.DecodeError, RecursionError):  # deep nesting fits in the length cap
            return Attribution(unattributed="malformed")
        if not isinstance(decoded, dict):
            return Attribution(unattributed="malformed")
        return _from_mapping(decoded, config, "json")
    if config.key_value_separator in text:
        return _from_mapping(_pairs(text, config), config, "pairs")
    return _bare(text, config)
