"""Benchmark workloads: webhook bodies generated once, cached on disk, streamed to Kafka.

Three kinds, all built from :mod:`streams.simulate` (the same messages, lifecycles and webhook
shapes as the tests and the demo; only the sizing, the cache and the restamping are here):

- ``throughput``: a realistic mix sized in *status events*: mostly single-status bodies, some
  batched (2-6 statuses of one sending number), duplicated POSTs (Meta's retries), statuses out
  of order within a window, 12 templates (marketing and utility), 3 sending numbers, recipients
  in 8 countries, failures of every catalogued class and a few unparseable bodies. Generated in
  chunks of :data:`CHUNK_MESSAGES` messages (one chunk = 30 minutes of event time, later chunks
  later), so a workload of N events is exactly the prefix of a workload of M > N events.
- ``recipients``: one delivered marketing message to each of N *distinct* recipients, one
  status per body (``recipients-b<K>``: K statuses of one sending number per body): what the
  memory section tracks.
- a *paced pool* (:func:`paced_pool`): bodies whose timestamps and wamids are filled in at send
  time (:func:`restamp`), so a paced producer can offer live traffic (event time = wall clock)
  for as long as it likes without generating it on the fly.

Cache files (``<dir>/<kind>-s<seed>-n<size>-v<version>.bin``) hold length-prefixed records:
``>IH`` (body length, status items in the body; 0 for an unparseable body) then the body. A JSON
sidecar (``.json``) holds the counts. Bump :data:`GENERATOR_VERSION` whenever the generated
bytes change.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

from streams.simulate import (
    COUNTRY_PREFIXES,
    NON_US,
    START,
    CampaignSpec,
    Message,
    bodies,
    envelope,
    generate,
    lifecycle,
    phone_for,
    sending_numbers,
    status_item,
    template_category,
    template_names,
)

GENERATOR_VERSION = 1
CHUNK_MESSAGES = 20_000
CHUNK_SECONDS = 1_800
_HEADER = struct.Struct(">IH")

#: Placeholders of the paced pool, replaced at send time by :func:`restamp`.
TS_SENTINEL = 1_111_111_111
ROUND_MARK = b"RRRR"


@dataclass
class WorkloadInfo:
    """What a cached workload holds (the JSON sidecar)."""

    kind: str
    seed: int
    size: int  # target: status events (throughput) or recipients (recipients)
    payloads: int = 0
    status_events: int = 0  # status items in parseable bodies (duplicated POSTs included)
    unparseable: int = 0
    duplicates: int = 0  # bodies POSTed again (byte-identical to an earlier one)
    batched: int = 0  # bodies carrying more than one status
    bytes: int = 0
    distinct_recipients: int = 0
    distinct_wamids: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    templates: int = 0
    senders: int = 0
    countries: int = 0
    generator_version: int = GENERATOR_VERSION

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class Tally:
    """Counts a stream of bodies into a :class:`WorkloadInfo`."""

    def __init__(self, info: WorkloadInfo) -> None:
        self.info = info
        self._seen: set[bytes] = set()
        self._recipients: set[str] = set()
        self._wamids: set[str] = set()
        self._templates: set[str] = set()
        self._senders: set[str] = set()

    def add(self, body: bytes, statuses: int) -> None:
        info = self.info
        info.payloads += 1
        info.bytes += len(body)
        digest = hashlib.blake2b(body, digest_size=12).digest()
        if digest in self._seen:
            info.duplicates += 1
        self._seen.add(digest)
        if statuses == 0:
            info.unparseable += 1
            return
        info.status_events += statuses
        info.batched += statuses > 1
        value = orjson.loads(body)["entry"][0]["changes"][0]["value"]
        self._senders.add(value["metadata"]["phone_number_id"])
        for item in value["statuses"]:
            self._recipients.add(item["recipient_id"])
            self._wamids.add(item["id"])
            info.by_status[item["status"]] = info.by_status.get(item["status"], 0) + 1
            opaque = item.get("biz_opaque_callback_data")
            if opaque:
                self._templates.add(orjson.loads(opaque)["template"])

    def done(self) -> WorkloadInfo:
        info = self.info
        info.distinct_recipients = len(self._recipients)
        info.distinct_wamids = len(self._wamids)
        info.templates = len(self._templates)
        info.senders = len(self._senders)
        countries = set()
        for r in self._recipients:
            for cc, (prefix, _) in COUNTRY_PREFIXES.items():
                if r.startswith(prefix):
                    countries.add(cc)
                    break
        info.countries = len(countries)
        return info


def count_statuses(body: bytes) -> int:
    """Status items of a generated body; 0 for the generator's unparseable bodies."""
    try:
        doc = orjson.loads(body)
        return len(doc["entry"][0]["changes"][0]["value"]["statuses"])
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return 0


# -- generators ---------------------------------------------------------------------------------


