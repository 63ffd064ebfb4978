"""The webhook ingress over real HTTP in front of a real broker: what is stored, what is refused."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from streams.ingress import (
    MAX_BODY_BYTES,
    SIGNATURE_HEADER,
    create_ingress_app,
    kafka_producer_factory,
    sign,
)
from streams.localkafka import LocalKafka
from streams.settings import Secret, Settings, SettingsError
from streams.topics import TopicSpec, ensure_topics
from testkit.worker import REPO

pytestmark = [pytest.mark.kafka]

SECRET = "test-app-secret-9f8e7d"
TOKEN = "test-verify-token"
PARTITIONS = 2
JSON = "application/json"


def webhook(i: int) -> bytes:
    """A status webhook as Meta sends it; spacing and escapes must survive byte for byte."""
    return (
        b'{"object": "whatsapp_business_account","entry":[{"id":"102290129340398","changes":'
        b'[{"value":{"messaging_product":"whatsapp","metadata":{"phone_number_id":"106540352242922"'
        b'},"statuses":[{"id":"wamid.T%08d","status":"delivered","timestamp":"1751000000",'
        b'"recipient_id":"16505551234","note":"caf\\u00e9 \xc3\xa9"}]},"field":"messages"}]}]}' % i
    )


async def create_topic(bootstrap: str) -> str:
    topic = f"ingress-{uuid.uuid4().hex[:12]}"
    spec = TopicSpec(topic, PARTITIONS, {"max.message.bytes": str(4 * 1024 * 1024)})
    await ensure_topics(bootstrap, [spec], 1)
    return topic


async def read_topic(bootstrap: str, topic: str) -> list[bytes]:
    """Every record value in ``topic`` (all partitions, from the beginning to the end)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        values: list[bytes] = []
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                values.extend(r.value for r in records)
        return values
    finally:
        await consumer.stop()


@dataclass
class Ingress:
    url: str
    topic: str
    registry: CollectorRegistry
    http: aiohttp.ClientSession

    async def post(
        self, body: bytes, signature: str | None = "valid", content_type: str = JSON
    ) -> tuple[int, str]:
        headers = {"Content-Type": content_type}
        if signature == "valid":
            signature = sign(SECRET.encode(), body)
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        data = io.BytesIO(body) if len(body) > 1024 * 1024 else body  # big bodies: no warning
        async with self.http.post(self.url + "/webhook", data=data, headers=headers) as resp:
            return resp.status, await resp.text()

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        async with self.http.get(self.url + path, params=params) as resp:
            return resp.status, await resp.read()

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        assert value is not None, f"{name}{labels} not exported"
        return value


