"""Incidents from alert notifications and their score against scenario labels
(streams/incidents.py): what the alert-quality benchmark and the determinism test count."""

from __future__ import annotations

import msgspec
import pytest

from streams.core.alerts import (
    AlertBook,
    AlertSnapshot,
    AlertState,
    Evaluation,
    Evidence,
    Family,
    Finding,
    Notification,
    NotificationKind,
    Scope,
    Severity,
    Verdict,
    encode_notification,
)
from streams.core.catalog import ErrorClass
from streams.incidents import Headline, alert_kind, compare, covers, incidents_of, score
from streams.scenarios import LIMIT, SPIKE, STANDING, US_PAUSE, Expected

T0 = 1_767_225_600
GROUP = "spike:per_user_marketing_limit"
SMALL = Scope.for_template("promo_small")
NUMBER = Scope.for_sender("106540352240001")
K = NotificationKind


def note(
    kind: NotificationKind,
    at: int,
    scope: Scope = SMALL,
    *,
    incident: str = GROUP,
    since: int = T0 + 1200,
    seq: int = 1,
    rule: str = "spike",
    error_class: ErrorClass = ErrorClass.PER_USER_MARKETING_LIMIT,
    count: int = 27,
) -> bytes:
    snapshot = AlertSnapshot(
        key=f"{incident}|{scope}",
        rule=rule,
        group=incident,
        scope=scope,
        state=AlertState.RESOLVED if kind is K.RESOLVED else AlertState.FIRING,
        title="t",
        evidence=Evidence(count, 60, count / 60, 0.016),
        error_class=error_class,
        severity=Severity.WARNING,
        started_at=since,
        firing_since=since,
    )
    return encode_notification(
        Notification(
            id=f"{incident}@{since}/{seq}",
            kind=kind,
            incident=incident,
            at=at,
            since=since,
            title="t",
            error_class=error_class,
            severity=Severity.WARNING,
            headline=snapshot,
        )
    )


def label(
    kind: str = SPIKE,
    scope: tuple[str, str] = ("template", "promo_small"),
    onset: int = T0 + 1200,
    end: int | None = T0 + 1920,
    **kw: object,
) -> Expected:
    cls = US_PAUSE if kind == STANDING else LIMIT
    return Expected("x", kind, cls, *scope, onset, end, **kw)  # type: ignore[arg-type]


# -- incidents from notifications ---------------------------------------------------------------


def test_an_incident_from_firing_to_resolved_whatever_order_the_records_come_in() -> None:
    records = [
        note(K.RESOLVED, T0 + 2460, seq=3),
        note(K.FIRING, T0 + 1320, NUMBER, seq=1),
        note(K.UPDATED, T0 + 1380, seq=2),
        note(K.FIRING, T0 + 1320, NUMBER, seq=1),  # delivered twice after a crash
    ]
    (i,) = incidents_of(records)
    assert (i.kind, i.rule, i.error_class) == (SPIKE, "spike", LIMIT)
    assert i.fired_at == T0 + 1320 and i.resolved_at == T0 + 2460
    assert str(i.first_headline) == "sender:106540352240001"
    assert str(i.last_headline) == "template:promo_small"
    assert [k for k, _, _ in i.notifications] == ["FIRING", "UPDATED", "RESOLVED"]
    assert i.evidence.startswith("27 of 60 (45.0 %), baseline 1.60 %")


def test_an_incident_that_fires_again_later_is_a_second_one() -> None:
    again = T0 + 3000
    records = [
        note(K.FIRING, T0 + 1260),
        note(K.RESOLVED, T0 + 2000, seq=2),
        note(K.FIRING, again, since=again),
    ]
    first, second = incidents_of(records)
    assert (first.resolved_at, second.fired_at, second.resolved_at) == (T0 + 2000, again, None)
    assert first.key != second.key


def test_incidents_of_what_the_alert_book_writes() -> None:
    """The real lifecycle's records, not hand-made ones: FIRING then RESOLVED."""
    book = AlertBook()
    found = Finding(
        rule="spike",
        scope=SMALL,
        group=GROUP,
        verdict=Verdict.POSITIVE,
        evidence=Evidence(27, 60),
        title="t",
        error_class=ErrorClass.PER_USER_MARKETING_LIMIT,
        for_evaluations=1,
        resolve_evaluations=1,
    )
    raws = [
        encode_notification(n) for n in book.apply(Evaluation(T0, frozenset({"spike"}), (found,)))
    ]
    raws += [encode_notification(n) for n in book.apply(Evaluation(T0 + 60, frozenset({"spike"})))]
    (i,) = incidents_of(raws)
    assert (i.fired_at, i.resolved_at, str(i.last_headline)) == (
        T0,
        T0 + 60,
        "template:promo_small",
    )


