"""Fuzzing of ``parse_webhook``: thousands of hostile bodies, and ParseError is the only failure.

Generators: arbitrary bytes; arbitrary JSON documents (NaN/Infinity tokens, huge and negative
numbers, lone surrogates, webhook key names); and mutations of every real sample in
tests/fixtures/whatsapp (keys and items deleted or added, types swapped, huge strings and
numbers, NaN/Infinity, duplicate keys, deep nesting up to 100,000 levels, then at the byte level
invalid UTF-8, a BOM, truncation or trailing junk).

Beyond "returns or raises ParseError", every successful parse must account for every item: each
status, inbound message, user preference and account error the body holds (where the parser is
documented to read it) either became an event or is covered by a defect; none is dropped
silently and none is invented. The number of examples is fixed (no time budget), so a run is
reproducible; the whole file takes about 30 s on one core.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from streams.core import (
    EVENT_TYPES,
    MAX_PAYLOAD_BYTES,
    AccountErrorEvent,
    Defect,
    InboundMessageEvent,
    ParsedWebhook,
    ParseError,
    StatusEvent,
    UserPreferenceEvent,
    parse_webhook,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "whatsapp"
SAMPLES = [json.loads(path.read_bytes()) for path in sorted(FIXTURES.glob("*.json"))]


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- the property ------------------------------------------------------------------------------

# item list key -> the event type each usable item becomes
ITEM_EVENTS: dict[str, type] = {
    "statuses": StatusEvent,
    "messages": InboundMessageEvent,
    "user_preferences": UserPreferenceEvent,
    "errors": AccountErrorEvent,
}
ITEM_FIELDS = ("messages", "user_preferences")  # change fields whose value holds item lists


def expected_items(document: object) -> dict[str, list[tuple[str, Any]]]:
    """(JSON path, item) of every item the parser must turn into an event or a defect.

    Cloud bodies (an ``entry`` array): the item lists of ``messages``/``user_preferences``
    changes; other bodies: the top-level lists (On-Premises API). Lists under other change fields
    are not the monitor's (the field is reported in ``ignored_fields``).
    """
    found: dict[str, list[tuple[str, Any]]] = {kind: [] for kind in ITEM_EVENTS}

    def collect(value: object, path: str) -> None:
        if isinstance(value, dict):
            for kind, items in found.items():
                if isinstance(value.get(kind), list):
                    items += [(f"{path}.{kind}[{k}]", v) for k, v in enumerate(value[kind])]

    if not isinstance(document, dict):
        return found
    entries = document.get("entry")
    if not isinstance(entries, list):
        collect(document, "$")
        return found
    for i, entry in enumerate(entries):
        changes = entry.get("changes") if isinstance(entry, dict) else None
        for j, change in enumerate(changes if isinstance(changes, list) else ()):
            if isinstance(change, dict) and change.get("field") in ITEM_FIELDS:
                collect(change.get("value"), f"$.entry[{i}].changes[{j}].value")
    return found


def _prefixes(path: str) -> list[str]:
    """``path`` and every JSON path above it: ``$.a[0].b`` -> ``$``, ``$.a``, ``$.a[0]``, itself."""
    return [path[:i] for i, c in enumerate(path) if c in ".["] + [path]


class Coverage:
    """Which item paths the defects of one parse account for.

    An item is covered by a defect at the item, inside it, above it (a dropped change or
    entry), or on a field of an object above it (``changes[0].field`` drops the change).
    """

    def __init__(self, defects: tuple[Defect, ...]) -> None:
        self.above: set[str] = set()
        self.inside: set[str] = set()
        for defect in defects:
            path = defect.path
            self.above.add(path)
            if re.search(r"\.[^.\[\]]+$", path):
                self.above.add(path.rsplit(".", 1)[0])
            self.inside.update(_prefixes(path))

    def __call__(self, item_path: str) -> bool:
        return item_path in self.inside or not self.above.isdisjoint(_prefixes(item_path))


def covered(item_path: str, defects: tuple[Defect, ...]) -> bool:
    return Coverage(defects)(item_path)


def document_of(raw: bytes) -> object | None:
    """The body as a generic document, as the parser sees it (duplicate keys: the last wins).

    The typed decoder skips keys it does not declare without looking inside them, so a body it
    accepts may still fail a generic decode (a number out of range in an unknown key): then
    Python's json module, with numbers stubbed, gives the structure.
    """
    try:
        return msgspec.json.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        pass
    try:
        text = raw.decode("utf-8", "replace")
        return json.loads(text, parse_int=len, parse_float=len, parse_constant=len)
    except (ValueError, RecursionError):
        return None


def check(raw: bytes) -> ParsedWebhook | None:
    """The only allowed outcomes, and the invariants of a successful parse."""
    try:
        parsed = parse_webhook(raw)
    except ParseError as exc:
        assert exc.path.startswith("$") and exc.reason
        assert all(d.path.startswith("$") and d.reason for d in exc.defects)
        return None
    assert isinstance(parsed, ParsedWebhook)
    assert all(isinstance(event, EVENT_TYPES) for event in parsed.events)
    assert all(defect.path.startswith("$") and defect.reason for defect in parsed.defects)
    assert parsed.events or not parsed.defects  # all-bad bodies raise instead

    document = document_of(raw)
    assert document is not None, "parsed, yet not JSON"
    wamids = {e.wamid for e in parsed.events if isinstance(e, StatusEvent)}
    is_covered = Coverage(parsed.defects)
    for kind, items in expected_items(document).items():
        made = sum(isinstance(event, ITEM_EVENTS[kind]) for event in parsed.events)
        clean = [(path, item) for path, item in items if not is_covered(path)]
        assert made <= len(items), f"{made} {kind} events from {len(items)} items"
        assert made >= len(clean), f"{kind}: {len(clean)} clean items, {made} events"
        if kind == "statuses":
            lost = [path for path, item in clean if item["id"] not in wamids]
            assert not lost, f"statuses without event or defect: {lost}"
    return parsed


# --- generators ----------------------------------------------------------------------------------

KEYS = [
    "object", "entry", "id", "time", "changes", "field", "value", "metadata", "phone_number_id",
    "display_phone_number", "statuses", "messages", "contacts", "errors", "user_preferences",
    "status", "timestamp", "recipient_id", "recipient_user_id", "recipient_type", "wa_id",
    "user_id", "code", "title", "error_data", "details", "pricing", "conversation", "origin",
    "from", "type", "system", "biz_opaque_callback_data", "message", "business_phone", "x", "",
]  # fmt: skip
HUGE_NUMBERS = [
    "1e999", "-1e999", "1E-400", "-0", "0.0", "99999999999", "100000000000", "1" + "0" * 400,
    "18446744073709551616", "-9223372036854775809", "123456789012345678901234567890.5",
]  # fmt: skip
NOT_NUMBERS = ["NaN", "Infinity", "-Infinity", "nan", "inf", "+1", "01", ".5", "1.", "0x10"]
BAD_UTF8 = [
    b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\x80", b"\xe2\x82",
]  # fmt: skip
BOMS = [b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"]


class Raw(str):
    """JSON text emitted verbatim (tokens Python's json would not write, deep nesting)."""


class Pairs(list[tuple[str, Any]]):
    """An object written as (key, value) pairs in order, so a key can repeat."""


def encode(node: Any) -> str:
    if isinstance(node, Raw):
        return str(node)
    if isinstance(node, Pairs | dict):
        pairs = node if isinstance(node, Pairs) else node.items()
        return "{" + ",".join(json.dumps(k) + ":" + encode(v) for k, v in pairs) + "}"
    if isinstance(node, list):
        return "[" + ",".join(encode(v) for v in node) + "]"
    return json.dumps(node, ensure_ascii=False, allow_nan=True)


def to_bytes(node: Any) -> bytes:
    return encode(node).encode("utf-8", "surrogatepass")  # lone surrogates: invalid UTF-8


texts = st.text(max_size=20) | st.sampled_from(["\x00", "é", "wamid.X", "", " "])
tame_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
    | st.sampled_from(["sent", "failed", "1750030073", "16505551234", "US.1", "messages"])
)
hostile_scalars = (
    st.sampled_from(["\ud800", "\udfff", "a\udc80b"])  # lone surrogates: invalid UTF-8
    | st.sampled_from([float("nan"), float("inf"), float("-inf")])  # NaN / Infinity tokens
    | st.sampled_from(HUGE_NUMBERS + NOT_NUMBERS).map(Raw)
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(KEYS), children, max_size=5
    )


