"""The one place that wires Faust: app, topics, tables, agents and web routes.

Topology (partition counts all equal ``topic_partitions``; keys say what owns a partition):

    raw webhooks (bytes, any key) --ingest--> <app>-messages (by wamid) --messages--> tables
    send log (JSON, key = wamid) ----------------------------^            |  minute buckets,
                                              <app>-recipients (by recipient) <-- message state
                                                     |--recipients--> recipient table,
                                      <advice topic> (by recipient), <retry plans> (by wamid)
    unparseable input --> dead-letter topic (original bytes + reason + topic/partition/offset)

Agents stay thin: decode, call a stage (streams.stages), flush, ack.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from streams import api, page, sender_api
from streams.core.advice import AdvicePolicy, advice_record
from streams.core.alerts import Notification, decode_notification, encode_notification
from streams.core.attribution import AttributionConfig
from streams.core.eventtime import TimeTrust, received_at
from streams.core.recipient_state import RecipientState
from streams.core.retries import RetryPolicy
from streams.core.signals import SignalBatch, decode_signals, encode_signals
from streams.core.times import iso_utc
from streams.faust_state import (
    BatchedTableKV,
    BatchPolicy,
    ClearWatch,
    FaustTableKV,
    Progress,
    RecordBatcher,
    SharedRocksDB,
    admit,
    apply_seeks,
    faust_committed,
    faust_committer,
    faust_producer,
    faust_resumer,
    faust_seeker,
    run_batched,
    stalled,
)
from streams.lag import ConsumerLag
from streams.metrics import MonitorMetrics
from streams.raw_consumer import consume_raw, ingest_group, retry_kafka
from streams.settings import Settings
from streams.slack import SlackNotifier
from streams.slack_threads import ThreadStore
from streams.stage_cpu import StageCpu
from streams.stages import partition_for
from streams.stages.alerting import AlertingStage
from streams.stages.ingest import DeadLetter, IngestStage
from streams.stages.messages import MessageStage, Retention, SendLogError
from streams.stages.recipients import RecipientStage
from streams.topics import table_partitions

log = logging.getLogger(__name__)

#: How often the agents' partitions are checked for a stall, and how long a partition behind
#: may send its agent nothing before it is fetched again (lag is measured every 15 s).
STALL_CHECK_S = 10.0
STALL_AFTER_S = 45.0


def broker_urls(bootstrap: str) -> list[str]:
    """faust broker URLs for a Kafka ``host:port[,host:port...]`` bootstrap string."""
    return [f"kafka://{hostport.strip()}" for hostport in bootstrap.split(",") if hostport.strip()]


def internal_topic_names(settings: Settings) -> tuple[str, str]:
    """The repartition topics: statuses by wamid, facts by recipient."""
    return f"{settings.app_id}-messages", f"{settings.app_id}-recipients"


def _raw(app: faust.App, *names: str, **kw: Any) -> Any:
    return app.topic(
        *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw", **kw
    )


class Monitor:
    """The running monitor inside one worker: app, stages and metrics (for views and tests)."""

    def __init__(self, settings: Settings, bootstrap: str, registry: CollectorRegistry) -> None:
        self.settings = settings
        n = settings.topic_partitions
        self.metrics = MonitorMetrics(
            registry,
            template_label_cap=settings.template_label_cap,
            campaign_label_cap=settings.campaign_label_cap,
        )
        self.metrics.precreate([settings.topic_raw, settings.topic_send_log])
        self.cpu = StageCpu()  # CPU seconds per stage (handle and flush; see streams.stage_cpu)
        self.metrics.watch_stage_cpu(self.cpu.seconds)
        datadir = settings.data_dir / "worker" / settings.app_id
        datadir.mkdir(parents=True, exist_ok=True)
        self.app = app = faust.App(
            settings.app_id,
            broker=broker_urls(bootstrap),
            store=settings.store,
            datadir=str(datadir),
            web_host=settings.web_host,
            web_port=settings.web_port,
            web_in_thread=False,
            topic_partitions=n,
            topic_replication_factor=settings.topic_replication_factor,
            processing_guarantee=settings.processing_guarantee,
            autodiscover=False,
            web_enabled=True,
            broker_session_timeout=settings.session_timeout_s,
            broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 4),
            stream_buffer_maxsize=16_384,
            producer_linger=0.005,
            producer_max_batch_size=512 * 1024,
        )
        messages_name, recipients_name = internal_topic_names(settings)
        self.messages_name, self.recipients_name = messages_name, recipients_name
        self.messages_topic = _raw(app, messages_name, partitions=n, internal=True)
        self.send_log_topic = _raw(app, settings.topic_send_log)
        # the topics agents consume have Faust's acks off: run_batched commits their offsets
        self.recipients_topic = _raw(app, recipients_name, partitions=n, internal=True, acks=False)
        self.dead_topic = _raw(app, settings.topic_dead_letter)
        self.signals_topic = _raw(
            app, f"{settings.app_id}-signals", partitions=1, internal=True, acks=False
        )
        self.alerts_topic = _raw(app, settings.topic_alerts, acks=False)
        stage2_input = _raw(app, messages_name, settings.topic_send_log, acks=False)

        partitions = table_partitions(settings)
        self.messages_table = app.Table(
            "messages",
            partitions=partitions["messages"],
            key_type=bytes,
            value_type=bytes,
            help="per message state, minute buckets and expiry index (partition-local)",
        )
        self.recipients_table = app.Table(
            "recipients",
            partitions=partitions["recipients"],
            key_type=bytes,
            value_type=bytes,
            help="per recipient state, keyed by phone (else BSUID)",
        )
        self.alerting_table = app.Table(
            "alerting",
            partitions=partitions["alerting"],
            key_type=bytes,
            value_type=bytes,
            help="the alert book: which alerts fire, since when, what was notified",
        )
        self.alerting_kv = FaustTableKV(self.alerting_table)
        self.threads_table = app.Table(
            "slack_threads",
            partitions=partitions["slack_threads"],
            key_type=bytes,
            value_type=bytes,
            help="per incident: its Slack messages (channel, ts) and the notifications delivered",
        )
        # Faust's RocksDB defaults (a 2 GiB block cache and 3 x 64 MiB memtables per partition
        # database) would let RSS grow with the state: every database shares one budget instead
        self.rocksdb = SharedRocksDB(settings.rocksdb_memory_mb, settings.rocksdb_write_buffer_mb)
        tables = (
            self.messages_table,
            self.recipients_table,
            self.alerting_table,
            self.threads_table,
        )
        if any([self.rocksdb.install(table) for table in tables]):
            self.metrics.watch_rocksdb(self.rocksdb.usage, self.rocksdb.limit)
        self.alerting = self._alerting_stage()
        faust_topics = [messages_name, settings.topic_send_log, recipients_name]
        faust_topics += [self.signals_topic.get_topic_name(), self.alerts_topic.get_topic_name()]
        self.lag = ConsumerLag(
            bootstrap,
            {ingest_group(settings.app_id): [settings.topic_raw], settings.app_id: faust_topics},
            interval_s=settings.lag_interval_s,
        )
        self.metrics.watch_lag(lambda: self.lag.latest)
        self.advice_policy = AdvicePolicy()
        self.advice_topic = _raw(app, settings.topic_advice)
        advice_name = settings.topic_advice
        retries_name = settings.topic_retries
        self.retry_policy = RetryPolicy()
        self.threads_kv = BatchedTableKV(self.threads_table)
        self.notifier = SlackNotifier.from_settings(
            settings,
            threads=ThreadStore(self.threads_kv, self._persist_threads),
            on_outcome=lambda outcome: self.metrics.slack_outcome(outcome),
        )
        self.messages_kv = BatchedTableKV(self.messages_table)
        self.recipients_kv = BatchedTableKV(self.recipients_table)
        self._producer = faust_producer(app)
        self._partition_counts: dict[str, int] = {}
        self.ingest = IngestStage(
            n, n, time_trust=TimeTrust(settings.max_future_skew_s), idle_s=settings.alert_idle_s
        )
        self.messages = MessageStage(
            self.messages_kv,
            n,
            Retention(),
            AttributionConfig(raw_pattern=settings.callback_template_pattern),
            time_trust=TimeTrust(settings.max_future_skew_s),
        )
        self.recipients = RecipientStage(
            self.recipients_kv, retry_policy=self.retry_policy, status_sources=n
        )
        self.metrics.watch(self)  # scrape-time gauges from the stages' state
        policy = BatchPolicy()
        commit, seek, committed = faust_committer(app), faust_seeker(app), faust_committed(app)
        self.generation = 0  # rebalances seen
        m = self.metrics

        progresses: list[tuple[str, Progress, frozenset[str]]] = []
        seeking: set[asyncio.Future[None]] = set()

        def progress_of(agent: str, topic: Any) -> Progress:
            progress = Progress(on_gap=m.reads_again.labels(agent=agent).inc, committed=committed)
            progresses.append((agent, progress, frozenset(topic.topics)))
            return progress

        def on_queues_cleared() -> None:
            """Faust dropped the records queued for the agents: read them again."""
            try:
                assigned = app.consumer.assignment()
            except Exception:  # not started, or stopping
                return
            for _, progress, topics in progresses:
                progress.resync(self.generation, [tp for tp in assigned if tp.topic in topics])
                if progress.seeks:
                    future = asyncio.ensure_future(apply_seeks(progress, seek, logging.DEBUG))
                    seeking.add(future)
                    future.add_done_callback(seeking.discard)

        self._clear_watch = ClearWatch(app.flow_control, on_queues_cleared)
        resume = faust_resumer(app)
        self._quiet_since = time.monotonic()  # the last rebalance or recovery

        @app.timer(interval=STALL_CHECK_S)  # type: ignore[untyped-decorator]
        async def read_stalled_partitions() -> None:
            """A partition behind by a recent lag measurement that sent its agent nothing
            for STALL_AFTER_S (after the last rebalance and recovery) is fetched again."""
            now, report = time.monotonic(), self.lag.latest
            if app.in_recovery:
                self._quiet_since = now
                return
            if report is None or time.time() - report.at > 2 * settings.lag_interval_s:
                return
            try:
                assigned = app.consumer.assignment()
            except Exception:  # not started, or stopping
                return
            behind = {
                (p.topic, p.partition)
                for p in report.partitions
                if p.group == settings.app_id and p.records > 0
            }
            for agent, progress, topics in progresses:
                mine = [
                    tp
                    for tp in assigned
                    if tp.topic in topics and (tp.topic, tp.partition) in behind
                ]
                for tp in stalled(mine, progress.seen, self._quiet_since, now, STALL_AFTER_S):
                    log.warning(
                        "%s: behind, and nothing from it for %.0f s: fetching it again",
                        tp,
                        STALL_AFTER_S,
                    )
                    m.reads_again.labels(agent=agent).inc()
                    resume(tp)
                    progress.read_again(self.generation, tp)
                    progress.seen[tp] = now  # tried: the next try after STALL_AFTER_S again
                await apply_seeks(progress, seek)

        async def drive(
            stream: Any,
            agent: str,
            topic: Any,
            handle: Callable[[Any], None],
            flush: Callable[[], Awaitable[None]],
            full: Callable[[], bool] = lambda: False,
        ) -> None:
            """An agent's loop (see run_batched): this worker's commits, seeks and rebalances."""
            await run_batched(
                stream,
                self.cpu.timed(agent, handle),
                self.cpu.timed_async(agent, flush),
                policy,
                commit,
                lambda: self.generation,
                full,
                progress=progress_of(agent, topic),
                seek=seek,
            )

        @app.task  # type: ignore[untyped-decorator]
        async def ingest() -> None:
            """Stage 1 on a plain consumer (see streams.raw_consumer): no per-record events."""
            await app.producer.maybe_start()
            counter = m.records_consumed.labels(topic=settings.topic_raw)
            await consume_raw(
                bootstrap,
                settings.topic_raw,
                ingest_group(settings.app_id),
                self.ingest,
                self.cpu.timed_async("ingest", self._flush_ingest),
                session_timeout_s=settings.session_timeout_s,
                policy=policy,
                on_records=counter.inc,
                on_cpu=functools.partial(self.cpu.add, "ingest"),
            )

        @app.task  # type: ignore[untyped-decorator]
        async def consumer_lag() -> None:
            await self.lag.run()

        @app.agent(stage2_input, name="messages", concurrency=1)
        async def messages(stream: Any) -> None:
            bad_send_log: list[DeadLetter] = []

            def handle(event: Any) -> None:
                msg = event.message
                if msg.topic == settings.topic_send_log:
                    m.records_consumed.labels(topic=settings.topic_send_log).inc()
                    try:
                        # Faust gives the record's timestamp in seconds
                        stamp = int(msg.timestamp * 1000) if msg.timestamp else None
                        received = received_at(stamp, time.time())
                        self.messages.handle_send_log(
                            msg.partition, msg.offset, event.value, received
                        )
                    except SendLogError as exc:
                        bad_send_log.append(
                            DeadLetter(
                                event.value or b"", str(exc), msg.topic, msg.partition, msg.offset
                            )
                        )
                else:
                    self.messages.handle_batch(msg.partition, msg.offset, event.value)

            async def flush() -> None:
                for partition in self.messages.state.partitions():
                    self.messages.flush(partition)
                batcher = RecordBatcher(self._producer)
                self.messages_kv.commit(batcher)
                for partition, value in self.messages.drain_outbox().items():
                    batcher.add(recipients_name, partition, None, value)
                # taken before the first await: events handled while this flush waits belong
                # to the next batch, and so do their signals (their state is not written yet)
                signals = self.messages.drain_signals()
                await retry_kafka("stage 2 output", batcher.send)
                self.messages_kv.persisted(batcher.sent)
                await self._signal(signals)
                for dead in bad_send_log:
                    await self._dead_letter(dead, "send_log")
                bad_send_log.clear()
                m.observe_messages(self.messages.stats)

            await drive(stream, "messages", stage2_input, handle, flush, lambda: self.messages.full)

        @app.agent(self.recipients_topic, name="recipients", concurrency=1)
        async def recipients(stream: Any) -> None:
            def handle(event: Any) -> None:
                msg = event.message
                self.recipients.handle_batch(msg.partition, msg.offset, event.value)

            async def flush() -> None:
                published: list[tuple[str, bytes]] = []
                for partition in self.recipients.state.partitions():
                    published += self.recipients.changed_advice(partition, self._advice_record)
                    self.recipients.flush(partition)
                # taken before the first await (see above)
                retries = self.recipients.drain_retries()
                signals = self.recipients.drain_signals()
                # Outputs first, state after: a crash in between replays the facts from the
                # older state and publishes the same records again (same key and value); the
                # other way round, the newer state would skip the facts and their advice, retry
                # plans, due timers and resend signals would be lost. The table's buffered
                # writes are this batch's only (the next flush waits for this one).
                outputs = RecordBatcher(self._producer)
                if published:
                    advice_partitions = await self._partitions(advice_name)
                for recipient, record in published:
                    p = partition_for(recipient, advice_partitions)
                    outputs.add(advice_name, p, recipient.encode(), record)
                if retries:
                    retry_partitions = await self._partitions(retries_name)
                for wamid, record in retries:
                    p = partition_for(wamid, retry_partitions)
                    outputs.add(retries_name, p, wamid.encode(), record)
                await retry_kafka("stage 3 output", outputs.send)
                await self._signal(signals)
                batcher = RecordBatcher(self._producer)
                self.recipients_kv.commit(batcher)
                await retry_kafka("stage 3 state", batcher.send)
                self.recipients_kv.persisted(batcher.sent)
                m.observe_recipients(self.recipients.stats)

            await drive(stream, "recipients", self.recipients_topic, handle, flush)

        alert_lock = asyncio.Lock()
        signals_name = self.signals_topic.get_topic_name()

        async def evaluate_alerts() -> None:
            """Write due notifications to the alerts topic and wait until Kafka has them, then
            save the alerting state (a crash in between sends them again: at least once)."""
            async with alert_lock:
                stage = self.alerting
                for n in stage.evaluate():
                    sent = await self.alerts_topic.send(
                        key=n.incident.encode(), value=encode_notification(n)
                    )
                    await sent
                if stage is self.alerting and 0 in self.alerting_kv.events:  # not revoked
                    stage.save(self.alerting_kv)
                    m.observe_alerting(stage.evaluated, stage.take_late())

        @app.agent(self.signals_topic, name="alerting", concurrency=1)
        async def alerting(stream: Any) -> None:
            def handle(event: Any) -> None:
                if 0 not in self.alerting_kv.events:
                    self.alerting.restore(self.alerting_kv)
                self.alerting_kv.events[0] = event
                self.alerting.handle(decode_signals(event.value), event.message.offset)

            await drive(stream, "alerting", self.signals_topic, handle, evaluate_alerts)

        @app.timer(interval=5.0)  # type: ignore[untyped-decorator]
        async def evaluate_when_quiet() -> None:
            """Alerts still resolve when traffic stops (time advances by the wall clock)."""
            if 0 in self.alerting_kv.events:
                await evaluate_alerts()

        @app.agent(self.alerts_topic, name="notifier", concurrency=1)
        async def notifier(stream: Any) -> None:
            """The one owner of the alerts topic's single partition logs every notification and
            hands it to Slack in topic order; its offset is committed, in order, once Slack took
            it, refused it for good or it was given up (after an outage of
            ``slack_give_up_after_s``), so a worker that dies before delivers it after its
            restart (at least once). A notification riding out a Slack outage holds up no
            rebalance (Faust tracks no message of a topic without acks): when a rebalance comes
            first, it is never committed here; the partition's next owner reads it again and,
            on this worker, the notifier matches it by id to the delivery under way."""
            slack = self.notifier
            if slack is not None:
                m.watch_slack(slack.backlog)
                await slack.start()
            # (message, generation it was handled in, delivery)
            waiting: list[tuple[Any, int, asyncio.Future[Any] | None]] = []
            progress = progress_of("notifier", self.alerts_topic)

            async def commit_in_order() -> None:
                stalled = -1  # a generation whose commits stopped at an abandoned delivery
                while True:
                    done: dict[Any, int] = {}
                    while waiting and (
                        waiting[0][2] is None
                        or waiting[0][2].done()
                        or waiting[0][1] != self.generation
                    ):
                        message, handled_in, delivery = waiting.pop(0)
                        if handled_in != self.generation:
                            continue
                        if delivery is not None and delivery.cancelled():
                            stalled = handled_in
                        if stalled != handled_in:
                            done[message.tp] = message.offset + 1
                    if done:
                        await commit(done)
                    await asyncio.sleep(policy.max_delay_s)

            committer = asyncio.ensure_future(commit_in_order())
            try:
                async for event in stream.noack().events():
                    message = event.message
                    handled_in = self.generation
                    if not await admit(progress, event, handled_in, seek):
                        continue
                    n = decode_notification(event.value)
                    if slack is None:
                        self._announce(n)
                        waiting.append((message, handled_in, None))
                        continue
                    if not slack.knows(n.id):
                        self._announce(n)
                    waiting.append((message, handled_in, await slack.submit(n)))
            finally:
                committer.cancel()

        alerts_name = self.alerts_topic.get_topic_name()

        async def hand_over_notifications(app: Any, assigned: Any, **kwargs: Any) -> None:
            """After a rebalance that gave the alerts partition to another worker, that worker
            reads the uncommitted notifications again and posts them: this one stops."""
            if self.notifier is not None and all(tp.topic != alerts_name for tp in assigned):
                await self.notifier.abandon()

        app.on_partitions_assigned.connect(hand_over_notifications)  # type: ignore[arg-type]

        async def on_revoked(app: Any, revoked: Any, **kwargs: Any) -> None:
            """Unflushed state of a revoked partition is dropped: its new owner replays it.
            Events handled before the rebalance are not committed (see run_batched)."""
            self.generation += 1
            self._quiet_since = time.monotonic()
            for tp in revoked:
                if tp.topic == signals_name:
                    # another worker owns alerting now; it restores the book from the table
                    self.alerting_kv.events.pop(0, None)
                    self.alerting = self._alerting_stage()
                elif tp.topic == messages_name:
                    self.messages.revoke(tp.partition)
                elif tp.topic == recipients_name:
                    self.recipients.revoke(tp.partition)

        app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]

        web_app: Any = app.web.web_app  # type: ignore[attr-defined]  # faust's aiohttp driver
        web_app.router.add_get("/metrics", make_aiohttp_handler(registry))
        routes = api.register(self, web_app)
        sender_api.register(routes, web_app)  # audience pre-flight and retry plans
        page.register(self, web_app, routes)

    def _alerting_stage(self) -> AlertingStage:
        s = self.settings
        return AlertingStage(
            partitions=s.topic_partitions, idle_s=s.alert_idle_s, max_wait_s=s.alert_max_wait_s
        )

    async def _partitions(self, topic: str) -> int:
        """How many partitions ``topic`` has (keyed records go where Kafka's default
        partitioner would put them)."""
        n = self._partition_counts.get(topic)
        if n is None:
            n = self._partition_counts[topic] = len(await self._producer().partitions_for(topic))
        return n

    async def _persist_threads(self) -> None:
        """Write the Slack thread records to their changelog and wait until Kafka has them
        (the notifier records what it is about to post before posting it)."""
        batcher = RecordBatcher(self._producer)
        self.threads_kv.commit(batcher)
        await retry_kafka("slack threads", batcher.send)
        self.threads_kv.persisted(batcher.sent)

    async def _flush_ingest(self) -> None:
        messages, recipients, dead = self.ingest.drain()
        batcher = RecordBatcher(self._producer)
        for partition, value in messages.items():
            batcher.add(self.messages_name, partition, None, value)
        for partition, value in recipients.items():
            batcher.add(self.recipients_name, partition, None, value)
        await retry_kafka("stage 1 output", batcher.send)
        for letter in dead:
            await self._dead_letter(letter, "ingest")
        await self._signal(self.ingest.drain_signals())
        self.metrics.observe_ingest(self.ingest.stats)

    def _advice_record(self, state: RecipientState, recipient: str, now: int) -> tuple[str, bytes]:
        return advice_record(state, recipient, now, self.advice_policy)

    async def _signal(self, batch: SignalBatch | None) -> None:
        """Send and wait until Kafka has it: a stage commits its inputs after this, and
        Faust's send only queues (stage 1's own consumer commits without Faust's flush)."""
        if batch is not None:
            sent = await self.signals_topic.send(value=encode_signals(batch), partition=0)
            await sent

    def _announce(self, n: Notification) -> None:
        """Every notification goes to the log (and to Slack when a webhook is configured)."""
        self.metrics.alert_notified(n)
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

    async def _dead_letter(self, letter: DeadLetter, stage: str) -> None:
        """Send and wait until Kafka has it (see :meth:`_signal`): a dead letter still queued
        when stage 1 committed was lost with a crash (the crash test caught 4 of 1,794)."""
        sent = await self.dead_topic.send(
            key=letter.key, value=letter.value, headers=letter.headers()
        )
        await sent
        self.metrics.dead_letters.labels(
            stage=stage, kind="partial" if letter.partial else "rejected"
        ).inc()
        log.warning(
            "dead letter from %s/%d@%d (%d bytes): %s",
            letter.topic,
            letter.partition,
            letter.offset,
            len(letter.value),
            letter.reason[:300],
        )


def create_monitor(
    settings: Settings, bootstrap: str, registry: CollectorRegistry | None = None
) -> Monitor:
    """Build the monitor's Faust app for ``bootstrap`` (no I/O happens until it runs)."""
    return Monitor(settings, bootstrap, registry if registry is not None else CollectorRegistry())


def create_app(
    settings: Settings, bootstrap: str, registry: CollectorRegistry | None = None
) -> faust.App:
    return create_monitor(settings, bootstrap, registry).app
