"""Alert quality: ``make bench-alerts`` or ``python -m bench.alert_quality [options]``.

Runs the labelled scenarios of :mod:`streams.scenarios` through one fresh worker each, on the
local real Kafka broker (or KAFKA_BOOTSTRAP_SERVERS), in four feeding modes:

- ``paced``: live order and pace, ``--compression`` event seconds per wall second (the send log
  at send time, before the statuses);
- ``backlog``: everything produced first (the send log first), then the worker started;
- ``send_log_late``: the worker running, every webhook produced unpaced, then the whole send log
  a few seconds later;
- ``sigkill``: paced, with the worker SIGKILLed twice at random moments and restarted.

Each run waits for the worker to drain its inputs, then until no notification came for
``--quiet-s`` (at most ``--settle-s``), reads the alerts topic and scores the incidents against
the scenario's labels (:func:`streams.incidents.score`): expected vs raised, recall, precision,
false incidents, event-time detection delay, resolve delay, the headline at FIRING and at the
end; every mode is compared with the paced run (same incidents, headline scopes, firing minutes).

Writes ``<out>/alert_quality-<stamp>.json`` and ``<out>/alert_quality-latest.json`` (the
``bench/run.py`` schema, one section ``alert_quality``) after every run, and prints the table.
``python -m bench.write_benchmarks_md`` puts it in BENCHMARKS.md next to the other sections.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench._broker import benchmark_broker_info
from bench.harness import LoadMeter, wait_assigned
from bench.report import alert_quality_table, render_summary
from bench.run import log, new_results, now_iso
from bench.sections import row
from streams.asyncutil import run_sync
from streams.feed import notifications, produce, wait_quiet, worker_inputs
from streams.incidents import Incident, compare, incidents_of, score
from streams.scenarios import MODES, SCENARIOS, SPIKE, SUITE, Scenario, build, feed_order
from streams.settings import Settings
from streams.topics import ensure_topics, source_topics
from testkit.kafka import wait_drained
from testkit.worker import IDLE_AS_IN_PRODUCTION, WorkerProcess, unique_env

BENCH = Path(__file__).resolve().parent

DETECT_LIMIT_S = 180  # a clear spike is notified within 3 minutes of event time of its onset
RESOLVE_LIMIT_S = 600  # and resolved within 10 minutes after it ends


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        help=f"repeatable (default: {' '.join(SUITE)})",
    )
    p.add_argument(
        "--mode", action="append", choices=MODES, help=f"repeatable (default: {' '.join(MODES)})"
    )
    p.add_argument(
        "--compression",
        type=float,
        default=60.0,
        help="event seconds per wall second of the paced modes (60: an hour in a minute)",
    )
    p.add_argument("--seed", type=int, default=7, help="scenario seed (and the kill moments)")
    p.add_argument("--kills", type=int, default=2, help="SIGKILLs in the sigkill mode")
    p.add_argument("--send-log-gap-s", type=float, default=3.0, help="send_log_late: the pause")
    p.add_argument("--quiet-s", type=float, default=30.0, help="no new notification for this long")
    p.add_argument("--settle-s", type=float, default=90.0, help="at most this long after a drain")
    p.add_argument("--store", default="rocksdb://", help="the worker's table store")
    p.add_argument("--out", type=Path, default=BENCH / "results", help="results directory")
    p.add_argument("--keep-tmp", action="store_true", help="keep the broker and worker dirs")
    return p


class Run:
    """One scenario fed in one mode to one fresh worker."""

    def __init__(self, args: argparse.Namespace, bootstrap: str, tmp: Path, logs: Path) -> None:
        self.args, self.bootstrap, self.tmp, self.logs = args, bootstrap, tmp, logs

    def env(self, scenario: str, mode: str) -> dict[str, str]:
        env = unique_env(
            self.bootstrap,
            self.tmp / f"{scenario}-{mode}" / "state",
            DELIVERY_MONITOR_STORE=self.args.store,
            DELIVERY_MONITOR_LOG_LEVEL="warning",
            **IDLE_AS_IN_PRODUCTION,
        )
        env["DELIVERY_MONITOR_APP_ID"] = (
            f"aq-{scenario}-{mode}-{env['DELIVERY_MONITOR_APP_ID'][5:]}"
        )
        return env

    def __call__(self, s: Scenario, mode: str) -> dict[str, Any]:
        env = self.env(s.name, mode)
        settings = Settings.from_env(env)
        run_sync(ensure_topics(self.bootstrap, source_topics(settings), 1))
        records = feed_order(s.records, mode)
        log_path = self.tmp / f"{s.name}-{mode}" / "worker.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        worker = WorkerProcess(env, log_path)
        out: dict[str, Any] = {"scenario": s.name, "mode": mode, "kills": []}
        t0 = time.monotonic()
        try:
            if mode == "backlog":
                out["feed"] = vars(asyncio.run(produce(self.bootstrap, settings, records)))
            worker.start(timeout_s=180)
            asyncio.run(wait_assigned([worker]))
            if mode in ("paced", "sigkill"):
                kills = Killer(worker, s, self.args, out["kills"]) if mode == "sigkill" else None
                stats = asyncio.run(
                    produce(
                        self.bootstrap,
                        settings,
                        records,
                        self.args.compression,
                        on_time=kills.at if kills else None,
                    )
                )
                out["feed"] = vars(stats)
                if kills is not None:
                    kills.join()
            elif mode == "send_log_late":
                split = sum(1 for _, r in records if r.kind != "send_log")
                first = asyncio.run(produce(self.bootstrap, settings, records[:split]))
                time.sleep(self.args.send_log_gap_s)
                second = asyncio.run(produce(self.bootstrap, settings, records[split:]))
                out["feed"] = {**vars(first), "send_log": second.send_log}
            out["fed_s"] = round(time.monotonic() - t0, 1)
            self.settle(worker, settings, out)
            raw = asyncio.run(notifications(self.bootstrap, settings))
        finally:
            worker.stop()
            keep = self.logs / f"{s.name}-{mode}.log"
            keep.parent.mkdir(parents=True, exist_ok=True)
            if log_path.exists():
                shutil.copy(log_path, keep)
            out["worker_log"] = str(keep)
            if not self.args.keep_tmp:
                shutil.rmtree(env["DELIVERY_MONITOR_DATA_DIR"], ignore_errors=True)
        out["seconds"] = round(time.monotonic() - t0, 1)
        out["notifications"] = len(raw)
        incidents = incidents_of(raw)
        out["_incidents"] = incidents
        out["score"] = score(s.expected, incidents, s.end).to_json()
        return out

    def settle(self, worker: WorkerProcess, settings: Settings, out: dict[str, Any]) -> None:
        """Until the worker has handled every input, then until no notification came for
        ``--quiet-s`` (at most ``--settle-s``)."""
        t = time.monotonic()
        wait_drained(self.bootstrap, settings.app_id, worker_inputs(settings), 900, "(alerts)")
        out["drained_s"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        asyncio.run(wait_quiet(self.bootstrap, settings, self.args.quiet_s, self.args.settle_s))
        out["settled_s"] = round(time.monotonic() - t, 1)
        if worker.proc is not None and worker.proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.proc.returncode}")


class Killer:
    """SIGKILLs the worker when the paced feed reaches chosen event times, and restarts it (in a
    thread: the feed goes on meanwhile, as live traffic would)."""

    def __init__(
        self, worker: WorkerProcess, s: Scenario, args: argparse.Namespace, log_: list[Any]
    ) -> None:
        rng = random.Random(f"{s.name}/{args.seed}/kills")
        span = s.end - s.start
        n = max(0, args.kills)
        # one moment in each of n equal slices of the middle 70 % of the feed
        self.moments = [s.start + span * (0.15 + 0.7 * (k + rng.random()) / n) for k in range(n)]
        self.worker, self.log, self.start = worker, log_, s.start
        self.thread: threading.Thread | None = None
        self.failed = ""

    def at(self, event_time: float) -> None:
        busy = self.thread is not None and self.thread.is_alive()
        if busy or not self.moments or event_time < self.moments[0]:
            return
        self.moments.pop(0)
        self.thread = threading.Thread(target=self._kill, args=(event_time,), daemon=True)
        self.thread.start()

    def _kill(self, event_time: float) -> None:
        t = time.monotonic()
        code = self.worker.kill()
        try:
            self.worker.start(timeout_s=180)
        except AssertionError as exc:  # WorkerProcess: exited or not ready in time
            self.failed = str(exc)[-1500:]
            return
        entry = {
            "event_minute": round((event_time - self.start) / 60, 1),
            "exit_code": code,
            "restart_s": round(time.monotonic() - t, 1),
        }
        self.log.append(entry)
        log(f"  SIGKILL at event minute {entry['event_minute']}, back in {entry['restart_s']} s")

    def join(self) -> None:
        """Wait for a restart under way; a worker that did not come back fails the run."""
        if self.thread is not None:
            self.thread.join(240)
        if self.failed:
            raise RuntimeError(f"the worker did not restart after a SIGKILL: {self.failed}")


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The section's headline rows, over every run that finished."""
    done = [r for r in runs if r.get("status") == "ok"]
    matches = [m for r in done for m in r["score"]["matches"]]
    expected = len(matches)
    found = sum(1 for m in matches if m["detected"])
    false = sum(r["score"]["false_incidents"] for r in done)
    clear = [m for m in matches if m["kind"] == SPIKE and m["clear"]]
    detect = [m["detection_s"] for m in clear if m["detection_s"] is not None]
    spikes = [m for m in matches if m["kind"] == SPIKE and m["end"] is not None and m["detected"]]
    resolve = [m["resolve_s"] for m in spikes if m["resolve_s"] is not None]
    unresolved = sum(1 for m in spikes if m["resolve_s"] is None)
    compared = [r for r in done if r["mode"] != "paced" and r.get("vs_paced") is not None]
    same = sum(1 for r in compared if r["vs_paced"]["same"])
    return [
        row("runs (scenario x mode)", len(done)),
        row(
            "labelled incidents raised (recall)",
            round(100 * found / expected, 1) if expected else None,
            "%",
            op=">=",
            limit=100,
        ),
        row("labelled incidents missed", expected - found, op="<=", limit=0),
        row("false incidents (unlabelled, split or flapping)", false, op="<=", limit=0),
        limited(
            f"clear spikes: worst detection delay, event time ({len(detect)} of {len(clear)} "
            "detected)",
            max(detect) if detect else None,
            DETECT_LIMIT_S,
            all_in=len(detect) == len(clear),
        ),
        limited(
            f"spikes: worst resolve delay after the end, event time ({len(resolve)} of "
            f"{len(spikes)} detected resolved)",
            max(resolve) if resolve else None,
            RESOLVE_LIMIT_S,
            all_in=not unresolved,
        ),
        row(
            "runs raising the same incidents as the paced run",
            same,
            op=">=",
            limit=len(compared) or None,
            target_text=f"all {len(compared)}",
        ),
    ]