def throughput_bodies(events: int, seed: int) -> Iterator[tuple[bytes, int]]:
    """(body, status items) of the throughput workload, until ``events`` status items."""
    total = 0
    chunk = 0
    while total < events:
        spec = CampaignSpec(
            messages=CHUNK_MESSAGES,
            templates=12,
            senders=3,
            start=START + chunk * CHUNK_SECONDS,
            duration=CHUNK_SECONDS,
            opaque_ratio=0.8,  # the rest counts under template "unknown": no send log here
            garbage_ratio=0.001,
        )
        # a seed per chunk: wamids are wamid.SIM<seed><index>, distinct across chunks
        campaign = generate(spec, seed=seed * 10_000 + chunk)
        garbage = {id(g) for g in campaign.garbage}
        for body in campaign.payloads:
            n = 0 if id(body) in garbage else count_statuses(body)
            yield body, n
            total += n
            if total >= events:
                return
        chunk += 1


#: Countries of the recipients workload: 6 free digits after the prefix (10^6 numbers each).
RECIPIENT_COUNTRIES = ("BR", "ID", "DE", "MX")


def distinct_phone(i: int) -> str:
    """The ``i``-th distinct valid mobile number (round robin over RECIPIENT_COUNTRIES)."""
    country = RECIPIENT_COUNTRIES[i % len(RECIPIENT_COUNTRIES)]
    prefix, length = COUNTRY_PREFIXES[country]
    free = length - len(prefix)
    index = i // len(RECIPIENT_COUNTRIES)
    if index >= 10**free:
        raise ValueError(f"at most {len(RECIPIENT_COUNTRIES) * 10**free} distinct recipients")
    return f"{prefix}{index:0{free}d}"


