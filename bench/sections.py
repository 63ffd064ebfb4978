"""The sections of ``bench/run.py``: each measures one thing on the real broker and returns a
JSON-able dict with ``rows`` (the headline figures, their targets and pass marks; see
:func:`row`) and the details behind them.

Every section starts fresh workers (their own app id, topics and data dir) so sections do not
see each other's state; workers log at ``warning`` (as a loaded production worker would).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import (
    DrainResult,
    LoadMeter,
    WorkerExited,
    drain,
    first_final,
    get_json_async,
    growth,
    metric_sum,
    peak_rss,
    proc_cpu,
    produce_bodies,
    rss,
    scrape,
    start_workers,
    stop_workers,
    summary,
    wait_assigned,
)
from bench.report import target_text as format_target
from bench.workload import (
    Workload,
    alert_bodies,
    ensure_workload,
    paced_pool,
    probe_body,
    restamp,
)
from streams.app import internal_topic_names
from streams.asyncutil import run_sync
from streams.settings import Settings
from streams.topics import ensure_topics, source_topics
from testkit.worker import REPO, WorkerProcess, free_port, unique_env

MB = 2**20


@dataclass
class Bench:
    """What every section gets: the broker, the options, where to write, earlier results."""

    bootstrap: str
    kafka_version: str
    broker_pid: int | None
    tmp: Path
    cache: Path
    logs: Path  # worker logs are copied here (per section)
    args: argparse.Namespace
    log: Callable[[str], None]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)
    #: called with the workers of every section once they answer (e.g. to attach a profiler)
    on_workers: Callable[[list[WorkerProcess]], None] | None = None


def row(
    name: str,
    value: float | int | None,
    unit: str = "",
    *,
    op: str | None = None,
    limit: float | None = None,
    target_text: str | None = None,
) -> dict[str, Any]:
    """A headline figure. With ``op`` ("<=" or ">=") and ``limit`` it has a target: ``ok`` says
    whether it is met and ``vs_target`` is value / limit."""
    ok: bool | None = None
    vs: float | None = None
    if op is not None and limit is not None and value is not None:
        ok = value <= limit if op == "<=" else value >= limit
        vs = round(value / limit, 4) if limit else None
    target = target_text if target_text is not None else format_target(op, limit, unit)
    return {
        "name": name,
        "value": value,
        "unit": unit,
        "target": target,
        "op": op,
        "limit": limit,
        "vs_target": vs,
        "ok": ok,
    }


# -- shared steps -------------------------------------------------------------------------------


def worker_env(b: Bench, name: str, **overrides: str) -> dict[str, str]:
    settings = {
        "DELIVERY_MONITOR_STORE": b.args.store,
        "DELIVERY_MONITOR_LOG_LEVEL": "warning",
        **overrides,
    }
    env = unique_env(b.bootstrap, b.tmp / name / "state", **settings)
    env["DELIVERY_MONITOR_APP_ID"] = f"bench-{name}-{env['DELIVERY_MONITOR_APP_ID'][5:]}"
    return env


def create_topics(b: Bench, env: dict[str, str]) -> Settings:
    settings = Settings.from_env(env)
    run_sync(ensure_topics(b.bootstrap, source_topics(settings), settings.topic_replication_factor))
    return settings


def group_topics(settings: Settings) -> list[str]:
    return [settings.topic_raw, *internal_topic_names(settings)]


def produce(b: Bench, topic: str, bodies: Iterator[bytes]) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = asyncio.run(produce_bodies(b.bootstrap, topic, bodies))
    return n, time.perf_counter() - t0


@contextmanager
def workers_running(
    b: Bench, envs: list[dict[str, str]], name: str
) -> Iterator[list[WorkerProcess]]:
    logs = [b.tmp / name / f"worker-{i}.log" for i in range(len(envs))]
    for log in logs:
        log.parent.mkdir(parents=True, exist_ok=True)
    workers: list[WorkerProcess] = []
    try:
        workers = start_workers(envs, logs)
        if b.on_workers is not None:
            b.on_workers(workers)
        yield workers
    except BaseException:
        b.log(f"worker logs of the failed section kept in {b.logs / name}")
        raise
    finally:
        stop_workers(workers)
        keep = b.logs / name  # the worker logs (warning level) are kept with the results
        keep.mkdir(parents=True, exist_ok=True)
        for log in logs:
            if log.exists():
                shutil.copy(log, keep / log.name)
        for env in envs:  # RocksDB state of a finished section is not needed again
            shutil.rmtree(env["DELIVERY_MONITOR_DATA_DIR"], ignore_errors=True)


def measured_drain(
    b: Bench,
    name: str,
    make_envs: Callable[[int], list[dict[str, str]]],
    events: int,
    records: int,
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Start the workers of ``make_envs(attempt)`` on a pre-produced raw topic and time their
    drain: (figures, health of the first worker, failures). A worker that crashes is a failure
    on record; the drain is tried again with a fresh group (``--retries`` times)."""
    failures: list[str] = []
    for attempt in range(1 + b.args.retries):
        envs = make_envs(attempt)
        settings = create_topics(b, envs[0])
        try:
            with workers_running(b, envs, f"{name}-{attempt}") as workers:
                result = asyncio.run(
                    drain(
                        workers,
                        b.bootstrap,
                        settings.app_id,
                        group_topics(settings),
                        events,
                        raw_records=records,
                    )
                )
                health = asyncio.run(_health(workers[0]))
            return drain_figures(result, events, len(envs)), health, failures
        except WorkerExited as exc:
            failures.append(str(exc)[-1500:])
            b.log(f"{name}: a worker exited (attempt {attempt + 1}); see the results' failures")
    raise WorkerExited(f"{name}: workers crashed {len(failures)} times; last: {failures[-1]}")


