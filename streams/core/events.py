"""Typed, immutable events that one WhatsApp webhook POST body explodes into.

Every event is a frozen ``msgspec.Struct`` (cheap to create, hashable, encodable to JSON with a
``kind`` tag so a stream can carry it and decode it back with :data:`EVENT_TYPES`). Timestamps are
unix seconds of *event time* as WhatsApp reports it. ``source`` says which API shape the event came
from: ``"cloud"`` (the ``entry/changes`` envelope) or ``"onprem"`` (top-level ``statuses[]``, the
On-Premises API and BSP wrappers that still emit it).
"""

from __future__ import annotations

import enum
from typing import Literal

import msgspec

from streams.core.catalog import ErrorClass

Source = Literal["cloud", "onprem"]


class Status(enum.StrEnum):
    """Delivery status of an outbound message; unknown values become ``UNKNOWN``, never an error."""

    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    PLAYED = "played"  # first play of a voice message (since 2026-03)
    DELETED = "deleted"  # On-Prem
    WARNING = "warning"  # On-Prem
    UNKNOWN = "unknown"


class StatusError(msgspec.Struct, frozen=True, gc=False):
    """One ``errors[]`` item of a status: build on ``code``; titles are for humans."""

    code: int
    title: str | None = None
    details: str | None = None


class StatusEvent(msgspec.Struct, frozen=True, gc=False, tag_field="kind", tag="status"):
    """One ``statuses[]`` item: what happened to one outbound message (wamid) at ``timestamp``.

    ``recipient_key`` identifies the recipient for per-user state: the BSUID when present (it
    survives number changes), else the phone number, else the group id, else ``""``.
    ``country``/``is_us`` come from the phone (BSUID country prefix when no phone is known).
    ``error_class`` classifies the first error, splitting the US marketing pause off 131049/1026.
    """

    wamid: str
    status: Status
    raw_status: str
    timestamp: int
    source: Source
    waba_id: str | None
    phone_number_id: str | None
    display_phone_number: str | None
    recipient_key: str
    recipient_phone: str | None
    recipient_user_id: str | None
    recipient_parent_user_id: str | None
    recipient_type: str | None
    recipient_participant_id: str | None
    country: str
    is_us: bool
    biz_opaque_callback_data: str | None
    pricing_model: str | None
    pricing_type: str | None
    pricing_category: str | None
    conversation_origin: str | None
    errors: tuple[StatusError, ...]
    error_class: ErrorClass | None
    #: a group status: the BSUID of the participant it is about (never a metric label)
    recipient_participant_user_id: str | None = None

    @property
    def primary_error(self) -> StatusError | None:
        """The first error, the one WhatsApp reports as the reason."""
        return self.errors[0] if self.errors else None

    @property
    def error_code(self) -> int | None:
        """Code of the first error, or None."""
        return self.errors[0].code if self.errors else None


class InboundMessageEvent(
    msgspec.Struct, frozen=True, gc=False, tag_field="kind", tag="inbound_message"
):
    """A message a user sent to the business: opens or refreshes that user's 24 h service window.

    ``system_type`` is set for ``type: "system"`` messages (``user_changed_number``,
    ``user_changed_user_id``), with the new phone / BSUID when WhatsApp gives it.
    """

    wamid: str | None
    timestamp: int
    source: Source
    waba_id: str | None
    phone_number_id: str | None
    display_phone_number: str | None
    user_key: str
    from_phone: str | None
    from_user_id: str | None
    message_type: str | None
    system_type: str | None = None
    system_new_phone: str | None = None
    system_new_user_id: str | None = None
    #: the message's own ``errors[]`` (e.g. 131051 unsupported message type)
    errors: tuple[StatusError, ...] = ()


class ContactLinkEvent(msgspec.Struct, frozen=True, gc=False, tag_field="kind", tag="contact_link"):
    """A ``contacts[]`` item pairing a phone (``wa_id``) with a BSUID (``user_id``)."""

    phone: str
    user_id: str
    parent_user_id: str | None
    source: Source
    waba_id: str | None
    phone_number_id: str | None


class AccountErrorEvent(
    msgspec.Struct, frozen=True, gc=False, tag_field="kind", tag="account_error"
):
    """A ``value.errors[]`` item: an error not tied to one message (e.g. 130429 throughput).

    ``timestamp`` is the entry's ``time`` when present; these items carry no time of their own.
    """

    code: int
    title: str | None
    details: str | None
    error_class: ErrorClass
    timestamp: int | None
    source: Source
    waba_id: str | None
    phone_number_id: str | None
    display_phone_number: str | None


