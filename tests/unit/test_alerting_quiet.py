"""The alerting stage passes over evaluation points that could judge nothing.

Its clock starts at the minute of the first counts and judges every 15-second point up to the
event time. A trusted status years old as the first input (only times before 2009 are refused)
used to mean millions of points, minutes of CPU with the worker's event loop blocked. Points
with nothing to judge (no counts kept or due, no alert or incident open, no event, error or
resend before them, no late counts) are passed over; everything else is judged as before, which
the differential test below checks against the stage with the pass-over turned off.
"""

from __future__ import annotations

import pytest

import streams.core.detector as detector_module
from streams.core.alerts import Notification, Scope
from streams.core.eventtime import GRID
from streams.core.signals import (
    BucketSignal,
    PartitionReport,
    ResendSignal,
    SignalBatch,
    TemplateSignal,
)
from streams.stages.alerting import AlertingStage
from streams.state import DictKeyValue

LIMIT = "failed.per_user_marketing_limit"
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
M0 = T0 // 60
SALE = Scope.for_template("spring_sale")
DAY_POINTS = 86_400 // GRID


def report(mark: int) -> PartitionReport:
    return PartitionReport(0, {0: mark}, [], 1, mark)


def minute(m: int, errors: int = 0, template: str = SALE.key) -> SignalBatch:
    """One complete minute of 12 sends of ``template`` from one number to Brazil."""
    counts = {"attempted": 12, "delivered": 12 - errors}
    if errors:
        counts[LIMIT] = errors
    end = (m + 1) * 60
    buckets = [
        BucketSignal("t", template, m, counts, visible=end),
        BucketSignal("s", "15550001111", m, counts, visible=end),
        BucketSignal("c", "BR", m, counts, visible=end),
    ]
    return SignalBatch(buckets=buckets, max_ts=end, reports=[report(end)])


def traffic(start: int, minutes: int, spike: range = range(0)) -> list[SignalBatch]:
    """Quiet traffic from minute ``start``, 6 of 12 sends failing with 131049 in ``spike``."""
    return [minute(m, 6 if m - start in spike else 0) for m in range(start, start + minutes)]


def feed(
    batches: list[SignalBatch], stage: AlertingStage | None = None
) -> tuple[AlertingStage, list[Notification], DictKeyValue]:
    stage = stage or AlertingStage(clock=lambda: 0.0, partitions=1)
    kv = DictKeyValue()
    out: list[Notification] = []
    for offset, batch in enumerate(batches):
        stage.handle(batch, offset)
        out += stage.evaluate()
        stage.save(kv)
    return stage, out, kv


def judged_every_point(stage: AlertingStage, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stage, "_quiet_until", lambda point, now: point)


def summary(notes: list[Notification]) -> list[tuple[str, str, str, int]]:
    return [(n.kind.value, n.headline.rule, n.headline.scope.key, n.at) for n in notes]


def test_one_status_from_2010_as_the_first_input_costs_a_day_of_points_not_sixteen_years() -> None:
    old = (1_262_304_000 + 600) // 60  # 2010-01-01T00:10:00Z
    first = SignalBatch(
        buckets=[BucketSignal("t", SALE.key, old, {"attempted": 1}, visible=(old + 1) * 60)],
        max_ts=(old + 1) * 60,
        reports=[report((old + 1) * 60)],
    )
    stage, notes, _ = feed([first, *traffic(M0, 180, spike=range(150, 153))])

    years = (T0 - old * 60) // GRID
    assert stage.points_skipped > years - 2 * DAY_POINTS
    # the old minute's day (its counts stay in the baseline that long) and the 3 hours after T0
    assert stage.points_judged < 2 * DAY_POINTS + 180 * 4
    # and the spike of 2026 is told as without the old status
    _, alone, _ = feed(traffic(M0, 180, spike=range(150, 153)))
    assert summary(notes) == summary(alone)
    assert [n.kind.value for n in notes] == ["firing", "resolved"]


# in the quiet part of the gap, off the 15-second grid as events are
STORM = T0 + 2 * 1440 * 60 + 31  # two days after the first traffic
PAUSE = T0 + 2 * 1440 * 60 + 12 * 3600 + 7  # twelve hours later


