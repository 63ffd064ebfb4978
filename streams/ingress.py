"""The webhook ingress: Meta's callback URL in front of the raw webhook topic.

``POST /webhook`` checks ``X-Hub-Signature-256`` on the raw bytes and answers 200 only once Kafka
acknowledged those exact bytes (idempotent producer, ``acks=all``); when they cannot be stored it
answers 503 so Meta retries. ``GET /webhook`` (and ``/``) is the subscription handshake;
``/health`` and ``/metrics`` are for operators. Records have no key: the worker repartitions by
wamid, so the raw topic only needs the load spread over its partitions.

A 503 means "not confirmed", not "not stored": a record whose acknowledgement timed out stays in
the producer and is written once the broker is back, and Meta's retry then stores it a second time
(as when a 200 is lost on its way back). The worker deduplicates (wamid, status).

Hostile input: a connection without a complete request (its headers) for
``ingress_idle_timeout_s`` is closed, a body must arrive within ``ingress_read_timeout_s`` (else
408), bodies over 3 MB get 413 before they are read, and compressed bodies get 415 (the signature
covers the bytes on the wire, which are the bytes stored). Meta's signature has no timestamp or
nonce, so a captured body verifies forever: an exact repeat of one of the last
``ingress_recent_bodies`` stored bodies is answered 200 without producing it again
(``duplicates_total``), so a replay flood costs no Kafka writes. Every refusal is counted by
reason, including those aiohttp answers itself before a handler runs
(malformed HTTP, unknown paths).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from enum import StrEnum
from typing import Any, Protocol

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.aiohttp import make_aiohttp_handler

from streams.metadata_pacing import pace_metadata_updates
from streams.metrics import PREFIX
from streams.settings import ENV_PREFIX, Settings, SettingsError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 3 * 1024 * 1024
SIGNATURE_HEADER = "X-Hub-Signature-256"
DEFAULT_SEND_TIMEOUT_S = 5.0
RETRY_AFTER_S = 5
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Reason(StrEnum):
    """Why a request was not accepted (the bounded ``reason`` label)."""

    MISSING_SIGNATURE = "missing_signature"
    BAD_SIGNATURE = "bad_signature"
    TOO_LARGE = "too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    BAD_REQUEST = "bad_request"  # the body could not be read (client went away mid-body)
    READ_TIMEOUT = "read_timeout"  # the body did not arrive within the read timeout
    MALFORMED_REQUEST = "malformed_request"  # aiohttp's HTTP parser refused the request
    NO_ROUTE = "no_route"  # a path or method the ingress does not serve (404, 405)
    INTERNAL_ERROR = "internal_error"  # a handler failed (500): a bug
    BAD_TOKEN = "bad_token"
    BAD_HANDSHAKE = "bad_handshake"  # hub.mode is not subscribe, or there is no hub.challenge
    KAFKA_UNAVAILABLE = "kafka_unavailable"
    KAFKA_TIMEOUT = "kafka_timeout"
    KAFKA_REJECTED = "kafka_rejected"  # the broker refused this record (e.g. topic config)


STATUS: dict[Reason, int] = {
    Reason.MISSING_SIGNATURE: 401,
    Reason.TOO_LARGE: 413,
    Reason.UNSUPPORTED_MEDIA_TYPE: 415,
    Reason.BAD_REQUEST: 400,
    Reason.READ_TIMEOUT: 408,
    Reason.MALFORMED_REQUEST: 400,
    Reason.NO_ROUTE: 404,
    Reason.INTERNAL_ERROR: 500,
    **dict.fromkeys((Reason.BAD_SIGNATURE, Reason.BAD_TOKEN, Reason.BAD_HANDSHAKE), 403),
    **dict.fromkeys((Reason.KAFKA_UNAVAILABLE, Reason.KAFKA_TIMEOUT, Reason.KAFKA_REJECTED), 503),
}


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends with ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str | list[str] | None) -> Reason | None:
    """``None`` when ``header`` is exactly the signature of ``body``, else why not.

    The whole header is compared in constant time (``hmac.compare_digest``) with the lowercase
    ``sha256=<hex>`` expected, so a wrong prefix, upper-case hex, a truncated or padded digest are
    all simply bad. ``header`` may be every value the request carried: none is missing, more
    than one is bad (which one would count is exactly what an attacker would like to choose).
    """
    if isinstance(header, list):
        if len(header) != 1:
            return Reason.MISSING_SIGNATURE if not header else Reason.BAD_SIGNATURE
        header = header[0]
    if header is None:
        return Reason.MISSING_SIGNATURE
    given = header.encode("utf-8", "surrogatepass")
    return None if hmac.compare_digest(sign(secret, body).encode(), given) else Reason.BAD_SIGNATURE


def verify_handshake(query: Mapping[str, str], verify_token: str) -> Reason | None:
    """``None`` when the subscription handshake in ``query`` may be answered with its challenge."""
    if not verify_token:
        return Reason.BAD_TOKEN  # nothing configured: never confirm a subscription
    if query.get("hub.mode") != "subscribe" or not query.get("hub.challenge"):
        return Reason.BAD_HANDSHAKE
    given = query.get("hub.verify_token", "").encode("utf-8", "surrogatepass")
    ok = hmac.compare_digest(verify_token.encode("utf-8", "surrogatepass"), given)
    return None if ok else Reason.BAD_TOKEN


def app_secret_or_refuse(settings: Settings, insecure: bool) -> bytes | None:
    """The HMAC key; ``None`` only for an explicit insecure demo. Raises without an app secret."""
    if settings.app_secret:
        return settings.app_secret.value.encode()
    if not insecure:
        raise SettingsError(
            f"{ENV_PREFIX}APP_SECRET is not set: the ingress will not accept unsigned webhooks "
            "(set it to your Meta app secret, or pass --insecure-no-signature for a local demo)"
        )
    return None


class RecordProducer(Protocol):
    """What the ingress uses of an ``AIOKafkaProducer``."""

    client: Any

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> Any: ...
    async def partitions_for(self, topic: str) -> Any: ...


ProducerFactory = Callable[[], RecordProducer]


def kafka_producer_factory(bootstrap: str, request_timeout_s: float) -> ProducerFactory:
    """Idempotent ``acks=all`` producers for ``bootstrap`` (a fresh one per connection attempt)."""

    def make() -> RecordProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            client_id="whatsapp-delivery-monitor-ingress",
            enable_idempotence=True,
            acks="all",
            linger_ms=0,  # concurrent requests batch up behind the request in flight
            max_batch_size=256 * 1024,
            max_request_size=4 * 1024 * 1024,  # the raw topic's max.message.bytes
            request_timeout_ms=int(request_timeout_s * 1000),
        )
        pace_metadata_updates(producer.client)
        made: RecordProducer = producer
        return made

    return make


class KafkaUnavailable(Exception):
    """Kafka did not acknowledge the record; ``reason`` says how that failed."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.value)
        self.reason = reason


