"""What the monitor concludes does not depend on how the same traffic arrives: live, as a
backlog whose partitions run at different speeds, or with the send log after the webhooks."""

from __future__ import annotations

import pytest

from streams.core.alerts import NotificationKind, encode_notification
from streams.incidents import Incident, incidents_of, score
from streams.scenarios import Scenario, build
from testkit.inprocess import (
    Pipeline,
    Traffic,
    campaign,
    feed_backlog,
    feed_live,
    feed_live_one_partition_behind,
    feed_live_send_log_at_end,
    feed_send_log_late,
    keyless,
    scenario_traffic,
    summary,
)

T0 = 1_767_225_600


def run(feed: str, seed: int = 1) -> list[tuple[str, str, str, int, int]]:
    traffic = campaign(us_share=0.02)
    pipeline = Pipeline()
    if feed == "live":
        feed_live(traffic, pipeline)
    elif feed == "backlog":
        feed_backlog(traffic, pipeline, seed)
    else:
        feed_send_log_late(traffic, pipeline, seed, read_all_first=feed == "webhooks_first")
    pipeline.settle(3_600)
    return summary(pipeline.notifications)


def test_live_traffic_raises_the_expected_incidents() -> None:
    """The spike on the small template (minutes 15-26) fires within 3 minutes of its onset
    and resolves within 10 of its end; the US recipients are one standing condition."""
    notes = run("live")
    onset, end = T0 + 15 * 60, T0 + 27 * 60
    spike = [n for n in notes if n[1] == "spike:per_user_marketing_limit"]
    assert [(kind, scope) for kind, _, scope, _, _ in spike] == [
        ("firing", "template:small"),
        ("resolved", "template:small"),
    ]
    assert 0 < spike[0][4] - onset <= 180
    assert 0 < spike[1][3] - end <= 600
    standing = [n for n in notes if n[1] == "standing:us_marketing_pause"]
    assert [(kind, scope, since) for kind, _, scope, _, since in standing] == [
        ("firing", "account", T0)
    ]
    assert {n[1] for n in notes} == {
        "spike:per_user_marketing_limit",
        "standing:us_marketing_pause",
    }


@pytest.mark.parametrize(
    ("feed", "seed"),
    [("backlog", 1), ("backlog", 2), ("late", 3), ("webhooks_first", 1), ("webhooks_first", 2)],
)
def test_any_feed_concludes_what_live_traffic_does(feed: str, seed: int) -> None:
    assert run(feed, seed) == run("live")


@pytest.mark.parametrize(("feed", "seed"), [("backlog", 2), ("webhooks_first", 2)])
def test_the_mixed_campaign_concludes_the_same_in_any_feed(feed: str, seed: int) -> None:
    """The ``mixed`` scenario (statuses of one message on different raw partitions, read out
    of order): the same incidents at the same minutes as when fed live. Each implied outcome
    counts in the minute of its earliest status, with that status's mark, in every order."""

    def run_mixed(how: str) -> list[tuple[str, str, str, int, int]]:
        traffic, pipeline = scenario_traffic(build("mixed")), Pipeline()
        if how == "live":
            feed_live(traffic, pipeline)
        elif how == "backlog":
            feed_backlog(traffic, pipeline, seed)
        else:
            feed_send_log_late(traffic, pipeline, seed, read_all_first=True)
        pipeline.settle(1_800)
        return summary(pipeline.notifications)

    live = run_mixed("live")
    assert {(kind, incident) for kind, incident, *_ in live} >= {
        ("firing", "spike:per_user_marketing_limit"),
        ("firing", "standing:us_marketing_pause"),
    }
    assert run_mixed(feed) == live


