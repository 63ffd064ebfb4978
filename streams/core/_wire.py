"""Wire shapes of WhatsApp webhook bodies, and the lenient decoder used when they do not fit.

Only the keys the monitor uses are declared; every other key is ignored, so BSP extras
(``gs_id``, ``business_phone``...) and new Meta keys never break decoding. Identifiers that some
senders emit as numbers are ``str | int``; the JSON decoder runs with ``strict=False`` so numeric
strings decode into ints (``"timestamp": "1750030073"``).

Fast path: one typed decode of the whole body. If any declared key has the wrong type, the body is
decoded generically and :func:`decode_leniently` rebuilds the same typed structure field by field:
a bad item inside a list is dropped and reported as a :class:`Defect` with its JSON path; a bad
optional field is dropped from its object and reported; a missing or bad *required* field drops
the object that needs it (a status without ``id``, ``status`` or ``timestamp`` is unusable).
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Annotated, Any, Final

import msgspec

from streams.core.events import Defect

MAX_UNIX_SECONDS: Final = 99_999_999_999
"""Upper bound of a plausible unix-seconds timestamp; rejects millisecond timestamps."""

Timestamp = Annotated[int, msgspec.Meta(ge=0, le=MAX_UNIX_SECONDS)]
#: An error code: Meta's have at most 7 digits; the stages carry codes in msgpack, which has no
#: integers beyond 64 bits, so a larger one is a defect here (it would stop the ingest stage).
ErrorCode = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
Ident = str | int

HANDLED_FIELDS: Final = frozenset(
    {
        "messages",
        "user_preferences",
        "message_template_status_update",
        "message_template_quality_update",
        "template_category_update",
        "phone_number_quality_update",
        "account_update",
    }
)


class WireErrorData(msgspec.Struct):
    details: str | None = None


class WireError(msgspec.Struct):
    code: ErrorCode
    title: str | None = None
    message: str | None = None
    details: str | None = None  # On-Prem puts details here
    error_data: WireErrorData | None = None


class WireOrigin(msgspec.Struct):
    type: str | None = None


class WireConversation(msgspec.Struct):
    origin: WireOrigin | None = None


class WirePricing(msgspec.Struct):
    pricing_model: str | None = None
    type: str | None = None
    category: str | None = None


class WireOnPremMessage(msgspec.Struct):
    recipient_id: Ident | None = None


class WireStatus(msgspec.Struct):
    id: NonEmpty
    status: NonEmpty
    timestamp: Timestamp
    recipient_id: Ident | None = None
    recipient_user_id: str | None = None
    recipient_parent_user_id: str | None = None
    recipient_type: str | None = None
    recipient_participant_id: Ident | None = None
    recipient_participant_user_id: str | None = None
    biz_opaque_callback_data: str | None = None
    conversation: WireConversation | None = None
    pricing: WirePricing | None = None
    errors: list[WireError] | None = None
    message: WireOnPremMessage | None = None


class WireSystem(msgspec.Struct):
    type: str | None = None
    wa_id: Ident | None = None
    new_wa_id: Ident | None = None  # older name
    user_id: str | None = None
    new_user_id: str | None = None


class WireMessage(msgspec.Struct):
    timestamp: Timestamp
    id: str | None = None
    from_: Ident | None = msgspec.field(default=None, name="from")
    from_user_id: str | None = None
    type: str | None = None
    system: WireSystem | None = None
    errors: list[WireError] | None = None  # e.g. 131051: a message type the API cannot read


class WireContact(msgspec.Struct):
    wa_id: Ident | None = None
    user_id: str | None = None
    parent_user_id: str | None = None


class WireUserPreference(msgspec.Struct):
    value: NonEmpty
    wa_id: Ident | None = None
    user_id: str | None = None
    category: str | None = None
    detail: str | None = None
    timestamp: Timestamp | None = None


class WireMetadata(msgspec.Struct):
    display_phone_number: Ident | None = None
    phone_number_id: Ident | None = None


class WireItems(msgspec.Struct):
    """The item lists of a ``messages`` value, also found at the top of On-Prem bodies."""

    contacts: list[WireContact] | None = None
    messages: list[WireMessage] | None = None
    statuses: list[WireStatus] | None = None
    errors: list[WireError] | None = None
    user_preferences: list[WireUserPreference] | None = None


class WireRestriction(msgspec.Struct):
    restriction_type: str | None = None
    expiration: Ident | None = None  # unix seconds (ISO 8601 in some copies)


class WireBanInfo(msgspec.Struct):
    waba_ban_state: str | list[str] | None = None
    waba_ban_date: Ident | None = None  # a date as Meta words it ("April 17, 2025")


class WireDisableInfo(msgspec.Struct):
    disable_date: Ident | None = None  # unix seconds


class WireViolationInfo(msgspec.Struct):
    violation_type: str | None = None


class WireValue(WireItems):
    """A change's ``value``: the union of the keys of every consumed ``field``."""

    metadata: WireMetadata | None = None
    event: str | None = None
    message_template_id: Ident | None = None
    message_template_name: str | None = None
    message_template_language: str | None = None
    message_template_category: str | None = None
    reason: str | None = None
    previous_quality_score: str | None = None
    new_quality_score: str | None = None
    previous_category: str | None = None
    new_category: str | None = None
    correct_category: str | None = None
    display_phone_number: Ident | None = None
    current_limit: Ident | None = None
    max_daily_conversations_per_business: Ident | None = None
    phone_number: Ident | None = None
    restriction_info: list[WireRestriction] | None = None
    ban_info: WireBanInfo | None = None
    violation_info: WireViolationInfo | None = None
    disable_info: WireDisableInfo | None = None


