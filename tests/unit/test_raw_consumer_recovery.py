"""Stage 1's raw consumer keeps reading through what a rebalance or a failure throws at it:
a partition taken while its position is asked for, a position that takes long to reset, an
exception out of the consumer (started again, logged, counted)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, NamedTuple

import pytest
from aiokafka.errors import IllegalStateError, KafkaConnectionError

from streams.raw_consumer import CaughtUp, restarting


class TP(NamedTuple):
    topic: str
    partition: int


class Reader:
    """The part of a RawReader that CaughtUp uses."""

    def __init__(self) -> None:
        self.told: dict[int, bool] = {}

    def caught_up(self, partition: int, caught_up: bool) -> None:
        self.told[partition] = caught_up


class Consumer:
    """aiokafka's answers, per partition: a position, an exception, or a wait that lasts until
    the test ends it (a position being reset)."""

    def __init__(self, ends: dict[int, int | None], positions: dict[int, Any]) -> None:
        self.ends, self.positions = ends, positions
        self.asked: list[int] = []
        self.reset = asyncio.Event()

    def assignment(self) -> Iterable[TP]:
        return [TP("raw", p) for p in self.ends]

    def highwater(self, tp: TP) -> int | None:
        return self.ends[tp.partition]

    async def position(self, tp: TP) -> int:
        self.asked.append(tp.partition)
        answer = self.positions[tp.partition]
        if isinstance(answer, BaseException):
            raise answer
        if answer is None:
            await self.reset.wait()
            return 3
        assert isinstance(answer, int)
        return answer


async def test_positions_refused_or_not_known_yet_never_hold_the_poll() -> None:
    consumer = Consumer(
        ends={0: 10, 1: 10, 2: 10, 3: None, 4: 7, 5: 10},
        positions={
            0: 10,
            1: IllegalStateError("Partition 1 is not assigned"),  # a rebalance took it
            2: None,  # its position is being reset: aiokafka waits as long as that takes
            3: 0,  # no highwater known yet: not asked
            4: 5,
            5: KafkaConnectionError("coordinator gone"),
        },
    )
    reader = Reader()
    caught_up = CaughtUp(consumer, reader)  # type: ignore[arg-type]
    await caught_up.poll()  # returns although partition 2's position does not
    assert reader.told == {0: True, 4: False}
    assert sorted(consumer.asked) == [0, 1, 2, 4, 5]

    consumer.ends[4] = 5
    await caught_up.poll()  # partition 2 still asked, not asked twice; the others again
    assert reader.told == {0: True, 4: True}
    assert sorted(consumer.asked) == [0, 0, 1, 1, 2, 4, 4, 5, 5]

    consumer.reset.set()  # its reset is over: told at the next poll
    await asyncio.sleep(0)
    await caught_up.poll()
    assert reader.told == {0: True, 2: False, 4: True}

    consumer.reset.clear()
    before = asyncio.all_tasks()
    await caught_up.poll()  # asks partition 2 again, which waits again
    (waiting,) = asyncio.all_tasks() - before
    caught_up.close()  # the consumer stops: nothing left waiting
    await asyncio.sleep(0)
    assert waiting.cancelled()


async def test_a_failing_consumer_is_started_again_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []
    pauses: list[float] = []
    restarts: list[int] = []

    async def consume() -> None:
        runs.append(len(runs))
        if len(runs) <= 2:
            raise IllegalStateError("Partition TopicPartition(topic='raw', partition=3) ...")

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    with caplog.at_level(logging.ERROR, logger="streams.raw_consumer"):
        await restarting(
            "stage 1's raw consumer",
            consume,
            on_restart=lambda: restarts.append(1),
            pause_s=2.5,
            sleep=sleep,
        )
    assert runs == [0, 1, 2]  # the third run returned: not started again
    assert pauses == [2.5, 2.5] and len(restarts) == 2
    failures = [r for r in caplog.records if "failed; starting it again" in r.getMessage()]
    assert len(failures) == 2 and all(r.exc_info for r in failures)  # with the traceback


async def test_cancelling_stops_the_consumer_and_is_not_a_failure() -> None:
    started = asyncio.Event()
    restarts: list[int] = []

    async def consume() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(
        restarting("raw", consume, on_restart=lambda: restarts.append(1), pause_s=0)
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert restarts == []
