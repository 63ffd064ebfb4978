"""Event-time minute buckets: per template, sending number, recipient country and campaign.

Buckets are partition-local: stage 2 owns the messages of its partitions, and each partition
keeps its own buckets (``BucketId.partition``), so a bucket is only ever written by the one
worker that owns that partition, and a read sums the partitions. Each bucket remembers the last
input it absorbed from each source, so a replayed input is applied once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

import msgspec

from streams.core.facts import Applied, Position
from streams.core.keys import BucketId
from streams.core.ledger import BucketDelta


class Bucket(msgspec.Struct, array_like=True, gc=False):
    """Outcome counts of one minute (``failed.<class>`` outcomes carry the error class)."""

    counts: dict[str, int] = {}
    applied: Applied = {}


#: a cell not seen yet by :meth:`BucketWriter.add`
_UNDECIDED = Bucket()


class BucketWriter:
    """Adds deltas to the buckets of one partition, once per input position.

    Buckets touched in the current batch stay decoded in a cache keyed by (dim, key, minute):
    ``get`` and ``put`` (by encoded key) are called once per bucket and batch, and the cached
    bucket is then changed in place (the caller's store encodes it when the batch is flushed),
    so a delta costs a dict lookup. :meth:`reset` drops the cache when the batch is flushed
    and returns the (dim, hour) of every bucket the batch changed (for readers that cache hours).
    """

    def __init__(
        self,
        partition: int,
        get: Callable[[bytes], Bucket | None],
        put: Callable[[bytes, Bucket], None],
    ) -> None:
        self.partition = partition
        self._get = get
        self._put = put
        self._cache: dict[tuple[str, str, int], Bucket] = {}
        self._hours: set[tuple[str, int]] = set()

    def add(self, position: Position, deltas: Iterable[BucketDelta]) -> list[BucketId]:
        """Add ``deltas`` (all from the input at ``position``); returns the ids of buckets that
        did not exist before (for the expiry index)."""
        cache = self._cache
        created: list[BucketId] = []
        decided: dict[tuple[str, str, int], Bucket | None] = {}  # per cell: None = a replay
        source, at = position[0], (position[1], position[2])
        for d in deltas:
            cell = (d.dim, d.key, d.minute)
            bucket = decided.get(cell, _UNDECIDED)
            if bucket is _UNDECIDED:
                bucket = cache.get(cell)
                if bucket is None:
                    bucket_id = BucketId(d.dim, d.key, self.partition, d.minute)
                    key = bucket_id.encode().encode()
                    bucket = self._get(key)
                    if bucket is None:
                        bucket = Bucket(counts={}, applied={})
                        created.append(bucket_id)
                    self._put(key, bucket)
                    cache[cell] = bucket
                    self._hours.add((d.dim, d.minute // 60))
                last = bucket.applied.get(source)
                if last is not None and at <= last:
                    bucket = None  # this input was absorbed before (a replay)
                else:
                    bucket.applied[source] = at
                decided[cell] = bucket
            if bucket is not None:
                counts = bucket.counts
                n = counts.get(d.outcome, 0) + d.delta
                if n:
                    counts[d.outcome] = n
                else:  # moved away (a shift or a move off "unknown"): as if never counted
                    counts.pop(d.outcome, None)
        return created

    def reset(self) -> set[tuple[str, int]]:
        self._cache.clear()
        hours, self._hours = self._hours, set()
        return hours


def sum_counts(buckets: Iterable[Bucket | None]) -> dict[str, int]:
    """Sum the counts of ``buckets`` (missing ones count as empty)."""
    total: dict[str, int] = defaultdict(int)
    for b in buckets:
        if b is not None:
            for outcome, n in b.counts.items():
                total[outcome] += n
    return {k: v for k, v in sorted(total.items()) if v}


class OutcomeSummary(NamedTuple):
    attempted: int
    sent: int
    delivered: int
    read: int
    failed: int
    failed_by_class: dict[str, int]
    limit_errors: int
    failure_ratio: float
    limit_error_ratio: float
    #: account-level errors (``value.errors``: no message, so not in the funnel or the ratios),
    #: counted for sending numbers only
    account_errors: int
    account_errors_by_class: dict[str, int]
    account_errors_by_code: dict[str, int]


LIMIT_CLASSES = frozenset({"per_user_marketing_limit", "us_marketing_pause"})


def summarize(counts: Mapping[str, int]) -> OutcomeSummary:
    """Funnel and ratios (failures / attempts) of a window's summed counts."""
    by_class = {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("failed.") and v}
    failed = sum(by_class.values())
    limit = sum(v for k, v in by_class.items() if k in LIMIT_CLASSES)
    attempted = counts.get("attempted", 0)
    account = {
        k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("account_error.") and v
    }
    codes = {
        k.split(".", 1)[1]: v
        for k, v in counts.items()
        if k.startswith("account_error_code.") and v
    }
    return OutcomeSummary(
        attempted=attempted,
        sent=counts.get("sent", 0),
        delivered=counts.get("delivered", 0),
        read=counts.get("read", 0),
        failed=failed,
        failed_by_class=dict(sorted(by_class.items())),
        limit_errors=limit,
        failure_ratio=failed / attempted if attempted else 0.0,
        limit_error_ratio=limit / attempted if attempted else 0.0,
        account_errors=sum(account.values()),
        account_errors_by_class=dict(sorted(account.items())),
        account_errors_by_code=dict(sorted(codes.items())),
    )
