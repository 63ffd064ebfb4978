"""Late statuses: judged against the newest event time of their own input partition."""

from __future__ import annotations

from streams.core.facts import FactBatch, StatusFact, encode_batch, source_id
from streams.stages import RAW
from streams.stages.messages import MessageStage, Retention
from streams.state import DictKeyValue

T0 = 1_767_225_600


def status(wamid: str, ts: int, raw_partition: int, offset: int) -> StatusFact:
    return StatusFact(
        wamid,
        "sent",
        ts,
        "1065",
        "5511987654321",
        None,
        "BR",
        False,
        "promo",
        "marketing",
        None,
        None,
        (source_id(RAW, raw_partition), offset, 0),
    )


def run(*facts: StatusFact) -> MessageStage:
    stage = MessageStage(DictKeyValue(), 1, Retention(lateness=600))
    for offset, fact in enumerate(facts):
        batch = FactBatch(statuses=[fact], recipients=[], templates=[])
        stage.handle_batch(0, offset, encode_batch(batch))
    return stage


def test_a_status_older_than_its_partitions_watermark_minus_lateness_is_late() -> None:
    stage = run(status("w1", T0 + 3_600, 0, 1), status("w2", T0, 0, 2))
    assert stage.stats.late == 1


def test_within_the_lateness_it_still_counts() -> None:
    stage = run(status("w1", T0 + 500, 0, 1), status("w2", T0, 0, 2))
    assert stage.stats.late == 0


def test_another_input_partition_running_ahead_does_not_make_it_late() -> None:
    """One worker consumed raw partition 1 an hour ahead of raw partition 0 (a backlog)."""
    stage = run(status("w1", T0 + 3_600, 1, 1), status("w2", T0, 0, 2))
    assert stage.stats.late == 0
