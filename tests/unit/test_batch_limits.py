"""Internal records stay small: a stage reports ``full`` once a destination batch holds
MAX_BATCH_FACTS facts, so its driver sends before handling more input."""

from __future__ import annotations

from streams.core.facts import (
    MAX_BATCH_FACTS,
    FactBatch,
    RecipientFact,
    RecipientFactKind,
    decode_batch,
    encode_batch,
)
from streams.core.ledger import FACTS_PER_ITEM
from streams.core.signals import MAX_SIGNAL_ITEMS, SignalBatch, encode_signals
from streams.simulate import CampaignSpec, generate
from streams.stages import MESSAGES
from streams.stages.ingest import IngestStage
from streams.stages.messages import MessageStage
from streams.stages.recipients import RecipientStage
from streams.state import DictKeyValue

KAFKA_DEFAULT_MAX_MESSAGE = 1_048_588  # broker message.max.bytes default


def test_stages_report_full_and_every_record_fits_kafkas_default_limit() -> None:
    campaign = generate(CampaignSpec(messages=6_000, batch_ratio=0.5, garbage_ratio=0.0), seed=3)
    ingest, messages = IngestStage(1, 1), MessageStage(DictKeyValue(), 1)
    records: list[bytes] = []
    outbox: list[bytes] = []
    fulls = statuses = 0

    def drain_ingest() -> None:
        nonlocal fulls
        for value in ingest.drain()[0].values():
            records.append(value)
            messages.handle_batch(0, len(records) - 1, value)
            if messages.full:
                fulls += 1
                outbox.extend(messages.drain_outbox().values())
                assert not messages.full

    for offset, body in enumerate(campaign.payloads):
        ingest.handle("raw", 0, offset, body)
        if ingest.full:
            drain_ingest()
            assert not ingest.full
    drain_ingest()
    outbox.extend(messages.drain_outbox().values())
    for value in records:
        batch = decode_batch(value)
        statuses += len(batch.statuses)
        # one record: at most the limit plus the last body's statuses (one webhook's worth)
        assert len(batch.statuses) + len(batch.templates) <= MAX_BATCH_FACTS + 100
        assert len(value) < KAFKA_DEFAULT_MAX_MESSAGE
    for value in outbox:
        # the check runs between input records: one record's facts (at most FACTS_PER_ITEM
        # per status) can come on top of a batch just under the limit
        facts = len(decode_batch(value).recipients)
        assert facts <= MAX_BATCH_FACTS + FACTS_PER_ITEM * (MAX_BATCH_FACTS + 100)
        assert len(value) < KAFKA_DEFAULT_MAX_MESSAGE
    assert statuses == ingest.stats.statuses  # nothing lost by draining early
    assert len(records) > 5 and fulls > 0  # the limit was reached, on both stages


def test_stage_2_reports_full_before_its_signals_grow_large() -> None:
    """A backlog read in one batch (the worker's batches end after 10,000 input records, each
    up to MAX_BATCH_FACTS statuses) made a signals record over 1 MB, which Kafka refused: the
    messages agent crashed and the batch's counts never reached alerting. The stage reports
    ``full`` once its signals hold MAX_SIGNAL_ITEMS items."""
    spec = CampaignSpec(
        messages=30_000,
        templates=200,
        duration=24 * 3600,
        garbage_ratio=0.0,
        campaigns=("a", "b", "c", "d", "e"),
    )
    campaign = generate(spec, seed=11)
    # 32 recipients partitions: the outbox's own limit (per partition) comes late
    ingest, messages = IngestStage(1, 1), MessageStage(DictKeyValue(), 32)
    records: list[bytes] = []
    for offset, body in enumerate(campaign.payloads):
        ingest.handle("raw", 0, offset, body)
        if ingest.full:
            records += ingest.drain()[0].values()
    records += ingest.drain()[0].values()
    signals: list[SignalBatch] = []

    def flush() -> None:
        messages.flush(0)
        messages.drain_outbox()
        batch = messages.drain_signals()
        assert batch is not None
        signals.append(batch)

    for offset, value in enumerate(records):
        before = len(messages._cells)
        messages.handle_batch(0, offset, value)
        one_record = len(messages._cells) - before
        if messages.full:
            flush()
            assert not messages.full
    flush()
    assert len(signals) > 2 and sum(b.items() for b in signals) > 2 * MAX_SIGNAL_ITEMS
    for batch in signals:
        # the check runs between input records: one record's items can come on top
        assert batch.items() <= MAX_SIGNAL_ITEMS + max(one_record, 2_000)
        assert len(encode_signals(batch)) < KAFKA_DEFAULT_MAX_MESSAGE // 2


def test_stage_3_reports_full_before_its_resend_signals_grow_large() -> None:
    """A resend storm read as a backlog: every recipient resent within 24 h of its 131049."""
    stage = RecipientStage(DictKeyValue())
    resends: list[int] = []
    fulls = 0
    kinds = (
        (RecipientFactKind.LIMIT_FAILURE, 1_780_000_000),
        (RecipientFactKind.MARKETING_ATTEMPT, 1_780_003_600),  # an hour later: premature
    )
    for offset in range(8):
        facts = [
            RecipientFact(
                f"5511{offset:02d}{i:07d}",
                kind,
                ts,
                (MESSAGES * 100_000, offset, i * 16 + k),
                template="spring_sale",
                wamid=f"w{offset}.{i}.{k}",
                sender="106540352242922",
                code=131049,
            )
            for i in range(1_000)
            for k, (kind, ts) in enumerate(kinds)
        ]
        stage.handle_batch(0, offset, encode_batch(FactBatch(recipients=facts)))
        if stage.full:
            fulls += 1
            stage.flush(0)
            batch = stage.drain_signals()
            assert batch is not None and not stage.full
            resends.append(len(batch.resends))
            assert len(encode_signals(batch)) < KAFKA_DEFAULT_MAX_MESSAGE // 2
    assert fulls >= 2 and all(MAX_SIGNAL_ITEMS <= n < MAX_SIGNAL_ITEMS + 1_000 for n in resends)
