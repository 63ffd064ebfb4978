"""State stays bounded: expired windows, messages and idle recipients are removed in event
time, and Kafka's partitioner and ours agree (co-partitioning)."""

from __future__ import annotations

import random

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from streams.core.facts import FactBatch, RecipientFact, RecipientFactKind, StatusFact, encode_batch
from streams.stages import partition_for
from streams.stages.messages import MessageStage
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


def test_idle_recipients_leave_and_opted_out_ones_stay() -> None:
    kv = DictKeyValue()
    stage = RecipientStage(kv)
    rng = random.Random(0)
    position = 0
    for day in range(12):
        facts = []
        for i in range(200):
            position += 1
            facts.append(
                RecipientFact(
                    f"d{day}-{i}",
                    RecipientFactKind.MARKETING_DELIVERED,
                    T0 + day * DAY + rng.randrange(DAY),
                    (1, position, 0),
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
    keys = {k for k in kv.data[0] if not k.startswith((b"\x00", b"xr"))}
    assert b"stopper" in keys  # an opt-out lasts until resume
    assert not any(k.startswith(b"d0-") or k.startswith(b"d1-") for k in keys)
    assert any(k.startswith(b"d11-") for k in keys)
    assert len(keys) <= 10 * 200 + 1
