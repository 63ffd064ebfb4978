"""Fixtures for the pure-core unit tests: sample webhook bodies copied into tests/fixtures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "whatsapp"


@pytest.fixture
def sample() -> Callable[[str], bytes]:
    """Raw bytes of one sample body (tests/fixtures/whatsapp/<name>)."""

    def read(name: str) -> bytes:
        return (FIXTURES / name).read_bytes()

    return read