# After these a producer never delivers again (a bare KafkaError is a crashed sender task).
_FATAL = (ProducerClosed, ProducerFenced, OutOfOrderSequenceNumber)


class KafkaLink:
    """Owns the producer: connects in the background, probes the broker, rebuilds a broken one.

    While the link is down, requests get 503 at once instead of piling up inside the producer.
    """

    def __init__(self, factory: ProducerFactory, topic: str, timeout_s: float, up: Gauge) -> None:
        self.factory, self.topic, self.timeout_s, self._up = factory, topic, timeout_s, up
        self.producer: RecordProducer | None = None  # set once started
        self.connected = False
        self.error: str | None = "not started"
        self._rebuild = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._step()  # one attempt inline, so a healthy start serves at once
        self._task = asyncio.create_task(self._run(), name="ingress-kafka-link")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._stop()

    async def produce(self, value: bytes) -> None:
        """Return once Kafka acknowledged ``value``; raise :class:`KafkaUnavailable` otherwise."""
        producer = self.producer
        if producer is None or not self.connected:
            raise KafkaUnavailable(Reason.KAFKA_UNAVAILABLE)
        try:
            await asyncio.wait_for(self._send(producer, value), self.timeout_s)
        except (TimeoutError, KafkaTimeoutError):
            self._down("timeout")
            raise KafkaUnavailable(Reason.KAFKA_TIMEOUT) from None
        except KafkaError as exc:
            fatal = isinstance(exc, _FATAL) or type(exc) is KafkaError
            if not (fatal or exc.retriable):  # this record's problem, not the link's
                raise KafkaUnavailable(Reason.KAFKA_REJECTED) from exc
            self._down(type(exc).__name__, rebuild=fatal)
            raise KafkaUnavailable(Reason.KAFKA_UNAVAILABLE) from exc

    async def _send(self, producer: RecordProducer, value: bytes) -> None:
        # Cancelled inside send() (waiting for metadata or buffer space) the record is dropped;
        # once send() returned it is in the producer, which retries it until delivered.
        ack = await producer.send(self.topic, value, key=None)
        await ack

    def _down(self, error: str, rebuild: bool = False) -> None:
        self._set(False, error)
        self._rebuild = self._rebuild or rebuild
        self._wake.set()

    def _set(self, connected: bool, error: str | None) -> None:
        if connected != self.connected:
            if connected:
                log.info("kafka link up topic=%s", self.topic)
            else:
                log.warning("kafka link down topic=%s error=%s", self.topic, error)
        self.connected, self.error = connected, error
        self._up.set(1 if connected else 0)

    async def _stop(self, producer: RecordProducer | None = None) -> None:
        if producer is None:
            producer, self.producer = self.producer, None
        if producer is not None:
            try:  # stop() flushes: bounded, as it would wait for a dead broker forever
                await asyncio.wait_for(producer.stop(), self.timeout_s)
            except Exception as exc:
                log.warning("kafka producer did not stop cleanly: %s", type(exc).__name__)

    async def _step(self) -> None:
        """Connect (a fresh producer) or probe the connected one's topic metadata."""
        try:
            if self.producer is None:
                producer = self.factory()
                try:  # partitions_for also registers the topic, so probes fetch only its metadata
                    await asyncio.wait_for(producer.start(), self.timeout_s)
                    await asyncio.wait_for(producer.partitions_for(self.topic), self.timeout_s)
                except BaseException:
                    await self._stop(producer)
                    raise
                self.producer = producer
            else:
                probe = self.producer.client.force_metadata_update()
                if not await asyncio.wait_for(probe, self.timeout_s):
                    raise KafkaError("no broker answered a metadata request")
        except Exception as exc:
            self._set(False, type(exc).__name__)
        else:
            self._set(True, None)

    async def _run(self) -> None:
        backoff = 0.25
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 5.0 if self.connected else backoff)
            self._wake.clear()
            if self._rebuild:
                self._rebuild = False
                await self._stop()
            await self._step()
            backoff = 0.25 if self.connected else min(backoff * 2, 2.0)


