"""Trusted event time and marks: a sender's timestamps cannot move the monitor's clock past what
Kafka saw, and every status carries its raw partition's mark (a function of the partition's
content, not of how it was read)."""

from __future__ import annotations

import orjson
import pytest

from streams.core.eventtime import (
    EARLIEST,
    GRID,
    TimeTrust,
    TimeVerdict,
    received_at,
    trust,
    visible_at,
)
from streams.core.facts import SendLogError, decode_batch
from streams.core.times import iso_utc
from streams.stages.ingest import IngestStage
from streams.stages.messages import MessageStage
from streams.state import DictKeyValue

RECEIVED = 1_767_225_600  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(
    ("ts", "expected", "verdict"),
    [
        (RECEIVED, RECEIVED, TimeVerdict.OK),  # on time
        (RECEIVED - 400 * 86_400, RECEIVED - 400 * 86_400, TimeVerdict.OK),  # old logs are fine
        (RECEIVED + 3_600, RECEIVED + 3_600, TimeVerdict.OK),  # at the skew limit
        (RECEIVED + 3_601, None, TimeVerdict.FUTURE),  # one second beyond it
        (4_102_444_800, None, TimeVerdict.FUTURE),  # 2100
        (RECEIVED * 1000 + 123, RECEIVED, TimeVerdict.MILLISECONDS),  # milliseconds
        ((RECEIVED + 7_200) * 1000, None, TimeVerdict.FUTURE),  # milliseconds, still too far
        (10**18, None, TimeVerdict.FUTURE),  # huge
        (0, None, TimeVerdict.TOO_OLD),  # a missing value, not 1970
        (-5, None, TimeVerdict.TOO_OLD),
        (EARLIEST - 1, None, TimeVerdict.TOO_OLD),
        (EARLIEST, EARLIEST, TimeVerdict.OK),
    ],
)
def test_trust_accepts_only_times_kafka_could_have_seen(
    ts: int, expected: int | None, verdict: TimeVerdict
) -> None:
    assert trust(ts, RECEIVED, TimeTrust(3_600)) == (expected, verdict)


def test_receive_time_is_never_later_than_the_monitors_clock() -> None:
    assert received_at(RECEIVED * 1000, now=RECEIVED + 10) == RECEIVED
    assert received_at((RECEIVED + 999) * 1000, now=RECEIVED + 10) == RECEIVED + 10
    assert received_at(None, now=RECEIVED + 0.7) == RECEIVED
    assert received_at(-1, now=RECEIVED) == RECEIVED


def test_visible_at_is_the_next_grid_point() -> None:
    assert visible_at(0) == GRID
    assert visible_at(RECEIVED) == RECEIVED + GRID
    assert visible_at(RECEIVED + GRID - 1) == RECEIVED + GRID
    assert visible_at(RECEIVED + GRID) == RECEIVED + 2 * GRID


def test_iso_times_for_people() -> None:
    assert iso_utc(RECEIVED) == "2026-01-01T00:00:00Z"
    assert iso_utc(10**20) == str(10**20)  # beyond datetime: shown as given, never raises


def status_body(*items: tuple[str, int]) -> bytes:
    """A Cloud API body with one ``sent`` status per (wamid, timestamp)."""
    statuses = [
        {"id": wamid, "status": "sent", "timestamp": str(ts), "recipient_id": "5511987650001"}
        for wamid, ts in items
    ]
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": "PN1"},
        "statuses": statuses,
    }
    change = {"field": "messages", "value": value}
    entry = {"id": "WABA", "changes": [change]}
    return orjson.dumps({"object": "whatsapp_business_account", "entry": [entry]})


def test_a_future_status_is_dead_lettered_and_moves_no_mark() -> None:
    stage = IngestStage(1, 1, clock=lambda: RECEIVED + 5)
    stage.assign([0], 1)
    stage.handle("raw", 0, 0, status_body(("w1", RECEIVED - 60)), RECEIVED)
    stage.handle("raw", 0, 1, status_body(("w2", 4_102_444_800), ("w3", RECEIVED - 30)), RECEIVED)
    messages, _, dead = stage.drain()
    facts = decode_batch(messages[0])
    assert [(f.wamid, f.timestamp, f.mark) for f in facts.statuses] == [
        ("w1", RECEIVED - 60, RECEIVED - 60),
        ("w3", RECEIVED - 30, RECEIVED - 30),
    ]
    assert facts.marks == {0: RECEIVED - 30}
    assert len(dead) == 1 and dead[0].partial and dead[0].offset == 1
    assert "after Kafka received the record" in dead[0].reason
    assert stage.stats.untrusted[TimeVerdict.FUTURE] == 1


def test_a_webhook_in_milliseconds_is_rejected_with_its_reason() -> None:
    """Meta sends seconds: the parser refuses milliseconds (send-log ``sent_at`` in
    milliseconds is converted, see below)."""
    stage = IngestStage(1, 1, clock=lambda: RECEIVED)
    stage.assign([0], 1)
    body = status_body(("w1", (RECEIVED - 10) * 1000), ("w2", RECEIVED - 10))
    stage.handle("raw", 0, 0, body, RECEIVED)
    messages, _, dead = stage.drain()
    assert [f.wamid for f in decode_batch(messages[0]).statuses] == ["w2"]
    assert "expected unix seconds" in dead[0].reason


