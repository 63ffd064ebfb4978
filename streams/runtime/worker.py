"""Running an app as a Faust worker process (mode's service tree, signals, logging)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NoReturn

from faust.worker import Worker


def execute(app: Any, log_level: str, configure_logs: Callable[[], None]) -> NoReturn:
    """Run ``app`` until the process is told to stop (blocks)."""

    class MonitorWorker(Worker):
        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            # faust's terminal spinner leaves the root logger at DEBUG, which makes every
            # library build a debug record per Kafka message (slow, and it would carry payloads);
            # mode replaced the handlers: ours again (ISO times, quiet libraries)
            self.spinner = None
            configure_logs()

    worker = MonitorWorker(app, loglevel=log_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
