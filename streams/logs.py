"""Logging for every command: one line per record, times in ISO 8601 UTC, libraries quiet.

Faust, mode and aiokafka log every service start and stop, subscription change, group join
and recovery table at INFO (about ninety lines before a worker is ready). Their loggers get
their own level, ``DELIVERY_MONITOR_FAUST_LOG_LEVEL`` (default ``warning``; ``info`` shows it all
again), and a few warnings they log while a fresh broker elects its leaders and coordinators,
which they retry by themselves, are shown only at ``info`` too. The monitor's own loggers
(``streams.*``) follow ``DELIVERY_MONITOR_LOG_LEVEL``.
"""

from __future__ import annotations

import logging
import sys
import time
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


def configure(level: str, library_level: str, stream: TextIO | None = None) -> None:
    """One handler on the root logger (replacing any, Faust's included)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(IsoUtcFormatter(FORMAT))
    libraries = logging.getLevelName(library_level.upper())
    handler.addFilter(QuietLibraries(libraries))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(libraries)
