"""The alert lifecycle (AlertBook), incident grouping, notification records and Slack rendering."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import msgspec

from streams.core.alerts import (
    AlertBook,
    AlertPolicy,
    Evaluation,
    Evidence,
    Finding,
    Notification,
    NotificationKind,
    Scope,
    Verdict,
    decode_notification,
    encode_notification,
)
from streams.core.catalog import ErrorClass, recommended_action
from streams.core.detector import SpikeDetector
from streams.core.slack_format import render_slack_message

RULES = frozenset({"spike"})
LIMIT = "per_user_marketing_limit"
GROUP = "spike:per_user_marketing_limit"
T0 = 1_751_000_000 // 3600 * 3600
M0 = T0 // 60
DAY_MINUTES = 24 * 60
SALE = Scope.for_template("spring_sale")
GRAFANA = "https://grafana.example.com/"


def finding(
    scope: Scope = SALE,
    verdict: Verdict = Verdict.POSITIVE,
    count: int = 300,
    *,
    for_evaluations: int = 2,
    resolve_evaluations: int = 3,
) -> Finding:
    return Finding(
        rule="spike",
        scope=scope,
        group=GROUP,
        verdict=verdict,
        evidence=Evidence(count, 1000, count / 1000, 0.02, 1_440_000, 1e-30, 300),
        title="Per-user marketing limit (131049) spike",
        error_class=ErrorClass.PER_USER_MARKETING_LIMIT,
        for_evaluations=for_evaluations,
        resolve_evaluations=resolve_evaluations,
    )


def step(book: AlertBook, at: int, *findings: Finding) -> list[NotificationKind]:
    return [n.kind for n in book.apply(Evaluation(at, RULES, findings))]


# --- lifecycle ----------------------------------------------------------------------------


def test_fires_only_after_consecutive_positive_evaluations() -> None:
    book = AlertBook()
    assert step(book, T0, finding()) == []
    assert [a.state for a in book.alerts()] == ["pending"]
    assert step(book, T0 + 60, finding(verdict=Verdict.HOLD)) == []  # the streak is broken
    assert book.alerts() == []
    assert step(book, T0 + 120, finding()) == []
    assert step(book, T0 + 180) == []  # clear: pending dropped
    assert step(book, T0 + 240, finding()) == []
    assert step(book, T0 + 300, finding()) == [NotificationKind.FIRING]


def test_another_error_class_on_the_same_scope_is_its_own_alert() -> None:
    """An opt-out HOLD on the spiking template neither fires nor replaces the 131049 alert."""
    book = AlertBook()
    opt_out_hold = msgspec.structs.replace(
        finding(verdict=Verdict.HOLD, count=10),
        group="spike:opt_out",
        error_class=ErrorClass.OPT_OUT,
        title="Opt-out spike",
    )
    assert opt_out_hold.key != finding().key
    assert step(book, 60, finding(), opt_out_hold) == []
    assert step(book, 120, finding(), opt_out_hold) == [NotificationKind.FIRING]
    for at in (180, 240, 300):
        assert step(book, at, finding(), opt_out_hold) == []
    firing = [a for a in book.alerts() if a.state == "firing"]
    assert [a.error_class for a in firing] == [ErrorClass.PER_USER_MARKETING_LIMIT]


def test_hold_keeps_it_firing_and_clear_evaluations_resolve_it() -> None:
    book = AlertBook()
    step(book, T0, finding())
    assert step(book, T0 + 60, finding()) == [NotificationKind.FIRING]
    for i in range(2, 30):
        assert step(book, T0 + 60 * i, finding(verdict=Verdict.HOLD)) == []
    assert step(book, T0 + 1800) == []
    assert step(book, T0 + 1860) == []
    assert step(book, T0 + 1920, finding(verdict=Verdict.HOLD)) == []  # resets the clear count
    assert step(book, T0 + 1980) == []
    assert step(book, T0 + 2040) == []
    assert step(book, T0 + 2100) == [NotificationKind.RESOLVED]
    assert book.alerts() == []


def test_other_rules_evaluations_do_not_clear_an_alert() -> None:
    book = AlertBook()
    step(book, T0, finding())
    step(book, T0 + 60, finding())
    for i in range(10):
        assert book.apply(Evaluation(T0 + 120 + i, frozenset({"resend_storm"}))) == []
    assert [a.state for a in book.alerts()] == ["firing"]


def test_repeat_interval_renotifies_while_firing() -> None:
    book = AlertBook(AlertPolicy(cooldown_seconds=600, repeat_interval_seconds=3600))
    kinds = []
    for i in range(0, 2 * 3600 + 61, 60):
        kinds += step(book, T0 + i, finding())
    assert kinds == [NotificationKind.FIRING, NotificationKind.REPEAT, NotificationKind.REPEAT]


def test_cooldown_holds_back_a_refire_and_sends_it_when_it_ends() -> None:
    book = AlertBook(AlertPolicy(cooldown_seconds=600))
    f = finding(for_evaluations=1, resolve_evaluations=1)
    assert step(book, T0, f) == [NotificationKind.FIRING]
    assert step(book, T0 + 60) == [NotificationKind.RESOLVED]
    # fires again 2 minutes after the resolve: held back
    assert step(book, T0 + 180, f) == []
    assert step(book, T0 + 600, f) == []
    notes = book.apply(Evaluation(T0 + 660, RULES, (f,)))  # cooldown over, still firing
    assert [n.kind for n in notes] == [NotificationKind.FIRING]
    assert notes[0].since == T0 + 180  # the real start of the new firing


def test_flapping_inside_the_cooldown_posts_nothing() -> None:
    book = AlertBook(AlertPolicy(cooldown_seconds=600))
    f = finding(for_evaluations=1, resolve_evaluations=1)
    kinds = step(book, T0, f) + step(book, T0 + 60)
    for i in range(2, 9):  # fires and clears every other minute, inside the cooldown
        kinds += step(book, T0 + 60 * i, f) if i % 2 else step(book, T0 + 60 * i)
    assert kinds == [NotificationKind.FIRING, NotificationKind.RESOLVED]
    assert step(book, T0 + 60 * 30) == []
    assert book.state.incidents == {}  # forgotten after the cooldown


def test_notification_ids_are_stable_and_records_encode_to_json() -> None:
    def replay() -> list[Notification]:
        book = AlertBook()
        out = book.apply(Evaluation(T0, RULES, (finding(),)))
        out += book.apply(Evaluation(T0 + 60, RULES, (finding(),)))
        return out

    (note,) = replay()
    assert [n.id for n in replay()] == [note.id] == [f"{GROUP}@{T0 + 60}/1"]
    raw = encode_notification(note)
    assert json.loads(raw)["headline"]["scope"] == {
        "kind": "template",
        "key": "spring_sale",
        "sender": "",
    }
    assert decode_notification(raw) == note


def test_state_survives_a_restart_without_posting_twice() -> None:
    book = AlertBook()
    step(book, T0, finding())
    assert step(book, T0 + 60, finding()) == [NotificationKind.FIRING]
    restored = AlertBook.from_encoded_state(book.encode_state())
    assert step(restored, T0 + 120, finding()) == []
    for i in range(3):
        kinds = step(restored, T0 + 180 + 60 * i)
    assert kinds == [NotificationKind.RESOLVED]


# --- grouping -----------------------------------------------------------------------------


def spike_scenario(book: AlertBook) -> list[Notification]:
    """spring_sale spikes for 10 minutes then recovers; winter_sale (bigger, same sending number
    and country) does not. The spike also moves the number, the country and the account."""
    det = SpikeDetector()
    sender, country = Scope.for_sender("15550001111"), Scope.for_country("BR")
    winter = Scope.for_template("winter_sale")
    spike = range(M0 + DAY_MINUTES, M0 + DAY_MINUTES + 10)
    notes: list[Notification] = []
    for m in range(M0, M0 + DAY_MINUTES + 30):
        sale_errors = 300 if m in spike else 20
        det.observe(SALE, m, 1000, {LIMIT: sale_errors})
        det.observe(winter, m, 3000, {LIMIT: 60})
        det.observe(sender, m, 4000, {LIMIT: sale_errors + 60})
        det.observe(country, m, 4000, {LIMIT: sale_errors + 60})
        if m >= spike[0]:
            notes += book.apply(det.evaluate((m + 1) * 60))
    return notes


RELATED = {"sender:15550001111", "country:BR", "account"}


def test_a_template_spike_is_one_incident_naming_only_the_spiking_template() -> None:
    """One FIRING headlined by the template (the first to fire); the number, country and
    account join the incident silently and are listed in the RESOLVED; winter_sale is never
    named anywhere."""
    notes = spike_scenario(AlertBook())
    assert [n.kind for n in notes] == [NotificationKind.FIRING, NotificationKind.RESOLVED]
    fired, resolved = notes
    assert fired.headline.scope == SALE
    assert resolved.headline.scope == SALE
    assert {str(s.scope) for s in resolved.related} == RELATED
    for note in notes:
        payload = render_slack_message(note, grafana_url=GRAFANA)
        assert "winter_sale" not in encode_notification(note).decode()
        assert "winter_sale" not in json.dumps(payload)


def test_group_wait_collects_the_related_scopes_into_the_first_message() -> None:
    notes = spike_scenario(AlertBook(AlertPolicy(group_wait_seconds=120)))
    fired = [n for n in notes if n.kind is NotificationKind.FIRING]
    assert len(fired) == 1
    (note,) = fired
    assert note.headline.scope == SALE
    assert {str(s.scope) for s in note.related} == RELATED
    assert note.since == note.headline.firing_since  # since: the template's firing
    assert note.since < note.at
    body = json.dumps(render_slack_message(note, grafana_url=GRAFANA))
    assert "15550001111" in body and "BR" in body and "winter_sale" not in body


def test_a_more_specific_scope_joining_later_updates_the_headline() -> None:
    """The template that explains the account's spike (most of its excess errors) takes the
    headline when it starts firing."""
    book = AlertBook()
    account = Scope.for_account()
    f_account = finding(account, count=900, for_evaluations=1, resolve_evaluations=1)
    f_sale = finding(SALE, count=700, for_evaluations=1, resolve_evaluations=1)
    assert step(book, T0, f_account) == [NotificationKind.FIRING]
    assert step(book, T0 + 60, f_account, f_sale) == [NotificationKind.UPDATED]
    assert step(book, T0 + 120, f_account, f_sale) == []
    notes = book.apply(Evaluation(T0 + 180, RULES))
    (resolved,) = notes
    assert resolved.kind is NotificationKind.RESOLVED
    assert resolved.headline.scope == SALE
    assert [s.scope for s in resolved.related] == [account]


def test_a_template_with_a_small_share_of_a_wider_spike_does_not_take_the_headline() -> None:
    """Eight templates of one number spike together: the number heads the incident, not
    whichever template happened to fire; a template carrying most of it would."""
    book = AlertBook()
    sender = Scope.for_sender("PN1")
    templates = [
        finding(Scope.for_template(f"promo_{i}"), count=60, for_evaluations=1) for i in range(8)
    ]
    f_sender = finding(sender, count=480, for_evaluations=1)
    (note,) = book.apply(Evaluation(T0, RULES, (f_sender, *templates)))
    assert note.headline.scope == sender
    assert len(note.related) == 8
    lone = AlertBook()
    (note,) = lone.apply(Evaluation(T0, RULES, (f_sender, finding(count=400, for_evaluations=1))))
    assert note.headline.scope == SALE


# --- Slack rendering ----------------------------------------------------------------------


def fired_note() -> Notification:
    book = AlertBook()
    related = finding(Scope.for_sender("15550001111"), count=320)
    step(book, T0, finding(), related)
    (note,) = book.apply(Evaluation(T0 + 60, RULES, (finding(), related)))
    return note


def test_firing_message_has_the_facts_the_action_and_the_dashboard_link() -> None:
    payload = render_slack_message(fired_note(), grafana_url=GRAFANA, dashboard_path="/d/wa/x")
    assert payload["text"].startswith("[FIRING] Per-user marketing limit (131049) spike")
    blocks = payload["blocks"]
    assert blocks[0]["type"] == "header" and len(blocks[0]["text"]["text"]) <= 150
    assert len(blocks) <= 50
    body = json.dumps(payload)
    for fact in ("spring_sale", "300 of 1,000 sends (30.0%)", "2.0% baseline", "15550001111"):
        assert fact in body
    assert json.dumps(recommended_action(ErrorClass.PER_USER_MARKETING_LIMIT))[1:-1] in body
    (button,) = next(b for b in blocks if b["type"] == "actions")["elements"]
    assert button["url"].startswith("https://grafana.example.com/d/wa/x?from=")
    assert "var-template=spring_sale" in button["url"]
    for block in blocks:
        assert len(block.get("fields", [])) <= 10
        assert len(block.get("text", {}).get("text", "")) <= 3000


def test_the_default_dashboard_link_opens_the_shipped_overview_with_its_variables() -> None:
    """The button's default path is the uid of the dashboard we ship, and every filter it sets
    is one of that dashboard's template variables (a wrong uid is a 404 in Grafana)."""
    root = Path(__file__).resolve().parents[2]
    board = json.loads((root / "dashboards" / "delivery-overview.json").read_text())
    variables = {v["name"] for v in board["templating"]["list"]}
    url = render_slack_message(fired_note(), grafana_url=GRAFANA)["blocks"]
    (button,) = next(b for b in url if b["type"] == "actions")["elements"]
    parts = urlsplit(button["url"])
    assert parts.path.split("/")[1:3] == ["d", board["uid"]]
    names = {k for k, _ in parse_qsl(parts.query)}
    assert "var-template" in names
    assert {n.removeprefix("var-") for n in names if n.startswith("var-")} <= variables


