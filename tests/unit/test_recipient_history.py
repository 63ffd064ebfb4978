"""A recipient's history gives the same answers in any arrival order: advice (resend storms
included), premature-resend signals (each once) and engagement, checked against a generated
history's truth through the three stages in process."""

from __future__ import annotations

import itertools

import msgspec
import pytest
from history_support import (
    DAY,
    HOUR,
    Pipeline,
    expected_engagement,
    expected_group,
    inputs_in_order,
    premature_sends,
)

from streams.core.advice import AdviceReason, advise
from streams.core.audience import verdict
from streams.core.facts import FactBatch, RecipientFact, RecipientFactKind, encode_batch
from streams.core.keys import recipient_key
from streams.core.signals import recipient_digest
from streams.simulate_history import HistorySpec, RecipientTruth, generate_history
from streams.stages.recipients import RecipientStage
from streams.state import DictKeyValue

K = RecipientFactKind
T = 1_767_225_600
R = "5511987654321"
ORDERS = ("send_log_first", "send_log_last", "interleaved")


@pytest.fixture(scope="module")
def history():
    return generate_history(HistorySpec(recipients=240), seed=5)


@pytest.fixture(scope="module")
def pipelines(history):
    out = {}
    for order in ORDERS:
        pipeline = Pipeline()
        pipeline.feed(inputs_in_order(history, order), chunk=37)
        out[order] = pipeline
    return out


def test_engagement_and_tiers_equal_the_truth(history, pipelines) -> None:
    pipeline = pipelines["send_log_last"]
    tiers = set()
    at = history.end  # (its events keep an hour away from the windows' edges)
    for recipient, truth in history.truth.items():
        expected = expected_engagement(truth, at)
        got = msgspec.to_builtins(pipeline.advice(recipient, at).engagement)
        got.pop("customer_service_window_open")
        assert got == expected, truth.persona
        tiers.add(got["tier"])
    assert tiers == {"engaged", "cooling", "unengaged", "unknown"}


def test_groups_and_not_before_equal_the_truth(history, pipelines) -> None:
    pipeline = pipelines["interleaved"]
    groups = set()
    for at in (history.end, history.end - 12 * HOUR, history.end - 3 * DAY):
        for recipient, truth in history.truth.items():
            v = verdict(0, pipeline.advice(recipient, at, truth.is_us), truth.country)
            assert (v.group, v.not_before) == expected_group(truth, at), (truth.persona, at)
            groups.add(v.group)
    assert groups == {"send_now", "wait", "never"}


def _expires(truth: RecipientTruth) -> int:
    """When the state may go (README: retention), from the truth."""
    times = [*truth.delivered, *truth.read, *truth.inbound, *(s for s, _, _ in truth.sends)]
    last = max([*times, *(f.ts for f in truth.failures)])
    engaged = max([*truth.delivered, *truth.read, *truth.inbound], default=0)
    return max(last + 8 * DAY, engaged + 30 * DAY)


def test_advice_is_the_same_in_every_feeding_order(history, pipelines) -> None:
    for at in (history.end, history.end - 8 * HOUR, history.end - 30 * HOUR):
        for recipient, truth in history.truth.items():
            answers = {
                order: msgspec.to_builtins(p.advice(recipient, at, truth.is_us))
                for order, p in pipelines.items()
            }
            if history.end - 2 * DAY < _expires(truth) <= history.end:
                for answer in answers.values():  # removed "within the following day"
                    answer.pop("known")
            assert len({msgspec.json.encode(a) for a in answers.values()}) == 1, answers
    storms = [t for t in history.truth.values() if t.persona == "storm"]
    for truth in storms:  # blocked until the resend + 24 h, whichever came first
        advice = pipelines["send_log_first"].advice(truth.recipient, history.end)
        assert AdviceReason.RESEND_STORM in advice.reasons
        assert advice.not_before == max(s for s, _, _ in premature_sends(truth)) + DAY


