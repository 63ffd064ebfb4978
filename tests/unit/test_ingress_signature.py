"""Signature and handshake checks (only the exact answer is accepted), replay memory, settings."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import re
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from streams.ingress import (
    Reason,
    RecentBodies,
    app_secret_or_refuse,
    sign,
    verify_handshake,
    verify_signature,
)
from streams.settings import Secret, Settings, SettingsError

SECRET = b"6f1c2a9e0b7d4e3f8a5c1d2e3f4a5b6c"
BODY = b'{"object":"whatsapp_business_account","entry":[]}'
GOOD = "sha256=" + hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()
HEX = GOOD.removeprefix("sha256=")

SIGNATURE_CASES = [
    # the exact lowercase signature Meta sends
    (GOOD, None),
    # no X-Hub-Signature-256 header at all: 401, not 403
    (None, Reason.MISSING_SIGNATURE),
    # header present but empty
    ("", Reason.BAD_SIGNATURE),
    # only the prefix
    ("sha256=", Reason.BAD_SIGNATURE),
    # the bare digest without its prefix
    (HEX, Reason.BAD_SIGNATURE),
    # prefix in the wrong case
    ("SHA256=" + HEX, Reason.BAD_SIGNATURE),
    # upper-case hex digits (Meta sends lowercase; we compare exactly)
    ("sha256=" + HEX.upper(), Reason.BAD_SIGNATURE),
    # truncated by one hex digit
    (GOOD[:-1], Reason.BAD_SIGNATURE),
    # one extra hex digit
    (GOOD + "0", Reason.BAD_SIGNATURE),
    # last digit changed
    (GOOD[:-1] + ("0" if GOOD[-1] != "0" else "1"), Reason.BAD_SIGNATURE),
    # the SHA-1 header format of the older X-Hub-Signature
    ("sha1=" + hmac.new(SECRET, BODY, hashlib.sha1).hexdigest(), Reason.BAD_SIGNATURE),
    # plain SHA-256 of the body, no HMAC key
    ("sha256=" + hashlib.sha256(BODY).hexdigest(), Reason.BAD_SIGNATURE),
    # signed with a different secret
    (sign(b"another-secret", BODY), Reason.BAD_SIGNATURE),
    # the signature of the body re-serialised with different whitespace
    (sign(SECRET, BODY.replace(b",", b", ")), Reason.BAD_SIGNATURE),
    # whitespace around the value (HTTP strips it; the function itself does not)
    (" " + GOOD, Reason.BAD_SIGNATURE),
    # non-ASCII characters must be a mismatch, not a TypeError from compare_digest
    ("sha256=" + HEX[:-1] + "é", Reason.BAD_SIGNATURE),
    # a lone surrogate (undecodable header bytes) must not raise either
    ("sha256=\udcff", Reason.BAD_SIGNATURE),
    # whitespace or a line break inside or after the value (the function does not strip; HTTP
    # strips only leading/trailing blanks, and a line break there is a malformed request)
    (GOOD + " ", Reason.BAD_SIGNATURE),
    (GOOD + "\n", Reason.BAD_SIGNATURE),
    (GOOD + "\r\n", Reason.BAD_SIGNATURE),
    ("\t" + GOOD, Reason.BAD_SIGNATURE),
    ("sha256= " + HEX, Reason.BAD_SIGNATURE),
    (GOOD[:20] + "\n" + GOOD[20:], Reason.BAD_SIGNATURE),
    # the signature of the body with a trailing newline, or gzip-compressed
    (sign(SECRET, BODY + b"\n"), Reason.BAD_SIGNATURE),
    (sign(SECRET, gzip.compress(BODY, mtime=0)), Reason.BAD_SIGNATURE),
    # the body re-serialised by a JSON library (same document, other bytes)
    (sign(SECRET, json.dumps(json.loads(BODY)).encode()), Reason.BAD_SIGNATURE),
    # every value of the header, as aiohttp's getall() gives them: exactly one must be there
    ([GOOD], None),
    ([], Reason.MISSING_SIGNATURE),
    ([GOOD, GOOD], Reason.BAD_SIGNATURE),
    (["sha256=" + "0" * 64, GOOD], Reason.BAD_SIGNATURE),
    ([GOOD, "sha256=" + "0" * 64], Reason.BAD_SIGNATURE),
    # two values folded into one by a proxy
    (GOOD + ", " + GOOD, Reason.BAD_SIGNATURE),
]


@pytest.mark.parametrize(("header", "expected"), SIGNATURE_CASES)
def test_signature_cases(header: str | list[str] | None, expected: Reason | None) -> None:
    assert verify_signature(SECRET, BODY, header) is expected


def test_the_body_of_a_gzip_request_is_checked_as_sent() -> None:
    """A signature over the decompressed body does not verify the compressed bytes."""
    assert verify_signature(SECRET, gzip.compress(BODY), GOOD) is Reason.BAD_SIGNATURE


def test_comparisons_are_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Signature and verify token are compared with hmac.compare_digest, never ``==``."""
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("streams.ingress.hmac.compare_digest", spy)
    wrong = "sha256=" + "0" * 64
    assert verify_signature(SECRET, BODY, GOOD) is None
    assert verify_signature(SECRET, BODY, wrong) is Reason.BAD_SIGNATURE
    assert verify_handshake(OK, TOKEN) is None
    assert calls == [
        (GOOD.encode(), GOOD.encode()),
        (GOOD.encode(), wrong.encode()),
        (TOKEN.encode(), TOKEN.encode()),
    ]


