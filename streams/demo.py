"""``delivery-monitor demo``: live, realistic WhatsApp webhook traffic into the raw topic.

The traffic comes from :class:`streams.simulate.LiveTraffic` (several sending numbers, dozens of
templates, recipients in several countries, inbound replies, duplicated and out-of-order
statuses, a send log for the messages without ``biz_opaque_callback_data``) and, one minute
after the start, a 131049 spike on one template that lasts four minutes: the worker fires one
alert about two minutes into the spike and resolves it about ten minutes after it ends.

Event timestamps are the wall clock at send time, so the spike shows up in the "now" windows of
the API and the dashboards. ``--time-scale N`` makes event time run N times faster than the wall
clock (tests: minutes of event time in seconds); ``--rate`` is status items per wall second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from streams.core.times import iso_utc
from streams.feed import kafka_producer
from streams.settings import Settings
from streams.simulate import LiveRecord, LiveSpec, LiveTraffic

log = logging.getLogger(__name__)

TICK_S = 0.05  # wall seconds between two rounds of sends


@dataclass(frozen=True)
class DemoOptions:
    rate: float = 50.0  # status items per wall second
    duration: float | None = None  # wall seconds; None = until interrupted
    seed: int = 7
    time_scale: float = 1.0
    spike_template: str = "weekend_flash_deal"
    spike_at: float = 60.0  # event seconds after the start
    spike_minutes: float = 4.0
    spike_ratio: float = 0.5
    spike_share: float = 0.05
    progress: str = "auto"  # auto, line (one updating line), log (periodic lines), none
    progress_every: float = 10.0  # seconds between two progress lines in log mode

    def spec(self) -> LiveSpec:
        return LiveSpec(
            spike_template=self.spike_template,
            spike_share=self.spike_share,
            spike_at=self.spike_at,
            spike_seconds=self.spike_minutes * 60,
            spike_ratio=self.spike_ratio,
        )


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be > 0")
    return value


def _ratio(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text}: must be between 0 and 1")
    return value


DESCRIPTION = (
    "Produce realistic WhatsApp webhook traffic, with a 131049 spike on one template, to the "
    "raw topic (KAFKA_BOOTSTRAP_SERVERS or the local broker) until interrupted."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The demo's options, on its ``delivery-monitor demo`` subparser."""
    d = DemoOptions()
    p.add_argument(
        "--rate", type=_positive, default=d.rate, help="status items per second (default 50)"
    )
    p.add_argument(
        "--duration", type=_positive, help="stop after this many seconds (default: never)"
    )
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (same traffic)")
    p.add_argument(
        "--time-scale",
        type=_positive,
        default=d.time_scale,
        help="event time runs this many times faster than the wall clock (tests)",
    )
    p.add_argument("--spike-template", default=d.spike_template, help="template that spikes")
    p.add_argument(
        "--spike-at",
        type=float,
        default=d.spike_at,
        help="event seconds after the start when the spike begins (default 60)",
    )
    p.add_argument(
        "--spike-minutes", type=float, default=d.spike_minutes, help="event minutes of spike"
    )
    p.add_argument(
        "--spike-ratio",
        type=_ratio,
        default=d.spike_ratio,
        help="share of the spike template's sends failing with 131049",
    )
    p.add_argument(
        "--spike-share",
        type=_ratio,
        default=d.spike_share,
        help="share of all sends that use the spike template",
    )
    p.add_argument(
        "--progress",
        choices=["auto", "line", "log", "none"],
        default=d.progress,
        help="one updating line (a terminal), periodic lines, or nothing",
    )
    p.add_argument(
        "--progress-every",
        type=_positive,
        default=d.progress_every,
        help="seconds between progress lines when not on a terminal",
    )


def options_from(a: argparse.Namespace) -> DemoOptions:
    """The options parsed by a parser that :func:`add_arguments` set up."""
    return DemoOptions(
        rate=a.rate,
        duration=a.duration,
        seed=a.seed,
        time_scale=a.time_scale,
        spike_template=a.spike_template,
        spike_at=a.spike_at,
        spike_minutes=a.spike_minutes,
        spike_ratio=a.spike_ratio,
        spike_share=a.spike_share,
        progress=a.progress,
        progress_every=a.progress_every,
    )


