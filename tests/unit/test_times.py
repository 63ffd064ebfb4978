"""Human-facing times are ISO 8601 UTC: the helper, and the Slack message that uses it."""

from __future__ import annotations

import json

from streams.core.alerts import AlertBook, Evaluation, Evidence, Finding, Scope, Verdict
from streams.core.catalog import ErrorClass
from streams.core.slack_format import render_slack_message
from streams.core.times import iso_utc

T0 = 1_767_225_600


def test_iso_utc() -> None:
    assert iso_utc(T0) == "2026-01-01T00:00:00Z"
    assert iso_utc(T0 + 3661.9) == "2026-01-01T01:01:01Z"


def test_slack_messages_show_iso_utc_times() -> None:
    finding = Finding(
        rule="spike",
        scope=Scope.for_template("spring_sale"),
        group="spike:per_user_marketing_limit",
        verdict=Verdict.POSITIVE,
        evidence=Evidence(30, 100, 0.3, 0.01, 10_000, 1e-20, 300),
        title="Per-user marketing limit (131049) spike",
        error_class=ErrorClass.PER_USER_MARKETING_LIMIT,
    )
    [firing] = AlertBook().apply(Evaluation(T0 + 120, frozenset({"spike"}), (finding,)))
    text = json.dumps(render_slack_message(firing, grafana_url="http://g"))
    assert "Firing since 2026-01-01T00:02:00Z" in text
    assert "<!date^" not in text
