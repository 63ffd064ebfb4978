"""Measuring tools of the benchmark: /proc readings, machine and commit, load on the machine,
percentiles, /metrics scraping, consumer-group lag and the drain of a worker group.

Pure helpers (no Kafka, no processes) come first; the unit tests cover them.
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import re
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testkit.worker import WorkerProcess

REPO = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")

# -- pure helpers -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linearly interpolated between closest
    ranks (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not within 0..100")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary(values: Sequence[float], digits: int = 3) -> dict[str, float | int | None]:
    """count, p50, p90, p99, max and mean of ``values`` (None when there are none)."""
    if not values:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    return {
        "count": len(values),
        "p50": round(percentile(values, 50), digits),
        "p90": round(percentile(values, 90), digits),
        "p99": round(percentile(values, 99), digits),
        "max": round(max(values), digits),
        "mean": round(sum(values) / len(values), digits),
    }


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric_sum(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """Sum of the samples ``name{labels...}`` in a Prometheus text exposition (0 if none)."""
    total = 0.0
    want = labels or {}
    prefix = name + "{"
    for line in text.splitlines():
        if not (line.startswith(prefix) or line.startswith(name + " ")):
            continue
        m = _SAMPLE.match(line)
        if m is None or m.group(1) != name:
            continue
        got = dict(_LABEL.findall(m.group(2) or ""))
        if all(got.get(k) == v for k, v in want.items()):
            total += float(m.group(3))
    return total


def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, digits)


def growth(samples: Sequence[tuple[float, float]]) -> float | None:
    """max/min of the values in the last half (by time) of ``samples`` [(t, value)]."""
    if len(samples) < 2:
        return None
    t0, t1 = samples[0][0], samples[-1][0]
    half = [v for t, v in samples if t >= t0 + (t1 - t0) / 2]
    if not half or min(half) <= 0:
        return None
    return round(max(half) / min(half), 4)


# -- /proc ----------------------------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` (its threads included); 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def proc_status(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/<pid>/status in bytes (VmRSS, VmHWM, ...); 0 if unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss(pid: int) -> int:
    return proc_status(pid, "VmRSS")


def peak_rss(pid: int) -> int:
    return proc_status(pid, "VmHWM")


def _cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in parts[:8]]
    idle = values[3] + values[4]  # idle + iowait
    return float(sum(values) - idle), float(sum(values))


def _process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds) of every process."""
    out: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS)
    return out


def _descendants(table: Mapping[int, tuple[int, float]], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


class LoadMeter:
    """The machine's load during a section: load averages, CPU busy on the whole machine, and
    the part of it used by processes that are not this benchmark (nor its children: workers,
    the baseline, a local broker)."""

    def __init__(self, extra_ours: Iterable[int] = ()) -> None:
        self.extra = set(extra_ours)

    def start(self) -> LoadMeter:
        self.t0 = time.monotonic()
        self.load0 = os.getloadavg()
        self.cpu0 = _cpu_times()
        self.table0 = _process_table()
        return self

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self.t0
        busy1, total1 = _cpu_times()
        table1 = _process_table()
        ours = _descendants(table1, os.getpid()) | _descendants(self.table0, os.getpid())
        for pid in self.extra:
            ours |= _descendants(table1, pid)
        others = 0.0
        for pid, (_, cpu) in table1.items():
            if pid in ours:
                continue
            before = self.table0.get(pid)
            others += cpu - (before[1] if before else 0.0)
        cores = os.cpu_count() or 1
        busy = (busy1 - self.cpu0[0]) / max(1.0, total1 - self.cpu0[1]) * cores
        return {
            "seconds": round(wall, 1),
            "loadavg_start": [round(x, 2) for x in self.load0],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "machine_busy_cores": round(busy, 2),
            "others_busy_cores": round(others / wall, 2) if wall > 0 else None,
        }


# -- machine and commit ------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    mem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) * 1024
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "cpu_model": model,
        "ram_gib": round(mem / 2**30, 1),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "hostname": platform.node(),
    }