def drain_figures(result: DrainResult, events: int, workers: int) -> dict[str, Any]:
    measured = max(0.0, events - result.events_before_start)
    steady = None
    if result.seconds_all_running and result.events_after_all_running is not None:
        steady = round(result.events_after_all_running / result.seconds_all_running)
    cpu = sum(result.cpu_s)
    stage_done: list[float | None] = []
    stages = [t[1:4] for t in result.timeline]  # per poll: stage 1, 2 and 3 counters
    for column in range(3):
        values = [s[column] for s in stages]
        stage_done.append(
            result.timeline[first_final([(v,) for v in values])][0] if values else None
        )
    return {
        "workers": workers,
        "seconds": round(result.seconds, 2),
        "seconds_to_no_lag": round(result.seconds_to_no_lag, 2),
        # when stage 1 (ingest), stage 2 (messages) and stage 3 (recipients) had handled all
        "stage_done_s": stage_done,
        "events_per_s": round(measured / result.seconds) if result.seconds > 0 else None,
        "events_per_s_all_running": steady,
        "events_measured": round(measured),
        "cpu_s": round(cpu, 2),
        "cpu_s_per_million_events": round(cpu / measured * 1e6, 1) if measured else None,
        "cpu_cores_used": round(cpu / result.seconds, 2) if result.seconds > 0 else None,
        "cpu_total_s": [round(c, 1) for c in result.cpu_total_s],
        "peak_rss_mb": [round(p / MB, 1) for p in result.peak_rss],
        "rss_end_mb": [round(r / MB, 1) for r in result.rss_end],
        "raw_records_per_worker": [int(c) for c in result.raw_records],
        "polls": result.polls,
        # [s, stage-1 statuses, stage-2 statuses, stage-3 facts, group lag] per poll
        "timeline": [list(t) for t in result.timeline],
    }


def throughput_workload(b: Bench, events: int) -> Workload:
    return ensure_workload(b.cache, "throughput", events, b.args.seed, b.log)


# -- 1. throughput ------------------------------------------------------------------------------


