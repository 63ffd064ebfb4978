"""State stays bounded: expired windows, messages and idle recipients are removed in event
time, and Kafka's partitioner and ours agree (co-partitioning)."""

from __future__ import annotations

import random

import msgspec
import orjson
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from streams.core.expiry import ExpiryIndex, SweepCursor
from streams.core.facts import FactBatch, RecipientFact, RecipientFactKind, StatusFact, encode_batch
from streams.stages import partition_for
from streams.stages.messages import MessageStage, Retention
from streams.stages.recipients import RecipientStage
from streams.state import DictKeyValue

DAY = 86_400
T0 = 1_767_225_600


@given(st.binary(min_size=1, max_size=80), st.integers(min_value=1, max_value=64))
def test_partition_for_matches_the_kafka_default_partitioner(key: bytes, n: int) -> None:
    text = key.decode("utf-8", "replace")
    expected = DefaultPartitioner()(text.encode(), list(range(n)), list(range(n)))
    assert partition_for(text, n) == expected


def status(wamid: str, recipient: str, ts: int, kind: str = "delivered") -> StatusFact:
    return StatusFact(
        wamid,
        kind,
        ts,
        "1065",
        recipient,
        None,
        "BR",
        False,
        '{"template":"t1","category":"marketing"}',
        "marketing",
        None,
        None,
        (1, ts, 0),
    )


def test_ten_days_of_new_messages_keep_the_message_table_bounded() -> None:
    kv = DictKeyValue()
    stage = MessageStage(kv, recipient_partitions=1)
    sizes = []
    offset = 0
    for day in range(10):
        for hour in range(24):
            ts = T0 + day * DAY + hour * 3600
            batch = FactBatch(
                statuses=[status(f"w{day}-{hour}-{i}", f"55{i}", ts) for i in range(50)],
                recipients=[],
                templates=[],
            )
            stage.handle_batch(0, offset, encode_batch(batch))
            offset += 1
            stage.flush(0)
        sizes.append(len(kv.data[0]))
    messages_per_day = 24 * 50
    # 7 days of messages (+1 day of index granularity) and 2 days of minute buckets, at most
    assert sizes[-1] < 9 * messages_per_day + 3 * 24 * 3 * 2 + 100
    assert sizes[-1] <= sizes[-2] + 50  # flat once the retention is reached
    assert stage.stats.expired_messages >= 2 * messages_per_day
    assert stage.stats.expired_buckets > 0


def _days_of_recipients(
    stage: RecipientStage, kv: DictKeyValue, days: int, kind: RecipientFactKind
) -> set[bytes]:
    """200 new recipients a day, each with one fact of ``kind``; one opt-out on day 0."""
    rng = random.Random(0)
    position = 0
    for day in range(days):
        facts = []
        for i in range(200):
            position += 1
            facts.append(
                RecipientFact(
                    f"d{day}-{i}", kind, T0 + day * DAY + rng.randrange(DAY), (1, position, 0)
                )
            )
        if day == 0:
            position += 1
            facts.append(
                RecipientFact("stopper", RecipientFactKind.PREFERENCE_STOP, T0, (1, position, 0))
            )
        stage.handle_batch(
            0, day, encode_batch(FactBatch(statuses=[], recipients=facts, templates=[]))
        )
        stage.flush(0)
    return {k for k in kv.data[0] if not k.startswith((b"\x00", b"xr"))}


def test_idle_recipients_leave_and_opted_out_ones_stay() -> None:
    kv = DictKeyValue()
    keys = _days_of_recipients(RecipientStage(kv), kv, 12, RecipientFactKind.LIMIT_FAILURE)
    assert b"stopper" in keys  # an opt-out lasts until resume
    assert not any(k.startswith(b"d0-") or k.startswith(b"d1-") for k in keys)
    assert any(k.startswith(b"d11-") for k in keys)
    assert len(keys) <= 10 * 200 + 1


def test_engaged_recipients_stay_30_days_after_their_last_marketing_delivery() -> None:
    kv = DictKeyValue()
    stage = RecipientStage(kv)
    keys = _days_of_recipients(stage, kv, 40, RecipientFactKind.MARKETING_DELIVERED)
    # the 30-day engagement window: never removed within it, gone within a day after it
    assert not any(k.startswith((b"d0-", b"d1-", b"d2-", b"d3-", b"d4-", b"d5-")) for k in keys)
    assert all(any(k.startswith(b"d%d-" % day) for k in keys) for day in range(9, 40))
    assert len(keys) <= 32 * 200 + 1
    assert stage.stats.expired >= 7 * 200


