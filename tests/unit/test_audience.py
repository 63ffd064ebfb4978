"""The audience pre-flight: reading a list (CSV or plain, the recipient column by name), which
entries are rejected and why, the verdict of each recipient and the summary's arithmetic."""

from __future__ import annotations

import io

import pytest
from test_advice import state_of

from streams.audience_cli import AudienceError, ListStats, _check, entries, parse_at
from streams.core.advice import Advice, advise
from streams.core.audience import AudienceSummary, Group, Verdict, verdict
from streams.core.facts import RecipientFactKind
from streams.sender_api import valid_recipient

T = 1_767_225_600
H = 3_600


def read(text: str, column: str | None = None) -> tuple[list[tuple[int, str]], ListStats]:
    stats = ListStats()
    return list(entries(io.StringIO(text), column, stats)), stats


@pytest.mark.parametrize(
    ("text", "column", "expected"),
    [
        # one per line, no header; blank lines keep the line numbers
        (
            "5511987654321\n\n+55 11 98765-4322\n",
            None,
            [(1, "5511987654321"), (3, "+55 11 98765-4322")],
        ),
        # a one-column header is recognised and skipped
        ("phone\n5511987654321\n", None, [(2, "5511987654321")]),
        # CSV, the column found by name, whatever its position and case
        ("name,WA_ID\nAna,5511987654321\n", None, [(2, "5511987654321")]),
        ("id;recipient;x\n1;US.1349120865530274;y\n", None, [(2, "US.1349120865530274")]),
        ("a\tmsisdn\n1\t4915123000001\n", None, [(2, "4915123000001")]),
        # --column names another one
        ("name,cell\nAna,5511987654321\n", "cell", [(2, "5511987654321")]),
        # quoted cells with commas
        ('name,phone\n"Silva, Ana","+55 (11) 98765-4321"\n', None, [(2, "+55 (11) 98765-4321")]),
        # leading blank lines
        ("\n\nphone\n5511987654321\n", None, [(4, "5511987654321")]),
    ],
)
def test_entries(text: str, column: str | None, expected: list[tuple[int, str]]) -> None:
    assert read(text, column)[0] == expected


def test_a_short_row_is_reported_with_its_line() -> None:
    got, stats = read("name,phone\nAna\nBo,5511987654321\n")
    assert got == [(3, "5511987654321")]
    assert stats.bad == [(2, "no column 2 (the row has 1)")] and stats.lines == 2


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("name,email\nAna,a@b\n", None, "name it with --column"),
        ("name,phone\nAna,1\n", "mobile", "no column 'mobile'"),
    ],
)
def test_a_header_without_the_column_is_an_error(
    text: str, column: str | None, message: str
) -> None:
    with pytest.raises(AudienceError, match=message):
        read(text, column)


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("5511987654321", None),
        ("+1 (212) 555-0123", None),
        ("US.13491208655302741918", None),
        ("", "empty recipient"),
        ("hello", "not a phone number"),
        ("123", "6 to 15 digits"),
        ("+55 11 98765\ufffd", "not UTF-8"),
        ("5511\n987654321", "line break"),
        ("9" * 600, "longer than 512 bytes"),
    ],
)
def test_entry_checks(entry: str, reason: str | None) -> None:
    got = _check(entry)
    assert (got is None) if reason is None else (got is not None and reason in got)


def test_valid_recipient_normalizes() -> None:
    assert valid_recipient("+55 (11) 98765-4321") == "5511987654321"
    with pytest.raises(ValueError):
        valid_recipient("   ")


def test_at_takes_unix_seconds_or_iso_8601() -> None:
    assert parse_at("1767225600") == T
    assert parse_at("2026-01-01T00:00:00Z") == T
    assert parse_at("2026-01-01T00:00:00") == T  # UTC when no zone is given


def _advice(*facts: tuple[RecipientFactKind, int], at: int, is_us: bool = False) -> Advice:
    return advise(state_of(*facts) if facts else None, "5511987654321", at, is_us=is_us)


K = RecipientFactKind


def test_verdict_groups() -> None:
    now = verdict(0, _advice((K.MARKETING_DELIVERED, T - H), at=T), "BR")
    assert (now.group, now.tier, now.known, now.hits_131049) == (
        Group.SEND_NOW,
        "cooling",
        True,
        False,
    )
    wait = verdict(1, _advice((K.LIMIT_FAILURE, T - H), at=T), "BR")
    assert (wait.group, wait.reason, wait.not_before, wait.hits_131049) == (
        Group.WAIT,
        "per_user_limit_cooldown",
        T - H + 24 * H,
        True,
    )
    us = verdict(2, _advice(at=T, is_us=True), "US")
    assert (us.group, us.reason, us.hits_131049, us.not_before) == (
        Group.NEVER,
        "us_marketing_pause",
        True,
        None,
    )
    stop = verdict(3, _advice((K.PREFERENCE_STOP, T - H), at=T), "BR")
    assert (stop.group, stop.reason, stop.hits_131049) == (Group.NEVER, "opted_out", False)
    gone = _advice(*((K.UNDELIVERABLE, T - d * H) for d in (1, 2, 3)), at=T)
    assert verdict(4, gone, "BR").group == Group.NEVER


def test_summary_counts_shares_and_times() -> None:
    s = AudienceSummary(at=T)
    for n in range(6):
        s.add(Verdict(n, "r", Group.SEND_NOW, country="BR", tier="engaged"))
    for n, hours in enumerate((1, 2, 10, 30)):
        s.add(
            Verdict(
                n,
                "r",
                Group.WAIT,
                "per_user_limit_cooldown",
                T + hours * H,
                "IN",
                "cooling",
                hits_131049=True,
            )
        )
    s.add(Verdict(20, "r", Group.NEVER, "us_marketing_pause", country="US", hits_131049=True))
    s.add(Verdict(21, "bad", error="not a phone number"))
    out = s.to_json()
    assert out["groups"] == {"send_now": 6, "wait": 4, "never": 1}
    assert out["reasons"] == {"never:us_marketing_pause": 1, "wait:per_user_limit_cooldown": 4}
    assert out["countries"] == {"BR": 6, "IN": 4, "US": 1}
    assert out["engagement_tiers"] == {"engaged": 6, "cooling": 4, "unknown": 1}
    assert (out["errors"], out["would_hit_131049_now"], out["would_hit_131049_share"]) == (
        1,
        5,
        0.4545,
    )
    # of the 10 that may be messaged at all: 6 now, then 1 h, 2 h, 10 h, 30 h later
    assert out["may_be_messaged_by"] == {"50%": T, "90%": T + 10 * H, "100%": T + 30 * H}
