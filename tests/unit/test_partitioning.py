"""Our murmur2 routes keys exactly like Kafka's default partitioner (aiokafka's reference), in
Python and in the native module."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka.partitioner import murmur2 as reference
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import native
from streams.stages import murmur2, partition_for, python_partition_for

# CI builds the native module (make install): there, a missing one fails instead of skipping
needs_native = pytest.mark.skipif(
    not native.AVAILABLE and not os.environ.get("CI"), reason="streams_native is not built"
)


def streams_native() -> Any:
    return importlib.import_module("streams_native")


def murmur2s() -> list[Callable[[bytes], int]]:
    return [murmur2, *([streams_native().murmur2] if native.AVAILABLE else [])]


@settings(max_examples=2000)
@given(st.binary(max_size=200))
def test_murmur2_equals_the_reference(data: bytes) -> None:
    for ours in murmur2s():
        assert ours(data) == reference(data)


@given(st.text(max_size=80), st.integers(min_value=1, max_value=64))
def test_partition_for_is_kafkas_choice(key: str, partitions: int) -> None:
    expected = (reference(key.encode()) & 0x7FFFFFFF) % partitions
    assert python_partition_for(key, partitions) == expected
    assert partition_for(key, partitions) == expected


@needs_native
def test_the_native_partition_for_is_used_when_enabled_and_refuses_no_partitions() -> None:
    fast = streams_native().partition_for
    assert (partition_for is fast) == native.ENABLED
    assert fast("wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI", 12) == python_partition_for(
        "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI", 12
    )
    with pytest.raises(ValueError, match="at least one partition"):
        fast("x", 0)


def test_known_java_values() -> None:
    # Kafka's own DefaultPartitionerTest/UtilsTest vectors (signed Java ints)
    for text, java in {
        "21": -973932308,
        "foobar": -790332482,
        "a-little-bit-long-string": -985981536,
    }.items():
        for ours in murmur2s():
            assert ours(text.encode()) == java & 0xFFFFFFFF