def limited(name: str, value: int | None, limit: int, all_in: bool) -> dict[str, Any]:
    """A worst delay with its target, failed as well when some cases have no delay at all
    (missed, or never resolved)."""
    r = row(name, value, "s", op="<=", limit=limit)
    if not all_in:
        r["ok"] = False
    return r


def _vs_paced(runs: list[dict[str, Any]]) -> None:
    paced = {
        r["scenario"]: r["_incidents"] for r in runs if r["mode"] == "paced" and "_incidents" in r
    }
    for r in runs:
        ref: list[Incident] | None = paced.get(r["scenario"])
        if r["mode"] != "paced" and ref is not None and "_incidents" in r:
            r["vs_paced"] = compare(ref, r["_incidents"]).to_json()


def section(
    runs: list[dict[str, Any]], args: argparse.Namespace, scenarios: dict[str, Scenario]
) -> dict[str, Any]:
    _vs_paced(runs)
    public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs]
    return {
        "status": "ok",
        "compression": args.compression,
        "kills": args.kills,
        "scenarios": {
            name: {
                "description": s.description,
                "start": s.start,
                "minutes_of_sends": (s.sends_end - s.start) // 60,
                "records": len(s.records),
                "messages": len(s.messages),
                "facts": s.facts,
                "expected": [e.label for e in s.expected],
            }
            for name, s in scenarios.items()
        },
        "runs": public,
        "rows": summarize(runs),
    }