tame_values = st.recursive(tame_scalars, _containers, max_leaves=20)
json_values = st.recursive(tame_scalars | hostile_scalars, _containers, max_leaves=20)
timestamps = st.integers(-5, 2 * 10**11) | st.sampled_from(["1750030073", "", "x", "1.5", "-1"])
status_items = st.fixed_dictionaries(
    {  # mostly usable, sometimes not: a missing key is a swap to json_values' null
        "id": st.sampled_from(["wamid.A", "wamid.B", "wamid.C"]) | texts | st.integers(),
        "status": st.sampled_from(["sent", "delivered", "read", "failed", "DELIVERED"]) | texts,
        "timestamp": timestamps | timestamps | tame_values,
    },
    optional={
        "recipient_id": texts | st.integers(0, 10**15),
        "recipient_type": st.sampled_from(["individual", "group"]) | texts,
        "errors": st.lists(
            st.fixed_dictionaries(
                {}, optional={"code": st.integers() | texts, "title": texts | tame_values}
            )
            | tame_values,
            max_size=3,
        ),
        "pricing": tame_values,
    },
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, Raw | Pairs):
        return out
    if isinstance(node, dict):
        for key, child in node.items():
            out += _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            out += _paths(child, (*prefix, index))
    return out


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        node = node[step]
    return node


