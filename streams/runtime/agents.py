"""One small class per agent: ``handle`` a record, ``flush`` a batch through its checkpoint.

The agents know the stages (:mod:`streams.stages`) and a :class:`~streams.runtime.checkpoint.Broker`
(Faust's runtime, or :mod:`streams.runtime.fake`'s in tests), never Faust itself. An event is
anything with ``.message`` (``tp``, ``topic``, ``partition``, ``offset``, ``timestamp`` in
seconds) and ``.value``, as Faust's events are.

    raw webhooks --ingest--> messages topic (by wamid) --messages--> message state, buckets
    send log ----------------------------^                 |  outbox (facts by recipient)
                              recipients topic (by recipient) <-'
                                     --recipients--> recipient state, advice, retry plans
    every stage's counts --> signals topic --alerting--> alerts topic --notifier--> log, Slack
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, Callable
from typing import Any

from streams.core.advice import AdvicePolicy
from streams.core.alerts import Notification, decode_notification, encode_notification
from streams.core.eventtime import received_at
from streams.core.signals import decode_signals
from streams.core.times import iso_utc
from streams.metrics import MonitorMetrics
from streams.ports import AlertingStore
from streams.runtime.batching import BatchPolicy, LogStarts, Progress, Seek, Taken, admit
from streams.runtime.checkpoint import Batch, Broker, Checkpoint, Output, StateTable
from streams.slack import SlackNotifier
from streams.stages.alerting import AlertingStage
from streams.stages.ingest import DeadLetter, IngestStage
from streams.stages.messages import MessageStage, SendLogError
from streams.stages.recipients import RecipientStage

log = logging.getLogger(__name__)


class IngestAgent:
    """Stage 1 (raw webhooks -> facts by wamid and by recipient), on its own consumer
    (:func:`streams.raw_consumer.consume_raw`), which commits after each flush."""

    def __init__(
        self,
        stage: IngestStage,
        checkpoint: Checkpoint,
        metrics: MonitorMetrics,
        messages_topic: str,
        recipients_topic: str,
    ) -> None:
        self.stage = stage
        self.checkpoint = checkpoint
        self.metrics = metrics
        self.messages_topic = messages_topic
        self.recipients_topic = recipients_topic

    def handle(self, topic: str, partition: int, offset: int, raw: bytes, received: int) -> None:
        self.stage.handle(topic, partition, offset, raw, received)

    async def flush(self) -> None:
        messages, recipients, dead = self.stage.drain()
        outputs = [Output(self.messages_topic, p, None, v) for p, v in messages.items()]
        outputs += [Output(self.recipients_topic, p, None, v) for p, v in recipients.items()]
        signals = self.stage.drain_signals()
        await self.checkpoint.run(Batch(outputs=outputs, signals=signals, dead_letters=dead))
        self.metrics.observe_ingest(self.stage.stats)


class MessagesAgent:
    """Stage 2: statuses by wamid and the send log -> message state, minute buckets, and facts
    by recipient (the outbox)."""

    def __init__(
        self,
        stage: MessageStage,
        state: StateTable,
        checkpoint: Checkpoint,
        metrics: MonitorMetrics,
        send_log_topic: str,
        recipients_topic: str,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.stage = stage
        self.state = state
        self.checkpoint = checkpoint
        self.metrics = metrics
        self.send_log_topic = send_log_topic
        self.recipients_topic = recipients_topic
        self.wall = wall
        self._consumed = metrics.records_consumed.labels(topic=send_log_topic)
        self._bad_send_log: list[DeadLetter] = []

    @property
    def full(self) -> bool:
        return self.stage.full

    def handle(self, event: Any) -> None:
        msg = event.message
        if msg.topic == self.send_log_topic:
            self._consumed.inc()
            try:
                # Faust gives the record's timestamp in seconds
                stamp = int(msg.timestamp * 1000) if msg.timestamp else None
                received = received_at(stamp, self.wall())
                self.stage.handle_send_log(msg.partition, msg.offset, event.value, received)
            except SendLogError as exc:
                letter = DeadLetter(
                    event.value or b"", str(exc), msg.topic, msg.partition, msg.offset
                )
                self._bad_send_log.append(letter)
        else:
            self.stage.handle_batch(msg.partition, msg.offset, event.value)

    async def flush(self, taken: Taken) -> None:
        stage = self.stage
        for partition in stage.state.partitions():
            stage.flush(partition)
        outputs = [
            Output(self.recipients_topic, p, None, v) for p, v in stage.drain_outbox().items()
        ]
        # taken before the first await: records handled while this flush waits belong to the
        # next batch, and so do their signals (their state is not written yet)
        signals = stage.drain_signals()
        dead, self._bad_send_log = self._bad_send_log, []
        await self.checkpoint.run(Batch(self.state, outputs, signals, dead, taken))
        self.metrics.observe_messages(stage.stats)

    def revoke(self, partition: int) -> None:
        self.stage.revoke(partition)


class RecipientsAgent:
    """Stage 3: facts by recipient -> recipient state, advice records and retry plans."""

    def __init__(
        self,
        stage: RecipientStage,
        state: StateTable,
        checkpoint: Checkpoint,
        metrics: MonitorMetrics,
        advice_policy: AdvicePolicy,
        advice_topic: str,
        retries_topic: str,
    ) -> None:
        self.stage = stage
        self.state = state
        self.checkpoint = checkpoint
        self.metrics = metrics
        self.advice_policy = advice_policy
        self.advice_topic = advice_topic
        self.retries_topic = retries_topic

    @property
    def full(self) -> bool:
        return self.stage.full

    def handle(self, event: Any) -> None:
        msg = event.message
        self.stage.handle_batch(msg.partition, msg.offset, event.value)

    async def flush(self, taken: Taken) -> None:
        stage = self.stage
        published: list[tuple[str, bytes]] = []
        for partition in stage.state.partitions():
            published += stage.changed_advice(partition, self.advice_policy)
            stage.flush(partition)
        # taken before the first await (see MessagesAgent.flush)
        retries = stage.drain_retries()
        signals = stage.drain_signals()
        outputs = [Output(self.advice_topic, None, r.encode(), v) for r, v in published]
        outputs += [Output(self.retries_topic, None, w.encode(), v) for w, v in retries]
        await self.checkpoint.run(Batch(self.state, outputs, signals, [], taken))
        self.metrics.observe_recipients(stage.stats)

    def revoke(self, partition: int) -> None:
        self.stage.revoke(partition)


class AlertingAgent:
    """Stage 4, on the single signals partition: the alert book; due notifications go to the
    alerts topic. Its state is Faust's per-key table (``state.events[0]`` is the event its
    writes belong to, and says the stage runs here)."""

    def __init__(
        self,
        broker: Broker,
        state: AlertingStore,
        make_stage: Callable[[], AlertingStage],
        checkpoint: Checkpoint,
        metrics: MonitorMetrics,
        alerts_topic: str,
    ) -> None:
        self.broker = broker
        self.state = state
        self.make_stage = make_stage
        self.stage = make_stage()
        self.checkpoint = checkpoint
        self.metrics = metrics
        self.alerts_topic = alerts_topic
        self._lock = asyncio.Lock()

    @property
    def running(self) -> bool:
        """Whether this worker runs the stage (it has handled a signal since the rebalance)."""
        return 0 in self.state.events

    def handle(self, event: Any) -> None:
        events: dict[int, Any] = self.state.events  # type: ignore[assignment]
        if 0 not in events:
            self.stage.restore(self.state)
        events[0] = event
        self.stage.handle(decode_signals(event.value), event.message.offset)

    async def evaluate(self) -> None:
        """Write due notifications to the alerts topic and wait until Kafka has them, then
        save the alerting state (a crash in between sends them again: at least once)."""
        async with self._lock:
            stage = self.stage
            for n in stage.evaluate():
                await self.broker.send(
                    self.alerts_topic, n.incident.encode(), encode_notification(n)
                )
            if stage is self.stage and self.running:  # not revoked meanwhile
                stage.save(self.state)
                self.metrics.observe_alerting(stage.evaluated, stage.take_late())

    async def flush(self, taken: Taken) -> None:
        await self.evaluate()
        await self.checkpoint.run(Batch(taken=taken))

    async def tick(self) -> None:
        """Alerts still resolve when traffic stops (time advances by the wall clock)."""
        if self.running:
            await self.evaluate()

    def revoke(self) -> None:
        """Another worker owns alerting now; it restores the book from the table."""
        events: dict[int, Any] = self.state.events  # type: ignore[assignment]
        events.pop(0, None)
        self.stage = self.make_stage()


def announce(metrics: MonitorMetrics, n: Notification) -> None:
    """Every notification goes to the log (and to Slack when a webhook is configured)."""
    metrics.alert_notified(n)
    scope = (
        f"{n.headline.scope.kind}:{n.headline.scope.key}"
        if n.headline.scope.key
        else (str(n.headline.scope.kind))
    )
    log.warning(
        "ALERT %s %s %s: %s [%s] since %s%s",
        n.kind.upper(),
        n.family.value,
        n.id,
        n.title,
        scope,
        iso_utc(n.since),
        f" (+{len(n.related)} related)" if n.related else "",
    )


class NotifierAgent:
    """The one owner of the alerts topic's single partition logs every notification and
    hands it to Slack in topic order; its offset is committed, in order, once Slack took it,
    refused it for good or it was given up (after an outage of ``slack_give_up_after_s``), so
    a worker that dies before delivers it after its restart (at least once). A notification
    riding out a Slack outage holds up no rebalance (Faust tracks no message of a topic
    without acks): when a rebalance comes first, it is never committed here; the partition's
    next owner reads it again and, on this worker, the notifier matches it by id to the
    delivery under way."""

    def __init__(
        self,
        broker: Broker,
        slack: SlackNotifier | None,
        metrics: MonitorMetrics,
        progress: Progress,
        seek: Seek | None,
        alerts_topic: str,
        starts: LogStarts | None = None,
    ) -> None:
        self.broker = broker
        self.starts = starts
        self.slack = slack
        self.metrics = metrics
        self.progress = progress
        self.seek = seek
        self.alerts_topic = alerts_topic
        # (message, generation it was handled in, delivery)
        self.waiting: list[tuple[Any, int, asyncio.Future[Any] | None]] = []
        self._stalled = -1  # a generation whose commits stopped at an abandoned delivery

    async def handle(self, event: Any) -> None:
        message = event.message
        handled_in = await admit(
            self.progress, event, lambda: self.broker.generation, self.seek, self.starts
        )
        if handled_in is None:
            return
        n = decode_notification(event.value)
        slack = self.slack
        if slack is None:
            announce(self.metrics, n)
            self.waiting.append((message, handled_in, None))
            return
        if not slack.knows(n.id):
            announce(self.metrics, n)
        self.waiting.append((message, handled_in, await slack.submit(n)))

    async def flush(self) -> None:
        """Commit the notifications delivered (or given up) in topic order, up to the first
        still under way; none past an abandoned one, none of an older generation."""
        waiting, generation = self.waiting, self.broker.generation
        done: dict[Any, int] = {}
        while waiting and (
            waiting[0][2] is None or waiting[0][2].done() or waiting[0][1] != generation
        ):
            message, handled_in, delivery = waiting.pop(0)
            if handled_in != generation:
                continue
            if delivery is not None and delivery.cancelled():
                self._stalled = handled_in
            if self._stalled != handled_in:
                done[message.tp] = message.offset + 1
        if done:
            await self.broker.commit(done)

    async def run(self, events: AsyncIterable[Any], policy: BatchPolicy) -> None:
        if self.slack is not None:
            self.metrics.watch_slack(self.slack.backlog)
            await self.slack.start()

        async def commit_in_order() -> None:
            while True:
                await self.flush()
                await asyncio.sleep(policy.max_delay_s)

        committer = asyncio.ensure_future(commit_in_order())
        try:
            async for event in events:
                await self.handle(event)
        finally:
            committer.cancel()

    async def on_assigned(self, topics: set[str]) -> None:
        """After a rebalance that gave the alerts partition to another worker, that worker
        reads the uncommitted notifications again and posts them: this one stops."""
        if self.slack is not None and self.alerts_topic not in topics:
            await self.slack.abandon()


def dead_letter_seen(metrics: MonitorMetrics, letter: DeadLetter, stage: str) -> None:
    """A dead letter Kafka has: counted and logged (its first 300 characters of reason)."""
    metrics.dead_letters.labels(stage=stage, kind="partial" if letter.partial else "rejected").inc()
    log.warning(
        "dead letter from %s/%d@%d (%d bytes): %s",
        letter.topic,
        letter.partition,
        letter.offset,
        len(letter.value),
        letter.reason[:300],
    )
