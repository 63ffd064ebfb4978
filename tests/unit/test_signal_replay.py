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


def campaign_records(seed: int, parts: int) -> tuple[list[bytes], dict[str, int]]:
    """A campaign's webhooks as ``parts`` messages-topic records; attempts by template."""
    campaign = generate(CampaignSpec(messages=600, garbage_ratio=0.0, opaque_ratio=1.0), seed=seed)
    ingest = IngestStage(1, 1)
    size = -(-len(campaign.payloads) // parts)
    records = []
    for start in range(0, len(campaign.payloads), size):
        for i, body in enumerate(campaign.payloads[start : start + size]):
            ingest.handle("raw", 0, start + i, body)
        records.append(ingest.drain()[0][0])
    attempted = {name: c["attempted"] for name, c in campaign.truth.templates.items()}
    return records, attempted


def flush_to(stage: MessageStage, alerting: AlertingStage, offset: int) -> None:
    """Flush partition 0; its signal reaches the alerting stage at signals offset ``offset``."""
    stage.flush(0)
    signals = stage.drain_signals()
    assert signals is not None
    alerting.handle(signals, offset=offset)


def assert_attempts(alerting: AlertingStage, attempted: dict[str, int]) -> None:
    for name, n in attempted.items():
        assert alerting.totals(Scope.for_template(name)).attempts == n, name


@pytest.mark.parametrize("signal_lost", [True, False])
def test_a_replay_after_a_crash_counts_each_input_once(signal_lost: bool) -> None:
    records, attempted = campaign_records(seed=5, parts=1)
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
    assert_attempts(alerting, attempted)


def test_a_replay_spanning_a_delivered_and_a_lost_flush_counts_each_input_once() -> None:
    """The committed offset lags the flushes: a replay re-reads two flushed batches at once,
    the first of which signalled the alerting stage and the second did not."""
    records, attempted = campaign_records(seed=6, parts=2)
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
    flush_to(second, alerting, 1)
    assert_attempts(alerting, attempted)


def test_an_input_delivered_twice_in_one_batch_is_signalled_once() -> None:
    """Kafka (through Faust's seek after recovery) can deliver a record twice; when both copies
    fall in one batch, the second is a replay of an input the batch's signal carries already."""
    records, attempted = campaign_records(seed=7, parts=2)
    stage, alerting = MessageStage(DictKeyValue(), 1), AlertingStage(clock=lambda: 0.0)
    stage.handle_batch(0, 0, records[0])
    stage.handle_batch(0, 1, records[1])
    stage.handle_batch(0, 1, records[1])  # delivered again
    flush_to(stage, alerting, 0)
    assert stage.stats.replays > 0
    assert_attempts(alerting, attempted)
    # a later batch that reads it a third time (its signal came through) adds nothing
    stage.handle_batch(0, 1, records[1])
    flush_to(stage, alerting, 1)
    assert_attempts(alerting, attempted)


def test_a_rebalance_before_the_flush_drops_the_signals_of_the_revoked_partition() -> None:
    """Inputs handled before a rebalance are read again from the committed offset: their
    signal is sent once, with the inputs' second handling."""
    records, attempted = campaign_records(seed=7, parts=2)
    stage, alerting = MessageStage(DictKeyValue(), 1), AlertingStage(clock=lambda: 0.0)
    stage.handle_batch(0, 0, records[0])
    flush_to(stage, alerting, 0)
    stage.handle_batch(0, 1, records[1])
    stage.revoke(0)  # the rebalance comes before this input's flush; it is not committed
    stage.handle_batch(0, 1, records[1])  # and is delivered again after the rebalance
    flush_to(stage, alerting, 1)
    assert_attempts(alerting, attempted)
