"""The worker, assembled: settings-derived parts, the Faust runtime, the agents and web routes.

Topology (partition counts all equal ``topic_partitions``; keys say what owns a partition):

    raw webhooks (bytes, any key) --ingest--> <app>-messages (by wamid) --messages--> tables
    send log (JSON, key = wamid) ----------------------------^            |  minute buckets,
                                              <app>-recipients (by recipient) <-- message state
                                                     |--recipients--> recipient table,
                                      <advice topic> (by recipient), <retry plans> (by wamid)
    unparseable input --> dead-letter topic (original bytes + reason + topic/partition/offset)

This module only assembles: what the agents do is in :mod:`streams.runtime.agents`, how a
batch reaches Kafka in :mod:`streams.runtime.checkpoint`, and everything Faust in
:mod:`streams.runtime.faust_runtime` (the only package that imports faust).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from streams import api, page, sender_api
from streams.core.advice import AdvicePolicy
from streams.core.attribution import AttributionConfig
from streams.core.eventtime import TimeTrust
from streams.core.retries import RetryPolicy
from streams.lag import ConsumerLag
from streams.metrics import MonitorMetrics
from streams.raw_consumer import consume_raw, ingest_group, restarting
from streams.runtime import checkpoint as orders
from streams.runtime.agents import (
    AlertingAgent,
    IngestAgent,
    MessagesAgent,
    NotifierAgent,
    RecipientsAgent,
    dead_letter_seen,
)
from streams.runtime.checkpoint import Batch, Checkpoint
from streams.runtime.faust_runtime import STALL_CHECK_S, FaustRuntime
from streams.runtime.tables import SharedRocksDB
from streams.settings import Settings
from streams.slack import SlackNotifier
from streams.slack_threads import ThreadStore
from streams.stage_cpu import StageCpu
from streams.stages.alerting import AlertingStage
from streams.stages.ingest import IngestStage
from streams.stages.messages import MessageStage, Retention
from streams.stages.recipients import RecipientStage
from streams.topics import table_partitions


def internal_topic_names(settings: Settings) -> tuple[str, str]:
    """The repartition topics: statuses by wamid, facts by recipient."""
    return f"{settings.app_id}-messages", f"{settings.app_id}-recipients"


class Monitor:
    """The running monitor inside one worker: runtime, stages, agents and metrics (for the
    views of :mod:`streams.ports` and for tests)."""

    def __init__(self, settings: Settings, bootstrap: str, registry: CollectorRegistry) -> None:
        self.settings = s = settings
        n = s.topic_partitions
        self.metrics = m = MonitorMetrics(
            registry,
            template_label_cap=s.template_label_cap,
            campaign_label_cap=s.campaign_label_cap,
        )
        m.precreate([s.topic_raw, s.topic_send_log])
        self.cpu = cpu = StageCpu()  # CPU seconds per stage (handle and flush: streams.stage_cpu)
        m.watch_stage_cpu(cpu.seconds)
        self.runtime = rt = FaustRuntime(
            s,
            bootstrap,
            on_read_again=lambda agent: m.reads_again.labels(agent=agent).inc(),
            on_flush_failure=lambda agent: m.flush_failures.labels(agent=agent).inc(),
        )
        self.app = rt.app

        # -- topics ----------------------------------------------------------------------
        messages_name, recipients_name = internal_topic_names(s)
        self.messages_name, self.recipients_name = messages_name, recipients_name
        signals_name = f"{s.app_id}-signals"
        self.messages_topic = rt.topic(messages_name, partitions=n, internal=True)
        self.send_log_topic = rt.topic(s.topic_send_log)
        # the topics agents consume have Faust's acks off: their checkpoints commit
        self.recipients_topic = rt.topic(recipients_name, partitions=n, internal=True, acks=False)
        self.dead_topic = rt.topic(s.topic_dead_letter)
        self.signals_topic = rt.topic(signals_name, partitions=1, internal=True, acks=False)
        self.alerts_topic = rt.topic(s.topic_alerts, acks=False)
        self.advice_topic = rt.topic(s.topic_advice)
        stage2_input = rt.topic(messages_name, s.topic_send_log, acks=False)

        # -- tables ----------------------------------------------------------------------
        partitions = table_partitions(s)
        self.messages_table = rt.table(
            "messages",
            partitions["messages"],
            "per message state, minute buckets and expiry index (partition-local)",
        )
        self.recipients_table = rt.table(
            "recipients",
            partitions["recipients"],
            "per recipient state, keyed by phone (else BSUID)",
        )
        self.alerting_table = rt.table(
            "alerting",
            partitions["alerting"],
            "the alert book: which alerts fire, since when, what was notified",
        )
        self.threads_table = rt.table(
            "slack_threads",
            partitions["slack_threads"],
            "per incident: its Slack messages (channel, ts) and the notifications delivered",
        )
        # Faust's RocksDB defaults (a 2 GiB block cache and 3 x 64 MiB memtables per partition
        # database) would let RSS grow with the state: every database shares one budget instead
        self.rocksdb = SharedRocksDB(s.rocksdb_memory_mb, s.rocksdb_write_buffer_mb)
        tables = (
            self.messages_table,
            self.recipients_table,
            self.alerting_table,
            self.threads_table,
        )
        if any([self.rocksdb.install(table) for table in tables]):
            m.watch_rocksdb(self.rocksdb.usage, self.rocksdb.limit)
        self.messages_kv = rt.batched_kv(self.messages_table)
        self.recipients_kv = rt.batched_kv(self.recipients_table)
        self.alerting_kv = rt.per_key_kv(self.alerting_table)
        self.threads_kv = rt.batched_kv(self.threads_table)

        # -- settings-derived parts --------------------------------------------------------
        lag_topics = [
            messages_name,
            s.topic_send_log,
            recipients_name,
            signals_name,
            s.topic_alerts,
        ]
        self.lag = ConsumerLag(
            bootstrap,
            {ingest_group(s.app_id): [s.topic_raw], s.app_id: lag_topics},
            interval_s=s.lag_interval_s,
        )
        m.watch_lag(lambda: self.lag.latest)
        self.advice_policy = AdvicePolicy()
        self.retry_policy = RetryPolicy()
        threads_checkpoint = Checkpoint("slack threads", orders.THREADS, rt)
        self.notifier = SlackNotifier.from_settings(
            s,
            # the notifier records what it is about to post, in Kafka, before posting it
            threads=ThreadStore(
                self.threads_kv, lambda: threads_checkpoint.run(Batch(state=self.threads_kv))
            ),
            on_outcome=lambda outcome: m.slack_outcome(outcome),
        )
        trust = TimeTrust(s.max_future_skew_s)
        self.ingest = IngestStage(n, n, time_trust=trust, idle_s=s.alert_idle_s)
        self.messages = MessageStage(
            self.messages_kv,
            n,
            Retention(),
            AttributionConfig(raw_pattern=s.callback_template_pattern),
            time_trust=trust,
        )
        self.recipients = RecipientStage(
            self.recipients_kv, retry_policy=self.retry_policy, status_sources=n
        )
        m.watch(self)  # scrape-time gauges from the stages' state

        # -- agents ----------------------------------------------------------------------
        def checkpoint(name: str, order: tuple[orders.Step, ...], stage: str = "") -> Checkpoint:
            return Checkpoint(
                name,
                order,
                rt,
                signals_topic=signals_name,
                dead_letter_topic=s.topic_dead_letter,
                dead_letter_stage=stage,
                on_dead_letter=partial(dead_letter_seen, m),
            )

        self.ingest_agent = IngestAgent(
            self.ingest,
            checkpoint("stage 1", orders.INGEST, "ingest"),
            m,
            messages_name,
            recipients_name,
        )
        self.messages_agent = MessagesAgent(
            self.messages,
            self.messages_kv,
            checkpoint("stage 2", orders.MESSAGES, "send_log"),
            m,
            s.topic_send_log,
            recipients_name,
        )
        self.recipients_agent = RecipientsAgent(
            self.recipients,
            self.recipients_kv,
            checkpoint("stage 3", orders.RECIPIENTS),
            m,
            self.advice_policy,
            s.topic_advice,
            s.topic_retries,
        )
        self.alerting_agent = AlertingAgent(
            rt,
            self.alerting_kv,
            self._alerting_stage,
            checkpoint("alerting", orders.ALERTING),
            m,
            s.topic_alerts,
        )
        self.notifier_agent = NotifierAgent(
            rt,
            self.notifier,
            m,
            rt.progress("notifier", self.alerts_topic),
            rt.seek,
            s.topic_alerts,
            rt.starts,
        )

        async def ingest() -> None:
            """Stage 1 on a plain consumer (see streams.raw_consumer): no per-record events."""
            await rt.start_producer()
            consume = partial(
                consume_raw,
                bootstrap,
                s.topic_raw,
                ingest_group(s.app_id),
                self.ingest,
                cpu.timed_async("ingest", self.ingest_agent.flush),
                session_timeout_s=s.session_timeout_s,
                policy=rt.policy,
                on_records=m.records_consumed.labels(topic=s.topic_raw).inc,
                on_cpu=partial(cpu.add, "ingest"),
            )
            await restarting(
                "stage 1's raw consumer", consume, on_restart=m.raw_consumer_restarts.inc
            )

        rt.task(ingest)
        rt.task(self.lag.run)

        def batched(
            name: str, topic: Any, agent: Any, full: Callable[[], bool] = lambda: False
        ) -> None:
            """The agent ``name`` on ``topic`` in a batch loop, its CPU charged to ``name``."""
            handle, flush = cpu.timed(name, agent.handle), cpu.timed_async(name, agent.flush)
            rt.agent(name, topic, rt.batch_loop(name, topic, handle, flush, full).run)

        batched("messages", stage2_input, self.messages_agent, lambda: self.messages_agent.full)
        batched(
            "recipients",
            self.recipients_topic,
            self.recipients_agent,
            lambda: self.recipients_agent.full,
        )
        alerting = self.alerting_agent
        batched("alerting", self.signals_topic, alerting)
        rt.every(5.0, alerting.tick, "evaluate_when_quiet")
        rt.agent("notifier", self.alerts_topic, partial(self.notifier_agent.run, policy=rt.policy))
        rt.on_assigned(self.notifier_agent.on_assigned)
        rt.every(STALL_CHECK_S, partial(rt.read_stalled_partitions, self.lag), "read_stalled")

        def revoked(partitions: list[tuple[str, int]]) -> None:
            """Unflushed state of a revoked partition is dropped: its new owner replays it.
            Records handled before the rebalance are not committed (see the checkpoint)."""
            for topic, partition in partitions:
                if topic == signals_name:
                    self.alerting_agent.revoke()
                elif topic == messages_name:
                    self.messages_agent.revoke(partition)
                elif topic == recipients_name:
                    self.recipients_agent.revoke(partition)

        rt.on_revoked(revoked)

        # -- web routes ------------------------------------------------------------------
        web_app = rt.web_app
        web_app.router.add_get("/metrics", make_aiohttp_handler(registry))
        routes = api.register(self, web_app)
        sender_api.register(routes, web_app)  # audience pre-flight and retry plans
        page.register(self, web_app, routes)

    @property
    def alerting(self) -> AlertingStage:
        """The alerting stage (a new one after each rebalance that took the signals away)."""
        return self.alerting_agent.stage

    def _alerting_stage(self) -> AlertingStage:
        s = self.settings
        return AlertingStage(
            partitions=s.topic_partitions, idle_s=s.alert_idle_s, max_wait_s=s.alert_max_wait_s
        )


def create_monitor(
    settings: Settings, bootstrap: str, registry: CollectorRegistry | None = None
) -> Monitor:
    """Build the monitor's Faust app for ``bootstrap`` (no I/O happens until it runs)."""
    return Monitor(settings, bootstrap, registry if registry is not None else CollectorRegistry())


def create_app(
    settings: Settings, bootstrap: str, registry: CollectorRegistry | None = None
) -> Any:
    """The Faust app of a new monitor (what :mod:`streams.runtime.worker` runs)."""
    return create_monitor(settings, bootstrap, registry).app
