"""The labelled alerting scenarios (streams/scenarios.py): the traffic is what the labels say,
the sender behaves where no label says otherwise, and the feeding orders keep every record."""

from __future__ import annotations

from collections import Counter, defaultdict

import orjson
import pytest

from streams.core import parse_webhook
from streams.scenarios import (
    LIMIT,
    RAMP_MINUTES,
    SPIKE,
    SPIKE_MINUTES,
    STANDING,
    STORM,
    SUITE,
    US_PAUSE,
    Scenario,
    build,
    feed_order,
    sender_id,
)
from streams.simulate import Message

DAY = 86_400


class Built(dict[str, Scenario]):
    """Scenarios built on first use (a few seconds each)."""

    def __missing__(self, name: str) -> Scenario:
        self[name] = build(name)
        return self[name]


@pytest.fixture(scope="module")
def built() -> Built:
    return Built()


#: scenarios without US numbers in a marketing audience and without a retry job (the others of
#: the suite only differ from these in their 131049 rates)
BEHAVING = ["quiet_day", "small_spike", "sparse_templates"]


def failed_with(m: Message, code: int) -> int | None:
    return next((ts for s, ts, c in m.statuses if s == "failed" and c == code), None)


def premature_resends(s: Scenario) -> list[Message]:
    """Marketing sends less than 24 h after a 131049 of the same recipient (not the US pause)."""
    out, last = [], {}
    for m in sorted(s.messages, key=lambda m: m.sent_at):
        if m.category != "marketing":
            continue
        limit = last.get(m.recipient)
        if limit is not None and 0 < m.sent_at - limit < DAY:
            out.append(m)
        failed = failed_with(m, 131049)
        if failed is not None and m.country != "US":
            last[m.recipient] = failed
    return out


def test_the_suite_has_the_scenarios_the_issue_asks_for() -> None:
    assert set(SUITE) == {
        "small_spike",
        "large_spike",
        "sender_spike",
        "slow_ramp",
        "us_audience",
        "resend_storm",
        "sparse_templates",
        "quiet_day",
    }


def test_a_scenario_is_the_same_for_the_same_seed_and_base_time() -> None:
    a, b = build("mixed"), build("mixed")
    assert [(t, r.value) for t, r in a.records] == [(t, r.value) for t, r in b.records]
    later = build("mixed", start=a.start + 3600)
    assert later.expected[0].onset == a.expected[0].onset + 3600
    assert build("mixed", seed=8).records != a.records


