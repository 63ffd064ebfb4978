"""CPU seconds spent in each stage's own code, for the per-stage accounting of the benchmark.

The worker runs its stages as tasks of one event loop, so the process's CPU time does not say
which stage spent it. :class:`StageCpu` adds up the thread CPU time (``time.thread_time``) of
each stage's ``handle`` calls and of its ``flush`` coroutine's steps: only while the flush's
own code runs (between two of its awaits), never while it waits and the loop runs other tasks.
A flush's own calls into the Kafka producer (encoding its records into batches) count for the
stage; the producer's sender task, the consumers, Faust's delivery of events to the agents,
the web server and the event loop do not: they are the process's CPU minus the stages'
("the rest" in the benchmark).

Each timed call costs two clock reads (about 1 us, ~1 % of an event's CPU): stage 1 times a
poll's records at once, stages 2 and 3 and alerting time every event Faust hands them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, ParamSpec, TypeVar

#: the stages accounted for, in pipeline order
STAGES = ("ingest", "messages", "recipients", "alerting")

P = ParamSpec("P")
R = TypeVar("R")


class StageCpu:
    """Thread CPU seconds per stage (:data:`STAGES`), added up since the worker started."""

    def __init__(self, clock: Callable[[], float] = time.thread_time) -> None:
        self.clock = clock
        self.seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds

    def timed(self, stage: str, fn: Callable[P, R]) -> Callable[P, R]:
        """``fn`` (synchronous), its CPU time added to ``stage``."""
        clock, seconds = self.clock, self.seconds

        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[stage] += clock() - t0

        return call

    def timed_async(
        self, stage: str, fn: Callable[P, Awaitable[R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        """``fn`` (a coroutine function), the CPU time of its own steps added to ``stage``."""

        async def call(*args: P.args, **kwargs: P.kwargs) -> R:
            result: R = await _Steps(self, stage, fn(*args, **kwargs))
            return result

        return call

    def snapshot(self) -> dict[str, float]:
        """CPU seconds per stage, rounded to the millisecond."""
        return {stage: round(s, 3) for stage, s in self.seconds.items()}


class _Steps:
    """An awaitable that runs ``inner`` step by step and times each step (each ``send`` or
    ``throw`` until the inner awaitable yields to the event loop or returns)."""

    def __init__(self, cpu: StageCpu, stage: str, inner: Awaitable[Any]) -> None:
        self.cpu, self.stage, self.inner = cpu, stage, inner

    def __await__(self) -> Generator[Any, Any, Any]:
        steps = self.inner.__await__()
        clock, seconds, stage = self.cpu.clock, self.cpu.seconds, self.stage
        value: Any = None
        error: BaseException | None = None
        while True:
            t0 = clock()
            try:
                yielded = steps.throw(error) if error is not None else steps.send(value)
            except StopIteration as done:
                return done.value
            finally:
                seconds[stage] += clock() - t0
            try:
                value, error = (yield yielded), None
            except BaseException as exc:  # cancelled while waiting: the inner awaitable decides
                value, error = None, exc