def porcelain_paths(text: str) -> list[str]:
    """Paths of ``git status --porcelain`` output ("XY path" lines; renames give the new path)."""
    return [line[3:].split(" -> ")[-1] for line in text.splitlines() if len(line) > 3]


def git_info(repo: Path = REPO) -> dict[str, Any]:
    """Short commit and whether the work tree differs from it (read-only git commands)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "--no-optional-locks", "-C", str(repo), *args],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    try:
        sha = git("rev-parse", "--short", "HEAD").strip()
        changed = porcelain_paths(git("status", "--porcelain"))
        branch = git("rev-parse", "--abbrev-ref", "HEAD").strip()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None, "branch": None, "changed_files": []}
    return {"commit": sha, "dirty": bool(changed), "branch": branch, "changed_files": changed}


# -- Kafka: lag of a group ---------------------------------------------------------------------


class LagProbe:
    """Records of ``topics`` not yet committed by a worker group: end offsets minus the
    committed offsets of ``<group>`` and ``<group>-ingest`` (the raw topic's consumer), with
    long-lived clients (a probe every second must not cost a connection setup each time)."""

    def __init__(self, bootstrap: str, group: str, topics: list[str]) -> None:
        self.bootstrap, self.group, self.topics = bootstrap, group, topics

    async def start(self) -> LagProbe:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        self.admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await self.admin.start()
        await self.consumer.start()
        self.partitions: list[Any] = []
        return self

    async def stop(self) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def lag(self) -> int | None:
        """The lag, or None while a topic or the group coordinator is not known yet."""
        lags = await self.lags()
        return None if lags is None else sum(lags.values())

    async def lags(self) -> dict[str, int] | None:
        """The lag per topic, or None while a topic or the coordinator is not known yet."""
        from aiokafka.errors import KafkaError
        from aiokafka.structs import TopicPartition

        from streams.raw_consumer import ingest_group

        try:
            if not self.partitions:
                described = await self.admin.describe_topics(self.topics)
                parts = [
                    TopicPartition(d["topic"], p["partition"])
                    for d in described
                    for p in d["partitions"]
                ]
                if len({tp.topic for tp in parts}) != len(self.topics):
                    return None
                self.partitions = parts
            committed = dict(await self.admin.list_consumer_group_offsets(ingest_group(self.group)))
            committed.update(await self.admin.list_consumer_group_offsets(self.group))
            ends = await self.consumer.end_offsets(self.partitions)
        except KafkaError:
            return None
        lags = dict.fromkeys(self.topics, 0)
        for tp, end in ends.items():
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            lags[tp.topic] += max(0, end - done)
        return lags


# -- producing ---------------------------------------------------------------------------------


async def produce_bodies(bootstrap: str, topic: str, bodies: Iterable[bytes]) -> int:
    """Produce ``bodies`` as fast as Kafka takes them (idempotent, acks=all); returns how many."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=20,
        max_batch_size=1024 * 1024,
        max_request_size=4 * 1024 * 1024,
    )
    await producer.start()
    count = 0
    pending: list[asyncio.Future[Any]] = []
    try:
        for body in bodies:
            pending.append(await producer.send(topic, body))
            count += 1
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return count


# -- workers -------------------------------------------------------------------------------------


