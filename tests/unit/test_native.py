"""The native stage-2 loops (native/, ``streams_native``) against the Python ones they mirror.

Two messages stages, one native and one Python, get the same inputs: status facts of a few
messages in any order (sent, delivered, read, failures of every kind, unknown statuses, times
before and after the lateness horizon, marks, phone and BSUID pairs, callback data that names a
template, a campaign and a category or not, categories empty or marketing), the same raw
record again (a replay after a crash), the same status again from another webhook (Meta's
duplicate), send-log records before and after the statuses, flushes at any point. Everything
the stage writes or hands on must be the same, byte for byte: the stored state, the facts for
the recipients stage, the signals for alerting, the stats for the metrics.
"""

from __future__ import annotations

import json
import os

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import native
from streams.core import aggregates
from streams.core.facts import FactBatch, StatusFact, encode_batch
from streams.core.keys import Dimension
from streams.core.ledger import BucketDelta, Counted, MessageLedger, MessageState, Seen
from streams.core.signals import encode_signals
from streams.stages.messages import MessageStage
from streams.state import DictKeyValue, encode

# CI builds the native module (make install): there, a missing one fails instead of skipping
pytestmark = pytest.mark.skipif(
    not native.AVAILABLE and not os.environ.get("CI"), reason="streams_native is not built"
)

T0 = 1_780_000_000
WAMIDS = ["wamid.A", "wamid.B", "wamid.C"]
STATUSES = ["sent", "delivered", "read", "failed", "played", "deleted", "warning", "queued"]
FAILURES = [
    (None, None),
    ("per_user_marketing_limit", 131049),
    ("us_marketing_pause", 131049),
    ("opt_out", 131050),
    ("undeliverable", 131026),
    ("rate_limit", 130429),  # retryable: a retry plan
    ("unknown", 131000),
    ("other", None),
]
OPAQUE = [
    None,
    "",
    "spring_sale",
    json.dumps({"template": "spring_sale", "campaign": "c-7", "category": "marketing"}),
    json.dumps({"template": "welcome", "category": "utility"}),
    json.dumps({"campaign": "c-8"}),
]


@st.composite
def status_facts(draw: st.DrawFn) -> StatusFact:
    error_class, error_code = draw(st.sampled_from(FAILURES))
    status = draw(st.sampled_from(STATUSES))
    if status != "failed":
        error_class = error_code = None
    return StatusFact(
        wamid=draw(st.sampled_from(WAMIDS)),
        status=status,
        timestamp=T0 + draw(st.integers(-1_500, 600)),
        sender=draw(st.sampled_from(["106540352242922", ""])),
        phone=draw(st.sampled_from(["15551234567", "", None])),
        user_id=draw(st.sampled_from(["US.1234", None])),
        country=draw(st.sampled_from(["US", "BR", ""])),
        is_us=False,
        opaque=draw(st.sampled_from(OPAQUE)),
        category=draw(st.sampled_from([None, "", "marketing", "utility", "marketing_lite"])),
        error_code=error_code,
        error_class=error_class,
        origin=(1, draw(st.integers(0, 3)), draw(st.integers(0, 2))),
        mark=draw(st.sampled_from([0, T0 - 2_000, T0 + 100, T0 + 900])),
    )


def send_log(wamid: str, draw: st.DrawFn) -> bytes:
    record = {"wamid": wamid, "template": draw(st.sampled_from(["spring_sale", "autumn"]))}
    if draw(st.booleans()):
        record["campaign"] = "c-9"
    if draw(st.booleans()):
        record["sent_at"] = T0 + draw(st.integers(-900, 300))
    if draw(st.booleans()):
        record["category"] = "marketing"
    if draw(st.booleans()):
        record["phone_number_id"] = "106540352242922"
    return json.dumps(record).encode()


#: ("batch", offset, facts) | ("log", offset, record) | ("flush",)
Step = tuple[object, ...]


@st.composite
def scripts(draw: st.DrawFn) -> list[Step]:
    steps: list[Step] = []
    batches: list[tuple[int, list[StatusFact]]] = []
    offset = log_offset = 0
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["batch", "batch", "batch", "replay", "log", "flush"]))
        if kind == "batch":
            facts = draw(st.lists(status_facts(), min_size=1, max_size=6))
            batches.append((offset, facts))
            steps.append(("batch", offset, facts))
            offset += 1
        elif kind == "replay" and batches:
            steps.append(("batch", *draw(st.sampled_from(batches))))
        elif kind == "log":
            steps.append(("log", log_offset, send_log(draw(st.sampled_from(WAMIDS)), draw)))
            log_offset += 1
        else:
            steps.append(("flush",))
    steps.append(("flush",))
    return steps


def run(steps: list[Step], use_native: bool) -> list[object]:
    kv = DictKeyValue()
    stage = MessageStage(kv, 2, clock=lambda: float(T0), use_native=use_native)
    seen: list[object] = []
    for step in steps:
        if step[0] == "batch":
            _, offset, facts = step
            stage.handle_batch(0, offset, encode_batch(FactBatch(statuses=facts)))  # type: ignore[arg-type]
        elif step[0] == "log":
            _, offset, record = step
            stage.handle_send_log(0, offset, record, received=T0)  # type: ignore[arg-type]
        else:
            for p in stage.state.partitions():
                stage.flush(p)
            seen.append(sorted(stage.drain_outbox().items()))
            signals = stage.drain_signals()
            seen.append(None if signals is None else encode_signals(signals))
            seen.append(stage.stats.take_metric_counts())
            seen.append(sorted(stage.stats.take_unattributed().items()))
            seen.append(dict(kv.data))
    s = stage.stats
    seen.append((s.statuses, s.duplicates, s.replays, s.late, s.send_log, s.attributed_late))
    return seen


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scripts())
def test_the_native_stage_writes_and_hands_on_what_the_python_one_does(steps: list[Step]) -> None:
    assert run(steps, use_native=True) == run(steps, use_native=False)


