"""Hostile input against the webhook ingress over real HTTP, in front of the real broker.

A seeded generator sends a few thousand hostile requests (random and mutated bodies, deep JSON,
invalid UTF-8, wrong and duplicated signatures, odd content types and codings, malformed HTTP,
unknown routes, handshakes, truncated bodies, huge bodies, replays) to ``delivery-monitor
ingress`` running as users run it, in its own process. Each request's answer is known in
advance, so the test asserts the exact status of every request, the exact rejection counters by
reason, that Kafka holds exactly the correctly signed bodies once each, and that the process's
resident memory stays bounded. Slow clients, signature bypass attempts and replays have their own
tests on an in-process ingress.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import hmac
import json
import os
import random
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from prometheus_client.parser import text_string_to_metric_families
from test_ingress import TOKEN, create_topic, read_topic, serve, webhook

from streams.core import ParseError, parse_webhook
from streams.ingress import MAX_BODY_BYTES, STATUS, Reason, sign, verify_handshake
from streams.settings import Secret, Settings
from streams.topics import TopicSpec, ensure_topics
from testkit.worker import REPO, free_port, unique_env, wait_until

pytestmark = [pytest.mark.kafka]

SECRET = "test-app-secret-9f8e7d"  # the secret test_ingress.serve() configures
KEY = SECRET.encode()
HOST = "127.0.0.1"
FIXTURES = REPO / "tests" / "fixtures" / "whatsapp"
SAMPLES = [path.read_bytes() for path in sorted(FIXTURES.glob("*.json"))]
REJECTIONS = "whatsapp_monitor_ingress_rejections_total"
REQUESTS = "whatsapp_monitor_ingress_requests_total"
DUPLICATES = "whatsapp_monitor_ingress_duplicates_total"
IN_FLIGHT = "whatsapp_monitor_ingress_requests_in_flight"


# --- raw HTTP ----------------------------------------------------------------------------------


def http(
    method: bytes = b"POST",
    path: bytes = b"/webhook",
    headers: list[bytes] | None = None,
    body: bytes = b"",
    length: bool = True,
) -> bytes:
    """A request as bytes on the wire; every header line exactly as given (no checks)."""
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: ingress", b"Connection: close"]
    lines += headers or []
    if length:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def signed(body: bytes, *extra: bytes, signature: bytes | None = None) -> list[bytes]:
    """Headers of a JSON POST of ``body``, signed correctly unless ``signature`` is given."""
    value = sign(KEY, body).encode() if signature is None else signature
    return [b"Content-Type: application/json", b"X-Hub-Signature-256: " + value, *extra]


async def exchange(port: int, data: bytes, *, half_close: bool = False) -> int:
    """Send ``data`` on a fresh connection; the response's status, 0 if none came."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            await writer.drain()
            if half_close:
                writer.write_eof()
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)  # a hang guard
        except (asyncio.IncompleteReadError, ConnectionError):
            return 0
        return int(head.split(b" ", 2)[1])
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def send_huge_chunked(port: int, total: int) -> tuple[int, int]:
    """A chunked body of ``total`` bytes, sent until the server answers: (status, bytes sent)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    headers = signed(b"x", b"Transfer-Encoding: chunked", signature=b"sha256=" + b"0" * 64)
    writer.write(http(headers=headers, length=False))
    answer = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
    chunk = b"10000\r\n" + b"[" * 0x10000 + b"\r\n"
    sent = 0
    try:
        while sent < total and not answer.done():
            writer.write(chunk)
            await writer.drain()
            sent += 0x10000
            # drain() does not yield while the socket takes everything (the server reads and
            # drops a refused body's rest for a while): let the answer be read once it is there
            await asyncio.sleep(0)
        if not answer.done():
            writer.write(b"0\r\n\r\n")
    except ConnectionError:
        pass
    try:
        head = await asyncio.wait_for(answer, 60)
        return int(head.split(b" ", 2)[1]), sent
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


# --- the ingress as its own process ------------------------------------------------------------


@dataclass
class IngressProcess:
    port: int
    topic: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.port}{path}", timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = self.get("/metrics")[1].decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def rejections(self) -> Counter[str]:
        found = Counter[str]()
        for (name, labels), value in self.samples().items():
            if name == REJECTIONS and value:
                found[dict(labels)["reason"]] = int(value)
        return found

    def memory_kib(self) -> tuple[int, int]:
        """(resident set size, its peak so far) of the process, in KiB."""
        fields = dict(
            line.split(":", 1)
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
        )
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


@contextlib.contextmanager
def ingress_subprocess(bootstrap: str, workdir: Path) -> Iterator[IngressProcess]:
    """``delivery-monitor ingress`` in its own process group, on a fresh raw topic."""
    topic = asyncio.run(create_topic(bootstrap))  # two partitions, 4 MB records
    env = unique_env(bootstrap, workdir / "state")
    env.update(
        {
            "DELIVERY_MONITOR_TOPIC_RAW": topic,
            "DELIVERY_MONITOR_APP_SECRET": SECRET,
            "DELIVERY_MONITOR_VERIFY_TOKEN": TOKEN,
            "DELIVERY_MONITOR_INGRESS_READ_TIMEOUT": "1",
        }
    )
    port = free_port()
    log_path = workdir / "ingress.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "ingress", "--port", str(port)],
            env={**os.environ, **env},
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    ingress = IngressProcess(port, topic, proc, log_path)

    def healthy() -> bool:
        assert proc.poll() is None, log_path.read_text()
        with contextlib.suppress(OSError):
            return ingress.get("/health")[0] == 200
        return False

    try:
        wait_until(healthy, 90, "the ingress process to be healthy")
        yield ingress
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


@pytest.fixture
def ingress_process(kafka_bootstrap: str, tmp_path: Path) -> Iterator[IngressProcess]:
    with ingress_subprocess(kafka_bootstrap, tmp_path) as ingress:
        yield ingress


@pytest.fixture(scope="module")
def shared_ingress(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IngressProcess]:
    """One ingress process for the many one-request tests."""
    with ingress_subprocess(kafka_bootstrap, tmp_path_factory.mktemp("ingress")) as ingress:
        yield ingress


# --- the generator -----------------------------------------------------------------------------


@dataclass
class Case:
    kind: str
    data: bytes
    status: int  # the expected answer (0: the connection closes without one)
    reason: Reason | None = None  # the expected rejection reason, if refused
    stored: bytes | None = None  # the body that must reach Kafka (once)
    half_close: bool = False


@dataclass
class Fuzzer:
    rng: random.Random
    used: set[bytes] = field(default_factory=set)

    def body(self) -> bytes:
        """A body never sent before: mutated samples, random bytes, deep JSON, bad UTF-8."""
        while True:
            rng, sample = self.rng, bytearray(self.rng.choice(SAMPLES))
            shape = rng.choice(["mutated", "random", "deep", "utf8", "bom", "sample_bits"])
            if shape == "mutated":
                for _ in range(rng.randint(1, 6)):
                    at = rng.randrange(len(sample))
                    sample[at : at + rng.randint(0, 3)] = rng.randbytes(rng.randint(0, 3))
                body = bytes(sample)
            elif shape == "random":
                body = rng.randbytes(rng.randint(0, 3000))
            elif shape == "deep":
                depth = rng.choice([1_000, 10_000, 100_000])
                opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
                body = opener * depth + b"1" * rng.randint(0, 5) + closer * depth
            elif shape == "utf8":
                at = rng.randrange(len(sample))
                sample[at:at] = rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf"])
                body = bytes(sample)
            elif shape == "bom":
                body = b"\xef\xbb\xbf" + bytes(sample) + b" " * rng.randint(0, 9)
            else:
                body = bytes(sample) + b"\n" * rng.randint(0, 50)
            if body not in self.used:
                self.used.add(body)
                return body

    def bad_signature(self, body: bytes) -> list[bytes]:
        rng, good = self.rng, sign(KEY, body).encode()
        digest = good.removeprefix(b"sha256=")
        value = rng.choice(
            [
                b"sha256=" + rng.randbytes(32).hex().encode(),
                sign(b"another-secret", body).encode(),
                sign(KEY, body + b"\n").encode(),
                b"sha256=" + digest.upper(),
                good[: rng.randint(0, len(good) - 1)],
                good + rng.choice(b"0123456789abcdef").to_bytes(1, "big"),
                b"sha1=" + hmac.new(KEY, body, hashlib.sha1).hexdigest().encode(),
                b"sha256= " + digest,
                digest,
                bytes(rng.randint(0x21, 0x7E) for _ in range(rng.randint(1, 100))),
                bytes(rng.randint(0x80, 0xFF) for _ in range(rng.randint(1, 40))),
            ]
        )
        if rng.random() < 0.2:  # the right signature, but not alone
            extra = b"X-Hub-Signature-256: " + good
            return [*signed(body, signature=value), extra]
        return signed(body, signature=value)

    def benign_headers(self) -> list[bytes]:
        """Random but well-formed extra headers, which must change nothing.

        (aiohttp refuses a repeated User-Agent, Host, Content-Type... as a malformed request.)
        """
        rng = self.rng
        names = [b"X-Forwarded-For", b"User-Agent", b"X-Random", b"Accept", b"X-Hub-Signature"]
        return [
            name + b": " + bytes(rng.randint(0x21, 0x7E) for _ in range(20))
            for name in rng.sample(names, rng.randint(0, len(names)))
        ]

    def malformed(self) -> bytes:
        """Requests aiohttp's HTTP parser refuses (400) before any handler runs."""
        rng, body = self.rng, b'{"x":1}'
        good = signed(body)
        return rng.choice(
            [
                lambda: http(headers=[*good, b"X-Bad: a\x00b"], body=body),
                lambda: http(headers=[*good, b"X-Bad: a\rb"], body=body),
                lambda: http(headers=[*good, b"X Bad: 1"], body=body),
                lambda: http(headers=[*good, b"X-Hub-Signature-256 : x"], body=body),
                lambda: http(headers=[*good, b"X-Pad: " + b"p" * 9000], body=body),
                lambda: http(headers=[*good, *(b"X-%d: 1" % i for i in range(200))], body=body),
                lambda: http(headers=[*good, b"Transfer-Encoding: chunked"], body=body),
                lambda: http(headers=[*good, b"Content-Length: 7"], body=body),
                lambda: http(headers=[*good, b"Content-Length: -1"], length=False),
                lambda: http(headers=[*good, b"Content-Length: 1x"], length=False),
                lambda: http(
                    headers=[*good, b"Transfer-Encoding: chunked"],
                    body=b"zz\r\n" + body + b"\r\n0\r\n\r\n",
                    length=False,
                ),
                lambda: http(path=b"/web hook", headers=good, body=body),
                lambda: http(headers=good, body=body).replace(b"HTTP/1.1", b"HTTP/9.9", 1),
                lambda: b"\x01" + rng.randbytes(rng.randint(0, 200)) + b"\r\n\r\n",
                lambda: b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + rng.randbytes(64),
            ]
        )()

    def handshake(self) -> Case:
        rng = self.rng
        query = {
            "hub.mode": rng.choice(["subscribe", "subscribe", "unsubscribe", "", "x"]),
            "hub.verify_token": rng.choice([TOKEN, TOKEN, TOKEN + "x", "", "guess"]),
            "hub.challenge": rng.choice(["1158201444", str(rng.randint(0, 10**9)), ""]),
        }
        query = {k: v for k, v in query.items() if rng.random() < 0.9}
        reason = verify_handshake(query, TOKEN)
        path = b"/webhook?" + "&".join(f"{k}={v}" for k, v in query.items()).encode()
        status = 200 if reason is None else STATUS[reason]
        return Case("handshake", http(b"GET", path, length=False), status, reason)

    def case(self) -> Case:
        rng = self.rng
        kind = rng.choices(
            [
                "signed", "unsigned", "bad_signature", "content_type", "coding", "malformed",
                "no_route", "handshake", "truncated", "announced_too_large",
            ],
            weights=[30, 6, 15, 6, 6, 12, 6, 6, 5, 3],
        )[0]  # fmt: skip
        body = self.body()
        if kind == "signed":
            data = http(headers=[*signed(body), *self.benign_headers()], body=body)
            return Case(kind, data, 200, stored=body)
        if kind == "unsigned":
            headers = [b"Content-Type: application/json", *self.benign_headers()]
            return Case(kind, http(headers=headers, body=body), 401, Reason.MISSING_SIGNATURE)
        if kind == "bad_signature":
            data = http(headers=self.bad_signature(body), body=body)
            return Case(kind, data, 403, Reason.BAD_SIGNATURE)
        if kind == "content_type":
            value = rng.choice(
                [b"text/plain", b"application/xml", b"multipart/form-data; boundary=x",
                 b"application/jsonx", b"json", b"", b"application/x-www-form-urlencoded"]
            )  # fmt: skip
            headers = [b"Content-Type: " + value, signed(body)[1]]
            data = http(headers=headers, body=body)
            return Case(kind, data, 415, Reason.UNSUPPORTED_MEDIA_TYPE)
        if kind == "coding":
            coding = rng.choice(
                [b"Content-Encoding: gzip", b"Content-Encoding: deflate", b"Content-Encoding: br",
                 b"Content-Encoding: identity, gzip", b"Content-Encoding: x-custom"]
            )  # fmt: skip
            data = http(headers=[*signed(body), coding], body=body)
            return Case(kind, data, 415, Reason.UNSUPPORTED_MEDIA_TYPE)
        if kind == "malformed":
            return Case(kind, self.malformed(), 400, Reason.MALFORMED_REQUEST)
        if kind == "no_route":
            if rng.random() < 0.5:
                method = rng.choice([b"PUT", b"DELETE", b"PATCH", b"OPTIONS"])
                data = http(method, headers=signed(body), body=body)
                return Case(kind, data, 405, Reason.NO_ROUTE)
            path = b"/" + bytes(rng.choice(b"abcdefgz") for _ in range(rng.randint(1, 12)))
            data = http(rng.choice([b"GET", b"POST"]), path + b"x", signed(body), body)
            return Case(kind, data, 404, Reason.NO_ROUTE)
        if kind == "handshake":
            return self.handshake()
        if kind == "truncated":  # announces more than it sends, then closes: no answer
            data = http(
                headers=[*signed(body), b"Content-Length: %d" % (len(body) + 10)], length=False
            )
            return Case(kind, data + body, 0, Reason.BAD_REQUEST, half_close=True)
        size = MAX_BODY_BYTES + rng.randint(1, 10**9)  # announced, never sent
        data = http(headers=[*signed(body), b"Content-Length: %d" % size], length=False)
        return Case(kind, data, 413, Reason.TOO_LARGE)


