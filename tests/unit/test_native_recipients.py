"""The native stage-3 step (native/src/recipient.rs) against the Python it mirrors.

Two recipients stages, one native and one Python, get the same inputs: facts of every kind for
a few recipients (a US number, a Brazilian one, a BSUID) at times days apart (so histories
leave their windows and states expire), with and without template, wamid, sending number and
campaign (empty strings too), the same position again (a replay), failures that make retry
plans and sends that cancel them, flushes at any point. Everything the stage writes or hands
on must be the same, byte for byte: the stored state, the advice and retry records, the
signals for alerting, the gauges and the stats.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import native
from streams.core.advice import AdvicePolicy, advice_record
from streams.core.engagement import EngagementPolicy
from streams.core.facts import FactBatch, RecipientFact, RecipientFactKind, encode_batch, source_id
from streams.core.geography import is_us_recipient
from streams.core.keys import recipient_key
from streams.core.recipient_state import MAX_EVENTS, RecipientState, apply_fact
from streams.core.signals import encode_signals
from streams.stages import MESSAGES, SEND_LOG
from streams.stages.recipients import RecipientStage
from streams.state import DictKeyValue, decode, encode

# CI builds the native module (make install): there, a missing one fails instead of skipping
pytestmark = pytest.mark.skipif(
    not native.AVAILABLE and not os.environ.get("CI"), reason="streams_native is not built"
)

T0 = 1_780_000_000
DAY = 86_400
K = RecipientFactKind
RECIPIENTS = ["15551234567", "5511987654321", "US.1234567890"]
SOURCES = [source_id(MESSAGES, 0), source_id(MESSAGES, 1), source_id(SEND_LOG, 0)]
OPTIONAL = [None, "", "spring_sale", "autumn"]
#: every kind, sends and failures more often (resends, plans and their cancelling need them)
KINDS = [*K, *[K.MARKETING_ATTEMPT] * 4, *[K.LIMIT_FAILURE] * 2, K.SEND_ATTEMPT]


@st.composite
def facts(draw: st.DrawFn) -> RecipientFact:
    kind = draw(st.sampled_from(KINDS))
    return RecipientFact(
        recipient=draw(st.sampled_from(RECIPIENTS[:2])),
        kind=kind,
        timestamp=T0
        + draw(st.sampled_from([-9 * DAY, -3 * DAY, -DAY - 60, 0]))
        + draw(st.integers(-7_200, 7_200)),
        position=(draw(st.sampled_from(SOURCES)), draw(st.integers(0, 9)), draw(st.integers(0, 2))),
        other=draw(st.sampled_from([None, "US.1234567890", "5511987654321"])),
        template=draw(st.sampled_from(OPTIONAL)),
        wamid=draw(st.sampled_from([None, "", "wamid.A", "wamid.B"])),
        sender=draw(st.sampled_from([None, "", "106540352242922"])),
        campaign=draw(st.sampled_from([None, "", "c-7"])),
        code=draw(st.sampled_from([None, 131049, 130429, 131026, 131000])),
    )


#: ("batch", partition, facts) | ("flush",)
Step = tuple[object, ...]


@st.composite
def scripts(draw: st.DrawFn) -> list[Step]:
    steps: list[Step] = []
    for _ in range(draw(st.integers(1, 10))):
        if draw(st.integers(0, 4)):
            batch = draw(st.lists(facts(), min_size=1, max_size=8))
            steps.append(("batch", draw(st.integers(0, 1)), batch))
        else:
            steps.append(("flush",))
    steps.append(("flush",))
    return steps


def run(steps: list[Step], use_native: bool, sources: int) -> list[object]:
    kv = DictKeyValue()
    stage = RecipientStage(kv, status_sources=sources, use_native=use_native)
    seen: list[object] = []
    for offset, step in enumerate(steps):
        if step[0] == "batch":
            _, partition, batch = step
            stage.handle_batch(partition, offset, encode_batch(FactBatch(recipients=batch)))  # type: ignore[arg-type]
            continue
        for p in sorted(stage.state.partitions()):
            seen.append(stage.changed_advice(p))
            stage.flush(p)
        seen.append(stage.drain_retries())
        signals = stage.drain_signals()
        seen.append(None if signals is None else encode_signals(signals))
        seen.append(stage.gauges([0, 1]))
        seen.append(dict(kv.data))
    seen.append(dataclasses.asdict(stage.stats))
    return seen


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scripts(), st.sampled_from([0, 2]))
def test_the_native_stage_writes_and_hands_on_what_the_python_one_does(
    steps: list[Step], sources: int
) -> None:
    assert run(steps, True, sources) == run(steps, False, sources)


def test_the_differential_test_sees_a_difference() -> None:
    """The comparison is not vacuous: one fact's kind changed changes what is compared."""
    fact = RecipientFact(RECIPIENTS[1], K.MARKETING_DELIVERED, T0, (SOURCES[0], 0, 0))
    steps: list[Step] = [("batch", 0, [fact]), ("flush",)]
    other: list[Step] = [("batch", 0, [msgspec.structs.replace(fact, kind=K.MARKETING_READ)])]
    assert run(steps, True, 0) == run(steps, False, 0)
    assert run(steps, True, 0) != run([*other, ("flush",)], True, 0)


