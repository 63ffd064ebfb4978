"""Markdown from a results JSON (``bench/run.py`` output): the short table of a run and
``BENCHMARKS.md``. Pure functions of the JSON."""

from __future__ import annotations

from typing import Any

TITLES = {
    "throughput": "Throughput (pre-produced workload, drained)",
    "memory": "Memory per tracked recipient (RocksDB store)",
    "latency": "Latency at a fixed offered load",
    "alert": "Alert latency (131049 spike to the Slack webhook)",
    "steady": "Steady state (RSS over time)",
    "scaling": "Scaling (workers in one group)",
    "outage": "Broker outage (30 s, mid-stream)",
    "alert_quality": "Alert quality (labelled scenarios, four feeding modes)",
}


def fmt_value(value: Any, unit: str = "") -> str:
    """A figure for a table: thousands separators, no trailing zeros, its unit."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, float) and unit == "x" and abs(value) < 100:
        # a ratio near its target must not round onto it: 1.1004x, not 1.1x
        text = f"{value:.4f}".rstrip("0").rstrip(".")
    elif isinstance(value, float):
        if value == int(value) and abs(value) >= 1000:
            text = f"{int(value):,}"
        elif abs(value) >= 100:
            text = f"{value:,.0f}"
        elif abs(value) >= 10:
            text = f"{value:.1f}"
        else:
            text = f"{value:.3g}"
    else:
        text = str(value)
    if unit == "x":
        return text + "x"
    return f"{text} {unit}" if unit else text


def target_text(op: str | None, limit: float | None, unit: str = "") -> str | None:
    """``<= 300 B``, ``<= 1.1x``; None without a target."""
    if op is None or limit is None:
        return None
    return f"{op} {limit:g}x" if unit == "x" else f"{op} {limit:g} {unit}".strip()


def mark(r: dict[str, Any]) -> str:
    if r.get("ok") is None:
        return ""
    vs = r.get("vs_target")
    prefix = "PASS" if r["ok"] else "FAIL"
    return f"{prefix} ({vs:g} of target)" if vs is not None else prefix


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def short_error(section: dict[str, Any], limit: int = 240) -> str:
    """The first line of a failed section's error (the results file has all of it)."""
    text = str(section.get("error") or "failed").strip().splitlines()[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def section_rows(section: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = section.get("rows") or []
    return rows


def table(rows: list[dict[str, Any]], with_section: str | None = None) -> list[str]:
    head = ["figure", "value", "target", "mark"]
    if with_section is not None:
        head.insert(0, "section")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            _escape(r["name"]),
            fmt_value(r.get("value"), r.get("unit", "")),
            _escape(
                target_text(r.get("op"), r.get("limit"), r.get("unit", "")) or r.get("target") or ""
            ),
            mark(r),
        ]
        if with_section is not None:
            cells.insert(0, with_section)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def load_text(load: dict[str, Any] | None) -> str:
    if not load:
        return ""
    la = load.get("loadavg_start") or [None]
    return (
        f"{load.get('seconds')} s; machine busy {load.get('machine_busy_cores')} cores, "
        f"of which other processes {load.get('others_busy_cores')} cores; "
        f"load average {la[0]} -> {(load.get('loadavg_end') or [None])[0]}"
    )


def commit_text(results: dict[str, Any]) -> str:
    git = results.get("git") or {}
    sha = git.get("commit") or "unknown"
    if not git.get("dirty"):
        return str(sha)
    changed = [str(p) for p in git.get("changed_files") or []]
    if not changed:
        return f"{sha} (dirty)"
    code = [p for p in changed if not p.startswith("bench/")]
    listed = ", ".join(code[:6]) + (", ..." if len(code) > 6 else "")
    where = f"; outside bench/: {listed}" if code else "; only under bench/"
    return f"{sha} (dirty: {len(changed)} uncommitted paths{where})"


def machine_text(results: dict[str, Any]) -> str:
    m = results.get("machine") or {}
    k = results.get("kafka") or {}
    return (
        f"{m.get('cores')} cores ({m.get('cpu_model') or 'unknown CPU'}), "
        f"{m.get('ram_gib')} GiB RAM, Python {m.get('python')}, "
        f"Kafka {k.get('version')} ({k.get('where')})"
    )


def code_note(results: dict[str, Any], section: dict[str, Any]) -> str:
    """A warning when the worker's code differed from the run's start (someone changed
    streams/ while the benchmark ran): figures of such sections measured other code. A section
    merged from another results file (:func:`merge_results`) says where it comes from."""
    source = section.get("source")
    if source:
        return (
            f"From a separate run: `{source.get('command')}`, {source.get('started_at')} to "
            f"{source.get('finished_at')}, commit {source.get('commit')}."
        )
    sec_git = section.get("git") or {}
    top_commit = (results.get("git") or {}).get("commit")
    digest, top_digest = section.get("streams_digest"), results.get("streams_digest")
    if (digest is None or digest == top_digest) and sec_git.get("commit") in (None, top_commit):
        return ""
    return (
        f"Note: the worker's code changed during the run; this section measured commit "
        f"{sec_git.get('commit')} (streams/ digest {digest}; the run started on {top_commit}, "
        f"digest {top_digest})."
    )


def render_summary(results: dict[str, Any]) -> str:
    """The short Markdown table of a run (stdout and ``latest.md``)."""
    lines = [
        f"# Benchmark run {results.get('started_at', '')}",
        "",
        f"commit {commit_text(results)}; {machine_text(results)}",
        "",
    ]
    rows: list[str] = []
    first = True
    for name, section in (results.get("sections") or {}).items():
        if section.get("status") != "ok":
            row = {"name": f"not measured: {short_error(section)}", "value": None}
            body = table([row], with_section=name)
        else:
            body = table(section_rows(section), with_section=name)
        rows.extend(body if first else body[2:])
        first = False
    lines.extend(rows)
    lines.append("")
    for name, section in (results.get("sections") or {}).items():
        lines.append(f"- {name}: {load_text(section.get('machine_load'))}")
        code = code_note(results, section)
        if code:
            lines.append(f"  {code}")
    return "\n".join(lines) + "\n"


NOTES = {
    "throughput": (
        "Status events per second of a pre-produced workload (producing is not timed): the "
        "baseline is a plain aiokafka consumer that parses every body with the project's parser "
        "and keeps no state; the worker runs the whole pipeline (parse, dedup, attribution, "
        "RocksDB tables, changelogs, metrics, detector) and is timed from the last poll before "
        "it read its first record until its three stages had handled every input (their "
        "counters in /v1/health stop moving, confirmed by zero consumer lag; 0.5 s polls)."
    ),
    "memory": (
        "One delivered marketing message to each of N distinct recipients through one worker "
        "with the RocksDB store: (RSS after the drain - RSS of the idle worker before traffic) "
        "/ recipient keys counted in the store after the worker stopped."
    ),
    "latency": (
        "Paced live traffic (event time = wall clock) at a fixed share of the worker's measured "
        "maximum; probe webhooks of dedicated templates are timed from the moment they are "
        "handed to the producer until /metrics (template_messages_total) and the API "
        "(/v1/templates/<probe>) count them. Resolution: the poll intervals."
    ),
    "alert": (
        "Live traffic on a few marketing templates, then a 131049 spike (45 % of one template's "
        "sends): from the wall-clock time the first spiked webhook was produced (its event time "
        "is that second) until the FIRING message reached a local server answering like Slack."
    ),
    "steady": (
        "Paced live traffic for N minutes; worker RSS and its RocksDB memory (the "
        "rocksdb_memory_bytes gauge: the shared block cache with the memtables charged to it, "
        "which fills up to its budget as the state grows) sampled every few seconds; growth is "
        "max/min of the samples in the last half of the run, of RSS and of RSS minus the gauge "
        "(the part of the process the RocksDB budget does not bound)."
    ),
    "scaling": (
        "The same pre-produced workload drained by 1 and by 2 workers of one group (separate "
        "data dirs and web ports) on the same machine, timed as in the throughput section, so "
        "the group's rebalances are included."
    ),
    "alert_quality": (
        "Method (`bench/alert_quality.py`, `make bench-alerts`): each scenario of "
        "`streams/scenarios.py` is an hour of one account's traffic from the project's simulator "
        "(3 sending numbers, 24+ templates, 8 countries with US and Canadian +1 numbers, natural "
        "131049 / 131026 / 131050 / 131056 failures, replies, opt-outs, 10 % repeated POSTs, "
        "batched and out-of-order statuses, garbage bodies, half attributed only by the send log) "
        "plus one labelled twist. It is fed to one fresh worker per mode: paced (live order, "
        "event time compressed), backlog (all produced first, send log first, then the worker "
        "started), send log late (webhooks unpaced, the whole send log a few seconds after) and "
        "sigkill (paced, the worker SIGKILLed twice and restarted). After the worker drained and "
        "no notification came for a while, its alerts topic is grouped into incidents (incident "
        "key and firing) and matched one to one to the labels: same kind (spike, standing, storm, "
        "immediate), error class and headline scope (the final headline; an account-wide "
        "standing or storm incident covers per-number labels), first notified from 2 minutes "
        "before the onset to 10 minutes after the end. Every other incident is false, a second "
        "incident about a matched label included. Detection = event time of the first FIRING - "
        "onset; resolve = event time of the RESOLVED - end of the spike (traffic goes on at least "
        "18 minutes after every spike). Every mode is compared with the paced run: same incident "
        "keys, kinds, headline scopes at FIRING and firing minutes. Targets (issue #17): recall "
        "100 %, no false incident, clear spikes notified within 3 minutes of event time of their "
        "onset, spikes resolved within 10 minutes after their end."
    ),
}


def _pct(part: Any, whole: Any) -> str:
    try:
        return f"{100 * part / whole:.1f} %"
    except (TypeError, ZeroDivisionError):
        return "n/a"


def details(name: str, s: dict[str, Any]) -> list[str]:
    """A few lines on what a section measured (sizes, conditions), from its results."""
    out: list[str] = []
    wl = s.get("workload") or {}
    if name == "throughput" and wl:
        out.append(
            f"Workload: {wl.get('status_events', 0):,} status events in "
            f"{wl.get('payloads', 0):,} bodies ({_pct(wl.get('batched'), wl.get('payloads'))} "
            f"batched, {_pct(wl.get('duplicates'), wl.get('payloads'))} repeated POSTs, "
            f"{wl.get('unparseable', 0):,} unparseable), {wl.get('templates')} templates, "
            f"{wl.get('senders')} sending numbers, {wl.get('countries')} countries, "
            f"{wl.get('distinct_recipients', 0):,} recipients; {s.get('partitions')} partitions, "
            f"store {s.get('store')}."
        )
        w = s.get("worker") or {}
        out.append(
            f"Worker drain {w.get('seconds')} s using {w.get('cpu_cores_used')} cores on "
            f"average (stages 1, 2, 3 done after {w.get('stage_done_s')} s; no lag after "
            f"{w.get('seconds_to_no_lag')} s); baseline "
            f"{(s.get('baseline') or {}).get('seconds')} s."
        )
        if s.get("cpu_s_per_million_events_by_stage"):
            out.append(
                "CPU per stage: the thread CPU time of each stage's handle and flush calls "
                "(streams/stage_cpu.py; /v1/health's stage_cpu_s) over every event of the "
                "workload; the rest is the worker's CPU per million events minus the stages'."
            )
    elif name == "memory" and wl:
        api = s.get("recipients_known_by_api") or {}
        out.append(
            f"Workload: {wl.get('distinct_recipients', 0):,} distinct recipients, one delivered "
            f"marketing message each, {s.get('statuses_per_body')} status(es) per body; "
            f"{fmt_value(s.get('recipient_keys_in_store'))} recipient keys in the store after "
            "the run; "
            f"the API knew {api.get('known')} of {api.get('sampled')} sampled recipients; "
            f"peak RSS {s.get('peak_rss_mb')} MiB."
        )
    elif name == "latency":
        out.append(
            f"{s.get('probes')} probes, one every {s.get('probe_every_s')} s for "
            f"{s.get('measured_s')} s after a {s.get('warmup_s')} s warm-up; /metrics polled "
            f"every {s.get('metric_poll_s')} s, the API every {s.get('api_poll_s')} s; offered "
            f"load from {s.get('offered_rate_source')}; the worker used "
            f"{s.get('worker_cpu_cores_used')} cores."
        )
    elif name == "alert":
        out.append(
            f"{s.get('rate_messages_per_s')} messages/s on {len(s.get('templates') or [])} "
            f"templates; {s.get('baseline_s')} s of background (1 % 131049) before the spike "
            f"({int(100 * (s.get('spike_ratio') or 0))} % of one template's sends); the spike "
            f"began {s.get('onset_second_of_minute')} s into a minute (evaluations run once "
            f"per minute of event time, so the phase matters). Message: "
            f"{(s.get('firing_text') or 'none').split(' · ')[0][:200]}"
        )
        lag = (s.get("event_time_lag_s") or {}).get("after_onset") or {}
        if lag.get("p50") is not None:
            out.append(
                f"Wall clock minus the worker's newest event time after the onset: p50 "
                f"{lag.get('p50')} s, max {lag.get('max')} s."
            )
    elif name == "steady":
        out.append(
            f"{s.get('minutes')} min at {s.get('offered_rate')} events/s; RSS "
            f"{s.get('rss_start_mb')} -> {s.get('rss_end_mb')} MiB (peak {s.get('peak_rss_mb')}); "
            f"lag at the end {s.get('lag_at_end')}."
        )
    elif name == "alert_quality":
        out.append(
            f"Paced modes at {fmt_value(s.get('compression'), 'x')}; {s.get('kills')} SIGKILLs "
            "per sigkill run (detection and resolve in minutes of event time). "
            "Scenarios:"
        )
        for scenario, info in (s.get("scenarios") or {}).items():
            expected = ", ".join(info.get("expected") or []) or "nothing"
            out.append(
                f"- `{scenario}`: {info.get('description')}; {info.get('messages', 0):,} "
                f"messages, {info.get('records', 0):,} records; expected: {expected}"
            )
        out.append("")
        out.extend(alert_quality_table(s))
        busy = [
            (r.get("machine_load") or {}).get("others_busy_cores") or 0 for r in s.get("runs") or []
        ]
        if busy:
            out.append("")
            out.append(f"Other processes used at most {max(busy)} cores during a run.")
    elif name == "scaling":
        for r in s.get("runs") or []:
            crashed = f", {len(r['failures'])} crashed attempt(s)" if r.get("failures") else ""
            out.append(
                f"- {r.get('workers')} worker(s), {r.get('partitions')} partitions: "
                f"{r.get('seconds')} s (stages 1, 2, 3 done after {r.get('stage_done_s')} s), "
                f"{r.get('cpu_cores_used')} cores, CPU "
                f"{r.get('cpu_s_per_million_events')} s per million events, once all "
                f"workers consumed: {fmt_value(r.get('events_per_s_all_running'), 'events/s')}"
                f"; raw records read per worker {r.get('raw_records_per_worker')}{crashed}"
            )
    return out


def _minutes(seconds: Any) -> str:
    return "n/a" if seconds is None else f"{seconds / 60:+.1f} min"


def _run_cells(run: dict[str, Any]) -> list[str]:
    sc = run.get("score") or {}
    matches = sc.get("matches") or []
    incidents = {i["key"]: i for i in sc.get("incidents") or []}
    detect, resolve, heads = [], [], []
    for m in matches:
        if not m["detected"]:
            detect.append("missed")
            continue
        detect.append(_minutes(m["detection_s"]))
        if m["end"] is not None:
            resolve.append(_minutes(m["resolve_s"]) if m["resolve_s"] is not None else "no")
        i = incidents.get(m["incident"]) or {}
        first, last = str(i.get("headline_at_firing")), str(i.get("headline_at_end"))
        heads.append(first if first == last else f"{first} -> {last}")
    vs = run.get("vs_paced")
    same = "" if vs is None else ("yes" if vs["same"] else "no")

    def pct(x: Any) -> str:
        return "n/a" if x is None else f"{100 * x:.0f} %"

    return [
        str(sc.get("expected", "")),
        str(sc.get("raised", "")),
        str(sc.get("false_incidents", "")),
        pct(sc.get("recall")),
        pct(sc.get("precision")),
        "; ".join(detect) or "-",
        "; ".join(resolve) or "-",
        _escape("; ".join(heads)) or "-",
        same,
    ]


def alert_quality_table(section: dict[str, Any]) -> list[str]:
    """The alert-quality section's runs (one line per scenario and mode), then the false
    incidents and the differences from the paced runs."""
    head = "| scenario | mode | expected | raised | false | recall | precision | detection | "
    head += "resolve | headline (at FIRING -> at the end) | same as paced |"
    lines = [head, "|" + "---|" * 11]
    starts = {n: s.get("start", 0) for n, s in (section.get("scenarios") or {}).items()}
    notes: list[str] = []
    for run in section.get("runs") or []:
        name, mode = run.get("scenario", "?"), run.get("mode", "?")
        start = starts.get(name, 0)
        if run.get("status") != "ok":
            error = _escape(str(run.get("error", "failed")).splitlines()[0][:150])
            lines.append(f"| {name} | {mode} | not measured: {error} |" + " |" * 8)
            continue
        lines.append(f"| {name} | {mode} | " + " | ".join(_run_cells(run)) + " |")
        for f in (run.get("score") or {}).get("false") or []:
            minute = (f["fired_at"] - start) / 60
            notes.append(
                f"- {name} / {mode}: false {f['kind']} incident `{f['key'].split('@')[0]}` "
                f"({f['rule']}, {f['error_class']}), fired at minute {minute:.1f} naming "
                f"{f['headline_at_firing']}, ended naming {f['headline_at_end']}: {f['why']}"
            )
        vs = run.get("vs_paced") or {}
        if vs and not vs.get("same"):
            notes.append(
                f"- {name} / {mode} vs paced: missing {_signatures(vs.get('missing'), start)}; "
                f"extra {_signatures(vs.get('extra'), start)}"
            )
    if notes:
        lines += ["", *notes]
    return lines


def _signatures(items: Any, start: int) -> str:
    """(incident, kind, headline, firing minute) tuples, minutes from the scenario's start."""
    out = [f"{i} ({k}) {h} at minute {m - start // 60}" for i, k, h, m in items or []]
    return ", ".join(out) or "none"


def merge_results(primary: dict[str, Any], *others: dict[str, Any]) -> dict[str, Any]:
    """``primary`` with the sections of ``others`` added (or replaced), each marked with the
    run it comes from (its command, dates and commit)."""
    merged = {**primary, "sections": dict(primary.get("sections") or {})}
    for other in others:
        source = {
            "command": other.get("command"),
            "started_at": other.get("started_at"),
            "finished_at": other.get("finished_at"),
            "commit": commit_text(other),
        }
        for name, section in (other.get("sections") or {}).items():
            merged["sections"][name] = {**section, "source": source}
    return merged


def render_section(results: dict[str, Any], name: str, section: dict[str, Any]) -> list[str]:
    """One section of ``BENCHMARKS.md``: its heading, method, figures, details and load."""
    lines = [f"## {TITLES.get(name, name)}", ""]
    if name in NOTES:
        lines += [NOTES[name], ""]
    if section.get("status") != "ok":
        return [*lines, f"Not measured: {short_error(section)}", ""]
    lines += [*table(section_rows(section)), ""]
    code = code_note(results, section)
    if code:
        lines += [code, ""]
    extra = details(name, section)
    if extra:
        lines += [*extra, ""]
    load = load_text(section.get("machine_load"))
    if load:
        lines += [f"Machine load during the section: {load}.", ""]
    return lines


def splice_section(page: str, name: str, text: str) -> str:
    """``page`` (a BENCHMARKS.md) with the section ``name`` replaced by ``text``, or inserted
    before the hand-written part (or at the end) when the page has no such section."""
    heading = f"## {TITLES.get(name, name)}"
    lines = page.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith("## ")]
    body = text.rstrip() + "\n\n"
    for k, i in enumerate(starts):
        if lines[i].rstrip() == heading:
            end = starts[k + 1] if k + 1 < len(starts) else len(lines)
            return "".join(lines[:i]) + body + "".join(lines[end:])
    hand = [i for i in starts if "hand-written" in lines[i].lower()]
    at = hand[0] if hand else len(lines)
    before = "".join(lines[:at])
    if before and not before.endswith("\n\n"):
        before += "\n"
    return before + body + "".join(lines[at:])


def render_benchmarks_md(results: dict[str, Any]) -> str:
    """``BENCHMARKS.md``: machine, commit, date and a table per section."""
    args = results.get("args") or {}
    lines = [
        "# Benchmarks",
        "",
        "Measured by `make bench` (`bench/run.py`) on the local real Kafka broker; regenerate "
        "this page from a results file with `python -m bench.write_benchmarks_md "
        "bench/results/latest.json`. Figures depend on the machine and on what else ran on it: "
        "the load during each section is listed with it.",
        "",
        f"- date: {results.get('started_at')} to {results.get('finished_at')}",
        f"- commit: {commit_text(results)}",
        f"- machine: {machine_text(results)}",
        f"- command: `{results.get('command', '')}`",
        f"- sizes: {args.get('events'):,} status events (throughput, scaling), "
        f"{args.get('recipients'):,} recipients (memory)"
        if isinstance(args.get("events"), int) and isinstance(args.get("recipients"), int)
        else "- sizes: see the results file",
        "",
    ]
    for name, section in (results.get("sections") or {}).items():
        lines.extend(render_section(results, name, section))
    return "\n".join(lines).rstrip() + "\n"
