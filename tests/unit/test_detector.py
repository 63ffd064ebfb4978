"""Spike statistics, the spike detector on minute counts, immediate rules and resend storms."""

from __future__ import annotations

import functools
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.core.alerts import (
    AlertBook,
    Evaluation,
    Family,
    Finding,
    Notification,
    NotificationKind,
    Scope,
    ScopeKind,
    Verdict,
)
from streams.core.catalog import ErrorClass
from streams.core.detector import (
    DEFAULT_THRESHOLDS,
    DetectorConfig,
    HourRecord,
    MinuteTally,
    SpikeDetector,
    SpikeThresholds,
    binomial_sf,
    judge,
)
from streams.core.immediate import (
    BILLING_ERROR,
    SPAM_BURST,
    TEMPLATE_DISABLED,
    TEMPLATE_PAUSED,
    AccountEvent,
    ErrorCount,
    ImmediateInput,
    ImmediateRules,
    PhoneQualityChange,
    ResendStormConfig,
    ResendStormRule,
    TemplateQualityChange,
    TemplateStatusChange,
    is_premature_resend,
)

LIMIT = "per_user_marketing_limit"
US_PAUSE = "us_marketing_pause"
T0 = 1_751_000_000 // 3600 * 3600  # an hour boundary, event time
M0 = T0 // 60
DAY_MINUTES = 24 * 60
SALE = Scope.for_template("spring_sale")


def exact_tail(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def feed(
    det: SpikeDetector,
    scope: Scope,
    first: int,
    minutes: int,
    attempts: int,
    errors: int,
    cls: str = LIMIT,
) -> None:
    for m in range(first, first + minutes):
        det.observe(scope, m, attempts, {cls: errors})


def run(
    det: SpikeDetector, book: AlertBook, first: int, last: int
) -> list[tuple[int, Notification]]:
    """Evaluate at the end of each minute first..last; (minute, notification) pairs."""
    out = []
    for m in range(first, last + 1):
        evaluation = det.evaluate((m + 1) * 60, watch=set(book.state.alerts))
        out += [(m, n) for n in book.apply(evaluation)]
    return out


# --- statistics ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [
        (2, 10, 1.6e-2),  # documented: no alert at 1e-3
        (3, 10, 8.6e-4),
        (8, 50, 6.5e-6),
        (12, 200, 7.9e-4),
    ],
)
def test_binomial_tail_matches_the_documented_values(k: int, n: int, expected: float) -> None:
    assert binomial_sf(k, n, 0.02) == pytest.approx(expected, rel=0.03)


@given(
    n=st.integers(min_value=0, max_value=80),
    k=st.integers(min_value=-2, max_value=90),
    p=st.floats(min_value=0.0, max_value=1.0),
)
def test_binomial_tail_equals_the_exact_sum(n: int, k: int, p: float) -> None:
    exact = 1.0 if k <= 0 else (0.0 if k > n else exact_tail(k, n, p))
    assert binomial_sf(k, n, p) == pytest.approx(exact, rel=1e-9, abs=1e-12)


def test_binomial_tail_handles_account_scale_counts() -> None:
    """15M sends in a window: a 5.07% rate vs 5% is certain, 5.003% is not; both finite."""
    assert binomial_sf(760_000, 15_000_000, 0.05) < 1e-30
    assert 0.1 < binomial_sf(750_500, 15_000_000, 0.05) < 0.5


def test_zero_baseline_uses_the_prior_not_a_division_by_zero() -> None:
    """A brand-new template: 20 of 100 failing pages; 1 of 100 does not even hold."""
    t = DEFAULT_THRESHOLDS[ErrorClass.PER_USER_MARKETING_LIMIT]
    verdict, evidence = judge(20, 100, 0, 0, t)
    assert verdict is Verdict.POSITIVE
    assert evidence.baseline_ratio == pytest.approx(t.prior_ratio)
    assert judge(1, 100, 0, 0, t)[0] is None


def test_min_rise_stops_a_scope_that_always_runs_high() -> None:
    """6.5% against its own 6% is significant on 200k sends but is its usual rate: clear."""
    t = DEFAULT_THRESHOLDS[ErrorClass.PER_USER_MARKETING_LIMIT]
    verdict, evidence = judge(13_000, 200_000, 86_400, 1_440_000, t)
    assert evidence.ratio > t.ratio_floor
    assert verdict is None


