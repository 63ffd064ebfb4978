"""Each agent on the fake runtime (streams.runtime.fake), without a broker: the order in which a
flush's effects reach Kafka, what a rebalance drops and never commits, and that records Kafka
delivers again are handled once. The traffic is a small campaign with a 131049 spike, through
stage 1, 2 and 3 as the worker wires them."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import orjson
from prometheus_client import CollectorRegistry

from streams.core.advice import AdvicePolicy
from streams.core.alerts import decode_notification
from streams.core.signals import SignalBatch, decode_signals, encode_signals
from streams.metrics import MonitorMetrics
from streams.runtime import checkpoint as orders
from streams.runtime.agents import (
    AlertingAgent,
    IngestAgent,
    MessagesAgent,
    NotifierAgent,
    RecipientsAgent,
)
from streams.runtime.batching import BatchLoop
from streams.runtime.fake import TP, Event, FakeRuntime, MemoryStore, MemoryTable
from streams.stages import partition_for
from streams.stages.alerting import AlertingStage
from streams.stages.ingest import IngestStage
from streams.stages.messages import MessageStage
from streams.stages.recipients import RecipientStage
from testkit.inprocess import Clock, Pipeline, campaign, feed_live, keyless

N = 4
RAW, MESSAGES, SEND_LOG, RECIPIENTS = "raw", "messages", "send-log", "recipients"
ADVICE, RETRIES, SIGNALS, DEAD = "advice", "retries", "signals", "dead-letters"
TRAFFIC = campaign(minutes=6, per_minute=2, templates=2, spike=(1, 4, 0.5), seed=5)
END = TRAFFIC.bodies[-1][0] + 60
QUALITY = orjson.dumps(
    {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "time": END - 100,
                "changes": [
                    {
                        "field": "phone_number_quality_update",
                        "value": {
                            "display_phone_number": "15550783881",
                            "event": "FLAGGED",
                            "current_limit": "TIER_1K",
                        },
                    }
                ],
            }
        ],
    }
)


@dataclass
class World:
    rt: FakeRuntime
    clock: Clock
    metrics: MonitorMetrics
    ingest: IngestAgent
    messages: MessagesAgent
    recipients: RecipientsAgent


def world() -> World:
    rt, clock = FakeRuntime(partitions_per_topic=N), Clock(END)
    metrics = MonitorMetrics(CollectorRegistry())
    ingest_stage = IngestStage(N, N, clock=clock, idle_s=30)
    ingest_stage.assign(range(N), N)
    ingest = IngestAgent(
        ingest_stage,
        rt.checkpoint("stage 1", orders.INGEST, "ingest"),
        metrics,
        MESSAGES,
        RECIPIENTS,
    )
    messages_kv = MemoryTable(rt, "messages")
    messages = MessagesAgent(
        MessageStage(messages_kv, N, clock=clock),
        messages_kv,
        rt.checkpoint("stage 2", orders.MESSAGES, "send_log"),
        metrics,
        SEND_LOG,
        RECIPIENTS,
        wall=clock,
    )
    recipients_kv = MemoryTable(rt, "recipients")
    recipients = RecipientsAgent(
        RecipientStage(recipients_kv, status_sources=N),
        recipients_kv,
        rt.checkpoint("stage 3", orders.RECIPIENTS),
        metrics,
        AdvicePolicy(),
        ADVICE,
        RETRIES,
    )
    return World(rt, clock, metrics, ingest, messages, recipients)


async def run_ingest(w: World, extra: tuple[bytes, ...] = ()) -> None:
    """Stage 1 over the campaign's webhooks (and ``extra`` bodies), one flush; the send log
    goes to its topic as a sender produces it (keyed by wamid)."""
    offsets = [0] * N
    bodies = [body for _, body in TRAFFIC.bodies] + list(extra)
    for i, body in enumerate(bodies):
        p = keyless(i, N)
        w.ingest.handle(RAW, p, offsets[p], body, END)
        offsets[p] += 1
    for p in range(N):
        w.ingest.stage.caught_up(p, True)
    await w.ingest.flush()
    for _, wamid, value in TRAFFIC.send_log:
        w.rt.append(SEND_LOG, partition_for(wamid, N), [(wamid.encode(), value, None)])


def stage2_events(w: World) -> list[Event]:
    return [e for p in range(N) for t in (MESSAGES, SEND_LOG) for e in w.rt.events(t, p)]


async def offer(loop: BatchLoop, events: list[Event]) -> None:
    for event in events:
        await loop.offer(event)


async def run_messages(w: World) -> BatchLoop:
    loop = w.rt.loop(w.messages.handle, w.messages.flush, lambda: w.messages.full)
    await offer(loop, stage2_events(w))
    await loop.flush_pending()
    return loop


def sent_to(w: World, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    return [
        (k, v) for p in sorted(w.rt.topics.get(topic, {})) for k, v, _ in w.rt.records(topic, p)
    ]


def signal(raw: bytes | None) -> dict[str, object]:
    """A signal batch's content, each list as a sorted list (the order records came in does
    not change what was counted)."""
    batch = decode_signals(raw or b"")
    out: dict[str, object] = {}
    for name in batch.__struct_fields__:
        value = getattr(batch, name)
        out[name] = sorted(repr(x) for x in value) if isinstance(value, list) else value
    return out


async def reference() -> World:
    """Stages 1-3 once, each record handled once, one flush each: what every test must match."""
    w = world()
    await run_ingest(w)
    await run_messages(w)
    loop = w.rt.loop(w.recipients.handle, w.recipients.flush)
    await offer(loop, [e for p in range(N) for e in w.rt.events(RECIPIENTS, p)])
    await loop.flush_pending()
    return w


# -- stage 1 ----------------------------------------------------------------------------------
async def test_ingest_sends_its_outputs_then_its_dead_letters_then_its_signals() -> None:
    """Stage 1's consumer commits after the flush returns: everything is in Kafka by then."""
    w = world()
    # an unusable body (a dead letter), and a phone quality change (stage 1 signals it)
    await run_ingest(w, (b"{not json", QUALITY))
    rt = w.rt
    outputs = rt.sends_to(MESSAGES) + rt.sends_to(RECIPIENTS)
    dead, signals = rt.sends_to(DEAD), rt.sends_to(SIGNALS)
    assert outputs and len(dead) == 1 and len(signals) == 1
    assert max(outputs) < dead[0] < signals[0] == len(rt.log) - 1
    assert set(rt.steps()) == {"send"}  # no state, and the commit is the raw consumer's


