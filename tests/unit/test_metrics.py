"""The metrics module on a fresh registry each: what the stages count is what Prometheus reads.

The counters are fed by the real stages (in-memory tables) on a generated campaign and compared
with the campaign's own truth; the label caps, the pre-created label sets, the lag histogram and
the scrape-time gauges are pinned down one by one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from streams.core.aggregates import Bucket, sum_counts, summarize
from streams.core.catalog import CATALOG
from streams.core.facts import FactBatch, RecipientFact, RecipientFactKind, TemplateFact
from streams.core.facts import encode_batch as encode_facts
from streams.core.keys import BucketId
from streams.lag import LagReport, PartitionLag
from streams.metrics import (
    FUNNEL,
    OTHER,
    SLACK_OUTCOMES,
    MonitorMetrics,
    StateSnapshot,
    error_code_label,
)
from streams.simulate import Campaign, CampaignSpec, Message, envelope, generate, status_item
from streams.slack import SlackOutcome
from streams.stages import partition_for
from streams.stages.ingest import LAG_BUCKETS, IngestStage
from streams.stages.messages import MessageStage, MessageStats
from streams.stages.recipients import RecipientStage
from streams.state import DictKeyValue, decode

N = 4
P = "whatsapp_monitor_"
DAY = 86_400
T0 = 1_767_225_600
STATUSES = ("sent", "delivered", "read", "failed")


@dataclass
class Pipeline:
    ingest: IngestStage
    messages: MessageStage
    recipients: RecipientStage
    metrics: MonitorMetrics
    registry: CollectorRegistry

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(P + name, labels)

    def snapshot(self) -> StateSnapshot:
        cooldown, opted_out = self.recipients.gauges(list(range(N)))
        return StateSnapshot(
            cooldown,
            opted_out,
            self.messages.paused_templates(list(range(N))),
            self.messages.recent.totals(),
        )


def run(campaign: Campaign, clock_s: float) -> Pipeline:
    """The three stages over in-memory partitions: the whole send log, then every body."""
    registry = CollectorRegistry()
    p = Pipeline(
        IngestStage(N, N, clock=lambda: clock_s),
        MessageStage(DictKeyValue(), N),
        RecipientStage(DictKeyValue()),
        MonitorMetrics(registry),
        registry,
    )
    p.metrics.watch_state(p.snapshot)
    offsets: Counter[tuple[str, int]] = Counter()
    for key, value in campaign.send_log:
        part = partition_for(key.decode(), N)
        p.messages.handle_send_log(part, offsets["s", part], value)
        offsets["s", part] += 1
    for i, body in enumerate(campaign.payloads):
        p.ingest.handle("raw", 0, i, body)
    statuses, facts, _ = p.ingest.drain()
    for part, value in sorted(statuses.items()):
        p.messages.handle_batch(part, offsets["m", part], value)
        offsets["m", part] += 1
    for part in p.messages.state.partitions():
        p.messages.flush(part)
    p.messages.drain_signals()  # as the worker does after every flush (fills the recent window)
    for part, value in p.messages.drain_outbox().items():
        p.recipients.handle_batch(part, offsets["r", part], value)
        offsets["r", part] += 1
    for part, value in facts.items():
        p.recipients.handle_batch(part, offsets["r", part], value)
        offsets["r", part] += 1
    for part in p.recipients.state.partitions():
        p.recipients.flush(part)
    p.metrics.observe_ingest(p.ingest.stats)
    p.metrics.observe_messages(p.messages.stats)
    p.metrics.observe_recipients(p.recipients.stats)
    return p


@pytest.fixture(scope="module")
def campaign() -> Campaign:
    spec = CampaignSpec(messages=1_500, failure_ratio=0.3, campaigns=("spring", "fall", ""))
    return generate(spec, seed=5)


@pytest.fixture(scope="module")
def pipeline(campaign: Campaign) -> Pipeline:
    end = max(ts for m in campaign.messages for _, ts, _ in m.statuses)
    return run(campaign, clock_s=end + 90.0)


def test_dimension_counters_equal_the_campaign_truth(
    campaign: Campaign, pipeline: Pipeline
) -> None:
    """Per sending number, template, country and campaign: every funnel outcome and every
    failure class is counted once per message (duplicates dropped), exactly as the generator's
    truth says."""
    truth = campaign.truth
    assert set(truth.campaigns) == {"spring", "fall"}
    for dim, expected in (
        ("sender", truth.senders),
        ("template", truth.templates),
        ("country", truth.countries),
        ("campaign", truth.campaigns),
    ):
        for key, counts in expected.items():
            failed = {k[7:]: v for k, v in counts.items() if k.startswith("failed.")}
            for outcome in FUNNEL:
                want = sum(failed.values()) if outcome == "failed" else counts[outcome]
                got = pipeline.value(f"{dim}_messages_total", **{dim: key, "outcome": outcome})
                assert got == want, (dim, key, outcome)
            for cls, n in failed.items():
                got = pipeline.value(f"{dim}_failures_total", **{dim: key, "error_class": cls})
                assert got == n, (dim, key, cls)


def test_unique_statuses_by_category_and_failures_by_code(
    campaign: Campaign, pipeline: Pipeline
) -> None:
    """statuses_total counts each (wamid, status) once although 10% of the POSTs are repeated;
    failures_total splits 131049 into the per-user limit and the US pause by recipient."""
    unique: Counter[tuple[str, str]] = Counter()
    codes: Counter[tuple[str, str]] = Counter()
    for m in campaign.messages:
        for status, _, code in m.statuses:
            unique[status, m.category] += 1  # the send log (all first here) gives the category
            if status == "failed" and code is not None:
                cls = CATALOG[code].error_class.value
                if code == 131049 and m.country == "US":
                    cls = "us_marketing_pause"
                codes[cls, str(code)] += 1
    for (status, category), n in unique.items():
        assert pipeline.value("statuses_total", status=status, category=category) == n
    received = sum(pipeline.value("status_events_total", status=s) or 0 for s in STATUSES)
    assert pipeline.value("duplicate_statuses_total") == received - unique.total() > 0
    for (cls, code), n in codes.items():
        assert pipeline.value("failures_total", error_class=cls, error_code=code) == n
    assert codes["us_marketing_pause", "131049"] and codes["per_user_marketing_limit", "131049"]


def test_recipient_gauges_equal_the_truth(campaign: Campaign, pipeline: Pipeline) -> None:
    """Every recipient with a 131049 in this half-hour campaign is in its 24 h cool-down; every
    recipient with a 131050 is opted out (scrape-time gauges from the partition meta)."""
    opted_out = {m.recipient for m in campaign.messages for s, _, c in m.statuses if c == 131050}
    assert len(campaign.truth.limit_failures) > 5 and len(opted_out) > 5
    assert pipeline.value("recipients_in_cooldown") == len(campaign.truth.limit_failures)
    assert pipeline.value("recipients_opted_out") == len(opted_out)
    assert pipeline.value("templates_paused") == 0


def test_recent_limit_error_ratio_is_the_five_minute_window_of_the_buckets() -> None:
    """The per-template and per-sender ratio gauges equal limit errors / attempts summed from
    the minute buckets over the 5 minutes ending at the newest watermark (the API's 5m).
    Without read receipts (minutes after the send, when no send is left to count in the
    window) the campaign's last statuses come seconds after its last sends."""
    spec = CampaignSpec(messages=900, failure_ratio=0.3, read_ratio=0.0, campaigns=("spring",))
    campaign = generate(spec, seed=6)
    end_s = max(ts for m in campaign.messages for _, ts, _ in m.statuses)
    pipeline = run(campaign, clock_s=end_s + 90.0)
    end = max(ts for m in campaign.messages for _, ts, _ in m.statuses) // 60
    kv = pipeline.messages.state.kv
    for dim, label, keys in (
        ("t", "template", campaign.truth.templates),
        ("s", "sender", campaign.truth.senders),
    ):
        seen = 0
        for key in keys:
            buckets = [
                kv.get(p, BucketId(dim, key, p, minute).encode().encode())
                for p in range(N)
                for minute in range(end - 4, end + 1)
            ]
            window = summarize(sum_counts(decode(b, Bucket) for b in buckets if b is not None))
            got = pipeline.value(f"{label}_window_attempts", **{label: key})
            if not window.attempted:
                assert got is None
                continue
            seen += 1
            assert got == window.attempted
            ratio = pipeline.value(f"{label}_limit_error_ratio", **{label: key})
            assert ratio == pytest.approx(window.limit_error_ratio)
        assert seen, dim


def test_event_lag_histogram_uses_the_injected_clock() -> None:
    """Lag = clock at ingest - webhook timestamp, observed per status into LAG_BUCKETS."""
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    ingest = IngestStage(N, N, clock=lambda: T0 + 42.0)
    msg = Message(
        "wamid.LAG1",
        "106540352242922",
        "15550783881",
        "5511987000001",
        "BR",
        "promo",
        "marketing",
        T0,
        [],
        True,
    )
    ingest.handle(
        "raw", 0, 0, envelope(msg.sender, msg.display, [status_item(msg, "sent", T0, None)])
    )
    ingest.handle(
        "raw",
        0,
        1,
        envelope(msg.sender, msg.display, [status_item(msg, "delivered", T0 + 40, None)]),
    )
    metrics.observe_ingest(ingest.stats)

    def bucket(status: str, le: str) -> float | None:
        return registry.get_sample_value(
            P + "event_lag_seconds_bucket", {"status": status, "le": le}
        )

    assert 30 < 42 <= 60 and 60.0 in LAG_BUCKETS
    assert bucket("sent", "30.0") == 0 and bucket("sent", "60.0") == 1
    assert bucket("delivered", "1.0") == 0 and bucket("delivered", "2.5") == 1
    assert bucket("sent", "+Inf") == 1
    assert registry.get_sample_value(P + "event_lag_seconds_count", {"status": "sent"}) == 1
    assert registry.get_sample_value(P + "event_lag_seconds_sum", {"status": "sent"}) == 42
    assert bucket("read", "+Inf") == 0  # known statuses are there before their first event
    assert registry.get_sample_value(P + "last_event_timestamp_seconds") == T0 + 40
    # a second flush adds to the first (the stage's pending counts are taken each time)
    metrics.observe_ingest(ingest.stats)
    assert bucket("sent", "+Inf") == 1


def test_template_label_cap_folds_the_rest_into_other() -> None:
    """10,000 distinct template names: at most K+1 series per template metric (K names plus
    __other__), and the overflow counter says how many names were folded, each once."""
    K = 50
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry, template_label_cap=K)
    stats = MessageStats()
    names = [f"tpl_{i:05d}" for i in range(10_000)]

    def feed() -> None:
        for name in names:
            stats.counted["t", name, "attempted"] += 2
            stats.counted["t", name, "failed.per_user_marketing_limit"] += 1
        metrics.observe_messages(stats)

    feed()
    recent = {("t", name): (4, 1) for name in names}
    metrics.watch_state(lambda: StateSnapshot(recent=recent))
    families = {f.name: f for f in registry.collect()}
    for name in (
        "template_messages",
        "template_failures",
        "template_limit_error_ratio",
        "template_window_attempts",
    ):
        samples = families[P + name].samples
        templates = {s.labels["template"] for s in samples}
        assert len(templates) == K + 1 and OTHER in templates, name
        # the capped metrics keep a bounded number of series in total, not only of names
        assert len(samples) <= (K + 1) * 5, name
    overflow = registry.get_sample_value(P + "template_label_overflow_total")
    assert overflow == len(names) - K
    assert registry.get_sample_value(
        P + "template_messages_total", {"template": OTHER, "outcome": "attempted"}
    ) == 2 * (len(names) - K)
    assert (
        registry.get_sample_value(
            P + "template_messages_total", {"template": names[0], "outcome": "attempted"}
        )
        == 2
    )
    ratio = registry.get_sample_value(P + "template_limit_error_ratio", {"template": OTHER})
    assert ratio == pytest.approx(0.25)
    feed()  # the same names again: already folded, not counted again
    assert registry.get_sample_value(P + "template_label_overflow_total") == len(names) - K


