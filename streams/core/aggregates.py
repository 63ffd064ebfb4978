"""Event-time minute buckets: per template, per sending number, per recipient country.

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

from streams.core.facts import Applied, Position, already_applied, mark_applied
from streams.core.messages import BucketDelta

DIMENSIONS = {"t": "template", "s": "sender", "c": "country"}


class BucketId(NamedTuple):
    """One minute of one dimension value on one partition."""

    dim: str
    key: str
    partition: int
    minute: int

    def encode(self) -> str:
        return f"b\x1f{self.dim}\x1f{self.partition}\x1f{self.minute}\x1f{self.key}"


class Bucket(msgspec.Struct, array_like=True, gc=False):
    """Outcome counts of one minute (``failed.<class>`` outcomes carry the error class)."""

    counts: dict[str, int] = {}
    applied: Applied = {}


def apply_deltas(
    partition: int,
    position: Position,
    deltas: Iterable[BucketDelta],
    get: Callable[[BucketId], Bucket | None],
    put: Callable[[BucketId, Bucket], None],
) -> list[BucketId]:
    """Add ``deltas`` (all from the input at ``position``) to their buckets, once.

    Returns the ids of buckets that did not exist before (for the expiry manifest).
    """
    grouped: dict[BucketId, list[BucketDelta]] = defaultdict(list)
    for d in deltas:
        grouped[BucketId(d.dim, d.key, partition, d.minute)].append(d)
    created = []
    for bucket_id, items in grouped.items():
        bucket = get(bucket_id)
        if bucket is None:
            bucket = Bucket(counts={}, applied={})
            created.append(bucket_id)
        elif already_applied(bucket.applied, position):
            continue
        for d in items:
            bucket.counts[d.outcome] = bucket.counts.get(d.outcome, 0) + d.delta
        mark_applied(bucket.applied, position)
        put(bucket_id, bucket)
    return created


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


LIMIT_CLASSES = frozenset({"per_user_marketing_limit", "us_marketing_pause"})


def summarize(counts: Mapping[str, int]) -> OutcomeSummary:
    """Funnel and ratios (failures / attempts) of a window's summed counts."""
    by_class = {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("failed.") and v}
    failed = sum(by_class.values())
    limit = sum(v for k, v in by_class.items() if k in LIMIT_CLASSES)
    attempted = counts.get("attempted", 0)
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
    )
