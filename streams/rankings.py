"""Rankings: every template, sending number, country or campaign with traffic in a window, its
counts summed over the minute buckets of the local partitions, sorted and cut to a limit.

The per-name endpoints read a name's buckets by key; a ranking has to find the names first. A
bucket key sorts by dimension, partition, minute and then name (``BucketId.encode``), so the
buckets of one dimension and partition in a span of minutes are one range of keys: a window is
read with range scans of the store, never a scan of the whole table.

Whole hours inside a window are summed once over the local partitions and cached per
(dimension, hour). The messages stage says which hours a flush changed
(:meth:`HourCache.changed`, called after the stage's writes and before the next request can run:
no ``await`` in between), so a late status or a late send-log record that changes an old minute
drops that hour's entry. An hour is only kept when every partition it was read from has been
flushed since it was assigned (before that its store may still be restoring), and only for the
same set of partitions; a revoked partition's entries are dropped. The minutes at the
window's two edges are always read from the store. A 24 h ranking thus reads at most 118
minutes of buckets plus the hours that changed since the last request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from streams.core.aggregates import Bucket, summarize
from streams.core.keys import Dimension, bucket_name, bucket_prefix
from streams.state import decode

WINDOWS = {"5m": 5, "1h": 60, "24h": 1440}
#: path segment -> bucket dimension
DIMS = {
    "templates": Dimension.TEMPLATE,
    "senders": Dimension.SENDER,
    "countries": Dimension.COUNTRY,
    "campaigns": Dimension.CAMPAIGN,
}
#: sort keys: the summary fields, largest first, and ``name`` (alphabetical)
SORTS = (
    "limit_errors",
    "limit_error_ratio",
    "failure_ratio",
    "failed",
    "attempted",
    "sent",
    "delivered",
    "read",
    "name",
)
DEFAULT_LIMIT, MAX_LIMIT = 20, 1000

Counts = dict[str, int]
Scan = Callable[[int, bytes, bytes], Iterable[tuple[bytes, bytes]]]


class RankingQuery(NamedTuple):
    """A validated ranking request (``at`` None: the newest event time seen)."""

    window: str
    at: int | None
    sort: str
    limit: int


class BadQuery(ValueError):
    """A ranking parameter that cannot be used (the message says which and why)."""


def parse_query(params: Mapping[str, str]) -> RankingQuery:
    """``window``, ``at``, ``sort`` and ``limit`` from a query string, checked."""
    window = params.get("window", "1h")
    if window not in WINDOWS:
        raise BadQuery(f"window must be one of {', '.join(WINDOWS)} (got {window!r})")
    at: int | None = None
    if "at" in params:
        raw = params["at"]
        if not raw.isdigit():
            raise BadQuery(f"at must be unix seconds, a non-negative integer (got {raw!r})")
        at = int(raw)
    sort = params.get("sort", "limit_errors")
    if sort not in SORTS:
        raise BadQuery(f"sort must be one of {', '.join(SORTS)} (got {sort!r})")
    raw_limit = params.get("limit", str(DEFAULT_LIMIT))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
        raise BadQuery(f"limit must be an integer from 1 to {MAX_LIMIT} (got {raw_limit!r})")
    return RankingQuery(window, at, sort, int(raw_limit))


def window_minutes(window: str, at: int) -> tuple[int, int]:
    """The window's minutes ``[first, end)`` ending with the minute of ``at`` (as the per-name
    endpoints count them)."""
    end = at // 60 + 1
    return end - WINDOWS[window], end


def _spans(first: int, end: int) -> Iterator[tuple[int, int]]:
    """``[first, end)`` cut where the minute's number of digits changes (keys sort as text)."""
    while first < end:
        cut = min(end, 10 ** len(str(first)))
        yield first, cut
        first = cut


def scan_minutes(
    scan: Scan, partition: int, dim: str, first: int, end: int, into: dict[str, Counts]
) -> None:
    """Add the counts of the ``dim`` buckets of minutes ``[first, end)`` to ``into`` (by name)."""
    for lo, hi in _spans(first, end):
        start, stop = bucket_prefix(dim, partition, lo), bucket_prefix(dim, partition, hi)
        for key, raw in scan(partition, start, stop):
            name = bucket_name(key)
            total = into.get(name)
            if total is None:
                total = into[name] = {}
            for outcome, n in decode(raw, Bucket).counts.items():
                total[outcome] = total.get(outcome, 0) + n


