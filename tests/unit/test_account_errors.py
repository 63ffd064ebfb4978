"""Account-level errors (value.errors: no message, no wamid) become counted events: in the
sending number's minute buckets and API windows, in metrics by class, code and sender, and in
the immediate rules (spam and throughput bursts). Counted exactly once per webhook item, when
the raw webhook or the stage's own input is replayed."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from streams.core.aggregates import Bucket, sum_counts, summarize
from streams.core.alerts import AlertBook, NotificationKind, Scope
from streams.core.facts import decode_batch
from streams.core.immediate import (
    SPAM_BURST,
    THROUGHPUT_BURST,
    ErrorCount,
    ImmediateConfig,
    ImmediateRules,
)
from streams.core.keys import BucketId
from streams.metrics import MonitorMetrics
from streams.simulate import errors_envelope
from streams.stages.ingest import IngestStage
from streams.stages.messages import MessageStage
from streams.state import DictKeyValue, decode

N = 4
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
SENDER = "106540352242922"


def errors_body(codes: list[int], *, sender: str | None = SENDER, time: int | None = T0) -> bytes:
    return errors_envelope(sender, codes, time)


class Pipeline:
    """Stage 1 and stage 2 over in-memory partitions, with a messages topic as a list."""

    def __init__(self, clock: float = T0 + 999) -> None:
        self.ingest = IngestStage(N, N, clock=lambda: clock)
        self.kv = DictKeyValue()
        self.messages = MessageStage(self.kv, N)
        self.topic: dict[int, list[bytes]] = {p: [] for p in range(N)}
        self.consumed = dict.fromkeys(range(N), 0)

    def raw(self, offset: int, body: bytes, partition: int = 0) -> None:
        """Stage 1 handles a raw record and produces its facts."""
        self.ingest.handle("raw", partition, offset, body)
        produced, _, _ = self.ingest.drain()
        for p, value in produced.items():
            self.topic[p].append(value)

    def consume(self) -> None:
        """Stage 2 handles the records of the messages topic it has not handled yet."""
        for p, values in self.topic.items():
            for offset in range(self.consumed[p], len(values)):
                self.messages.handle_batch(p, offset, values[offset])
            self.consumed[p] = len(values)
            self.messages.flush(p)

    def sender_counts(
        self, sender: str = SENDER, minute: int = T0 // 60, codes: bool = False
    ) -> dict[str, int]:
        """The sender's minute counts by class (and by code with ``codes``)."""
        buckets = []
        for p in range(N):
            raw = self.kv.get(p, BucketId("s", sender, p, minute).encode().encode())
            if raw is not None:
                buckets.append(decode(raw, Bucket))
        counts = sum_counts(buckets)
        return {k: v for k, v in counts.items() if codes or not k.startswith("account_error_code.")}


def test_account_errors_are_counted_per_sender_class_and_code() -> None:
    run = Pipeline()
    run.raw(0, errors_body([131048] * 25 + [130429] * 3 + [131000]))
    run.consume()
    counts = run.sender_counts(codes=True)
    assert counts == {
        "account_error.spam_quality": 25,
        "account_error.throughput": 3,
        "account_error.transient": 1,
        "account_error_code.131048": 25,
        "account_error_code.130429": 3,
        "account_error_code.131000": 1,
    }
    window = summarize(counts)
    assert (window.account_errors, window.failed, window.attempted) == (29, 0, 0)
    assert window.account_errors_by_class == {"spam_quality": 25, "throughput": 3, "transient": 1}
    assert window.account_errors_by_code == {"130429": 3, "131000": 1, "131048": 25}
    assert run.messages.stats.take_account_errors() == {
        (SENDER, "spam_quality", 131048): 25,
        (SENDER, "throughput", 130429): 3,
        (SENDER, "transient", 131000): 1,
    }
    signals = run.messages.drain_signals()
    assert signals is not None
    assert sorted(signals.errors, key=lambda e: e.code) == [
        ErrorCount(130429, SENDER, T0, 3),
        ErrorCount(131000, SENDER, T0, 1),
        ErrorCount(131048, SENDER, T0, 25),
    ]


def test_a_replayed_raw_webhook_counts_nothing_again() -> None:
    """Stage 1 crashed after producing and before committing: the same raw record comes again
    and its facts are produced a second time (same origins, new positions)."""
    run = Pipeline()
    body = errors_body([131048] * 5)
    run.raw(0, body)
    run.raw(1, errors_body([130429], time=T0 + 10))
    run.raw(0, body)  # the replay
    run.raw(1, errors_body([130429], time=T0 + 10))
    run.consume()
    assert run.sender_counts() == {"account_error.spam_quality": 5, "account_error.throughput": 1}
    assert sum(run.messages.stats.take_account_errors().values()) == 6
    signals = run.messages.drain_signals()
    assert signals is not None and sum(e.count for e in signals.errors) == 6
    assert run.messages.stats.replays == 2