def test_campaign_label_cap_folds_the_rest_into_other() -> None:
    """Campaign ids are capped like templates: K names, the rest under __other__, counted
    once each in the campaign overflow counter."""
    K = 3
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry, campaign_label_cap=K)
    stats = MessageStats()
    for i in range(10):
        stats.counted["g", f"c-{i}", "attempted"] += 1
    metrics.observe_messages(stats)
    samples = {f.name: f for f in registry.collect()}[P + "campaign_messages"].samples
    assert {s.labels["campaign"] for s in samples} == {"c-0", "c-1", "c-2", OTHER}
    assert (
        registry.get_sample_value(
            P + "campaign_messages_total", {"campaign": OTHER, "outcome": "attempted"}
        )
        == 7
    )
    assert registry.get_sample_value(P + "campaign_label_overflow_total") == 7
    assert registry.get_sample_value(P + "template_label_overflow_total") == 0


def test_consumer_lag_gauges_show_the_last_measurement() -> None:
    """Per group, topic and partition, as last measured; nothing before the first one."""
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    report: list[LagReport | None] = [None]
    metrics.watch_lag(lambda: report[0])
    assert registry.get_sample_value(P + "consumer_lag_measured_timestamp_seconds") is None
    report[0] = LagReport(
        T0,
        (
            PartitionLag("app-ingest", "raw", 0, 12, 4.5),
            PartitionLag("app", "app-messages", 3, 0, 0.0),
        ),
    )
    labels = {"group": "app-ingest", "topic": "raw", "partition": "0"}
    assert registry.get_sample_value(P + "consumer_lag_records", labels) == 12
    assert registry.get_sample_value(P + "consumer_lag_seconds", labels) == 4.5
    labels = {"group": "app", "topic": "app-messages", "partition": "3"}
    assert registry.get_sample_value(P + "consumer_lag_records", labels) == 0
    assert registry.get_sample_value(P + "consumer_lag_measured_timestamp_seconds") == T0


