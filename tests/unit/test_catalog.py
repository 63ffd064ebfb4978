"""The error catalog: every code of Meta's error-codes page with its class, limit flag and
retry advice; ranges, the US split, recommended actions."""

from __future__ import annotations

import re

import pytest

from streams.core import (
    CATALOG,
    ErrorClass,
    RetryAdvice,
    RetryKind,
    classify,
    lookup,
    recommended_action,
    retry_advice,
)
from streams.core import catalog as catalog_module

C = ErrorClass

N = RetryAdvice(RetryKind.NEVER)
H24 = RetryAdvice(RetryKind.NOT_BEFORE, 24)
B = RetryAdvice(RetryKind.BACKOFF)
S = RetryAdvice(RetryKind.SLOW_DOWN)
F = RetryAdvice(RetryKind.FIX)

# Every code of Meta's error-codes page (and the On-Prem codes), one row each, written out by
# hand from the page and DOMAIN.md section 3 (not generated from the catalog): code, class,
# is_limit, retry advice.
EXPECTED: list[tuple[int, ErrorClass, bool, RetryAdvice]] = [
    # per-user marketing limit
    (131049, C.PER_USER_MARKETING_LIMIT, True, H24),
    (1026, C.PER_USER_MARKETING_LIMIT, True, H24),
    # opt-out
    (131050, C.OPT_OUT, False, N),
    (498, C.OPT_OUT, False, N),
    # blocked by the business: never retry
    (130403, C.BLOCKED_BY_BUSINESS, False, N),
    # pair rate limit
    (131056, C.PAIR_RATE_LIMIT, True, B),
    # throughput (131064 is throttling on Meta's page, lifted automatically)
    (130429, C.THROUGHPUT, True, S),
    (131064, C.THROUGHPUT, True, S),
    # spam / number quality
    (131048, C.SPAM_QUALITY, True, F),
    (471, C.SPAM_QUALITY, True, F),
    # account enforcement
    (368, C.ACCOUNT_ENFORCEMENT, False, F),
    (131031, C.ACCOUNT_ENFORCEMENT, False, F),
    (130497, C.ACCOUNT_ENFORCEMENT, False, F),
    (131042, C.ACCOUNT_ENFORCEMENT, False, F),
    (131063, C.ACCOUNT_ENFORCEMENT, False, F),
    (33, C.ACCOUNT_ENFORCEMENT, False, F),
    (134011, C.ACCOUNT_ENFORCEMENT, False, F),
    # Marketing Messages API
    (131055, C.MARKETING_MESSAGES_API, False, F),
    (134100, C.MARKETING_MESSAGES_API, False, F),
    (134101, C.MARKETING_MESSAGES_API, False, F),
    (134102, C.MARKETING_MESSAGES_API, False, F),
    # API rate
    (4, C.API_RATE, True, S),
    (80007, C.API_RATE, True, S),
    (133016, C.API_RATE, True, S),
    (1015, C.API_RATE, True, S),
    # customer-service window
    (131047, C.CSW_RULE, False, F),
    (470, C.CSW_RULE, False, F),
    # template
    (132000, C.TEMPLATE, False, F),
    (132001, C.TEMPLATE, False, F),
    (132005, C.TEMPLATE, False, F),
    (132007, C.TEMPLATE, False, F),
    (132012, C.TEMPLATE, False, F),
    (132015, C.TEMPLATE, False, F),
    (132016, C.TEMPLATE, False, N),
    (132068, C.TEMPLATE, False, F),
    (132069, C.TEMPLATE, False, S),
    # experiment holdout
    (130472, C.EXPERIMENT, False, N),
    (472, C.EXPERIMENT, False, N),
    # undeliverable
    (131026, C.UNDELIVERABLE, False, H24),
    # transient
    (131000, C.TRANSIENT, False, B),
    (131016, C.TRANSIENT, False, B),
    (131057, C.TRANSIENT, False, B),
    (133004, C.TRANSIENT, False, B),
    (1, C.TRANSIENT, False, B),
    (2, C.TRANSIENT, False, B),
    (1011, C.TRANSIENT, False, B),
    (1014, C.TRANSIENT, False, B),
    (1016, C.TRANSIENT, False, B),
    # request errors
    (0, C.PERMANENT, False, F),
    (3, C.PERMANENT, False, F),
    (10, C.PERMANENT, False, F),
    (100, C.PERMANENT, False, F),
    (190, C.PERMANENT, False, F),
    (131005, C.PERMANENT, False, F),
    (131008, C.PERMANENT, False, F),
    (131009, C.PERMANENT, False, F),
    (131014, C.PERMANENT, False, F),
    (131021, C.PERMANENT, False, N),
    (131030, C.PERMANENT, False, F),
    (131037, C.PERMANENT, False, F),
    (131045, C.PERMANENT, False, F),
    (131051, C.PERMANENT, False, F),
    (131052, C.PERMANENT, False, F),
    (131053, C.PERMANENT, False, F),
    (131062, C.PERMANENT, False, F),
    (133000, C.PERMANENT, False, F),
    (133005, C.PERMANENT, False, F),
    (133006, C.PERMANENT, False, F),
    (133008, C.PERMANENT, False, F),
    (133009, C.PERMANENT, False, F),
    (133010, C.PERMANENT, False, F),
    (133015, C.PERMANENT, False, F),
    (135000, C.PERMANENT, False, F),
    (137000, C.PERMANENT, False, F),
    (1000, C.PERMANENT, False, F),
    (1005, C.PERMANENT, False, F),
    (1006, C.PERMANENT, False, F),
    (1008, C.PERMANENT, False, F),
    (1009, C.PERMANENT, False, F),
    (1013, C.PERMANENT, False, N),
    (1021, C.PERMANENT, False, N),
]