# -- stage 2 ----------------------------------------------------------------------------------
async def test_messages_sends_state_and_outbox_together_then_signals_dead_letters_commit() -> None:
    w = world()
    await run_ingest(w)
    w.rt.append(SEND_LOG, 0, [(b"wamid.bad", b"{", None)])  # refused: a dead letter
    w.rt.log.clear()
    await run_messages(w)
    rt = w.rt
    assert rt.steps() == ["write state", "send", "send", "send", "commit"]
    together = {tp[0] for tp, _ in rt.log[1][1]}
    assert together == {"messages-changelog", RECIPIENTS}
    assert rt.sends_to(SIGNALS) == [2] and rt.sends_to(DEAD) == [3]
    commit = rt.log[4][1]
    assert commit == {
        TP(t, p): len(rt.records(t, p))
        for t in (MESSAGES, SEND_LOG)
        for p in range(N)
        if rt.records(t, p)
    }


async def test_messages_retries_what_kafka_refused_and_commits_only_once_all_of_it_is_in() -> None:
    """Kafka refusing the state and outbox, the signals (twice) and the dead letter: each is
    sent again until Kafka has it, and the commit comes last; the topics hold what a flush
    without refusals writes, once."""
    plain = world()
    await run_ingest(plain)
    plain.rt.append(SEND_LOG, 0, [(b"wamid.bad", b"{", None)])
    await run_messages(plain)

    w = world()
    await run_ingest(w)
    w.rt.append(SEND_LOG, 0, [(b"wamid.bad", b"{", None)])
    w.rt.log.clear()
    w.rt.refusals = {RECIPIENTS: 1, SIGNALS: 2, DEAD: 1}
    await run_messages(w)
    rt = w.rt
    assert rt.steps() == [
        "write state",
        *("refused", "send"),
        *("refused", "refused", "send"),
        *("refused", "send"),
        "commit",
    ]
    assert rt.refusals == {RECIPIENTS: 0, SIGNALS: 0, DEAD: 0}
    for topic in (RECIPIENTS, "messages-changelog", SIGNALS, DEAD):
        assert sent_to(w, topic) == sent_to(plain, topic), topic
    assert rt.committed == plain.rt.committed


async def revoked_before_flush(
    rt: FakeRuntime, agent: MessagesAgent | RecipientsAgent, events: list[Event]
) -> BatchLoop:
    """``agent`` handles ``events``; every partition is revoked before the flush."""
    loop = rt.loop(agent.handle, agent.flush)
    await offer(loop, events)
    rt.rebalance()
    for p in range(N):
        agent.revoke(p)
    await loop.flush_pending()
    return loop


