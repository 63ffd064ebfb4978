"""Recipient advice policy, with explicit event times (no clock, no sleeping)."""

from __future__ import annotations

from streams.core.advice import AdvicePolicy, AdviceReason, advise
from streams.core.facts import RecipientFact, RecipientFactKind
from streams.core.recipient_state import RecipientState, apply_fact

K = RecipientFactKind
T = 1_767_225_600
H = 3_600
DAY = 24 * H


def state_of(*facts: tuple[RecipientFactKind, int]) -> RecipientState:
    state = None
    for i, (kind, ts) in enumerate(facts):
        state, _ = apply_fact(state, RecipientFact("5511987654321", kind, ts, (1, i, 0)))
    assert state is not None
    return state


def test_unknown_recipient_may_be_sent_to() -> None:
    a = advise(None, "5511987654321", T, is_us=False)
    assert a.may_send_marketing and a.reasons == () and not a.known and a.not_before == T


def test_131049_blocks_for_24_hours_then_expires() -> None:
    s = state_of((K.LIMIT_FAILURE, T))
    during = advise(s, "r", T + 23 * H, is_us=False)
    assert not during.may_send_marketing
    assert during.reasons == (AdviceReason.PER_USER_LIMIT,)
    assert during.not_before == T + DAY
    after = advise(s, "r", T + DAY, is_us=False)
    assert after.may_send_marketing and after.reasons == ()


def test_cooldown_is_configurable() -> None:
    s = state_of((K.LIMIT_FAILURE, T))
    a = advise(s, "r", T + H, is_us=False, policy=AdvicePolicy(cooldown_s=48 * H))
    assert a.not_before == T + 48 * H


def test_a_resend_inside_the_cooldown_extends_the_block() -> None:
    s = state_of((K.LIMIT_FAILURE, T), (K.MARKETING_ATTEMPT, T + 10 * H))
    a = advise(s, "r", T + 25 * H, is_us=False)
    assert not a.may_send_marketing
    assert a.reasons == (AdviceReason.RESEND_STORM,)
    assert a.not_before == T + 34 * H
    assert advise(s, "r", T + 34 * H, is_us=False).may_send_marketing


def test_a_send_after_the_cooldown_is_not_a_resend_storm() -> None:
    s = state_of((K.LIMIT_FAILURE, T), (K.MARKETING_ATTEMPT, T + 30 * H))
    assert s.premature_resends == []


def test_opt_out_is_never_until_resume() -> None:
    s = state_of((K.PREFERENCE_STOP, T))
    a = advise(s, "r", T + 300 * DAY, is_us=False)
    assert not a.may_send_marketing and a.not_before is None and a.never_until_resume
    assert a.reasons == (AdviceReason.OPTED_OUT,)
    resumed = state_of((K.PREFERENCE_STOP, T), (K.PREFERENCE_RESUME, T + H))
    assert advise(resumed, "r", T + 2 * H, is_us=False).may_send_marketing
    # a resume older than the stop does not lift it (out-of-order webhooks)
    stale = state_of((K.PREFERENCE_RESUME, T), (K.OPT_OUT_FAILURE, T + H))
    assert not advise(stale, "r", T + 2 * H, is_us=False).may_send_marketing


def test_us_pause_is_permanent() -> None:
    s = state_of((K.US_PAUSE, T))
    for later in (T + H, T + 30 * DAY, T + 400 * DAY):
        a = advise(s, "r", later, is_us=True)
        assert not a.may_send_marketing and a.not_before is None
        assert AdviceReason.US_MARKETING_PAUSE in a.reasons


def test_repeated_131026_suppresses_for_a_week() -> None:
    s = state_of((K.UNDELIVERABLE, T), (K.UNDELIVERABLE, T + DAY), (K.UNDELIVERABLE, T + 2 * DAY))
    a = advise(s, "r", T + 2 * DAY + H, is_us=False)
    assert a.reasons == (AdviceReason.UNDELIVERABLE,) and a.not_before == T + 9 * DAY
    two = state_of((K.UNDELIVERABLE, T), (K.UNDELIVERABLE, T + DAY))
    assert advise(two, "r", T + DAY + H, is_us=False).may_send_marketing


def test_open_service_window_and_delivery_counts_are_reported() -> None:
    s = state_of(
        (K.MARKETING_DELIVERED, T - 3 * DAY),
        (K.MARKETING_DELIVERED, T - H),
        (K.INBOUND_MESSAGE, T - 2 * H),
    )
    a = advise(s, "r", T, is_us=False)
    assert a.customer_service_window_open and a.customer_service_window_open_until == T + 22 * H
    assert (a.marketing_delivered_24h, a.marketing_delivered_7d) == (1, 2)
    assert not advise(s, "r", T + DAY, is_us=False).customer_service_window_open