@pytest.mark.parametrize(
    ("k", "n", "verdict"),
    [
        (30, 60, Verdict.POSITIVE),  # 50% against 2%
        (6, 60, Verdict.HOLD),  # 10%: no longer a clear spike, still far above 2%
        (3, 60, None),  # 5%: P(X >= 3 | 60, 2%) = 0.12, indistinguishable from 2%: clear
        (1, 2, None),  # one error in two sends says nothing
        (0, 60, None),
    ],
)
def test_hold_while_distinguishable_from_the_baseline_clear_once_not(
    k: int, n: int, verdict: Verdict | None
) -> None:
    t = DEFAULT_THRESHOLDS[ErrorClass.PER_USER_MARKETING_LIMIT]
    assert judge(k, n, 2_000, 100_000, t)[0] is verdict


# --- the detector -------------------------------------------------------------------------


def test_sparse_template_with_2_errors_of_5_sends_never_pages() -> None:
    det, book = SpikeDetector(), AlertBook()
    for hour in range(24):  # a sparse template: a few sends an hour, no errors
        det.observe(SALE, M0 + hour * 60, 5, {})
    m = M0 + DAY_MINUTES + 10
    det.observe(SALE, m, 5, {LIMIT: 2})
    assert run(det, book, m, m + 15) == []
    # even with the volume floor lowered to 2, the binomial test refuses 2 of 5
    low = DetectorConfig(thresholds={ErrorClass.PER_USER_MARKETING_LIMIT: SpikeThresholds(2)})
    det = SpikeDetector(low)
    det.observe(SALE, m, 5, {LIMIT: 2})
    evaluation = det.evaluate((m + 1) * 60)
    assert [f.verdict for f in evaluation.findings] == [Verdict.HOLD]


def test_3_of_10_against_a_2_percent_baseline_at_the_minimum_count_does_not_page() -> None:
    """p = 8.6e-4: over the volume and ratio floors, but not significant at alpha 1e-4."""
    thresholds = SpikeThresholds(min_count=3)
    det = SpikeDetector(
        DetectorConfig(thresholds={ErrorClass.PER_USER_MARKETING_LIMIT: thresholds})
    )
    book = AlertBook()
    for hour in range(24):
        det.observe(SALE, M0 + hour * 60, 100, {LIMIT: 2})  # 2% over 24 h
    m = M0 + DAY_MINUTES + 3
    det.observe(SALE, m, 10, {LIMIT: 3})
    evaluation = det.evaluate((m + 1) * 60)
    (finding,) = evaluation.findings
    assert finding.verdict is Verdict.HOLD
    assert finding.evidence.p_value == pytest.approx(8.6e-4, rel=0.2)
    assert run(det, book, m, m + 10) == []


def test_a_clear_spike_on_a_large_template_fires_on_the_first_evaluation() -> None:
    """p <= fast_alpha (1e-9): no second positive minute is needed (alert within a minute)."""
    det, book = SpikeDetector(), AlertBook()
    feed(det, SALE, M0, DAY_MINUTES, 1000, 20)  # 2% for 24 h
    spike = M0 + DAY_MINUTES
    feed(det, SALE, spike, 10, 1000, 300)  # 30% from here on
    notes = run(det, book, spike, spike + 9)
    (minute, note), *_ = notes
    assert minute == spike  # the first evaluation that sees the spike
    assert note.headline.evidence.p_value is not None
    assert note.headline.evidence.p_value <= 1e-9
    assert note.kind is NotificationKind.FIRING
    assert note.headline.scope == SALE
    assert note.error_class is ErrorClass.PER_USER_MARKETING_LIMIT
    assert note.headline.evidence.baseline_ratio == pytest.approx(0.02, rel=0.05)
    assert [n.kind for _, n in notes] == [NotificationKind.FIRING]


def test_a_moderate_spike_still_needs_two_positive_minutes() -> None:
    """8% against a 2% baseline at 100 sends a minute: significant (alpha 1e-4) from the
    second spike minute, but not beyond 1e-9: it fires on the second positive evaluation."""
    det = SpikeDetector()
    feed(det, SALE, M0, DAY_MINUTES, 100, 2)
    spike = M0 + DAY_MINUTES
    feed(det, SALE, spike, 10, 100, 8)
    positives = [
        m
        for m in range(spike, spike + 10)
        if any(f.verdict is Verdict.POSITIVE for f in det.evaluate((m + 1) * 60).findings)
    ]
    det2, book2 = SpikeDetector(), AlertBook()
    feed(det2, SALE, M0, DAY_MINUTES, 100, 2)
    feed(det2, SALE, spike, 10, 100, 8)
    (minute, note), *_ = run(det2, book2, spike, spike + 9)
    assert minute == positives[1]  # the second consecutive positive minute
    assert note.headline.evidence.p_value is not None
    assert 1e-9 < note.headline.evidence.p_value <= 1e-4


