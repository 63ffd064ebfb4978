"""Engagement tiers: the documented rule, case by case, and its thresholds as policy."""

from __future__ import annotations

import pytest
from test_advice import state_of

from streams.core.engagement import EngagementPolicy, EngagementTier, engagement
from streams.core.facts import RecipientFactKind

K = RecipientFactKind
T = 1_767_225_600 + 60 * 86_400
H = 3_600
DAY = 24 * H


D, R, IN = K.MARKETING_DELIVERED, K.MARKETING_READ, K.INBOUND_MESSAGE


@pytest.mark.parametrize(
    ("facts", "tier"),
    [
        # a read in the last 7 days
        (((D, T - 2 * DAY), (R, T - 2 * DAY + 60)), EngagementTier.ENGAGED),
        # a message from the user in the last 7 days, nothing read
        (((D, T - 20 * DAY), (IN, T - 6 * DAY)), EngagementTier.ENGAGED),
        # exactly 7 days ago is outside the window (windows are (now - 7 d, now])
        (((D, T - 8 * DAY), (R, T - 7 * DAY)), EngagementTier.COOLING),
        # three deliveries in 30 days, none read, no message: unengaged
        (((D, T - DAY), (D, T - 10 * DAY), (D, T - 29 * DAY)), EngagementTier.UNENGAGED),
        # two deliveries are not enough to call it unengaged
        (((D, T - DAY), (D, T - 10 * DAY)), EngagementTier.COOLING),
        # a read 20 days ago keeps three unread deliveries from being unengaged
        (((R, T - 20 * DAY), (D, T - DAY), (D, T - 2 * DAY), (D, T - 3 * DAY)), "cooling"),
        # a message from the user 20 days ago: cooling, not unengaged
        (((IN, T - 20 * DAY), (D, T - DAY), (D, T - 2 * DAY), (D, T - 3 * DAY)), "cooling"),
        # nothing in the last 30 days
        (((D, T - 31 * DAY), (R, T - 31 * DAY)), EngagementTier.UNKNOWN),
        # failures and sends alone say nothing about engagement
        (((K.LIMIT_FAILURE, T - DAY), (K.MARKETING_ATTEMPT, T - DAY)), EngagementTier.UNKNOWN),
    ],
)
def test_tier_rule(facts: tuple[tuple[RecipientFactKind, int], ...], tier: str) -> None:
    assert engagement(state_of(*facts), T).tier == tier


def test_an_unknown_recipient_is_unknown() -> None:
    e = engagement(None, T)
    assert e.tier == EngagementTier.UNKNOWN and e.marketing_delivered_30d == 0


def test_counts_last_inbound_and_service_window() -> None:
    s = state_of((D, T - 2 * DAY), (D, T - 12 * DAY), (R, T - 12 * DAY + 60), (IN, T - 3 * H))
    e = engagement(s, T)
    assert (e.marketing_delivered_7d, e.marketing_delivered_30d) == (1, 2)
    assert (e.marketing_read_7d, e.marketing_read_30d) == (0, 1)
    assert e.last_inbound == T - 3 * H and e.customer_service_window_open
    assert not engagement(s, T + DAY).customer_service_window_open


def test_facts_after_now_do_not_count() -> None:
    s = state_of((D, T - DAY), (R, T - DAY + 60), (IN, T + H))
    earlier = engagement(s, T - 2 * DAY)
    assert earlier.tier == EngagementTier.UNKNOWN and earlier.last_inbound is None


def test_thresholds_are_policy() -> None:
    s = state_of((D, T - DAY), (D, T - 2 * DAY))
    assert engagement(s, T).tier == EngagementTier.COOLING
    strict = EngagementPolicy(unengaged_min_delivered=2)
    assert engagement(s, T, strict).tier == EngagementTier.UNENGAGED
    short = EngagementPolicy(recent_s=DAY)
    read = state_of((R, T - 2 * DAY))
    assert engagement(read, T).tier == EngagementTier.ENGAGED
    assert engagement(read, T, short).tier == EngagementTier.COOLING


def test_the_state_keeps_30_days_of_deliveries_and_reads() -> None:
    s = state_of(*((D, T - d * DAY) for d in range(40, -1, -1)), (R, T))
    assert len(s.marketing_delivered) == 31  # T - 30 d .. T
    assert engagement(s, T).marketing_delivered_30d == 30