def test_a_spike_judged_early_in_its_minute_says_how_many_seconds() -> None:
    book = AlertBook()
    early = msgspec.structs.replace(
        finding(for_evaluations=1), evidence=Evidence(36, 77, 36 / 77, 0.005, 1_440_000, 1e-12, 15)
    )
    (note,) = book.apply(Evaluation(T0 + 15, RULES, (early,)))
    body = json.dumps(render_slack_message(note, grafana_url=GRAFANA))
    assert "36 of 77 sends (46.8%) in 15 s vs 0.5% baseline" in body
    assert "in 0 min" not in body


def test_resolved_message_is_short_and_in_the_same_style() -> None:
    book = AlertBook()
    f = finding(for_evaluations=1, resolve_evaluations=1)
    step(book, T0, f)
    (note,) = book.apply(Evaluation(T0 + 1500, RULES))
    payload = render_slack_message(note, grafana_url=GRAFANA)
    assert payload["text"].startswith("[RESOLVED] Per-user marketing limit (131049) spike")
    assert "after 25 min" in json.dumps(payload)
    assert len(payload["blocks"]) <= 4
    assert any(b["type"] == "actions" for b in payload["blocks"])


def test_hostile_template_names_are_escaped() -> None:
    book = AlertBook()
    f = finding(Scope.for_template("<!channel> & `x`"), for_evaluations=1)
    (note,) = book.apply(Evaluation(T0, RULES, (f,)))
    payload = render_slack_message(note, grafana_url=GRAFANA)
    texts = json.dumps([b for b in payload["blocks"] if b["type"] != "header"]) + payload["text"]
    assert "<!channel>" not in texts
    assert "&lt;!channel&gt; &amp;" in texts


