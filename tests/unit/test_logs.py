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