def test_known_label_sets_exist_at_zero_before_any_event() -> None:
    """increase() sees the first alert, Slack outcome, 131049 or limit error of a new template."""
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(P + name, labels)

    assert value("alerts_total", rule="spike", kind="firing") == 0
    assert value("alerts_total", rule="template_paused", kind="resolved") == 0
    for outcome in SLACK_OUTCOMES:
        assert value("slack_deliveries_total", outcome=outcome) == 0
    assert value("failures_total", error_class="per_user_marketing_limit", error_code="131049") == 0
    assert value("failures_total", error_class="us_marketing_pause", error_code="131049") == 0
    assert value("failures_total", error_class="unknown", error_code="other") == 0
    assert value("template_failures_total", template=OTHER, error_class="opt_out") == 0
    assert value("statuses_total", status="delivered", category="marketing") == 0
    stats = MessageStats()
    stats.counted["t", "spring_sale", "attempted"] = 3
    stats.counted["s", "106540352242922", "sent"] = 3
    metrics.observe_messages(stats)
    # a new template or sender brings its limit-error series at 0 with its first send
    assert (
        value(
            "template_failures_total",
            template="spring_sale",
            error_class="per_user_marketing_limit",
        )
        == 0
    )
    assert (
        value("sender_failures_total", sender="106540352242922", error_class="us_marketing_pause")
        == 0
    )
    assert value("template_messages_total", template="spring_sale", outcome="attempted") == 3
    assert value("last_event_timestamp_seconds") == 0


