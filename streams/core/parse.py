"""``parse_webhook``: one WhatsApp webhook POST body in, typed events out.

A body is exploded along ``entry[] x changes[] x items``; Meta batches up to 1000 updates per
POST, so every item is kept, in payload order. Within one change ``value`` the order is
``contacts`` (phone<->BSUID links), ``messages``, ``statuses``, ``errors``, ``user_preferences``.

Policy for bad input:

- not JSON, not a webhook, larger than :data:`MAX_PAYLOAD_BYTES`: :class:`ParseError`;
- a partly bad body: the good items become events and every bad part becomes a :class:`Defect`
  (JSON path + reason) in :attr:`ParsedWebhook.defects`; nothing is dropped silently;
- a body where *every* item is bad: :class:`ParseError` (carrying all the defects);
- a change whose ``field`` the monitor does not consume: listed in ``ignored_fields``, no error;
- an unknown status value: ``Status.UNKNOWN`` with ``raw_status`` kept.

Reasons never quote payload values that could be phone numbers.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from streams.core import _wire as w
from streams.core.account_updates import notification_event
from streams.core.catalog import ErrorClass, classify
from streams.core.events import (
    AccountErrorEvent,
    ContactLinkEvent,
    Defect,
    Event,
    InboundMessageEvent,
    ParsedWebhook,
    Source,
    Status,
    StatusError,
    StatusEvent,
    UserPreferenceEvent,
)
from streams.core.geography import GeographyResolver, default_resolver

MAX_PAYLOAD_BYTES: Final = 3 * 1024 * 1024
"""Meta sends webhook bodies of up to 3 MB; anything larger is rejected unread."""

WABA_OBJECT: Final = "whatsapp_business_account"

_STATUS_BY_VALUE: Final[dict[str, Status]] = {
    status.value: status for status in Status if status is not Status.UNKNOWN
}


class ParseError(ValueError):
    """A body that yields no usable event: ``path`` says where, ``reason`` what was wrong."""

    def __init__(self, path: str, reason: str, defects: tuple[Defect, ...] = ()) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.defects = defects


_LONG_DIGITS: Final = re.compile(r"\d{5,}")


def redact(text: str, limit: int = 40) -> str:
    """``text`` shortened for an error message, digit runs masked to their last 4 digits."""
    short = text if len(text) <= limit else text[:limit] + "..."
    return _LONG_DIGITS.sub(lambda m: "*" * (len(m[0]) - 4) + m[0][-4:], short)


def _phone(value: str | int | None) -> str | None:
    """A phone as E.164 digits without ``+`` (On-Prem bodies sometimes carry the ``+``)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        return str(value)
    return value[1:] if value[:1] == "+" else value


def _error_details(error: w.WireError) -> str | None:
    data = error.error_data
    if data is not None and data.details is not None:
        return data.details
    return error.details


def _errors(errors: list[w.WireError] | None) -> tuple[StatusError, ...]:
    if not errors:
        return ()
    return tuple(StatusError(e.code, e.title or e.message, _error_details(e)) for e in errors)


def _value_path(where: tuple[int, int] | None) -> str:
    """JSON path of a change's value (Cloud) or of the body (On-Prem); built only for defects."""
    return "$" if where is None else f"$.entry[{where[0]}].changes[{where[1]}].value"


def _is_onprem(envelope: w.WireEnvelope) -> bool:
    return any(
        items is not None
        for items in (envelope.statuses, envelope.messages, envelope.contacts, envelope.errors)
    )