@asynccontextmanager
async def serve(
    bootstrap: str,
    topic: str,
    *,
    settings: Settings | None = None,
    insecure: bool = False,
    send_timeout_s: float = 5.0,
) -> AsyncIterator[Ingress]:
    """The ingress on a free port of 127.0.0.1, talking to ``bootstrap``."""
    settings = settings or Settings(app_secret=Secret(SECRET), verify_token=Secret(TOKEN))
    settings = settings.replace(topic_raw=topic)
    registry = CollectorRegistry()
    app = create_ingress_app(
        settings,
        kafka_producer_factory(bootstrap, send_timeout_s),
        insecure=insecure,
        send_timeout_s=send_timeout_s,
        registry=registry,
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as http:
            yield Ingress(f"http://127.0.0.1:{port}", topic, registry, http)
    finally:
        await runner.cleanup()


async def test_signed_post_is_stored_byte_for_byte(kafka_bootstrap: str) -> None:
    """200 only after Kafka has the exact bytes; JSON with a charset parameter is accepted."""
    topic = await create_topic(kafka_bootstrap)
    body = webhook(1)
    async with serve(kafka_bootstrap, topic) as ingress:
        assert await ingress.post(body, content_type="application/json; charset=UTF-8") == (
            200,
            "ok",
        )
        assert await read_topic(kafka_bootstrap, topic) == [body]
        requests = "whatsapp_monitor_ingress_requests_total"
        assert ingress.metric(requests, method="POST", code="200") == 1
        assert ingress.metric("whatsapp_monitor_ingress_produce_latency_seconds_count") == 1
        assert ingress.metric("whatsapp_monitor_ingress_requests_in_flight") == 0


async def test_bad_signatures_are_refused_and_never_stored(kafka_bootstrap: str) -> None:
    """Missing -> 401; wrong, truncated, wrong-case, other-body -> 403; none reaches Kafka."""
    topic = await create_topic(kafka_bootstrap)
    body = webhook(2)
    good = sign(SECRET.encode(), body)
    cases = [
        (None, 401),  # no X-Hub-Signature-256 header at all
        (sign(b"another-secret", body), 403),  # signed with someone else's secret
        (good[:-1], 403),  # truncated by one hex digit
        (good[: len("sha256=") + 32], 403),  # half a digest
        ("SHA256=" + good[len("sha256=") :], 403),  # prefix in the wrong case
        ("sha256=" + good[len("sha256=") :].upper(), 403),  # upper-case hex
        (good.removeprefix("sha256="), 403),  # bare digest, no prefix
        (sign(SECRET.encode(), body + b" "), 403),  # signature of a different body
        ("", 403),  # empty header
    ]
    async with serve(kafka_bootstrap, topic) as ingress:
        for header, status in cases:
            assert (await ingress.post(body, signature=header))[0] == status, header
        assert await ingress.post(webhook(3)) == (200, "ok")  # the marker that must be alone
        assert await read_topic(kafka_bootstrap, topic) == [webhook(3)]

        rejections = "whatsapp_monitor_ingress_rejections_total"
        assert ingress.metric(rejections, reason="missing_signature") == 1
        assert ingress.metric(rejections, reason="bad_signature") == len(cases) - 1
        assert ingress.metric(rejections, reason="too_large") == 0  # pre-created at 0
        requests = "whatsapp_monitor_ingress_requests_total"
        assert ingress.metric(requests, method="POST", code="401") == 1
        assert ingress.metric(requests, method="POST", code="403") == len(cases) - 1


async def test_subscription_handshake(kafka_bootstrap: str) -> None:
    """The right token gets the challenge back as text/plain; anything else gets 403."""
    topic = await create_topic(kafka_bootstrap)
    ok = {"hub.mode": "subscribe", "hub.verify_token": TOKEN, "hub.challenge": "1158201444"}
    async with serve(kafka_bootstrap, topic) as ingress:
        for path in ("/webhook", "/"):
            async with ingress.http.get(ingress.url + path, params=ok) as resp:
                assert resp.status == 200
                assert resp.content_type == "text/plain"
                assert await resp.text() == "1158201444"
        for wrong in (
            {**ok, "hub.verify_token": "guess"},
            {**ok, "hub.verify_token": TOKEN + "x"},
            {k: v for k, v in ok.items() if k != "hub.verify_token"},
            {**ok, "hub.mode": "unsubscribe"},
        ):
            assert (await ingress.get("/webhook", wrong))[0] == 403
        assert ingress.metric("whatsapp_monitor_ingress_rejections_total", reason="bad_token") == 3
        assert (
            ingress.metric("whatsapp_monitor_ingress_requests_total", method="GET", code="200") == 2
        )


async def test_handshake_refused_when_no_verify_token_is_configured(kafka_bootstrap: str) -> None:
    """An empty configured token never confirms a subscription, even for an empty given token."""
    topic = await create_topic(kafka_bootstrap)
    settings = Settings(app_secret=Secret(SECRET))
    async with serve(kafka_bootstrap, topic, settings=settings) as ingress:
        for token in ("", TOKEN):
            params = {"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": "7"}
            assert (await ingress.get("/webhook", params))[0] == 403


async def test_oversize_bodies_get_413_and_are_not_stored(kafka_bootstrap: str) -> None:
    """3 MB is accepted; 3 MB + 1 byte is refused, announced or chunked, and not stored."""
    topic = await create_topic(kafka_bootstrap)
    at_limit = b'{"pad":"' + b"x" * (MAX_BODY_BYTES - 10) + b'"}'
    over = at_limit[:-2] + b'x"}'
    assert (len(at_limit), len(over)) == (MAX_BODY_BYTES, MAX_BODY_BYTES + 1)
    async with serve(kafka_bootstrap, topic) as ingress:
        assert (await ingress.post(over))[0] == 413  # Content-Length says too much

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: caught while reading
            for i in range(0, len(over), 256 * 1024):
                yield over[i : i + 256 * 1024]

        headers = {"Content-Type": JSON, SIGNATURE_HEADER: sign(SECRET.encode(), over)}
        async with ingress.http.post(ingress.url + "/webhook", data=chunks(), headers=headers) as r:
            assert r.status == 413
        assert (await ingress.post(at_limit))[0] == 200
        assert await read_topic(kafka_bootstrap, topic) == [at_limit]
        assert ingress.metric("whatsapp_monitor_ingress_rejections_total", reason="too_large") == 2


async def test_announced_oversize_is_refused_before_the_body_is_sent(kafka_bootstrap: str) -> None:
    """A Content-Length over 3 MB gets 413 from the headers alone: the server does not wait."""
    topic = await create_topic(kafka_bootstrap)
    async with serve(kafka_bootstrap, topic) as ingress:
        host, port = ingress.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-Hub-Signature-256: sha256=00\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1)
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)  # no body sent at all
        assert status_line.startswith(b"HTTP/1.1 413")
        writer.close()
        await writer.wait_closed()