@pytest.mark.parametrize("family", list(Family))
def test_the_kind_of_alert_is_its_family(family: Family) -> None:
    n = msgspec.json.decode(note(K.FIRING, T0), type=Notification)
    assert alert_kind(msgspec.structs.replace(n, family=family)) == family.value


# -- scoring ------------------------------------------------------------------------------------


def test_a_labelled_spike_detected_and_resolved() -> None:
    incidents = incidents_of([note(K.FIRING, T0 + 1320), note(K.RESOLVED, T0 + 2460, seq=2)])
    result = score([label()], incidents, data_end=T0 + 3600)
    assert (result.recall, result.precision, result.false) == (1.0, 1.0, [])
    (m,) = result.matches
    assert (m.detection_s, m.resolve_s) == (120, 540)


def test_the_wrong_headline_kind_or_time_is_a_miss_and_a_false_incident() -> None:
    wrong_scope = incidents_of([note(K.FIRING, T0 + 1320, Scope.for_template("spring_sale"))])
    result = score([label()], wrong_scope, data_end=T0 + 3600)
    assert (result.recall, result.precision) == (0.0, 0.0)
    assert "is not template:promo_small" in result.false[0][1]
    as_spike = incidents_of(
        [note(K.FIRING, T0 + 60, NUMBER, incident="us", error_class=ErrorClass.US_MARKETING_PAUSE)]
    )
    standing = label(STANDING, ("sender", "106540352240001"), onset=T0 + 50, end=None)
    result = score([standing], as_spike, data_end=T0 + 3600)
    assert result.true_positives == 0 and result.false[0][1] == "no label of its kind and class"
    too_late = incidents_of([note(K.FIRING, T0 + 1920 + 601)])
    assert score([label()], too_late, data_end=T0 + 3600).true_positives == 0


def test_a_second_incident_about_a_matched_label_is_false() -> None:
    records = [
        note(K.FIRING, T0 + 1320),
        note(K.RESOLVED, T0 + 1500, seq=2),
        note(K.FIRING, T0 + 1800, since=T0 + 1800),
    ]
    result = score([label()], incidents_of(records), data_end=T0 + 3600)
    assert (result.true_positives, len(result.false), result.precision) == (1, 1, 0.5)
    assert result.false[0][1] == "a second incident about 'x'"


def test_an_account_wide_standing_incident_covers_per_number_labels() -> None:
    standing = label(STANDING, ("sender", "n1"), end=None, account_ok=True)
    assert covers(standing, Headline("account"))
    assert covers(standing, Headline("sender", "n1"))
    assert not covers(standing, Headline("sender", "n2"))
    assert not covers(label(), Headline("account"))


def test_one_account_wide_standing_incident_matches_every_number_it_covers() -> None:
    """One US-pause incident for the account (the issue allows one per number or one for the
    account) is the incident of each number's label, and counts once for precision."""
    labels = [
        label(STANDING, ("sender", n), onset=T0 + 50, end=None, account_ok=True)
        for n in ("n1", "n2")
    ]

    def standing_note(scope: Scope) -> bytes:
        raw = note(
            K.FIRING,
            T0 + 60,
            scope,
            incident="us",
            since=T0,
            error_class=ErrorClass.US_MARKETING_PAUSE,
        )
        n = msgspec.json.decode(raw, type=Notification)
        return encode_notification(msgspec.structs.replace(n, family=Family.STANDING))

    one = incidents_of([standing_note(Scope.for_account())])
    result = score(labels, one, data_end=T0 + 3600)
    assert (result.true_positives, result.recall, result.precision) == (2, 1.0, 1.0)
    per_number = incidents_of([standing_note(Scope.for_sender("n1"))])
    assert score(labels, per_number, data_end=T0 + 3600).recall == 0.5


def test_nothing_expected_nothing_raised() -> None:
    result = score([], [], data_end=T0)
    assert (result.recall, result.precision, result.false) == (None, None, [])


def test_feeds_compare_by_key_kind_headline_and_firing_minute() -> None:
    paced = incidents_of([note(K.FIRING, T0 + 1320)])
    same_minute = incidents_of([note(K.FIRING, T0 + 1335)])
    later = incidents_of([note(K.FIRING, T0 + 1440)])
    assert compare(paced, same_minute).same
    c = compare(paced, later)
    assert (
        not c.same and c.missing[0][3] == (T0 + 1320) // 60 and c.extra[0][3] == (T0 + 1440) // 60
    )
