"""``GET /v1/alerts``'s body from the alert book: open incidents with their headline scope,
evidence and recommended action; incidents resolved in the last 24 h (silent resolves too),
bounded."""

from __future__ import annotations

import msgspec

from streams.core.alerts import (
    RESOLVED_MAX,
    AlertBook,
    AlertPolicy,
    BookState,
    Evaluation,
    Evidence,
    Family,
    Finding,
    Scope,
    ScopeKind,
    Verdict,
)
from streams.core.catalog import ErrorClass, recommended_action
from streams.views import alerts_view

T0 = 1_767_225_600
SPIKE = frozenset({"spike"})


def finding(
    scope: Scope, count: int = 300, group: str = "spike:per_user_marketing_limit"
) -> Finding:
    return Finding(
        rule="spike",
        scope=scope,
        group=group,
        verdict=Verdict.POSITIVE,
        evidence=Evidence(count, 1000, count / 1000, 0.02, 1_440_000, 1e-30, 300),
        title="Per-user marketing limit (131049) spike",
        error_class=ErrorClass.PER_USER_MARKETING_LIMIT,
        resolve_evaluations=1,
        family=Family.SPIKE,
    )


def test_an_open_incident_names_its_most_specific_scope_evidence_and_action() -> None:
    book = AlertBook()
    scopes = (
        Scope.for_sender("1065"),
        Scope.for_template("<b>spring</b>"),
        Scope(ScopeKind.CAMPAIGN, "c-1"),
    )
    for at in (T0, T0 + 60):
        book.apply(Evaluation(at, SPIKE, tuple(finding(s) for s in scopes)))
    view = alerts_view(book.state, T0 + 90)
    assert view["as_of_iso"] == "2026-01-01T00:01:30Z"
    assert view["resolved"] == []
    [incident] = view["open"]
    assert incident["id"] == "spike:per_user_marketing_limit"
    assert incident["kind"] == "spike" and incident["state"] == "firing" and incident["notified"]
    assert incident["since"] == T0 and incident["since_iso"] == "2026-01-01T00:00:00Z"
    assert incident["scope"]["kind"] == "template" and incident["scope"]["key"] == "<b>spring</b>"
    assert incident["scope"]["evidence"]["count"] == 300
    assert incident["scope"]["summary"] == "300 of 1,000 sends (30.0%) in 5 min vs 2.0% baseline"
    # sender outranks campaign, campaign outranks country and account
    assert [r["kind"] for r in incident["related"]] == ["sender", "campaign"]
    assert incident["recommended_action"] == recommended_action(ErrorClass.PER_USER_MARKETING_LIMIT)
    assert incident["error_class"] == "per_user_marketing_limit"


def test_a_resolved_incident_stays_listed_for_24_hours_of_event_time() -> None:
    book = AlertBook(AlertPolicy(cooldown_seconds=0))
    sale = Scope.for_template("spring_sale")
    book.apply(Evaluation(T0, SPIKE, (finding(sale),)))
    book.apply(Evaluation(T0 + 60, SPIKE, ()))  # clear: resolved
    view = alerts_view(book.state, T0 + 120)
    assert view["open"] == []
    [resolved] = view["resolved"]
    assert resolved["state"] == "resolved" and resolved["resolved_at"] == T0 + 60
    assert resolved["resolved_at_iso"] == "2026-01-01T00:01:00Z"
    assert resolved["scope"]["key"] == "spring_sale"
    assert alerts_view(book.state, T0 + 60 + 24 * 3600)["resolved"] != []
    assert alerts_view(book.state, T0 + 61 + 24 * 3600)["resolved"] == []
    # the saved state keeps the history (a restart or another owner shows it too)
    restored = msgspec.msgpack.decode(book.encode_state(), type=BookState)
    assert alerts_view(restored, T0 + 120)["resolved"] == view["resolved"]


def test_the_history_is_bounded_and_keeps_the_newest() -> None:
    book = AlertBook(AlertPolicy(cooldown_seconds=0))
    for i in range(RESOLVED_MAX + 30):
        group = f"spike:g{i}"
        book.apply(
            Evaluation(T0 + 120 * i, SPIKE, (finding(Scope.for_template(f"t{i}"), group=group),))
        )
        book.apply(Evaluation(T0 + 120 * i + 60, SPIKE, ()))
    assert len(book.state.resolved) == RESOLVED_MAX
    resolved = alerts_view(book.state, T0 + 120 * (RESOLVED_MAX + 30))["resolved"]
    assert resolved[0]["scope"]["key"] == f"t{RESOLVED_MAX + 29}"  # the newest first


def test_a_silent_resolve_is_in_the_history_but_not_notified() -> None:
    book = AlertBook(AlertPolicy(cooldown_seconds=0))
    quiet = msgspec.structs.replace(finding(Scope.for_template("t")), notify_resolve=False)
    book.apply(Evaluation(T0, SPIKE, (quiet,)))
    sent = book.apply(Evaluation(T0 + 60, SPIKE, ()))
    assert sent == []
    assert [r["scope"]["key"] for r in alerts_view(book.state, T0 + 60)["resolved"]] == ["t"]


def test_no_alert_state_at_all() -> None:
    view = alerts_view(BookState(), 0)
    assert view == {"as_of": 0, "as_of_iso": None, "open": [], "resolved": []}
