"""Micro-benchmark of ``parse_webhook``: status events parsed per second on one core.

Run ``python -m bench.bench_parse`` (``--json`` for machine-readable output). Scenarios:

- ``single``: realistic single-status bodies (compact JSON as Meta sends it), mixed statuses
  (sent/delivered/read/failed with 131049 and 131050), 10,000 distinct recipients spread over many
  countries, so the geography cache sees a realistic mix of calling codes and NANP area codes;
- ``batch100``: bodies of 100 statuses each, built from the same recipients.

Each scenario is also timed with a bare ``msgspec.json.decode(raw)`` and ``orjson.loads(raw)`` of
the same bytes, in the same run, so the figures read as ratios against a baseline on this machine.
Every figure is the best of ``--repeat`` rounds (least disturbed by other load).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Sequence

import msgspec
import orjson

from streams.core import parse_webhook

# Calling codes / NANP area codes with a realistic spread of WhatsApp senders' recipients.
_PREFIXES = (
    ("1650", 7), ("1212", 7), ("1415", 7), ("1416", 7), ("1604", 7), ("1787", 7), ("1876", 7),
    ("91", 10), ("55", 11), ("62", 10), ("52", 10), ("234", 10), ("27", 9), ("49", 11),
    ("44", 10), ("7", 10), ("39", 10), ("34", 9), ("33", 9), ("90", 10), ("20", 10), ("92", 10),
    ("880", 10), ("63", 10), ("84", 9), ("966", 9), ("971", 9), ("57", 10), ("54", 10), ("51", 9),
    ("61", 9), ("254", 9), ("60", 9), ("66", 9), ("98", 10), ("212", 9), ("358", 9), ("31", 9),
)  # fmt: skip

_STATUSES = ("sent", "delivered", "read", "sent", "delivered", "failed")
_ERRORS = {
    131049: "This message was not delivered to maintain healthy ecosystem engagement.",
    131050: "Unable to deliver the message. This recipient has chosen to stop receiving "
    "marketing messages on WhatsApp from your business",
}


def recipients(count: int, rng: random.Random) -> list[str]:
    """``count`` distinct phone numbers (E.164 digits) spread over the prefixes above."""
    seen: set[str] = set()
    while len(seen) < count:
        prefix, national = rng.choice(_PREFIXES)
        if prefix.startswith("1"):
            number = prefix + str(rng.randint(2, 9)) + "".join(rng.choices("0123456789", k=6))
        else:
            number = (
                prefix + str(rng.randint(6, 9)) + "".join(rng.choices("0123456789", k=national - 1))
            )
        seen.add(number)
    return sorted(seen)


def status_item(rng: random.Random, recipient: str, ts: int) -> dict[str, object]:
    status = rng.choice(_STATUSES)
    item: dict[str, object] = {
        "id": "wamid.HBgL" + "".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", k=40)),
        "status": status,
        "timestamp": str(ts),
        "recipient_id": recipient,
        "biz_opaque_callback_data": "template=spring_sale;campaign=c-42",
    }
    if status == "failed":
        code = rng.choice((131049, 131049, 131050))
        item["errors"] = [
            {
                "code": code,
                "title": _ERRORS[code],
                "message": _ERRORS[code],
                "error_data": {"details": _ERRORS[code]},
                "href": "/documentation/business-messaging/whatsapp/support/error-codes",
            }
        ]
    else:
        item["pricing"] = {
            "billable": True,
            "pricing_model": "PMP",
            "type": "regular",
            "category": "marketing",
        }
    return item


def body(statuses: list[dict[str, object]]) -> bytes:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
        "statuses": statuses,
    }
    entry = {"id": "102290129340398", "changes": [{"value": value, "field": "messages"}]}
    return orjson.dumps({"object": "whatsapp_business_account", "entry": [entry]})


def time_once(func: Callable[[bytes], object], payloads: Sequence[bytes]) -> float:
    start = time.perf_counter()
    for raw in payloads:
        func(raw)
    return time.perf_counter() - start


def best_rate(
    func: Callable[[bytes], object], payloads: Sequence[bytes], per_payload: int, repeat: int
) -> float:
    """Status events per second: best of ``repeat`` passes over ``payloads``."""
    best = min(time_once(func, payloads) for _ in range(repeat))
    return len(payloads) * per_payload / best


def run(repeat: int, distinct: int, seed: int) -> dict[str, dict[str, float]]:
    rng = random.Random(seed)
    phones = recipients(distinct, rng)
    ts = 1_750_030_073
    single = [body([status_item(rng, phone, ts + i)]) for i, phone in enumerate(phones)]
    batches = [
        body([status_item(rng, rng.choice(phones), ts + i * 100 + k) for k in range(100)])
        for i in range(max(1, distinct // 100))
    ]
    # Sanity: the parser sees what the benchmark claims.
    assert len(parse_webhook(single[0]).events) == 1
    assert len(parse_webhook(batches[0]).events) == 100

    decoder = msgspec.json.Decoder()
    results: dict[str, dict[str, float]] = {}
    for name, payloads, per in (("single", single, 1), ("batch100", batches, 100)):
        first_pass = len(payloads) * per / time_once(parse_webhook, payloads)  # cold caches
        parse_rate = best_rate(parse_webhook, payloads, per, repeat)
        msgspec_rate = best_rate(decoder.decode, payloads, per, repeat)
        orjson_rate = best_rate(orjson.loads, payloads, per, repeat)
        results[name] = {
            "payload_bytes_avg": sum(map(len, payloads)) / len(payloads),
            "parse_webhook_events_per_s": parse_rate,
            "parse_webhook_first_pass_events_per_s": first_pass,
            "msgspec_decode_events_per_s": msgspec_rate,
            "orjson_loads_events_per_s": orjson_rate,
            "ratio_vs_msgspec_decode": parse_rate / msgspec_rate,
            "ratio_vs_orjson_loads": parse_rate / orjson_rate,
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--repeat", type=int, default=5, help="passes per figure (best is kept)")
    parser.add_argument("--distinct", type=int, default=10_000, help="distinct recipients")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    results = run(args.repeat, args.distinct, args.seed)
    if args.json:
        print(json.dumps({"python": sys.version.split()[0], "results": results}, indent=2))
        return 0
    for name, r in results.items():
        print(
            f"{name:9s} ({r['payload_bytes_avg']:.0f} B/body): "
            f"parse_webhook {r['parse_webhook_events_per_s']:>11,.0f} status events/s | "
            f"msgspec.json.decode {r['msgspec_decode_events_per_s']:>11,.0f}/s "
            f"(ratio {r['ratio_vs_msgspec_decode']:.2f}) | "
            f"orjson.loads {r['orjson_loads_events_per_s']:>11,.0f}/s "
            f"(ratio {r['ratio_vs_orjson_loads']:.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