async def run_cases(port: int, cases: list[Case], concurrency: int = 16) -> list[int]:
    statuses = [-1] * len(cases)
    queue = iter(range(len(cases)))

    async def client() -> None:
        for i in queue:
            statuses[i] = await exchange(port, cases[i].data, half_close=cases[i].half_close)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return statuses


def assert_answers(cases: list[Case], statuses: list[int]) -> None:
    wrong = [
        (c.kind, c.data[:300], c.status, status)
        for c, status in zip(cases, statuses, strict=True)
        if status != c.status
    ]
    assert not wrong, f"{len(wrong)} unexpected answers, e.g. {wrong[:5]}"


def rejections_expected(cases: list[Case]) -> Counter[str]:
    return Counter(c.reason.value for c in cases if c.reason is not None)


async def test_fuzzed_requests_are_answered_as_expected_counted_and_memory_stays_bounded(
    ingress_process: IngressProcess, kafka_bootstrap: str
) -> None:
    """3,400 seeded hostile requests, replays and 64 MB uploads: every answer as predicted, every
    refusal counted by reason, Kafka holds the signed bodies once each, memory stays bounded."""
    ingress, port = ingress_process, ingress_process.port
    fuzzer = Fuzzer(random.Random(20_260_510))
    warmup = [fuzzer.case() for _ in range(400)]
    cases = [fuzzer.case() for _ in range(3_000)]

    assert_answers(warmup, await run_cases(port, warmup))
    rss_before, peak_before = ingress.memory_kib()

    assert_answers(cases, await run_cases(port, cases))
    # Replays of stored bodies: 200 without a second record.
    stored = [c.stored for c in warmup + cases if c.stored is not None]
    replays = [Case("replay", http(headers=signed(body), body=body), 200) for body in stored[::3]]
    assert await run_cases(port, replays) == [200] * len(replays)
    # Chunked bodies of 64 MB, four at a time: 413 once 3 MB are in, the rest never held.
    huge = await asyncio.gather(*(send_huge_chunked(port, 64 << 20) for _ in range(4)))
    assert [status for status, _ in huge] == [413] * 4
    assert all(sent < 16 << 20 for _, sent in huge), huge  # answered long before the end
    rss_after, peak_after = ingress.memory_kib()

    everything = warmup + cases
    expected = rejections_expected(everything) + Counter(too_large=len(huge))

    def counted() -> Counter[str] | None:  # truncated requests are counted once the server sees EOF
        found = ingress.rejections()
        return found if found == expected else None

    wait_until(counted, 30, f"rejection counters {dict(expected)}")
    samples = ingress.samples()
    assert samples[(DUPLICATES, ())] == len(replays)
    post_200 = len(stored) + len(replays)
    assert samples[(REQUESTS, (("code", "200"), ("method", "POST")))] == post_200
    records = await read_topic(kafka_bootstrap, ingress.topic)
    assert Counter(records) == Counter(stored)  # each correctly signed body exactly once

    # The stored bodies include deep JSON, bad UTF-8, BOMs, random bytes: the worker's parser
    # turns each into events or a ParseError (a dead letter), nothing else.
    for body in set(records):
        with contextlib.suppress(ParseError):
            parse_webhook(body)

    log = ingress.log_path.read_text(errors="replace")
    assert "Traceback" not in log and SECRET not in log
    assert "16505551234" not in log  # a phone number of the samples
    growth_mib, peak_growth_mib = (rss_after - rss_before) / 1024, (peak_after - peak_before) / 1024
    print(
        f"\ningress RSS: {rss_before / 1024:.1f} MiB (peak {peak_before / 1024:.1f}) after "
        f"{len(warmup)} warm-up requests, {rss_after / 1024:.1f} MiB (peak {peak_after / 1024:.1f})"
        f" after {len(cases) + len(replays) + len(huge)} more; {len(set(records))} records; "
        f"rejections {dict(sorted(expected.items()))}"
    )
    # Generous bounds that still catch a buffered 64 MB body or ~10 KB kept per request.
    assert growth_mib < 32, f"the ingress grew by {growth_mib:.1f} MiB"
    assert peak_growth_mib < 48, f"the ingress's peak grew by {peak_growth_mib:.1f} MiB"


