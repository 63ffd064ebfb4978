"""The minute in progress is checked every 15 s of event time, so a spike alerts within 60 s of
its onset whatever second of the minute it starts at; the checks only ever make an alert fire
sooner (never one the complete minutes would not fire, never a resolve), respect the time the
slowest partition holds back, and survive a restart without skipping or repeating a message.

The stage runs on an injected clock: traffic is one template at 10 sends a second, 1 % of them
failing with 131049 (one error every 10 s), handed over in signal batches of ``step`` seconds
(watermark: the batch's last second), as the counting stages would.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from streams.core.alerts import AlertBook, Notification, NotificationKind, Scope, Verdict
from streams.core.detector import (
    DetectorConfig,
    SpikeDetector,
    SpikeThresholds,
    judge,
)
from streams.core.eventtime import visible_at
from streams.core.keys import STAGE_KEY
from streams.core.signals import BucketSignal, PartitionReport, SignalBatch
from streams.stages.alerting import AlertingStage, StageState
from streams.state import DictKeyValue, Snapshots, decode

LIMIT = "per_user_marketing_limit"
SALE = Scope.for_template("spring_sale")
T0 = 1_751_000_000 // 3600 * 3600  # an hour boundary, event time
HISTORY = 60 * 60  # seconds of quiet traffic before the live part
LIVE = T0 + HISTORY  # a minute boundary
SPIKE_MINUTE = LIVE // 60 + 2
RATE = 10  # sends a second

Errors = Callable[[int], int]


def quiet(t: int) -> int:
    return 1 if t % 10 == 0 else 0  # 1 %


def spike_from(onset: int, until: int | None = None) -> Errors:
    """45 % of the sends fail from ``onset`` (to ``until``), 1 % otherwise."""

    def errors(t: int) -> int:
        if onset <= t and (until is None or t < until):
            return 4 + t % 2
        return quiet(t)

    return errors


def batch(first: int, stop: int, errors: Errors) -> SignalBatch:
    """Seconds ``first..stop-1`` of traffic, as minute-bucket deltas (each usable from the
    evaluation point after its second), and the one partition's report of time read."""
    cells: dict[tuple[int, int], dict[str, int]] = {}
    for t in range(first, stop):
        counts = cells.setdefault((t // 60, visible_at(t)), {"attempted": 0, f"failed.{LIMIT}": 0})
        counts["attempted"] += RATE
        counts[f"failed.{LIMIT}"] += errors(t)
    buckets = [
        BucketSignal(dim, key, minute, dict(counts), visible=visible)
        for (minute, visible), counts in cells.items()
        for dim, key in (("t", SALE.key), ("s", "15550001111"), ("c", "BR"))
    ]
    return SignalBatch(buckets=buckets, max_ts=stop - 1, reports=[report(0, stop - 1)])


def report(partition: int, mark: int) -> PartitionReport:
    return PartitionReport(partition, {0: mark}, [], 1, mark)


def signals(errors: Errors, live_seconds: int, step: int) -> list[SignalBatch]:
    """An hour of history in minute batches, then ``live_seconds`` in batches of ``step``."""
    out = [batch(t, t + 60, errors) for t in range(T0, LIVE, 60)]
    end = LIVE + live_seconds
    out += [batch(t, min(t + step, end), errors) for t in range(LIVE, end, step)]
    return out


def run(
    stage: AlertingStage,
    batches: list[SignalBatch],
    first: int = 0,
    kv: DictKeyValue | None = None,
) -> list[Notification]:
    """Handle batches ``first..`` (offset = index), evaluating (and saving) after each."""
    out: list[Notification] = []
    for offset in range(first, len(batches)):
        stage.handle(batches[offset], offset)
        out += stage.evaluate()
        if kv is not None:
            stage.save(kv)
    return out


def new_stage(partial_every: int = 15) -> AlertingStage:
    return AlertingStage(
        DetectorConfig(partial_every=partial_every), clock=lambda: 0.0, partitions=1
    )


def firings(notes: list[Notification]) -> list[Notification]:
    return [n for n in notes if n.kind is NotificationKind.FIRING]


# --- a spike alerts within 60 s of its onset, at any phase ----------------------------------


@pytest.mark.parametrize("phase", [5, 30, 55])
@pytest.mark.parametrize("step", [1, 4, 15, 25])
def test_a_spike_fires_within_60_s_of_its_onset_at_any_second_of_the_minute(
    phase: int, step: int
) -> None:
    onset = SPIKE_MINUTE * 60 + phase
    notes = run(new_stage(), signals(spike_from(onset), 6 * 60, step))
    (firing,) = firings(notes)
    assert firing.headline.scope == SALE
    assert 0 <= firing.at - onset <= 60
    # 45 % of 10 sends a second clears the floors (projected to a whole minute) after about
    # 7 s of spike; the next boundary is at most 15 s later, the batch's end another step
    assert firing.at - onset <= 7 + 15 + step
    assert firing.at % 15 == 0  # a boundary of event time, whatever the batching


def test_a_spike_late_in_a_minute_fires_on_the_next_minutes_first_boundary() -> None:
    """Onset at second 55: the 5 s in minute m are under the floor, so complete minutes alone
    wait for minute m + 1 to end (65 s); the check 15 s into m + 1 fires 20 s after onset."""
    onset = SPIKE_MINUTE * 60 + 55
    batches = signals(spike_from(onset), 6 * 60, 1)
    (firing,) = firings(run(new_stage(), batches))
    assert firing.at == (SPIKE_MINUTE + 1) * 60 + 15
    assert firing.headline.evidence.window_seconds == 15
    assert firing.headline.evidence.attempts == 15 * RATE  # the 15 seconds 0..14 so far
    (whole_minutes,) = firings(run(new_stage(partial_every=0), batches))
    assert whole_minutes.at - onset == 65


def test_the_same_spike_fires_the_same_incident_however_the_batches_fall() -> None:
    onset = SPIKE_MINUTE * 60 + 41
    outcomes = set()
    for step in (1, 2, 7, 13, 30, 60, 6 * 60):
        notes = run(new_stage(), signals(spike_from(onset, onset + 180), 20 * 60, step))
        outcomes.add(tuple((n.kind, n.incident, n.headline.scope) for n in notes))
    assert len(outcomes) == 1
    (kinds,) = outcomes
    assert [k for k, _, _ in kinds] == [NotificationKind.FIRING, NotificationKind.RESOLVED]


# --- what the checks of the minute in progress never do -----------------------------------


def burst(t: int) -> int:
    """20 errors in the first 16 s of minute SPIKE_MINUTE (seconds 0..15), 1 % otherwise."""
    second = t - SPIKE_MINUTE * 60
    if 0 <= second < 16:
        return 2 if second < 4 else 1
    return quiet(t)


def test_a_burst_the_rest_of_the_minute_dilutes_does_not_fire_on_a_partial_minute() -> None:
    """20 errors in the first 160 sends of a minute: alone, overwhelming (p ~ 1e-15); but 20 of
    a whole minute's 600 sends is 3.3 %, under the 5 % floor, and the complete minute (24 of
    600) never fires. Projected to a whole minute at the same send rate, the partial check
    refuses it as the complete minute will: no alert, however the batches fall."""
    start = SPIKE_MINUTE * 60
    assert sum(burst(t) for t in range(start, start + 16)) == 20
    det = SpikeDetector()
    for b in signals(burst, 3 * 60 + 15, 1):
        for bucket in b.buckets:
            if bucket.dim == "t":
                attempts = bucket.counts["attempted"]
                det.add(SALE, bucket.minute, attempts, {LIMIT: bucket.counts[f"failed.{LIMIT}"]})
    partial = det.evaluate_partial(start + 15)
    assert partial.findings == () and partial.rules == frozenset()
    # the partial minute alone, unprojected, against the hour of 1 % before it, would fire
    raw, _ = judge(20, 160, 36, 3600, SpikeThresholds(alpha=1e-9), 60)
    assert raw is Verdict.POSITIVE
    for step in (1, 5, 16):
        assert run(new_stage(), signals(burst, 10 * 60, step)) == []


def test_a_partial_check_clears_nothing_and_resolves_nothing() -> None:
    """Resolution is unchanged: the same spike resolves at the same event time with and
    without the checks of the minute in progress, which only bring the FIRING forward."""
    onset = SPIKE_MINUTE * 60 + 55
    batches = signals(spike_from(onset, onset + 240), 25 * 60, 3)
    with_partial = run(new_stage(), batches)
    without = run(new_stage(partial_every=0), batches)
    assert [n.kind for n in with_partial] == [NotificationKind.FIRING, NotificationKind.RESOLVED]
    assert [n.kind for n in without] == [NotificationKind.FIRING, NotificationKind.RESOLVED]
    assert with_partial[0].at < without[0].at
    assert with_partial[1].at == without[1].at


def test_a_partial_evaluation_leaves_a_pending_alert_alone() -> None:
    """It lists positives only and names no rule: nothing it leaves out counts as clear."""
    det, book = SpikeDetector(), AlertBook()
    m = T0 // 60 + 24 * 60
    for minute in range(T0 // 60, m):
        det.observe(SALE, minute, 100, {LIMIT: 2})  # 2 % for a day
    for minute in range(m, m + 4):
        det.observe(SALE, minute, 100, {LIMIT: 3})
    det.observe(SALE, m + 4, 100, {LIMIT: 13})  # window 25 of 500: positive, not overwhelming
    assert book.apply(det.evaluate((m + 5) * 60)) == []
    (pending,) = book.alerts()
    assert pending.state == "pending"
    det.observe(SALE, m + 5, 40, {LIMIT: 1})  # the minute in progress: nothing elevated
    assert det.evaluate_partial((m + 5) * 60 + 30).findings == ()
    assert book.apply(det.evaluate_partial((m + 5) * 60 + 30)) == []
    assert [a.state for a in book.alerts()] == ["pending"]


def test_a_positive_window_still_fires_at_once_when_its_last_minute_alone_is_overwhelming() -> None:
    """25 of 500 in the window is positive at alpha (p 3.7e-5) but not beyond fast_alpha; the
    last minute alone (17 of 100 against 2 %, p 1.8e-11) is: it fires on that evaluation, as
    a partial check of that minute would have (so a partial positive is never earlier than a
    fire the complete minute gives)."""
    det, book = SpikeDetector(), AlertBook()
    m = T0 // 60 + 24 * 60
    for minute in range(T0 // 60, m + 4):
        det.observe(SALE, minute, 100, {LIMIT: 2})
    det.observe(SALE, m + 4, 100, {LIMIT: 17})
    (note,) = book.apply(det.evaluate((m + 5) * 60))
    assert note.kind is NotificationKind.FIRING
    assert note.headline.evidence.window_seconds == 60
    assert note.headline.evidence.p_value is not None and note.headline.evidence.p_value < 1e-9


# --- time and restarts ----------------------------------------------------------------------


def test_a_partition_that_holds_time_back_holds_the_partial_checks_too() -> None:
    """Partition 1 has delivered only the first 5 s of the minute: time is there, and the
    spike partition 0 reports is not judged before partition 1 passes a boundary."""
    onset = SPIKE_MINUTE * 60 + 1
    stage = AlertingStage(clock=lambda: 0.0, partitions=2)
    for b in signals(spike_from(onset), SPIKE_MINUTE * 60 - LIVE + 40, 60):
        b.reports.append(report(1, min(b.max_ts, SPIKE_MINUTE * 60 + 5)))
        stage.handle(b)
        assert stage.evaluate() == []
    assert stage.now() == SPIKE_MINUTE * 60 + 5
    stage.handle(SignalBatch(max_ts=SPIKE_MINUTE * 60 + 20, reports=[report(1, onset + 19)]))
    (firing,) = stage.evaluate()
    assert firing.kind is NotificationKind.FIRING and firing.at == SPIKE_MINUTE * 60 + 15


ONSET = SPIKE_MINUTE * 60 + 55
BATCHES = signals(spike_from(ONSET, ONSET + 120), 12 * 60, 5)


def test_a_restart_after_a_partial_fire_neither_skips_nor_repeats_it() -> None:
    """Saved after each batch (the stage record holds the book and the last boundary checked,
    together): a crash after the batch that fired, with the last batches replayed, posts
    nothing twice; the restored stage checks no boundary again."""
    reference = run(new_stage(), BATCHES)
    fired_at = next(i for i in range(len(BATCHES)) if firings(run(new_stage(), BATCHES[: i + 1])))
    for crash_after in range(fired_at - 2, fired_at + 3):
        for replayed in (0, 1, 3):
            kv = DictKeyValue()
            stage = new_stage()
            notes = run(stage, BATCHES[: crash_after + 1], kv=kv)
            restarted = new_stage()
            restarted.restore(kv)
            assert restarted._next == stage._next
            snapshots = Snapshots(kv, 0)
            snapshots.restore()
            saved = decode(snapshots.get(STAGE_KEY) or b"", StageState)
            assert saved.next_point == stage._next
            assert restarted.evaluate() == []
            notes += run(restarted, BATCHES, crash_after + 1 - replayed, kv)
            assert [(n.id, n.kind) for n in notes] == [(n.id, n.kind) for n in reference]


def test_a_crash_between_sending_a_partial_fire_and_saving_sends_it_again() -> None:
    """The FIRING is in Kafka before the state is saved: a crash in between checks the same
    boundary again after the restart and sends it again (same id: at least once)."""
    reference = run(new_stage(), BATCHES)
    kv = DictKeyValue()
    stage = new_stage()
    notes: list[Notification] = []
    for offset, b in enumerate(BATCHES):
        stage.handle(b, offset)
        out = stage.evaluate()
        notes += out
        if firings(out):
            break  # sent, then SIGKILL before the save
        stage.save(kv)
    restarted = new_stage()
    restarted.restore(kv)
    notes += run(restarted, BATCHES, offset - 1, kv)
    first, again, *rest = notes
    assert first.kind is NotificationKind.FIRING and again == first
    assert [(n.id, n.kind) for n in [first, *rest]] == [(n.id, n.kind) for n in reference]
