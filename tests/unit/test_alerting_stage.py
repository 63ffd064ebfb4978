"""The alerting stage saves and restores its state (alert book, clock, detector baselines), so a
crash anywhere (between batches, between a batch and its save, in the middle of a save) followed
by a replay of the signals since the last commit gives the alerts and counts of a run without it.
"""

from __future__ import annotations

import pytest

from streams.core.alerts import Notification, NotificationKind, Scope
from streams.core.detector import HourRecord, MinuteTally
from streams.core.keys import HOURS_KEY, hour_index_key, hour_key
from streams.core.signals import BucketSignal, PartitionReport, ResendSignal, SignalBatch
from streams.stages.alerting import AlertingStage
from streams.state import DictKeyValue, Snapshots, decode

LIMIT = "per_user_marketing_limit"
T0 = 1_751_000_000 // 3600 * 3600  # an hour boundary
M0 = T0 // 60
SALE = Scope.for_template("spring_sale")
SENDER = Scope.for_sender("15550001111")
SCOPES = (SALE, SENDER, Scope.for_country("BR"), Scope.for_account())
BASELINE = 150  # minutes of quiet traffic before the spike
#: A spike that needs three minutes of evidence: 6 of 12 sends fail each minute, so one minute
#: alone is under min_count (10) and only the window of the last minutes makes it positive.
SPIKE = range(M0 + BASELINE, M0 + BASELINE + 3)
END = M0 + BASELINE + 12


def minute_signal(minute: int) -> SignalBatch:
    """One complete minute of traffic on one template, sender and country."""
    errors = 6 if minute in SPIKE else (1 if minute % 40 == 0 else 0)
    counts = {"attempted": 12, "delivered": 12 - errors}
    if errors:
        counts[f"failed.{LIMIT}"] = errors
    end = (minute + 1) * 60
    buckets = [
        BucketSignal("t", SALE.key, minute, counts, visible=end),
        BucketSignal("s", SENDER.key, minute, counts, visible=end),
        BucketSignal("c", "BR", minute, counts, visible=end),
    ]
    return SignalBatch(buckets=buckets, max_ts=end, reports=[report(end)])


def report(mark: int) -> PartitionReport:
    """The one messages partition has read its raw partition and send log up to ``mark``."""
    return PartitionReport(0, {0: mark}, [], 1, mark)


SIGNALS = [minute_signal(m) for m in range(M0, END)]


def new_stage() -> AlertingStage:
    return AlertingStage(clock=lambda: 0.0, partitions=1)


def run(
    stage: AlertingStage, kv: DictKeyValue, first: int, stop: int, save: bool = True
) -> list[Notification]:
    """Handle signals ``first..stop-1`` (offset = index), evaluating and saving after each."""
    out: list[Notification] = []
    for offset in range(first, stop):
        stage.handle(SIGNALS[offset], offset)
        out += stage.evaluate()
        if save:
            stage.save(kv)
    return out


def uninterrupted() -> tuple[AlertingStage, list[Notification]]:
    stage = new_stage()
    return stage, run(stage, DictKeyValue(), 0, len(SIGNALS))


def ids(notes: list[Notification]) -> set[tuple[str, NotificationKind]]:
    return {(n.id, n.kind) for n in notes}


def assert_same_outcome(
    reference: tuple[AlertingStage, list[Notification]],
    stage: AlertingStage,
    notes: list[Notification],
) -> None:
    ref_stage, ref_notes = reference
    assert ids(notes) == ids(ref_notes)  # every notification, maybe twice, nothing else
    for scope in SCOPES:
        assert stage.detector.totals(scope) == ref_stage.detector.totals(scope), scope


def test_the_short_spike_fires_and_resolves_without_a_crash() -> None:
    _, notes = uninterrupted()
    assert [n.kind for n in notes] == [NotificationKind.FIRING, NotificationKind.RESOLVED]
    assert notes[0].headline.scope == SALE