def test_one_minute_far_off_its_baseline_fires_at_once() -> None:
    """The fast path also judges the last complete minute alone: a spike that starts late in
    a minute is diluted in the 5-minute window but clear in its own minute."""
    det, book = SpikeDetector(), AlertBook()
    feed(det, SALE, M0, DAY_MINUTES, 1800, 18)  # 30 sends/s, 1%
    spike = M0 + DAY_MINUTES
    det.observe(SALE, spike, 1800, {LIMIT: 18 + 250})  # ~20 s of a 45% spike in this minute
    (minute, note), *_ = run(det, book, spike, spike)
    assert minute == spike
    assert note.kind is NotificationKind.FIRING
    assert note.headline.evidence.window_seconds == 60


def test_a_ratio_oscillating_around_the_floor_fires_at_most_once() -> None:
    """Per-minute 3% / 7% alternating: the 5-minute ratio swings 4.6% <-> 5.4% around the 5%
    floor for an hour. Hysteresis keeps it one incident: one FIRING, no RESOLVED, no re-fire."""
    det, book = SpikeDetector(), AlertBook()
    feed(det, SALE, M0, DAY_MINUTES, 1000, 20)
    start = M0 + DAY_MINUTES
    feed(det, SALE, start, 3, 1000, 100)  # a real spike first
    for i in range(60):
        det.observe(SALE, start + 3 + i, 1000, {LIMIT: 30 if i % 2 else 70})
    notes = run(det, book, start, start + 62)
    kinds = [n.kind for _, n in notes]
    assert kinds == [NotificationKind.FIRING]


def test_noise_around_the_floor_never_fires_twice() -> None:
    """Without a lead-in spike the same oscillation may fire once, never flap."""
    det, book = SpikeDetector(), AlertBook()
    feed(det, SALE, M0, DAY_MINUTES, 1000, 20)
    start = M0 + DAY_MINUTES
    for i in range(90):
        det.observe(SALE, start + i, 1000, {LIMIT: (30, 70, 75)[i % 3]})
    kinds = [n.kind for _, n in run(det, book, start, start + 90)]
    assert kinds.count(NotificationKind.FIRING) <= 1
    assert NotificationKind.RESOLVED not in kinds


def test_resolves_once_back_at_its_own_rate_with_hysteresis() -> None:
    """6% (three times its usual 2%) keeps it firing; back at 2.5%, close to its own rate, it
    resolves after 3 clear evaluations once the spike has left the 5-minute window, and the
    resolve says why (the window against the baseline)."""
    det, book = SpikeDetector(), AlertBook()
    feed(det, SALE, M0, DAY_MINUTES, 1000, 20)
    start = M0 + DAY_MINUTES
    feed(det, SALE, start, 5, 1000, 300)
    feed(det, SALE, start + 5, 30, 1000, 60)  # 6%: still elevated, not clear
    feed(det, SALE, start + 35, 30, 1000, 25)  # 2.5%: its usual rate, give or take
    notes = run(det, book, start, start + 64)
    assert [n.kind for _, n in notes] == [NotificationKind.FIRING, NotificationKind.RESOLVED]
    resolved_minute, resolved = notes[1]
    # the window is clear of the 6% minutes from minute start+39 on; 3 clears resolve
    assert start + 35 + 4 <= resolved_minute <= start + 35 + 4 + 3
    assert resolved.headline.scope == SALE
    why = resolved.headline.resolve_evidence
    assert why is not None and why.attempts == 5000
    assert why.ratio == pytest.approx(0.025)
    assert why.p_value is not None and why.p_value > 0.01