class _Walker:
    """Turns one decoded envelope into events and defects (one instance per body)."""

    __slots__ = ("defects", "dropped", "events", "geo", "ignored")

    def __init__(
        self, defects: list[Defect], geo: GeographyResolver, dropped: dict[str, list[int]]
    ) -> None:
        self.events: list[Event] = []
        self.defects = defects
        #: list items the lenient decode left out, by list path (for the paths of defects)
        self.dropped = dropped
        self.ignored: list[str] = []
        self.geo = geo

    def run(self, envelope: w.WireEnvelope) -> ParsedWebhook:
        if envelope.entry is not None:
            if envelope.object is not None and envelope.object != WABA_OBJECT:
                raise ParseError(
                    "$.object",
                    f"object is {redact(envelope.object)!r}, not {WABA_OBJECT!r}: "
                    "not a WhatsApp Business Account webhook",
                )
            for i, entry in enumerate(envelope.entry):
                self._entry(entry, i)
        elif _is_onprem(envelope):
            display = w.ident(envelope.business_phone)
            self._items(envelope, None, "onprem", None, None, display, None)
        else:
            self._fail_if_defective()
            raise ParseError(
                "$",
                "not a WhatsApp webhook: no 'entry' (Cloud API) and no 'statuses', 'messages', "
                "'contacts' or 'errors' (On-Premises API)",
            )
        if not self.events:
            self._fail_if_defective()
        return ParsedWebhook(tuple(self.events), tuple(self.defects), tuple(self.ignored))

    def _fail_if_defective(self) -> None:
        if self.defects:
            first = self.defects[0]
            count = len(self.defects)
            raise ParseError(
                first.path,
                f"{first.reason} (no usable item; {count} defect{'s' if count > 1 else ''})",
                tuple(self.defects),
            )

    def _entry(self, entry: w.WireEntry, i: int) -> None:
        if entry.changes is None:
            self.defects.append(Defect(f"$.entry[{i}]", "entry has no 'changes' array"))
            return
        waba_id = w.ident(entry.id)
        for j, change in enumerate(entry.changes):
            field = change.field
            if field not in w.HANDLED_FIELDS:
                self.ignored.append(field)
                continue
            value = change.value
            if value is None:
                path = _value_path((i, j))
                self.defects.append(Defect(path, f"change of field {field!r} has no 'value'"))
            elif field == "messages" or field == "user_preferences":
                meta = value.metadata
                if meta is None:
                    pnid = display = None
                else:
                    pnid, display = (
                        w.ident(meta.phone_number_id),
                        w.ident(meta.display_phone_number),
                    )
                self._items(value, (i, j), "cloud", waba_id, pnid, display, entry.time)
            else:
                path = _value_path((i, j))
                event = notification_event(field, value, waba_id, entry.time, self.defects, path)
                self.events.append(event)

    def _items(
        self,
        items: w.WireItems,
        where: tuple[int, int] | None,
        source: Source,
        waba_id: str | None,
        pnid: str | None,
        display: str | None,
        time: int | None,
    ) -> None:
        events = self.events
        phone_by_user: dict[str, str] = {}
        if items.contacts:
            for contact in items.contacts:
                phone, user_id = _phone(contact.wa_id), contact.user_id
                if phone and user_id:
                    phone_by_user[user_id] = phone
                    link = ContactLinkEvent(
                        phone=phone,
                        user_id=user_id,
                        parent_user_id=contact.parent_user_id,
                        source=source,
                        waba_id=waba_id,
                        phone_number_id=pnid,
                    )
                    events.append(link)
        if items.messages:
            for k, message in enumerate(items.messages):
                self._message(message, (where, k), source, waba_id, pnid, display)
        if items.statuses:
            status_event = self._status
            for status in items.statuses:
                events.append(status_event(status, source, waba_id, pnid, display, phone_by_user))
        if items.errors:
            for error in items.errors:
                events.append(
                    AccountErrorEvent(
                        code=error.code,
                        title=error.title or error.message,
                        details=_error_details(error),
                        error_class=classify(error.code, is_us=False),
                        timestamp=time,
                        source=source,
                        waba_id=waba_id,
                        phone_number_id=pnid,
                        display_phone_number=display,
                    )
                )
        if items.user_preferences:
            for k, pref in enumerate(items.user_preferences):
                phone, user_id = _phone(pref.wa_id), pref.user_id or None
                if not (user_id or phone):
                    reason = "user preference has neither 'wa_id' nor 'user_id'"
                    path = w.item_path(f"{_value_path(where)}.user_preferences", k, self.dropped)
                    self.defects.append(Defect(path, reason))
                    continue
                events.append(
                    UserPreferenceEvent(
                        preference=pref.value,
                        category=pref.category,
                        detail=pref.detail,
                        timestamp=pref.timestamp if pref.timestamp is not None else time,
                        user_key=user_id or phone or "",
                        phone=phone,
                        user_id=user_id,
                        waba_id=waba_id,
                        phone_number_id=pnid,
                        display_phone_number=display,
                    )
                )

    def _message(
        self,
        message: w.WireMessage,
        where: tuple[tuple[int, int] | None, int],
        source: Source,
        waba_id: str | None,
        pnid: str | None,
        display: str | None,
    ) -> None:
        phone, user_id = _phone(message.from_), message.from_user_id or None
        if not (user_id or phone):
            path = w.item_path(f"{_value_path(where[0])}.messages", where[1], self.dropped)
            self.defects.append(Defect(path, "message has neither 'from' nor 'from_user_id'"))
            return
        system = message.system
        self.events.append(
            InboundMessageEvent(
                wamid=message.id or None,
                timestamp=message.timestamp,
                source=source,
                waba_id=waba_id,
                phone_number_id=pnid,
                display_phone_number=display,
                user_key=user_id or phone or "",
                from_phone=phone,
                from_user_id=user_id,
                message_type=message.type,
                system_type=system.type if system is not None else None,
                system_new_phone=_phone(system.wa_id or system.new_wa_id) if system else None,
                system_new_user_id=(system.user_id or system.new_user_id) if system else None,
                errors=_errors(message.errors),
            )
        )

    def _status(
        self,
        status: w.WireStatus,
        source: Source,
        waba_id: str | None,
        pnid: str | None,
        display: str | None,
        phone_by_user: dict[str, str],
    ) -> StatusEvent:
        raw_status = status.status
        known = _STATUS_BY_VALUE.get(raw_status)
        if known is None:
            known = _STATUS_BY_VALUE.get(raw_status.lower(), Status.UNKNOWN)
        recipient = status.recipient_id
        if recipient is None and status.message is not None:
            recipient = status.message.recipient_id
        recipient_type = status.recipient_type
        user_id = status.recipient_user_id or None
        if recipient_type == "group":
            group_id, phone = w.ident(recipient), None
        else:
            group_id, phone = None, _phone(recipient)
            if phone is None and user_id is not None:
                phone = phone_by_user.get(user_id)
        geo = self.geo.recipient(phone, user_id)
        if status.errors:
            errors = _errors(status.errors)
            error_class: ErrorClass | None = classify(errors[0].code, is_us=geo.is_us)
        else:
            errors, error_class = (), None
        pricing = status.pricing
        conversation = status.conversation
        origin = conversation.origin if conversation is not None else None
        # Positional on purpose (keyword construction of 23 fields costs ~0.6 us per event);
        # the order is StatusEvent's field order, pinned by the fixture tests field by field.
        return StatusEvent(
            status.id,  # wamid
            known,  # status
            raw_status,  # raw_status
            status.timestamp,  # timestamp
            source,  # source
            waba_id,  # waba_id
            pnid,  # phone_number_id
            display,  # display_phone_number
            user_id or phone or group_id or "",  # recipient_key
            phone,  # recipient_phone
            user_id,  # recipient_user_id
            status.recipient_parent_user_id,  # recipient_parent_user_id
            recipient_type,  # recipient_type
            _phone(w.ident(status.recipient_participant_id)),  # recipient_participant_id
            geo.country,  # country
            geo.is_us,  # is_us
            status.biz_opaque_callback_data,  # biz_opaque_callback_data
            pricing.pricing_model if pricing is not None else None,  # pricing_model
            pricing.type if pricing is not None else None,  # pricing_type
            pricing.category if pricing is not None else None,  # pricing_category
            origin.type if origin is not None else None,  # conversation_origin
            errors,  # errors
            error_class,  # error_class
            status.recipient_participant_user_id,  # recipient_participant_user_id
        )