def test_marks_follow_the_partitions_content_not_its_batches() -> None:
    """The same records drained in different batches carry the same marks."""
    bodies = [
        status_body(("a", RECEIVED - 50)),
        status_body(("b", RECEIVED - 90), ("c", RECEIVED - 20)),
        status_body(("d", RECEIVED - 40)),  # out of order: its mark stays at -20
    ]

    def marks(cuts: set[int]) -> dict[str, int]:
        stage = IngestStage(1, 1, clock=lambda: RECEIVED)
        stage.assign([0], 1)
        out: dict[str, int] = {}
        for offset, body in enumerate(bodies):
            stage.handle("raw", 0, offset, body, RECEIVED)
            if offset in cuts:
                for raw in stage.drain()[0].values():
                    out |= {f.wamid: f.mark for f in decode_batch(raw).statuses}
        for raw in stage.drain()[0].values():
            out |= {f.wamid: f.mark for f in decode_batch(raw).statuses}
        return out

    expected = {"a": RECEIVED - 50, "b": RECEIVED - 50, "c": RECEIVED - 20, "d": RECEIVED - 20}
    assert marks(set()) == marks({0}) == marks({0, 1, 2}) == expected


def test_marks_reach_every_messages_partition_and_resume_after_a_restart() -> None:
    stage = IngestStage(3, 3, clock=lambda: RECEIVED)
    stage.assign([0, 1], 2)
    stage.handle("raw", 1, 0, status_body(("only-one-partition", RECEIVED - 5)), RECEIVED)
    messages, _, _ = stage.drain()
    assert sorted(messages) == [0, 1, 2]  # the facts' partition and the two others
    for raw in messages.values():
        batch = decode_batch(raw)
        assert (batch.marks, batch.raw_partitions) == ({0: 0, 1: RECEIVED - 5}, 2)
    restarted = IngestStage(3, 3, clock=lambda: RECEIVED)
    restarted.assign([1], 2)
    restarted.restore_mark(1, RECEIVED - 5)  # committed with the offset
    restarted.handle("raw", 1, 1, status_body(("older", RECEIVED - 100)), RECEIVED)
    fact = next(f for raw in restarted.drain()[0].values() for f in decode_batch(raw).statuses)
    assert fact.mark == RECEIVED - 5


def test_a_partition_read_to_its_end_becomes_idle_after_the_quiet_time() -> None:
    now = [float(RECEIVED)]
    stage = IngestStage(1, 1, clock=lambda: now[0], idle_s=30)
    stage.assign([0, 1], 2)
    stage.caught_up(0, True)
    stage.caught_up(1, False)
    assert stage.idle() == []
    now[0] += 30
    assert stage.idle() == [0]  # partition 1 still has records to read
    assert stage.marks_due
    batch = decode_batch(stage.drain()[0][0])
    assert batch.idle == [0]
    assert not stage.marks_due


def send_log(wamid: str, sent_at: object) -> bytes:
    return orjson.dumps({"wamid": wamid, "template": "t1", "sent_at": sent_at})


@pytest.mark.parametrize(
    ("sent_at", "problem"),
    [
        ("inf", "not a finite number"),
        ("nan", "not a finite number"),
        ("1e400", "not a finite number"),
        ("soon", "not a number"),
        (4_102_444_800, "after Kafka received the record"),
        (0, "before 2009"),
    ],
)
def test_a_bad_sent_at_is_a_send_log_error(sent_at: object, problem: str) -> None:
    stage = MessageStage(DictKeyValue(), 1, clock=lambda: RECEIVED)
    with pytest.raises(SendLogError, match=problem):
        stage.handle_send_log(0, 0, send_log("w", sent_at), RECEIVED)


def test_send_log_marks_use_sent_at_else_the_receive_time() -> None:
    stage = MessageStage(DictKeyValue(), 1, clock=lambda: RECEIVED)
    stage.handle_send_log(0, 0, send_log("w1", RECEIVED - 100), RECEIVED)
    assert stage.meta(0).log_mark == RECEIVED - 100
    stage.handle_send_log(0, 1, send_log("w2", (RECEIVED - 50) * 1000), RECEIVED)
    assert stage.meta(0).log_mark == RECEIVED - 50
    stage.handle_send_log(0, 2, orjson.dumps({"wamid": "w3", "template": "t"}), RECEIVED - 10)
    assert stage.meta(0).log_mark == RECEIVED - 10


def test_a_raw_partition_with_nothing_read_yet_is_reported_too() -> None:
    """Alerting must hear of every raw partition, an empty one included (to learn it is
    idle), or it waits for it until its longest wait."""
    ingest = IngestStage(1, 1, clock=lambda: RECEIVED)
    ingest.assign([0, 1], 2)
    ingest.handle("raw", 1, 0, status_body(("w1", RECEIVED - 5)), RECEIVED)
    messages = MessageStage(DictKeyValue(), 1, clock=lambda: RECEIVED)
    messages.handle_batch(0, 0, ingest.drain()[0][0])
    messages.flush(0)
    signals = messages.drain_signals()
    assert signals is not None
    (report,) = signals.reports
    assert report.marks == {0: 0, 1: RECEIVED - 5}