async def test_messages_drops_a_revoked_partitions_batch_and_never_commits_it() -> None:
    """A rebalance before the flush: the partition's unflushed state is dropped, nothing of the
    batch is committed; read again from the committed offset, the state comes out exact."""
    ref, w = await reference(), world()
    await run_ingest(w)
    events = stage2_events(w)
    loop = await revoked_before_flush(w.rt, w.messages, events)
    assert "commit" not in w.rt.steps()
    assert not any(w.messages.state.store.values())  # type: ignore[attr-defined]
    await offer(loop, events)  # the new generation reads from the committed offsets
    await loop.flush_pending()
    assert w.rt.steps()[-1] == "commit"
    assert w.messages.state.store == ref.messages.state.store  # type: ignore[attr-defined]
    # the revoked batch's counts were never signalled (the first flush's signal carries marks
    # only): stage 2's signal is the reference's
    assert sent_to(w, SIGNALS)[1] == sent_to(ref, SIGNALS)[0]
    # the outbox built before the rebalance went out too (it is by destination): stage 3
    # applies those facts once, and its state comes out exact
    assert len(sent_to(w, RECIPIENTS)) > len(sent_to(ref, RECIPIENTS))
    assert await recipients_store(w) == ref.recipients.state.store  # type: ignore[attr-defined]


async def recipients_store(w: World) -> dict[int, dict[bytes, bytes]]:
    """Stage 3's state after it read everything stage 2 sent it."""
    loop = w.rt.loop(w.recipients.handle, w.recipients.flush)
    await offer(loop, [e for p in range(N) for e in w.rt.events(RECIPIENTS, p)])
    await loop.flush_pending()
    return w.recipients.state.store  # type: ignore[attr-defined,no-any-return]