def test_a_send_log_later_than_the_wait_still_reveals_the_spike_at_its_time() -> None:
    """Live webhooks, the send log only after the campaign: the minutes were judged without
    the template names (what the counts without them showed fired then: a country), so the
    template's spike fires late, but with the time it would have fired."""
    live = {(i, scope, since) for kind, i, scope, _, since in run("live") if kind == "firing"}
    traffic = campaign(us_share=0.02)
    pipeline = Pipeline()
    feed_live_send_log_at_end(traffic, pipeline)
    pipeline.settle(3_600)
    late = [n for n in pipeline.notifications if n.kind is NotificationKind.FIRING]
    assert live <= {(n.incident, str(n.headline.scope), n.since) for n in late}
    spike = next(n for n in late if n.headline.scope.key == "small")
    assert spike.at >= T0 + 45 * 60  # known only once the send log came (after the webhooks)
    assert "found late" in spike.headline.evidence.detail


def test_a_retry_read_before_the_status_it_repeats_changes_no_firing_minute() -> None:
    """The slow ramp's 131049 share crosses the floor with exactly the 10 errors needed at
    minute 22; one of them, at 21:46, Meta POSTed again 20 s later. Stage 1 reading the first
    copy's partition 30 s behind the retry's (a backlog after a restart) reads the retry first:
    the error still counts from the first copy's mark, so the spike fires at minute 23 as
    live (it fired at 24: the count was used only from the retry's mark, after 22:00)."""
    scenario = build("slow_ramp")
    traffic = scenario_traffic(scenario)
    cut = scenario.start + 26 * 60
    traffic.bodies = [b for b in traffic.bodies if b[0] < cut]
    traffic.send_log = [r for r in traffic.send_log if r[0] < cut]

    def run(lag_s: int) -> list[tuple[str, str, str, int, int]]:
        pipeline = Pipeline()
        feed_live_one_partition_behind(traffic, pipeline, behind=0, lag_s=lag_s)
        assert pipeline.alerting.late == 0  # nothing came after its point was judged
        return summary(pipeline.notifications)

    live = run(0)
    assert [(kind, scope, at - scenario.start) for kind, _, scope, at, _ in live] == [
        ("firing", "template:new_arrivals", 23 * 60)
    ]
    assert run(30) == live


def scenario_incidents(name: str, feed: str) -> tuple[Scenario, list[Incident]]:
    scenario = build(name)
    traffic, pipeline = scenario_traffic(scenario), Pipeline()
    if feed == "live":
        feed_live(traffic, pipeline)
    elif feed == "backlog":
        feed_backlog(traffic, pipeline, 1)
    else:
        feed_send_log_late(traffic, pipeline, 1, read_all_first=feed == "webhooks_first")
    pipeline.settle(3_600)
    return scenario, incidents_of(encode_notification(n) for n in pipeline.notifications)


@pytest.mark.parametrize("feed", ["live", "backlog", "late"])
def test_a_retry_job_is_one_storm_and_no_spike_in_any_feed(feed: str) -> None:
    """Premature resends failing again make the retry campaign's 131049 share jump: that is
    the storm (one incident for the number), not a spike of its own."""
    scenario, incidents = scenario_incidents("resend_storm", feed)
    result = score(scenario.expected, incidents, scenario.end)
    assert [m.incident is not None for m in result.matches] == [True]
    assert result.false == []
    assert {i.kind for i in incidents} == {"storm"}


def test_a_spike_found_late_is_not_told_again_after_its_incident_resolved() -> None:
    """The send log after every webhook was read: the spike fires on the part attributed by
    callback data and resolves; the rest, attributed late, is the same episode (no second
    incident)."""
    scenario, incidents = scenario_incidents("small_spike", "webhooks_first")
    assert [(i.kind, str(i.last_headline)) for i in incidents] == [
        ("spike", "template:promo_small")
    ]
    assert score(scenario.expected, incidents, scenario.end).false == []