def test_stage_2_reading_its_input_again_counts_nothing_again() -> None:
    """Stage 2 flushed its state and crashed before committing: a new stage on the same store
    reads the same records again."""
    run = Pipeline()
    run.raw(0, errors_body([131048] * 5))
    run.consume()
    run.messages.stats.take_account_errors()
    again = MessageStage(run.kv, N)
    for p, values in run.topic.items():
        for offset, value in enumerate(values):
            again.handle_batch(p, offset, value)
        again.flush(p)
    assert run.sender_counts() == {"account_error.spam_quality": 5}
    assert again.stats.take_account_errors() == {}
    signals = again.drain_signals()
    assert signals is None or signals.errors == []


def test_unflushed_work_lost_with_a_revoke_is_counted_when_read_again() -> None:
    run = Pipeline()
    run.raw(0, errors_body([131048] * 5))
    (partition,) = (
        p for p, values in run.topic.items() if any(decode_batch(v).account_errors for v in values)
    )
    run.messages.handle_batch(partition, 0, run.topic[partition][0])
    run.messages.revoke(partition)  # the rebalance discards the unflushed state
    run.messages.drain_signals()
    run.messages.stats.take_account_errors()
    run.consume()
    assert run.sender_counts() == {"account_error.spam_quality": 5}
    assert run.messages.stats.take_account_errors() == {(SENDER, "spam_quality", 131048): 5}


def test_a_body_of_thousands_of_errors_is_one_small_fact() -> None:
    run = Pipeline()
    run.ingest.handle("raw", 0, 0, errors_body([131048] * 5000 + [130429]))
    produced, _, _ = run.ingest.drain()
    (value,) = (v for v in produced.values() if decode_batch(v).account_errors)
    facts = decode_batch(value).account_errors
    assert [(f.code, f.count) for f in facts] == [(131048, 5000), (130429, 1)]
    assert len(value) < 200


def test_errors_without_time_or_number_use_the_ingest_time_and_sender_unknown() -> None:
    """Meta's value.errors example has no entry time; On-Prem errors have no metadata."""
    run = Pipeline(clock=T0 + 30.7)
    run.raw(0, errors_body([130429], sender=None, time=None))
    run.consume()
    assert run.sender_counts("unknown") == {"account_error.throughput": 1}


def test_metrics_count_account_errors_by_class_code_and_capped_sender() -> None:
    run = Pipeline()
    run.raw(0, errors_body([131048] * 2 + [130429, 999_999]))
    run.consume()
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry, sender_label_cap=1)
    metrics.observe_messages(run.messages.stats)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(f"whatsapp_monitor_{name}_total", labels)

    assert value("account_errors", error_class="spam_quality", error_code="131048") == 2
    assert value("account_errors", error_class="throughput", error_code="130429") == 1
    assert value("account_errors", error_class="unknown", error_code="other") == 1
    assert value("account_errors", error_class="throughput", error_code="131064") == 0
    assert value("sender_account_errors", sender=SENDER, error_class="spam_quality") == 2
    # failed statuses are another metric: account errors are not failures of a message
    assert value("failures", error_class="spam_quality", error_code="131048") == 0
    assert value("sender_messages", sender=SENDER, outcome="failed") == 0

    run.raw(1, errors_body([131048], sender="999"))
    run.consume()
    metrics.observe_messages(run.messages.stats)
    assert value("sender_account_errors", sender="__other__", error_class="spam_quality") == 1


def test_spam_and_throughput_bursts_from_account_errors_alert_per_sending_number() -> None:
    run = Pipeline()
    run.raw(0, errors_body([131048] * 20))
    run.raw(1, errors_body([130429] * 12 + [131064] * 8, time=T0 + 60))
    run.raw(2, errors_body([130429] * 19, sender="other", time=T0 + 60))
    run.consume()
    signals = run.messages.drain_signals()
    assert signals is not None
    rules, book = ImmediateRules(), AlertBook()
    for error in signals.errors:
        rules.observe(error)
    fired = book.apply(rules.evaluate(T0 + 180))
    assert {(n.kind, n.headline.rule, n.headline.scope) for n in fired} == {
        (NotificationKind.FIRING, SPAM_BURST, Scope.for_sender(SENDER)),
        (NotificationKind.FIRING, THROUGHPUT_BURST, Scope.for_sender(SENDER)),
    }
    (throughput,) = (n for n in fired if n.headline.rule == THROUGHPUT_BURST)
    assert throughput.headline.evidence.count == 20


def test_the_throughput_burst_threshold_is_configurable() -> None:
    rules = ImmediateRules(ImmediateConfig(throughput_burst_threshold=3, window_seconds=120))
    rules.observe(ErrorCount(131064, SENDER, T0, 2))
    assert rules.evaluate(T0 + 60).findings == ()
    rules.observe(ErrorCount(130429, SENDER, T0 + 10, 1))
    (finding,) = rules.evaluate(T0 + 60).findings
    assert (finding.rule, finding.evidence.count) == (THROUGHPUT_BURST, 3)
    assert rules.evaluate(T0 + 300).findings == ()  # out of the 2-minute window
