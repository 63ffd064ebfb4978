"""The WhatsApp error catalog: what an error code means for a sender, as one data table.

Every code a webhook can carry in ``errors[].code`` (Cloud API and the older On-Premises API) maps
to an :class:`ErrorInfo`: Meta's title, the :class:`ErrorClass` a monitor counts it under, whether
it is a *limit* error (the message was refused because a sending limit was hit, not because the
request was wrong), and :class:`RetryAdvice`. Build on codes, never on titles: Meta says titles
will be deprecated.

The table covers every code of Meta's error-codes page (:data:`META_ERROR_CODES_PAGE`, checked
against the version dated :data:`META_ERROR_CODES_PAGE_DATE`) plus the On-Premises codes BSP
wrappers still emit; the template range 132000-132069 and the permission range 200-299 are ranges.

``ErrorClass`` values are stable snake_case strings; they are used as Prometheus label values.
Unknown codes map to ``ErrorClass.UNKNOWN`` and never raise.

The per-user marketing limit (131049, On-Prem 1026) is split by recipient: since 2025-04-01
WhatsApp delivers no marketing templates to US numbers and those fail with the same code, so
:func:`classify` turns it into ``US_MARKETING_PAUSE`` when ``is_us`` is true. That split is a
property of the recipient, not of the code, which is why it is not a row of the table.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final


class ErrorClass(enum.StrEnum):
    """What a failed send means for the sender; values are Prometheus label values."""

    PER_USER_MARKETING_LIMIT = "per_user_marketing_limit"
    US_MARKETING_PAUSE = "us_marketing_pause"
    OPT_OUT = "opt_out"
    PAIR_RATE_LIMIT = "pair_rate_limit"
    THROUGHPUT = "throughput"
    SPAM_QUALITY = "spam_quality"
    ACCOUNT_ENFORCEMENT = "account_enforcement"
    API_RATE = "api_rate"
    CSW_RULE = "csw_rule"
    TEMPLATE = "template"
    EXPERIMENT = "experiment"
    UNDELIVERABLE = "undeliverable"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    UNKNOWN = "unknown"
    # added later: appended, so the existing values keep their place
    BLOCKED_BY_BUSINESS = "blocked_by_business"
    MARKETING_MESSAGES_API = "marketing_messages_api"


class RetryKind(enum.StrEnum):
    """How a sender may resend a message that failed with a given error."""

    NEVER = "never"  # do not resend this message to this recipient
    NOT_BEFORE = "not_before"  # resend allowed only after RetryAdvice.hours
    BACKOFF = "backoff"  # retry with exponential backoff
    SLOW_DOWN = "slow_down"  # lower the send rate, then retry
    FIX = "fix"  # fix the request, template or account first; a blind retry fails again
    NONE = "none"  # no advice (unknown code)


@dataclass(frozen=True, slots=True)
class RetryAdvice:
    """Retry advice for one error; ``hours`` is set only for ``RetryKind.NOT_BEFORE``."""

    kind: RetryKind
    hours: int | None = None


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """One catalog entry.

    ``ambiguous`` marks codes whose meaning Meta does not pin down: On-Prem 1026 "Receiver
    Incapable" is both the On-Prem per-user marketing limit and a generic "this recipient cannot
    receive this message" (old client, unsupported feature). The catalog counts it as the per-user
    limit (or the US pause for US numbers) because that is what it means for marketing sends,
    and flags it so dashboards and alerts can say "may also be an incapable receiver".
    """

    code: int
    title: str
    error_class: ErrorClass
    is_limit: bool
    retry: RetryAdvice
    ambiguous: bool = False
    note: str = ""


META_ERROR_CODES_PAGE: Final = (
    "https://developers.facebook.com/documentation/business-messaging/whatsapp/support/error-codes"
)
META_ERROR_CODES_PAGE_DATE: Final = "2026-06-18"
"""The "Updated" date of Meta's error-codes page this table was checked against."""

_NEVER: Final = RetryAdvice(RetryKind.NEVER)
_AFTER_24H: Final = RetryAdvice(RetryKind.NOT_BEFORE, 24)
_BACKOFF: Final = RetryAdvice(RetryKind.BACKOFF)
_SLOW: Final = RetryAdvice(RetryKind.SLOW_DOWN)
_FIX: Final = RetryAdvice(RetryKind.FIX)
_NONE: Final = RetryAdvice(RetryKind.NONE)

