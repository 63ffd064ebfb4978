"""After a failed metadata update, an aiokafka client's next one waits the backoff (a producer
with an unknown leader otherwise asks again at once, in a loop, while the broker is down)."""

from __future__ import annotations

import asyncio

from streams.metadata_pacing import pace_metadata_updates


class Client:
    """``force_metadata_update`` as AIOKafkaClient's: a future of whether it succeeded, answered
    by its metadata task at the loop's next turn from ``answers`` (True: the broker answered)."""

    def __init__(self, answers: list[bool]) -> None:
        self.answers = answers
        self.asked_at: list[float] = []
        self.clock = 0.0

    def force_metadata_update(self) -> asyncio.Future[bool]:
        self.asked_at.append(self.clock)
        loop = asyncio.get_running_loop()
        update: asyncio.Future[bool] = loop.create_future()
        loop.call_soon(update.set_result, self.answers.pop(0))  # answered in the background
        return update


async def test_an_update_after_a_failure_waits_the_backoff_and_a_success_ends_it() -> None:
    client = Client([False, False, True, True, False])
    slept: list[float] = []

    async def sleep(seconds: float) -> None:  # the fake clock moves; nothing waits
        slept.append(seconds)
        client.clock += seconds

    pace_metadata_updates(client, 0.25, clock=lambda: client.clock, sleep=sleep)
    pace_metadata_updates(client, 0.25, clock=lambda: client.clock, sleep=sleep)  # no-op

    assert await client.force_metadata_update() is False  # the broker is down
    client.clock += 0.05
    assert await client.force_metadata_update() is False  # waited the rest of the backoff
    assert slept == [0.2] and client.asked_at == [0.0, 0.25]
    client.clock += 1.0  # longer than the backoff: at once
    assert await client.force_metadata_update() is True  # the broker is back
    assert await client.force_metadata_update() is True  # no pause after a success
    assert await client.force_metadata_update() is False
    assert slept == [0.2] and client.asked_at == [0.0, 0.25, 1.25, 1.25, 1.25]


async def test_a_loop_asking_again_at_once_asks_once_per_backoff() -> None:
    """The producer's sender while the broker is down: ask, await, ask again."""
    client = Client([False] * 1_000)

    async def sleep(seconds: float) -> None:
        client.clock += seconds

    pace_metadata_updates(client, 0.25, clock=lambda: client.clock, sleep=sleep)
    while client.clock < 10.0:
        await client.force_metadata_update()
    assert len(client.asked_at) == 41  # at 0, 0.25, ..., 10.0: not thousands