def test_alert_and_slack_feeds_and_label_sets_match_the_enums() -> None:
    """The pre-created Slack outcomes are exactly SlackOutcome's values; the feeds count."""
    assert set(SLACK_OUTCOMES) == {o.value for o in SlackOutcome}
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    metrics.slack_outcome(SlackOutcome.RATE_LIMITED)

    @dataclass
    class Headline:
        rule: str

    @dataclass
    class Note:
        headline: Headline
        kind: str

    metrics.alert_notified(Note(Headline("spike"), "firing"))
    assert registry.get_sample_value(P + "slack_deliveries_total", {"outcome": "rate_limited"}) == 1
    assert registry.get_sample_value(P + "alerts_total", {"rule": "spike", "kind": "firing"}) == 1


def test_error_codes_outside_the_catalog_are_other_and_classes_are_closed() -> None:
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    stats = MessageStats()
    stats.failures["unknown", 999_999] += 2
    stats.failures[None, None] += 1
    stats.failures["not-a-class", 131049] += 1
    stats.unique_statuses["sparkled", "MARKETING"] += 1
    stats.unique_statuses["sent", "brand_new_category"] += 1
    metrics.observe_messages(stats)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(P + name, labels)

    assert error_code_label(131049) == "131049" and error_code_label(7) == "other"
    assert value("failures_total", error_class="unknown", error_code="other") == 2
    assert value("failures_total", error_class="unknown", error_code="none") == 1
    assert value("failures_total", error_class="unknown", error_code="131049") == 1
    assert value("statuses_total", status="unknown", category="marketing") == 1
    assert value("statuses_total", status="sent", category="other") == 1