_C = ErrorClass

# fmt: off
# The table. One row per code: (code, title, class, is_limit, retry, ambiguous, note).
# Titles are Meta's, from its error-codes page (see META_ERROR_CODES_PAGE) for Cloud API codes
# and from the On-Premises docs for On-Prem codes; Meta may reword them. A note says where a
# title could not be confirmed against the page.
_ROWS: Final[tuple[tuple[int, str, ErrorClass, bool, RetryAdvice, bool, str], ...]] = (
    # per-user marketing limit
    (131049, "This message was not delivered to maintain healthy ecosystem engagement.",
     _C.PER_USER_MARKETING_LIMIT, True, _AFTER_24H, False,
     "Per-user marketing template limit; for US numbers the 2025-04-01 marketing pause."),
    (1026, "Receiver Incapable", _C.PER_USER_MARKETING_LIMIT, True, _AFTER_24H, True,
     "On-Prem: the per-user marketing limit, but also any receiver that cannot take the message."),
    # opt-out
    (131050, "Unable to deliver the message. This recipient has chosen to stop receiving "
     "marketing messages on WhatsApp from your business", _C.OPT_OUT, False, _NEVER, False,
     "Never resend until the user resumes (user_preferences resume)."),
    (498, "Unable to deliver the message. This recipient has chosen to stop receiving "
     "marketing messages on WhatsApp from your business", _C.OPT_OUT, False, _NEVER, False,
     "On-Prem twin of 131050."),
    # blocked by the business
    (130403, "Unable to deliver the message. This business has blocked the end user on WhatsApp",
     _C.BLOCKED_BY_BUSINESS, False, _NEVER, False,
     "The business blocked this user (Block Users API); never retry unless it unblocks them. "
     "Title as Meta's details string."),
    # pair rate limit
    (131056, "(Business Account, Consumer Account) pair rate limit hit", _C.PAIR_RATE_LIMIT,
     True, _BACKOFF, False, "About 1 message per 6 s per sender-recipient pair; back off 4^n s."),
    # throughput
    (130429, "Rate limit hit", _C.THROUGHPUT, True, _SLOW, False,
     "Cloud API throughput of the sending number (default 80 msg/s); also in value.errors."),
    (131064, "Message failed to send because this account has reached its messaging limit due "
     "to template classification violations", _C.THROUGHPUT, True, _SLOW, False,
     "Templates and direct sends alike; lifted automatically after the enforcement period. "
     "Fix template categories. Title as Meta's details string."),
    # spam / number quality
    (131048, "Spam rate limit hit", _C.SPAM_QUALITY, True, _FIX, False,
     "Sending restricted because of low quality; no blind retry."),
    (471, "Spam Rate limit hit", _C.SPAM_QUALITY, True, _FIX, False, "On-Prem twin of 131048."),
    # account enforcement
    (368, "Temporarily blocked for policies violations", _C.ACCOUNT_ENFORCEMENT, False, _FIX,
     False, ""),
    (131031, "Business Account locked", _C.ACCOUNT_ENFORCEMENT, False, _FIX, False, ""),
    (130497, "Business account is restricted from messaging users in this country",
     _C.ACCOUNT_ENFORCEMENT, False, _FIX, False, ""),
    (131042, "Business eligibility payment issue", _C.ACCOUNT_ENFORCEMENT, False, _FIX, False,
     "Billing: every send fails until payment is fixed."),
    (131063, "Marketing templates are disabled for Cloud API", _C.ACCOUNT_ENFORCEMENT, False,
     _FIX, False, "Every marketing send fails: use the Marketing Messages API or turn the "
     "Cloud API marketing setting back on."),
    (33, "Parameter value is not valid", _C.ACCOUNT_ENFORCEMENT, False, _FIX, False,
     "The business phone number has been deleted: every send from it fails."),
    (134011, "Payments terms pending", _C.ACCOUNT_ENFORCEMENT, False, _FIX, False,
     "Payment terms not accepted yet: sends fail until they are. Title unconfirmed."),
    # Marketing Messages API (the short titles of these codes were not in the stored copy of
    # Meta's page: the titles name the code's subject, the notes what Meta says it means)
    (131055, "Marketing Messages API: request not allowed", _C.MARKETING_MESSAGES_API, False,
     _FIX, False, "Title unconfirmed."),
    (134100, "Marketing Messages API: not eligible", _C.MARKETING_MESSAGES_API, False, _FIX,
     False, "Onboarding or eligibility for the Marketing Messages API. Title unconfirmed."),
    (134101, "Marketing Messages API: template not ready", _C.MARKETING_MESSAGES_API, False,
     _FIX, False, "Template not usable on the Marketing Messages API yet. Title unconfirmed."),
    (134102, "Marketing Messages API: message not allowed", _C.MARKETING_MESSAGES_API, False,
     _FIX, False, "Message type not accepted by the Marketing Messages API. Title unconfirmed."),
    # API rate
    (4, "API Too Many Calls", _C.API_RATE, True, _SLOW, False, ""),
    (80007, "Rate limit issues", _C.API_RATE, True, _SLOW, False, "WABA-level API rate limit."),
    (133016, "Account register deregister rate limit exceeded", _C.API_RATE, True, _SLOW, False,
     ""),
    (1015, "Too many requests", _C.API_RATE, True, _SLOW, False, "On-Prem."),
    # customer-service-window rule
    (131047, "Re-engagement message", _C.CSW_RULE, False, _FIX, False,
     "More than 24 h since the user last wrote: send a template or wait for the user."),
    (470, "Message failed to send because more than 24 hours have passed since the customer "
     "last replied to this number", _C.CSW_RULE, False, _FIX, False, "On-Prem twin of 131047."),
    # template (the range 132000-132069 is in _RANGES)
    (132000, "Template Param Count Mismatch", _C.TEMPLATE, False, _FIX, False, ""),
    (132001, "Template does not exist", _C.TEMPLATE, False, _FIX, False, ""),
    (132005, "Template Hydrated Text Too Long", _C.TEMPLATE, False, _FIX, False, ""),
    (132007, "Template Format Character Policy Violated", _C.TEMPLATE, False, _FIX, False, ""),
    (132012, "Template Parameter Format Mismatch", _C.TEMPLATE, False, _FIX, False, ""),
    (132015, "Template is Paused", _C.TEMPLATE, False, _FIX, False,
     "Paused for low quality: stop sending it."),
    (132016, "Template is Disabled", _C.TEMPLATE, False, _NEVER, False,
     "Disabled for low quality: it can no longer be sent."),
    (132068, "Flow is blocked", _C.TEMPLATE, False, _FIX, False, ""),
    (132069, "Flow is throttled", _C.TEMPLATE, False, _SLOW, False, ""),
    # experiment holdout
    (130472, "User's number is part of an experiment", _C.EXPERIMENT, False, _NEVER, False,
     "Marketing message experiment holdout; exclude from failure-rate alerts."),
    (472, "User's number is part of an experiment", _C.EXPERIMENT, False, _NEVER, False,
     "On-Prem twin of 130472."),
    # undeliverable
    (131026, "Message Undeliverable", _C.UNDELIVERABLE, False, _AFTER_24H, False,
     "Not on WhatsApp, old client or terms not accepted; suppress after repeats."),
    # transient
    (131000, "Something went wrong", _C.TRANSIENT, False, _BACKOFF, False, ""),
    (131016, "Service unavailable", _C.TRANSIENT, False, _BACKOFF, False, ""),
    (131057, "Account in maintenance mode", _C.TRANSIENT, False, _BACKOFF, False, ""),
    (133004, "Server Temporarily Unavailable", _C.TRANSIENT, False, _BACKOFF, False, ""),
    (1, "API Unknown", _C.TRANSIENT, False, _BACKOFF, False, ""),
    (2, "API Service", _C.TRANSIENT, False, _BACKOFF, False, ""),
    (1011, "Service not ready", _C.TRANSIENT, False, _BACKOFF, False, "On-Prem."),
    (1014, "Internal error", _C.TRANSIENT, False, _BACKOFF, False, "On-Prem."),
    (1016, "System overloaded", _C.TRANSIENT, False, _BACKOFF, False, "On-Prem."),
    # permanent / request errors: the request is wrong, fix it before sending again
    (0, "AuthException", _C.PERMANENT, False, _FIX, False, ""),
    (3, "API Method", _C.PERMANENT, False, _FIX, False, ""),
    (10, "Permission Denied", _C.PERMANENT, False, _FIX, False, ""),
    (100, "Invalid parameter", _C.PERMANENT, False, _FIX, False, ""),
    (190, "Access token has expired", _C.PERMANENT, False, _FIX, False, ""),
    (131005, "Access denied", _C.PERMANENT, False, _FIX, False, ""),
    (131008, "Required parameter is missing", _C.PERMANENT, False, _FIX, False, ""),
    (131009, "Parameter value is not valid", _C.PERMANENT, False, _FIX, False, ""),
    (131014, "Request for media URL failed", _C.PERMANENT, False, _FIX, False,
     "Title as BSP payloads show it (media URL fetch failed)."),
    (131021, "Recipient cannot be sender", _C.PERMANENT, False, _NEVER, False, ""),
    (131030, "Recipient phone number not in allowed list", _C.PERMANENT, False, _FIX, False,
     "Test numbers: add the recipient to the allowed list."),
    (131037, "WhatsApp provided number needs display name approval before message can be sent.",
     _C.PERMANENT, False, _FIX, False, ""),
    (131045, "Incorrect certificate", _C.PERMANENT, False, _FIX, False, ""),
    (131051, "Unsupported message type", _C.PERMANENT, False, _FIX, False,
     "Also on inbound messages the business cannot read (messages[].errors)."),
    (131052, "Media download error", _C.PERMANENT, False, _FIX, False, ""),
    (131053, "Media upload error", _C.PERMANENT, False, _FIX, False, ""),
    (131062, "Business-scoped User ID (BSUID) recipients are not supported for this message",
     _C.PERMANENT, False, _FIX, False, "Send to the phone number instead."),
    (133000, "Incomplete deregistration", _C.PERMANENT, False, _FIX, False, ""),
    (133005, "Two step verification PIN Mismatch", _C.PERMANENT, False, _FIX, False, ""),
    (133006, "Phone number re-verification needed", _C.PERMANENT, False, _FIX, False, ""),
    (133008, "Too many two step verification PIN guesses for this phone number", _C.PERMANENT,
     False, _FIX, False, ""),
    (133009, "Two step verification PIN was entered too quickly", _C.PERMANENT, False, _FIX,
     False, ""),
    (133010, "Phone number Not Registered", _C.PERMANENT, False, _FIX, False, ""),
    (133015, "Please wait a few minutes before attempting to register this phone number",
     _C.PERMANENT, False, _FIX, False, ""),
    (135000, "Generic user error", _C.PERMANENT, False, _FIX, False, ""),
    (137000, "Recipient identity key mismatch", _C.PERMANENT, False, _FIX, False,
     "The recipient reinstalled or changed devices: send without the identity key hash."),
    (1000, "Generic error", _C.PERMANENT, False, _FIX, False, "On-Prem."),
    (1005, "Access denied", _C.PERMANENT, False, _FIX, False, "On-Prem."),
    (1006, "Resource not found", _C.PERMANENT, False, _FIX, False, "On-Prem."),
    (1008, "Required parameter is missing", _C.PERMANENT, False, _FIX, False, "On-Prem."),
    (1009, "Parameter value is not valid", _C.PERMANENT, False, _FIX, False, "On-Prem."),
    (1013, "User is not valid", _C.PERMANENT, False, _NEVER, False, "On-Prem."),
    (1021, "Bad user", _C.PERMANENT, False, _NEVER, False, "On-Prem: cannot send to yourself."),
)
# fmt: on

