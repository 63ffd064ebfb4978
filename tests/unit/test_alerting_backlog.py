"""A backlog that reaches alerting in one batch is judged minute by minute, like live traffic."""

from __future__ import annotations

from streams.core.alerts import NotificationKind
from streams.simulate import spike_campaign
from streams.stages.alerting import AlertingStage
from streams.stages.ingest import IngestStage
from streams.stages.messages import MessageStage
from streams.state import DictKeyValue

N = 4


def notifications(evaluate_every: int | None) -> list[tuple[NotificationKind, str]]:
    campaign = spike_campaign()
    ingest, messages = IngestStage(N, N), MessageStage(DictKeyValue(), N)
    alerting = AlertingStage(clock=lambda: 1_000.0)
    offsets = [0] * N
    out = []
    step = evaluate_every or len(campaign.payloads)
    for start in range(0, len(campaign.payloads), step):
        for i in range(start, min(start + step, len(campaign.payloads))):
            p = i % N
            ingest.handle("raw", p, offsets[p], campaign.payloads[i])
            offsets[p] += 1
        for p, value in ingest.drain()[0].items():
            messages.handle_batch(p, start, value)
        for p in messages.state.partitions():
            messages.flush(p)
        signals = messages.drain_signals()
        if signals is not None:
            alerting.handle(signals)
        if evaluate_every:
            out += alerting.evaluate()
    out += alerting.evaluate()
    return [(n.kind, n.headline.scope.key or "") for n in out]


def test_one_batch_backlog_fires_and_resolves_like_live_traffic() -> None:
    live = notifications(evaluate_every=300)
    backlog = notifications(evaluate_every=None)
    assert live == [
        (NotificationKind.FIRING, "promo_spike"),
        (NotificationKind.RESOLVED, "promo_spike"),
    ]
    assert backlog == live
