"""The overview page's HTML and the summary line, from data shaped as the API returns it:
incidents first, rankings with bars, no script, and every name from a webhook escaped."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

from streams.core.alerts import AlertBook, Evaluation, Evidence, Finding, Scope, Verdict
from streams.core.catalog import ErrorClass, recommended_action
from streams.page import Overview, render, summary_line
from streams.rankings import DIMS, RankingQuery, rank
from streams.views import alerts_view

T0 = 1_767_225_600
HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'


def ranking(kind: str, counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    dim = DIMS[kind]
    total, entries = rank(dim, counts, RankingQuery("1h", None, "limit_errors", 8))
    return {
        "dimension": kind,
        "as_of": T0 + 3600,
        "total": total,
        "entries": entries,
        "partial": False,
    }


def firing_alerts(template: str) -> dict[str, Any]:
    book = AlertBook()
    finding = Finding(
        rule="spike",
        scope=Scope.for_template(template),
        group="spike:per_user_marketing_limit",
        verdict=Verdict.POSITIVE,
        evidence=Evidence(120, 300, 0.4, 0.01, 20_000, 1e-40, 300),
        title="Per-user marketing limit (131049) spike",
        error_class=ErrorClass.PER_USER_MARKETING_LIMIT,
    )
    book.apply(Evaluation(T0 + 3000, frozenset({"spike"}), (finding,)))
    return alerts_view(book.state, T0 + 3300)


def overview(template: str = "promo_spike", alerts: dict[str, Any] | None = None) -> Overview:
    spike = {"attempted": 300, "sent": 180, "failed.per_user_marketing_limit": 120}
    calm = {"attempted": 900, "sent": 890, "failed.per_user_marketing_limit": 10}
    return Overview(
        app_id="whatsapp-delivery-monitor",
        grafana_url="http://grafana.example:3000/",
        now=T0 + 3600,
        alerts=alerts if alerts is not None else firing_alerts(template),
        rankings={
            "templates": ranking("templates", {template: spike, "promo_01": calm}),
            "senders": ranking("senders", {"1065": calm}),
            "countries": ranking("countries", {"BR": spike}),
            "campaigns": ranking("campaigns", {f"camp-{template}": spike}),
        },
        recipients_in_cooldown=42,
        recipients_opted_out=7,
        templates_paused=1,
        lag={
            "as_of": T0 + 3590,
            "as_of_iso": "2026-01-01T00:59:50Z",
            "topics": [{"group": "app-ingest", "topic": "raw", "records": 12, "seconds": 3.5}],
            "partitions": [],
        },
        counters={"statuses received": 12_345},
    )


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(attrs)


def parse(page: str) -> Tags:
    tags = Tags()
    tags.feed(page)
    return tags


def test_the_page_shows_the_incident_first_then_the_rankings_recipients_and_pipeline() -> None:
    page = render(overview())
    order = [page.index(f'id="{s}"') for s in ("incidents", "rankings", "recipients", "pipeline")]
    assert order == sorted(order)
    incidents = page[page.index('id="incidents"') : page.index('id="rankings"')]
    assert "Per-user marketing limit (131049) spike: template promo_spike" in incidents
    assert "120 of 300 sends (40.0%) in 5 min vs 1.0% baseline" in incidents
    assert "since 2026-01-01T00:50:00Z" in incidents
    action = recommended_action(ErrorClass.PER_USER_MARKETING_LIMIT)
    assert action.split(";")[0] in incidents
    assert "var-template=promo_spike" in incidents  # the Grafana link narrowed to the scope
    templates = page[page.index('id="templates"') :]
    assert templates.index("promo_spike") < templates.index("promo_01")  # most limit errors first
    assert "40.0%" in templates and "<svg" in templates
    assert "42" in page and "in a 131049 cool-down" in page
    assert "app-ingest" in page and "3.5 s" in page
    assert '<meta http-equiv="refresh" content="30">' in page
    assert 'href="/v1/alerts"' in page and 'href="/v1/templates?window=1h' in page
    assert 'href="http://grafana.example:3000/d/wdm-delivery-overview"' in page


def test_names_from_webhooks_are_escaped_and_the_page_has_no_script() -> None:
    page = render(overview(HOSTILE))
    tags = parse(page)
    assert "script" not in tags.tags and "img" not in tags.tags
    assert not any(name.startswith("on") for name, _ in tags.attrs)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert HOSTILE not in page
    # in links the name is percent-encoded
    assert "/v1/templates/%3Cscript%3Ealert%281%29" in page


def test_nothing_firing_and_an_unreachable_alerting_worker_are_said_plainly() -> None:
    quiet = {"as_of": T0, "as_of_iso": "x", "open": [], "resolved": []}
    assert "Nothing is firing." in render(overview(alerts=quiet))
    gone = overview()
    gone.alerts = None
    assert "did not answer" in render(gone)


def test_empty_rankings_say_there_is_no_traffic() -> None:
    o = overview()
    o.rankings = {kind: ranking(kind, {}) for kind in DIMS}
    assert render(o).count("No traffic in the last hour.") == 4


def test_summary_line() -> None:
    line = summary_line(overview(), 60.0, 37.73, 12, "http://127.0.0.1:6066/")
    assert line == (
        "summary: 37.7 statuses/s, 12 limit errors in the last 60 s, 1 open incident "
        "(Per-user marketing limit (131049) spike: template promo_spike, since "
        "2026-01-01T00:50:00Z), consumer lag 3.5 s | http://127.0.0.1:6066/"
    )
    quiet = overview(alerts={"as_of": 0, "as_of_iso": None, "open": [], "resolved": []})
    quiet.lag = None
    assert re.search(r"0 open incidents \| ", summary_line(quiet, 60.0, 0.0, 0, "u"))