@pytest.mark.parametrize(("code", "error_class", "is_limit", "retry"), EXPECTED)
def test_catalog_code(
    code: int, error_class: ErrorClass, is_limit: bool, retry: RetryAdvice
) -> None:
    info = lookup(code)
    assert (info.code, info.error_class, info.is_limit, info.retry) == (
        code,
        error_class,
        is_limit,
        retry,
    )
    assert info.title and info.title != "Unknown error code"
    assert classify(code, is_us=False) is error_class


def test_the_expected_table_and_the_catalog_list_the_same_codes() -> None:
    """A code added to the catalog without a row here (or the reverse) fails."""
    assert sorted(code for code, *_ in EXPECTED) == sorted(CATALOG)


def test_the_catalog_names_the_page_and_its_date() -> None:
    assert catalog_module.META_ERROR_CODES_PAGE.startswith("https://developers.facebook.com/")
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", catalog_module.META_ERROR_CODES_PAGE_DATE)


def test_every_table_row_is_a_distinct_code() -> None:
    """A duplicated row would silently overwrite another in the mapping."""
    assert len(catalog_module._ROWS) == len(CATALOG)


def test_error_class_values_are_the_stable_prometheus_labels() -> None:
    assert [c.value for c in ErrorClass] == [
        "per_user_marketing_limit",
        "us_marketing_pause",
        "opt_out",
        "pair_rate_limit",
        "throughput",
        "spam_quality",
        "account_enforcement",
        "api_rate",
        "csw_rule",
        "template",
        "experiment",
        "undeliverable",
        "transient",
        "permanent",
        "unknown",
        "blocked_by_business",
        "marketing_messages_api",
    ]
    assert all(re.fullmatch(r"[a-z_]+", c.value) for c in ErrorClass)


@pytest.mark.parametrize("code", [132003, 132033, 132050])
def test_template_range_without_own_row_is_a_template_error(code: int) -> None:
    info = lookup(code)
    assert (info.code, info.error_class, info.retry.kind) == (code, C.TEMPLATE, RetryKind.FIX)


def test_paused_and_disabled_templates_have_their_titles() -> None:
    assert lookup(132015).title == "Template is Paused"
    assert lookup(132016).title == "Template is Disabled"
    assert lookup(132016).retry == RetryAdvice(RetryKind.NEVER)


@pytest.mark.parametrize("code", [131999, 132070, 999_999, -5, 0x7FFFFFFFFFFF])
def test_unknown_code_maps_to_unknown_without_raising(code: int) -> None:
    info = lookup(code)
    assert (info.error_class, info.is_limit, info.retry.kind) == (C.UNKNOWN, False, RetryKind.NONE)
    assert classify(code, is_us=True) is C.UNKNOWN


@pytest.mark.parametrize("code", [131049, 1026])
def test_marketing_limit_to_a_us_number_is_the_us_pause(code: int) -> None:
    assert classify(code, is_us=True) is C.US_MARKETING_PAUSE
    assert classify(code, is_us=False) is C.PER_USER_MARKETING_LIMIT
    assert retry_advice(code, is_us=True) == RetryAdvice(RetryKind.NEVER)
    assert retry_advice(code, is_us=False) == RetryAdvice(RetryKind.NOT_BEFORE, 24)


def test_us_flag_changes_nothing_for_other_classes() -> None:
    assert classify(131050, is_us=True) is C.OPT_OUT
    assert classify(131026, is_us=True) is C.UNDELIVERABLE


def test_1026_is_flagged_ambiguous_and_131049_is_not() -> None:
    assert lookup(1026).ambiguous
    assert lookup(1026).title == "Receiver Incapable"
    assert not lookup(131049).ambiguous


def test_only_not_before_advice_carries_hours() -> None:
    for info in CATALOG.values():
        assert (info.retry.hours is not None) == (info.retry.kind is RetryKind.NOT_BEFORE)


def test_every_error_class_has_a_recommended_action() -> None:
    for error_class in ErrorClass:
        assert len(recommended_action(error_class)) > 20


def test_recommended_actions_say_what_to_do_about_limits() -> None:
    assert "24 h" in recommended_action(C.PER_USER_MARKETING_LIMIT)
    assert "service window" in recommended_action(C.PER_USER_MARKETING_LIMIT)
    us_pause = recommended_action(C.US_MARKETING_PAUSE)
    assert "remove US numbers" in us_pause
    assert "never retry" in us_pause
