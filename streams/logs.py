"""Logging for every command: one line per record, times in ISO 8601 UTC, libraries quiet.

Faust, mode and aiokafka log every service start and stop, subscription change, group join
and recovery table at INFO (about ninety lines before a worker is ready). Their loggers get
their own level, ``DELIVERY_MONITOR_FAUST_LOG_LEVEL`` (default ``warning``; ``info`` shows it all
again), and a few warnings they log while a fresh broker elects its leaders and coordinators,
which they retry by themselves, are shown only at ``info`` too. The monitor's own loggers
(``streams.*``) follow ``DELIVERY_MONITOR_LOG_LEVEL``. A library message repeated within
10 s is held back, and counted on the next one shown (:class:`RepeatLimit`).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

#: the libraries whose loggers follow the library level
LIBRARIES = ("faust", "mode", "aiokafka", "kafka")
#: library messages that mean "retrying by itself" (a fresh broker, a rebalance in progress)
TRANSIENT = (
    "NotLeaderForPartitionError",
    "GroupCoordinatorNotAvailableError",
    "Marking the coordinator dead",
    "LeaderNotAvailableError",
    "UnknownTopicOrPartitionError",
)
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class IsoUtcFormatter(logging.Formatter):
    """``2026-01-01T00:00:00.123Z INFO streams.app: ...``"""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


class QuietLibraries(logging.Filter):
    """Hides the libraries' self-healing retry warnings below ``level``."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".", 1)[0] not in LIBRARIES or self.level <= logging.INFO:
            return True
        if record.levelno >= logging.CRITICAL:
            return True
        message = record.getMessage()
        return not any(marker in message for marker in TRANSIENT)


class RepeatLimit(logging.Filter):
    """Lets each library message through at most once per ``window_s`` (per logger and message
    template); the next one that passes says how many were held back. A client retrying in a
    tight loop while the broker is down must not fill the disk: aiokafka's producer asks for
    metadata again at once when a leader is unknown, and logged 11,000 errors a second."""

    #: templates remembered at most (a library formatting its own messages makes each unique)
    MAX_KEYS = 1_000

    def __init__(self, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.window_s = window_s
        self.clock = clock
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}  # -> (passed at, held back)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".", 1)[0] not in LIBRARIES or not isinstance(record.msg, str):
            return True
        key, now = (record.name, record.msg), self.clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.window_s:
            self._seen[key] = (seen[0], seen[1] + 1)
            return False
        if len(self._seen) >= self.MAX_KEYS:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if seen is not None and seen[1]:
            held = f" [{seen[1]} more like this held back in the last {now - seen[0]:.0f} s]"
            record.msg += held.replace("%", "%%") if record.args else held
        return True


def configure(level: str, library_level: str, stream: TextIO | None = None) -> None:
    """One handler on the root logger (replacing any, Faust's included)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(IsoUtcFormatter(FORMAT))
    libraries = logging.getLevelName(library_level.upper())
    handler.addFilter(QuietLibraries(libraries))
    handler.addFilter(RepeatLimit())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(libraries)