def _recipient_batch(*facts: tuple[str, RecipientFactKind, int], offset: int) -> bytes:
    return encode_facts(
        FactBatch(
            recipients=[
                RecipientFact(who, kind, ts, (4_000_00, offset, i))
                for i, (who, kind, ts) in enumerate(facts)
            ]
        )
    )


def test_recipient_gauges_follow_transitions_expiry_of_cooldowns_and_restarts() -> None:
    """Opt-out then resume, a 131049 cool-down that ends 24 h later (as the partition's event
    time moves), a replayed batch counted once, and the counts read back after a restart."""
    kv = DictKeyValue()
    stage = RecipientStage(kv)
    K = RecipientFactKind
    a, b, c = "5511987000001", "5511987000002", "5511987000003"
    batch = _recipient_batch(
        (a, K.OPT_OUT_FAILURE, T0),
        (b, K.PREFERENCE_STOP, T0 + 1),
        (c, K.LIMIT_FAILURE, T0 + 2),
        (a, K.LIMIT_FAILURE, T0 + 3),
        offset=0,
    )
    stage.handle_batch(0, 0, batch)
    stage.handle_batch(0, 0, batch)  # a replay
    stage.flush(0)
    assert stage.gauges([0]) == (2, 2)
    stage.handle_batch(
        0,
        1,
        _recipient_batch(
            (b, K.PREFERENCE_RESUME, T0 + 10), (c, K.LIMIT_FAILURE, T0 + 600), offset=1
        ),
    )
    stage.flush(0)
    assert stage.gauges([0]) == (2, 1)
    # a's cool-down ends at T0 + 3 + 24 h, c's (moved by its second 131049) at T0 + 600 + 24 h
    stage.handle_batch(
        0, 2, _recipient_batch(("5511987000009", K.INBOUND_MESSAGE, T0 + DAY + 400), offset=2)
    )
    stage.flush(0)
    assert stage.gauges([0]) == (1, 1)
    restarted = RecipientStage(kv)
    assert restarted.gauges([0]) == (1, 1)
    restarted.handle_batch(
        0, 3, _recipient_batch(("5511987000009", K.INBOUND_MESSAGE, T0 + DAY + 1_000), offset=3)
    )
    restarted.flush(0)
    assert restarted.gauges([0]) == (0, 1)


def test_paused_templates_follow_the_latest_status_update() -> None:
    stage = MessageStage(DictKeyValue(), N)

    def update(offset: int, *facts: TemplateFact) -> None:
        part = partition_for(facts[0].name, N)
        stage.handle_batch(part, offset, encode_facts(FactBatch(templates=list(facts))))
        stage.flush(part)

    update(0, TemplateFact("spring_sale", "status", "PAUSED", T0))
    update(0, TemplateFact("winter_sale", "status", "DISABLED", T0))
    assert stage.paused_templates(list(range(N))) == 2
    update(1, TemplateFact("spring_sale", "status", "PAUSED", T0 + 5))  # still paused
    assert stage.paused_templates(list(range(N))) == 2
    update(2, TemplateFact("spring_sale", "status", "REINSTATED", T0 + 60))
    update(3, TemplateFact("spring_sale", "status", "PAUSED", T0 + 30))  # older: ignored
    assert stage.paused_templates(list(range(N))) == 1


def test_exposition_names_follow_prometheus_conventions() -> None:
    """Counters end in _total, timestamps in _timestamp_seconds, no recipient-like labels."""
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    metrics.watch_state(lambda: StateSnapshot(recent={("t", "x"): (1, 0), ("s", "y"): (1, 0)}))
    lag = LagReport(T0, (PartitionLag("app", "app-messages", 0, 1, 1.0),))
    metrics.watch_lag(lambda: lag)
    labels: set[str] = set()
    for family in registry.collect():
        assert family.name.startswith("whatsapp_monitor_"), family.name
        for sample in family.samples:
            labels |= set(sample.labels)
            if family.type == "counter":
                assert sample.name.endswith("_total"), sample.name
    assert not labels & {"recipient", "phone", "wamid", "user_id"}
    assert labels <= {
        "version",
        "topic",
        "stage",
        "agent",
        "kind",
        "status",
        "rule",
        "outcome",
        "category",
        "error_class",
        "error_code",
        "template",
        "sender",
        "country",
        "verdict",
        "campaign",
        "group",
        "partition",
        "le",
        "reason",  # unattributed callback data: a closed set, never the value
    }
