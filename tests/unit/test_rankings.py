"""Rankings over the minute buckets of in-memory partitions: the counts of every name equal the
campaign's truth, sort orders and limits, windows, bad parameters, and the hour cache giving
the same answers as reading every minute (invalidated by late changes, dropped on revoke)."""

from __future__ import annotations

from collections import Counter

import pytest

from streams.core.aggregates import Bucket, sum_counts
from streams.core.keys import BucketId
from streams.rankings import (
    DIMS,
    BadQuery,
    HourCache,
    RankingQuery,
    local_counts,
    merge,
    parse_query,
    rank,
    window_minutes,
)
from streams.simulate import Campaign, CampaignSpec, generate
from streams.stages import partition_for
from streams.stages.ingest import IngestStage
from streams.stages.messages import MessageStage
from streams.state import DictKeyValue, decode

N = 4
START = 1_767_225_600  # 2026-01-01T00:00:00Z
END = START + 3 * 3600  # three hours of sends


@pytest.fixture(scope="module")
def campaign() -> Campaign:
    spec = CampaignSpec(
        messages=4_000,
        start=START,
        duration=END - START,
        failure_ratio=0.2,
        campaigns=("spring", "summer", "fall", ""),
    )
    return generate(spec, seed=8)


class Stages:
    """Stage 1 and stage 2 over in-memory partitions, flushed after every input batch."""

    def __init__(self) -> None:
        self.kv = DictKeyValue()
        self.ingest = IngestStage(N, N)
        self.messages = MessageStage(self.kv, N)
        self.cache = HourCache()
        self.messages.on_buckets_changed = self.cache.changed
        self.offsets: Counter[tuple[str, int]] = Counter()

    def bodies(self, bodies: list[bytes]) -> None:
        for i, body in enumerate(bodies):
            self.ingest.handle("raw", 0, self.offsets["raw", 0] + i, body)
        self.offsets["raw", 0] += len(bodies)
        statuses, _, _ = self.ingest.drain()
        for part, value in sorted(statuses.items()):
            self.messages.handle_batch(part, self.offsets["m", part], value)
            self.offsets["m", part] += 1
        self.flush()

    def send_log(self, records: list[tuple[bytes, bytes]]) -> None:
        for key, value in records:
            part = partition_for(key.decode(), N)
            self.messages.handle_send_log(part, self.offsets["s", part], value)
            self.offsets["s", part] += 1
        self.flush()

    def flush(self) -> None:
        for part in self.messages.state.partitions():
            self.messages.flush(part)

    def counts(self, dim: str, first: int, end: int, cached: bool = True) -> dict:
        cache = self.cache if cached else None
        return local_counts(self.kv.scan, range(N), dim, first, end, cache)

    def by_key(self, dim: str, name: str, first: int, end: int) -> dict[str, int]:
        """What the per-name endpoint reads: every minute's bucket by key."""
        buckets = []
        for p in range(N):
            for minute in range(first, end):
                raw = self.kv.get(p, BucketId(dim, name, p, minute).encode().encode())
                buckets.append(None if raw is None else decode(raw, Bucket))
        return sum_counts(buckets)


@pytest.fixture(scope="module")
def stages(campaign: Campaign) -> Stages:
    s = Stages()
    half = len(campaign.send_log) // 2
    s.send_log(campaign.send_log[:half])
    for i in range(0, len(campaign.payloads), 400):
        s.bodies(campaign.payloads[i : i + 400])
    s.send_log(campaign.send_log[half:])  # late: moves templates, adds campaigns
    return s


def clean(counts: dict) -> dict:
    return {
        name: {k: v for k, v in c.items() if v} for name, c in counts.items() if any(c.values())
    }


@pytest.mark.parametrize(
    ("dim", "truth"),
    [("t", "templates"), ("s", "senders"), ("c", "countries"), ("g", "campaigns")],
)
def test_a_window_spanning_the_campaign_counts_every_name_exactly(
    stages: Stages, campaign: Campaign, dim: str, truth: str
) -> None:
    first, end = window_minutes("24h", END + 600)
    expected = {k: dict(+v) for k, v in getattr(campaign.truth, truth).items()}
    assert clean(stages.counts(dim, first, end)) == expected
    assert clean(stages.counts(dim, first, end, cached=False)) == expected


def test_the_campaign_dimension_has_no_bucket_for_messages_without_one(
    stages: Stages, campaign: Campaign
) -> None:
    first, end = window_minutes("24h", END + 600)
    counts = clean(stages.counts("g", first, end))
    assert set(counts) == {"spring", "summer", "fall"}
    without = sum(1 for m in campaign.messages if not m.campaign)
    attempted = sum(c["attempted"] for c in counts.values())
    assert attempted == len(campaign.messages) - without


@pytest.mark.parametrize("window", ["5m", "1h", "24h"])
@pytest.mark.parametrize("at", [START + 3599, START + 3600, START + 5432, END - 1])
def test_every_window_sums_the_same_buckets_as_the_per_name_reads(
    stages: Stages, window: str, at: int
) -> None:
    first, end = window_minutes(window, at)
    assert end - first == {"5m": 5, "1h": 60, "24h": 1440}[window]
    for dim in DIMS.values():
        counts = stages.counts(dim, first, end)
        assert clean(counts) == clean(stages.counts(dim, first, end, cached=False))
        for name, c in clean(counts).items():
            assert c == stages.by_key(dim, name, first, end), (dim, name)


