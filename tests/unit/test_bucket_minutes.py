"""An outcome several statuses imply (attempted, sent, delivered) counts in the minute of the
earliest status implying it, whichever came first: the minute buckets are the same in every
arrival order, a replayed input re-derives exactly the effects it had, and the metrics count
each outcome once."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.aggregates import Bucket
from streams.core.eventtime import visible_at
from streams.core.facts import SendLogRecord, StatusFact
from streams.core.ledger import BucketDelta, Effects, MessageLedger, MessageState
from streams.simulate import Message, envelope, phone_for, status_item
from testkit.inprocess import T0, Pipeline

STATUS, SEND_LOG = 100_000, 200_000  # two input sources
BASE = 29_000_000 * 60
Cell = tuple[str, str, int, str, int]


def status(
    name: str, ts: int, error: str | None = None, mark: int = 0, origin: int = 1
) -> StatusFact:
    return StatusFact(
        wamid="wamid.A",
        status=name,
        timestamp=ts,
        sender="1065",
        phone="5511987650000",
        user_id=None,
        country="BR",
        is_us=False,
        opaque=None,
        category="marketing",
        error_code=131049 if error else None,
        error_class=error,
        origin=(origin, ts, 0),
        mark=mark,
    )


#: one input of a message: ("status", name, seconds after BASE, error, how much later than its
#: time its raw partition's mark was), ("retry<n>", ...) the same from another raw record (Meta
#: POSTed it again) or ("log", ...)
Input = tuple[str, str, int, str | None, int]
#: the template and campaign the callback data names
Opaque = tuple[str | None, str | None]


def feed(
    inputs: list[Input], opaque: Opaque, watermark: int = 0
) -> tuple[MessageState, dict[tuple[int, int, int], Effects]]:
    """Apply ``inputs`` in order (each at its own position); returns the state and the first
    effects of each position."""
    ledger = MessageLedger()
    state: MessageState | None = None
    first: dict[tuple[int, int, int], Effects] = {}
    for offset, item in enumerate(inputs):
        if item[0] == "log":
            position = (SEND_LOG, offset, 0)
            record = SendLogRecord(wamid="wamid.A", template="spring_sale", campaign="c-42")
            state, fx = ledger.apply_send_log(state, record, position, mark=BASE + 600)
        else:
            position = (STATUS, offset, 0)
            origin = 2 + int(item[0][5:]) if item[0].startswith("retry") else 1
            fact = status(item[1], BASE + item[2], item[3], BASE + item[2] + item[4], origin)
            state, fx = ledger.apply_status(state, fact, position, watermark, *opaque, None)
        first[position] = fx
    assert state is not None
    return state, first


def cells(effects: list[Effects], visible: bool = False) -> Counter[Cell]:
    """Net counts per bucket cell (``visible``: and per point from which alerting may use
    them, leaving out template "unknown", whose counts the send log moves when it is read)."""
    total: Counter[Cell] = Counter()
    for fx in effects:
        for d in fx.deltas + fx.shifts:
            if visible and d.dim == "t" and d.key == "unknown":
                continue
            total[(d.dim, d.key, d.minute, d.outcome, d.visible if visible else 0)] += d.delta
    return +total  # drops zero cells (a count and its move cancelled)


def multiset(deltas: list[BucketDelta]) -> Counter[BucketDelta]:
    return Counter(deltas)


STATUSES = st.lists(
    st.tuples(
        st.just("status"),
        st.sampled_from(["sent", "delivered", "read", "failed"]),
        st.integers(0, 600),
        st.none(),
        st.integers(0, 90),
    ),
    min_size=1,
    max_size=5,
    unique_by=lambda s: s[1],
).map(
    lambda items: [
        (kind, name, ts, "per_user_marketing_limit" if name == "failed" else None, lag)
        for kind, name, ts, _, lag in items
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    statuses=STATUSES,
    with_log=st.booleans(),
    opaque=st.sampled_from([(None, None), ("spring_sale", None), ("spring_sale", "c-42")]),
    data=st.data(),
)
def test_the_buckets_are_the_same_in_every_arrival_order(
    statuses: list[Input],
    with_log: bool,
    opaque: tuple[str | None, str | None],
    data: st.DataObject,
) -> None:
    inputs: list[Input] = [*statuses, ("log", "", 0, None, 0)] if with_log else list(statuses)
    canonical = sorted(inputs, key=lambda i: (i[0] != "log", i[2]))
    order = data.draw(st.permutations(inputs))
    _, expected = feed(canonical, opaque)
    _, got = feed(order, opaque)
    want = cells(list(expected.values()))
    assert cells(list(got.values())) == want
    # usable by alerting from the same points: a count once any status implying it in its
    # minute is read (the lowest mark among them), and the input naming its template or
    # campaign (the send log)
    assert cells(list(got.values()), True) == cells(list(expected.values()), True)
    assert all(n > 0 for n in want.values())
    # each implied outcome once, in the minute of the earliest status implying it
    times = {s[1]: s[2] for s in statuses}
    implying = {
        "attempted": ("sent", "delivered", "read", "failed"),
        "sent": ("sent", "delivered", "read"),
        "delivered": ("delivered", "read"),
    }
    for outcome, by in implying.items():
        minutes = [(BASE + t) // 60 for name, t in times.items() if name in by]
        counted = {m: n for (d, _, m, o, _), n in want.items() if d == "s" and o == outcome}
        assert counted == ({min(minutes): 1} if minutes else {}), outcome


@settings(max_examples=300, deadline=None)
@given(
    statuses=STATUSES,
    with_log=st.booleans(),
    opaque=st.sampled_from([(None, None), ("spring_sale", None), ("spring_sale", "c-42")]),
    data=st.data(),
)
def test_a_replayed_input_re_derives_the_effects_it_had(
    statuses: list[Input],
    with_log: bool,
    opaque: tuple[str | None, str | None],
    data: st.DataObject,
) -> None:
    """After every input (its shifts, the send log's move and campaign included), replaying
    any of them gives back its first deltas and shifts exactly, in their minutes then."""
    inputs: list[Input] = [*statuses, ("log", "", 0, None, 0)] if with_log else list(statuses)
    order = data.draw(st.permutations(inputs))
    state, first = feed(order, opaque)
    ledger = MessageLedger()
    for position, fx in first.items():
        offset = position[1]
        item = order[offset]
        if item[0] == "log":
            record = SendLogRecord(wamid="wamid.A", template="spring_sale", campaign="c-42")
            state, again = ledger.apply_send_log(state, record, position, mark=BASE + 600)
        else:
            fact = status(item[1], BASE + item[2], item[3], BASE + item[2] + item[4])
            state, again = ledger.apply_status(state, fact, position, 0, *opaque, None)
        assert again.replayed
        assert multiset(again.deltas) == multiset(fx.deltas), item
        assert multiset(again.shifts) == multiset(fx.shifts), item


def test_a_status_posted_twice_counts_from_the_lower_mark_whichever_copy_comes_first() -> None:
    """Meta's retry of a POST (the same status in another raw record, on a partition whose
    mark is later) read before the first copy: what the status implies counts from the first
    copy's mark, as when that copy is read first, not from the retry's (a point later)."""
    limit = "per_user_marketing_limit"
    first: Input = ("status", "failed", 50, limit, 0)
    retry: Input = ("retry0", "failed", 50, limit, 25)
    in_order = cells(list(feed([first, retry], (None, None))[1].values()), True)
    retry_first = cells(list(feed([retry, first], (None, None))[1].values()), True)
    assert retry_first == in_order
    assert {(o, v) for d, _, _, o, v in in_order if d == "s"} == {
        ("attempted", visible_at(BASE + 50)),
        ("failed." + limit, visible_at(BASE + 50)),
    }
    assert visible_at(BASE + 75) > visible_at(BASE + 50)  # the retry's point is later


RETRIED = STATUSES.flatmap(
    lambda items: st.lists(st.tuples(st.sampled_from(items), st.integers(0, 90)), max_size=3).map(
        lambda again: (
            items
            + [
                (f"retry{n}", name, ts, error, lag)
                for n, ((_, name, ts, error, _), lag) in enumerate(again)
            ]
        )
    )
)


@settings(max_examples=300, deadline=None)
@given(
    inputs=RETRIED,
    opaque=st.sampled_from([(None, None), ("spring_sale", None), ("spring_sale", "c-42")]),
    data=st.data(),
)
def test_retried_statuses_give_the_same_buckets_and_points_in_every_order(
    inputs: list[Input], opaque: tuple[str | None, str | None], data: st.DataObject
) -> None:
    """Statuses Meta POSTed more than once (each copy in its own raw record, at its own
    mark): the buckets and the points alerting may use them from are those of every order,
    and a replayed copy re-derives exactly what it did."""
    canonical = sorted(inputs, key=lambda i: (i[2], i[4], i[0]))
    order = data.draw(st.permutations(inputs))
    _, expected = feed(canonical, opaque)
    state, got = feed(order, opaque)
    assert cells(list(got.values())) == cells(list(expected.values()))
    assert cells(list(got.values()), True) == cells(list(expected.values()), True)
    ledger = MessageLedger()
    for position, fx in got.items():
        item = order[position[1]]
        origin = 2 + int(item[0][5:]) if item[0].startswith("retry") else 1
        fact = status(item[1], BASE + item[2], item[3], BASE + item[2] + item[4], origin)
        state, again = ledger.apply_status(state, fact, position, 0, *opaque, None)
        assert again.replayed
        assert multiset(again.deltas) == multiset(fx.deltas), item
        assert multiset(again.shifts) == multiset(fx.shifts), item


def test_delivered_before_sent_moves_attempted_and_sent_to_the_earlier_minute() -> None:
    _, first = feed(
        [("status", "delivered", 130, None, 0), ("status", "sent", 10, None, 0)], (None, None)
    )
    delivered, sent = first.values()
    minute = BASE // 60
    assert {(d.outcome, d.minute) for d in delivered.deltas if d.dim == "t"} == {
        ("attempted", minute + 2),
        ("sent", minute + 2),
        ("delivered", minute + 2),
    }
    assert sent.deltas == []  # nothing new was counted ...
    moved = Counter((d.dim, d.outcome, d.minute, d.delta) for d in sent.shifts)
    for outcome in ("attempted", "sent"):  # ... but both moved, in every dimension
        for dim in ("t", "s", "c"):
            assert moved[(dim, outcome, minute + 2, -1)] == 1
            assert moved[(dim, outcome, minute, 1)] == 1
    assert len(sent.shifts) == 12


def test_a_late_status_moves_nothing() -> None:
    """A status older than the allowed lateness is not bucketed, nor does it move counts."""
    inputs: list[Input] = [("status", "delivered", 3_000, None, 0), ("status", "sent", 10, None, 0)]
    _, first = feed(inputs, (None, None), watermark=BASE + 3_000)
    sent = list(first.values())[1]
    assert sent.late is False and sent.deltas == [] and sent.shifts == []


def test_the_order_of_two_partitions_changes_neither_the_buckets_nor_the_metrics() -> None:
    """Stage 2 over the in-process pipeline: one message's ``delivered`` (on raw partition 0)
    read before or after its earlier ``sent`` (partition 1): the same minute buckets, and the
    metric counts have each outcome once."""
    message = Message(
        wamid="wamid.ORDER",
        sender="PN0",
        display="15550000000",
        recipient=phone_for("BR", random.Random(1)),
        country="BR",
        template="spring_sale",
        category="marketing",
        sent_at=T0 + 10,
        statuses=[("sent", T0 + 10, None), ("delivered", T0 + 130, None)],
        opaque=True,
    )
    bodies = [
        envelope("PN0", "15550000000", [status_item(message, s, ts, c)])
        for s, ts, c in message.statuses
    ]

    def run(first: int) -> tuple[dict[bytes, dict[str, int]], dict[tuple[str, str, str], int]]:
        pipeline = Pipeline(partitions=2, wall=T0 + 200)
        for i, body in enumerate(bodies):
            pipeline.post(body, T0 + 200, i)
        for p in (first, 1 - first):
            pipeline.read_raw(p, 10)
            for q in range(2):
                pipeline.read_messages(q, 10, 0)
        stage = pipeline.messages
        buckets = {
            key: msgspec.msgpack.decode(value, type=Bucket).counts
            for p in range(2)
            for key, value in stage.state.kv.scan(p, b"b\x1f", b"b\x20")
        }
        return buckets, dict(stage.stats.take_metric_counts()[0])

    in_order, reversed_ = run(1), run(0)
    assert in_order[0] and in_order[0] == reversed_[0]
    for outcome in ("attempted", "sent", "delivered"):
        assert reversed_[1][("t", "spring_sale", outcome)] == 1
    assert in_order[1] == reversed_[1]


def test_every_order_of_three_statuses_gives_the_same_buckets() -> None:
    statuses: list[Input] = [
        ("status", "sent", 5, None, 0),
        ("status", "delivered", 70, None, 0),
        ("status", "read", 200, None, 0),
    ]
    results = {
        tuple(sorted(cells(list(feed(list(order), (None, None))[1].values())).items()))
        for order in itertools.permutations(statuses)
    }
    assert len(results) == 1
