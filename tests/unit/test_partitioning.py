"""Our murmur2 routes keys exactly like Kafka's default partitioner (aiokafka's reference)."""

from __future__ import annotations

from aiokafka.partitioner import murmur2 as reference
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.stages import murmur2, partition_for


@settings(max_examples=2000)
@given(st.binary(max_size=200))
def test_murmur2_equals_the_reference(data: bytes) -> None:
    assert murmur2(data) == reference(data)


@given(st.text(max_size=80), st.integers(min_value=1, max_value=64))
def test_partition_for_is_kafkas_choice(key: str, partitions: int) -> None:
    expected = (reference(key.encode()) & 0x7FFFFFFF) % partitions
    assert partition_for(key, partitions) == expected


def test_known_java_values() -> None:
    # Kafka's own DefaultPartitionerTest/UtilsTest vectors (signed Java ints)
    for text, java in {
        "21": -973932308,
        "foobar": -790332482,
        "a-little-bit-long-string": -985981536,
    }.items():
        assert murmur2(text.encode()) == java & 0xFFFFFFFF
