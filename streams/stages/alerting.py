"""Stage 4: spike detection and alert lifecycle over the signals of the counting stages.

One partition, one owner: the worker that owns partition 0 of ``<app>-signals`` evaluates every
rule and writes notifications to the alerts topic; the alert book (which alerts fire, since
when, what was notified) is saved in a table after each batch, so a restart neither forgets a
firing alert nor posts it twice.

Time is event time: the low watermark of the messages partitions (the slowest partition that is
still receiving data decides, so no minute is judged before every partition delivered it; a
partition quiet for ``idle_s`` of wall time stops holding time back), advanced by the wall clock
while no newer event arrives (so an incident still resolves when traffic stops). Evaluations run
once per minute of that time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from streams.core.alerts import AlertBook, AlertPolicy, Notification
from streams.core.detector import DetectorConfig, SpikeDetector, scope_of_bucket
from streams.core.immediate import (
    ImmediateRules,
    ResendStormRule,
    TemplateQualityChange,
    TemplateStatusChange,
)
from streams.core.signals import SignalBatch

log = logging.getLogger(__name__)


class AlertingStage:
    def __init__(
        self,
        detector: DetectorConfig | None = None,
        policy: AlertPolicy | None = None,
        clock: Callable[[], float] = time.time,
        idle_s: float = 10.0,
    ) -> None:
        self.detector = SpikeDetector(detector)
        self.immediate = ImmediateRules()
        self.storms = ResendStormRule()
        self.policy = policy
        self.book = AlertBook(policy)
        self.clock = clock
        self.event_time = 0
        self._event_time_at = 0.0  # wall clock when event_time last moved
        self._last_minute = -1
        self._first_minute = -1  # earliest bucket minute seen before the first evaluation
        self.signals = 0
        self.idle_s = idle_s
        self._marks: dict[int, tuple[int, float]] = {}  # partition -> (watermark, wall seen)

    def restore(self, raw: bytes | None) -> None:
        if raw:
            self.book = AlertBook.from_encoded_state(raw, self.policy)

    def handle(self, batch: SignalBatch) -> None:
        self.signals += 1
        for b in batch.buckets:
            if self._last_minute < 0 and (self._first_minute < 0 or b.minute < self._first_minute):
                self._first_minute = b.minute
            attempts = b.counts.get("attempted", 0)
            errors = {k[7:]: v for k, v in b.counts.items() if k.startswith("failed.")}
            self.detector.add(scope_of_bucket(b.dim, b.key), b.minute, attempts, errors)
        for t in batch.templates:
            if t.field == "status":
                self.immediate.observe(TemplateStatusChange(t.name, t.value, t.ts, t.reason))
            elif t.field == "quality":
                self.immediate.observe(TemplateQualityChange(t.name, t.value, t.ts))
        for error in batch.errors:
            self.immediate.observe(error)
        for quality in batch.phone_quality:
            self.immediate.observe(quality)
        for account in batch.accounts:
            self.immediate.observe(account)
        for r in batch.resends:
            self.storms.record(r.template, "", r.ts, r.recipient_digest)
        wall = self.clock()
        for partition, mark in batch.watermarks.items():
            self._marks[partition] = (mark, wall)
        if batch.max_ts > self.event_time:
            self.event_time = batch.max_ts
            self._event_time_at = wall

    def now(self) -> int:
        """The low watermark of the active partitions; when all are quiet, the newest event
        time advanced by the wall clock since it arrived."""
        if not self.event_time:
            return 0
        wall = self.clock()
        active = [mark for mark, seen in self._marks.values() if wall - seen < self.idle_s]
        if active:
            return min(active)
        return self.event_time + max(0, int(wall - self._event_time_at - self.idle_s))

    def evaluate(self) -> list[Notification]:
        """Notifications due at the current time: one evaluation per minute of event time that
        passed since the last one (at most an hour's worth, when a replay jumps ahead). The
        first evaluation starts at the earliest minute seen, so a backlog that arrives in one
        batch is judged minute by minute as live traffic would be."""
        now = self.now()
        minute = now // 60
        if not now or minute <= self._last_minute:
            return []
        start = self._last_minute + 1 if self._last_minute >= 0 else self._first_minute
        first = max(start, minute - 60) if start >= 0 else minute
        self._last_minute = minute
        out: list[Notification] = []
        for m in range(first, minute + 1):
            at = m * 60
            for evaluation in (
                self.detector.evaluate(at),
                self.immediate.evaluate(at),
                self.storms.evaluate(at),
            ):
                out.extend(self.book.apply(evaluation))
        return out

    def state(self) -> bytes:
        return self.book.encode_state()