async def scrape(session: Any, worker: WorkerProcess, timeout_s: float = 5.0) -> str | None:
    import aiohttp

    try:
        async with session.get(
            worker.base_url + "/metrics", timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            return str(await resp.text())
    except (TimeoutError, aiohttp.ClientError):
        return None


async def get_json_async(session: Any, url: str, timeout_s: float = 10.0) -> tuple[int, Any]:
    import aiohttp

    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            return resp.status, await resp.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return 0, None


def start_workers(envs: list[dict[str, str]], logs: list[Path]) -> list[WorkerProcess]:
    """Start workers at the same time (each one's start waits for its /metrics)."""
    from concurrent.futures import ThreadPoolExecutor

    workers = [WorkerProcess(env, log) for env, log in zip(envs, logs, strict=True)]
    try:
        with ThreadPoolExecutor(len(workers)) as pool:
            list(pool.map(lambda w: w.start(timeout_s=180), workers))
    except AssertionError as exc:  # WorkerProcess: exited or not ready in time
        stop_workers(workers)
        raise WorkerExited(str(exc)[-2000:]) from None
    except BaseException:
        stop_workers(workers)
        raise
    return workers


def stop_workers(workers: Iterable[WorkerProcess]) -> None:
    for w in workers:
        w.stop()


async def wait_assigned(
    workers: Sequence[WorkerProcess], timeout_s: float = 120.0, settle_s: float = 0.0
) -> None:
    """Until every worker reports partitions of both repartition topics in /v1/health."""
    import aiohttp

    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            ok = 0
            for w in workers:
                status, body = await get_json_async(session, w.base_url + "/v1/health")
                parts = (body or {}).get("partitions", {}) if status == 200 else {}
                ok += bool(parts.get("messages")) and bool(parts.get("recipients"))
            if ok == len(workers):
                await asyncio.sleep(settle_s)
                return
            await asyncio.sleep(0.5)
    raise RuntimeError("workers were not assigned partitions in time")


class WorkerExited(RuntimeError):
    """A worker process ended while it was being measured."""


_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|NotReady|Mismatch|Exit)\b.*")


def crash_summary(log_text: str, limit: int = 5) -> list[str]:
    """The informative lines of a crashed worker's log: its ERROR/CRITICAL lines (without the
    shutdown noise) and the exception lines of tracebacks, first ``limit``, deduplicated."""
    out: list[str] = []
    for line in log_text.splitlines():
        line = line.strip()
        noise = "CancelledError" in line or "Event loop is closed" in line
        keep = "[ERROR]" in line or "[CRITICAL]" in line or bool(_EXC_LINE.match(line))
        if keep and not noise:
            text = line[:400]
            if text not in out:
                out.append(text)
        if len(out) >= limit:
            break
    return out


@dataclass
class DrainResult:
    """How a group of workers drained a pre-produced raw topic."""

    seconds: float  # clock start -> every stage had handled every input (see drain)
    seconds_to_no_lag: float  # clock start -> the group had committed everything
    seconds_all_running: float | None  # from the first poll where every worker had read raw
    events_after_all_running: float | None  # status events left at that moment
    events_before_start: float  # status events ingested before the clock started
    cpu_s: list[float]  # per worker, over ``seconds``
    cpu_total_s: list[float]  # per worker, since its start
    peak_rss: list[int]
    rss_end: list[int]
    raw_records: list[float]  # raw-topic records each worker's stage 1 read
    polls: int
    #: [s, stage-1 statuses, stage-2 statuses, stage-3 facts, group lag]
    timeline: list[tuple[float, float, float, float, int | None]] = field(default_factory=list)


def first_final(counters: Sequence[tuple[float, ...]]) -> int:
    """Index of the first entry equal to the last one (the counters only grow): the poll at
    which the work was complete."""
    final = counters[-1]
    return next(i for i, c in enumerate(counters) if c == final)


def _stage_counters(health: Any) -> tuple[float, float, float, float]:
    """(raw records, stage-1 statuses, stage-2 statuses, stage-3 facts) of a /v1/health body."""
    if not isinstance(health, dict):
        return (0.0, 0.0, 0.0, 0.0)
    ingest = health.get("ingest") or {}
    return (
        float(ingest.get("records", 0)),
        float(ingest.get("statuses", 0)),
        float((health.get("messages") or {}).get("statuses", 0)),
        float((health.get("recipients") or {}).get("facts", 0)),
    )