async def test_non_json_content_types_get_415(kafka_bootstrap: str) -> None:
    """Only application/json is accepted; nothing else is stored, even when correctly signed."""
    topic = await create_topic(kafka_bootstrap)
    async with serve(kafka_bootstrap, topic) as ingress:
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
            assert (await ingress.post(webhook(4), content_type=content_type))[0] == 415
        assert await ingress.post(webhook(5)) == (200, "ok")
        assert await read_topic(kafka_bootstrap, topic) == [webhook(5)]
        reason = "unsupported_media_type"
        assert ingress.metric("whatsapp_monitor_ingress_rejections_total", reason=reason) == 3


async def test_health_and_metrics_endpoints(kafka_bootstrap: str) -> None:
    """/health reports the producer connected; /metrics exposes the ingress families."""
    topic = await create_topic(kafka_bootstrap)
    async with serve(kafka_bootstrap, topic) as ingress:
        async with ingress.http.get(ingress.url + "/health") as resp:
            assert resp.status == 200
            health = await resp.json()
        assert health["kafka"] == {"connected": True, "topic": topic, "error": None}
        assert health["signature_check"] is True
        async with ingress.http.get(ingress.url + "/metrics") as resp:
            text = await resp.text()
        for family in (
            'whatsapp_monitor_ingress_rejections_total{reason="kafka_unavailable"} 0.0',
            'whatsapp_monitor_ingress_produce_latency_seconds_bucket{le="0.001"}',
            'whatsapp_monitor_ingress_produce_latency_seconds_bucket{le="10.0"}',
            "whatsapp_monitor_ingress_requests_in_flight",
            "whatsapp_monitor_ingress_kafka_up 1.0",
        ):
            assert family in text, family


async def test_concurrent_signed_posts_are_stored_exactly_once(kafka_bootstrap: str) -> None:
    """2,000 distinct signed POSTs from 50 concurrent clients: exactly those 2,000 records."""
    topic = await create_topic(kafka_bootstrap)
    bodies = [webhook(i) for i in range(2_000)]
    async with serve(kafka_bootstrap, topic) as ingress:
        queue = iter(bodies)

        async def client() -> list[int]:
            return [(await ingress.post(body))[0] for body in queue]

        statuses = [
            s for batch in await asyncio.gather(*(client() for _ in range(50))) for s in batch
        ]
        assert statuses == [200] * len(bodies)
        stored = await read_topic(kafka_bootstrap, topic)
    assert len(stored) == len(bodies)
    assert sorted(stored) == sorted(bodies)