def throughput(b: Bench) -> dict[str, Any]:
    wl = throughput_workload(b, b.args.events)
    events = wl.info.status_events
    env = worker_env(b, "throughput")
    settings = create_topics(b, env)
    b.log(f"producing {wl.info.payloads:,} bodies ({events:,} status events)")
    produced, produce_s = produce(b, settings.topic_raw, wl.bodies())
    b.shared["throughput_topic"] = (settings.topic_raw, settings.topic_partitions, wl)

    b.log("baseline: plain aiokafka consumer + parse_webhook")
    out = subprocess.run(
        [sys.executable, "-m", "bench.baseline", b.bootstrap, settings.topic_raw, str(produced)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    base = json.loads(out.stdout.strip().splitlines()[-1])
    base_eps = events / base["seconds"]

    b.log("worker: full pipeline until its group has drained")

    def envs(attempt: int) -> list[dict[str, str]]:
        if attempt == 0:
            return [env]
        return [worker_env(b, "throughput", DELIVERY_MONITOR_TOPIC_RAW=settings.topic_raw)]

    worker, health, failures = measured_drain(b, "throughput", envs, events, produced)
    b.shared["worker_events_per_s"] = worker["events_per_s"]
    ratio = round(worker["events_per_s"] / base_eps, 3) if worker["events_per_s"] else None
    by_stage = stage_cpu_per_million(
        health.get("stage_cpu_s"), events, worker["cpu_s_per_million_events"]
    )
    return {
        "workload": wl.info.to_json(),
        "workload_generated_s": round(wl.generated_s, 1),
        "produce": {"bodies": produced, "seconds": round(produce_s, 1)},
        "partitions": settings.topic_partitions,
        "store": b.args.store,
        "baseline": {
            **base,
            "events_per_s": round(base_eps),
            "cpu_s_per_million_events": round(base["cpu_s"] / events * 1e6, 1),
            "peak_rss_mb": round(base["peak_rss"] / MB, 1),
        },
        "worker": worker,
        "worker_health": health,
        "worker_failures": failures,
        "ratio_worker_to_baseline": ratio,
        "cpu_s_per_million_events_by_stage": by_stage,
        "rows": [
            row("baseline (consume + parse, no state)", round(base_eps), "events/s"),
            row("worker (full pipeline)", worker["events_per_s"], "events/s"),
            row("worker / baseline", ratio, "x"),
            row("worker CPU per million events", worker["cpu_s_per_million_events"], "CPU s"),
            row(
                "baseline CPU per million events",
                round(base["cpu_s"] / events * 1e6, 1),
                "CPU s",
            ),
            row("worker peak RSS", worker["peak_rss_mb"][0], "MiB"),
            *(
                row(f"worker CPU per million events: {STAGE_NAMES[stage]}", value, "CPU s")
                for stage, value in by_stage.items()
            ),
        ],
    }


STAGE_NAMES = {
    "ingest": "stage 1 (ingest)",
    "messages": "stage 2 (messages)",
    "recipients": "stage 3 (recipients)",
    "alerting": "alerting",
    "rest": "the rest (Kafka clients, Faust, event loop)",
}


def stage_cpu_per_million(
    stage_cpu_s: Any, events: int, worker_per_million: float | None
) -> dict[str, float]:
    """CPU seconds per million events of each stage (the worker's ``stage_cpu_s`` in
    /v1/health: its handle and flush calls since it started, over every event of the workload)
    and of the rest (the worker's CPU per million events over the drain minus the stages')."""
    if not isinstance(stage_cpu_s, dict) or not events:
        return {}
    out = {
        stage: round(float(seconds) / events * 1e6, 1)
        for stage, seconds in stage_cpu_s.items()
        if stage in STAGE_NAMES
    }
    if worker_per_million is not None:
        out["rest"] = round(worker_per_million - sum(out.values()), 1)
    return out


async def _health(worker: WorkerProcess) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        status, body = await get_json_async(session, worker.base_url + "/v1/health")
    if status != 200 or not isinstance(body, dict):
        return {}
    keys = ("ingest", "messages", "recipients", "watermark", "stage_cpu_s")
    return {k: body.get(k) for k in keys}


# -- 2. memory -----------------------------------------------------------------------------------


def _settled_rss(pid: int, samples: int = 3, pause_s: float = 1.0) -> int:
    values = []
    for _ in range(samples):
        values.append(rss(pid))
        time.sleep(pause_s)
    return int(statistics.median(values))


def count_table_keys(data_dir: Path, table: str, keep: Callable[[bytes], bool]) -> int | None:
    """Keys of a Faust RocksDB table (every partition's DB under ``data_dir``) that ``keep``
    accepts; None if no DB was found. Opened read-only, after the worker stopped."""
    from rocksdict import AccessType, Rdict

    paths = sorted(p for p in data_dir.rglob(f"{table}-*.db") if p.is_dir())
    if not paths:
        return None
    total = 0
    for path in paths:
        db = Rdict(str(path), access_type=AccessType.read_only())
        try:
            it = db.iter()
            it.seek_to_first()
            while it.valid():
                if keep(it.key()):
                    total += 1
                it.next()
            del it
        finally:
            db.close()
    return total


def memory(b: Bench) -> dict[str, Any]:
    per_body = b.args.memory_per_body
    kind = "recipients" if per_body == 1 else f"recipients-b{per_body}"
    wl = ensure_workload(b.cache, kind, b.args.recipients, b.args.seed, b.log)
    recipients = wl.info.distinct_recipients
    env = worker_env(b, "memory", DELIVERY_MONITOR_STORE="rocksdb://")
    settings = create_topics(b, env)
    data_dir = Path(env["DELIVERY_MONITOR_DATA_DIR"])
    with workers_running(b, [env], "memory") as workers:
        w = workers[0]
        assert w.proc is not None
        pid = w.proc.pid
        asyncio.run(wait_assigned(workers, settle_s=5.0))
        idle = _settled_rss(pid)
        b.log(f"idle worker RSS {idle / MB:.1f} MiB; producing {recipients:,} recipients")
        produced, produce_s = produce(b, settings.topic_raw, wl.bodies())
        result = asyncio.run(
            drain(workers, b.bootstrap, settings.app_id, group_topics(settings), 0, timeout_s=7200)
        )
        time.sleep(5.0)
        after = _settled_rss(pid)
        peak = peak_rss(pid)
        known, sampled = asyncio.run(_sample_recipients(w, wl))
        health = asyncio.run(_health(w))
        w.stop()
        keys = count_table_keys(data_dir, "recipients", lambda k: k.isdigit())
    tracked = keys if keys else recipients
    per = (after - idle) / tracked if tracked else None
    return {
        "workload": wl.info.to_json(),
        "workload_generated_s": round(wl.generated_s, 1),
        "produce": {"bodies": produced, "seconds": round(produce_s, 1)},
        "store": "rocksdb://",
        "statuses_per_body": per_body,
        "drain_seconds_after_produce": round(result.seconds, 1),
        "rss_idle_mb": round(idle / MB, 1),
        "rss_after_mb": round(after / MB, 1),
        "peak_rss_mb": round(peak / MB, 1),
        "recipient_keys_in_store": keys,
        "recipients_in_workload": recipients,
        "recipients_known_by_api": {"sampled": sampled, "known": known},
        "worker_health": health,
        "bytes_per_recipient": round(per, 1) if per is not None else None,
        "rows": [
            row("recipients tracked (keys in the store)", tracked, "keys"),
            row("worker RSS idle", round(idle / MB, 1), "MiB"),
            row("worker RSS after drain", round(after / MB, 1), "MiB"),
            row(
                "RSS per tracked recipient",
                round(per, 1) if per is not None else None,
                "B",
                op="<=",
                limit=300,
            ),
        ],
    }


async def _sample_recipients(worker: WorkerProcess, wl: Workload, n: int = 200) -> tuple[int, int]:
    """How many of ``n`` recipients spread over the workload the API knows."""
    import aiohttp

    from bench.workload import distinct_phone

    total = wl.info.distinct_recipients
    picks = sorted({i * total // n for i in range(n)})
    known = 0
    async with aiohttp.ClientSession() as session:
        for i in picks:
            status, _ = await get_json_async(
                session, f"{worker.base_url}/v1/recipients/{distinct_phone(i)}"
            )
            known += status == 200
    return known, len(picks)


# -- paced traffic (latency, steady) -------------------------------------------------------------

PROBE_TEMPLATES = 8
MESSAGES_METRIC = "whatsapp_monitor_template_messages_total"
ROCKSDB_METRIC = "whatsapp_monitor_rocksdb_memory_bytes"


@dataclass
class PacedRun:
    sent_statuses: int = 0
    sent_bodies: int = 0
    seconds: float = 0.0
    late_ticks: int = 0  # ticks that could not keep up with the rate


async def paced_producer(
    producer: Any,
    topic: str,
    pool: list[tuple[bytes, int]],
    rate: float,
    stop: asyncio.Event,
    run: PacedRun,
    tick_s: float = 0.01,
) -> None:
    """Offer ``rate`` status events per second from ``pool`` until ``stop`` is set; event
    timestamps are the wall clock when a body is sent, wamids are new in every pass."""
    t0 = time.monotonic()
    i = passes = 0
    pending: list[asyncio.Future[Any]] = []
    while not stop.is_set():
        now = time.monotonic()
        target = rate * (now - t0)
        ts = int(time.time())
        while run.sent_statuses < target:
            body, n = pool[i]
            i += 1
            if i == len(pool):
                i, passes = 0, passes + 1
            pending.append(await producer.send(topic, restamp(body, ts, passes)))
            run.sent_statuses += n
            run.sent_bodies += 1
        if len(pending) > 5_000:
            await asyncio.gather(*pending)
            pending.clear()
        spent = time.monotonic() - now
        run.late_ticks += spent > tick_s
        await asyncio.sleep(max(0.0, tick_s - spent))
    await asyncio.gather(*pending)
    run.seconds = time.monotonic() - t0


def offered_rate(b: Bench) -> tuple[float, str]:
    if b.args.rate:
        return float(b.args.rate), "--rate"
    measured = b.shared.get("worker_events_per_s")
    if not measured:
        raise RuntimeError(
            "needs the worker's max throughput: run the throughput section first or pass --rate"
        )
    return measured * b.args.load, f"{b.args.load:g} x throughput section's worker events/s"


def _pool(b: Bench, rate: float, seconds: float) -> list[tuple[bytes, int]]:
    size = int(min(max(rate * seconds, 20_000), 300_000))
    return paced_pool(size, b.args.seed)


def latency(b: Bench) -> dict[str, Any]:
    rate, source = offered_rate(b)
    pool = _pool(b, rate, 30)
    env = worker_env(b, "latency")
    settings = create_topics(b, env)
    with workers_running(b, [env], "latency") as workers:
        asyncio.run(wait_assigned(workers))
        details = asyncio.run(_latency_run(b, workers[0], settings, pool, rate))
    metric = details["webhook_to_metric_s"]
    api = details["webhook_to_api_s"]
    return {
        "offered_rate": round(rate),
        "offered_rate_source": source,
        **details,
        "rows": [
            row("offered load", round(rate), "events/s"),
            row("achieved load", details["achieved_rate"], "events/s"),
            row("webhook -> /metrics p50", metric["p50"], "s"),
            row("webhook -> /metrics p99", metric["p99"], "s", op="<=", limit=2.0),
            row("webhook -> API p50", api["p50"], "s"),
            row("webhook -> API p99", api["p99"], "s"),
            row("probes lost (not seen in 30 s)", details["probes_lost"], ""),
        ],
    }


async def _latency_run(
    b: Bench, worker: WorkerProcess, settings: Settings, pool: list[tuple[bytes, int]], rate: float
) -> dict[str, Any]:
    import aiohttp
    from aiokafka import AIOKafkaProducer

    args = b.args
    run_id = uuid.uuid4().hex[:6]
    templates = [f"bench_probe_{run_id}_{j}" for j in range(PROBE_TEMPLATES)]
    producer = AIOKafkaProducer(
        bootstrap_servers=b.bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        max_request_size=4 * 1024 * 1024,
    )
    await producer.start()
    stop = asyncio.Event()
    paced = PacedRun()
    traffic = asyncio.create_task(
        paced_producer(producer, settings.topic_raw, pool, rate, stop, paced)
    )
    assert worker.proc is not None
    pid = worker.proc.pid
    sent: list[float] = []  # probe k: monotonic time just before it was handed to the producer
    seen_metric: dict[int, float] = {}
    seen_api: dict[int, float] = {}
    counts_metric = [0] * PROBE_TEMPLATES
    counts_api = [0] * PROBE_TEMPLATES
    done = asyncio.Event()

    def record(counts: list[int], seen: dict[int, float], j: int, value: int, at: float) -> None:
        # probe k uses template k % PROBE_TEMPLATES: the n-th probe of template j is
        # k = j + n * PROBE_TEMPLATES (probes of one template are seconds apart: in order)
        while counts[j] < value:
            k = j + counts[j] * PROBE_TEMPLATES
            if k < len(sent):
                seen.setdefault(k, at)
            counts[j] += 1

    async def poll_metrics(session: aiohttp.ClientSession) -> None:
        while not done.is_set():
            t = time.monotonic()
            text = await scrape(session, worker)
            at = time.monotonic()
            if text:
                for j, name in enumerate(templates):
                    v = metric_sum(
                        text, MESSAGES_METRIC, {"template": name, "outcome": "attempted"}
                    )
                    record(counts_metric, seen_metric, j, int(v), at)
            await asyncio.sleep(max(0.0, args.metric_poll_s - (time.monotonic() - t)))

    async def poll_api(session: aiohttp.ClientSession) -> None:
        while not done.is_set():
            t = time.monotonic()
            # the templates of every probe not seen yet (usually one or two), asked at once
            waiting = sorted({k % PROBE_TEMPLATES for k in range(len(sent)) if k not in seen_api})
            answers = await asyncio.gather(
                *(
                    get_json_async(session, f"{worker.base_url}/v1/templates/{templates[j]}")
                    for j in waiting
                )
            )
            at = time.monotonic()
            for j, (status, body) in zip(waiting, answers, strict=True):
                if status == 200 and isinstance(body, dict):
                    v = body["windows"]["24h"]["attempted"]
                    record(counts_api, seen_api, j, int(v), at)
            await asyncio.sleep(max(0.0, args.api_poll_s - (time.monotonic() - t)))

    async with aiohttp.ClientSession() as session:
        b.log(f"latency: offering {rate:,.0f} events/s, warm-up {args.latency_warmup_s:g} s")
        await asyncio.sleep(args.latency_warmup_s)
        pollers = [
            asyncio.create_task(poll_metrics(session)),
            asyncio.create_task(poll_api(session)),
        ]
        cpu0, t0 = proc_cpu(pid), time.monotonic()
        k = 0
        while time.monotonic() - t0 < args.latency_seconds:
            ts = int(time.time())
            body = probe_body(run_id, k, ts, templates[k % PROBE_TEMPLATES])
            sent.append(time.monotonic())
            await producer.send(settings.topic_raw, body)
            k += 1
            await asyncio.sleep(args.probe_every_s)
        measured_s = time.monotonic() - t0
        cpu = proc_cpu(pid) - cpu0
        stop.set()
        await traffic
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
            len(seen_metric) < len(sent) or len(seen_api) < len(sent)
        ):
            await asyncio.sleep(0.2)
        done.set()
        await asyncio.gather(*pollers)
    await producer.stop()
    metric_lat = [seen_metric[k] - sent[k] for k in seen_metric]
    api_lat = [seen_api[k] - sent[k] for k in seen_api]
    return {
        "warmup_s": args.latency_warmup_s,
        "measured_s": round(measured_s, 1),
        "probes": len(sent),
        "probes_lost": len(sent) - min(len(seen_metric), len(seen_api)),
        "probe_every_s": args.probe_every_s,
        "metric_poll_s": args.metric_poll_s,
        "api_poll_s": args.api_poll_s,
        "achieved_rate": round(paced.sent_statuses / paced.seconds) if paced.seconds else None,
        "producer_late_ticks": paced.late_ticks,
        "worker_cpu_cores_used": round(cpu / measured_s, 2),
        "worker_rss_mb": round(rss(pid) / MB, 1),
        "webhook_to_metric_s": summary(metric_lat),
        "webhook_to_api_s": summary(api_lat),
    }


# -- 4. alert latency ----------------------------------------------------------------------------

SPIKE_TEMPLATE = "bench_spike"
#: the second of the minute the spike starts at (``--alert-phase``). Late phases are the worst
#: case of judging complete minutes only: at 57 s the spike's 3 s in its minute (about 7 of the
#: minute's 300 sends) are under the floors (10 errors, 5 %), so it waited for the next minute to
#: end (about 63 s); the checks every 15 s of the minute in progress fire on the next minute's
#: first boundary (about 18 s). At 50-55 s the spike's own minute often fires already.
DEFAULT_ALERT_PHASE = 57.0


def alert_phase(args: argparse.Namespace) -> float | None:
    """The onset's second of the minute asked for; ``None`` (a negative value): wherever the
    baseline ends."""
    phase: float = args.alert_phase
    return None if phase < 0 else phase % 60


def spike_start(wall: float, phase: float | None) -> float:
    """The first wall-clock time at or after ``wall`` at second ``phase`` of a minute."""
    return wall if phase is None else wall + (phase - wall % 60) % 60


def alert(b: Bench) -> dict[str, Any]:
    from testkit.slack import FakeSlack

    fake = FakeSlack().start()
    try:
        env = worker_env(
            b,
            "alert",
            DELIVERY_MONITOR_SLACK_WEBHOOK_URL=fake.url,
            DELIVERY_MONITOR_GRAFANA_URL="http://grafana.bench.invalid",
        )
        settings = create_topics(b, env)
        with workers_running(b, [env], "alert") as workers:
            asyncio.run(wait_assigned(workers))
            details = asyncio.run(_alert_run(b, settings, fake, workers[0]))
    finally:
        fake.stop()
    phase = details["onset_second_of_minute"]
    at = f" (onset {phase:g} s into its minute)" if phase is not None else ""
    return {
        **details,
        "rows": [
            row(
                f"spike onset -> FIRING at the Slack webhook{at}",
                details["alert_latency_s"],
                "s",
                op="<=",
                limit=60,
            ),
            row("onset second within its minute", phase, "s"),
            row("traffic", details["rate_messages_per_s"], "messages/s"),
        ],
    }


async def _alert_run(
    b: Bench, settings: Settings, fake: Any, worker: WorkerProcess
) -> dict[str, Any]:
    import random

    import aiohttp
    from aiokafka import AIOKafkaProducer

    args = b.args
    rng = random.Random(args.seed)
    templates = [f"promo_{i:02d}" for i in range(5)] + [SPIKE_TEMPLATE]
    per_template = args.alert_rate / len(templates)  # messages per second each
    producer = AIOKafkaProducer(
        bootstrap_servers=b.bootstrap, enable_idempotence=True, acks="all", linger_ms=5
    )
    await producer.start()
    t0 = time.monotonic()
    onset: float | None = None
    onset_wall: float | None = None
    firing: tuple[float, dict[str, Any]] | None = None
    made = 0.0
    seq = 0
    bodies = 0
    phase = alert_phase(args)
    spike_wall: float | None = None  # when the spike starts (wall clock)
    b.log(
        f"alert: {args.alert_rate:g} messages/s on {len(templates)} templates, spike on "
        f"{SPIKE_TEMPLATE} after {args.alert_baseline_s:g} s"
        + (f", at second {phase:g} of a minute" if phase is not None else "")
    )
    # diagnostics: how far the worker's newest event time trails the wall clock
    samples: list[tuple[float, float | None]] = []  # (t, wall - watermark)
    stop_watch = asyncio.Event()

    async def watch(session: aiohttp.ClientSession) -> None:
        while not stop_watch.is_set():
            t = time.monotonic()
            status, health = await get_json_async(session, worker.base_url + "/v1/health", 5)
            mark = health.get("watermark") if status == 200 and isinstance(health, dict) else 0
            samples.append((t, round(time.time() - mark, 1) if mark else None))
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - t)))

    session = aiohttp.ClientSession()
    watcher = asyncio.create_task(watch(session))
    try:
        while True:
            now = time.monotonic()
            if spike_wall is None and now - t0 >= args.alert_baseline_s:
                spike_wall = spike_start(time.time(), phase)
            spike = spike_wall is not None and time.time() >= spike_wall
            due = int(per_template * (now - t0)) - int(made)
            if due > 0:
                ts = int(time.time())
                batch = alert_bodies(rng, due, ts, templates, SPIKE_TEMPLATE, spike, seq)
                seq += due * len(templates)
                made += due
                futures = []
                for body, spiked in batch:
                    if spiked and onset is None:
                        onset, onset_wall = time.monotonic(), time.time()
                    futures.append(await producer.send(settings.topic_raw, body))
                    bodies += 1
                await asyncio.gather(*futures)
            for at, post, status in list(fake.posts):
                if status == 200 and "FIRING" in json.dumps(post) and onset is not None:
                    firing = (at, post)
                    break
            if firing is not None:
                break
            if onset is not None and now - onset > args.alert_timeout_s:
                break
            await asyncio.sleep(0.1)
    finally:
        stop_watch.set()
        await watcher
        await session.close()
        await producer.stop()
    text = json.dumps(firing[1]) if firing else ""
    return {
        "event_time_lag_s": {  # wall clock - the worker's newest event time, around the onset
            "before_onset": summary(
                [lag for t, lag in samples if lag is not None and onset and t < onset]
            ),
            "after_onset": summary(
                [lag for t, lag in samples if lag is not None and onset and t >= onset]
            ),
        },
        "rate_messages_per_s": args.alert_rate,
        "templates": templates,
        "baseline_s": args.alert_baseline_s,
        "alert_phase_requested_s": phase,
        "spike_ratio": 0.45,
        "background_ratio": 0.01,
        "bodies_sent": bodies,
        "onset_unix": round(onset_wall, 3) if onset_wall else None,
        "onset_second_of_minute": round(onset_wall % 60, 1) if onset_wall else None,
        "alert_latency_s": round(firing[0] - onset, 1) if firing and onset else None,
        "fired": firing is not None,
        "timeout_s": args.alert_timeout_s,
        "firing_names_spike_template": SPIKE_TEMPLATE in text,
        "firing_text": (firing[1].get("text") if firing else None),
        "slack_posts": len(fake.posts),
    }


