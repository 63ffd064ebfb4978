"""The US marketing pause is a standing condition: one incident for the account, from its first
failure, reminded daily, ended after a day without one; never a spike, never headed by one
template when many are affected."""

from __future__ import annotations

from streams.core.alerts import AlertBook, Family, NotificationKind, Scope
from streams.core.detector import SpikeDetector
from streams.core.standing import StandingConfig, StandingRule

T0 = 1_767_225_600
M0 = T0 // 60
US = "us_marketing_pause"


def feed(detector: SpikeDetector, rule: StandingRule, minute: int, recipients: range) -> None:
    """One US-pause failure per recipient in ``minute``, spread over templates and numbers."""
    for r in recipients:
        template, sender = f"promo_{r % 5}", f"PN{r % 2}"
        for scope in (Scope.for_template(template), Scope.for_sender(sender)):
            detector.add(scope, minute, 1, {US: 1})
        detector.add(Scope.for_campaign("c-spring"), minute, 1, {US: 1})
        rule.record(minute, 10_000 + r)


def test_one_incident_for_the_account_reminded_daily_and_ended_after_a_quiet_day() -> None:
    """Two hours of US recipients in every audience (minutes 3..122), evaluated as time
    passes: each minute's counts are in before that minute is judged."""
    detector, rule, book = SpikeDetector(), StandingRule(), AlertBook()
    notes = []
    for m in range(M0, M0 + 3 * 24 * 60):
        for evaluation in (detector.evaluate(m * 60), rule.evaluate(m * 60, detector)):
            notes += [(m, n) for n in book.apply(evaluation)]
        if M0 + 3 <= m < M0 + 3 + 120:
            feed(detector, rule, m, range(m % 7, m % 7 + 6))
    kinds = [(m - M0, n.kind) for m, n in notes]
    assert kinds == [
        (4, NotificationKind.FIRING),
        (4 + 24 * 60, NotificationKind.REPEAT),
        (3 + 120 + 24 * 60, NotificationKind.RESOLVED),
    ]
    fired = notes[0][1]
    assert fired.family is Family.STANDING
    assert fired.incident == "standing:us_marketing_pause"
    assert fired.headline.scope == Scope.for_account()  # not one of the five templates
    assert fired.since == (M0 + 3) * 60  # the first failure's minute
    assert fired.headline.evidence.count == 6  # distinct US recipients so far
    breakdown = fired.headline.evidence.breakdown
    assert [name for name, _ in breakdown["senders"]] == ["PN0", "PN1"]
    assert len(breakdown["templates"]) == 3  # the top three of five
    assert breakdown["campaigns"] == [("c-spring", 6)]
    assert "6 US recipients" in fired.headline.evidence.detail
    reminder = notes[1][1]
    assert reminder.headline.evidence.count == 12  # r in 0..11 over the two hours
    assert all(not n.incident.startswith("spike") for _, n in notes)


def test_recipients_beyond_what_an_hour_keeps_are_reported_as_at_least() -> None:
    detector, rule = SpikeDetector(), StandingRule(StandingConfig(recipients_per_hour=5))
    feed(detector, rule, M0, range(8))
    (finding,) = rule.evaluate((M0 + 1) * 60, detector).findings
    assert finding.evidence.count == 5
    assert "at least 5 US recipients" in finding.evidence.detail


def test_a_restored_rule_counts_the_same_recipients() -> None:
    detector, rule = SpikeDetector(), StandingRule()
    feed(detector, rule, M0, range(4))
    restored = StandingRule()
    restored.load(rule.export())
    feed(detector, restored, M0 + 61, range(2, 7))  # 2..3 again, 4..6 new
    (finding,) = restored.evaluate((M0 + 62) * 60, detector).findings
    assert finding.evidence.count == 7
