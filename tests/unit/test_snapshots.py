"""Saves of many keys that restore all or nothing: a save cut short after any of its writes
restores as the save before it."""

from __future__ import annotations

import pytest

from streams.state import DictKeyValue, Snapshots


class Dies(Exception):
    pass


class CrashingKV(DictKeyValue):
    """Dies after ``budget`` more writes."""

    def __init__(self, data: DictKeyValue, budget: int) -> None:
        super().__init__()
        self.data = data.data
        self.budget = budget

    def set(self, partition: int, key: bytes, value: bytes) -> None:
        if self.budget == 0:
            raise Dies
        self.budget -= 1
        super().set(partition, key, value)

    def delete(self, partition: int, key: bytes) -> None:
        if self.budget == 0:
            raise Dies
        self.budget -= 1
        super().delete(partition, key)


SAVES: list[dict[bytes, bytes | None]] = [
    {b"a": b"1", b"b": b"1", b"c": b"1"},
    {b"a": b"2", b"b": None},  # b deleted
    {b"a": b"3", b"b": b"3", b"d": b"3"},  # b back
    {b"c": None, b"d": b"4"},
]


def state_after(n: int) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for save in SAVES[:n]:
        for key, value in save.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = value
    return out


def read(kv: DictKeyValue) -> dict[bytes, bytes]:
    snapshots = Snapshots(kv, 0)
    snapshots.restore()
    values = {k: snapshots.get(k) for k in (b"a", b"b", b"c", b"d")}
    return {k: v for k, v in values.items() if v is not None}


def save(snapshots: Snapshots, changes: dict[bytes, bytes | None]) -> int:
    for key, value in changes.items():
        if value is None:
            snapshots.delete(key)
        else:
            snapshots.set(key, value)
    return snapshots.commit()


def test_every_complete_save_restores_exactly() -> None:
    kv = DictKeyValue()
    snapshots = Snapshots(kv, 0)
    for n, changes in enumerate(SAVES, 1):
        save(snapshots, changes)
        assert read(kv) == state_after(n)
    assert b"c\x00#0" not in kv.data[0] and b"c\x00#1" not in kv.data[0]  # deleted: gone


@pytest.mark.parametrize("which", range(1, len(SAVES)))
def test_a_save_cut_short_anywhere_restores_the_one_before(which: int) -> None:
    probe = DictKeyValue()
    snapshots = Snapshots(probe, 0)
    for changes in SAVES[:which]:
        save(snapshots, changes)
    writes = save(Snapshots(DictKeyValue(), 0), SAVES[which]) + 4  # deletes after the head
    for budget in range(writes):
        kv = DictKeyValue()
        snapshots = Snapshots(kv, 0)
        for changes in SAVES[:which]:
            save(snapshots, changes)
        crashing = Snapshots(CrashingKV(kv, budget), 0)
        crashing.restore()
        try:
            save(crashing, SAVES[which])
        except Dies:
            assert read(kv) in (state_after(which), state_after(which + 1))
        else:
            assert read(kv) == state_after(which + 1)
        # a restored writer carries on from there
        resumed = Snapshots(kv, 0)
        resumed.restore()
        for key in (b"a", b"b", b"c", b"d"):
            resumed.get(key)
        save(resumed, {b"a": b"9"})
        assert read(kv)[b"a"] == b"9"


def test_a_cut_save_is_the_old_one_until_its_head_is_written() -> None:
    kv = DictKeyValue()
    save(Snapshots(kv, 0), SAVES[0])
    crashing = Snapshots(CrashingKV(kv, 2), 0)  # two of the three values, no head
    crashing.restore()
    with pytest.raises(Dies):
        save(crashing, {b"a": b"x", b"b": b"x", b"c": b"x"})
    assert read(kv) == state_after(1)
