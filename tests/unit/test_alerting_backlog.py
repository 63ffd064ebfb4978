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


def test_a_partition_that_reports_late_is_judged_with_the_others() -> None:
    """Two messages partitions: the one without the spike reports its whole backlog first.
    Time waits for the other (until it has been quiet for idle_s), so the spike in the late
    partition's data is still judged minute by minute and fires."""
    campaign = spike_campaign()
    wall = [1_000.0]
    alerting = AlertingStage(clock=lambda: wall[0], partitions=2)
    out = []
    # partition 1: every other template; partition 0: the spiking one, reporting second
    for p, spiking in ((1, False), (0, True)):
        ingest, messages = IngestStage(1, 1), MessageStage(DictKeyValue(), 1)
        bodies = [b for b in campaign.payloads if (b"promo_spike" in b) == spiking]
        for offset, body in enumerate(bodies):
            ingest.handle("raw", 0, offset, body)
        messages.handle_batch(p, 0, ingest.drain()[0][0])
        messages.flush(p)
        signals = messages.drain_signals()
        assert signals is not None
        signals.watermarks = {p: signals.watermarks[p]}
        alerting.handle(signals)
        out += alerting.evaluate()
        wall[0] += 1.0
    assert [(n.kind, n.headline.scope.key) for n in out] == [
        (NotificationKind.FIRING, "promo_spike"),
        (NotificationKind.RESOLVED, "promo_spike"),
    ]