# -- 5. steady -----------------------------------------------------------------------------------


def steady(b: Bench) -> dict[str, Any]:
    rate, source = offered_rate(b)
    minutes = b.args.steady_minutes
    pool = _pool(b, rate, 60)
    env = worker_env(b, "steady")
    settings = create_topics(b, env)
    with workers_running(b, [env], "steady") as workers:
        asyncio.run(wait_assigned(workers))
        w = workers[0]
        assert w.proc is not None
        details = asyncio.run(_steady_run(b, w, settings, pool, rate, minutes * 60))
    g = growth([(t, v) for t, v in details["rss_samples_mb"]])
    # RocksDB's shared cache fills up to its budget as the state grows (and holds the
    # memtables, which come and go): whether it still grew in the last half is reported apart,
    # and so is the rest of the process (RSS minus the gauge, sampled together)
    rocks = details["rocksdb_samples_mb"]
    half = [r for t, r in rocks if t >= rocks[-1][0] / 2] if rocks else []
    outside = outside_budget(details["rss_samples_mb"], rocks)
    return {
        "offered_rate": round(rate),
        "offered_rate_source": source,
        "minutes": minutes,
        **details,
        "rss_growth_last_half": g,
        "rss_outside_rocksdb_samples_mb": outside,
        "rss_outside_rocksdb_growth_last_half": growth(outside),
        "rows": [
            row("offered load", round(rate), "events/s"),
            row("achieved load", details["achieved_rate"], "events/s"),
            row("consumer lag when the load stopped", details["lag_at_end"], "records"),
            row("caught up after the load stopped", details["seconds_to_drain_after_stop"], "s"),
            row("RSS at the end", details["rss_end_mb"], "MiB"),
            row("RSS max/min over the last half", g, "x", op="<=", limit=1.10),
            row("RocksDB memory, last half: min", min(half, default=None), "MiB"),
            row("RocksDB memory, last half: max", max(half, default=None), "MiB"),
            row("RSS outside RocksDB, max/min over the last half", growth(outside), "x"),
        ],
    }