# Code ranges looked up when a code has no row of its own: (first, last, title, class, retry).
_RANGES: Final[tuple[tuple[int, int, str, ErrorClass, RetryAdvice], ...]] = (
    (132000, 132069, "Template error", _C.TEMPLATE, _FIX),
    (200, 299, "API Permission", _C.PERMANENT, _FIX),
)

CATALOG: Final[Mapping[int, ErrorInfo]] = MappingProxyType(
    {
        code: ErrorInfo(code, title, cls, is_limit, retry, ambiguous, note)
        for code, title, cls, is_limit, retry, ambiguous, note in _ROWS
    }
)
"""Every code with its own row (ranges are resolved by :func:`lookup`)."""

# Range codes are a few hundred at most, so caching them keeps lookup a dict hit.
_range_cache: dict[int, ErrorInfo] = {}


def lookup(code: int) -> ErrorInfo:
    """The catalog entry for ``code``; unknown codes get an ``UNKNOWN`` entry, never an error."""
    info = CATALOG.get(code) or _range_cache.get(code)
    if info is not None:
        return info
    for first, last, title, cls, retry in _RANGES:
        if first <= code <= last:
            info = ErrorInfo(code, title, cls, False, retry)
            _range_cache[code] = info
            return info
    return ErrorInfo(code, "Unknown error code", ErrorClass.UNKNOWN, False, _NONE)


