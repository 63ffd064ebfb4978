"""Events of the WABA-level notification fields: templates, number quality, account updates.

Each change of these fields carries one notification in its ``value`` (no item lists, no
``metadata``); its time is the entry's ``time``. These events matter to a delivery monitor because
they explain failures: a template paused or disabled (132015/132016), a template moved from
utility to marketing (now exposed to the 131049 limit), a number's quality or messaging limit
changing, or an account restriction (every send fails).
"""

from __future__ import annotations

import datetime as dt

from streams.core._wire import MAX_UNIX_SECONDS, Ident, WireValue, ident
from streams.core.events import (
    AccountUpdateEvent,
    Defect,
    Event,
    PhoneNumberQualityEvent,
    TemplateCategoryEvent,
    TemplateQualityEvent,
    TemplateStatusEvent,
)


def unix_seconds(value: Ident | None) -> int | None:
    """Unix seconds from an integer, a string of digits or an ISO 8601 date-time (UTC unless it
    says otherwise); None when absent or not a plausible time."""
    if value is None or value == "":
        return None
    if isinstance(value, int):
        seconds = value
    elif value.isascii() and value.isdigit():  # int() refuses some digits isdigit() accepts (²)
        if len(value) > 20:  # no time has more digits (and int() refuses thousands of them)
            return None
        seconds = int(value)
    else:
        try:
            parsed = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        seconds = int(parsed.timestamp())
    return seconds if 0 <= seconds <= MAX_UNIX_SECONDS else None


def _time(value: Ident | None, path: str, defects: list[Defect] | None) -> int | None:
    seconds = unix_seconds(value)
    if seconds is None and value not in (None, "") and defects is not None:
        defects.append(Defect(path, "expected unix seconds or an ISO 8601 date-time"))
    return seconds


def notification_event(
    field: str,
    value: WireValue,
    waba_id: str | None,
    time: int | None,
    defects: list[Defect] | None = None,
    path: str = "$",
) -> Event:
    """The single event of a template, phone-number-quality or account ``field`` change;
    a time it cannot read is reported in ``defects`` (at ``path``, the change's value)."""
    template_id = ident(value.message_template_id)
    name, language = value.message_template_name, value.message_template_language
    if field == "message_template_status_update":
        return TemplateStatusEvent(
            event=value.event,
            template_id=template_id,
            template_name=name,
            template_language=language,
            reason=value.reason,
            category=value.message_template_category,
            timestamp=time,
            waba_id=waba_id,
            disabled_at=_time(
                value.disable_info.disable_date if value.disable_info else None,
                f"{path}.disable_info.disable_date",
                defects,
            ),
        )
    if field == "message_template_quality_update":
        return TemplateQualityEvent(
            previous_quality=value.previous_quality_score,
            new_quality=value.new_quality_score,
            template_id=template_id,
            template_name=name,
            template_language=language,
            timestamp=time,
            waba_id=waba_id,
        )
    if field == "template_category_update":
        return TemplateCategoryEvent(
            previous_category=value.previous_category,
            new_category=value.new_category,
            correct_category=value.correct_category,
            template_id=template_id,
            template_name=name,
            template_language=language,
            timestamp=time,
            waba_id=waba_id,
        )
    if field == "phone_number_quality_update":
        return PhoneNumberQualityEvent(
            event=value.event,
            display_phone_number=ident(value.display_phone_number),
            current_limit=ident(value.current_limit),
            max_daily_conversations_per_business=ident(value.max_daily_conversations_per_business),
            timestamp=time,
            waba_id=waba_id,
        )
    ban = value.ban_info.waba_ban_state if value.ban_info is not None else None
    ban_date = ident(value.ban_info.waba_ban_date) if value.ban_info is not None else None
    expirations = [
        _time(r.expiration, f"{path}.restriction_info[{k}].expiration", defects)
        for k, r in enumerate(value.restriction_info or ())
    ]
    until = max((e for e in expirations if e is not None), default=None)
    return AccountUpdateEvent(
        event=value.event,
        phone_number=ident(value.phone_number),
        restriction_types=tuple(
            r.restriction_type for r in value.restriction_info or () if r.restriction_type
        ),
        ban_state=",".join(ban) if isinstance(ban, list) else ban,
        violation_type=value.violation_info.violation_type if value.violation_info else None,
        timestamp=time,
        waba_id=waba_id,
        restricted_until=until,
        ban_date=ban_date[:64] if ban_date else None,
    )