def test_the_differential_test_sees_a_difference() -> None:
    """The comparison is not vacuous: the same script with one status changed differs."""
    fact = StatusFact(
        "wamid.A", "delivered", T0, "1065", "15551234567", None, "US", False,
        "spring_sale", "marketing", None, None, (1, 0, 0),
    )  # fmt: skip
    steps: list[Step] = [("batch", 0, [fact]), ("flush",)]
    other: list[Step] = [("batch", 0, [msgspec.structs.replace(fact, status="read")]), ("flush",)]
    assert run(steps, use_native=True) == run(steps, use_native=False)
    assert run(steps, use_native=True) != run(other, use_native=True)


@settings(max_examples=200, deadline=None)
@given(st.lists(status_facts(), min_size=1, max_size=12))
def test_the_native_codec_reads_and_writes_message_states_as_msgspec_does(
    facts: list[StatusFact],
) -> None:
    ledger, state = MessageLedger(), None
    for i, fact in enumerate(facts):
        state, _ = ledger.apply_status(state, fact, (2, i, 0), T0, "t", "marketing", "c")
        raw = encode(state)
        assert native_module().reencode_message_state(raw) == raw
    # an older save: an array of the first fields only (the rest take their defaults)
    assert state is not None
    fields = msgspec.msgpack.decode(encode(state))
    for n in (0, 5, 12, 18):
        older = msgspec.msgpack.encode(fields[:n])
        again = encode(msgspec.msgpack.decode(older, type=MessageState))
        assert native_module().reencode_message_state(older) == again


@pytest.mark.parametrize(
    "n", [0, 127, 128, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, 2**63 - 1, -1, -32, -33,
          -128, -129, -32_768, -32_769, -(2**31), -(2**31) - 1, -(2**63)]
)  # fmt: skip
def test_the_native_codec_writes_every_integer_width_as_msgspec_does(n: int) -> None:
    state = MessageState(wamid="w", stages=n, first_ts=n, applied={n: (n, n)})
    raw = encode(state)
    assert native_module().reencode_message_state(raw) == raw


@pytest.mark.parametrize("length", [0, 31, 32, 255, 256, 65_535, 65_536])
def test_the_native_codec_writes_every_string_length_as_msgspec_does(length: int) -> None:
    text = "é" * (length // 2) + "x" * (length % 2)  # bytes, not characters, set the form
    seen = {text: Seen((1, 2, 3), (4, 5, 6))}
    many = [Counted(1, text, (1, 1, 1), text)] * 17  # arrays and maps past 15 items
    state = MessageState(wamid=text, template=text, seen=seen, counted=many)
    raw = encode(state)
    assert native_module().reencode_message_state(raw) == raw


def test_the_native_codec_refuses_what_msgspec_refuses() -> None:
    for raw in (b"\x91\x01", b"\xdc\x00\x14" + b"\xc0" * 20, b"\x90\x00", b""):
        with pytest.raises(msgspec.DecodeError):
            msgspec.msgpack.decode(raw, type=MessageState)
        with pytest.raises(ValueError):
            native_module().reencode_message_state(raw)


def native_module() -> object:
    import streams_native

    return streams_native


def deltas(draw: st.DrawFn) -> list[BucketDelta]:
    return draw(
        st.lists(
            st.builds(
                BucketDelta,
                st.sampled_from(list(Dimension)),
                st.sampled_from(["spring_sale", "unknown", "x" * 40]),
                st.integers(-3, 3).map(lambda m: 29_666_000 + m),
                st.sampled_from(["attempted", "sent", "failed.opt_out"]),
                st.sampled_from([-1, 1, 2]),
                st.integers(0, 3).map(lambda v: v * 15),
            ),
            max_size=10,
        )
    )


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_the_native_writer_and_cells_take_python_deltas_as_the_python_ones_do(
    data: st.DataObject,
) -> None:
    """The classes the Python ledger's inputs (replays, the send log) go through: two batches,
    the second reading the buckets the first wrote."""
    inputs = [
        [
            (
                (200_003, data.draw(st.integers(0, 4)), data.draw(st.integers(0, 2))),
                deltas(data.draw),
                deltas(data.draw),
                data.draw(st.booleans()),
            )
            for _ in range(data.draw(st.integers(1, 5)))
        ]
        for _batch in range(2)
    ]
    results = []
    for impl in (native.implementations(True), native.implementations(False)):
        stored: dict[bytes, bytes] = {}
        writer = impl.bucket_writer(3, stored.get, "b\x1f", "\x1f")
        cells = impl.signal_cells()
        seen: list[object] = []
        for batch in inputs:
            for position, ds, shifts, replayed in batch:
                seen.append(writer.add(position, ds + shifts))
                cells.add(position[0], position[1], replayed, ds, shifts)
            writes, hours = writer.reset()
            stored.update(writes)
            seen += [writes, hours, cells.drain(), cells.take_counted()]
        results.append(seen)
    assert results[0] == results[1]


def test_the_python_implementations_are_used_when_asked() -> None:
    assert native.implementations(False).bucket_writer is aggregates.BucketWriter
    assert native.implementations(False).apply_status is None
    assert native.implementations(True).apply_status is not None