class RecentBodies:
    """SHA-256 digests of the last ``capacity`` bodies stored, oldest forgotten first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._digests: OrderedDict[bytes, None] = OrderedDict()

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._digests

    def __len__(self) -> int:
        return len(self._digests)

    def add(self, digest: bytes) -> None:
        if self.capacity <= 0:
            return
        self._digests[digest] = None
        if len(self._digests) > self.capacity:
            self._digests.popitem(last=False)


# Set on every request a handler of the ingress counted itself.
COUNTED = web.RequestKey("ingress_counted", bool)


def _codings(request: web.Request, header: str) -> set[str]:
    """The content or transfer codings ``request`` announces in ``header`` (lower case)."""
    values = request.headers.getall(header, [])
    return {c.strip().lower() for value in values for c in value.split(",")} - {""}


class _DropClientErrors(logging.Filter):
    """aiohttp logs a traceback quoting the offending bytes for every malformed request.

    The ingress counts and logs those itself in one line without the bytes (a header can carry
    anything); only real server errors keep aiohttp's traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, HttpProcessingError)


_server_log = logging.getLogger(f"{__name__}.server")
_server_log.addFilter(_DropClientErrors())


class IngressMetrics:
    """The ingress's metrics on ``registry``, every label set pre-created at 0."""

    def __init__(self, registry: CollectorRegistry) -> None:
        n, r = f"{PREFIX}_ingress", registry
        self.requests = Counter(
            f"{n}_requests",
            "Requests answered (not /health or /metrics) by method (GET, POST, other) and status",
            ["method", "code"],
            registry=r,
        )
        self.rejections = Counter(
            f"{n}_rejections", "Webhook requests refused, by reason", ["reason"], registry=r
        )
        self.duplicates = Counter(
            f"{n}_duplicates",
            "Signed POSTs answered 200 without producing: the exact body was stored recently",
            registry=r,
        )
        self.produce_latency = Histogram(
            f"{n}_produce_latency_seconds",
            "From send to Kafka's ack of an accepted webhook",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            f"{n}_requests_in_flight", "Webhook requests in progress", registry=r
        )
        self.kafka_up = Gauge(
            f"{n}_kafka_up", "1 while the Kafka producer is connected", registry=r
        )
        for reason in Reason:
            self.rejections.labels(reason=reason.value)
        for code in (200, *sorted(set(STATUS.values()))):
            self.requests.labels(method="POST", code=str(code))
        for code in (200, 403):
            self.requests.labels(method="GET", code=str(code))

    def count_unhandled(self, request: web.BaseRequest, status: int) -> None:
        """Count a refusal no handler of the ingress saw (aiohttp answered it by itself)."""
        if status < 400 or request.get(COUNTED):
            return
        if status in (404, 405):
            reason = Reason.NO_ROUTE
        elif status >= 500:
            reason = Reason.INTERNAL_ERROR
        else:  # the HTTP parser refused the request line, a header or the framing
            reason = Reason.MALFORMED_REQUEST
        method = request.method if request.method in ("GET", "POST") else "other"
        self.rejections.labels(reason=reason.value).inc()
        self.requests.labels(method=method, code=str(status)).inc()
        # Not the path: it is whatever the client sent (it could hold a phone number).
        log.warning("ingress rejected method=%s status=%d reason=%s", method, status, reason)