def test_sign_is_the_documented_format() -> None:
    """``sha256=`` followed by 64 lowercase hex digits of HMAC-SHA256(app secret, raw body)."""
    assert sign(SECRET, BODY) == GOOD
    assert re.fullmatch("sha256=[0-9a-f]{64}", sign(b"k", b""))


TOKEN = "my-verify-token"
OK = {"hub.mode": "subscribe", "hub.verify_token": TOKEN, "hub.challenge": "1158201444"}

HANDSHAKE_CASES = [
    # the handshake as Meta sends it
    (OK, TOKEN, None),
    # wrong token
    ({**OK, "hub.verify_token": "guess"}, TOKEN, Reason.BAD_TOKEN),
    # the right token with a suffix (no prefix matching)
    ({**OK, "hub.verify_token": TOKEN + "x"}, TOKEN, Reason.BAD_TOKEN),
    # a prefix of the right token
    ({**OK, "hub.verify_token": TOKEN[:-1]}, TOKEN, Reason.BAD_TOKEN),
    # token in a different case
    ({**OK, "hub.verify_token": TOKEN.upper()}, TOKEN, Reason.BAD_TOKEN),
    # no token parameter
    ({k: v for k, v in OK.items() if k != "hub.verify_token"}, TOKEN, Reason.BAD_TOKEN),
    # nothing configured: refused even when the request's token is empty too
    ({**OK, "hub.verify_token": ""}, "", Reason.BAD_TOKEN),
    # nothing configured: refused whatever the request says
    (OK, "", Reason.BAD_TOKEN),
    # mode is not subscribe
    ({**OK, "hub.mode": "unsubscribe"}, TOKEN, Reason.BAD_HANDSHAKE),
    # no mode
    ({k: v for k, v in OK.items() if k != "hub.mode"}, TOKEN, Reason.BAD_HANDSHAKE),
    # no challenge to echo
    ({k: v for k, v in OK.items() if k != "hub.challenge"}, TOKEN, Reason.BAD_HANDSHAKE),
    # an empty challenge
    ({**OK, "hub.challenge": ""}, TOKEN, Reason.BAD_HANDSHAKE),
    # a non-ASCII token must be a mismatch, not a TypeError
    ({**OK, "hub.verify_token": "tökén"}, TOKEN, Reason.BAD_TOKEN),
    # a non-ASCII configured token matches itself
    ({**OK, "hub.verify_token": "tökén"}, "tökén", None),
]