def recipient_bodies(recipients: int, seed: int, per_body: int = 1) -> Iterator[tuple[bytes, int]]:
    """One delivered marketing message to each of ``recipients`` distinct recipients,
    ``per_body`` statuses (of one sending number) per webhook body."""
    rng = random.Random(seed)
    senders = sending_numbers(3)
    templates = [t for t in template_names(12) if template_category(t) == "marketing"]
    span = 3_600  # an hour of event time, in order
    for first in range(0, recipients, per_body):
        sender, display = senders[(first // per_body) % len(senders)]
        items = []
        for i in range(first, min(first + per_body, recipients)):
            phone = distinct_phone(i)
            country = RECIPIENT_COUNTRIES[i % len(RECIPIENT_COUNTRIES)]
            ts = START + span * i // max(1, recipients)
            m = Message(
                wamid=f"wamid.MEM{seed:03d}{i:09d}",
                sender=sender,
                display=display,
                recipient=phone,
                country=country,
                template=templates[rng.randrange(len(templates))],
                category="marketing",
                sent_at=ts,
                statuses=[("delivered", ts, None)],
                opaque=True,
            )
            items.append(status_item(m, "delivered", ts, None))
        yield envelope(sender, display, items), len(items)


def paced_pool(statuses: int, seed: int) -> list[tuple[bytes, int]]:
    """Bodies for live traffic: about ``statuses`` status items, every timestamp
    :data:`TS_SENTINEL` and every wamid containing :data:`ROUND_MARK` (see :func:`restamp`).

    The mix is the throughput workload's (lifecycles, batching, duplicates, shuffling); every
    status of a message carries the same second, so event time can follow the wall clock, and
    every read comes with its delivered."""
    rng = random.Random(seed)
    spec = CampaignSpec(opaque_ratio=0.8, skip_delivered_ratio=0.0)
    senders = sending_numbers(spec.senders)
    templates = template_names(spec.templates)
    people = [(phone_for(c, rng), c) for c in rng.choices(spec.countries, k=50_000)]
    messages: list[Message] = []
    count = 0
    i = 0
    while count < statuses:
        sender, display = senders[i % len(senders)]
        phone, country = people[rng.randrange(len(people))]
        template = templates[rng.randrange(len(templates))]
        category = template_category(template)
        sequence = lifecycle(rng, spec, category, TS_SENTINEL, spread=False)
        messages.append(
            Message(
                wamid=f"wamid.LIVE{ROUND_MARK.decode()}{i:09d}",
                sender=sender,
                display=display,
                recipient=phone,
                country=country,
                template=template,
                category=category,
                sent_at=TS_SENTINEL,
                statuses=sequence,
                opaque=rng.random() < spec.opaque_ratio,
            )
        )
        count += len(sequence)
        i += 1
    return [(body, count_statuses(body)) for body in bodies(messages, spec, rng)]


_TS_QUOTED = b'"%d"' % TS_SENTINEL


def restamp(body: bytes, ts: int, round_: int) -> bytes:
    """A pool body with its timestamps set to ``ts`` and its wamids made unique per round."""
    return body.replace(_TS_QUOTED, b'"%d"' % ts).replace(ROUND_MARK, b"%04d" % (round_ % 10_000))


def probe_body(run: str, k: int, ts: int, template: str) -> bytes:
    """A single ``sent`` status of a message of ``template`` (a probe the latency section
    follows into /metrics and the API)."""
    m = Message(
        wamid=f"wamid.PROBE{run}{k:07d}",
        sender="106540352242922",
        display="15550783881",
        recipient=f"5511955{k % 1_000_000:06d}",
        country="BR",
        template=template,
        category="utility",
        sent_at=ts,
        statuses=[("sent", ts, None)],
        opaque=True,
    )
    return envelope(m.sender, m.display, [status_item(m, "sent", ts, None)])


def alert_bodies(
    rng: random.Random,
    n: int,
    ts: int,
    templates: list[str],
    spike_template: str,
    spike: bool,
    seq: int,
    spike_ratio: float = 0.45,
    background_ratio: float = 0.01,
) -> list[tuple[bytes, bool]]:
    """``n`` marketing messages of each template at event time ``ts`` (non-US recipients):
    131049 at ``background_ratio``, on ``spike_template`` at ``spike_ratio`` while ``spike``;
    the others sent and delivered (one body per status). Returns (body, part of the spike):
    only a 131049 of the spike template while ``spike`` is part of the spike."""
    out: list[tuple[bytes, bool]] = []
    for name in templates:
        spiking = spike and name == spike_template
        ratio = spike_ratio if spiking else background_ratio
        for _ in range(n):
            country = rng.choice(NON_US)
            m = Message(
                wamid=f"wamid.ALERT{seq:09d}",
                sender="106540352242922",
                display="15550783881",
                recipient=phone_for(country, rng),
                country=country,
                template=name,
                category="marketing",
                sent_at=ts,
                statuses=[],
                opaque=True,
            )
            seq += 1
            if rng.random() < ratio:
                item = status_item(m, "failed", ts, 131049)
                out.append((envelope(m.sender, m.display, [item]), spiking))
            else:
                for status in ("sent", "delivered"):
                    item = status_item(m, status, ts, None)
                    out.append((envelope(m.sender, m.display, [item]), False))
    return out


# -- cache --------------------------------------------------------------------------------------


def generator(kind: str) -> Callable[[int, int], Iterator[tuple[bytes, int]]]:
    """``throughput``, ``recipients`` (one status per body) or ``recipients-b<N>`` (N per body)."""
    if kind == "throughput":
        return throughput_bodies
    if kind == "recipients":
        return lambda size, seed: recipient_bodies(size, seed, per_body=1)
    if kind.startswith("recipients-b") and kind[12:].isdigit() and int(kind[12:]) > 0:
        per_body = int(kind[12:])
        return lambda size, seed: recipient_bodies(size, seed, per_body=per_body)
    raise ValueError(f"unknown workload kind {kind!r}")


def cache_path(directory: Path, kind: str, seed: int, size: int) -> Path:
    return directory / f"{kind}-s{seed}-n{size}-v{GENERATOR_VERSION}.bin"


def write_records(path: Path, records: Iterable[tuple[bytes, int]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        for body, n in records:
            f.write(_HEADER.pack(len(body), min(n, 65_535)))
            f.write(body)
    tmp.replace(path)


def read_records(path: Path) -> Iterator[tuple[bytes, int]]:
    with path.open("rb") as f:
        while True:
            head = f.read(_HEADER.size)
            if not head:
                return
            length, n = _HEADER.unpack(head)
            yield f.read(length), n


def take_events(records: Iterable[tuple[bytes, int]], events: int) -> Iterator[tuple[bytes, int]]:
    """The prefix of ``records`` that holds ``events`` status items (the last body may add a
    few more)."""
    total = 0
    for body, n in records:
        if total >= events:
            return
        yield body, n
        total += n


@dataclass
class Workload:
    """A cached workload: its file and counts."""

    path: Path
    info: WorkloadInfo
    generated_s: float = 0.0  # 0 when it came from the cache

    def records(self) -> Iterator[tuple[bytes, int]]:
        return read_records(self.path)

    def bodies(self) -> Iterator[bytes]:
        return (body for body, _ in self.records())


def ensure_workload(
    directory: Path,
    kind: str,
    size: int,
    seed: int,
    log: Callable[[str], None] = lambda s: None,
) -> Workload:
    """The workload from the cache, generated (and cached) first when missing."""
    import time

    directory.mkdir(parents=True, exist_ok=True)
    path = cache_path(directory, kind, seed, size)
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        info = WorkloadInfo(**json.loads(meta.read_text()))
        return Workload(path, info)
    log(f"generating the {kind} workload ({size:,}, seed {seed}) into {path}")
    t0 = time.perf_counter()
    tally = Tally(WorkloadInfo(kind, seed, size))

    def counted() -> Iterator[tuple[bytes, int]]:
        for body, n in generator(kind)(size, seed):
            tally.add(body, n)
            yield body, n

    write_records(path, counted())
    info = tally.done()
    meta.write_text(json.dumps(info.to_json(), indent=1))
    return Workload(path, info, time.perf_counter() - t0)