def _counting_access_logger(metrics: IngressMetrics) -> type[AbstractAccessLogger]:
    """An aiohttp access logger that writes no log: it counts what no handler counted."""

    class CountUnhandled(AbstractAccessLogger):
        def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
            metrics.count_unhandled(request, response.status)

    return CountUnhandled


class IngressApp:
    """The ingress's request handlers; :func:`create_ingress_app` builds and routes them."""

    def __init__(
        self, settings: Settings, link: KafkaLink, metrics: IngressMetrics, secret: bytes | None
    ) -> None:
        self.link, self.metrics, self.secret = link, metrics, secret
        self.verify_token = settings.verify_token.value
        self.read_timeout_s = settings.ingress_read_timeout_s
        self.recent = RecentBodies(settings.ingress_recent_bodies)

    def _reject(self, request: web.Request, reason: Reason, size: int | None) -> web.Response:
        code = STATUS[reason]
        request[COUNTED] = True
        self.metrics.rejections.labels(reason=reason.value).inc()
        self.metrics.requests.labels(method=request.method, code=str(code)).inc()
        # One line per rejection: never the body, the signature, the query string or a secret.
        log.warning(
            "ingress rejected method=%s path=%s status=%d reason=%s size=%s",
            request.method,
            request.path,
            code,
            reason.value,
            "-" if size is None else size,
        )
        headers = {"Retry-After": str(RETRY_AFTER_S)} if code == 503 else None
        return web.Response(status=code, text=reason.value, headers=headers)

    async def handshake(self, request: web.Request) -> web.Response:
        with self.metrics.in_flight.track_inprogress():
            reason = verify_handshake(request.query, self.verify_token)
            if reason is not None:
                return self._reject(request, reason, None)
            request[COUNTED] = True
            self.metrics.requests.labels(method="GET", code="200").inc()
            log.info("ingress confirmed a subscription handshake")
            return web.Response(text=request.query["hub.challenge"], content_type="text/plain")

    async def receive(self, request: web.Request) -> web.Response:
        with self.metrics.in_flight.track_inprogress():
            announced = request.content_length
            if announced is not None and announced > request.client_max_size:
                return self._reject(request, Reason.TOO_LARGE, announced)
            if request.content_type != "application/json":
                return self._reject(request, Reason.UNSUPPORTED_MEDIA_TYPE, announced)
            if _codings(request, "Content-Encoding") - {"identity"} or _codings(
                request, "Transfer-Encoding"
            ) - {"chunked"}:  # the signature covers the bytes on the wire: never decode them
                return self._reject(request, Reason.UNSUPPORTED_MEDIA_TYPE, announced)
            headers = request.headers.getall(SIGNATURE_HEADER, [])
            if self.secret is not None and len(headers) != 1:
                refused = Reason.BAD_SIGNATURE if headers else Reason.MISSING_SIGNATURE
                return self._reject(request, refused, announced)
            try:  # with client_max_size, read() stops as soon as the body is too large
                async with asyncio.timeout(self.read_timeout_s):
                    body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return self._reject(request, Reason.TOO_LARGE, announced)
            except TimeoutError:
                return self._reject(request, Reason.READ_TIMEOUT, announced)
            except (OSError, HttpProcessingError):
                return self._reject(request, Reason.BAD_REQUEST, announced)
            if self.secret is not None:
                reason = verify_signature(self.secret, body, headers)
                if reason is not None:
                    return self._reject(request, reason, len(body))
            digest = hashlib.sha256(body).digest()
            if digest in self.recent:  # a replay, or Meta sending the same body twice
                self.metrics.duplicates.inc()
                return self._accept(request)
            started = time.perf_counter()
            try:
                await self.link.produce(body)
            except KafkaUnavailable as exc:
                return self._reject(request, exc.reason, len(body))
            self.metrics.produce_latency.observe(time.perf_counter() - started)
            self.recent.add(digest)  # only once stored: a body that got 503 is produced again
            return self._accept(request)

    def _accept(self, request: web.Request) -> web.Response:
        request[COUNTED] = True
        self.metrics.requests.labels(method="POST", code="200").inc()
        return web.Response(text="ok")

    async def health(self, request: web.Request) -> web.Response:
        request[COUNTED] = True  # a 503 here is an answer, not a refusal
        link = self.link
        body = {
            "status": "ok" if link.connected else "unavailable",
            "kafka": {"connected": link.connected, "topic": link.topic, "error": link.error},
            "signature_check": self.secret is not None,
        }
        return web.json_response(body, status=200 if link.connected else 503)