def test_each_premature_resend_is_signalled_once_with_its_sender_and_campaign(
    history, pipelines
) -> None:
    expected = {
        (recipient_digest(t.recipient), s, template)
        for t in history.truth.values()
        for s, template, _ in premature_sends(t)
    }
    assert len(expected) >= 20
    senders = {m.wamid: m.sender for m in history.messages}
    for order, pipeline in pipelines.items():
        # a send signalled again (an earlier time learned later) replaces itself in the storm
        # rule: what it keeps is one resend per send, at the earliest time signalled
        kept: dict[tuple[str, int], tuple[str, str, int]] = {}
        for r in pipeline.signals:
            assert r.send, order
            before = kept.get((r.recipient_digest, r.send))
            ts = min(r.ts, before[2]) if before else r.ts
            kept[(r.recipient_digest, r.send)] = (r.recipient_digest, r.template, ts)
        got = sorted(kept.values())
        want = sorted((d, template, s) for d, s, template in expected)
        assert [g[:2] for g in got] == [w[:2] for w in want], order
        # the send's time as known: its first status may come before its "sent" (delivery
        # delays up to 30 s) when the send log does not say
        assert all(0 <= g[2] - w[2] <= 60 for g, w in zip(got, want, strict=True)), order
        assert all(r.sender in senders.values() and r.campaign for r in pipeline.signals)


def _fact(
    kind: RecipientFactKind, ts: int, wamid: str, position: int, **kw: object
) -> RecipientFact:
    return RecipientFact(
        R,
        kind,
        ts,
        (1, position, 0),
        template="spring_sale",
        wamid=wamid,
        sender="106540352242922",
        campaign="2026-05",
        **kw,  # type: ignore[arg-type]
    )


STORM = {
    "send": lambda p: _fact(K.MARKETING_ATTEMPT, T, "wamid.A", p),
    "failure": lambda p: _fact(K.LIMIT_FAILURE, T + 2, "wamid.A", p, code=131049),
    "resend": lambda p: _fact(K.MARKETING_ATTEMPT, T + 10 * HOUR, "wamid.B", p),
    "delivered": lambda p: _fact(K.MARKETING_DELIVERED, T + 10 * HOUR + 5, "wamid.B", p),
}


@pytest.mark.parametrize("order", list(itertools.permutations(STORM)))
def test_resend_storm_advice_and_signal_in_every_order(order: tuple[str, ...]) -> None:
    stage = RecipientStage(DictKeyValue())
    facts = [STORM[name](i) for i, name in enumerate(order)]
    for offset, fact in enumerate(facts):  # one fact per input record
        stage.handle_batch(0, offset, encode_batch(FactBatch(recipients=[fact])))
        stage.flush(0)
    for fact in facts:  # a replay of every input: nothing new
        stage.handle_batch(0, 99, encode_batch(FactBatch(recipients=[fact])))
        stage.flush(0)
    signals = stage.drain_signals()
    assert signals is not None
    assert [(s.template, s.ts, s.sender, s.campaign) for s in signals.resends] == [
        ("spring_sale", T + 10 * HOUR, "106540352242922", "2026-05")
    ]
    state = stage.read(0, R)
    for at, not_before in ((T + 5 * HOUR, T + 2 + DAY), (T + 26 * HOUR, T + 34 * HOUR)):
        advice = advise(state, R, at, is_us=False)
        assert not advice.may_send_marketing and advice.not_before == not_before
    # before the resend, only the failure's cool-down
    assert advise(state, R, T + 3 * HOUR, is_us=False).reasons == (AdviceReason.PER_USER_LIMIT,)
    assert advise(state, R, T + 34 * HOUR, is_us=False).may_send_marketing
    assert stage.state.kv.get(0, recipient_key(R)) is not None


def test_a_send_learned_earlier_later_moves_to_its_earliest_time() -> None:
    """The send log's sent_at may come after the first status: the send keeps the earliest."""
    stage = RecipientStage(DictKeyValue())
    facts = [
        _fact(K.LIMIT_FAILURE, T, "wamid.A", 0, code=131049),
        _fact(K.MARKETING_ATTEMPT, T + DAY + 60, "wamid.B", 1),  # first status: after 24 h
        _fact(K.MARKETING_ATTEMPT, T + DAY - 60, "wamid.B", 2),  # sent_at: within 24 h
    ]
    stage.handle_batch(0, 0, encode_batch(FactBatch(recipients=facts)))
    state = stage.read(0, R)
    assert state is not None and [a.ts for a in state.attempts] == [T + DAY - 60]
    signals = stage.drain_signals()
    assert signals is not None and [s.ts for s in signals.resends] == [T + DAY - 60]
    assert advise(state, R, T + DAY, is_us=False).not_before == T + 2 * DAY - 60
