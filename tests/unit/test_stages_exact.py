"""The three stages, run over in-memory partitions, count a generated campaign exactly,
including when a stage crashes and replays inputs (at-least-once delivery)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from streams.core.aggregates import Bucket, sum_counts
from streams.core.recipient_state import RecipientState
from streams.simulate import CampaignSpec, generate
from streams.stages import partition_for
from streams.stages.ingest import IngestStage
from streams.stages.messages import MessageStage
from streams.stages.recipients import RecipientStage
from streams.state import DictKeyValue, decode

N = 4


class Log:
    """A topic: per partition, the list of record values (offset = index)."""

    def __init__(self) -> None:
        self.parts: dict[int, list[bytes]] = {p: [] for p in range(N)}

    def append(self, partition: int, value: bytes) -> None:
        self.parts[partition].append(value)


def run(campaign, crash_every: int | None = None, seed: int = 1):
    rng = random.Random(seed)
    raw, messages, send_log, recipients = Log(), Log(), Log(), Log()
    for i, body in enumerate(campaign.payloads):
        raw.append(i % N, body)
    # half of the send-log records arrive before the statuses, half after
    early = campaign.send_log[: len(campaign.send_log) // 2]
    late = campaign.send_log[len(campaign.send_log) // 2 :]
    for key, value in early:
        send_log.append(partition_for(key.decode(), N), value)

    ingest = IngestStage(N, N)
    dead = []
    committed = dict.fromkeys(range(N), 0)
    while any(committed[p] < len(raw.parts[p]) for p in range(N)):
        for p in range(N):  # partitions are consumed side by side, as a consumer does
            start = committed[p]
            end = min(start + rng.randint(1, 50), len(raw.parts[p]))
            for off in range(start, end):
                ingest.handle("raw", p, off, raw.parts[p][off])
            if crash_every and rng.random() < 0.2 and end > start:
                # crash after producing, before committing: the same inputs come again
                for off in range(start, end):
                    ingest.handle("raw", p, off, raw.parts[p][off])
            msgs, recs, dl = ingest.drain()
            for dp, v in msgs.items():
                messages.append(dp, v)
            for dp, v in recs.items():
                recipients.append(dp, v)
            dead.extend(dl)
            committed[p] = end
    for key, value in late:
        send_log.append(partition_for(key.decode(), N), value)

    kv = DictKeyValue()
    stage = MessageStage(kv, N)

    def drive(stage, inputs, flush_out):
        pos = {(name, p): 0 for name in inputs for p in range(N)}
        while any(pos[(n, p)] < len(inputs[n][0][p]) for n in inputs for p in range(N)):
            for p in range(N):
                for name, (parts, handler) in inputs.items():
                    start = pos[(name, p)]
                    end = min(start + rng.randint(1, 30), len(parts[p]))
                    for off in range(start, end):
                        handler(p, off, parts[p][off])
                    pos[(name, p)] = end
                if crash_every and rng.random() < 0.3:
                    # flushed, then a crash before the commit: the last inputs come again
                    stage.flush(p)
                    flush_out()
                    for name, (parts, handler) in inputs.items():
                        back = max(0, pos[(name, p)] - rng.randint(1, 40))
                        for off in range(back, pos[(name, p)]):
                            handler(p, off, parts[p][off])
                stage.flush(p)
                flush_out()

    def out_messages():
        for dp, v in stage.drain_outbox().items():
            recipients.append(dp, v)

    drive(
        stage,
        {
            "messages": (messages.parts, stage.handle_batch),
            "send_log": (send_log.parts, stage.handle_send_log),
        },
        out_messages,
    )
    rkv = DictKeyValue()
    rstage = RecipientStage(rkv)
    drive(rstage, {"recipients": (recipients.parts, rstage.handle_batch)}, lambda: None)
    return kv, rkv, dead, stage


def buckets_of(kv: DictKeyValue, dim: str) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {}
    for data in kv.data.values():
        for key, raw in data.items():
            k = key.decode()
            if k.startswith("b\x1f" + dim + "\x1f"):
                name = k.split("\x1f", 4)[4]
                out.setdefault(name, Counter()).update(sum_counts([decode(raw, Bucket)]))
    return {k: +v for k, v in out.items() if +v}


@pytest.mark.parametrize("crash", [False, True])
def test_campaign_counts_equal_truth(crash: bool) -> None:
    # three campaigns and messages without one; a fifth of the callback data leaves the
    # campaign out, so half of those messages learn it from a late send-log record
    spec = CampaignSpec(messages=3_000, duplicate_ratio=0.1, campaigns=("spring", "summer", ""))
    campaign = generate(spec, seed=3)
    kv, rkv, dead, stage = run(campaign, crash_every=1 if crash else None)
    truth = campaign.truth
    assert buckets_of(kv, "t") == {k: +v for k, v in truth.templates.items()}
    assert buckets_of(kv, "s") == {k: +v for k, v in truth.senders.items()}
    assert buckets_of(kv, "c") == {k: +v for k, v in truth.countries.items()}
    assert buckets_of(kv, "g") == {k: +v for k, v in truth.campaigns.items()}
    assert set(truth.campaigns) == {"spring", "summer"}
    # a replay may repeat a dead letter: its key (topic/partition/offset) identifies it
    full = sorted({d.key: d.value for d in dead if not d.partial}.values())
    assert full == sorted(campaign.garbage)
    assert stage.stats.duplicates > 0
    for recipient, n in list(truth.marketing_delivered.items())[:200]:
        p = partition_for(recipient, N)
        state = decode(rkv.data[p][recipient.encode()], RecipientState)
        assert len(state.marketing_delivered) == n
    for recipient, n in truth.limit_failures.items():
        p = partition_for(recipient, N)
        state = decode(rkv.data[p][recipient.encode()], RecipientState)
        assert len(state.limit_failures) == n