def parse_webhook(raw: bytes, *, geography: GeographyResolver | None = None) -> ParsedWebhook:
    """Explode one webhook POST body into events; raises :class:`ParseError` only.

    ``geography`` defaults to the process-wide cached resolver.
    """
    size = len(raw)
    if size > MAX_PAYLOAD_BYTES:
        raise ParseError("$", f"body is {size} bytes, larger than the {MAX_PAYLOAD_BYTES} limit")
    defects: list[Defect] = []
    dropped: dict[str, list[int]] = {}
    try:
        envelope = w.DECODER.decode(raw)
    except msgspec.ValidationError:
        envelope = _decode_leniently(raw, defects, dropped)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise _not_json(exc) from None
    resolver = geography if geography is not None else default_resolver()
    return _Walker(defects, resolver, dropped).run(envelope)


def _not_json(exc: Exception) -> ParseError:
    if isinstance(exc, UnicodeDecodeError):
        return ParseError("$", "not valid JSON: a string is not valid UTF-8")
    if isinstance(exc, RecursionError):
        return ParseError("$", "not valid JSON: nested too deeply")
    return ParseError("$", f"not valid JSON: {exc}")


def _decode_leniently(
    raw: bytes, defects: list[Defect], dropped: dict[str, list[int]]
) -> w.WireEnvelope:
    try:
        document = msgspec.json.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise _not_json(exc) from None
    if not isinstance(document, dict):
        kind = "an array" if isinstance(document, list) else "a JSON scalar"
        raise ParseError("$", f"not a WhatsApp webhook: the body is {kind}, not an object")
    return w.decode_leniently(document, defects, dropped)