def classify(code: int, *, is_us: bool) -> ErrorClass:
    """The error class of ``code`` for one recipient (US numbers split off the marketing pause)."""
    info = CATALOG.get(code)
    cls = info.error_class if info is not None else lookup(code).error_class
    if is_us and cls is ErrorClass.PER_USER_MARKETING_LIMIT:
        return ErrorClass.US_MARKETING_PAUSE
    return cls


def retry_advice(code: int, *, is_us: bool) -> RetryAdvice:
    """Retry advice for one failed send; the US marketing pause is never retried."""
    if classify(code, is_us=is_us) is ErrorClass.US_MARKETING_PAUSE:
        return _NEVER
    return lookup(code).retry


_ACTIONS: Final[Mapping[ErrorClass, str]] = MappingProxyType(
    {
        _C.PER_USER_MARKETING_LIMIT: (
            "Per-user marketing limit: do not resend to these recipients for at least 24 h "
            "(resending sooner can block them another 24 h); slow the campaign and target "
            "recipients with an open customer-service window."
        ),
        _C.US_MARKETING_PAUSE: (
            "US marketing pause: WhatsApp delivers no marketing templates to US numbers; remove "
            "US numbers from marketing campaigns and never retry them."
        ),
        _C.OPT_OUT: (
            "Opt-out: the recipient stopped marketing messages from this business; never resend "
            "until they resume, and suppress them in the send list."
        ),
        _C.PAIR_RATE_LIMIT: (
            "Pair rate limit: too many messages to the same recipient; back off exponentially "
            "(4^n seconds) per recipient."
        ),
        _C.THROUGHPUT: ("Throughput limit of the sending number: lower the send rate and retry."),
        _C.SPAM_QUALITY: (
            "Spam / quality restriction: stop blind retries, check number and template quality; "
            "treat as an account incident."
        ),
        _C.ACCOUNT_ENFORCEMENT: (
            "Account enforcement (restriction, lock, billing): every send may fail; page someone "
            "and check WhatsApp Manager."
        ),
        _C.API_RATE: "API rate limit: slow down API calls and retry with backoff.",
        _C.CSW_RULE: (
            "Customer-service window closed: send an approved template or wait for the user to "
            "write."
        ),
        _C.TEMPLATE: (
            "Template problem (paused, disabled or malformed): fix or stop using that template."
        ),
        _C.EXPERIMENT: (
            "Experiment holdout: the recipient is in a Meta experiment; never retry, exclude from "
            "failure-rate alerts."
        ),
        _C.UNDELIVERABLE: (
            "Undeliverable: recipient not on WhatsApp or on an old client; suppress after "
            "repeated failures."
        ),
        _C.TRANSIENT: "Transient WhatsApp error: retry with exponential backoff.",
        _C.PERMANENT: "Request error: fix the request; resending it unchanged fails again.",
        _C.UNKNOWN: "Unknown error code: check Meta's error-codes page and extend the catalog.",
        _C.BLOCKED_BY_BUSINESS: (
            "Blocked by the business: this business blocked these users; never retry unless "
            "it unblocks them (Block Users API)."
        ),
        _C.MARKETING_MESSAGES_API: (
            "Marketing Messages API error: check the business's onboarding, the template and "
            "the message type against Meta's Marketing Messages API requirements; a blind "
            "retry fails again."
        ),
    }
)


def recommended_action(error_class: ErrorClass) -> str:
    """One-paragraph advice for an alert about failures of ``error_class``."""
    return _ACTIONS[error_class]