def test_late_counts_waiting_to_be_judged_survive_a_restart() -> None:
    """The send log after the campaign: its late counts wait ``idle_s`` for more to come.
    A restart in that wait (the stage saved, a new one restored from the table) still judges
    them: the template's spike is found late as without the restart."""
    from streams.stages.alerting import AlertingStage
    from streams.state import DictKeyValue

    def fed() -> Pipeline:
        pipeline = Pipeline()
        feed_live_send_log_at_end(campaign(us_share=0.02), pipeline)
        return pipeline

    reference = fed()
    reference.settle(3_600)

    pipeline = fed()
    stage = pipeline.alerting
    assert stage.take_late() > 0 and stage._late, "late counts wait to be judged"
    kv = DictKeyValue()
    stage.save(kv)
    restarted = AlertingStage(
        clock=pipeline.clock, partitions=pipeline.n, idle_s=30, max_wait_s=120
    )
    restarted.restore(kv)
    pipeline.alerting = restarted
    pipeline.settle(3_600)

    found = [
        n
        for n in pipeline.notifications
        if n.kind is NotificationKind.FIRING and "found late" in n.headline.evidence.detail
    ]
    assert [n.headline.scope.key for n in found] == ["small"]
    assert summary(pipeline.notifications) == summary(reference.notifications)


def test_a_crash_between_stage_2s_state_and_its_signals_makes_no_count_late() -> None:
    """Stage 2 writes a batch's state, then is killed before its signals reach alerting; after
    the restart it reads that batch again from the committed offsets (its counts are signalled
    again as replays), one partition far behind the others. Its reports must not tell alerting
    that the partition was read as far as the restored state went before those counts are
    signalled again: nothing comes late, and the notifications are those of the live run."""
    from streams.stages.messages import MessageStage

    traffic = campaign(us_share=0.02)
    reference = Pipeline()
    feed_live(traffic, reference)
    reference.settle(3_600)

    pipeline = Pipeline()
    crash = T0 + 20 * 60  # the small template's spike is under way
    head = Traffic(
        [b for b in traffic.bodies if b[0] < crash],
        [r for r in traffic.send_log if r[0] < crash],
        traffic.messages,
    )
    feed_live(head, pipeline)
    # a minute more: stage 1 reads it, stage 2 reads it and writes its state, then dies
    for i, (ts, body) in enumerate(traffic.bodies):
        if crash <= ts < crash + 60:
            pipeline.post(body, ts, keyless(i, pipeline.n))
    for ts, wamid, value in traffic.send_log:
        if crash <= ts < crash + 60:
            pipeline.log(wamid, value, ts)
    pipeline.clock.now = crash + 60
    for p in range(pipeline.n):
        pipeline.read_raw(p, 1_000_000)
    committed = dict(pipeline.messages_topic.read), dict(pipeline.send_log.read)
    stage = pipeline.messages
    for p in range(pipeline.n):
        for offset, value, _ in pipeline.messages_topic.take(p, 1_000_000):
            stage.handle_batch(p, offset, value)
        for offset, value, received in pipeline.send_log.take(p, 1_000_000):
            stage.handle_send_log(p, offset, value, received)
    for p in stage.state.partitions():
        stage.flush(p)
    for p, value in stage.drain_outbox().items():  # sent with the state
        pipeline.recipients_topic.append(p, value, 0)
    stage.drain_signals()  # never sent
    # the restart: the state is kept, the inputs are read again from the committed offsets,
    # partition 0 one record at a time while the others are read at once
    pipeline.messages = MessageStage(stage.state.kv, pipeline.n, clock=pipeline.clock)
    pipeline.messages_topic.read.update(committed[0])
    pipeline.send_log.read.update(committed[1])
    while pipeline.messages_topic.unread(0) or pipeline.send_log.unread(0):
        for p in range(1, pipeline.n):
            pipeline.read_messages(p, 1_000_000, 1_000_000)
        pipeline.read_messages(0, 1, 1)
        for p in range(pipeline.n):
            pipeline.read_recipients(p, 1_000_000)
        pipeline.evaluate()
    tail = Traffic(
        [b for b in traffic.bodies if b[0] >= crash + 60],
        [r for r in traffic.send_log if r[0] >= crash + 60],
        traffic.messages,
    )
    offset = sum(1 for b in traffic.bodies if b[0] < crash + 60)
    feed_live(tail, pipeline, first_index=offset)
    pipeline.settle(3_600)

    assert summary(pipeline.notifications) == summary(reference.notifications)
    assert pipeline.alerting.late == 0
