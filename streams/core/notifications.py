"""Events of the WABA-level notification fields: templates, number quality, account updates.

Each change of these fields carries one notification in its ``value`` (no item lists, no
``metadata``); its time is the entry's ``time``. These events matter to a delivery monitor because
they explain failures: a template paused or disabled (132015/132016), a template moved from
utility to marketing (now exposed to the 131049 limit), a number's quality or messaging limit
changing, or an account restriction (every send fails).
"""

from __future__ import annotations

from streams.core._wire import WireValue, ident
from streams.core.events import (
    AccountUpdateEvent,
    Event,
    PhoneNumberQualityEvent,
    TemplateCategoryEvent,
    TemplateQualityEvent,
    TemplateStatusEvent,
)


def notification_event(
    field: str, value: WireValue, waba_id: str | None, time: int | None
) -> Event:
    """The single event of a template, phone-number-quality or account ``field`` change."""
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
    )