async def test_messages_handles_records_delivered_again_once() -> None:
    """Kafka delivers records again (after a resume and seek) in the same generation, and a
    gap is read again from the first missing record: the state and the signals are those of
    each record handled once."""
    ref, w = await reference(), world()
    await run_ingest(w)
    loop = w.rt.loop(w.messages.handle, w.messages.flush)
    events = stage2_events(w)
    tps = [e.message.tp for e in events]
    half = next(
        i for i in range(len(events) // 2, len(events)) if tps[i - 1] == tps[i] == tps[i + 1]
    )
    gap = events[half + 1 :]  # one record missing: read again from it
    await offer(loop, events[:half] + events[:half] + gap)
    assert w.rt.seeks == [(events[half].message.tp, events[half].message.offset)]
    await offer(loop, events[half:])  # what the seek brings
    assert loop.progress.redelivered >= half
    await loop.flush_pending()
    assert w.messages.state.store == ref.messages.state.store  # type: ignore[attr-defined]
    # stage 2's signal counts each record once (in another order: compared as sets)
    assert [signal(v) for _, v in sent_to(w, SIGNALS)] == [signal(sent_to(ref, SIGNALS)[0][1])]
    assert await recipients_store(w) == ref.recipients.state.store  # type: ignore[attr-defined]


# -- stage 3 ----------------------------------------------------------------------------------
async def recipients_world() -> World:
    w = world()
    await run_ingest(w)
    await run_messages(w)
    w.rt.log.clear()
    return w


def recipients_events(w: World) -> list[Event]:
    return [e for p in range(N) for e in w.rt.events(RECIPIENTS, p)]


async def test_recipients_sends_outputs_and_signals_before_its_state_and_commits_last() -> None:
    """A crash between the two sends replays the facts from the older state and publishes the
    same advice again; the other way round the advice would be lost."""
    w = await recipients_world()
    loop = w.rt.loop(w.recipients.handle, w.recipients.flush)
    await offer(loop, recipients_events(w))
    await loop.flush_pending()
    rt = w.rt
    outputs = rt.sends_to(ADVICE) + rt.sends_to(RETRIES)
    state = rt.sends_to("recipients-changelog")
    assert outputs and len(state) == 1
    assert max(outputs + rt.sends_to(SIGNALS)) < state[0] - 1
    assert rt.log[state[0] - 1][0] == "write state"  # the store is written after the outputs
    assert rt.steps()[-1] == "commit" and rt.steps().count("commit") == 1


async def test_recipients_drops_a_revoked_partitions_batch_and_reads_it_again_exactly() -> None:
    ref, w = await reference(), await recipients_world()
    events = recipients_events(w)
    loop = await revoked_before_flush(w.rt, w.recipients, events)
    assert "commit" not in w.rt.steps() and not w.rt.sends_to("recipients-changelog")
    await offer(loop, events + events)  # from the committed offset, and once more
    await loop.flush_pending()
    assert w.rt.steps()[-1] == "commit"
    assert w.recipients.state.store == ref.recipients.state.store  # type: ignore[attr-defined]
    assert sent_to(w, ADVICE) == sent_to(ref, ADVICE)
    assert sent_to(w, RETRIES) == sent_to(ref, RETRIES)


# -- alerting and the notifier ----------------------------------------------------------------
def alerting_agent(rt: FakeRuntime, clock: Clock) -> AlertingAgent:
    return AlertingAgent(
        rt,
        MemoryStore(),
        lambda: AlertingStage(clock=clock, partitions=N, idle_s=30, max_wait_s=120),
        rt.checkpoint("alerting", orders.ALERTING),
        MonitorMetrics(CollectorRegistry()),
        "alerts",
    )


@cache
def campaign_signals() -> tuple[tuple[bytes, ...], float]:
    """The signals stages 1-3 send over a live campaign with a 131049 spike (read by the
    in-process pipeline), and the clock at its end."""
    pipeline = RecordingPipeline(N)
    feed_live(campaign(minutes=30, per_minute=4, templates=3, spike=(10, 8, 0.5), seed=5), pipeline)
    return tuple(pipeline.encoded), pipeline.clock.now


class RecordingPipeline(Pipeline):
    def __init__(self, partitions: int) -> None:
        super().__init__(partitions)
        self.encoded: list[bytes] = []

    def _signal(self, batch: SignalBatch | None) -> None:
        if batch is not None:
            self.encoded.append(encode_signals(batch))
        super()._signal(batch)


def signals_world() -> tuple[FakeRuntime, AlertingAgent, list[Event]]:
    encoded, end = campaign_signals()
    rt = FakeRuntime(partitions_per_topic=N)
    rt.append(SIGNALS, 0, [(None, value, None) for value in encoded])
    return rt, alerting_agent(rt, Clock(end)), rt.events(SIGNALS, 0)


async def test_alerting_sends_notifications_saves_its_book_then_commits() -> None:
    rt, agent, signals = signals_world()
    loop = rt.loop(agent.handle, agent.flush)
    await offer(loop, signals)
    await loop.flush_pending()
    assert rt.sends_to("alerts"), "the spike fires"
    assert rt.steps()[-1] == "commit"
    assert rt.log[-1][1] == {TP(SIGNALS, 0): len(signals)}
    assert max(rt.sends_to("alerts")) < len(rt.log) - 1
    assert agent.state.data, "the book is saved"  # type: ignore[attr-defined]
    fired = decode_notification(rt.records("alerts", 0)[0][1] or b"")
    assert fired.kind == "firing"


async def test_alerting_revoked_commits_nothing_and_starts_again_from_its_table() -> None:
    rt, agent, signals = signals_world()
    loop = rt.loop(agent.handle, agent.flush)
    await offer(loop, signals)
    before = agent.stage
    rt.rebalance()
    agent.revoke()
    await loop.flush_pending()
    assert agent.stage is not before and not agent.running
    assert "commit" not in rt.steps()


async def test_the_notifier_commits_in_topic_order_and_not_across_a_rebalance() -> None:
    rt, alerting, signals = signals_world()
    loop = rt.loop(alerting.handle, alerting.flush)
    await offer(loop, signals)
    await loop.flush_pending()
    notes = rt.events("alerts", 0)
    assert notes
    metrics = MonitorMetrics(CollectorRegistry())
    agent = NotifierAgent(rt, None, metrics, rt.progress(), rt.seek, "alerts")
    rt.log.clear()
    for event in notes + notes:  # the second time: delivered again, not announced again
        await agent.handle(event)
    assert len(agent.waiting) == len(notes)
    await agent.flush()
    assert rt.log == [("commit", {TP("alerts", 0): len(notes)})]
    rt.rebalance()
    rt.append("alerts", 0, [(b"again", rt.records("alerts", 0)[0][1], None)])
    await agent.handle(rt.events("alerts", 0)[-1])  # handled in the new generation
    rt.rebalance()  # and another rebalance before its commit
    await agent.flush()
    assert rt.log == [("commit", {TP("alerts", 0): len(notes)})]
    assert agent.waiting == []
