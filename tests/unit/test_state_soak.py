"""State bounds under load, scaled down: the soak of ``bench/soak_state.py`` (generated webhook
JSON through the ingest, messages and recipients stages, 16 days of event time, recipients
contacted at a constant rate, some twice) on in-memory partitions. Every recipient and message
leaves exactly as the documented retention says, and live keys stop growing once the longest
retention is reached although new recipients keep coming. Recipients are kept 4 days idle and
6 days after their engagement here (the worker: 8 and 30), so 16 days reach their plateau."""

from __future__ import annotations

from typing import Any

import pytest

from bench.soak_state import DAY, SWEPT_FAMILIES, T0, MemoryKeyValue, Soak, Traffic
from streams.stages.messages import Retention
from streams.stages.recipients import RecipientRetention

RECIPIENTS = 60_000
DAYS = 16
RETENTION = RecipientRetention(idle=4 * DAY, engaged=6 * DAY)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def soak() -> tuple[Soak, list[dict[str, Any]]]:
    # sample=1: every recipient and message is tracked; a flush every 500 statuses (about an
    # hour of event time at this rate) as the worker's batches, so each sweep keeps up
    run = Soak(
        Traffic(RECIPIENTS, DAYS, seed=3, sample=1),
        MemoryKeyValue(),
        MemoryKeyValue(),
        500,
        recipient_retention=RETENTION,
    )
    days: list[dict[str, Any]] = []

    def on_round(s: Soak) -> None:
        day = s.expiry_day() - T0 // DAY  # rows at the same phase of the recipients' sweep
        if day >= 0 and (not days or day > days[-1]["day"]):
            days.append(
                {
                    "day": day,
                    "sample": s.check_sample(),
                    "keys": s.families(),
                    "opted_out": s.opted_out(),
                    "distinct": s.traffic.counts.recipients,
                }
            )

    run.run(on_round)
    return run, days


def test_state_leaves_exactly_as_documented(soak: tuple[Soak, list[dict[str, Any]]]) -> None:
    run, days = soak
    assert run.dead_letters == 0
    assert len(days) == DAYS  # one check per day of event time
    for day in days:
        for family, expected in day["sample"].items():
            # never removed within the retention; gone once the day of its last event is over
            # the retention and swept
            assert expected.removed_early == 0, (day["day"], family)
            assert expected.kept_late == 0, (day["day"], family)
    final = run.check_sample()
    assert final["recipients"].checked == len(run.traffic.oracle.recipient_last) > RECIPIENTS // 2
    for expected in final.values():
        assert expected.removed_early == expected.kept_late == 0
        assert expected.gone > expected.checked // 3  # a third of the run is past retention
        assert expected.kept > expected.checked // 3
    # at the end nothing outlives its retention by more than the index's day (a minute for
    # buckets), and no index record is left behind the sweep
    assert run.sweep_lag_days() == {
        "messages": 0,
        "bucket_minutes": 0,
        "recipients": 0,
        "retry_minutes": 0,
    }
    stale = run.stale()
    assert {
        k: v for k, v in stale.items() if not k.endswith("older_than_retention")
    } == dict.fromkeys(SWEPT_FAMILIES, 0)
    assert run.messages.stats.expired_messages > 0
    assert run.messages.stats.expired_buckets > 0
    assert run.recipients.stats.expired > 0


def test_live_keys_plateau_while_recipients_keep_coming(
    soak: tuple[Soak, list[dict[str, Any]]],
) -> None:
    _, days = soak
    # from the day each retention (+ its index day + the 12-48 h second messages) is reached
    warm = {
        "buckets": Retention().buckets // DAY + 1,
        "bucket_index": Retention().buckets // DAY + 1,
        "messages": Retention().messages // DAY + 3,
        "message_index": Retention().messages // DAY + 3,
        "recipients": RETENTION.engaged // DAY + 3,
        "recipient_index": RETENTION.engaged // DAY + 3,
    }
    for family, start in warm.items():
        rows = [d for d in days if d["day"] >= start]
        assert len(rows) >= 4
        # opted-out recipients are kept 400 days (until resume): not part of the plateau
        live = [d["keys"][family] - (d["opted_out"] if family == "recipients" else 0) for d in rows]
        assert max(live) <= 1.1 * min(live), (family, live)
    rows = [d for d in days if d["day"] >= warm["recipients"]]
    assert rows[-1]["distinct"] >= 1.3 * rows[0]["distinct"]  # ... while the total grows
    last = days[-1]
    live = last["keys"]["recipients"] - last["opted_out"]
    # bounded by rate x retention, not by all recipients so far: the recipients of the
    # retention + 1 day of index granularity (+ 10% for the second messages)
    rate = RECIPIENTS / DAYS
    assert live < rate * (RETENTION.engaged // DAY + 1) * 1.1 < last["distinct"]
    assert 0 < last["opted_out"] < 0.01 * last["distinct"]
