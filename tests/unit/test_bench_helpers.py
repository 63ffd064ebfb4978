"""The benchmark's pure helpers (bench/): percentiles, /metrics parsing, the workloads and the
Markdown rendering. No broker, no timing assertions."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest

from bench import harness, report, workload
from bench.sections import outside_budget, row
from streams.core import parse_webhook

# -- percentiles and summaries -----------------------------------------------------------------


def test_percentile_interpolates_between_closest_ranks() -> None:
    assert harness.percentile([4, 1, 3, 2], 50) == 2.5
    assert harness.percentile([1, 2, 3, 4], 0) == 1
    assert harness.percentile([1, 2, 3, 4], 100) == 4
    assert harness.percentile(list(range(1, 101)), 99) == pytest.approx(99.01)
    assert harness.percentile([7.0], 99) == 7.0
    assert math.isnan(harness.percentile([], 50))
    with pytest.raises(ValueError):
        harness.percentile([1, 2], 101)


def test_summary_of_nothing_and_of_values() -> None:
    assert harness.summary([])["count"] == 0
    assert harness.summary([])["p99"] is None
    s = harness.summary([0.1, 0.2, 0.3, 0.4, 1.0])
    assert s["count"] == 5
    assert s["p50"] == 0.3
    assert s["max"] == 1.0
    assert s["mean"] == 0.4


def test_growth_is_max_over_min_of_the_last_half() -> None:
    samples = [(0.0, 100.0), (10.0, 300.0), (20.0, 200.0), (30.0, 210.0), (40.0, 220.0)]
    assert harness.growth(samples) == round(220 / 200, 4)
    assert harness.growth([(0.0, 1.0)]) is None


def test_outside_budget_subtracts_the_gauge_sampled_at_the_same_time() -> None:
    # the cache fills (RSS grows with it) while the rest of the process stays put
    rss = [(0.0, 80.0), (10.0, 100.0), (20.0, 121.5), (30.0, 140.0)]
    rocksdb = [(0.0, 0.5), (10.0, 20.0), (20.0, 40.0), (35.0, 70.0)]
    outside = outside_budget(rss, rocksdb)
    assert outside == [(0.0, 79.5), (10.0, 80.0), (20.0, 81.5)]  # t=30 has no gauge sample
    assert harness.growth(rss) == round(140 / 121.5, 4)
    assert harness.growth(outside) == round(81.5 / 80.0, 4)


# -- /metrics ----------------------------------------------------------------------------------

EXPOSITION = """\
# HELP whatsapp_monitor_template_messages_total Messages per template
# TYPE whatsapp_monitor_template_messages_total counter
whatsapp_monitor_template_messages_total{template="probe_1",outcome="attempted"} 3.0
whatsapp_monitor_template_messages_total{template="probe_1",outcome="sent"} 2.0
whatsapp_monitor_template_messages_total{template="probe_2",outcome="attempted"} 5.0
whatsapp_monitor_template_messages_total_other{template="probe_1",outcome="attempted"} 9.0
whatsapp_monitor_records_consumed_total{topic="a.raw"} 1.2e+06
whatsapp_monitor_records_consumed_total{topic="a.send-log"} 10.0
whatsapp_monitor_last_event_timestamp_seconds 1.7e+09
"""


def test_metric_sum_matches_name_and_labels_exactly() -> None:
    name = "whatsapp_monitor_template_messages_total"
    assert (
        harness.metric_sum(EXPOSITION, name, {"template": "probe_1", "outcome": "attempted"}) == 3
    )
    assert harness.metric_sum(EXPOSITION, name, {"outcome": "attempted"}) == 8
    assert harness.metric_sum(EXPOSITION, name, {"template": "nope"}) == 0
    consumed = "whatsapp_monitor_records_consumed_total"
    assert harness.metric_sum(EXPOSITION, consumed) == 1_200_010
    assert harness.metric_sum(EXPOSITION, "whatsapp_monitor_last_event_timestamp_seconds") == 1.7e9


# -- rows and Markdown ---------------------------------------------------------------------------


def test_row_marks_targets() -> None:
    ok = row("p99", 1.5, "s", op="<=", limit=2.0)
    assert ok["ok"] is True
    assert ok["vs_target"] == 0.75
    assert ok["target"] == "<= 2 s"
    bad = row("bytes", 450, "B", op="<=", limit=300)
    assert bad["ok"] is False
    assert row("events/s", 1000, "events/s")["ok"] is None
    assert row("missing", None, "s", op="<=", limit=2)["ok"] is None


def results_fixture() -> dict[str, object]:
    return {
        "started_at": "2026-11-25T02:00:00+00:00",
        "finished_at": "2026-11-25T02:30:00+00:00",
        "command": "python -m bench.run --events 100000",
        "args": {"events": 100_000, "recipients": 100_000},
        "machine": {"cores": 2, "cpu_model": "Test CPU", "ram_gib": 23.5, "python": "3.11.7"},
        "kafka": {"version": "3.9.1", "where": "local"},
        "git": {"commit": "abc1234", "dirty": True},
        "sections": {
            "memory": {
                "status": "ok",
                "rows": [row("RSS per tracked recipient", 412.3, "B", op="<=", limit=300)],
                "machine_load": {
                    "seconds": 60.0,
                    "machine_busy_cores": 1.5,
                    "others_busy_cores": 0.4,
                    "loadavg_start": [1.0, 1.0, 1.0],
                    "loadavg_end": [2.0, 1.0, 1.0],
                },
            },
            "latency": {
                "status": "ok",
                "rows": [
                    row("webhook -> /metrics p99", 0.8, "s", op="<=", limit=2.0),
                    row("a | pipe", 12_345, "events/s"),
                ],
            },
            "alert": {"status": "error", "error": "WorkerExited: worker crashed\ntraceback..."},
        },
    }


def test_summary_table_has_every_row_and_mark() -> None:
    text = report.render_summary(results_fixture())
    assert "abc1234 (dirty" in text
    memory_row = (
        "| memory | RSS per tracked recipient | 412 B | <= 300 B | FAIL (1.3743 of target) |"
    )
    assert memory_row in text
    assert "| latency | webhook -> /metrics p99 | 0.8 s | <= 2 s | PASS (0.4 of target) |" in text
    assert "a \\| pipe" in text
    assert "12,345 events/s" in text
    assert "not measured: WorkerExited: worker crashed |" in text
    assert "traceback" not in text
    header = [line for line in text.splitlines() if line.startswith("| section")]
    assert len(header) == 1  # one table


def test_benchmarks_md_has_machine_commit_and_a_table_per_section() -> None:
    text = report.render_benchmarks_md(results_fixture())
    assert "2 cores (Test CPU), 23.5 GiB RAM, Python 3.11.7, Kafka 3.9.1 (local)" in text
    assert "abc1234" in text
    assert "2026-11-25T02:00:00+00:00" in text
    assert text.count("| figure | value | target | mark |") == 2
    assert "## Alert latency" in text
    assert "Not measured: WorkerExited: worker crashed" in text
    assert "other processes 0.4 cores" in text


def test_fmt_value() -> None:
    assert report.fmt_value(1234567, "events/s") == "1,234,567 events/s"
    assert report.fmt_value(0.04812, "x") == "0.0481x"
    # a ratio just over its target does not print as the target itself
    assert report.fmt_value(1.1004, "x") == "1.1004x"
    assert report.fmt_value(2.0, "x") == "2x"
    assert report.fmt_value(None, "s") == "n/a"
    assert report.fmt_value(187.04, "MiB") == "187 MiB"
    assert report.fmt_value(48.25, "CPU s") == "48.2 CPU s"


# -- workloads ----------------------------------------------------------------------------------


def test_throughput_workload_counts_and_prefix() -> None:
    records = list(workload.throughput_bodies(20_000, seed=3))
    events = sum(n for _, n in records)
    assert 20_000 <= events < 20_000 + 7  # stops at the body that reaches the target
    for body, n in records[:500]:
        assert n == workload.count_statuses(body)
    smaller = list(workload.throughput_bodies(5_000, seed=3))
    assert smaller == records[: len(smaller)]
    tally = workload.Tally(workload.WorkloadInfo("throughput", 3, 20_000))
    for body, n in records:
        tally.add(body, n)
    info = tally.done()
    assert info.status_events == events
    assert info.payloads == len(records)
    assert 0 < info.duplicates < info.payloads * 0.2
    assert 0 < info.batched < info.payloads * 0.3
    assert info.payloads - info.batched > info.payloads * 0.7  # mostly single-status bodies
    assert info.unparseable > 0
    assert (info.templates, info.senders, info.countries) == (12, 3, 8)
    assert set(info.by_status) >= {"sent", "delivered", "read", "failed"}


def test_recipients_workload_has_distinct_valid_recipients() -> None:
    records = list(workload.recipient_bodies(1_005, seed=1, per_body=10))
    assert sum(n for _, n in records) == 1_005
    assert max(n for _, n in records) == 10
    recipients = set()
    for body, _ in records:
        parsed = parse_webhook(body)
        for s in parsed.statuses:
            recipients.add(s.recipient_key)
            assert s.country in workload.RECIPIENT_COUNTRIES
            assert s.status == "delivered"
    assert len(recipients) == 1_005
    assert workload.distinct_phone(0) != workload.distinct_phone(4)
    with pytest.raises(ValueError):
        workload.distinct_phone(4 * 10**6)


def test_paced_pool_restamps_time_and_wamids() -> None:
    pool = workload.paced_pool(2_000, seed=5)
    assert sum(n for _, n in pool) >= 2_000
    wamids: set[str] = set()
    for round_ in (0, 1):
        for body, n in pool[:200]:
            stamped = workload.restamp(body, 1_800_000_123, round_)
            assert b"1111111111" not in stamped and b"RRRR" not in stamped
            events = parse_webhook(stamped).statuses
            assert len(events) == n
            assert {e.timestamp for e in events} == {1_800_000_123}
            wamids |= {f"{round_}:{e.wamid}" for e in events}
    first = {w.split(":", 1)[1] for w in wamids if w.startswith("0:")}
    second = {w.split(":", 1)[1] for w in wamids if w.startswith("1:")}
    assert first and not first & second


def test_probe_body_is_one_sent_status_of_its_template() -> None:
    body = workload.probe_body("r1", 7, 1_800_000_000, "bench_probe_x")
    (event,) = parse_webhook(body).statuses
    assert event.status == "sent"
    assert orjson.loads(event.biz_opaque_callback_data or "{}")["template"] == "bench_probe_x"


def test_cache_round_trip(tmp_path: Path) -> None:
    first = workload.ensure_workload(tmp_path, "recipients", 25, seed=2)
    assert first.info.status_events == 25
    assert first.info.distinct_recipients == 25
    again = workload.ensure_workload(tmp_path, "recipients", 25, seed=2)
    assert again.generated_s == 0.0
    assert list(again.records()) == list(workload.recipient_bodies(25, seed=2))
    assert list(workload.take_events(again.records(), 11)) == list(again.records())[:11]
    batched = workload.ensure_workload(tmp_path, "recipients-b10", 25, seed=2)
    assert batched.info.payloads == 3
    assert list(workload.take_events(batched.records(), 11)) == list(batched.records())[:2]
    with pytest.raises(ValueError):
        workload.generator("recipients-b0")


def test_crash_summary_keeps_the_reason_not_the_shutdown_noise() -> None:
    log = "\n".join(
        [
            "worker x: Kafka 127.0.0.1:1",
            "[2026-11-25 02:36:06,491] [1] [ERROR] Topic t-alerting-changelog not found",
            "Traceback (most recent call last):",
            '  File "faust/channels.py", line 532, in __anext__',
            "asyncio.exceptions.CancelledError",
            "[2026-11-25 02:36:12,234] [1] [ERROR] [^-App]: Crashed reason=CancelledError()",
            "[2026-11-25 02:36:12,234] [1] [ERROR] [^-App]: Crashed reason=PartitionsMismatch('x')",
            "faust.exceptions.PartitionsMismatch: The source topic 's' for table 'alerting'",
            "RuntimeError: Event loop is closed",
            "[2026-11-25 02:36:15,924] [1] [WARNING] dead letter",
        ]
    )
    assert harness.crash_summary(log) == [
        "[2026-11-25 02:36:06,491] [1] [ERROR] Topic t-alerting-changelog not found",
        "[2026-11-25 02:36:12,234] [1] [ERROR] [^-App]: Crashed reason=PartitionsMismatch('x')",
        "faust.exceptions.PartitionsMismatch: The source topic 's' for table 'alerting'",
    ]


def test_first_final_is_the_poll_where_the_counters_stopped() -> None:
    polls = [(0, 0, 0), (10, 5, 1), (20, 20, 9), (20, 20, 9), (20, 20, 9)]
    assert harness.first_final(polls) == 2
    assert harness.first_final([(1, 1)]) == 0


def test_only_spiked_131049s_mark_the_spike() -> None:
    import random

    templates = ["promo_00", "promo_01", "spiky"]
    before = workload.alert_bodies(
        random.Random(1), 400, 1_800_000_000, templates, "spiky", False, 0
    )
    assert not any(spiked for _, spiked in before)
    assert any(b"131049" in body for body, _ in before)  # background failures exist
    during = workload.alert_bodies(
        random.Random(1), 400, 1_800_000_000, templates, "spiky", True, 0
    )
    spiked = [body for body, flag in during if flag]
    assert 100 < len(spiked) < 260  # ~45 % of the spike template's 400 messages
    assert all(b"131049" in body and b"spiky" in body for body in spiked)
    others = [body for body, flag in during if not flag and b"131049" in body]
    assert all(b"spiky" not in body for body in others)


def test_porcelain_paths() -> None:
    text = " M Makefile\n?? bench/run.py\nR  old.py -> new.py\n"
    assert harness.porcelain_paths(text) == ["Makefile", "bench/run.py", "new.py"]


def test_a_section_on_changed_code_is_flagged() -> None:
    results = results_fixture()
    results["streams_digest"] = "aaa"
    sections = results["sections"]
    assert isinstance(sections, dict)
    sections["memory"]["streams_digest"] = "aaa"
    sections["latency"]["streams_digest"] = "bbb"
    text = report.render_benchmarks_md(results)
    assert text.count("the worker's code changed during the run") == 1
    assert "digest bbb" in text


def test_the_hand_written_tail_of_benchmarks_md_is_kept() -> None:
    from bench import write_benchmarks_md

    page = "# Benchmarks\n\n| a |\n\n## Reading these figures (hand-written, today)\n\n- x\n"
    assert write_benchmarks_md.hand_written(page) == (
        "## Reading these figures (hand-written, today)\n\n- x\n"
    )
    assert write_benchmarks_md.hand_written("# Benchmarks\n## Throughput\n") == ""


def alert_quality_results() -> dict[str, object]:
    start = 1_767_225_600
    incident = {
        "key": f"spike:per_user_marketing_limit@{start + 1320}",
        "kind": "spike",
        "rule": "spike",
        "error_class": "per_user_marketing_limit",
        "fired_at": start + 1320,
        "headline_at_firing": "sender:n1",
        "headline_at_end": "template:promo_small",
    }
    match = {
        "label": "spike on promo_small",
        "kind": "spike",
        "end": start + 1920,
        "detected": True,
        "incident": incident["key"],
        "detection_s": 120,
        "resolve_s": None,
    }
    false = {**incident, "key": f"spike:us_marketing_pause@{start}", "fired_at": start, "why": "w"}
    score = {"expected": 1, "raised": 2, "false_incidents": 1, "recall": 1.0, "precision": 0.5}
    run = {"status": "ok", "scenario": "small_spike", "mode": "backlog"}
    run["score"] = {**score, "matches": [match], "incidents": [incident], "false": [false]}
    run["vs_paced"] = {"same": False, "missing": [], "extra": [["x", "spike", "account", 0]]}
    failed = {"status": "error", "scenario": "small_spike", "mode": "sigkill", "error": "E: boom"}
    section = {
        "status": "ok",
        "compression": 60.0,
        "kills": 2,
        "scenarios": {"small_spike": {"description": "d", "start": start, "expected": ["e"]}},
        "runs": [run, failed],
        "rows": [row("false incidents", 1, op="<=", limit=0)],
    }
    return {
        "started_at": "2026-12-06T05:00:00+00:00",
        "finished_at": "2026-12-06T05:50:00+00:00",
        "command": "python -m bench.alert_quality",
        "git": {"commit": "def5678", "dirty": False},
        "sections": {"alert_quality": section},
    }


def test_alert_quality_table_has_a_line_per_run_and_the_false_incidents() -> None:
    results = alert_quality_results()
    lines = report.alert_quality_table(results["sections"]["alert_quality"])  # type: ignore[index]
    text = "\n".join(lines)
    assert (
        "| small_spike | backlog | 1 | 2 | 1 | 100 % | 50 % | +2.0 min | no | "
        "sender:n1 -> template:promo_small | no |" in text
    )
    assert "| small_spike | sigkill | not measured: E: boom |" in text
    assert (
        "- small_spike / backlog: false spike incident `spike:us_marketing_pause` (spike, "
        "per_user_marketing_limit), fired at minute 0.0 naming sender:n1, ended naming "
        "template:promo_small: w" in text
    )
    assert "extra x (spike) account at minute" in text


def test_a_merged_or_spliced_section_says_which_run_it_comes_from() -> None:
    from bench import write_benchmarks_md

    merged = report.merge_results(results_fixture(), alert_quality_results())
    text = report.render_benchmarks_md(merged)
    assert "## Alert quality" in text and "## Memory per tracked recipient" in text
    assert "From a separate run: `python -m bench.alert_quality`" in text
    assert "commit def5678." in text
    page = "# Benchmarks\n\n## Memory\n\nold\n\n## Notes (hand-written)\n\n- kept\n"
    section = merged["sections"]["alert_quality"]
    new = "\n".join(report.render_section(merged, "alert_quality", section))
    spliced = report.splice_section(page, "alert_quality", new)
    assert (
        spliced.index("## Memory") < spliced.index("## Alert quality") < spliced.index("## Notes")
    )
    again = report.splice_section(
        spliced,
        "alert_quality",
        "## Alert quality (labelled scenarios, four feeding modes)\n\nnew\n",
    )
    assert again.count("## Alert quality") == 1 and "\nnew\n" in again and "old" in again
    assert write_benchmarks_md.hand_written(again).endswith("- kept\n")


@pytest.mark.parametrize("store", ["dict", "rocksdb"])
def test_the_in_process_profile_takes_every_status_through_every_stage(store: str) -> None:
    from bench.profile_stages import run

    result = run(2_000, chunk=50, seed=3, store=store)
    assert result["events"] >= 2_000
    for stage in ("ingest", "messages", "recipients"):
        assert result[stage] > 0, stage
    assert result["total"] == pytest.approx(
        sum(result[s] for s in ("ingest", "messages", "recipients", "alerting")), abs=0.05
    )
    if store == "dict":  # the state digest is the same for the same workload
        assert run(2_000, chunk=50, seed=3)["state"] == result["state"]
        assert run(2_000, chunk=50, seed=4)["state"] != result["state"]
