"""Internal records stay small: a stage reports ``full`` once a destination batch holds
MAX_BATCH_FACTS facts, so its driver sends before handling more input."""

from __future__ import annotations

from streams.core.facts import MAX_BATCH_FACTS, decode_batch
from streams.core.ledger import FACTS_PER_ITEM
from streams.simulate import CampaignSpec, generate
from streams.stages.ingest import IngestStage
from streams.stages.messages import MessageStage
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
