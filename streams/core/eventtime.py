"""Event time the monitor can trust, and the marks that make judgments independent of arrival.

**Trust.** A webhook's ``timestamp`` (and a send-log record's ``sent_at``) is the sender's or
Meta's word. One far-future value would move a partition's event time and let retention delete
everything else on it, so a value is used only within :attr:`TimeTrust.max_future_skew` seconds
after the time Kafka received the record (never later than the monitor's own clock), and not
before :data:`EARLIEST` (2009: older than WhatsApp itself; ``0`` is a missing value, not 1970).
A value in milliseconds (the usual mistake) is recognised when its thousandth is trusted.
Anything else is refused with a reason (:func:`trust`); the caller dead-letters it.

**Marks.** Every input partition (a raw webhook partition, a send-log partition) is read in
offset order. An input's *mark* is the newest trusted event time of its partition up to and
including it: a function of the partition's content, not of when it was read. An evaluation at
event time ``g`` may use exactly the inputs whose mark is below ``g``: every one of them has been
read once every partition's mark has reached ``g`` (marks only grow along a partition), and which
of them arrived before is then a question of data, not of pace. :func:`visible_at` is the first
evaluation point (on a :data:`GRID` of seconds) that uses an input with a given mark.
"""

from __future__ import annotations

import enum

import msgspec

#: Seconds between the alerting stage's evaluation points (the spike detector checks the minute in
#: progress at each; a whole minute is judged at every multiple of 60).
GRID = 15

#: 2009-01-01T00:00:00Z: no WhatsApp event is older.
EARLIEST = 1_230_768_000

_MILLIS = 1_000


class TimeTrust(msgspec.Struct, frozen=True):
    """How far after the time Kafka received a record its event time may lie."""

    max_future_skew: int = 3_600


class TimeVerdict(enum.StrEnum):
    """What :func:`trust` made of a timestamp."""

    OK = "ok"
    MILLISECONDS = "milliseconds"  # used, divided by 1000
    FUTURE = "future"  # refused: later than received + skew
    TOO_OLD = "too_old"  # refused: before 2009 (0, negative, seconds of a wrong epoch)


DEFAULT_TRUST = TimeTrust()


def trust(
    ts: int, received: int, policy: TimeTrust = DEFAULT_TRUST
) -> tuple[int | None, TimeVerdict]:
    """``(ts, verdict)`` when ``ts`` may be used (possibly converted from milliseconds), else
    ``(None, verdict)``. ``received`` is when Kafka received the record (unix seconds)."""
    latest = received + policy.max_future_skew
    if EARLIEST <= ts <= latest:
        return ts, TimeVerdict.OK
    if ts > latest:
        seconds = ts // _MILLIS
        if EARLIEST <= seconds <= latest:
            return seconds, TimeVerdict.MILLISECONDS
        return None, TimeVerdict.FUTURE
    return None, TimeVerdict.TOO_OLD


def received_at(record_timestamp_ms: int | None, now: float) -> int:
    """When Kafka received a record, in unix seconds: its timestamp, but never later than the
    monitor's clock (a producer may set any CreateTime) and the clock when it has none."""
    wall = int(now)
    if record_timestamp_ms is None or record_timestamp_ms <= 0:
        return wall
    return min(record_timestamp_ms // _MILLIS, wall)


def refusal(what: str, ts: int, received: int, verdict: TimeVerdict, policy: TimeTrust) -> str:
    """A dead letter's reason for a refused timestamp."""
    if verdict is TimeVerdict.FUTURE:
        return (
            f"{what} timestamp {ts} is {ts - received} s after Kafka received the record "
            f"(at most {policy.max_future_skew} s are trusted)"
        )
    return f"{what} timestamp {ts} is before 2009-01-01 (not a WhatsApp event time)"


def visible_at(mark: int) -> int:
    """The first evaluation point that uses an input with this mark: the grid point after it."""
    return (mark // GRID + 1) * GRID
