"""The per-stage CPU accounting (streams.stage_cpu): a stage is charged for its own calls and
its flush's own steps, never for what the event loop runs while the flush waits."""

from __future__ import annotations

import asyncio

import pytest

from streams.stage_cpu import STAGES, StageCpu


class FakeClock:
    """A CPU clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def spend(self, seconds: float) -> None:
        self.now += seconds


def test_every_stage_starts_at_zero() -> None:
    assert StageCpu().snapshot() == dict.fromkeys(STAGES, 0.0)


def test_timed_adds_each_call_and_passes_arguments_and_results() -> None:
    clock = FakeClock()
    cpu = StageCpu(clock)

    def handle(a: int, b: int = 0) -> int:
        clock.spend(0.25)
        return a + b

    timed = cpu.timed("messages", handle)
    assert timed(1, b=2) == 3
    assert timed(4) == 4
    assert cpu.seconds["messages"] == pytest.approx(0.5)
    assert cpu.seconds["recipients"] == 0.0


def test_timed_charges_a_call_that_raises() -> None:
    clock = FakeClock()
    cpu = StageCpu(clock)

    def bad() -> None:
        clock.spend(0.125)
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        cpu.timed("ingest", bad)()
    assert cpu.seconds["ingest"] == pytest.approx(0.125)


def test_a_flush_is_charged_for_its_own_steps_not_for_other_tasks_while_it_waits() -> None:
    clock = FakeClock()
    cpu = StageCpu(clock)

    async def flush() -> str:
        clock.spend(1.0)  # state writes before the first await
        await asyncio.sleep(0)
        clock.spend(0.5)  # after the send was acknowledged
        return "sent"

    async def other_task() -> None:
        clock.spend(10.0)  # runs while the flush waits: not the stage's

    async def main() -> str:
        other = asyncio.ensure_future(other_task())
        result = await cpu.timed_async("recipients", flush)()
        await other
        return result

    assert asyncio.run(main()) == "sent"
    assert cpu.seconds["recipients"] == pytest.approx(1.5)
    assert clock.now == pytest.approx(11.5)


def test_a_flush_that_waits_on_a_future_gets_its_result_and_its_errors() -> None:
    clock = FakeClock()
    cpu = StageCpu(clock)

    async def flush(fut: asyncio.Future[int]) -> int:
        clock.spend(0.25)
        try:
            return await fut
        finally:
            clock.spend(0.25)

    async def main(fail: bool) -> int:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        if fail:
            loop.call_soon(fut.set_exception, RuntimeError("broker down"))
        else:
            loop.call_soon(fut.set_result, 7)
        return await cpu.timed_async("alerting", lambda: flush(fut))()

    assert asyncio.run(main(fail=False)) == 7
    with pytest.raises(RuntimeError, match="broker down"):
        asyncio.run(main(fail=True))
    assert cpu.seconds["alerting"] == pytest.approx(1.0)


def test_a_cancelled_flush_is_cancelled_and_charged() -> None:
    clock = FakeClock()
    cpu = StageCpu(clock)
    cleaned = []

    async def flush() -> None:
        clock.spend(0.5)
        try:
            await asyncio.sleep(3600)
        finally:
            clock.spend(0.25)
            cleaned.append(True)

    async def main() -> None:
        task = asyncio.ensure_future(cpu.timed_async("messages", flush)())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert cleaned == [True]
    assert cpu.seconds["messages"] == pytest.approx(0.75)


def test_the_real_clock_counts_cpu_not_waiting() -> None:
    cpu = StageCpu()

    async def flush() -> None:
        await asyncio.sleep(0.05)

    asyncio.run(cpu.timed_async("ingest", flush)())
    assert 0.0 <= cpu.seconds["ingest"] < 0.04
