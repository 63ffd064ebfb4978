"""The error catalog: every code of DOMAIN.md section 3 in its class, ranges, US split, advice."""

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

# DOMAIN.md section 3, row by row (Cloud and On-Prem codes).
DOMAIN_TABLE: list[tuple[ErrorClass, tuple[int, ...]]] = [
    (C.PER_USER_MARKETING_LIMIT, (131049, 1026)),
    (C.OPT_OUT, (131050, 498)),
    (C.PAIR_RATE_LIMIT, (131056,)),
    (C.THROUGHPUT, (130429,)),
    (C.SPAM_QUALITY, (131048, 471)),
    (C.ACCOUNT_ENFORCEMENT, (131064, 368, 131031, 130497, 131042)),
    (C.API_RATE, (4, 80007, 133016)),
    (C.CSW_RULE, (131047, 470)),
    (C.TEMPLATE, (132000, 132015, 132016, 132069)),
    (C.EXPERIMENT, (130472, 472)),
    (C.UNDELIVERABLE, (131026,)),
    (C.TRANSIENT, (131000, 131016, 131057, 133004, 1, 2)),
    (C.PERMANENT, (131014, 131008, 131009, 131021, 131051, 131052, 131053, 100, 190)),
]


@pytest.mark.parametrize(
    ("code", "error_class"),
    [(code, cls) for cls, codes in DOMAIN_TABLE for code in codes],
)
def test_domain_code_has_its_class(code: int, error_class: ErrorClass) -> None:
    info = lookup(code)
    assert (info.code, info.error_class) == (code, error_class)
    assert info.title
    assert classify(code, is_us=False) is error_class


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


@pytest.mark.parametrize(
    ("code", "is_limit"),
    [(131049, True), (1026, True), (131056, True), (130429, True), (4, True), (131048, True),
     (131050, False), (131047, False), (131026, False), (132015, False), (131000, False)],
)  # fmt: skip
def test_limit_errors_are_marked(code: int, is_limit: bool) -> None:
    assert lookup(code).is_limit is is_limit


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        (131049, RetryAdvice(RetryKind.NOT_BEFORE, 24)),
        (131050, RetryAdvice(RetryKind.NEVER)),
        (131056, RetryAdvice(RetryKind.BACKOFF)),
        (130429, RetryAdvice(RetryKind.SLOW_DOWN)),
        (131047, RetryAdvice(RetryKind.FIX)),
        (130472, RetryAdvice(RetryKind.NEVER)),
        (131000, RetryAdvice(RetryKind.BACKOFF)),
    ],
)
def test_retry_advice_follows_the_domain_table(code: int, advice: RetryAdvice) -> None:
    assert lookup(code).retry == advice


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
