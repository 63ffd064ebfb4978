"""The local broker's cluster id is always one the Kafka storage tool accepts."""

from __future__ import annotations

import uuid

import pytest

from streams.localkafka import broker


def test_cluster_ids_are_22_base64url_characters() -> None:
    for _ in range(2_000):
        cid = broker._cluster_id()
        assert len(cid) == 22 and not cid.startswith("-")


def test_an_id_starting_with_a_dash_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """b'\\xf8' as the first byte encodes to '-': the storage tool would take it for an option."""
    draws = iter([uuid.UUID(bytes=b"\xf8" + b"\x00" * 15), uuid.UUID(int=1)])
    monkeypatch.setattr(broker.uuid, "uuid4", lambda: next(draws))
    assert broker._cluster_id() == "AAAAAAAAAAAAAAAAAAAAAQ"
