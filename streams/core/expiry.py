"""Event-time expiry of keyed state, without scanning the store.

Every flush appends the keys it touched to a chunk record for the day of their last event
(``ExpiryIndex.touch``). When a partition's watermark passes a day's end plus the retention,
``sweep`` walks that day's chunks (a bounded number of keys per call, so the stream is never
blocked), deletes keys whose state is idle, and deletes the chunks. A key touched again later
sits in a later day's chunk too, so it survives the early sweep.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import msgspec

from streams.core.keys import chunk_key, manifest_key

DAY = 86_400


class SweepCursor(msgspec.Struct, array_like=True, gc=False):
    """Per-partition progress: days below ``next_day`` are swept; ``chunk`` within it."""

    next_day: int = -1
    chunk: int = 0


class ExpiryIndex:
    """Index of the keys of one partition by the day of their last event (one per table).

    Storage goes through the callbacks: ``get(key) -> object | None``, ``put(key, value)`` and
    ``delete(key)`` on the same table as the indexed state (so it is restored with it).
    """

    def __init__(self, prefix: str, partition: int, day: int = DAY) -> None:
        self.prefix = prefix
        self.partition = partition
        self.day = day
        self._pending: dict[int, set[str]] = defaultdict(set)

    def touch(self, key: str, last_ts: int, cursor: SweepCursor) -> None:
        if cursor.next_day < 0:
            cursor.next_day = last_ts // self.day
        day = max(last_ts // self.day, cursor.next_day)
        self._pending[day].add(key)

    def flush(
        self, get: Callable[[str], object | None], put: Callable[[str, object], None]
    ) -> None:
        """Write the keys touched since the last flush as one new chunk per day."""
        for day, keys in self._pending.items():
            mkey = manifest_key(self.prefix, self.partition, day)
            count = get(mkey)
            n = int(count) if isinstance(count, int) else 0
            put(chunk_key(self.prefix, self.partition, day, n), sorted(keys))
            put(mkey, n + 1)
        self._pending.clear()

    def sweep(
        self,
        cursor: SweepCursor,
        watermark: int,
        retention: int,
        budget: int,
        get: Callable[[str], object | None],
        delete: Callable[[str], None],
        expire_key: Callable[[str], bool],
    ) -> int:
        """Visit at most ``budget`` keys of fully expired days; returns how many were deleted.

        ``expire_key(key)`` deletes the key's state if it is idle and says whether it did.
        """
        horizon_day = (watermark - retention) // self.day  # days < horizon_day are over
        if cursor.next_day < 0:
            return 0  # nothing indexed yet
        deleted = 0
        visited = 0
        while cursor.next_day < horizon_day and visited < budget:
            day = cursor.next_day
            mkey = manifest_key(self.prefix, self.partition, day)
            count = get(mkey)
            n = int(count) if isinstance(count, int) else 0
            visited += 1  # an empty day/minute costs a lookup too
            if cursor.chunk >= n:
                if n:
                    delete(mkey)
                cursor.next_day += 1
                cursor.chunk = 0
                # keys touched into this day since the last flush would be written to a day
                # the cursor has passed (never swept again): they go to the next day instead
                late = self._pending.pop(day, None)
                if late:
                    self._pending[cursor.next_day] |= late
                continue
            ckey = chunk_key(self.prefix, self.partition, day, cursor.chunk)
            keys = get(ckey)
            for key in keys if isinstance(keys, list) else ():
                visited += 1
                if expire_key(str(key)):
                    deleted += 1
            delete(ckey)
            cursor.chunk += 1
        return deleted