def new_traffic(options: DemoOptions, start: float | None = None) -> LiveTraffic:
    """The demo's traffic, starting now (event time = wall clock) unless ``start`` is given."""
    return LiveTraffic(options.spec(), time.time() if start is None else start, options.seed)


@dataclass
class DemoStats:
    statuses: int = 0
    bodies: int = 0
    duplicates: int = 0
    inbound: int = 0
    preferences: int = 0
    send_log: int = 0
    bytes: int = 0

    def add(self, record: LiveRecord) -> None:
        if record.kind == "send_log":
            self.send_log += 1
            return
        self.bodies += 1
        self.bytes += len(record.value)
        self.statuses += record.statuses
        self.duplicates += record.duplicate
        self.inbound += record.kind == "inbound"
        self.preferences += record.kind == "preferences"


def _clock_text(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def spike_state(traffic: LiveTraffic, now: float) -> str:
    name = traffic.spec.spike_template
    if now < traffic.spike_start:
        return f"spike on {name} in {_clock_text(traffic.spike_start - now)}"
    if now < traffic.spike_end:
        left = _clock_text(traffic.spike_end - now)
        return f"SPIKE on {name}: {traffic.spike_failures} x 131049, {left} left"
    return f"spike on {name} over ({traffic.spike_failures} x 131049)"


class Progress:
    """One updating line on a terminal, or a line every ``every`` seconds otherwise."""

    def __init__(self, out: TextIO, mode: str = "auto", every: float = 10.0) -> None:
        if mode == "auto":
            mode = "line" if out.isatty() else "log"
        self.out, self.mode, self.every = out, mode, every
        self._last = float("-inf")

    def line(self, stats: DemoStats, elapsed: float, traffic: LiveTraffic, now: float) -> str:
        rate = stats.statuses / elapsed if elapsed > 0 else 0.0
        return (
            f"demo {_clock_text(elapsed)} | event time {iso_utc(now)} | "
            f"{stats.statuses:,} statuses ({rate:,.1f}/s) in {stats.bodies:,} bodies "
            f"(+{stats.duplicates:,} duplicates), {stats.inbound:,} replies, "
            f"{stats.preferences:,} opt-outs, "
            f"{stats.send_log:,} send-log | {spike_state(traffic, now)}"
        )

    def update(
        self, stats: DemoStats, elapsed: float, traffic: LiveTraffic, now: float, final: bool
    ) -> None:
        if self.mode == "none":
            return
        interval = 0.5 if self.mode == "line" else self.every
        if not final and elapsed - self._last < interval:
            return
        self._last = elapsed
        text = self.line(stats, elapsed, traffic, now)
        if self.mode == "line":
            self.out.write("\r\x1b[K" + text + ("\n" if final else ""))
        else:
            self.out.write(text + "\n")
        self.out.flush()


async def produce_traffic(
    bootstrap: str,
    settings: Settings,
    traffic: LiveTraffic,
    options: DemoOptions,
    stop: threading.Event,
    progress: Progress,
    monotonic: Callable[[], float] = time.monotonic,
) -> DemoStats:
    """Send the traffic to Kafka in real time until ``stop`` is set or the duration is over."""
    producer = kafka_producer(bootstrap, "whatsapp-delivery-monitor-demo")
    await producer.start()
    stats = DemoStats()
    wall0 = monotonic()
    created, last_event = 0, traffic.start
    elapsed, now = 0.0, traffic.start
    try:
        while not stop.is_set():
            elapsed = monotonic() - wall0
            if options.duration is not None and elapsed >= options.duration:
                break
            now = traffic.start + elapsed * options.time_scale
            target = int(options.rate * elapsed / traffic.statuses_per_message)
            new = target - created
            for k in range(new):
                traffic.send(last_event + (now - last_event) * (k + 1) / new)
            created, last_event = max(created, target), now
            sends = []
            for record in traffic.due(now):
                topic = settings.topic_send_log if record.kind == "send_log" else settings.topic_raw
                sends.append(await producer.send(topic, record.value, key=record.key))
                stats.add(record)
            if sends:
                await asyncio.gather(*sends)  # acknowledged: back-pressure when Kafka is slow
            progress.update(stats, elapsed, traffic, now, final=False)
            await asyncio.sleep(max(0.0, TICK_S - (monotonic() - wall0 - elapsed)))
    finally:
        await producer.stop()
        progress.update(stats, elapsed, traffic, now, final=True)
    return stats


def how_to_look(settings: Settings, traffic: LiveTraffic) -> str:
    """Where to see the demo: metrics, API examples and where the alert appears."""
    base = f"http://{settings.web_host}:{settings.web_port}"
    spike = traffic.spec.spike_template
    at = _clock_text(traffic.spec.spike_at)
    alerts = (
        "posted to Slack (DELIVERY_MONITOR_SLACK_WEBHOOK_URL) and logged as ALERT FIRING ..."
        if settings.slack_webhook_url
        else "in this log as ALERT FIRING / ALERT RESOLVED (set "
        "DELIVERY_MONITOR_SLACK_WEBHOOK_URL to get them in Slack)"
    )
    return "\n".join(
        [
            f"demo traffic into {settings.topic_raw}: a 131049 spike on template {spike} "
            f"starts {at} after the start and lasts {traffic.spec.spike_seconds / 60:g} min;",
            "the alert fires within about a minute of the spike's start and resolves about "
            "10 minutes after it ends. Look at:",
            f"  overview: {base}/   (open it in a browser: incidents, top templates, lag)",
            f"  metrics:  {base}/metrics",
            f"  template: curl -s {base}/v1/templates/{spike}",
            f"  rankings: curl -s '{base}/v1/templates?window=1h&sort=limit_errors&limit=5'",
            f"  firing:   curl -s {base}/v1/alerts",
            f"  advice:   curl -s {base}/v1/recipients/{traffic.showcase}/advice"
            "   (a recipient the spike hits first)",
            f"  health:   curl -s {base}/v1/health",
            f"  alerts:   {alerts}",
        ]
    )


def run(settings: Settings, bootstrap: str, options: DemoOptions, out: TextIO = sys.stderr) -> int:
    """``delivery-monitor demo``: produce until the duration ends, SIGINT or SIGTERM (exit 0)."""
    from aiokafka.errors import KafkaError

    traffic = new_traffic(options)
    print(
        f"demo: {options.rate:g} statuses/s to {settings.topic_raw} at {bootstrap} "
        f"(seed {options.seed}, time scale {options.time_scale:g}); "
        f"{spike_state(traffic, traffic.start)}",
        file=out,
    )
    print(how_to_look(settings, traffic), file=out, flush=True)
    stop = threading.Event()

    async def main() -> DemoStats:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        progress = Progress(out, options.progress, options.progress_every)
        return await produce_traffic(bootstrap, settings, traffic, options, stop, progress)

    try:
        stats = asyncio.run(main())
    except KafkaError as exc:
        print(f"delivery-monitor demo: error: Kafka at {bootstrap}: {exc}", file=out)
        return 2
    print(
        f"demo done: {stats.statuses:,} statuses in {stats.bodies:,} bodies "
        f"({stats.bytes:,} bytes), {stats.send_log:,} send-log records",
        file=out,
    )
    return 0


class BackgroundDemo:
    """The demo on a thread of its own (its own event loop), next to a worker: ``make run``."""

    def __init__(self, settings: Settings, bootstrap: str, options: DemoOptions) -> None:
        self.settings, self.bootstrap, self.options = settings, bootstrap, options
        self.traffic = new_traffic(options)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="demo-traffic", daemon=True)

    def start(self) -> BackgroundDemo:
        self._thread.start()
        return self

    def _main(self) -> None:
        progress = Progress(sys.stderr, "log", self.options.progress_every)
        try:
            asyncio.run(
                produce_traffic(
                    self.bootstrap, self.settings, self.traffic, self.options, self._stop, progress
                )
            )
        except Exception:
            log.exception("demo traffic stopped")

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