def gap_scenario() -> list[SignalBatch]:
    """Traffic with a spike, five quiet days with a resend storm in them and a template paused
    (never reinstated: its alert ends when the event expires a day later), then traffic with
    a spike again: alerts and incidents open, cool down and close across the gap."""
    storm = [ResendSignal("promo", STORM + i * 60, f"d-{i}", "15550001111") for i in range(12)]
    end = M0 * 60 + 180 * 60
    events = SignalBatch(
        templates=[TemplateSignal("promo", "status", "PAUSED", PAUSE)],
        resends=storm,
        max_ts=end,
        reports=[report(end)],
    )
    return [
        *traffic(M0, 180, spike=range(100, 104)),
        events,
        *traffic(M0 + 5 * 1440, 120, spike=range(60, 63)),
    ]


def test_passing_over_quiet_points_judges_what_judging_every_point_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batches = gap_scenario()
    skipping, notes, kv = feed(batches)
    every = AlertingStage(clock=lambda: 0.0, partitions=1)
    judged_every_point(every, monkeypatch)
    _, reference, reference_kv = feed(batches, every)

    assert summary(notes) == summary(reference)
    rules = {rule for _, rule, _, _ in summary(notes)}
    assert {"template_paused", "resend_storm"} <= rules  # the gap's events were judged
    assert len([n for n in notes if n.kind.value == "firing"]) >= 3
    assert kv.data == reference_kv.data  # the saved state too, key for key
    # and the quiet part of the gap was passed over (its first day keeps the first traffic in
    # the baseline, the event and the resends their windows)
    assert skipping.points_skipped > DAY_POINTS // 2
    assert skipping.points_judged + skipping.points_skipped == every.points_judged


def test_an_event_and_resends_in_a_gap_fire_and_end_at_their_time() -> None:
    _, notes, _ = feed(gap_scenario())
    told = {(n.headline.rule, n.kind.value): n.at for n in notes}
    # at the first minute's point after the event, not where the pass-over would have landed
    assert told[("template_paused", "firing")] == PAUSE - 7 + 60
    # the storm's tenth recipient came 9 minutes in: told at the end of that minute
    assert told[("resend_storm", "firing")] == STORM - 31 + 10 * 60
    # both end when their evidence does, in the gap (the pause's event a day after it)
    assert told[("resend_storm", "resolved")] < PAUSE
    assert PAUSE + 86_400 < told[("template_paused", "resolved")] < PAUSE + 86_400 + 600


def test_a_late_count_from_2010_is_judged_again_over_its_own_minutes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A count years older than the clock arriving late (a partition that had read nothing
    else): its minutes are judged again with the counts kept, over the minutes its window
    covers, not each minute from 2010 up to now (millions, the loop blocked for minutes)."""
    wall = [0.0]
    stage = AlertingStage(clock=lambda: wall[0], partitions=1)
    stage, _, _ = feed(traffic(M0, 30), stage)
    old = 1_262_304_600 // 60  # 2010-01-01T00:10:00Z
    mark = (M0 + 30) * 60
    late = SignalBatch(
        buckets=[BucketSignal("t", SALE.key, old, {"attempted": 12, LIMIT: 6}, visible=old * 60)],
        max_ts=mark,
        reports=[report(mark)],
    )
    stage.handle(late, 100)
    stage.evaluate()
    assert stage.late == 1 and stage._late  # waiting for more late counts
    sums: list[int] = []
    total = detector_module._Series.total

    def counted(series: object, lo: int, hi: int) -> object:
        sums.append(hi - lo)
        return total(series, lo, hi)  # type: ignore[arg-type]

    monkeypatch.setattr(detector_module._Series, "total", counted)
    wall[0] += stage.idle_s + 1
    stage.handle(SignalBatch(max_ts=mark + 60, reports=[report(mark + 60)]), 101)
    stage.evaluate()
    assert not stage._late  # judged...
    assert len(sums) < 1_000  # ...over a few minutes (every minute since 2010: 8.4 million)
