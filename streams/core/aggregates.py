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
from streams.core.keys import BUCKET_PREFIX, SEP
from streams.core.ledger import BucketDelta


class Bucket(msgspec.Struct, array_like=True, gc=False):
    """Outcome counts of one minute (``failed.<class>`` outcomes carry the error class)."""

    counts: dict[str, int] = {}
    applied: Applied = {}


#: a cell not seen yet by :meth:`BucketWriter.add`
_UNDECIDED = Bucket()

_bucket_encoder = msgspec.msgpack.Encoder()
_bucket_decoder = msgspec.msgpack.Decoder(Bucket)

#: a bucket's (dim, key, minute)
Cell = tuple[str, str, int]


class BucketWriter:
    """Adds deltas to the buckets of one partition, once per input position.

    Buckets touched in the current batch stay decoded in a cache keyed by (dim, key, minute):
    ``get`` (a bucket's stored bytes, by key) is called once per bucket and batch, and the
    cached bucket is then changed in place, so a delta costs a dict lookup. :meth:`reset`
    hands back every bucket the batch touched, encoded, for the caller to write, and the
    (dim, hour) of each (for readers that cache hours).

    The reference implementation: ``streams_native.BucketWriter`` (native/src/lib.rs) does the
    same, call for call and byte for byte (see :mod:`streams.native`).
    """

    def __init__(
        self,
        partition: int,
        get: Callable[[bytes], bytes | None],
        prefix: str = BUCKET_PREFIX,
        sep: str = SEP,
    ) -> None:
        self.partition = partition
        self._get = get
        self._prefix = f"{prefix}{{}}{sep}{partition}{sep}{{}}{sep}{{}}"
        self._cache: dict[Cell, Bucket] = {}
        self._keys: dict[Cell, bytes] = {}
        self._hours: set[tuple[str, int]] = set()

    def add(self, position: Position, deltas: Iterable[BucketDelta]) -> list[Cell]:
        """Add ``deltas`` (all from the input at ``position``); returns the (dim, key, minute)
        of buckets that did not exist before (for the expiry index)."""
        cache = self._cache
        created: list[Cell] = []
        decided: dict[Cell, Bucket | None] = {}  # per cell: None = a replay
        source, at = position[0], (position[1], position[2])
        for d in deltas:
            cell = (d.dim, d.key, d.minute)
            bucket = decided.get(cell, _UNDECIDED)
            if bucket is _UNDECIDED:
                bucket = cache.get(cell)
                if bucket is None:
                    key = self._prefix.format(d.dim, d.minute, d.key).encode()
                    raw = self._get(key)
                    if raw is None:
                        bucket = Bucket(counts={}, applied={})
                        created.append(cell)
                    else:
                        bucket = _bucket_decoder.decode(raw)
                    cache[cell] = bucket
                    self._keys[cell] = key
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

    def reset(self) -> tuple[list[tuple[bytes, bytes]], set[tuple[str, int]]]:
        """Every bucket the batch touched as (key, encoded value), in the order first touched,
        and the (dim, hour) of each; the writer starts empty again."""
        keys = self._keys
        writes = [(keys[cell], _bucket_encoder.encode(b)) for cell, b in self._cache.items()]
        self._cache, self._keys = {}, {}
        hours, self._hours = self._hours, set()
        return writes, hours


#: a signal cell: (source, input offset if replayed else -1, dim, key, minute, visible)
SignalCell = tuple[int, int, str, str, int, int]


class SignalCells:
    """The bucket deltas a batch signals to the alerting stage, per :data:`SignalCell`, and
    the positive deltas of new inputs per (dim, key, outcome) for the metrics.

    A replayed input's deltas stay apart per input offset (a replay can span several earlier
    flushes whose signals did and did not come through) and are not counted for the metrics
    again. The reference implementation of ``streams_native.SignalCells``.
    """

    def __init__(self) -> None:
        self._cells: dict[SignalCell, tuple[dict[str, int], list[int]]] = {}
        self._counted: dict[tuple[str, str, str], int] = {}

    def __len__(self) -> int:
        return len(self._cells)

    def add(
        self,
        source: int,
        offset: int,
        replayed: bool,
        deltas: Iterable[BucketDelta],
        shifts: Iterable[BucketDelta],
    ) -> None:
        cells, counted = self._cells, self._counted
        apart = offset if replayed else -1
        for d in deltas:
            dim, key, outcome, n = d.dim, d.key, d.outcome, d.delta
            if n > 0 and not replayed:
                counted[(dim, key, outcome)] = counted.get((dim, key, outcome), 0) + n
            cell = (source, apart, dim, key, d.minute, d.visible)
            entry = cells.get(cell)
            if entry is None:
                entry = cells[cell] = ({}, [offset])
            counts = entry[0]
            counts[outcome] = counts.get(outcome, 0) + n
            entry[1][0] = offset
        for d in shifts:
            cell = (source, apart, d.dim, d.key, d.minute, d.visible)
            entry = cells.get(cell)
            if entry is None:
                entry = cells[cell] = ({}, [offset])
            counts = entry[0]
            counts[d.outcome] = counts.get(d.outcome, 0) + d.delta
            entry[1][0] = offset

    def drain(self) -> list[tuple[int, int, str, str, int, int, dict[str, int], int]]:
        """Every cell as (source, apart, dim, key, minute, visible, counts, upto), in the order
        first added; the cells start empty again."""
        out = [(*cell, counts, upto[0]) for cell, (counts, upto) in self._cells.items()]
        self._cells = {}
        return out

    def take_counted(self) -> list[tuple[tuple[str, str, str], int]]:
        """The counts for the metrics, in the order first added; they start empty again."""
        taken, self._counted = self._counted, {}
        return list(taken.items())

    def discard(self, sources: list[int]) -> None:
        """Forget the cells of these sources (their partition was revoked)."""
        for cell in [c for c in self._cells if c[0] in sources]:
            del self._cells[cell]


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