# --- signature bypass attempts, one request each -----------------------------------------------

_serial = iter(range(50_000, 10**9))


def fresh() -> bytes:
    """A webhook body no other test sends."""
    return webhook(next(_serial))


def chunked(body: bytes, *headers: bytes, trailer: bytes = b"") -> bytes:
    framed = b"%x\r\n%s\r\n0\r\n%s\r\n" % (len(body), body, trailer)
    lines = [b"Content-Type: application/json", *headers, b"Transfer-Encoding: chunked"]
    return http(headers=lines, body=framed, length=False)


def req(*headers: bytes, body: bytes, path: bytes = b"/webhook") -> bytes:
    return http(path=path, headers=[b"Content-Type: application/json", *headers], body=body)


def hub(value: bytes) -> bytes:
    return b"X-Hub-Signature-256: " + value


def sha1(body: bytes) -> bytes:
    """The older ``X-Hub-Signature`` value: ``sha1=`` + HMAC-SHA1 of the body."""
    return b"sha1=" + hmac.new(KEY, body, hashlib.sha1).hexdigest().encode()


def reserialised(body: bytes) -> bytes:
    """The same JSON document as other bytes (what a framework's JSON parser would store)."""
    return json.dumps(json.loads(body)).encode()


def signature(body: bytes) -> bytes:
    return sign(KEY, body).encode()


