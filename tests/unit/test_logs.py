"""Log lines: ISO 8601 UTC times; Faust's, mode's and aiokafka's chatter below the default level,
shown again with DELIVERY_MONITOR_FAUST_LOG_LEVEL=info; the monitor's own lines unchanged."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest

from streams import logs


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in logs.LIBRARIES}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lib_level in levels.items():
        logging.getLogger(name).setLevel(lib_level)


def emit(library_level: str) -> list[str]:
    out = io.StringIO()
    logs.configure("info", library_level, out)
    logging.getLogger("faust.worker").info("[^Worker]: Starting...")
    logging.getLogger("faust.tables.recovery").info("Highwater for active changelog partitions")
    logging.getLogger("aiokafka.producer.sender").warning(
        "Got error produce response, retrying. Error: NotLeaderForPartitionError"
    )
    logging.getLogger("aiokafka.consumer").error("Fetch failed: disk full")
    logging.getLogger("streams.app").warning("ALERT FIRING x: y [template:z] since 2026-...")
    logging.getLogger("streams.summary").info("summary: 1.0 statuses/s")
    return out.getvalue().splitlines()


def test_by_default_only_the_monitor_and_real_library_problems_are_shown(
    restore_logging: None,
) -> None:
    lines = emit("warning")
    assert [line.split(" ", 2)[2] for line in lines] == [
        "aiokafka.consumer: Fetch failed: disk full",
        "streams.app: ALERT FIRING x: y [template:z] since 2026-...",
        "streams.summary: summary: 1.0 statuses/s",
    ]
    for line in lines:
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO|WARNING|ERROR) ", line)


def test_the_library_level_setting_shows_everything_again(restore_logging: None) -> None:
    lines = emit("info")
    assert len(lines) == 6
    assert any("Starting..." in line for line in lines)
    assert any("NotLeaderForPartitionError" in line for line in lines)


def test_iso_utc_formatter() -> None:
    record = logging.LogRecord("streams.x", logging.INFO, "f", 1, "hello", None, None)
    record.created, record.msecs = 1_767_225_600.25, 250.0
    text = logs.IsoUtcFormatter(logs.FORMAT).format(record)
    assert text == "2026-01-01T00:00:00.250Z INFO streams.x: hello"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_library_message_repeated_in_a_tight_loop_is_shown_once_per_window() -> None:
    """aiokafka's producer retries metadata without a pause while the broker is down: one line
    per template per window, the next one counting what was held back; other messages and the
    monitor's own lines pass."""
    clock = Clock()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(logs.RepeatLimit(window_s=10.0, clock=clock))
    client, ours = logging.getLogger("aiokafka.test_limit"), logging.getLogger("streams.limit")
    client.addHandler(handler)
    ours.addHandler(handler)
    client.propagate = ours.propagate = False
    # whatever level an earlier test left on "aiokafka" or "streams": this test's own
    client.setLevel(logging.DEBUG)
    ours.setLevel(logging.DEBUG)
    try:
        for _ in range(5_000):  # within a second
            client.error("Unable to update metadata from %s", [1])
            client.error("Unable connect to node with id %s: %s", 1, "refused")
            ours.warning("stage 1: Kafka refused (%s); retrying", "x")
        clock.now += 9.9
        client.error("Unable to update metadata from %s", [1])  # still inside the window
        clock.now += 0.2
        client.error("Unable to update metadata from %s", [2])
        client.error("Fetch failed: %s", "disk full")  # another message: shown at once
        clock.now += 60
        client.error("Unable to update metadata from %s", [1])  # nothing held back since
    finally:
        client.removeHandler(handler)
        ours.removeHandler(handler)
        client.propagate = ours.propagate = True
        client.setLevel(logging.NOTSET)
        ours.setLevel(logging.NOTSET)
    lines = out.getvalue().splitlines()
    assert lines.count("stage 1: Kafka refused (x); retrying") == 5_000
    library = [line for line in lines if not line.startswith("stage 1")]
    assert library == [
        "Unable to update metadata from [1]",
        "Unable connect to node with id 1: refused",
        "Unable to update metadata from [2] [5000 more like this held back in the last 10 s]",
        "Fetch failed: disk full",
        "Unable to update metadata from [1]",
    ]


def test_the_repeat_limit_forgets_templates_beyond_its_bound() -> None:
    """A library formatting its messages itself makes every one a template: memory stays
    bounded and they all pass."""
    limit = logs.RepeatLimit(window_s=10.0, clock=Clock())
    records = [
        logging.LogRecord("aiokafka", logging.ERROR, __file__, 1, f"node {i} down", None, None)
        for i in range(3 * logs.RepeatLimit.MAX_KEYS)
    ]
    assert all(limit.filter(r) for r in records)
    assert len(limit._seen) <= logs.RepeatLimit.MAX_KEYS