def _add(into: dict[str, Counts], more: Mapping[str, Counts]) -> None:
    for name, counts in more.items():
        total = into.get(name)
        if total is None:
            total = into[name] = {}
        for outcome, n in counts.items():
            total[outcome] = total.get(outcome, 0) + n


class HourCache:
    """Per (dimension, hour): the hour's counts by name, summed over the local partitions it
    was read from (see the module docstring)."""

    def __init__(self, keep_hours: int = 26) -> None:
        self.keep_hours = keep_hours
        self._hours: dict[tuple[str, int], tuple[frozenset[int], dict[str, Counts]]] = {}
        self._live: set[int] = set()  # partitions flushed since they were assigned

    def changed(self, partition: int, hours: Iterable[tuple[str, int]] | None) -> None:
        """A flush of ``partition`` changed the buckets of ``hours`` ((dim, hour) pairs);
        ``None``: the partition was revoked (forget what was read from it)."""
        if hours is None:
            self._live.discard(partition)
            for key in [k for k, (parts, _) in self._hours.items() if partition in parts]:
                del self._hours[key]
            return
        self._live.add(partition)
        for key in hours:
            self._hours.pop(key, None)

    def hour(
        self, scan: Scan, partitions: frozenset[int], dim: str, hour: int
    ) -> dict[str, Counts]:
        found = self._hours.get((dim, hour))
        if found is not None and found[0] == partitions:
            return found[1]
        counts: dict[str, Counts] = {}
        for p in sorted(partitions):
            scan_minutes(scan, p, dim, hour * 60, hour * 60 + 60, counts)
        if partitions <= self._live:
            self._hours[(dim, hour)] = (partitions, counts)
            for old in [k for k in self._hours if k[1] < hour - self.keep_hours]:
                del self._hours[old]
        return counts

    def __len__(self) -> int:
        return len(self._hours)


def local_counts(
    scan: Scan,
    partitions: Iterable[int],
    dim: str,
    first: int,
    end: int,
    cache: HourCache | None = None,
) -> dict[str, Counts]:
    """Counts by name of the ``dim`` buckets of minutes ``[first, end)`` on ``partitions``."""
    out: dict[str, Counts] = {}
    parts = frozenset(partitions)
    first_hour, end_hour = -(-first // 60), end // 60  # the whole hours inside the window
    if cache is None or first_hour >= end_hour:
        for p in sorted(parts):
            scan_minutes(scan, p, dim, first, end, out)
        return out
    for p in sorted(parts):
        scan_minutes(scan, p, dim, first, first_hour * 60, out)
        scan_minutes(scan, p, dim, end_hour * 60, end, out)
    for hour in range(first_hour, end_hour):
        _add(out, cache.hour(scan, parts, dim, hour))
    return out


def merge(into: dict[str, Counts], more: Mapping[str, Counts]) -> None:
    """Add another worker's counts by name to ``into``."""
    _add(into, more)


def rank(
    dim: str, counts: Mapping[str, Counts], query: RankingQuery
) -> tuple[int, list[dict[str, Any]]]:
    """(names with traffic, the first ``limit`` entries in ``query.sort`` order): each entry is
    the name (under the :class:`Dimension`'s noun), the window's summary fields (as the
    per-name endpoints give them) and its counts. Ties go by name."""
    field = Dimension(dim).noun
    entries = []
    for name, c in counts.items():
        nonzero = {k: v for k, v in sorted(c.items()) if v}
        if not nonzero:
            continue  # e.g. template "unknown" once every status moved off it
        entries.append({field: name, **summarize(nonzero)._asdict(), "counts": nonzero})
    if query.sort == "name":
        entries.sort(key=lambda e: e[field])
    else:
        entries.sort(key=lambda e: (-e[query.sort], e[field]))
    return len(entries), entries[: query.limit]