def test_a_small_template_at_its_natural_rate_resolves_within_ten_minutes_of_the_end() -> None:
    """~60 sends per 5 minutes at 1.6%, a 45% spike for 12 minutes, traffic continuing: the
    5-minute ratio wanders (0-3 errors) but is indistinguishable from the baseline."""
    det, book = SpikeDetector(), AlertBook()
    natural = [0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0]  # ~1.6% of 12
    for m in range(120):
        det.observe(SALE, M0 + m, 12, {LIMIT: natural[m % len(natural)]})
    start = M0 + 120
    for m in range(12):
        det.observe(SALE, start + m, 12, {LIMIT: 5 + m % 2})  # ~45%
    end = start + 12
    for m in range(40):
        det.observe(SALE, end + m, 12, {LIMIT: natural[m % len(natural)]})
    notes = run(det, book, start, end + 39)
    assert [n.kind for _, n in notes] == [NotificationKind.FIRING, NotificationKind.RESOLVED]
    assert notes[0][0] - start <= 3
    assert notes[1][0] - end <= 10


def test_the_us_pause_is_counted_but_never_a_spike() -> None:
    """US-pause failures are a policy in force (see streams.core.standing), not an anomaly: the
    detector keeps their counts and never judges them as a spike."""
    det, book = SpikeDetector(), AlertBook()
    us = Scope.for_template("us_promo")
    feed(det, SALE, M0, DAY_MINUTES, 1000, 20)
    start = M0 + DAY_MINUTES
    feed(det, us, start, 5, 1000, 400, US_PAUSE)  # every US send fails
    feed(det, SALE, start, 5, 1000, 20)
    assert [n for _, n in run(det, book, start, start + 3)] == []
    assert det.window(us, start, start + 5).errors == {ErrorClass.US_MARKETING_PAUSE: 2000}
    # the per-user limit spikes on another template: its own incident
    feed(det, SALE, start + 5, 5, 1000, 300)
    later = [n for _, n in run(det, book, start + 5, start + 8)]
    firing = {n.incident: n for n in later if n.kind is NotificationKind.FIRING}
    assert set(firing) == {"spike:per_user_marketing_limit"}
    assert firing["spike:per_user_marketing_limit"].headline.scope == SALE


def test_observe_replaces_a_minute_and_corrections_apply() -> None:
    """Feeding the same bucket twice changes nothing; a corrected bucket replaces the old."""
    det = SpikeDetector()
    det.observe(SALE, M0, 100, {LIMIT: 40})
    once = det.evaluate((M0 + 1) * 60)
    det.observe(SALE, M0, 100, {LIMIT: 40})
    assert det.evaluate((M0 + 1) * 60) == once
    det.observe(SALE, M0, 100, {LIMIT: 0})  # the failures moved to another template
    assert det.evaluate((M0 + 1) * 60).findings == ()


def test_account_scope_is_the_sum_of_the_senders() -> None:
    det = SpikeDetector()
    det.observe(Scope.for_sender("111"), M0, 60, {LIMIT: 30})
    det.observe(Scope.for_sender("222"), M0, 40, {LIMIT: 10})
    det.observe(Scope.for_sender("222"), M0, 40, {LIMIT: 20})  # a correction, not an addition
    evaluation = det.evaluate((M0 + 1) * 60)
    account = next(f for f in evaluation.findings if f.scope.kind is ScopeKind.ACCOUNT)
    assert (account.evidence.count, account.evidence.attempts) == (50, 100)
    with pytest.raises(ValueError, match="derived"):
        det.observe(Scope.for_account(), M0, 1, {})


def test_minute_buckets_feed_the_detector_by_outcome_label() -> None:
    det = SpikeDetector()
    counts = {"attempted": 200, "sent": 150, "failed.per_user_marketing_limit": 50, "failed.x": 3}
    det.observe_bucket("t", "spring_sale", M0, counts)
    (finding,) = det.evaluate((M0 + 1) * 60).findings
    assert finding.scope == SALE
    assert (finding.evidence.count, finding.evidence.attempts) == (50, 200)
    assert finding.error_class is ErrorClass.PER_USER_MARKETING_LIMIT


def test_old_minutes_are_forgotten_after_the_baseline() -> None:
    det = SpikeDetector()
    det.observe(SALE, M0, 100, {LIMIT: 50})
    det.evaluate((M0 + 2 * DAY_MINUTES) * 60)
    assert det._series == {}