@pytest.mark.parametrize("crash_after", range(BASELINE - 3, BASELINE + 4))
@pytest.mark.parametrize("committed_back", [0, 1, 3])
def test_a_crash_around_the_spike_then_a_replay_fires_as_without_it(
    crash_after: int, committed_back: int
) -> None:
    """The worker dies after saving signal ``crash_after``; its last commit was a few signals
    earlier, so those are replayed into the restored stage and counted once. Without the saved
    baseline and window, a crash after the spike's second minute loses the first two minutes
    and the third alone (6 errors) never makes the alert fire."""
    reference = uninterrupted()
    kv = DictKeyValue()
    stage = new_stage()
    notes = run(stage, kv, 0, crash_after + 1)
    restarted = new_stage()
    restarted.restore(kv)
    notes += run(restarted, kv, crash_after + 1 - committed_back, len(SIGNALS))
    assert_same_outcome(reference, restarted, notes)
    assert ids(notes) == ids(reference[1])
    assert len(notes) == len(reference[1])  # saved after each batch: nothing twice


@pytest.mark.parametrize("crash_after", range(BASELINE - 1, BASELINE + 4))
def test_a_crash_between_sending_and_saving_sends_again_never_loses(crash_after: int) -> None:
    """Notifications are in Kafka before the state is saved: a crash in between evaluates the
    same minutes again after the restart and sends the same notification (same id) again."""
    reference = uninterrupted()
    kv = DictKeyValue()
    stage = new_stage()
    notes = run(stage, kv, 0, crash_after)
    notes += run(stage, kv, crash_after, crash_after + 1, save=False)  # sent, then SIGKILL
    restarted = new_stage()
    restarted.restore(kv)
    notes += run(restarted, kv, crash_after - 2, len(SIGNALS))
    assert_same_outcome(reference, restarted, notes)


class CrashingKV(DictKeyValue):
    """A table whose process dies after ``budget`` more writes."""

    def __init__(self, data: DictKeyValue, budget: int) -> None:
        super().__init__()
        self.data = data.data
        self.budget = budget

    def _spend(self) -> None:
        if self.budget == 0:
            raise SystemExit("SIGKILL")
        self.budget -= 1

    def set(self, partition: int, key: bytes, value: bytes) -> None:
        self._spend()
        super().set(partition, key, value)

    def delete(self, partition: int, key: bytes) -> None:
        self._spend()
        super().delete(partition, key)


def test_a_crash_in_the_middle_of_a_save_loses_nothing_and_counts_nothing_twice() -> None:
    """The first save of a new hour writes an index, the hour list, records and the stage
    record; a crash after any number of those writes is repaired by the replay."""
    reference = uninterrupted()
    crash_at = BASELINE + 1  # a spike minute; M0 + BASELINE + 1 is in a new hour (150 = 2h30)
    probe = new_stage()
    probe_kv = DictKeyValue()
    run(probe, probe_kv, 0, crash_at)
    probe.handle(SIGNALS[crash_at], crash_at)
    probe.evaluate()
    writes = probe.save(DictKeyValue())
    assert writes >= 4
    for budget in range(writes + 1):
        kv = DictKeyValue()
        stage = new_stage()
        notes = run(stage, kv, 0, crash_at)
        stage.handle(SIGNALS[crash_at], crash_at)
        notes += stage.evaluate()
        with pytest.raises(SystemExit):
            stage.save(CrashingKV(kv, budget))
            raise SystemExit("the save finished; the process dies before its commit")
        restarted = new_stage()
        restarted.restore(kv)
        notes += run(restarted, kv, crash_at - 1, len(SIGNALS))
        assert_same_outcome(reference, restarted, notes)