class WireChange(msgspec.Struct):
    field: str
    value: WireValue | None = None


class WireEntry(msgspec.Struct):
    id: Ident | None = None
    time: Timestamp | None = None
    changes: list[WireChange] | None = None


class WireEnvelope(WireItems):
    """A whole body: Cloud (``object`` + ``entry``) or On-Prem (top-level item lists)."""

    object: str | None = None
    entry: list[WireEntry] | None = None
    business_phone: Ident | None = None  # BSP wrappers (enablex): the sending number


DECODER: Final = msgspec.json.Decoder(WireEnvelope, strict=False)


def ident(value: Ident | None) -> str | None:
    """An identifier as a string (some senders emit numbers); empty means absent."""
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


# --- lenient decoding --------------------------------------------------------------------------

_SCALAR, _STRUCT, _LIST = 0, 1, 2


class _Field(typing.NamedTuple):
    name: str
    key: str
    kind: int
    item_type: Any
    declared_type: Any
    required: bool


def _strip_none(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = tuple(a for a in typing.get_args(tp) if a is not types.NoneType)
        if len(args) == 1:
            return args[0]
    return tp


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


@functools.cache
def _layout(struct_type: type[msgspec.Struct]) -> tuple[_Field, ...]:
    out = []
    for info in msgspec.structs.fields(struct_type):
        inner = _strip_none(info.type)
        if typing.get_origin(inner) is list and _is_struct(typing.get_args(inner)[0]):
            kind, item = _LIST, typing.get_args(inner)[0]
        elif _is_struct(inner):
            kind, item = _STRUCT, inner
        else:
            kind, item = _SCALAR, info.type
        out.append(_Field(info.name, info.encode_name, kind, item, info.type, info.required))
    return tuple(out)


def _defect(path: str, exc: msgspec.ValidationError) -> Defect:
    """A defect from msgspec's message ``"<reason> - at `$.x[0]`"``, rooted at ``path``."""
    reason, sep, where = str(exc).rpartition(" - at `")
    if not sep:
        reason, where = str(exc), "$`"
    full_path = path + where.rstrip("`")[1:]
    if full_path.endswith((".timestamp", ".time")):
        reason += " (expected unix seconds: an integer or a string of digits)"
    return Defect(full_path, reason)


def _kind_name(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _repair(
    obj: object,
    struct_type: type[msgspec.Struct],
    path: str,
    defects: list[Defect],
    dropped: dict[str, list[int]],
) -> Any:
    """``obj`` as ``struct_type`` with bad parts dropped and reported; None if unusable. The
    indexes of list items dropped go to ``dropped`` by the list's path (ascending)."""
    if struct_type is WireChange and isinstance(obj, dict):
        field = obj.get("field")
        if isinstance(field, str) and field not in HANDLED_FIELDS:
            return WireChange(field=field)  # ignored field: its value is not ours to judge
    try:
        return msgspec.convert(obj, struct_type, strict=False)
    except msgspec.ValidationError as exc:
        if not isinstance(obj, dict):
            defects.append(_defect(path, exc))
            return None
    kwargs: dict[str, Any] = {}
    unusable = False
    for spec in _layout(struct_type):
        if spec.key not in obj or obj[spec.key] is None:
            if spec.required:
                defects.append(Defect(path, f"Object missing required field `{spec.key}`"))
                unusable = True
            continue
        value, where = obj[spec.key], f"{path}.{spec.key}"
        if spec.kind == _LIST:
            if not isinstance(value, list):
                defects.append(Defect(where, f"Expected `array`, got `{_kind_name(value)}`"))
                unusable = unusable or spec.required
                continue
            items = [
                _repair(v, spec.item_type, f"{where}[{i}]", defects, dropped)
                for i, v in enumerate(value)
            ]
            gone = [i for i, item in enumerate(items) if item is None]
            if gone:
                dropped[where] = gone
            kwargs[spec.name] = [item for item in items if item is not None]
        elif spec.kind == _STRUCT:
            repaired = _repair(value, spec.item_type, where, defects, dropped)
            if repaired is not None:
                kwargs[spec.name] = repaired
            else:
                unusable = unusable or spec.required
        else:
            try:
                kwargs[spec.name] = msgspec.convert(value, spec.declared_type, strict=False)
            except msgspec.ValidationError as exc:
                defects.append(_defect(where, exc))
                unusable = unusable or spec.required
    return None if unusable else struct_type(**kwargs)


def decode_leniently(
    document: dict[str, Any], defects: list[Defect], dropped: dict[str, list[int]]
) -> WireEnvelope:
    """Rebuild a :class:`WireEnvelope` from a generically decoded body, reporting every defect
    (and, in ``dropped``, which items of which lists were left out: see :func:`item_path`)."""
    envelope = _repair(document, WireEnvelope, "$", defects, dropped)
    return envelope if isinstance(envelope, WireEnvelope) else WireEnvelope()


def item_path(list_path: str, k: int, dropped: dict[str, list[int]]) -> str:
    """JSON path of the ``k``-th item kept of the list at ``list_path``: its index in the body,
    counting the items :func:`decode_leniently` left out before it."""
    for i in dropped.get(list_path, ()):
        if i > k:
            break
        k += 1
    return f"{list_path}[{k}]"