class UserPreferenceEvent(
    msgspec.Struct, frozen=True, gc=False, tag_field="kind", tag="user_preference"
):
    """A ``user_preferences`` item: ``preference`` is ``"stop"`` (opt-out) or ``"resume"``."""

    preference: str
    category: str | None
    detail: str | None
    timestamp: int | None
    user_key: str
    phone: str | None
    user_id: str | None
    waba_id: str | None
    phone_number_id: str | None
    display_phone_number: str | None

    @property
    def is_opt_out(self) -> bool:
        """The user asked to stop (marketing) messages from this business."""
        return self.preference == "stop"


class TemplateStatusEvent(
    msgspec.Struct, frozen=True, gc=False, tag_field="kind", tag="template_status"
):
    """``message_template_status_update``: ``event`` is APPROVED, PAUSED, DISABLED, ..."""

    event: str | None
    template_id: str | None
    template_name: str | None
    template_language: str | None
    reason: str | None
    category: str | None
    timestamp: int | None
    waba_id: str | None
    disabled_at: int | None = None  # ``disable_info.disable_date`` of a DISABLED event


class TemplateQualityEvent(
    msgspec.Struct, frozen=True, gc=False, tag_field="kind", tag="template_quality"
):
    """``message_template_quality_update``: GREEN / YELLOW / RED transitions."""

    previous_quality: str | None
    new_quality: str | None
    template_id: str | None
    template_name: str | None
    template_language: str | None
    timestamp: int | None
    waba_id: str | None


class TemplateCategoryEvent(
    msgspec.Struct, frozen=True, gc=False, tag_field="kind", tag="template_category"
):
    """``template_category_update``: utility -> marketing exposes a template to 131049.

    ``correct_category`` is set on notices of an impending change, ``previous_category`` on
    completed changes.
    """

    previous_category: str | None
    new_category: str | None
    correct_category: str | None
    template_id: str | None
    template_name: str | None
    template_language: str | None
    timestamp: int | None
    waba_id: str | None


class PhoneNumberQualityEvent(
    msgspec.Struct, frozen=True, gc=False, tag_field="kind", tag="phone_number_quality"
):
    """``phone_number_quality_update``: quality / messaging-limit events of a sending number."""

    event: str | None
    display_phone_number: str | None
    current_limit: str | None
    max_daily_conversations_per_business: str | None
    timestamp: int | None
    waba_id: str | None


class AccountUpdateEvent(
    msgspec.Struct, frozen=True, gc=False, tag_field="kind", tag="account_update"
):
    """``account_update``: restrictions, bans and violations of the business account."""

    event: str | None
    phone_number: str | None
    restriction_types: tuple[str, ...]
    ban_state: str | None
    violation_type: str | None
    timestamp: int | None
    waba_id: str | None
    restricted_until: int | None = None  # the latest ``restriction_info[].expiration``
    ban_date: str | None = None  # ``ban_info.waba_ban_date``, as Meta words it


Event = (
    StatusEvent
    | InboundMessageEvent
    | ContactLinkEvent
    | AccountErrorEvent
    | UserPreferenceEvent
    | TemplateStatusEvent
    | TemplateQualityEvent
    | TemplateCategoryEvent
    | PhoneNumberQualityEvent
    | AccountUpdateEvent
)

EVENT_TYPES: tuple[type[Event], ...] = (
    StatusEvent,
    InboundMessageEvent,
    ContactLinkEvent,
    AccountErrorEvent,
    UserPreferenceEvent,
    TemplateStatusEvent,
    TemplateQualityEvent,
    TemplateCategoryEvent,
    PhoneNumberQualityEvent,
    AccountUpdateEvent,
)


class Defect(msgspec.Struct, frozen=True, gc=False):
    """A part of a body that could not be used: JSON path (``$.entry[0]...``) and why.

    Reasons never echo payload values, so phone numbers cannot leak through them into logs.
    """

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class ParsedWebhook(msgspec.Struct, frozen=True, gc=False):
    """Everything one POST body held: events in payload order, defects, ignored change fields.

    ``ignored_fields`` lists, once per change, the ``field`` of changes the monitor does not
    consume (e.g. ``"security"``); they are not errors.
    """

    events: tuple[Event, ...]
    defects: tuple[Defect, ...] = ()
    ignored_fields: tuple[str, ...] = ()

    @property
    def statuses(self) -> tuple[StatusEvent, ...]:
        """The status events, in payload order."""
        return tuple(event for event in self.events if isinstance(event, StatusEvent))