def test_long_histories_keep_the_same_newest_entries() -> None:
    """Past MAX_EVENTS entries per list, both drop the same oldest ones."""
    n = MAX_EVENTS + 40
    batch = [
        RecipientFact(
            RECIPIENTS[1], kind, T0 + i * 60, (SOURCES[0], i, k), template="spring_sale",
            wamid=f"wamid.{i}", sender="1065",
        )
        for i in range(n)
        for k, kind in enumerate((K.MARKETING_ATTEMPT, K.MARKETING_DELIVERED, K.MARKETING_READ))
    ]  # fmt: skip
    steps: list[Step] = [("batch", 0, batch), ("flush",)]
    native_run = run(steps, True, 0)
    assert native_run == run(steps, False, 0)
    stored = native_run[-2][0]  # type: ignore[index]
    state = msgspec.msgpack.decode(stored[recipient_key(RECIPIENTS[1])])
    assert len(state[0]) == MAX_EVENTS  # marketing_delivered


@settings(max_examples=200, deadline=None)
@given(st.lists(facts(), min_size=1, max_size=12))
def test_the_native_codec_reads_and_writes_recipient_states_as_msgspec_does(
    inputs: list[RecipientFact],
) -> None:
    state = None
    for fact in inputs:
        state, _ = apply_fact(state, fact)
        raw = encode(state)
        assert native_module().reencode_recipient_state(raw) == raw
    # an older save: an array of the first fields only (the rest take their defaults)
    assert state is not None
    fields = msgspec.msgpack.decode(encode(state))
    for n in (0, 3, 11, 16, 17):
        older = msgspec.msgpack.encode(fields[:n])
        again = encode(msgspec.msgpack.decode(older, type=RecipientState))
        assert native_module().reencode_recipient_state(older) == again


def test_the_native_codec_reads_attempts_saved_with_fewer_fields() -> None:
    state = [[], [], [], 0, [], 0, 0, "", 0, None, T0, {}, [], "", [], 0, [[T0, "t"]], []]
    older = msgspec.msgpack.encode(state)
    again = encode(msgspec.msgpack.decode(older, type=RecipientState))
    assert native_module().reencode_recipient_state(older) == again


def test_the_native_codec_refuses_what_msgspec_refuses() -> None:
    for raw in (b"\x91\x01", b"\xdc\x00\x13" + b"\x90" * 19, b"\x90\x00", b"", b"\x91\x91\xa1x"):
        with pytest.raises(msgspec.DecodeError):
            msgspec.msgpack.decode(raw, type=RecipientState)
        with pytest.raises(ValueError):
            native_module().reencode_recipient_state(raw)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_the_native_wamid_hash_is_zlibs_crc32(wamid: str) -> None:
    expected = zlib.crc32(wamid.encode()) if wamid else 0
    assert native_module().wamid_hash(wamid) == expected
    assert native_module().wamid_hash(None) == 0


