"""Human-facing times: ISO 8601 in UTC, the one format of logs, Slack messages and the page."""

from __future__ import annotations

import datetime as dt


def iso_utc(ts: float) -> str:
    """Unix seconds as ``2026-01-01T00:00:00Z`` (whole seconds); a value beyond the calendar
    (a hostile timestamp) is shown as given, never an error."""
    try:
        moment = dt.datetime.fromtimestamp(int(ts), dt.UTC)
    except (OverflowError, OSError, ValueError):
        return str(ts)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
