"""Template attribution from ``biz_opaque_callback_data``.

A ``failed`` status carries no pricing and no template, so the only way to tell which template,
campaign or category failed is a value the sender attached to the send request and WhatsApp echoes
back: ``biz_opaque_callback_data`` (up to 512 characters). Senders encode it in one of three ways,
all understood here:

1. a JSON object: ``{"template": "spring_sale", "campaign": "c-42", "category": "marketing"}``;
2. ``key=value`` pairs separated by ``;``: ``template=spring_sale;campaign=c-42``;
3. the bare template name: ``spring_sale`` (only if :attr:`AttributionConfig.raw_is_template`,
   and only for name-like strings: letters, digits and ``_ . - : /``, no spaces).

Which keys name the template, campaign and category is configurable (:class:`AttributionConfig`,
first matching key wins). Anything else gives an empty :class:`Attribution`; nothing raises.
Results are cached (bounded LRU) because callback data repeats across a campaign.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Final, Literal

import msgspec

AttributionSource = Literal["json", "pairs", "raw", "none"]

_NAME_LIKE: Final = re.compile(r"[\w.:/-]{1,512}", re.ASCII)
_MAX_LENGTH: Final = 4096


@dataclass(frozen=True, slots=True)
class AttributionConfig:
    """How to read ``biz_opaque_callback_data``; frozen so it can key the decode cache."""

    template_keys: tuple[str, ...] = ("template", "template_name", "tpl")
    campaign_keys: tuple[str, ...] = ("campaign", "campaign_id", "cid")
    category_keys: tuple[str, ...] = ("category", "cat")
    raw_is_template: bool = True
    pair_separator: str = ";"
    key_value_separator: str = "="


DEFAULT_CONFIG: Final = AttributionConfig()


@dataclass(frozen=True, slots=True)
class Attribution:
    """Template, campaign and category a status belongs to, as far as the callback data says."""

    template: str | None = None
    campaign: str | None = None
    category: str | None = None
    source: AttributionSource = "none"


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
    found = Attribution(
        template=_pick(mapping, config.template_keys),
        campaign=_pick(mapping, config.campaign_keys),
        category=_pick(mapping, config.category_keys),
        source=source,
    )
    if found.template is None and found.campaign is None and found.category is None:
        return NO_ATTRIBUTION
    return found


@functools.lru_cache(maxsize=8192)
def decode_callback_data(
    data: str | None, config: AttributionConfig = DEFAULT_CONFIG
) -> Attribution:
    """Template, campaign and category encoded in ``biz_opaque_callback_data``."""
    if not data or len(data) > _MAX_LENGTH:
        return NO_ATTRIBUTION
    text = data.strip()
    if text.startswith("{"):
        try:
            decoded = msgspec.json.decode(text)
        except (msgspec.DecodeError, RecursionError):  # deep nesting fits in the length cap
            return NO_ATTRIBUTION
        if not isinstance(decoded, dict):
            return NO_ATTRIBUTION
        return _from_mapping(decoded, config, "json")
    if config.key_value_separator in text:
        pairs: dict[str, object] = {}
        for part in text.split(config.pair_separator):
            key, sep, value = part.partition(config.key_value_separator)
            if sep and key.strip() and key.strip() not in pairs:
                pairs[key.strip()] = value
        return _from_mapping(pairs, config, "pairs")
    if config.raw_is_template and _NAME_LIKE.fullmatch(text):
        return Attribution(template=text, source="raw")
    return NO_ATTRIBUTION
