"""Running a coroutine to completion from synchronous code (CLI, fixtures) safely."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
    """Run ``coro`` in a fresh event loop on a helper thread and return its result.

    A helper thread keeps the caller's event loop (faust's, pytest-asyncio's) untouched.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout=timeout_s)