def test_rank_sorts_by_each_field_largest_first_ties_by_name_and_cuts_to_the_limit(
    stages: Stages,
) -> None:
    first, end = window_minutes("24h", END)
    counts = stages.counts("t", first, end)
    total, everything = rank("t", counts, RankingQuery("24h", None, "name", 1000))
    assert total == 12 and [e["template"] for e in everything] == sorted(
        e["template"] for e in everything
    )
    for sort in ("limit_errors", "failure_ratio", "attempted", "delivered", "read", "failed"):
        total, entries = rank("t", counts, RankingQuery("24h", None, sort, 5))
        assert total == 12 and len(entries) == 5
        keys = [(-e[sort], e["template"]) for e in everything]
        assert [(-e[sort], e["template"]) for e in entries] == sorted(keys)[:5], sort
    entry = entries[0]
    assert set(entry) >= {"template", "attempted", "failed_by_class", "limit_errors", "counts"}
    assert entry["failure_ratio"] == entry["failed"] / entry["attempted"]


def test_merging_two_workers_counts_adds_them_by_name() -> None:
    a = {"x": {"attempted": 3, "failed.opt_out": 1}}
    merge(a, {"x": {"attempted": 2}, "y": {"attempted": 5}})
    assert a == {"x": {"attempted": 5, "failed.opt_out": 1}, "y": {"attempted": 5}}
    _, entries = rank("g", a, RankingQuery("1h", None, "attempted", 10))
    assert [(e["campaign"], e["attempted"]) for e in entries] == [("x", 5), ("y", 5)]


def test_a_late_send_log_record_changing_an_old_hour_is_seen_through_the_cache() -> None:
    """The hour is cached by a first ranking; a send-log record then moves its statuses off
    template 'unknown' and adds them to a campaign: the next ranking has the new counts."""
    c = generate(
        CampaignSpec(
            messages=400, start=START, duration=3 * 3600, opaque_ratio=0.0, shuffle_window=10
        ),
        seed=2,
    )
    s = Stages()
    s.bodies(c.payloads)
    first, end = window_minutes("24h", END + 600)
    before = clean(s.counts("t", first, end))
    assert set(before) == {"unknown"} and clean(s.counts("g", first, end)) == {}
    assert len(s.cache) > 0  # the whole hours are cached now
    s.send_log(c.send_log)
    assert clean(s.counts("t", first, end)) == {k: dict(+v) for k, v in c.truth.templates.items()}
    assert clean(s.counts("g", first, end)) == {"sim": dict(+c.truth.campaigns["sim"])}


def test_a_revoked_partition_forgets_its_hours_until_it_is_flushed_again() -> None:
    cache = HourCache()
    scans: list[tuple[int, bytes]] = []

    def scan(partition: int, lo: bytes, hi: bytes) -> list[tuple[bytes, bytes]]:
        scans.append((partition, lo))
        return []

    both = frozenset({0, 1})
    cache.hour(scan, both, "t", 100)
    cache.hour(scan, both, "t", 100)
    assert len(scans) == 4  # never flushed here: nothing cached (the store may be restoring)
    cache.changed(0, set())
    cache.hour(scan, both, "t", 100)
    assert len(scans) == 6  # partition 1 is not live yet
    cache.changed(1, set())
    cache.hour(scan, both, "t", 100)
    cache.hour(scan, both, "t", 100)
    assert len(scans) == 8  # cached now
    cache.hour(scan, frozenset({0}), "t", 100)
    assert len(scans) == 9  # another set of partitions is read again
    cache.changed(0, {("t", 100)})
    cache.hour(scan, both, "t", 100)
    assert len(scans) == 11  # a flush changed that hour
    cache.changed(1, None)
    assert len(cache) == 0
    cache.hour(scan, both, "t", 100)
    cache.hour(scan, both, "t", 100)
    assert len(scans) == 15


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"window": "2h"}, "window must be one of 5m, 1h, 24h"),
        ({"at": "yesterday"}, "at must be unix seconds"),
        ({"at": "-5"}, "at must be unix seconds"),
        ({"sort": "ratio"}, "sort must be one of"),
        ({"limit": "0"}, "limit must be an integer from 1 to 1000"),
        ({"limit": "1001"}, "limit must be an integer from 1 to 1000"),
        ({"limit": "ten"}, "limit must be an integer from 1 to 1000"),
    ],
)
def test_bad_parameters_are_refused_with_a_message(params: dict, message: str) -> None:
    with pytest.raises(BadQuery, match=message):
        parse_query(params)


def test_default_parameters() -> None:
    assert parse_query({}) == RankingQuery("1h", None, "limit_errors", 20)
    assert parse_query({"window": "5m", "at": "1767225600", "sort": "name", "limit": "3"}) == (
        RankingQuery("5m", 1_767_225_600, "name", 3)
    )