def outside_budget(
    rss: Sequence[tuple[float, float]], rocksdb: Sequence[tuple[float, float]]
) -> list[tuple[float, float]]:
    """RSS minus the RocksDB memory gauge, of the samples taken at the same time [(t, MiB)]:
    the part of the process that the RocksDB budget does not bound."""
    gauge = dict(rocksdb)
    return [(t, round(v - gauge[t], 1)) for t, v in rss if t in gauge]


async def _steady_run(
    b: Bench,
    worker: WorkerProcess,
    settings: Settings,
    pool: list[tuple[bytes, int]],
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    import aiohttp
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=b.bootstrap, enable_idempotence=True, acks="all", linger_ms=5
    )
    await producer.start()
    stop = asyncio.Event()
    paced = PacedRun()
    task = asyncio.create_task(
        paced_producer(producer, settings.topic_raw, pool, rate, stop, paced)
    )
    assert worker.proc is not None
    pid = worker.proc.pid
    samples: list[tuple[float, float]] = []
    rocksdb: list[tuple[float, float]] = []  # the worker's rocksdb_memory_bytes gauge
    t0 = time.monotonic()
    cpu0 = proc_cpu(pid)
    b.log(f"steady: {rate:,.0f} events/s for {seconds / 60:g} min")
    async with aiohttp.ClientSession() as session:
        while time.monotonic() - t0 < seconds:
            t = round(time.monotonic() - t0, 1)
            text = await scrape(session, worker)
            if text is not None:
                samples.append((t, round(rss(pid) / MB, 1)))
                rocksdb.append((t, round(metric_sum(text, ROCKSDB_METRIC) / MB, 1)))
            await asyncio.sleep(b.args.steady_sample_s)
    cpu = proc_cpu(pid) - cpu0
    elapsed = time.monotonic() - t0
    stop.set()
    await task
    await producer.stop()
    from bench.harness import LagProbe

    # a snapshot of the lag when the load stops says little (every stage commits in batches):
    # how long the worker takes to catch up tells a backlog from records in flight
    probe = await LagProbe(b.bootstrap, settings.app_id, group_topics(settings)).start()
    lags = await probe.lags()
    stopped = time.monotonic()
    drained: float | None = None
    while time.monotonic() - stopped < 120:
        if await probe.lag() == 0:
            drained = round(time.monotonic() - stopped, 1)
            break
        await asyncio.sleep(0.5)
    await probe.stop()
    return {
        "achieved_rate": round(paced.sent_statuses / paced.seconds) if paced.seconds else None,
        "worker_cpu_cores_used": round(cpu / elapsed, 2),
        "lag_at_end": None if lags is None else sum(lags.values()),
        "lag_at_end_by_topic": lags,
        "seconds_to_drain_after_stop": drained,
        "rss_samples_mb": samples,
        "rocksdb_samples_mb": rocksdb,
        "rss_start_mb": samples[0][1] if samples else None,
        "rss_end_mb": samples[-1][1] if samples else None,
        "peak_rss_mb": round(peak_rss(pid) / MB, 1),
    }


