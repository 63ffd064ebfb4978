"""Stage 2 signals the deltas of replayed inputs again; the alerting stage absorbs each input's
deltas once: a signal lost in a crash is made up by the replay, a delivered one is not doubled."""

from __future__ import annotations

import pytest

from streams.core.alerts import Scope
from streams.simulate import CampaignSpec, generate
from streams.stages.alerting import AlertingStage
from streams.stages.ingest import IngestStage
from streams.stages.messages import MessageStage
from streams.state import DictKeyValue


def inputs() -> tuple[list[bytes], dict[str, int]]:
    campaign = generate(CampaignSpec(messages=600, garbage_ratio=0.0, opaque_ratio=1.0), seed=5)
    ingest = IngestStage(1, 1)
    for offset, body in enumerate(campaign.payloads):
        ingest.handle("raw", 0, offset, body)
    batch = ingest.drain()[0][0]
    attempted = {name: c["attempted"] for name, c in campaign.truth.templates.items()}
    return [batch], attempted


@pytest.mark.parametrize("signal_lost", [True, False])
def test_a_replay_after_a_crash_counts_each_input_once(signal_lost: bool) -> None:
    records, attempted = inputs()
    kv = DictKeyValue()
    alerting = AlertingStage(clock=lambda: 0.0)

    first = MessageStage(kv, 1)
    first.handle_batch(0, 0, records[0])
    first.flush(0)  # the state is written...
    signals = first.drain_signals()
    assert signals is not None
    if not signal_lost:
        alerting.handle(signals, offset=0)  # ...and its signal reached the alerting stage
    # the worker dies before acknowledging the input: a new one replays it on the same state
    second = MessageStage(kv, 1)
    second.handle_batch(0, 0, records[0])
    second.flush(0)
    assert second.stats.replays == second.stats.statuses > 0
    replayed = second.drain_signals()
    assert replayed is not None
    alerting.handle(replayed, offset=1)

    for name, n in attempted.items():
        assert alerting.detector.totals(Scope.for_template(name)).attempts == n, name


def test_a_replay_spanning_a_delivered_and_a_lost_flush_counts_each_input_once() -> None:
    """The committed offset lags the flushes: a replay re-reads two flushed batches at once,
    the first of which signalled the alerting stage and the second did not."""
    campaign = generate(CampaignSpec(messages=600, garbage_ratio=0.0, opaque_ratio=1.0), seed=6)
    ingest = IngestStage(1, 1)
    half = len(campaign.payloads) // 2
    records = []
    for part in (campaign.payloads[:half], campaign.payloads[half:]):
        for i, body in enumerate(part):
            ingest.handle("raw", 0, len(records) * 10_000 + i, body)
        records.append(ingest.drain()[0][0])
    kv, alerting = DictKeyValue(), AlertingStage(clock=lambda: 0.0)
    first = MessageStage(kv, 1)
    for offset, record in enumerate(records):
        first.handle_batch(0, offset, record)
        first.flush(0)
        signals = first.drain_signals()
        assert signals is not None
        if offset == 0:
            alerting.handle(signals, offset=0)  # the second flush's signal is lost
    second = MessageStage(kv, 1)
    for offset, record in enumerate(records):  # one batch re-reads both
        second.handle_batch(0, offset, record)
    second.flush(0)
    replayed = second.drain_signals()
    assert replayed is not None
    alerting.handle(replayed, offset=1)
    for name, counts in campaign.truth.templates.items():
        got = alerting.detector.totals(Scope.for_template(name)).attempts
        assert got == counts["attempted"], name


def two_records() -> tuple[list[bytes], dict[str, int]]:
    campaign = generate(CampaignSpec(messages=600, garbage_ratio=0.0, opaque_ratio=1.0), seed=7)
    ingest = IngestStage(1, 1)
    half = len(campaign.payloads) // 2
    records = []
    for part in (campaign.payloads[:half], campaign.payloads[half:]):
        for i, body in enumerate(part):
            ingest.handle("raw", 0, len(records) * 10_000 + i, body)
        records.append(ingest.drain()[0][0])
    attempted = {name: c["attempted"] for name, c in campaign.truth.templates.items()}
    return records, attempted


def assert_attempts(alerting: AlertingStage, attempted: dict[str, int]) -> None:
    for name, n in attempted.items():
        assert alerting.detector.totals(Scope.for_template(name)).attempts == n, name


def test_an_input_delivered_twice_in_one_batch_is_signalled_once() -> None:
    """Kafka (through Faust's seek after recovery) can deliver a record twice; when both copies
    fall in one batch, the second is a replay of an input the batch's signal carries already."""
    records, attempted = two_records()
    stage, alerting = MessageStage(DictKeyValue(), 1), AlertingStage(clock=lambda: 0.0)
    stage.handle_batch(0, 0, records[0])
    stage.handle_batch(0, 1, records[1])
    stage.handle_batch(0, 1, records[1])  # delivered again
    stage.flush(0)
    assert stage.stats.replays > 0
    signals = stage.drain_signals()
    assert signals is not None
    alerting.handle(signals, offset=0)
    assert_attempts(alerting, attempted)
    # a later batch that reads it a third time (its signal came through) adds nothing
    stage.handle_batch(0, 1, records[1])
    stage.flush(0)
    again = stage.drain_signals()
    assert again is not None
    alerting.handle(again, offset=1)
    assert_attempts(alerting, attempted)


def test_a_rebalance_before_the_flush_drops_the_signals_of_the_revoked_partition() -> None:
    """Inputs handled before a rebalance are read again from the committed offset: their
    signal is sent once, with the inputs' second handling."""
    records, attempted = two_records()
    stage, alerting = MessageStage(DictKeyValue(), 1), AlertingStage(clock=lambda: 0.0)
    stage.handle_batch(0, 0, records[0])
    stage.flush(0)
    first = stage.drain_signals()
    assert first is not None
    alerting.handle(first, offset=0)
    stage.handle_batch(0, 1, records[1])
    stage.revoke(0)  # the rebalance comes before this input's flush; it is not committed
    stage.handle_batch(0, 1, records[1])  # and is delivered again after the rebalance
    stage.flush(0)
    second = stage.drain_signals()
    assert second is not None
    alerting.handle(second, offset=1)
    assert_attempts(alerting, attempted)
