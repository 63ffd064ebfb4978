"""The state stores' key layout (streams.core.keys): builders and parsers round-trip, and the
layout is the historical one, byte for byte (state written by older versions must still be
found), as are the bucket dimensions' codes."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from streams.core import keys
from streams.core.alerts import Scope, ScopeKind
from streams.core.keys import (
    BucketId,
    Dimension,
    IndexKey,
    bucket_name,
    bucket_prefix,
    chunk_key,
    manifest_key,
    parse_index_key,
    parse_plan_key,
    plan_key,
    prefix_range,
    recipient_entry,
    recipient_of_entry,
    template_key,
    template_of_key,
)
from streams.core.ledger import BucketDelta
from streams.core.signals import BucketSignal

names = st.text(max_size=40)
partitions = st.integers(min_value=0, max_value=1_000)
minutes = st.integers(min_value=0, max_value=10**9)
dims = st.sampled_from(list(Dimension))
index_prefixes = st.sampled_from(
    [keys.MESSAGE_INDEX, keys.BUCKET_INDEX, keys.RECIPIENT_INDEX, keys.RETRY_TIMERS]
)


def test_dimensions_are_the_historical_codes() -> None:
    assert {d.name: d.value for d in Dimension} == {
        "TEMPLATE": "t",
        "SENDER": "s",
        "COUNTRY": "c",
        "CAMPAIGN": "g",
    }
    assert [d.noun for d in Dimension] == ["template", "sender", "country", "campaign"]
    for d in Dimension:
        assert d == d.value and hash(d) == hash(d.value) and f"{d}" == str(d) == d.value
        assert {d.value: 1}[d] == 1 and {d: 1}[d.value] == 1
        assert d.noun == ScopeKind(d.noun).value  # the alert scope's kind of its buckets


def test_dimensions_encode_as_their_codes() -> None:
    """Deltas and signals encode the same bytes as before the enum; old bytes still decode."""
    for d in Dimension:
        signal = msgspec.msgpack.encode(BucketSignal(d, "k", 7, {"sent": 1}, 2, 3, 4))
        assert signal == msgspec.msgpack.encode(BucketSignal(d.value, "k", 7, {"sent": 1}, 2, 3, 4))
        assert msgspec.msgpack.decode(signal, type=BucketSignal).dim == d
        delta = msgspec.msgpack.encode(BucketDelta(d, "k", 7, "sent", 1, 5))
        assert msgspec.msgpack.decode(delta, type=BucketDelta).dim is d
        assert msgspec.json.encode(d) == msgspec.json.encode(d.value)


def test_the_layout_is_the_historical_one() -> None:
    scope = Scope(ScopeKind.TEMPLATE, "spring_sale", "1065")
    assert keys.message_key("wamid.A") == b"m\x1fwamid.A"
    assert keys.template_key("spring_sale") == b"T\x1fspring_sale"
    assert (
        BucketId(Dimension.CAMPAIGN, "c-9", 3, 29_000_000).encode()
        == "b\x1fg\x1f3\x1f29000000\x1fc-9"
    )
    assert bucket_prefix(Dimension.SENDER, 1, 60) == b"b\x1fs\x1f1\x1f60\x1f"
    assert keys.messages_meta_key(4) == b"\x00meta\x1f4"
    assert keys.account_ledger_key(4) == b"\x00acct\x1f4"
    assert keys.recipient_key("15550001111") == b"15550001111"
    assert recipient_entry("15550001111") == "r\x1f15550001111"
    assert keys.plan_key(1_770_000_000, "wamid.B") == b"R\x1f001770000000\x1fwamid.B"
    assert keys.recipients_meta_key(2) == b"\x00rmeta\x1f2"
    assert manifest_key(keys.MESSAGE_INDEX, 1, 20_000) == "xmm\x1f1\x1f20000"
    assert chunk_key(keys.BUCKET_INDEX, 1, 20_000, 3) == "xbc\x1f1\x1f20000\x1f3"
    assert (keys.RECIPIENT_INDEX, keys.RETRY_TIMERS) == ("xr", "xq")
    assert [
        keys.STAGE_KEY,
        keys.BOOK_KEY,
        keys.RESOLVED_KEY,
        keys.RULES_KEY,
        keys.STANDING_KEY,
        keys.HOURS_KEY,
        keys.PENDING_KEY,
    ] == [b"stage", b"book", b"resolved", b"rules", b"standing", b"detector", b"pending"]
    assert keys.hour_index_key(490_000) == b"dh\x1f490000"
    assert keys.hour_key(scope, 490_000) == b"d\x1f490000\x1ftemplate\x1f1065\x1fspring_sale"
    assert keys.pending_key(29_400_060) == b"q\x1f29400060"
    assert keys.standing_hour_key(490_000) == b"us\x1f490000"
    assert keys.thread_record_key("spike:template:x@1") == b"thread:spike:template:x@1"
    assert keys.THREAD_INDEX_KEY == b"index"


def test_the_prefixes_of_a_table_do_not_overlap() -> None:
    messages = [
        keys.MESSAGE_PREFIX.encode(),
        keys.TEMPLATE_PREFIX,
        keys.BUCKET_PREFIX.encode(),
        keys.PARTITION_RECORD,
        keys.MESSAGE_INDEX.encode(),
        keys.BUCKET_INDEX.encode(),
    ]
    recipients = [
        keys.PLAN_PREFIX,
        keys.PARTITION_RECORD,
        keys.RECIPIENT_INDEX.encode(),
        keys.RETRY_TIMERS.encode(),
    ]
    for table in (messages, recipients):
        for a in table:
            assert [b for b in table if b.startswith(a)] == [a]


@given(dims, names, partitions, minutes)
def test_bucket_keys_round_trip(dim: Dimension, name: str, partition: int, minute: int) -> None:
    bucket = BucketId(dim, name, partition, minute)
    key = bucket.encode()
    assert BucketId.decode(key) == bucket == BucketId.decode(key.encode())
    assert bucket_name(key.encode()) == name
    assert key.encode().startswith(bucket_prefix(dim, partition, minute))
    lo, hi = prefix_range(bucket_prefix(dim, partition, minute))
    assert lo <= key.encode() < hi


@given(names)
def test_template_keys_round_trip(name: str) -> None:
    key = template_key(name)
    assert template_of_key(key) == name
    lo, hi = prefix_range(template_key(""))
    assert lo <= key < hi
    assert not lo <= keys.message_key(name) < hi
    assert not lo <= BucketId(Dimension.TEMPLATE, name, 0, 1).encode().encode() < hi


@given(st.integers(min_value=0, max_value=10**12 - 1), names)
def test_plan_keys_round_trip(due: int, wamid: str) -> None:
    key = plan_key(due, wamid)
    assert parse_plan_key(key) == (due, wamid)
    assert key.startswith(keys.PLAN_PREFIX)


@given(st.lists(st.integers(min_value=0, max_value=10**12 - 1), min_size=2, max_size=10), names)
def test_plan_keys_sort_by_due_time(dues: list[int], wamid: str) -> None:
    ordered = sorted(dues)
    assert [parse_plan_key(k)[0] for k in sorted(plan_key(d, wamid) for d in dues)] == ordered


@given(names)
def test_recipient_entries_round_trip(recipient: str) -> None:
    assert recipient_of_entry(recipient_entry(recipient)) == recipient


@given(index_prefixes, partitions, minutes, st.integers(min_value=0, max_value=10_000))
def test_index_keys_round_trip(prefix: str, partition: int, day: int, chunk: int) -> None:
    manifest = manifest_key(prefix, partition, day)
    assert parse_index_key(manifest) == IndexKey(prefix, partition, day)
    assert parse_index_key(manifest.encode()) == IndexKey(prefix, partition, day)
    assert parse_index_key(chunk_key(prefix, partition, day, chunk)) == IndexKey(
        prefix, partition, day, chunk
    )