def write(results: dict[str, Any], out: Path, stamp: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=1, default=str)
    (out / f"alert_quality-{stamp}.json").write_text(text)
    (out / "alert_quality-latest.json").write_text(text)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    names = args.scenario or list(SUITE)
    modes = [m for m in MODES if m in (args.mode or MODES)]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    tmp = Path(tempfile.mkdtemp(prefix="bench-alerts-"))
    results = new_results("bench.alert_quality", argv, args)
    runs: list[dict[str, Any]] = []
    scenarios: dict[str, Scenario] = {}
    failed = False
    try:
        with benchmark_broker_info(tmp) as broker:
            results["kafka"] = {"version": broker.version, "where": broker.where}
            meter = LoadMeter([broker.pid] if broker.pid else []).start()
            started = now_iso()
            runner = Run(args, broker.bootstrap, tmp, args.out / "logs" / f"alerts-{stamp}")
            for name in names:
                scenarios[name] = s = build(name, seed=args.seed)
                for mode in modes:
                    log(f"{name} / {mode}: {len(s.records):,} records")
                    run_meter = LoadMeter([broker.pid] if broker.pid else []).start()
                    try:
                        r = {"status": "ok", **runner(s, mode)}
                    except Exception as exc:
                        failed = True
                        r = {"scenario": name, "mode": mode, "status": "error"}
                        r["error"] = f"{type(exc).__name__}: {exc}"[-2000:]
                        log(f"  failed: {r['error']}")
                    r["machine_load"] = run_meter.stop()
                    runs.append(r)
                    sc = r.get("score") or {}
                    log(
                        f"  expected {sc.get('expected')}, raised {sc.get('raised')}, "
                        f"false {sc.get('false_incidents')} ({r.get('seconds')} s)"
                    )
                    data = section(runs, args, scenarios)
                    data.update(
                        started_at=started,
                        finished_at=now_iso(),
                        git=results["git"],
                        streams_digest=results["streams_digest"],
                        machine_load=meter.stop(),  # so far: the whole section at the end
                    )
                    results["sections"]["alert_quality"] = data
                    write(results, args.out, stamp)
    finally:
        results["finished_at"] = now_iso()
        write(results, args.out, stamp)
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    print(render_summary(results), end="")
    if "alert_quality" in results["sections"]:
        print("\n".join(alert_quality_table(results["sections"]["alert_quality"])))
    log(f"results in {args.out / f'alert_quality-{stamp}.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