def test_refuses_to_start_without_app_secret() -> None:
    """No app secret: a SettingsError from the factory, one line and exit 2 from the CLI."""
    with pytest.raises(SettingsError, match="APP_SECRET"):
        create_ingress_app(Settings(), kafka_producer_factory("127.0.0.1:1", 1.0))
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", "ingress", "--port", "0"],
        env={"PATH": "/usr/bin:/bin", "HOME": str(REPO / "nonexistent-home")},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "APP_SECRET is not set" in lines[0], result.stderr


async def test_insecure_demo_mode_accepts_unsigned_posts(kafka_bootstrap: str) -> None:
    """--insecure-no-signature without a secret stores unsigned POSTs (and says so in /health)."""
    topic = await create_topic(kafka_bootstrap)
    async with serve(kafka_bootstrap, topic, settings=Settings(), insecure=True) as ingress:
        assert await ingress.post(webhook(6), signature=None) == (200, "ok")
        status, health = await ingress.get("/health")
        assert status == 200 and json.loads(health)["signature_check"] is False
        assert await read_topic(kafka_bootstrap, topic) == [webhook(6)]


def port_is_free_for_kafka(port: int) -> bool:
    """Whether Kafka could listen on ``port``: like Kafka, bind with SO_REUSEADDR.

    LocalKafka's own check binds without it, so the TIME_WAIT connections a stopped broker leaves
    behind make it refuse to restart on the same port for a minute.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.slow
async def test_503_while_the_broker_is_down_then_200_when_it_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopping the broker turns POSTs into 503 with Retry-After; a restart heals by itself."""
    monkeypatch.setattr("streams.localkafka.broker._port_is_free", port_is_free_for_kafka)
    env = Settings.from_env()
    broker = LocalKafka(tmp_path / "k", env.cache_dir, env.kafka_version, heap="512m")
    await asyncio.to_thread(broker.start)
    try:
        bootstrap = broker.bootstrap
        topic = await create_topic(bootstrap)
        async with serve(bootstrap, topic, send_timeout_s=2.0) as ingress:
            assert await ingress.post(webhook(10)) == (200, "ok")
            await asyncio.to_thread(broker.stop)

            headers = {"Content-Type": JSON, SIGNATURE_HEADER: sign(SECRET.encode(), webhook(11))}
            async with ingress.http.post(
                ingress.url + "/webhook", data=webhook(11), headers=headers
            ) as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"].isdigit()
            assert (await ingress.get("/health"))[0] == 503
            assert ingress.metric("whatsapp_monitor_ingress_kafka_up") == 0

            await asyncio.to_thread(broker.start)
            assert broker.bootstrap == bootstrap
            # A fresh body per attempt: a timed-out attempt may still land (see below).
            refused = [webhook(11)]
            deadline = time.monotonic() + 60
            while (status := (await ingress.post(body := webhook(100 + len(refused))))[0]) != 200:
                assert status == 503
                assert time.monotonic() < deadline, "the ingress did not recover"
                refused.append(body)
                await asyncio.sleep(0.25)
            assert (await ingress.get("/health"))[0] == 200
            unavailable = sum(
                ingress.metric("whatsapp_monitor_ingress_rejections_total", reason=r)
                for r in ("kafka_unavailable", "kafka_timeout")
            )
            assert unavailable >= 1
        stored = await read_topic(bootstrap, topic)
    finally:
        await asyncio.to_thread(broker.stop)
    assert stored.count(webhook(10)) == 1
    assert stored.count(body) == 1
    # A 503 means "not confirmed": a timed-out record may still land, but never twice.
    assert all(stored.count(b) <= 1 for b in refused)
    assert set(stored) <= {webhook(10), body, *refused}