def _set(root: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    _get(root, path[:-1])[path[-1]] = new
    return root


def mutate(document: Any, data: st.DataObject) -> Any:
    """One JSON-level mutation of ``document`` (changed in place where possible)."""
    path = data.draw(st.sampled_from(_paths(document)[1:] or [()]), label="path")
    node = _get(document, path)
    action = data.draw(
        st.sampled_from(
            ["delete", "swap", "add", "hostile", "huge_string", "nest", "duplicate", "wrap"]
        ),
        label="action",
    )
    if action == "delete" and path:
        parent = _get(document, path[:-1])
        del parent[path[-1]]
        return document
    if action == "swap" or (action == "delete" and not path):
        return _set(document, path, data.draw(tame_values, label="swap"))
    if action == "add":
        if isinstance(node, Pairs):
            node.append((data.draw(st.sampled_from(KEYS), label="key"), data.draw(tame_values)))
        elif isinstance(node, dict):
            node[data.draw(st.sampled_from(KEYS), label="key")] = data.draw(tame_values)
        elif isinstance(node, list):
            node.insert(data.draw(st.integers(0, len(node))), data.draw(tame_values))
        return document
    if action == "huge_string":
        size = data.draw(st.sampled_from([5_000, 100_000, 1_000_000]), label="size")
        char = data.draw(st.sampled_from(["9", "é", "\x00", "\\", "\U0001f600"]), label="char")
        return _set(document, path, char * size)
    if action == "hostile":
        return _set(document, path, data.draw(hostile_scalars, label="hostile"))
    if action == "nest":
        depth = data.draw(st.sampled_from([2, 64, 500, 2_000, 100_000]), label="depth")
        opener, closer = data.draw(st.sampled_from([("[", "]"), ('{"a":', "}")]), label="kind")
        return _set(document, path, Raw(opener * depth + encode(node) + closer * depth))
    if action == "duplicate" and isinstance(node, dict) and node:
        key = data.draw(st.sampled_from(sorted(node)), label="dup_key")
        other = data.draw(tame_values, label="dup_value")
        pairs = list(node.items())
        at = data.draw(st.integers(0, len(pairs)), label="dup_at")  # before or after the key
        return _set(document, path, Pairs([*pairs[:at], (key, other), *pairs[at:]]))
    return _set(document, path, [node] if data.draw(st.booleans()) else {"x": node})


def damage(raw: bytes, data: st.DataObject) -> bytes:
    """At most one byte-level change: invalid UTF-8 in a string, a BOM, truncation, junk."""
    action = data.draw(st.sampled_from(["none"] * 6 + ["utf8", "bom", "cut", "junk"]))
    if action == "utf8":
        quotes = [m.end() for m in re.finditer(rb'"', raw)] or [0]
        at = data.draw(st.sampled_from(quotes), label="after_quote")
        return raw[:at] + data.draw(st.sampled_from(BAD_UTF8)) + raw[at:]
    if action == "bom":
        return data.draw(st.sampled_from(BOMS)) + raw
    if action == "cut":
        return raw[: data.draw(st.integers(0, max(0, len(raw) - 1)), label="cut_at")]
    if action == "junk":
        return raw + data.draw(st.sampled_from([b"\n", b" \r\n", b"x", b"{}", b"\x00", b","]))
    return raw


# --- the fuzz tests ----------------------------------------------------------------------------


@fuzz(3_000)
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(raw: bytes) -> None:
    check(raw)


@fuzz(1_500)
@given(json_values)
def test_arbitrary_json_documents(document: Any) -> None:
    check(to_bytes(document))


@fuzz(1_500)
@given(
    st.dictionaries(st.sampled_from(KEYS), tame_values, max_size=4),
    st.lists(st.one_of(status_items, status_items, status_items, tame_values), max_size=6),
)
# a dropped item before one that is a defect: the defect's path is the item's own index
@example(
    {"user_preferences": [None, {"value": "0"}]},
    [{"id": "wamid.A", "status": "sent", "timestamp": 0}],
)
def test_arbitrary_objects_with_webhook_keys(document: dict[str, Any], statuses: Any) -> None:
    """Objects with status-like items: the On-Premises path and the lenient decoder."""
    if "statuses" not in document:
        document["statuses"] = statuses
    check(to_bytes(document))


@fuzz(5_000)
@given(st.sampled_from(SAMPLES), st.data())
def test_mutated_real_samples(sample: Any, data: st.DataObject) -> None:
    document = copy.deepcopy(sample)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        document = mutate(document, data)
    check(damage(to_bytes(document), data))


# --- the accounting itself, on known inputs -----------------------------------------------------

BATCH_NAME = "SYNTHETIC_batched_two_statuses_one_change_from_meta_examples.json"
BATCH = json.loads((FIXTURES / BATCH_NAME).read_bytes())


def test_accounting_sees_a_dropped_item() -> None:
    """The oracle is not vacuous: a parse result that lost an item is caught."""
    raw = to_bytes(BATCH)
    parsed = parse_webhook(raw)
    items = expected_items(msgspec.json.decode(raw))["statuses"]
    assert len(items) == 2 and sum(isinstance(e, StatusEvent) for e in parsed.events) == 2
    assert not any(covered(path, parsed.defects) for path, _ in items)
    value = "$.entry[0].changes[0].value"
    assert covered(f"{value}.statuses[1]", (Defect(f"{value}.statuses[1].timestamp", "x"),))
    assert covered(f"{value}.statuses[1]", (Defect("$.entry[0].changes[0].field", "x"),))
    assert not covered(f"{value}.statuses[1]", (Defect(f"{value}.statuses[0]", "x"),))
    assert not covered(f"{value}.statuses[1]", (Defect(f"{value}.metadata.phone_number_id", "x"),))


def test_a_batch_of_many_statuses_with_every_tenth_broken_is_fully_accounted() -> None:
    document = copy.deepcopy(BATCH)
    template = document["entry"][0]["changes"][0]["value"]["statuses"][0]
    statuses = []
    for i in range(5_000):
        status = {**template, "id": f"wamid.{i}"}
        if i % 10 == 0:
            status["timestamp"] = ["not", "a", "time"]
        statuses.append(status)
    document["entry"][0]["changes"][0]["value"]["statuses"] = statuses
    parsed = check(to_bytes(document))
    assert parsed is not None
    assert sum(isinstance(e, StatusEvent) for e in parsed.events) == 4_500
    assert len(parsed.defects) == 500


# --- hostile shapes, one by one ----------------------------------------------------------------

DEPTH = 100_000
SAMPLE_STATUS = (FIXTURES / "meta_doc_status_failed_131049.json").read_bytes()


def swap(old: bytes, new: bytes) -> bytes:
    """The sample with its first ``old`` replaced by ``new`` (which must be there)."""
    assert old in SAMPLE_STATUS
    return SAMPLE_STATUS.replace(old, new, 1)


TIMESTAMP, PHONE = b'"1751142888"', b'"16505551234"'


ARRAYS = b"[" * DEPTH + b"]" * DEPTH
OBJECTS = b'{"a":' * DEPTH + b"1" + b"}" * DEPTH


@pytest.mark.parametrize(
    "raw",
    [
        ARRAYS,
        b"[" * DEPTH,  # never closed
        OBJECTS,
        b'{"entry":' * DEPTH + b"[]" + b"}" * DEPTH,
        b'{"object":"whatsapp_business_account","x":' + ARRAYS + b"}",
        swap(b'"errors": [', b'"errors": [' + ARRAYS + b","),
        swap(b'"metadata": {', b'"metadata": {"p":' + OBJECTS + b","),
    ],
    ids=["arrays", "unclosed", "objects", "entry", "unknown-key", "status-errors", "metadata"],
)
def test_deep_nesting_is_a_parse_error(raw: bytes) -> None:
    """msgspec stops at Python's recursion limit (RecursionError); the parser reports it."""
    assert len(raw) <= MAX_PAYLOAD_BYTES
    with pytest.raises(ParseError, match="nested too deeply"):
        parse_webhook(raw)


def test_nesting_just_below_the_limit_is_fine_where_the_parser_does_not_look() -> None:
    nested = b"[" * 200 + b"]" * 200
    raw = swap(b'"metadata": {', b'"metadata": {"p":' + nested + b",")
    assert [e.status for e in parse_webhook(raw).events] == ["failed"]  # type: ignore[union-attr]


def test_huge_bodies_are_refused_unread() -> None:
    for raw in (b" " * (MAX_PAYLOAD_BYTES + 1), b"[" * (MAX_PAYLOAD_BYTES + 1)):
        with pytest.raises(ParseError, match="larger than the"):
            parse_webhook(raw)
    padded = SAMPLE_STATUS + b" " * (MAX_PAYLOAD_BYTES - len(SAMPLE_STATUS))
    assert len(padded) == MAX_PAYLOAD_BYTES and len(parse_webhook(padded).events) == 1


def test_huge_strings_and_numbers() -> None:
    """A 3 MB phone number is kept as given; numbers out of range are a ParseError."""
    huge = "1" * (MAX_PAYLOAD_BYTES - 2_000)
    raw = swap(PHONE, json.dumps(huge).encode())
    (event,) = parse_webhook(raw).events
    assert isinstance(event, StatusEvent) and event.recipient_phone == huge
    for number in (b"1e999", b"1" + b"0" * 400, b"18446744073709551616"):
        with pytest.raises(ParseError):
            parse_webhook(swap(TIMESTAMP, number))


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_not_json(token: bytes) -> None:
    with pytest.raises(ParseError, match="not valid JSON"):
        parse_webhook(swap(TIMESTAMP, token))


@pytest.mark.parametrize("bad", BAD_UTF8)
def test_invalid_utf8_in_a_field_the_parser_reads_is_a_parse_error(bad: bytes) -> None:
    with pytest.raises(ParseError, match="not valid JSON"):
        parse_webhook(swap(PHONE, b'"1650' + bad + b'"'))


def test_a_lone_surrogate_escape_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="not valid JSON"):
        parse_webhook(swap(PHONE, rb'"\ud800"'))


@pytest.mark.parametrize("bom", BOMS)
def test_a_byte_order_mark_is_a_parse_error(bom: bytes) -> None:
    """Meta sends UTF-8 without a BOM; a body with one is refused, not guessed at."""
    with pytest.raises(ParseError, match="not valid JSON"):
        parse_webhook(bom + SAMPLE_STATUS)


def test_duplicate_keys_the_last_one_wins() -> None:
    """As in every mainstream JSON decoder; both copies are in the stored raw body anyway."""
    raw = swap(b'"status": "failed"', b'"status": "failed", "status": "read"')
    (event,) = parse_webhook(raw).events
    assert isinstance(event, StatusEvent) and event.status == "read"