POLICIES = [
    AdvicePolicy(),
    AdvicePolicy(cooldown_s=3_600, resend_extension_s=7_200, undeliverable_threshold=1),
    AdvicePolicy(engagement=EngagementPolicy(recent_s=DAY, window_s=3 * DAY)),
]


#: offsets of ``now`` from a fact's time: the edges of every window the advice looks at
EDGES = [0, 3_600, 7_200, DAY, 3 * DAY, 7 * DAY, 30 * DAY]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(facts(), min_size=1, max_size=12),
    st.data(),
    st.one_of(st.sampled_from(RECIPIENTS), st.text()),
    st.sampled_from(POLICIES),
    st.sampled_from(["", "True||None|None|unknown"]),
)
def test_the_native_advice_is_the_python_advice_record(
    inputs: list[RecipientFact],
    data: st.DataObject,
    recipient: str,
    policy: AdvicePolicy,
    signature: str,
) -> None:
    """Signature and JSON record, from any history at any time (on the edges of the windows
    too), for any recipient id and policy; nothing when the signature is the one last
    published."""
    state = None
    for fact in inputs:
        state, _ = apply_fact(state, fact)
    assert state is not None
    state.advice_signature = signature
    base = data.draw(st.sampled_from([T0] + [f.timestamp for f in inputs]))
    now = base + data.draw(st.sampled_from(EDGES)) + data.draw(st.sampled_from([-1, 0, 1]))
    advise_both(state, recipient, now, policy, signature)


@pytest.mark.parametrize("kind", list(K))
def test_the_native_advice_is_the_python_one_on_every_window_edge(kind: RecipientFactKind) -> None:
    """One fact of ``kind`` (after a marketing send a day earlier), asked at each edge."""
    send = RecipientFact(
        RECIPIENTS[1], K.MARKETING_ATTEMPT, T0 - DAY + 60, (SOURCES[2], 0, 0), None,
        "spring_sale", "wamid.A", "1065",
    )  # fmt: skip
    state, _ = apply_fact(None, send)
    fact = RecipientFact(RECIPIENTS[1], kind, T0, (SOURCES[0], 0, 0), wamid="wamid.B")
    state, _ = apply_fact(state, fact)
    published = 0
    for policy in POLICIES:
        for edge in EDGES:
            for step in (-1, 0, 1):
                published += advise_both(state, RECIPIENTS[1], T0 + edge + step, policy, "")
    assert published  # (an empty signature never matches)


@pytest.mark.parametrize(
    "recipient",
    ["".join(map(chr, range(0x20))), 'a"b\\c', "\x7f\x80é€😀", "US.1234567890"],
)
def test_the_native_advice_writes_json_strings_as_msgspec_does(recipient: str) -> None:
    fact = RecipientFact(RECIPIENTS[1], K.LIMIT_FAILURE, T0, (SOURCES[0], 0, 0))
    state, _ = apply_fact(None, fact)
    assert advise_both(state, recipient, T0 + 60, AdvicePolicy(), "")


def advise_both(
    state: RecipientState, recipient: str, now: int, policy: AdvicePolicy, signature: str
) -> bool:
    """Asserts the native advice is the Python one; True when a record was published."""
    expected_signature, expected_record = advice_record(state, recipient, now, policy)
    fields = native.advice_policy_fields(policy)
    is_us = is_us_recipient(recipient)
    result = native_module().advise_recipient(encode(state), recipient, now, is_us, fields)
    if expected_signature == signature:
        assert result is None
        return False
    assert result is not None
    raw, record = result
    assert record == expected_record
    assert decode(raw, RecipientState).advice_signature == expected_signature
    return True


def native_module() -> Any:
    import streams_native

    return streams_native