async def drain(
    workers: Sequence[WorkerProcess],
    bootstrap: str,
    group: str,
    topics: list[str],
    total_events: int,
    raw_records: int | None = None,
    poll_s: float = 0.5,
    timeout_s: float = 3600.0,
) -> DrainResult:
    """Poll the workers' /v1/health and the group's lag until the lag is 0 (``topics[0]`` is
    the raw topic).

    The clock starts at the last poll at which no worker had read a raw record yet (so the
    group's join and first fetch are in, a worker's start-up before it is not). It stops at the
    first poll from which on no stage's counter moved any more (raw records, statuses handled
    by stages 1 and 2, facts handled by stage 3), confirmed by a lag of 0; the time to a lag of
    0 (the last commit, up to Faust's commit interval later) is reported too. Figures err slow
    by up to one poll."""
    import aiohttp

    probe = await LagProbe(bootstrap, group, topics).start()
    pids = [w.proc.pid for w in workers if w.proc is not None]
    t_zero = time.monotonic()
    cpu_zero = [proc_cpu(p) for p in pids]
    t_all: float | None = None
    left_all: float | None = None
    started = False
    before = 0.0
    raw_total = raw_records
    timeline: list[tuple[float, float, float, float, int | None]] = []
    stamps: list[tuple[float, list[float]]] = []  # (time, per-worker CPU) of every timed poll
    polls = 0
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                now = time.monotonic()
                answers = await asyncio.gather(
                    *(get_json_async(session, w.base_url + "/v1/health", 5.0) for w in workers)
                )
                per = [_stage_counters(body) for status, body in answers]
                consumed = [c[0] for c in per]
                events = sum(c[1] for c in per)
                lags = await probe.lags()
                lag = None if lags is None else sum(lags.values())
                raw_lag = None if lags is None else lags[topics[0]]
                if raw_total is None and raw_lag:
                    raw_total = raw_lag  # before any commit: every record of the raw topic
                polls += 1
                if not started:
                    if sum(consumed) > 0:
                        started = True
                        if polls == 1:  # consuming before the first poll: not timed, not counted
                            before = events
                    elif all(status == 200 for status, _ in answers):  # nothing read yet
                        t_zero = now
                        cpu_zero = [proc_cpu(p) for p in pids]
                        timeline.clear()
                        stamps.clear()
                if started and t_all is None and all(c > 0 for c in consumed) and raw_lag:
                    # replays after a rebalance count twice in the workers' counters: what is
                    # left is the raw topic's uncommitted share of the workload
                    t_all = now
                    left_all = total_events * raw_lag / raw_total if raw_total else None
                totals = tuple(sum(c[i] for c in per) for i in range(4))
                timeline.append((round(now - t_zero, 2), totals[1], totals[2], totals[3], lag))
                stamps.append((now, [proc_cpu(p) for p in pids]))
                if lag == 0 and started:
                    end = time.monotonic()
                    done = first_final([t[1:4] for t in timeline])
                    t_done, cpu_done = stamps[done]
                    return DrainResult(
                        seconds=t_done - t_zero,
                        seconds_to_no_lag=end - t_zero,
                        seconds_all_running=None if t_all is None else t_done - t_all,
                        events_after_all_running=left_all,
                        events_before_start=before,
                        cpu_s=[c - z for c, z in zip(cpu_done, cpu_zero, strict=True)],
                        cpu_total_s=[proc_cpu(p) for p in pids],
                        peak_rss=[peak_rss(p) for p in pids],
                        rss_end=[rss(p) for p in pids],
                        raw_records=consumed,
                        polls=polls,
                        timeline=timeline,
                    )
                for w in workers:
                    if w.proc is not None and w.proc.poll() is not None:
                        try:
                            text = w.log_path.read_text(errors="replace")
                        except OSError:
                            text = ""
                        lines = "\n".join(crash_summary(text))
                        raise WorkerExited(
                            f"worker on port {w.port} exited with {w.proc.returncode} during "
                            f"the drain:\n{lines}"
                        )
                await asyncio.sleep(max(0.0, poll_s - (time.monotonic() - now)))
    finally:
        await probe.stop()
    raise RuntimeError(f"the group {group} did not drain within {timeout_s:.0f} s")


__all__ = [
    "DrainResult",
    "LagProbe",
    "LoadMeter",
    "WorkerExited",
    "crash_summary",
    "drain",
    "first_final",
    "git_info",
    "growth",
    "machine_info",
    "metric_sum",
    "peak_rss",
    "percentile",
    "proc_cpu",
    "produce_bodies",
    "rss",
    "start_workers",
    "summary",
]
