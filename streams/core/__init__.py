"""The pure core of the delivery monitor: WhatsApp parsing, error catalog, geography, attribution.

Nothing here imports Faust, aiokafka, prometheus_client, slack_sdk or aiohttp (a unit test walks
the imports to keep it so). Entry points:

- :func:`parse_webhook` turns one webhook POST body into a :class:`ParsedWebhook` of typed events;
- :func:`lookup` / :func:`classify` / :func:`recommended_action` read the error catalog;
- :class:`GeographyResolver` / :func:`locate_recipient` place recipients (country, US flag);
- :func:`decode_callback_data` reads template / campaign / category from
  ``biz_opaque_callback_data``.
"""

from streams.core.attribution import (
    DEFAULT_CONFIG,
    Attribution,
    AttributionConfig,
    decode_callback_data,
)
from streams.core.catalog import (
    CATALOG,
    ErrorClass,
    ErrorInfo,
    RetryAdvice,
    RetryKind,
    classify,
    lookup,
    recommended_action,
    retry_advice,
)
from streams.core.events import (
    EVENT_TYPES,
    AccountErrorEvent,
    AccountUpdateEvent,
    ContactLinkEvent,
    Defect,
    Event,
    InboundMessageEvent,
    ParsedWebhook,
    PhoneNumberQualityEvent,
    Source,
    Status,
    StatusError,
    StatusEvent,
    TemplateCategoryEvent,
    TemplateQualityEvent,
    TemplateStatusEvent,
    UserPreferenceEvent,
)
from streams.core.geography import (
    UNKNOWN_COUNTRY,
    Geography,
    GeographyResolver,
    locate_phone,
    locate_recipient,
)
from streams.core.parse import MAX_PAYLOAD_BYTES, ParseError, parse_webhook, redact

__all__ = [
    "CATALOG",
    "DEFAULT_CONFIG",
    "EVENT_TYPES",
    "MAX_PAYLOAD_BYTES",
    "UNKNOWN_COUNTRY",
    "AccountErrorEvent",
    "AccountUpdateEvent",
    "Attribution",
    "AttributionConfig",
    "ContactLinkEvent",
    "Defect",
    "ErrorClass",
    "ErrorInfo",
    "Event",
    "Geography",
    "GeographyResolver",
    "InboundMessageEvent",
    "ParseError",
    "ParsedWebhook",
    "PhoneNumberQualityEvent",
    "RetryAdvice",
    "RetryKind",
    "Source",
    "Status",
    "StatusError",
    "StatusEvent",
    "TemplateCategoryEvent",
    "TemplateQualityEvent",
    "TemplateStatusEvent",
    "UserPreferenceEvent",
    "classify",
    "decode_callback_data",
    "locate_phone",
    "locate_recipient",
    "lookup",
    "parse_webhook",
    "recommended_action",
    "redact",
    "retry_advice",
]
