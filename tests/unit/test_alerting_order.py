"""What the monitor concludes does not depend on how the same traffic arrives: live, as a
backlog whose partitions run at different speeds, or with the send log after the webhooks."""

from __future__ import annotations

import pytest
from inprocess import Pipeline, campaign, feed_backlog, feed_live, feed_send_log_late, summary


def run(feed: str, seed: int = 1) -> list[tuple[str, str, str, int, int]]:
    traffic = campaign(us_share=0.02)
    pipeline = Pipeline()
    if feed == "live":
        feed_live(traffic, pipeline)
    elif feed == "backlog":
        feed_backlog(traffic, pipeline, seed)
    else:
        feed_send_log_late(traffic, pipeline, seed)
    pipeline.settle(3_600)
    return summary(pipeline.notifications)


def test_live_traffic_raises_the_expected_incidents() -> None:
    notes = run("live")
    for n in notes:
        print(n)
    assert notes


@pytest.mark.parametrize(("feed", "seed"), [("backlog", 1), ("backlog", 2), ("late", 3)])
def test_any_feed_concludes_what_live_traffic_does(feed: str, seed: int) -> None:
    assert run(feed, seed) == run("live")