ZEROS = b"sha256=" + b"0" * 64
GZIP = b"Content-Encoding: gzip"
BAD, MISSING = Reason.BAD_SIGNATURE, Reason.MISSING_SIGNATURE
MALFORMED, MEDIA = Reason.MALFORMED_REQUEST, Reason.UNSUPPORTED_MEDIA_TYPE
Build = Callable[[bytes, bytes], bytes]  # (body, its correct signature) -> the request

# (id, expected status, expected reason, request): the body is stored exactly when 200.
BYPASSES: list[tuple[str, int, Reason | None, Build]] = [
    ("missing-header", 401, MISSING, lambda b, g: req(body=b)),
    ("empty-header", 403, BAD, lambda b, g: req(hub(b""), body=b)),
    ("sha256=-empty-digest", 403, BAD, lambda b, g: req(hub(b"sha256="), body=b)),
    ("sha1=-hmac-sha1", 403, BAD, lambda b, g: req(hub(sha1(b)), body=b)),
    ("sha1=-prefix-sha256-digest", 403, BAD, lambda b, g: req(hub(b"sha1=" + g[7:]), body=b)),
    ("uppercase-hex", 403, BAD, lambda b, g: req(hub(b"sha256=" + g[7:].upper()), body=b)),
    ("uppercase-prefix", 403, BAD, lambda b, g: req(hub(b"SHA256=" + g[7:]), body=b)),
    ("bare-digest", 403, BAD, lambda b, g: req(hub(g[7:]), body=b)),
    ("truncated-digest", 403, BAD, lambda b, g: req(hub(g[:-1]), body=b)),
    ("half-digest", 403, BAD, lambda b, g: req(hub(g[:39]), body=b)),
    ("digest-of-another-body", 403, BAD, lambda b, g: req(hub(signature(b"{}")), body=b)),
    ("space-inside-digest", 403, BAD, lambda b, g: req(hub(g[:30] + b" " + g[30:]), body=b)),
    ("tab-after-prefix", 403, BAD, lambda b, g: req(hub(b"sha256=\t" + g[7:]), body=b)),
    ("newline-in-value", 400, MALFORMED, lambda b, g: req(hub(g[:30] + b"\n" + g[30:]), body=b)),
    ("obs-fold", 400, MALFORMED, lambda b, g: req(hub(g[:30] + b"\r\n " + g[30:]), body=b)),
    ("nul-in-value", 400, MALFORMED, lambda b, g: req(hub(g + b"\x00"), body=b)),
    ("space-before-colon", 400, MALFORMED, lambda b, g: req(b"X-Hub-Signature-256 : " + g, body=b)),
    ("non-ascii-utf8-value", 403, BAD, lambda b, g: req(hub(g[:-1] + "é".encode()), body=b)),
    ("non-utf8-value", 403, BAD, lambda b, g: req(hub(g[:-1] + b"\xff"), body=b)),
    ("two-headers-both-right", 403, BAD, lambda b, g: req(hub(g), hub(g), body=b)),
    ("two-headers-wrong-right", 403, BAD, lambda b, g: req(hub(ZEROS), hub(g), body=b)),
    ("two-headers-right-wrong", 403, BAD, lambda b, g: req(hub(g), hub(ZEROS), body=b)),
    ("two-values-one-header", 403, BAD, lambda b, g: req(hub(g + b", " + g), body=b)),
    ("body-re-serialised", 403, BAD, lambda b, g: req(hub(g), body=reserialised(b))),
    ("trailing-newline-added", 403, BAD, lambda b, g: req(hub(g), body=b + b"\n")),
    ("gzip-signed-decompressed", 415, MEDIA, lambda b, g: req(hub(g), GZIP, body=gzip.compress(b))),
    ("gzip-signed-as-sent", 415, MEDIA,
     lambda b, g: req(hub(signature(gzip.compress(b))), GZIP, body=gzip.compress(b))),
    ("transfer-encoding-gzip", 415, MEDIA, lambda b, g: chunked(b, hub(g)).replace(
        b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked")),
    ("chunked-signed", 200, None, lambda b, g: chunked(b, hub(g))),
    ("chunked-signed-other-body", 403, BAD, lambda b, g: chunked(b, hub(signature(b + b" ")))),
    ("chunked-and-length", 400, MALFORMED, lambda b, g: chunked(b, hub(g), b"Content-Length: 9")),
    ("signature-in-trailer", 401, MISSING, lambda b, g: chunked(b, trailer=hub(g) + b"\r\n")),
    ("signature-in-query", 401, MISSING,
     lambda b, g: req(path=b"/webhook?X-Hub-Signature-256=" + g, body=b)),
    ("only-sha1-header", 401, MISSING, lambda b, g: req(b"X-Hub-Signature: " + sha1(b), body=b)),
    # Not bypasses: the header's value is exactly the signature of the bytes stored.
    ("lower-case-header-name", 200, None, lambda b, g: req(b"x-hub-signature-256: " + g, body=b)),
    ("blanks-around-value", 200, None, lambda b, g: req(hub(b"\t " + g + b" \t"), body=b)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("status", "reason", "build"),
    [case[1:] for case in BYPASSES],
    ids=[case[0] for case in BYPASSES],
)
async def test_signature_bypass_attempt(
    shared_ingress: IngressProcess,
    kafka_bootstrap: str,
    status: int,
    reason: Reason | None,
    build: Build,
) -> None:
    """Each attempt gets its answer, is counted under its reason, and stores nothing."""
    body = fresh()
    before = shared_ingress.rejections()
    assert await exchange(shared_ingress.port, build(body, signature(body))) == status
    expected = before + (Counter({reason.value: 1}) if reason else Counter())
    assert shared_ingress.rejections() == expected
    records = await read_topic(kafka_bootstrap, shared_ingress.topic)
    assert records.count(body) == (1 if status == 200 else 0)


async def test_a_smuggled_second_request_is_not_stored(
    shared_ingress: IngressProcess, kafka_bootstrap: str
) -> None:
    """Bytes after a signed body are not a second, unsigned webhook that gets stored."""
    body, smuggled = fresh(), fresh()
    first = http(headers=signed(body), body=body).replace(b"Connection: close", b"X: y")
    second = req(body=smuggled)  # keeps Connection: close, so the server closes after it
    reader, writer = await asyncio.open_connection(HOST, shared_ingress.port)
    try:
        writer.write(first + second)
        await writer.drain()
        answers = await asyncio.wait_for(reader.read(), 60)  # both answers, then the close
    finally:
        writer.close()
    assert answers.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 401 " in answers
    records = await read_topic(kafka_bootstrap, shared_ingress.topic)
    assert records.count(body) == 1 and smuggled not in records


async def test_insecure_flag_does_not_disable_a_configured_secret(kafka_bootstrap: str) -> None:
    """An unsigned POST is refused when a secret is set, even with --insecure-no-signature."""
    topic = await create_topic(kafka_bootstrap)
    async with serve(kafka_bootstrap, topic, insecure=True) as ingress:
        assert (await ingress.post(webhook(7), signature=None))[0] == 401
        assert await ingress.post(webhook(7)) == (200, "ok")
        assert ingress.metric(REJECTIONS, reason="missing_signature") == 1
    assert await read_topic(kafka_bootstrap, topic) == [webhook(7)]


# --- slow clients ------------------------------------------------------------------------------


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@contextlib.asynccontextmanager
async def connections() -> AsyncIterator[Callable[[int, bytes], Awaitable[Connection]]]:
    """``open(port, data)``: a connection that sent ``data``; all are closed at the end."""
    opened: list[asyncio.StreamWriter] = []

    async def open_(port: int, data: bytes) -> Connection:
        reader, writer = await asyncio.open_connection(HOST, port)
        opened.append(writer)
        writer.write(data)
        await writer.drain()
        return reader, writer

    try:
        yield open_
    finally:
        for writer in opened:
            writer.close()


async def until(probe: Callable[[], bool], what: str) -> None:
    """Poll ``probe`` (a state of the server, not a time window) with a 30 s hang guard."""
    for _ in range(600):
        if probe():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_slow_clients_are_cut_off_counted_and_others_served(kafka_bootstrap: str) -> None:
    """Bodies that stall or trickle get 408; headers that never end and idle connections are
    closed; every other client is served meanwhile and only its bodies are stored."""
    topic = await create_topic(kafka_bootstrap)
    settings = Settings(app_secret=Secret(SECRET), verify_token=Secret(TOKEN)).replace(
        ingress_read_timeout_s=0.5, ingress_idle_timeout_s=0.5
    )
    async with serve(kafka_bootstrap, topic, settings=settings) as ingress, connections() as opened:
        port = port_of(ingress.url)
        body = fresh()
        request = http(headers=signed(body), body=body)
        head = request[: -len(body)]
        body_stalls = [await opened(port, request[: -len(body) // 2]) for _ in range(5)]
        header_stalls = [await opened(port, request[:40]) for _ in range(5)]
        idle = [await opened(port, b"") for _ in range(5)]
        tricklers = [await opened(port, head) for _ in range(5)]

        async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
            """One body byte every 50 ms (the whole body would take over 20 s)."""
            sent = 0
            with contextlib.suppress(ConnectionError):
                for byte in body:
                    if reader.at_eof():
                        break
                    writer.write(bytes([byte]))
                    await writer.drain()
                    sent += 1
                    await asyncio.sleep(0.05)
            return sent

        trickling = [asyncio.ensure_future(trickle(r, w)) for r, w in tricklers]
        served = [fresh() for _ in range(20)]
        for other in served:  # a connection each: a pooled one could meet the idle timeout
            assert await exchange(port, http(headers=signed(other), body=other)) == 200

        for reader, _ in body_stalls + tricklers:  # an answer, then the server closes
            answer = await asyncio.wait_for(reader.read(), 30)
            assert answer.startswith(b"HTTP/1.1 408 ") and answer.endswith(b"read_timeout")
        for reader, _ in header_stalls + idle:  # closed without an answer
            assert await asyncio.wait_for(reader.read(), 30) == b""
        sent = await asyncio.gather(*trickling)
        assert all(0 < n < len(body) for n in sent), sent  # cut off mid-body

        await until(lambda: ingress.metric(IN_FLIGHT) == 0, "no request in flight")
        assert ingress.metric(REJECTIONS, reason="read_timeout") == 10
        for reason in Reason:
            if reason is not Reason.READ_TIMEOUT:
                assert ingress.metric(REJECTIONS, reason=reason.value) == 0, reason
        assert ingress.metric(REQUESTS, method="POST", code="408") == 10
    assert sorted(await read_topic(kafka_bootstrap, topic)) == sorted(served)


async def test_stalled_clients_do_not_hold_up_others(kafka_bootstrap: str) -> None:
    """With 20 requests stuck mid-body, 20 other POSTs are answered and stored; the stuck ones
    are counted when their clients give up."""
    topic = await create_topic(kafka_bootstrap)
    settings = Settings(app_secret=Secret(SECRET), verify_token=Secret(TOKEN)).replace(
        ingress_read_timeout_s=120
    )
    async with serve(kafka_bootstrap, topic, settings=settings) as ingress, connections() as opened:
        port = port_of(ingress.url)
        stuck = []
        for _ in range(20):
            body = fresh()
            stuck.append(await opened(port, http(headers=signed(body), body=body)[:-10]))
        await until(lambda: ingress.metric(IN_FLIGHT) == 20, "20 requests in flight")
        served = [fresh() for _ in range(20)]
        for body in served:
            assert await ingress.post(body) == (200, "ok")
        assert ingress.metric(IN_FLIGHT) == 20  # still waiting for their last 10 bytes
        for _, writer in stuck:
            writer.close()
        await until(lambda: ingress.metric(IN_FLIGHT) == 0, "the stuck requests to end")
        assert ingress.metric(REJECTIONS, reason="bad_request") == 20
        assert ingress.metric(REJECTIONS, reason="read_timeout") == 0
    assert sorted(await read_topic(kafka_bootstrap, topic)) == sorted(served)


# --- replays -----------------------------------------------------------------------------------


async def test_replayed_bodies_are_answered_200_without_a_second_record(
    kafka_bootstrap: str,
) -> None:
    """A captured signed body verifies forever (no timestamp or nonce in Meta's signature): a
    replay flood gets 200s and costs no Kafka writes."""
    topic = await create_topic(kafka_bootstrap)
    body, other = fresh(), fresh()
    async with serve(kafka_bootstrap, topic) as ingress:
        assert await ingress.post(body) == (200, "ok")
        for _ in range(20):
            assert await ingress.post(body) == (200, "ok")
        flood = await asyncio.gather(*(ingress.post(body) for _ in range(200)))
        assert flood == [(200, "ok")] * 200
        assert await ingress.post(other) == (200, "ok")
        assert ingress.metric(DUPLICATES) == 220
        assert ingress.metric(REQUESTS, method="POST", code="200") == 222
        assert ingress.metric("whatsapp_monitor_ingress_produce_latency_seconds_count") == 2
        # A replay with a wrong signature is still a bad signature, not a duplicate.
        assert (await ingress.post(body, signature=sign(b"x", body)))[0] == 403
        assert ingress.metric(DUPLICATES) == 220
    assert sorted(await read_topic(kafka_bootstrap, topic)) == sorted([body, other])


async def test_the_replay_memory_is_bounded_by_its_cap(kafka_bootstrap: str) -> None:
    """With room for 50 digests, 120 distinct bodies leave only the last 50 remembered: a replay
    of the first is stored again, a replay of the last is not."""
    topic = await create_topic(kafka_bootstrap)
    settings = Settings(app_secret=Secret(SECRET), verify_token=Secret(TOKEN))
    settings = settings.replace(ingress_recent_bodies=50)
    bodies = [fresh() for _ in range(120)]
    async with serve(kafka_bootstrap, topic, settings=settings) as ingress:
        for body in bodies:
            assert await ingress.post(body) == (200, "ok")
        assert await ingress.post(bodies[0]) == (200, "ok")  # forgotten: produced again
        assert await ingress.post(bodies[-1]) == (200, "ok")  # remembered
        assert await ingress.post(bodies[70]) == (200, "ok")  # the oldest still remembered
        assert ingress.metric(DUPLICATES) == 1  # bodies[70] was pushed out by bodies[0]
    records = await read_topic(kafka_bootstrap, topic)
    assert Counter(records) == Counter([*bodies, bodies[0], bodies[70]])


async def test_a_body_kafka_refused_is_not_remembered(kafka_bootstrap: str) -> None:
    """503 means not stored: the same body is produced again on Meta's retry, and only once it
    is stored does a repeat become a duplicate."""
    topic = f"ingress-small-{uuid.uuid4().hex[:8]}"
    spec = TopicSpec(topic, 2, {"max.message.bytes": "1024"})
    await ensure_topics(kafka_bootstrap, [spec], 1)
    body = fresh() + b" " * 2_000  # over the topic's record size limit
    async with serve(kafka_bootstrap, topic) as ingress:
        for attempt in (1, 2):
            assert (await ingress.post(body))[0] == 503
            assert ingress.metric(REJECTIONS, reason="kafka_rejected") == attempt
        assert ingress.metric(DUPLICATES) == 0

        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            resource = ConfigResource(
                ConfigResourceType.TOPIC, topic, {"max.message.bytes": str(4 << 20)}
            )
            await admin.alter_configs([resource])
        finally:
            await admin.close()
        retries = 0  # the broker applies the new limit shortly after answering
        while (status := (await ingress.post(body))[0]) == 503:
            retries += 1
            assert retries < 200, "the raised record size limit never applied"
            await asyncio.sleep(0.1)
        assert status == 200
        assert await ingress.post(body) == (200, "ok")
        assert ingress.metric(DUPLICATES) == 1
    assert await read_topic(kafka_bootstrap, topic) == [body]
