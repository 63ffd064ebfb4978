"""Engagement of one recipient with the sender's marketing, and its tier.

From the recipient's state at event time ``now`` (windows end at ``now``, inclusive):

- ``engaged``: read a marketing template, or wrote to the business, in the last 7 days;
- ``unengaged``: at least 3 marketing templates delivered in the last 30 days, none read, and
  no message from the user in those 30 days;
- ``cooling``: anything else seen in the last 30 days (a delivery, a read or a message from the
  user, but nothing in the last 7 days and not enough deliveries to call it unengaged);
- ``unknown``: nothing in the last 30 days (or a recipient the monitor does not know).

Every threshold is a field of :class:`EngagementPolicy`. A user who turned read receipts off
never sends ``read``: without inbound messages they look ``unengaged``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

import msgspec

DAY = 86_400


class History(Protocol):
    """What engagement reads of a recipient's state
    (:class:`streams.core.recipient_state.RecipientState`, which builds its API view with
    :func:`engagement`)."""

    @property
    def marketing_delivered(self) -> list[int]: ...

    @property
    def marketing_read(self) -> list[int]: ...

    @property
    def last_inbound(self) -> int: ...

    @property
    def csw_open_until(self) -> int: ...


class EngagementTier(enum.StrEnum):
    ENGAGED = "engaged"
    COOLING = "cooling"
    UNENGAGED = "unengaged"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class EngagementPolicy:
    recent_s: int = 7 * DAY  # the "engaged" window
    window_s: int = 30 * DAY  # the longest window (the state keeps engagement this long)
    unengaged_min_delivered: int = 3


DEFAULT_POLICY = EngagementPolicy()


class Engagement(msgspec.Struct, frozen=True):
    tier: EngagementTier
    marketing_delivered_7d: int
    marketing_delivered_30d: int
    marketing_read_7d: int
    marketing_read_30d: int
    last_inbound: int | None
    customer_service_window_open: bool


def _count(times: list[int], since: int, until: int) -> int:
    return sum(1 for t in times if since < t <= until)


def window_open(state: History, now: int) -> bool:
    """A customer-service window is open at ``now``: the user wrote less than 24 h before."""
    if state.last_inbound and state.last_inbound <= now:
        return now - state.last_inbound < DAY
    return state.csw_open_until > now and not state.last_inbound


def engagement(
    state: History | None, now: int, policy: EngagementPolicy = DEFAULT_POLICY
) -> Engagement:
    """The recipient's engagement at ``now`` (``state`` None: a recipient never seen)."""
    if state is None:
        return Engagement(EngagementTier.UNKNOWN, 0, 0, 0, 0, None, False)
    recent, window = now - policy.recent_s, now - policy.window_s
    delivered = state.marketing_delivered
    read = state.marketing_read
    inbound = state.last_inbound if state.last_inbound <= now else 0
    d7, d30 = _count(delivered, recent, now), _count(delivered, window, now)
    r7, r30 = _count(read, recent, now), _count(read, window, now)
    if r7 or inbound > recent:
        tier = EngagementTier.ENGAGED
    elif d30 >= policy.unengaged_min_delivered and not r30 and inbound <= window:
        tier = EngagementTier.UNENGAGED
    elif d30 or r30 or inbound > window:
        tier = EngagementTier.COOLING
    else:
        tier = EngagementTier.UNKNOWN
    return Engagement(
        tier=tier,
        marketing_delivered_7d=d7,
        marketing_delivered_30d=d30,
        marketing_read_7d=r7,
        marketing_read_30d=r30,
        last_inbound=inbound or None,
        customer_service_window_open=window_open(state, now),
    )