def test_the_small_template_sends_60_per_5_minutes_and_spikes_to_45_percent(
    built: Built,
) -> None:
    s = built["small_spike"]
    (label,) = s.expected
    assert (label.kind, label.error_class, label.scope_kind, label.scope_key) == (
        SPIKE,
        LIMIT,
        "template",
        "promo_small",
    )
    assert (label.onset - s.start, label.end - s.start) == (20 * 60, 32 * 60)  # type: ignore[operator]
    per_window: Counter[int] = Counter()
    natural, spiked = Counter[str](), Counter[str]()
    for m in s.messages:
        if m.template != "promo_small":
            continue
        per_window[(m.sent_at - s.start) // 300] += 1
        into = spiked if label.onset <= m.sent_at < label.end else natural  # type: ignore[operator]
        into["sends"] += 1
        into["131049"] += failed_with(m, 131049) is not None
    assert all(45 <= n <= 75 for n in per_window.values()), per_window
    assert 0.005 <= natural["131049"] / natural["sends"] <= 0.035
    assert 0.35 <= spiked["131049"] / spiked["sends"] <= 0.55
    assert max(m.sent_at for m in s.messages if m.template == "promo_small") >= (
        label.end + 25 * 60  # type: ignore[operator]
    )


@pytest.mark.parametrize("name", [*BEHAVING, "resend_storm"])
def test_no_marketing_to_us_numbers_unless_the_scenario_says_so(built: Built, name: str) -> None:
    s = built[name]
    assert not [m for m in s.messages if m.category == "marketing" and m.country == "US"]
    assert any(m.country == "US" for m in s.messages)  # utility still goes to US numbers
    assert any(m.country == "CA" and m.category == "marketing" for m in s.messages)


@pytest.mark.parametrize("name", [*BEHAVING, "us_audience"])
def test_no_resend_within_24_h_of_a_131049_unless_the_scenario_says_so(
    built: Built, name: str
) -> None:
    assert premature_resends(built[name]) == []


@pytest.mark.parametrize("name", ["resend_storm", "mixed"])
def test_the_storm_is_one_numbers_resends_over_many_templates(built: Built, name: str) -> None:
    s = built[name]
    (label,) = [e for e in s.expected if e.kind == STORM]
    resends = premature_resends(s)
    assert len(resends) == s.facts["resends"]  # each one after its recipient's 131049
    assert {m.sender for m in resends} == {label.scope_key}
    assert len({m.template for m in resends}) >= 10
    in_first_hour = {m.recipient for m in resends if m.sent_at <= label.onset}
    assert len(in_first_hour) == 10  # the onset is the 10th distinct recipient
    assert all(m.campaign == "retry" for m in resends)


def test_us_numbers_in_the_audience_are_one_standing_condition_per_number(
    built: Built,
) -> None:
    s = built["us_audience"]
    assert [(e.kind, e.error_class, e.scope_kind, e.scope_key) for e in s.expected] == [
        (STANDING, US_PAUSE, "sender", sender_id(0)),
        (STANDING, US_PAUSE, "sender", sender_id(1)),
    ]
    us = [m for m in s.messages if m.category == "marketing" and m.country == "US"]
    assert {m.sender for m in us} == {sender_id(0), sender_id(1)}
    assert all(failed_with(m, 131049) is not None for m in us)
    assert len({m.template for m in us}) >= 10  # every marketing template is affected


@pytest.mark.parametrize("name", ["sparse_templates", "quiet_day"])
def test_nothing_to_alert(built: Built, name: str) -> None:
    assert built[name].expected == ()


def test_sparse_templates_have_minutes_with_2_of_5_failing(built: Built) -> None:
    s = built["sparse_templates"]
    minutes: dict[tuple[str, int], Counter[str]] = defaultdict(Counter)
    for m in s.messages:
        if m.template.startswith("sparse_"):
            c = minutes[(m.template, (m.sent_at - s.start) // 60)]
            c["sends"] += 1
            c["131049"] += failed_with(m, 131049) is not None
    assert len({t for t, _ in minutes}) == 30
    assert sum(1 for c in minutes.values() if c["131049"] >= 2) >= 5


def test_every_spike_has_traffic_long_after_it(built: Built) -> None:
    assert 60 - SPIKE_MINUTES[1] >= 25 and 60 - RAMP_MINUTES[1] >= 18  # the suite's windows
    for name in ("small_spike", "mixed"):
        s = built[name]
        (spike,) = [e for e in s.expected if e.end is not None]
        assert s.sends_end - spike.end >= 18 * 60, name  # type: ignore[operator]


def test_the_records_are_realistic_webhooks_in_live_order(built: Built) -> None:
    s = built["mixed"]
    kinds = Counter(r.kind for _, r in s.records)
    assert kinds["send_log"] == len(s.messages)
    assert kinds["garbage"] > 0 and kinds["inbound"] > 0
    times = [t for t, _ in s.records]
    assert times == sorted(times)
    logged: set[str] = set()
    opaque, batched, before_log = Counter[bool](), 0, 0
    bodies = Counter(r.value for _, r in s.records if r.kind == "statuses")
    for _, r in s.records:
        if r.kind == "send_log":
            logged.add(orjson.loads(r.value)["wamid"])
        elif r.kind == "statuses":
            parsed = parse_webhook(r.value)
            assert parsed.defects == ()
            batched += len(parsed.statuses) > 1
            for item in parsed.statuses:
                before_log += item.wamid not in logged
                opaque[item.biz_opaque_callback_data is not None] += 1
    assert before_log == 0  # a live sender logs a send before Meta reports on it
    assert opaque[True] > 0.3 * sum(opaque.values()) and opaque[False] > 0.3 * sum(opaque.values())
    repeated = sum(n - 1 for n in bodies.values())
    assert 0.05 <= repeated / sum(bodies.values()) <= 0.15  # Meta's retries
    assert batched > 0


@pytest.mark.parametrize("mode", ["paced", "backlog", "send_log_late", "sigkill"])
def test_feed_orders_keep_every_record(built: Built, mode: str) -> None:
    s = built["mixed"]
    ordered = feed_order(s.records, mode)
    assert sorted(r.value for _, r in ordered) == sorted(r.value for _, r in s.records)
    logs = [i for i, (_, r) in enumerate(ordered) if r.kind == "send_log"]
    if mode == "backlog":
        assert logs == list(range(len(logs)))
    elif mode == "send_log_late":
        assert logs == list(range(len(ordered) - len(logs), len(ordered)))
    else:
        assert ordered == s.records


def test_unknown_scenario_or_mode_is_a_clear_error(built: Built) -> None:
    with pytest.raises(ValueError, match="unknown scenario 'nope'"):
        build("nope")
    with pytest.raises(ValueError, match="unknown mode 'fast'"):
        feed_order(built["mixed"].records, "fast")
