"""A pause between an aiokafka client's metadata updates after one failed.

While a partition's leader is unknown, aiokafka's producer asks its client for a metadata update
and waits for it, again at once when it fails: with the broker down, every update fails as soon
as the connection is refused, and the loop used a whole core (0.97-1.01 cores measured during a
30 s outage) and logged 11,000 errors a second. Kafka's own clients wait ``retry.backoff.ms``
after a failed update (KAFKA-4024); this does the same for one aiokafka client. A successful
update ends the pause; an update asked for within it runs when it ends, so callers that await
it (the producer's sender) wait instead of spinning.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

#: after a failed metadata update, the next one waits this long
BACKOFF_S = 0.25


def pace_metadata_updates(
    client: Any,
    backoff_s: float = BACKOFF_S,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Wrap ``client.force_metadata_update`` (an ``AIOKafkaClient``'s: it returns a future of
    whether the update succeeded) so an update asked for less than ``backoff_s`` after one
    failed starts when that time is up. Wrapping a client twice changes nothing."""
    if getattr(client.force_metadata_update, "_paced", False):
        return
    force: Callable[[], asyncio.Future[bool]] = client.force_metadata_update
    failed_at: float | None = None

    def record(update: asyncio.Future[bool]) -> None:
        nonlocal failed_at
        if update.cancelled() or update.exception() is not None:
            return
        failed_at = clock() if update.result() is False else None

    async def later(wait_s: float) -> bool:
        await sleep(wait_s)
        return await force()

    def paced() -> asyncio.Future[bool]:
        wait_s = 0.0 if failed_at is None else failed_at + backoff_s - clock()
        update = force() if wait_s <= 0 else asyncio.ensure_future(later(wait_s))
        update.add_done_callback(record)
        return update

    paced._paced = True  # type: ignore[attr-defined]
    client.force_metadata_update = paced