def test_hour_records_are_small_and_forgotten_with_the_baseline() -> None:
    """One record per scope and hour (at most 60 minutes); hours older than the 24 h baseline
    are deleted from the table, with their index, when time moves on."""
    kv = DictKeyValue()
    stage = new_stage()
    run(stage, kv, 0, len(SIGNALS))
    first_hour = M0 // 60
    for scope in SCOPES:
        record = decode(saved(kv, hour_key(scope, first_hour)) or b"", HourRecord)
        assert len(record.minutes) == 60
        assert all(m // 60 == first_hour for m in record.minutes)
    hours = decode(saved(kv, HOURS_KEY) or b"", list[int])
    assert hours == sorted({m // 60 for m in range(M0, END)})

    late = (END + 26 * 60) * 60
    stage.handle(SignalBatch(max_ts=late, reports=[report(late)]), len(SIGNALS))
    stage.evaluate()
    stage.save(kv)
    assert decode(saved(kv, HOURS_KEY), list[int]) == []
    assert not any(k.startswith(b"d\x1f") or k.startswith(b"dh\x1f") for k in kv.data[0])
    assert saved(kv, hour_index_key(first_hour), None) is None


def saved(kv: DictKeyValue, key: bytes, default: bytes | None = b"") -> bytes | None:
    """A key as the last complete save left it."""
    snapshots = Snapshots(kv, 0)
    snapshots.restore()
    value = snapshots.get(key)
    assert value is not None or default is None, key
    return value


def test_a_save_writes_only_what_changed_and_each_key_once() -> None:
    kv = DictKeyValue()
    stage = new_stage()
    run(stage, kv, 0, 10)
    before = kv.writes
    assert stage.save(kv) == 0 and kv.writes == before  # nothing new
    stage.handle(SIGNALS[10], 10)
    stage.evaluate()
    # one record per scope of the current hour, the stage record (clock moved) and the head
    assert stage.save(kv) == len(SCOPES) + 2
    stage.handle(SIGNALS[10], 10)  # a replay changes nothing
    assert stage.save(kv) == 0


def test_a_restored_stage_keeps_the_clock_and_resolves_when_traffic_stops() -> None:
    """The clock (last minute evaluated, event time, watermarks) is saved with the book: a
    restarted worker with no more traffic still moves event time by the wall clock."""
    wall = [0.0]
    kv = DictKeyValue()
    stage = AlertingStage(clock=lambda: wall[0], partitions=1)
    for offset, signal in enumerate(SIGNALS[: BASELINE + 3]):
        stage.handle(signal, offset)
        stage.evaluate()
        stage.save(kv)
    assert any(a.state == "firing" for a in stage.book.alerts())
    restarted = AlertingStage(clock=lambda: wall[0], partitions=1)
    restarted.restore(kv)
    assert restarted.evaluate() == []  # the same minute is not evaluated twice
    notes: list[Notification] = []
    for _ in range(20):
        wall[0] += 60
        notes += restarted.evaluate()
    assert [n.kind for n in notes] == [NotificationKind.RESOLVED]


def test_a_restart_keeps_event_driven_alerts_and_resend_storms_firing() -> None:
    """A paused template and a resend storm fire; the stage is saved and a new one restored
    from the table: the next minutes post nothing (no premature RESOLVED), and the template's
    REINSTATED later resolves it as before."""
    from streams.core.signals import ResendSignal, TemplateSignal

    t0 = 1_767_225_600
    wall = [0.0]
    kv = DictKeyValue()
    stage = AlertingStage(clock=lambda: wall[0], partitions=1)
    storm = [ResendSignal("promo", t0 + 5, f"digest-{i}", "PN1") for i in range(12)]
    traffic = BucketSignal("s", "PN1", t0 // 60, {"attempted": 1}, visible=t0 + 15)
    stage.handle(
        SignalBatch(
            buckets=[traffic],
            templates=[TemplateSignal("promo", "status", "PAUSED", t0 + 1)],
            resends=storm,
            max_ts=t0 + 61,
            reports=[report(t0 + 61)],
        ),
        offset=0,
    )
    fired = stage.evaluate()
    stage.save(kv)
    assert {n.kind for n in fired} == {NotificationKind.FIRING}
    assert {n.headline.rule for n in fired} == {"template_paused", "resend_storm"}

    restarted = AlertingStage(clock=lambda: wall[0], partitions=1)
    restarted.restore(kv)
    restarted.handle(SignalBatch(max_ts=t0 + 180, reports=[report(t0 + 180)]), offset=1)
    assert [n.kind for n in restarted.evaluate()] == []  # still firing, nothing new to say

    restarted.handle(
        SignalBatch(
            templates=[TemplateSignal("promo", "status", "REINSTATED", t0 + 200)],
            max_ts=t0 + 400,
            reports=[report(t0 + 400)],
        ),
        offset=2,
    )
    resolved = [n for n in restarted.evaluate() if n.kind == NotificationKind.RESOLVED]
    assert [n.headline.rule for n in resolved] == ["template_paused"]


def test_a_restart_writes_what_it_restored_again() -> None:
    """A worker killed between a save's local writes and their changelog records leaves its
    local store ahead of the changelog; the restarted stage's first save writes everything it
    restored, so the changelog alone (what a worker elsewhere restores) is complete again."""
    local = DictKeyValue()
    run(new_stage(), local, 0, 40)
    changelog = DictKeyValue()  # the changelog got the hour records, not the lists and indexes
    changelog.data[0] = {
        k: v for k, v in local.data[0].items() if k.startswith(b"d\x1f") and not k.startswith(b"dh")
    }
    restarted = new_stage()
    restarted.restore(local)
    restarted.save(changelog)
    elsewhere = new_stage()
    elsewhere.restore(changelog)
    for scope in SCOPES:
        assert elsewhere.detector.totals(scope) == restarted.detector.totals(scope) != MinuteTally()


def resends(first_ts: int, n: int = 10) -> SignalBatch:
    return SignalBatch(
        resends=[
            ResendSignal("promo", first_ts + i, f"digest-{i}", "15550001111", "", 100 + i)
            for i in range(n)
        ]
    )


def storm_minutes(relay_first: bool) -> list[tuple[NotificationKind, int]]:
    """Stage 2 reports it read up to T0+600 (report 7); the resends of the facts it sent
    before that report (10 of them by T0+120) reach alerting through the recipients stage,
    after the report or, here with ``relay_first``, before it."""
    stage = AlertingStage(clock=lambda: 0.0, partitions=1, recipient_partitions=1)
    numbered = PartitionReport(0, {0: T0 + 600}, [], 1, T0 + 600, [], seq=7)
    relayed = resends(T0 + 100)
    relayed.relayed = {0: {0: 7}}
    counts = [BucketSignal("t", "promo", M0, {"attempted": 10}, visible=T0 + 15)]
    batches = [relayed, SignalBatch(buckets=counts, reports=[numbered])]
    if not relay_first:
        batches.reverse()
    out: list[tuple[NotificationKind, int]] = []
    for batch in batches:
        stage.handle(batch)
        out += [(n.kind, n.at) for n in stage.evaluate() if n.incident.startswith("resend_storm")]
    return out


def test_resends_relayed_after_the_report_they_precede_fire_in_the_same_minute() -> None:
    """Time waits for the recipients stage to relay a report before passing what it allowed:
    the storm fires at the minute after its tenth resend whichever signal came first."""
    stage = AlertingStage(clock=lambda: 0.0, partitions=1, recipient_partitions=1)
    stage.handle(SignalBatch(reports=[PartitionReport(0, {0: T0 + 600}, [], 1, T0 + 600, [], 7)]))
    assert stage.now() == 0  # report 7 not relayed yet
    assert storm_minutes(relay_first=False) == storm_minutes(relay_first=True)
    assert storm_minutes(relay_first=False)[0] == (NotificationKind.FIRING, T0 + 120)


def test_a_recipients_stage_that_relays_nothing_is_not_waited_for_long() -> None:
    wall = [0.0]
    stage = AlertingStage(clock=lambda: wall[0], partitions=1, recipient_partitions=1)
    stage.handle(SignalBatch(reports=[PartitionReport(0, {0: T0 + 600}, [], 1, T0 + 600, [], 7)]))
    assert stage.now() == 0
    wall[0] = stage.max_wait_s + 1
    assert stage.now() >= T0 + 600