# -- 6. scaling ----------------------------------------------------------------------------------


def scaling(b: Bench) -> dict[str, Any]:
    events = b.args.scaling_events or b.args.events
    default_partitions = Settings.from_env({}).topic_partitions
    counts = [default_partitions]
    if b.args.scaling_partitions and b.args.scaling_partitions != default_partitions:
        counts.append(b.args.scaling_partitions)
    runs: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for partitions in counts:
        topic, wl = _scaling_topic(b, events, partitions)
        per: dict[int, dict[str, Any]] = {}
        for n in (1, 2):
            name = f"scaling-p{partitions}-w{n}"
            b.log(f"scaling: {n} worker(s), {partitions} partitions")

            def envs(
                attempt: int, name: str = name, n: int = n, topic: str = topic, p: int = partitions
            ) -> list[dict[str, str]]:
                base = worker_env(
                    b,
                    f"{name}-{attempt}",
                    DELIVERY_MONITOR_TOPIC_RAW=topic,
                    DELIVERY_MONITOR_TOPIC_PARTITIONS=str(p),
                )
                return [base] + [
                    {
                        **base,
                        "DELIVERY_MONITOR_DATA_DIR": str(b.tmp / name / f"state-{attempt}-{i}"),
                        "DELIVERY_MONITOR_WEB_PORT": str(free_port()),
                    }
                    for i in range(1, n)
                ]

            figures, _, failures = measured_drain(
                b, name, envs, wl.info.status_events, wl.info.payloads
            )
            per[n] = figures
            runs.append({"partitions": partitions, **figures, "failures": failures})
            rows.append(
                row(
                    f"{n} worker{'s' * (n > 1)}, {partitions} partitions",
                    figures["events_per_s"],
                    "events/s",
                )
            )
        one, two = per[1]["events_per_s"], per[2]["events_per_s"]
        rows.append(
            row(
                f"2 workers / 1 worker, {partitions} partitions",
                round(two / one, 3) if one and two else None,
                "x",
            )
        )
    return {"events": events, "partition_counts": counts, "runs": runs, "rows": rows}