def test_a_key_touched_into_the_day_its_flush_sweeps_is_swept_the_next_day() -> None:
    # A late status (or a late send-log move) touches its key into the day the sweep is on;
    # when the same flush's sweep finishes that day, the key must still be swept later.
    store: dict[str, object] = {}
    index = ExpiryIndex("x", 0)
    cursor = SweepCursor()
    expired: list[str] = []

    def expire(key: str) -> bool:
        expired.append(key)
        return True

    index.touch("a", T0 + 10, cursor)
    index.flush(store.get, store.__setitem__)
    index.touch("late", T0 + 20, cursor)  # handled in the batch whose flush sweeps day T0
    index.sweep(cursor, T0 + 8 * DAY, 7 * DAY, 100, store.get, store.pop, expire)
    index.flush(store.get, store.__setitem__)
    assert expired == ["a"]
    index.sweep(cursor, T0 + 9 * DAY, 7 * DAY, 100, store.get, store.pop, expire)
    assert expired == ["a", "late"]
    assert store == {}  # no chunk or manifest left behind


def _unattributed(wamid: str, ts: int, offset: int) -> StatusFact:
    return msgspec.structs.replace(
        status(wamid, "5511", ts, "sent"), opaque=None, origin=(1, offset, 0)
    )


def test_a_send_log_record_after_the_bucket_retention_leaves_no_bucket_behind() -> None:
    kv = DictKeyValue()
    stage = MessageStage(kv, recipient_partitions=1)
    retention = Retention()
    offset = 0

    def statuses(*facts: StatusFact) -> None:
        nonlocal offset
        batch = FactBatch(statuses=list(facts), recipients=[], templates=[])
        stage.handle_batch(0, offset, encode_batch(batch))
        offset += 1

    statuses(_unattributed("old", T0, offset))  # counted under template "unknown"
    stage.flush(0)
    hours = retention.buckets // 3600 + 24
    for h in range(1, hours):
        statuses(_unattributed(f"w{h}", T0 + h * 3600, offset))
        stage.flush(0)
    # the send-log record comes a day after the buckets' retention, in the batch that moves
    # the event time on by a minute: it moves the old counts into buckets of an expired minute
    record = orjson.dumps({"wamid": "old", "template": "late_t", "sent_at": T0})
    stage.handle_send_log(0, 0, record)
    statuses(_unattributed("x", T0 + hours * 3600 + 60, offset))
    stage.flush(0)
    for h in range(hours + 1, hours + 72):
        statuses(_unattributed(f"w{h}", T0 + h * 3600, offset))
        stage.flush(0)
    watermark = T0 + (hours + 71) * 3600
    minutes = [int(k.split(b"\x1f")[3]) for k in kv.data[0] if k.startswith(b"b\x1f")]
    assert minutes and min(minutes) >= (watermark - retention.buckets) // 60
    assert not [k for k in kv.data[0] if b"late_t" in k]
    # every index record is of a minute the sweep has still to visit
    cursor = stage.meta(0).buckets.next_day
    assert all(int(k.split(b"\x1f")[2]) >= cursor for k in kv.data[0] if k.startswith(b"xb"))


def test_a_send_log_record_whose_statuses_never_come_expires() -> None:
    kv = DictKeyValue()
    stage = MessageStage(kv, recipient_partitions=1)
    days = Retention().messages // DAY + 2
    for day in range(days + 1):
        batch = FactBatch(statuses=[status(f"w{day}", "5511", T0 + day * DAY)], recipients=[])
        stage.handle_batch(0, day, encode_batch(batch))
        if day == 0:  # no sent_at, and no status ever comes for this wamid
            stage.handle_send_log(0, 0, orjson.dumps({"wamid": "lonely", "template": "t"}))
        stage.flush(0)
    assert b"m\x1fw0" not in kv.data[0]  # the retention has passed for day 0's messages
    assert b"m\x1flonely" not in kv.data[0]
