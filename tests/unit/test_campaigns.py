"""Campaigns as a bucket dimension (``g``): attributed once, from the callback data or the send
log; outcomes counted before the campaign was known are added to it exactly once, and a replayed
input re-derives the deltas it had."""

from __future__ import annotations

from streams.core.facts import SendLogRecord, StatusFact
from streams.core.ledger import BucketDelta, MessageLedger, MessageState

MINUTE = 29_000_000
TS = MINUTE * 60 + 5
STATUS, SEND_LOG = 100_000, 200_000  # two input sources


def fact(status: str, ts: int = TS, error: str | None = None) -> StatusFact:
    return StatusFact(
        wamid="wamid.A",
        status=status,
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
        origin=(1, ts, 0),
    )


def g(deltas: list[BucketDelta]) -> list[tuple[str, int, str, int]]:
    return sorted((d.key, d.minute, d.outcome, d.delta) for d in deltas if d.dim == "g")


def apply(
    ledger: MessageLedger,
    state: MessageState | None,
    f: StatusFact,
    offset: int,
    template: str | None = None,
    campaign: str | None = None,
) -> tuple[MessageState, list[BucketDelta]]:
    state, fx = ledger.apply_status(state, f, (STATUS, offset, 0), 0, template, None, campaign)
    return state, fx.deltas


def test_a_campaign_in_the_callback_data_counts_every_outcome_under_it() -> None:
    state, deltas = apply(MessageLedger(), None, fact("delivered"), 1, "spring_sale", "c-42")
    assert g(deltas) == [
        ("c-42", MINUTE, "attempted", 1),
        ("c-42", MINUTE, "delivered", 1),
        ("c-42", MINUTE, "sent", 1),
    ]
    assert state.campaign == "c-42"


def test_a_message_without_a_campaign_is_in_no_campaign_bucket() -> None:
    ledger = MessageLedger()
    state, deltas = apply(ledger, None, fact("sent"), 1, "spring_sale")
    state, more = apply(ledger, state, fact("read", TS + 60), 2, "spring_sale")
    record = SendLogRecord(wamid="wamid.A", template="spring_sale")
    state, fx = ledger.apply_send_log(state, record, (SEND_LOG, 0, 0))
    assert g(deltas + more + fx.deltas) == []
    assert {d.dim for d in deltas} == {"t", "s", "c"}


def test_a_late_send_log_record_adds_what_was_counted_to_its_campaign_once() -> None:
    """The template came from the callback data, the campaign only from the send log."""
    ledger = MessageLedger()
    state, _ = apply(ledger, None, fact("sent"), 1, "spring_sale")
    state, _ = apply(ledger, state, fact("failed", TS + 70, "per_user_marketing_limit"), 2, "x")
    record = SendLogRecord(wamid="wamid.A", template="spring_sale", campaign="c-42")
    state, fx = ledger.apply_send_log(state, record, (SEND_LOG, 7, 0))
    added = [
        ("c-42", MINUTE, "attempted", 1),
        ("c-42", MINUTE, "sent", 1),
        ("c-42", MINUTE + 1, "failed.per_user_marketing_limit", 1),
    ]
    assert g(fx.deltas) == added
    assert [d for d in fx.deltas if d.dim != "g"] == []  # the template was known: no move
    # a second send-log record naming another campaign changes nothing (the first one wins)
    other = SendLogRecord(wamid="wamid.A", template="spring_sale", campaign="c-99")
    state, fx2 = ledger.apply_send_log(state, other, (SEND_LOG, 8, 0))
    assert fx2.deltas == [] and state.campaign == "c-42"
    # replays re-derive what each input did when it was first applied
    _, replay = ledger.apply_send_log(state, record, (SEND_LOG, 7, 0))
    assert replay.replayed and g(replay.deltas) == added
    _, replay = ledger.apply_status(state, fact("sent"), (STATUS, 1, 0), 0, None, None, None)
    assert replay.replayed and g(replay.deltas) == []  # counted before the campaign was known
    # a status counted after the campaign is known counts under it at once, and so its replay
    state, deltas = apply(ledger, state, fact("read", TS + 200), 3)
    read = [("c-42", MINUTE + 3, "delivered", 1), ("c-42", MINUTE + 3, "read", 1)]
    assert g(deltas) == read
    _, replay = ledger.apply_status(state, fact("read"), (STATUS, 3, 0), 0, None, None, None)
    assert g(replay.deltas) == read


def test_a_send_log_record_moving_the_template_also_adds_the_campaign() -> None:
    ledger = MessageLedger()
    state, deltas = apply(ledger, None, fact("delivered"), 1)
    assert {(d.dim, d.key) for d in deltas if d.dim == "t"} == {("t", "unknown")}
    record = SendLogRecord(wamid="wamid.A", template="spring_sale", campaign="c-42")
    state, fx = ledger.apply_send_log(state, record, (SEND_LOG, 0, 0))
    by_dim = sorted((d.dim, d.key, d.delta) for d in fx.deltas)
    assert (
        by_dim
        == [("g", "c-42", 1)] * 3 + [("t", "spring_sale", 1)] * 3 + [("t", "unknown", -1)] * 3
    )
    _, replay = ledger.apply_send_log(state, record, (SEND_LOG, 0, 0))
    assert sorted((d.dim, d.key, d.delta) for d in replay.deltas) == by_dim


def test_a_later_status_naming_the_campaign_adds_the_earlier_outcomes() -> None:
    ledger = MessageLedger()
    state, _ = apply(ledger, None, fact("sent"), 1, "spring_sale")
    state, deltas = apply(ledger, state, fact("delivered", TS + 60), 2, "spring_sale", "c-7")
    assert g(deltas) == [
        ("c-7", MINUTE, "attempted", 1),
        ("c-7", MINUTE, "sent", 1),
        ("c-7", MINUTE + 1, "delivered", 1),
    ]
    _, replay = ledger.apply_status(state, fact("delivered"), (STATUS, 2, 0), 0, None, None, None)
    assert g(replay.deltas) == g(deltas)