def _scaling_topic(b: Bench, events: int, partitions: int) -> tuple[str, Workload]:
    """A raw topic holding the throughput workload with ``partitions`` partitions (the
    throughput section's own when it matches)."""
    shared = b.shared.get("throughput_topic")
    if shared is not None:
        topic, parts, wl = shared
        if parts == partitions and wl.info.size == events:
            return topic, wl
    wl = throughput_workload(b, events)
    env = worker_env(
        b, f"scaling-topic-p{partitions}", DELIVERY_MONITOR_TOPIC_PARTITIONS=str(partitions)
    )
    settings = create_topics(b, env)
    b.log(f"scaling: producing {wl.info.payloads:,} bodies to a {partitions}-partition topic")
    produce(b, settings.topic_raw, wl.bodies())
    return settings.topic_raw, wl


#: how long the outage section's broker stays down
OUTAGE_S = 30.0


def outage(b: Bench) -> dict[str, Any]:
    """A broker outage mid-stream, on a broker of its own: the worker's CPU and log while
    Kafka is down (a client spinning on metadata used a core and wrote 34 MB of log in 30 s),
    and how long it takes to drain once Kafka is back."""
    from streams.localkafka import LocalKafka
    from streams.simulate import CampaignSpec, generate
    from testkit.kafka import produce as produce_records
    from testkit.kafka import produce_keyed, wait_drained

    broker = LocalKafka(b.tmp / "outage" / "kafka", Settings.from_env().cache_dir, b.kafka_version)
    bootstrap = broker.start().bootstrap
    try:
        campaign = generate(CampaignSpec(messages=6_000), seed=23)
        env = unique_env(bootstrap, b.tmp / "outage" / "state", DELIVERY_MONITOR_STORE="rocksdb://")
        settings = Settings.from_env(env)
        run_sync(ensure_topics(bootstrap, source_topics(settings), 1))
        half = len(campaign.payloads) // 2
        produce_keyed(bootstrap, settings.topic_send_log, campaign.send_log)
        produce_records(bootstrap, settings.topic_raw, campaign.payloads[:half])
        log = b.tmp / "outage" / "worker.log"
        worker = WorkerProcess(env, log).start()
        try:
            consumed = "whatsapp_monitor_records_consumed_total"
            while (worker.metric(consumed, {"topic": settings.topic_raw}) or 0) <= half // 3:
                time.sleep(0.05)
            assert worker.proc is not None
            broker.stop()
            cpu0, log0, t0 = proc_cpu(worker.proc.pid), log.stat().st_size, time.monotonic()
            time.sleep(OUTAGE_S)
            down_s = time.monotonic() - t0
            cores = (proc_cpu(worker.proc.pid) - cpu0) / down_s
            log_kb = (log.stat().st_size - log0) / 1024
            broker.start()
            t1 = time.monotonic()
            produce_records(bootstrap, settings.topic_raw, campaign.payloads[half:])
            wait_drained(bootstrap, settings.app_id, group_topics(settings), 300, "(after)")
            drained_s = time.monotonic() - t1
            alive = worker.proc.poll() is None
        finally:
            worker.stop()
            keep = b.logs / "outage"
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(log, keep / log.name)
    finally:
        broker.stop()
    return {
        "outage_s": round(down_s, 1),
        "cpu_cores_while_down": round(cores, 3),
        "log_kb_while_down": round(log_kb, 1),
        "drained_after_s": round(drained_s, 1),
        "worker_survived": alive,
        "rows": [
            row("worker CPU while Kafka is down", round(cores, 3), "cores", op="<=", limit=0.2),
            row(
                "worker log written while Kafka is down",
                round(log_kb, 1),
                "KiB",
                op="<=",
                limit=256,
            ),
            row("worker kept running (no restart)", alive),
            row(
                "drained after Kafka came back (with the rest of the campaign)",
                round(drained_s, 1),
                "s",
            ),
        ],
    }


SECTIONS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "throughput": throughput,
    "memory": memory,
    "latency": latency,
    "alert": alert,
    "steady": steady,
    "scaling": scaling,
    "outage": outage,
}

__all__ = ["SECTIONS", "Bench", "LoadMeter", "row"]
