"""The monitor's hot loops in native code (``streams_native``, built from native/ by ``make
install``) or, without it, the Python implementations they mirror byte for byte.

The native module picks the partition of a key (Kafka's murmur2, stages 1 and 2), applies a
status fact not applied before to a message's encoded state (the ledger's ``apply_status``) and
adds the resulting deltas to the minute buckets and the signal cells of the batch, applies a
recipient fact other than a failure to a recipient's encoded state (stage 3's ``apply_fact``
and ``premature_resends``) and computes a changed recipient's advice and its record; replayed
inputs, send-log records, failures (their retry plans) and everything else stay in Python.
``DELIVERY_MONITOR_NATIVE=0`` picks the Python implementations (a comparison, or a machine
without the build); tests/unit/test_native.py, tests/unit/test_native_recipients.py and
tests/unit/test_partitioning.py run both on the same inputs.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

from streams.core import aggregates
from streams.core.advice import AdvicePolicy

_native: Any
try:
    _native = importlib.import_module("streams_native")
except ImportError:  # not built: the Python implementations
    _native = None

#: whether the native module was built and installed here
AVAILABLE = _native is not None
#: the default of :func:`implementations`: the native module unless DELIVERY_MONITOR_NATIVE=0
ENABLED = AVAILABLE and os.environ.get("DELIVERY_MONITOR_NATIVE", "1") != "0"

#: flags of ``apply_status``'s result
DUPLICATE, REPLAYED, LATE, FIRST_STATUS, COUNTED = 1, 2, 4, 8, 16


@dataclass(frozen=True)
class Implementations:
    """The bucket writer and signal cells classes, and the native status, recipient fact and
    advice steps (None: the Python ledger, recipient state and advice do all)."""

    bucket_writer: Any
    signal_cells: Any
    apply_status: Any
    apply_recipient_fact: Any
    advise_recipient: Any


def implementations(native: bool | None = None) -> Implementations:
    """The native ones (``native``: default :data:`ENABLED`) or the Python ones."""
    if native is None:
        native = ENABLED
    if native:
        if _native is None:
            raise RuntimeError("the native module streams_native is not installed: make install")
        return Implementations(
            _native.BucketWriter,
            _native.SignalCells,
            _native.apply_status,
            _native.apply_recipient_fact,
            _native.advise_recipient,
        )
    return Implementations(aggregates.BucketWriter, aggregates.SignalCells, None, None, None)


def advice_policy_fields(policy: AdvicePolicy) -> tuple[int, ...]:
    """``policy`` as the native ``advise_recipient`` takes it."""
    e = policy.engagement
    return (
        policy.cooldown_s,
        policy.resend_extension_s,
        policy.undeliverable_threshold,
        policy.undeliverable_window_s,
        policy.undeliverable_suppress_s,
        e.recent_s,
        e.window_s,
        e.unengaged_min_delivered,
    )


def native_partition_for() -> Any:
    """The native ``partition_for(key, partitions)`` when :data:`ENABLED`, else None."""
    return _native.partition_for if ENABLED else None


__all__ = [
    "AVAILABLE",
    "ENABLED",
    "Implementations",
    "advice_policy_fields",
    "implementations",
    "native_partition_for",
]