def test_an_addition_with_a_position_is_applied_once_per_hour_record() -> None:
    """A replayed input (same position, or an earlier one) adds nothing; the account, derived
    from the senders, skips it too."""
    det = SpikeDetector()
    sender = Scope.for_sender("111")
    det.add(sender, M0, 100, {LIMIT: 30}, position=(7, 0))
    det.add(sender, M0 + 1, 50, {LIMIT: 5}, position=(7, 1))
    det.add(sender, M0, 100, {LIMIT: 30}, position=(7, 0))  # replayed
    det.add(sender, M0 + 1, 50, {LIMIT: 5}, position=(6, 3))  # older still
    for scope in (sender, Scope.for_account()):
        assert det.totals(scope) == MinuteTally(150, {ErrorClass.PER_USER_MARKETING_LIMIT: 35})
    det.add(sender, M0, 10, {}, position=(8, 0))
    assert det.totals(sender).attempts == 160


def test_saved_hours_restore_the_same_verdicts() -> None:
    """Hour records taken from one detector and loaded into a fresh one give the same
    evaluations (baseline, window and positions included)."""
    det = SpikeDetector()
    feed(det, SALE, M0, DAY_MINUTES, 1000, 20)
    feed(det, SALE, M0 + DAY_MINUTES, 3, 1000, 300)
    changed, dropped = det.take_changes()
    assert dropped == set()
    assert {hour for _, hour in changed} == set(range(M0 // 60, (M0 + DAY_MINUTES + 3) // 60 + 1))
    assert all(len(r.minutes) <= 60 for r in changed.values())
    assert det.take_changes() == ({}, set())  # nothing changed since
    restored = SpikeDetector()
    for (scope, hour), record in changed.items():
        restored.load(scope, hour, record)
    at = (M0 + DAY_MINUTES + 3) * 60
    assert restored.evaluate(at) == det.evaluate(at)
    assert restored.kept() == det.kept()


def test_forgotten_hours_are_reported_for_deletion() -> None:
    det = SpikeDetector()
    det.add(SALE, M0, 100, {LIMIT: 50}, position=(1, 0))
    det.take_changes()
    det.evaluate((M0 + 2 * DAY_MINUTES) * 60)
    assert det.take_changes() == ({}, {(SALE, M0 // 60)})
    with pytest.raises(ValueError, match="not in hour"):
        det.load(SALE, M0 // 60, HourRecord({M0 + 60: MinuteTally(1, {})}))


# --- immediate rules ----------------------------------------------------------------------


def immediate(rules: ImmediateRules, book: AlertBook, now: int) -> list[Notification]:
    return book.apply(rules.evaluate(now))


def test_template_paused_fires_at_once_and_resolves_on_reinstated() -> None:
    rules, book = ImmediateRules(), AlertBook()
    rules.observe(TemplateStatusChange("spring_sale", "PAUSED", T0, reason="LOW_QUALITY"))
    (fired,) = immediate(rules, book, T0 + 1)
    assert (fired.kind, fired.headline.rule) == (NotificationKind.FIRING, TEMPLATE_PAUSED)
    assert fired.headline.scope == SALE
    assert "LOW_QUALITY" in fired.headline.evidence.detail
    rules.observe(TemplateStatusChange("spring_sale", "PAUSED", T0 - 600))  # stale: ignored
    rules.observe(TemplateStatusChange("spring_sale", "REINSTATED", T0 + 300))
    (resolved,) = immediate(rules, book, T0 + 301)
    assert resolved.kind is NotificationKind.RESOLVED


def test_a_disabled_template_fires_once_and_never_posts_a_resolve() -> None:
    rules, book = ImmediateRules(), AlertBook()
    rules.observe(TemplateStatusChange("spring_sale", "DISABLED", T0))
    (fired,) = immediate(rules, book, T0 + 1)
    assert fired.headline.rule == TEMPLATE_DISABLED
    assert immediate(rules, book, T0 + 2 * 86_400) == []  # expired silently


@pytest.mark.parametrize(
    ("event", "rule"),
    [
        (
            TemplateQualityChange("spring_sale", "RED", T0, previous="YELLOW"),
            "template_quality_red",
        ),
        (PhoneQualityChange("1555000", "FLAGGED", T0), "phone_quality"),
        (PhoneQualityChange("1555000", "DOWNGRADE", T0, current_limit="TIER_1K"), "phone_quality"),
        (
            AccountEvent("ACCOUNT_RESTRICTION", T0, ("RESTRICTED_BIZ_INITIATED_MESSAGING",)),
            "account_restriction",
        ),
        (AccountEvent("DISABLED_UPDATE", T0, ban_state="DISABLE"), "account_restriction"),
        (ErrorCount(131042, "1555000", T0), BILLING_ERROR),
    ],
)
def test_incident_events_fire_immediately(event: ImmediateInput, rule: str) -> None:
    rules, book = ImmediateRules(), AlertBook()
    rules.observe(event)
    (fired,) = immediate(rules, book, T0 + 60)
    assert (fired.kind, fired.headline.rule) == (NotificationKind.FIRING, rule)


def test_events_that_are_not_incidents_fire_nothing() -> None:
    rules = ImmediateRules()
    for event in (
        TemplateStatusChange("spring_sale", "APPROVED", T0),
        TemplateQualityChange("spring_sale", "YELLOW", T0),
        PhoneQualityChange("1555000", "THROUGHPUT_UPGRADE", T0),
        ErrorCount(131049, "1555000", T0, 500),
    ):
        rules.observe(event)
    assert rules.evaluate(T0 + 60).findings == ()


def test_spam_rate_limit_needs_a_burst_per_sender() -> None:
    rules, book = ImmediateRules(), AlertBook()
    rules.observe(ErrorCount(131048, "1555000", T0, 19))
    rules.observe(ErrorCount(131048, "1555999", T0, 5))
    assert immediate(rules, book, T0 + 60) == []
    rules.observe(ErrorCount(471, "1555000", T0 + 30, 1))
    (fired,) = immediate(rules, book, T0 + 60)
    assert (fired.headline.rule, fired.headline.scope) == (SPAM_BURST, Scope.for_sender("1555000"))
    assert fired.headline.evidence.count == 20
    (resolved,) = immediate(rules, book, T0 + 700)  # out of the 10-minute window
    assert resolved.kind is NotificationKind.RESOLVED


# --- resend storms ------------------------------------------------------------------------


def test_premature_resend_is_less_than_24_hours_after_a_limit_failure() -> None:
    assert is_premature_resend(T0, T0 + 3600)
    assert not is_premature_resend(T0, T0 + 86_400)
    assert not is_premature_resend(None, T0)
    assert not is_premature_resend(T0, T0 - 10)  # a send before the failure is not a resend


def test_a_resend_storm_is_one_incident_per_sending_number() -> None:
    """Resends spread over many templates are one storm of their number, naming how many
    recipients and the top templates and campaigns (never a recipient)."""
    rule, book = ResendStormRule(ResendStormConfig(threshold=10)), AlertBook()
    for i in range(9):
        rule.record(f"promo_{i % 4}", "1555000", T0 + i, f"+4477009000{i:02d}", "c-spring")
        rule.record(f"promo_{i % 4}", "1555000", T0 + 60 + i, f"+4477009000{i:02d}")  # again
    rule.record("other", "1555999", T0, "+447700900999")  # another number
    assert book.apply(rule.evaluate(T0 + 120)) == []
    rule.record("promo_9", "1555000", T0 + 100, "+447700900100", "c-spring")
    (fired,) = book.apply(rule.evaluate(T0 + 120))
    assert fired.family is Family.STORM
    assert fired.incident == "resend_storm|sender:1555000"
    assert fired.headline.scope == Scope.for_sender("1555000")
    assert fired.headline.evidence.count == 10
    assert fired.since == fired.headline.firing_since == T0 + 100  # the 10th recipient's resend
    assert "19 marketing resends to 10 recipients" in fired.headline.evidence.detail
    breakdown = fired.headline.evidence.breakdown
    assert breakdown["templates"][0] == ("promo_0", 6)
    assert breakdown["campaigns"] == [("c-spring", 10)]
    assert "+4477" not in repr(fired)  # recipients never leave the rule


def test_a_growing_storm_is_updated_and_a_replayed_resend_counts_once() -> None:
    rule, book = ResendStormRule(ResendStormConfig(threshold=10)), AlertBook()
    for i in range(10):
        rule.record("promo", "1555000", T0 + i, f"r{i}")
    assert [n.kind for n in book.apply(rule.evaluate(T0 + 60))] == [NotificationKind.FIRING]
    for i in range(10):
        rule.record("promo", "1555000", T0 + i, f"r{i}")  # signalled again: no change
    assert book.apply(rule.evaluate(T0 + 120)) == []
    for i in range(10, 25):
        rule.record("promo", "1555000", T0 + 100 + i, f"r{i}")
    (updated,) = book.apply(rule.evaluate(T0 + 180))
    assert (updated.kind, updated.headline.evidence.count) == (NotificationKind.UPDATED, 25)


def test_a_storm_read_in_any_order_starts_at_the_same_time() -> None:
    resends = [(f"t{i % 3}", T0 + 37 * i, f"r{i % 14}") for i in range(40)]
    starts = set()
    for seed in range(5):
        order = list(resends)
        random.Random(seed).shuffle(order)
        rule, book = ResendStormRule(ResendStormConfig(threshold=10)), AlertBook()
        for template, ts, who in order:
            rule.record(template, "PN", ts, who)
        fired = [
            n for n in book.apply(rule.evaluate(T0 + 3000)) if n.kind is NotificationKind.FIRING
        ]
        starts.add(fired[0].since)
    assert starts == {T0 + 37 * 9}  # the 10th distinct recipient


def test_a_send_signalled_again_replaces_itself_whatever_came_first() -> None:
    """The same send signalled with its first status's time and then with the send log's
    earlier one (and its campaign), or the other way round: one resend, at the earlier time,
    with the campaign."""
    outcomes = set()
    for order in ((0, 1), (1, 0)):
        rule, book = ResendStormRule(ResendStormConfig(threshold=10)), AlertBook()
        for i in range(10):
            signals = [(T0 + 100 + i, ""), (T0 + 90 + i, "c-spring")]
            for k in order:
                ts, campaign = signals[k]
                rule.record("promo", "1555000", ts, f"r{i}", campaign, send=1_000 + i)
        (fired,) = book.apply(rule.evaluate(T0 + 300))
        evidence = fired.headline.evidence
        outcomes.add((fired.since, evidence.count, evidence.detail))
    ((since, count, detail),) = outcomes
    assert (since, count) == (T0 + 99, 10)
    assert detail.startswith("10 marketing resends to 10 recipients")
    assert "c-spring (10)" in detail


def test_an_event_read_ahead_of_time_waits_for_it() -> None:
    """A backlog can hand the rules a PAUSED and its REINSTATED before the evaluations reach
    either: the pause still fires at its time and resolves at the reinstatement."""
    rules, book = ImmediateRules(), AlertBook()
    rules.observe(TemplateStatusChange("spring_sale", "REINSTATED", T0 + 600))
    rules.observe(TemplateStatusChange("spring_sale", "PAUSED", T0))
    assert immediate(rules, book, T0) == []  # nothing has happened yet at T0
    (fired,) = immediate(rules, book, T0 + 60)
    assert (fired.kind, fired.since) == (NotificationKind.FIRING, T0)
    assert immediate(rules, book, T0 + 600) == []
    (resolved,) = immediate(rules, book, T0 + 660)
    assert resolved.kind is NotificationKind.RESOLVED


def test_a_burst_starts_when_it_reached_its_threshold() -> None:
    rules, book = ImmediateRules(), AlertBook()
    for minute in range(5):
        rules.observe(ErrorCount(131048, "PN", T0 + 60 * minute, 5))
    (fired,) = immediate(rules, book, T0 + 600)
    assert fired.since == T0 + 4 * 60  # the end of the minute that made 20


def test_evaluations_list_only_elevated_scopes() -> None:
    det = SpikeDetector()
    det.observe(Scope.for_country("BR"), M0, 1000, {LIMIT: 1})
    assert det.evaluate((M0 + 1) * 60) == Evaluation(at=(M0 + 1) * 60, rules=frozenset({"spike"}))


def test_a_storm_that_shrinks_back_past_a_step_is_not_updated_again() -> None:
    """UPDATED says a storm grew: back down to a step it passed (and up again) is no news."""
    rule, book = ResendStormRule(ResendStormConfig(threshold=10)), AlertBook()
    for i in range(25):  # 25 recipients in the first half hour: 20+
        rule.record("promo", "1555000", T0 + 60 * i, f"r{i}")
    kinds = [n.kind for n in book.apply(rule.evaluate(T0 + 1500))]
    assert kinds == [NotificationKind.FIRING]
    for i in range(25, 55):  # the window reaches 50+
        rule.record("promo", "1555000", T0 + 1500 + 30 * i - 750, f"r{i}")
    (grew,) = book.apply(rule.evaluate(T0 + 2400))
    assert (grew.kind, grew.headline.evidence.count) == (NotificationKind.UPDATED, 55)
    # the window slides past the early resends: 30 recipients (20+), then 10 (10+)
    counts = []
    for at in (T0 + 3600 + 1500, T0 + 3600 + 2100):
        notes = book.apply(rule.evaluate(at))
        assert [n.kind for n in notes if n.kind is NotificationKind.UPDATED] == []
        (record,) = book.state.alerts.values()
        counts.append(record.finding.evidence.count)
    assert counts == [30, 10]


def test_resends_in_counts_a_scope_s_premature_resends() -> None:
    rule = ResendStormRule()
    rule.record("promo", "1555000", T0 + 10, "r1", "retry")
    rule.record("promo", "1555000", T0 + 20, "r2", "")
    rule.record("other", "1555000", T0 + 30, "r3", "retry")
    rule.record("promo", "1555999", T0 + 40, "r4", "retry")
    rule.record("promo", "1555999", T0 + 400, "r5", "retry")  # outside the window
    count = functools.partial(rule.resends_in, lo=T0, hi=T0 + 300)
    assert count(Scope.for_template("promo")) == 3
    assert count(Scope.for_template("promo", "1555999")) == 1
    assert count(Scope.for_sender("1555000")) == 3
    assert count(Scope.for_campaign("retry")) == 3
    assert count(Scope.for_account()) == 4
    assert count(Scope.for_country("GB")) == 0  # a resend's country is not kept


def _spike_finding(errors: int, attempts: int, baseline_ratio: float = 0.016) -> Finding:
    det = SpikeDetector()
    feed(det, SALE, M0, DAY_MINUTES, 100, round(100 * baseline_ratio))
    spike = M0 + DAY_MINUTES
    for m in range(spike, spike + 5):
        det.observe(SALE, m, attempts // 5, {LIMIT: errors // 5})
    evaluation = det.evaluate((spike + 5) * 60)
    (finding,) = [f for f in evaluation.findings if f.verdict is Verdict.POSITIVE]
    assert finding.evidence.window_seconds == 300
    return finding


def test_a_spike_made_of_premature_resends_is_explained_by_them() -> None:
    """A retry campaign whose resends fail again (20 of 30 in 5 minutes) is not a spike once
    its premature resends are taken out; a real spike (150 of 500) with a few resends in its
    window stays one."""
    det = SpikeDetector()
    retry = _spike_finding(errors=20, attempts=30)
    assert det.explained_by(retry, removed=30)
    assert det.explained_by(retry, removed=12)  # at most 8 of 18 left: under min_count
    assert not det.explained_by(retry, removed=0)
    assert not det.explained_by(retry, removed=2)  # 18 of 28 without them: still a spike
    real = _spike_finding(errors=150, attempts=500)
    assert not det.explained_by(real, removed=5)
    assert det.explained_by(real, removed=150)


# --- judging minutes again (late counts) ------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_judging_again_passes_over_empty_windows_and_finds_what_every_minute_does(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Late counts are judged again over the minutes they changed up to now; minutes whose
    window holds nothing are passed over. Over random sparse traffic with spikes and gaps, the
    findings are those of judging every minute."""
    import streams.core.detector as detector_module

    rng = random.Random(seed)
    det = SpikeDetector()
    for burst in range(rng.randint(1, 5)):
        start = M0 + rng.randint(0, DAY_MINUTES)
        for m in range(start, start + rng.randint(1, 90)):
            if rng.random() < 0.7:
                errors = rng.choice([0, 0, 1, 6, 12]) if burst % 2 else rng.choice([0, 1])
                det.observe(SALE, m, 12 + rng.randint(0, 30), {LIMIT: errors})
    first = M0 + rng.randint(-60, DAY_MINUTES // 2)
    last = first + rng.randint(0, 2 * DAY_MINUTES)
    passed_over = det.judge_again(SALE, first, last)

    def every_minute(kept: object, width: int, lo: int, hi: int) -> list[int]:
        return list(range(lo, hi + 1))

    monkeypatch.setattr(detector_module, "_windows_with_minutes", every_minute)
    assert passed_over == det.judge_again(SALE, first, last)


def test_a_late_count_years_back_is_judged_over_the_minutes_after_it() -> None:
    from streams.core.detector import _windows_with_minutes

    old = 1_262_304_600 // 60  # 2010-01-01T00:10:00Z
    kept = {old: None, M0: None, M0 + 1: None}
    minutes = _windows_with_minutes(kept, 5, old + 1, M0 + 10)
    assert minutes == [*range(old + 1, old + 6), *range(M0 + 1, M0 + 7)]