def create_ingress_app(
    settings: Settings,
    producer_factory: ProducerFactory,
    *,
    insecure: bool = False,
    send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S,
    registry: CollectorRegistry | None = None,
) -> web.Application:
    """The ingress as an aiohttp application. Raises ``SettingsError`` without an app secret."""
    secret = app_secret_or_refuse(settings, insecure)
    if secret is None:
        log.warning(
            "!!! SIGNATURE CHECK DISABLED (--insecure-no-signature): anyone who can reach this "
            "port can write to the raw webhook topic. Local demos only. !!!"
        )
    elif insecure:
        log.warning("--insecure-no-signature ignored: an app secret is set, signatures checked")
    if not settings.verify_token:
        log.warning("no verify token set: subscription handshakes will be refused (403)")
    registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
    metrics = IngressMetrics(registry)
    link = KafkaLink(producer_factory, settings.topic_raw, send_timeout_s, metrics.kafka_up)
    ingress = IngressApp(settings, link, metrics, secret)

    handler_args = {  # these win over the runner's arguments (run_app, AppRunner)
        "access_log_class": _counting_access_logger(metrics),
        "access_log": log,  # required for the class to be used; it writes nothing
        "logger": _server_log,
        # aiohttp closes a connection waiting for a request this long, from its start or its
        # last answer: idle keep-alive, and headers that never end alike
        "keepalive_timeout": settings.ingress_idle_timeout_s,
        # how long the rest of a refused body is read and dropped before the connection closes
        "lingering_time": settings.ingress_read_timeout_s,
        "auto_decompress": False,  # compressed bodies are refused; never inflate them
    }
    app = web.Application(client_max_size=MAX_BODY_BYTES, handler_args=handler_args)
    for path in ("/webhook", "/"):
        app.router.add_get(path, ingress.handshake, allow_head=False)
    app.router.add_post("/webhook", ingress.receive)
    app.router.add_get("/health", ingress.health, allow_head=False)
    app.router.add_get("/metrics", make_aiohttp_handler(registry), allow_head=False)

    async def kafka_link(_: web.Application) -> AsyncIterator[None]:
        await link.start()
        yield
        await link.close()

    app.cleanup_ctx.append(kafka_link)
    return app


def run_ingress(
    settings: Settings,
    bootstrap: str,
    insecure: bool = False,
    send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S,
) -> int:
    """Serve until SIGINT/SIGTERM: in-flight requests finish, then the producer flushes."""
    factory = kafka_producer_factory(bootstrap, send_timeout_s)
    app = create_ingress_app(settings, factory, insecure=insecure, send_timeout_s=send_timeout_s)
    host, port = settings.ingress_host, settings.ingress_port
    print(
        f"ingress: POST http://{host}:{port}/webhook -> {settings.topic_raw} on Kafka {bootstrap}"
        "; /health, /metrics",
        file=sys.stderr,
    )
    # No access log: the handshake's query string carries the verify token. (The app's own
    # handler_args replace this with its counting access logger, which writes nothing.)
    web.run_app(app, host=host, port=port, access_log=None, print=None, shutdown_timeout=30.0)
    return 0