@pytest.mark.parametrize(("query", "configured", "expected"), HANDSHAKE_CASES)
def test_handshake_cases(query: dict[str, str], configured: str, expected: Reason | None) -> None:
    assert verify_handshake(query, configured) is expected


def test_no_app_secret_refuses_to_start_with_one_line() -> None:
    with pytest.raises(SettingsError) as raised:
        app_secret_or_refuse(Settings(), insecure=False)
    message = str(raised.value)
    assert "DELIVERY_MONITOR_APP_SECRET" in message and "\n" not in message


def test_insecure_flag_only_disables_the_check_when_no_secret_is_set() -> None:
    assert app_secret_or_refuse(Settings(), insecure=True) is None
    configured = Settings(app_secret=Secret("s3cret"))
    assert app_secret_or_refuse(configured, insecure=True) == b"s3cret"
    assert app_secret_or_refuse(configured, insecure=False) == b"s3cret"


# Secrets are text without NUL: HMAC pads short keys with zero bytes, so b"k" and b"k\0" are the
# same key by design; Meta's app secrets are hex strings.
secrets = st.text(st.characters(min_codepoint=1, exclude_categories=["Cs"]), min_size=1)
bodies = st.binary(max_size=2048)


@given(secret=secrets, body=bodies, other_secret=secrets, other_body=bodies)
def test_a_body_verifies_only_with_its_own_signature(
    secret: str, body: bytes, other_secret: str, other_body: bytes
) -> None:
    key, other_key = secret.encode(), other_secret.encode()
    assert verify_signature(key, body, sign(key, body)) is None
    assume((key, body) != (other_key, other_body))
    assert verify_signature(key, body, sign(other_key, other_body)) is Reason.BAD_SIGNATURE


@given(body=bodies, position=st.integers(min_value=0), replacement=st.characters())
def test_changing_any_character_of_a_signature_breaks_it(
    body: bytes, position: int, replacement: str
) -> None:
    good = sign(SECRET, body)
    i = position % len(good)
    assume(replacement != good[i])
    assert verify_signature(SECRET, body, good[:i] + replacement + good[i + 1 :]) is not None


# --- replay memory -----------------------------------------------------------------------------


def test_recent_bodies_never_hold_more_than_their_cap() -> None:
    """Ten times more distinct bodies than the cap: the newest ``cap`` are remembered, no more."""
    recent = RecentBodies(100)
    digests = [hashlib.sha256(b"%d" % i).digest() for i in range(1_000)]
    for i, digest in enumerate(digests):
        recent.add(digest)
        assert len(recent) == min(i + 1, 100)
    assert [d in recent for d in digests] == [False] * 900 + [True] * 100
    recent.add(digests[-1])  # a repeat takes no second slot
    assert len(recent) == 100


def test_a_zero_cap_remembers_nothing() -> None:
    recent = RecentBodies(0)
    recent.add(hashlib.sha256(b"x").digest())
    assert len(recent) == 0 and hashlib.sha256(b"x").digest() not in recent


def test_ingress_settings_from_the_environment() -> None:
    prefix = "DELIVERY_MONITOR_INGRESS_"

    def values(s: Settings) -> tuple[float, float, int]:
        return s.ingress_read_timeout_s, s.ingress_idle_timeout_s, s.ingress_recent_bodies

    assert values(Settings()) == values(Settings.from_env({})) == (10.0, 75.0, 100_000)
    env = {
        prefix + "READ_TIMEOUT": "3",
        prefix + "IDLE_TIMEOUT": "60",
        prefix + "RECENT_BODIES": "0",
    }
    assert values(Settings.from_env(env)) == (3.0, 60.0, 0)
    bad = [("READ_TIMEOUT", "0"), ("IDLE_TIMEOUT", "x"), ("RECENT_BODIES", "-1")]
    for name, value in bad:
        with pytest.raises(SettingsError, match=prefix + name):
            Settings.from_env({prefix + name: value})