def test_a_member_left_firing_after_the_headline_resolved_is_not_announced() -> None:
    """A sender-wide spike headed by the number, one of its templates also firing: when the
    number's alert resolves first, no UPDATED names the template (what remains is not a new
    explanation); the RESOLVED, when the template clears too, names the number."""
    book = AlertBook()
    number = Scope.for_sender("15550001111")
    sender, template = finding(number, count=300), finding(SALE, count=100)
    step(book, T0, sender, template)
    (fired,) = book.apply(Evaluation(T0 + 60, RULES, (sender, template)))
    assert fired.headline.scope == number
    sent = []
    for i in range(2, 12):  # the number clears (3 evaluations), the template holds longer
        held = (msgspec.structs.replace(template, verdict=Verdict.HOLD),) if i < 8 else ()
        sent += book.apply(Evaluation(T0 + 60 * i, RULES, held))
    assert [(n.kind, n.headline.scope) for n in sent] == [(NotificationKind.RESOLVED, number)]


def test_a_campaign_carrying_most_of_a_spike_is_named_in_its_message() -> None:
    """The message names the campaign behind at least half of the headline's excess errors
    (over its baseline), and no campaign when none carries that much."""

    def fired(campaign_errors: int) -> str:
        def finding(scope: Scope, count: int) -> Finding:
            return Finding(
                rule="spike",
                scope=scope,
                group="spike:per_user_marketing_limit",
                verdict=Verdict.POSITIVE,
                evidence=Evidence(count, 1000, count / 1000, 0.02, 1_440_000, 1e-30, 300),
                title="131049 spike",
                error_class=ErrorClass.PER_USER_MARKETING_LIMIT,
            )

        found = (finding(SALE, 220), finding(Scope.for_campaign("c-42"), campaign_errors))
        (note,) = AlertBook().apply(Evaluation(T0, frozenset({"spike"}), found))
        assert note.headline.scope == SALE
        return json.dumps(render_slack_message(note, grafana_url=GRAFANA))

    # excess over the 2 % baseline: 200 for the template; 160 (80 %) and 40 (20 %) for c-42
    assert "Mostly campaign `c-42` (80% of the excess errors)" in fired(180)
    assert "Mostly campaign" not in fired(60)
