"""Realistic WhatsApp webhook traffic with its ground truth: for tests, the demo and benchmarks.

A campaign is a set of outbound template messages from several sending numbers to recipients in
several countries; each message goes through a lifecycle (sent -> delivered -> read, or failed
with an error code) and produces the status webhooks Meta would send: batched or single,
duplicated (Meta retries), shuffled (out of order), some attributed by
``biz_opaque_callback_data`` and the rest only through the sender's send log. The truth is
computed from the lifecycles alone, independently of the monitor's code.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import orjson

# Valid mobile numbers per country (prefix + random digits to the national length).
COUNTRY_PREFIXES: dict[str, tuple[str, int]] = {
    "US": ("1212555", 11),
    "CA": ("1416555", 11),
    "BR": ("5511987", 13),
    "IN": ("9198765", 12),
    "ID": ("6281234", 13),
    "DE": ("4915123", 13),
    "GB": ("4477009", 12),
    "MX": ("5215512", 13),
}

ERRORS: dict[int, tuple[str, str]] = {
    131049: (
        "This message was not delivered to maintain healthy ecosystem engagement.",
        "per_user_marketing_limit",
    ),
    131050: (
        "Unable to deliver the message. This recipient has chosen to stop receiving "
        "marketing messages on WhatsApp from your business.",
        "opt_out",
    ),
    131026: ("Message undeliverable", "undeliverable"),
    131047: ("Re-engagement message", "csw_rule"),
    131056: ("(Business Account, Consumer Account) pair rate limit hit", "pair_rate_limit"),
}


def phone_for(country: str, rng: random.Random) -> str:
    prefix, length = COUNTRY_PREFIXES[country]
    return prefix + "".join(str(rng.randint(0, 9)) for _ in range(length - len(prefix)))


@dataclass
class Message:
    wamid: str
    sender: str  # phone_number_id
    display: str
    recipient: str
    country: str
    template: str
    category: str
    sent_at: int
    statuses: list[tuple[str, int, int | None]]  # (status, timestamp, error code)
    opaque: bool  # template carried in biz_opaque_callback_data


@dataclass
class Truth:
    """Expected counts: per dimension value, outcome -> messages."""

    templates: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    senders: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    countries: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    marketing_delivered: Counter[str] = field(default_factory=Counter)
    limit_failures: Counter[str] = field(default_factory=Counter)


@dataclass
class Campaign:
    messages: list[Message]
    payloads: list[bytes]  # webhook bodies in the order Meta would POST them (with retries)
    send_log: list[tuple[bytes, bytes]]  # (key=wamid, JSON) records
    garbage: list[bytes]
    truth: Truth


@dataclass(frozen=True)
class CampaignSpec:
    messages: int = 20_000
    templates: int = 12
    senders: int = 3
    start: int = 1_767_225_600  # 2026-01-01T00:00:00Z
    duration: int = 1_800  # seconds over which messages are sent
    countries: tuple[str, ...] = tuple(COUNTRY_PREFIXES)
    failure_ratio: float = 0.12
    read_ratio: float = 0.5
    opaque_ratio: float = 0.5  # the rest is attributed by the send log only
    duplicate_ratio: float = 0.10
    batch_ratio: float = 0.2  # share of bodies that batch several statuses
    garbage_ratio: float = 0.01
    shuffle_window: int = 200  # bodies are shuffled within windows of this many
    recipients: int | None = None  # distinct recipients (default: messages // 2)


def _outcome_class(code: int, country: str) -> str:
    cls = ERRORS[code][1]
    if code == 131049 and country == "US":
        return "us_marketing_pause"
    return cls


def generate(spec: CampaignSpec = CampaignSpec(), seed: int = 7) -> Campaign:
    rng = random.Random(seed)
    senders = [(f"10654035224{i:04d}", f"1555078{i:04d}") for i in range(spec.senders)]
    templates = [f"promo_{i:02d}" for i in range(spec.templates)]
    n_recipients = spec.recipients or max(1, spec.messages // 2)
    people = []
    for _ in range(n_recipients):
        country = rng.choice(spec.countries)
        people.append((phone_for(country, rng), country))
    messages: list[Message] = []
    for i in range(spec.messages):
        sender, display = senders[i % len(senders)]
        phone, country = people[rng.randrange(len(people))]
        template = templates[rng.randrange(len(templates))]
        category = "marketing" if template[-1] in "02468" else "utility"
        t0 = spec.start + rng.randrange(spec.duration)
        statuses: list[tuple[str, int, int | None]] = []
        if rng.random() < spec.failure_ratio:
            code = rng.choice(list(ERRORS))
            if category != "marketing" and code in (131049, 131050):
                code = 131026
            if rng.random() < 0.3:
                statuses.append(("sent", t0, None))
            statuses.append(("failed", t0 + rng.randint(0, 5), code))
        else:
            statuses.append(("sent", t0, None))
            statuses.append(("delivered", t0 + rng.randint(1, 30), None))
            if rng.random() < spec.read_ratio:
                statuses.append(("read", t0 + rng.randint(31, 300), None))
                if rng.random() < 0.5:
                    statuses.remove(statuses[1])  # read without delivered
        messages.append(
            Message(
                wamid=f"wamid.SIM{seed:03d}{i:09d}",
                sender=sender,
                display=display,
                recipient=phone,
                country=country,
                template=template,
                category=category,
                sent_at=t0,
                statuses=statuses,
                opaque=rng.random() < spec.opaque_ratio,
            )
        )
    payloads = _bodies(messages, spec, rng)
    garbage = [_garbage(rng, k) for k in range(int(len(payloads) * spec.garbage_ratio))]
    for g in garbage:
        payloads.insert(rng.randrange(len(payloads) + 1), g)
    send_log = [
        (
            m.wamid.encode(),
            orjson.dumps(
                {
                    "wamid": m.wamid,
                    "recipient": m.recipient,
                    "template": m.template,
                    "category": m.category,
                    "campaign": "sim",
                    "sent_at": m.sent_at,
                }
            ),
        )
        for m in messages
    ]
    return Campaign(messages, payloads, send_log, garbage, truth_of(messages))


def truth_of(messages: list[Message]) -> Truth:
    truth = Truth()
    for m in messages:
        kinds = {s for s, _, _ in m.statuses}
        outcomes = ["attempted"]
        if kinds & {"sent", "delivered", "read"}:
            outcomes.append("sent")
        if kinds & {"delivered", "read"}:
            outcomes.append("delivered")
            if m.category == "marketing":
                truth.marketing_delivered[m.recipient] += 1
        if "read" in kinds:
            outcomes.append("read")
        for s, _, code in m.statuses:
            if s == "failed" and code is not None:
                cls = _outcome_class(code, m.country)
                outcomes.append(f"failed.{cls}")
                if cls == "per_user_marketing_limit":
                    truth.limit_failures[m.recipient] += 1
        for o in outcomes:
            truth.templates[m.template][o] += 1
            truth.senders[m.sender][o] += 1
            truth.countries[m.country][o] += 1
    return truth


def status_item(m: Message, status: str, ts: int, code: int | None) -> dict[str, object]:
    item: dict[str, object] = {
        "id": m.wamid,
        "status": status,
        "timestamp": str(ts),
        "recipient_id": m.recipient,
    }
    if m.opaque:
        item["biz_opaque_callback_data"] = orjson.dumps(
            {"template": m.template, "campaign": "sim", "category": m.category}
        ).decode()
    if status == "failed" and code is not None:
        title = ERRORS[code][0]
        item["errors"] = [
            {"code": code, "title": title, "message": title, "error_data": {"details": title}}
        ]
    elif status in ("sent", "delivered"):
        item["pricing"] = {
            "billable": True,
            "pricing_model": "PMP",
            "type": "regular",
            "category": m.category,
        }
    return item


def envelope(sender: str, display: str, items: list[dict[str, object]]) -> bytes:
    return orjson.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": "102290129340398",
                    "changes": [
                        {
                            "field": "messages",
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {
                                    "display_phone_number": display,
                                    "phone_number_id": sender,
                                },
                                "statuses": items,
                            },
                        }
                    ],
                }
            ],
        }
    )


def _bodies(messages: list[Message], spec: CampaignSpec, rng: random.Random) -> list[bytes]:
    events = [(ts, m, s, code) for m in messages for s, ts, code in m.statuses]
    events.sort(key=lambda e: e[0])
    bodies: list[bytes] = []
    i = 0
    while i < len(events):
        take = rng.randint(2, 6) if rng.random() < spec.batch_ratio else 1
        chunk = [events[i]]
        while len(chunk) < take and i + len(chunk) < len(events):
            nxt = events[i + len(chunk)]
            if nxt[1].sender != chunk[0][1].sender:
                break  # one body carries one sending number's statuses
            chunk.append(nxt)
        i += len(chunk)
        m0 = chunk[0][1]
        body = envelope(m0.sender, m0.display, [status_item(m, s, ts, c) for ts, m, s, c in chunk])
        bodies.append(body)
        if rng.random() < spec.duplicate_ratio:
            bodies.append(body)  # Meta retried this POST
    w = spec.shuffle_window
    for start in range(0, len(bodies), w):
        window = bodies[start : start + w]
        rng.shuffle(window)
        bodies[start : start + w] = window
    return bodies


def _garbage(rng: random.Random, k: int) -> bytes:
    kinds = [
        lambda: b"not json at all %d" % k,
        lambda: b'{"object": "whatsapp_business_account", "entry": [%d' % k,
        lambda: orjson.dumps({"hello": "world", "n": k}),
        lambda: orjson.dumps(
            {
                "object": "whatsapp_business_account",
                "entry": [
                    {
                        "id": "1",
                        "changes": [
                            {"field": "messages", "value": {"statuses": [{"id": f"w{k}"}]}}
                        ],
                    }
                ],
            }
        ),
        lambda: bytes(rng.randrange(256) for _ in range(40)) + b"%d" % k,
    ]
    return kinds[k % len(kinds)]()


def spike_campaign(
    *,
    minutes: int = 40,
    per_minute: int = 30,
    templates: int = 6,
    spike_template: str = "promo_spike",
    spike_start: int = 18,
    spike_minutes: int = 6,
    spike_ratio: float = 0.45,
    background_ratio: float = 0.01,
    start: int = 1_767_225_600,
    seed: int = 21,
) -> Campaign:
    """Steady marketing traffic with a 131049 spike on one template (non-US recipients, so the
    spike is the per-user limit, not the US pause). Every template (the spiking one included)
    sends ``per_minute`` messages a minute."""
    rng = random.Random(seed)
    names = [f"promo_{i:02d}" for i in range(templates - 1)] + [spike_template]
    countries = [c for c in COUNTRY_PREFIXES if c != "US"]
    messages: list[Message] = []
    n = 0
    for minute in range(minutes):
        for name in names:
            in_spike = (
                name == spike_template and spike_start <= minute < spike_start + spike_minutes
            )
            ratio = spike_ratio if in_spike else background_ratio
            for _ in range(per_minute):
                country = rng.choice(countries)
                t0 = start + minute * 60 + rng.randrange(60)
                if rng.random() < ratio:
                    statuses: list[tuple[str, int, int | None]] = [("failed", t0, 131049)]
                else:
                    statuses = [("sent", t0, None), ("delivered", t0 + rng.randint(1, 20), None)]
                messages.append(
                    Message(
                        wamid=f"wamid.SPK{seed:03d}{n:09d}",
                        sender="106540352242922",
                        display="15550783881",
                        recipient=phone_for(country, rng),
                        country=country,
                        template=name,
                        category="marketing",
                        sent_at=t0,
                        statuses=statuses,
                        opaque=True,
                    )
                )
                n += 1
    spec = CampaignSpec(duplicate_ratio=0.0, garbage_ratio=0.0, batch_ratio=0.0, shuffle_window=20)
    payloads = _bodies(messages, spec, rng)
    send_log: list[tuple[bytes, bytes]] = []
    return Campaign(messages, payloads, send_log, [], truth_of(messages))
