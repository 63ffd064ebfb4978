"""Property: whatever bytes arrive, ``parse_webhook`` returns events or raises ParseError only.

Three generators: arbitrary bytes, byte-level mutations of real samples, and JSON-level mutations
of real samples (a random subtree replaced by random JSON), which reach deep into the typed and
lenient decoding paths.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.core import EVENT_TYPES, ParsedWebhook, ParseError, parse_webhook

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "whatsapp"
SAMPLES = [path.read_bytes() for path in sorted(FIXTURES.glob("*.json"))]

PROPERTY = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["sent", "failed", "1750030073", "16505551234", "US.1", "messages"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(
            ["id", "status", "timestamp", "errors", "code", "statuses", "entry", "changes",
             "value", "field", "metadata", "contacts", "wa_id", "user_id", "pricing", "x"]
        ),
        children,
        max_size=4,
    ),
    max_leaves=12,
)  # fmt: skip


def check(raw: bytes) -> None:
    """The only allowed outcomes, and the invariants of a successful parse."""
    try:
        parsed = parse_webhook(raw)
    except ParseError as exc:
        assert exc.path.startswith("$")
        assert exc.reason
        return
    assert isinstance(parsed, ParsedWebhook)
    assert all(isinstance(event, EVENT_TYPES) for event in parsed.events)
    assert all(defect.path.startswith("$") and defect.reason for defect in parsed.defects)
    assert parsed.events or not parsed.defects  # all-bad bodies raise instead


@PROPERTY
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_give_events_or_parse_error(raw: bytes) -> None:
    check(raw)


@PROPERTY
@given(st.sampled_from(SAMPLES), st.data())
def test_byte_mutations_of_real_samples_give_events_or_parse_error(
    sample: bytes, data: st.DataObject
) -> None:
    raw = bytearray(sample)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        action = data.draw(st.sampled_from(["flip", "delete", "insert"]))
        if action == "flip":
            raw[at] = data.draw(st.integers(0, 255))
        elif action == "delete":
            del raw[at]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    check(bytes(raw))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            out += _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            out += _paths(child, (*prefix, index))
    return out


def _replace(node: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(node, dict):
        return {**node, head: _replace(node[head], rest, new)}
    copy = list(node)
    copy[head] = _replace(node[head], rest, new)
    return copy


@PROPERTY
@given(st.sampled_from(SAMPLES), st.data())
def test_json_mutations_of_real_samples_give_events_or_parse_error(
    sample: bytes, data: st.DataObject
) -> None:
    document = json.loads(sample)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(document)))
        document = _replace(document, path, data.draw(json_values))
    check(json.dumps(document).encode())


def test_json_mutation_that_breaks_one_status_keeps_the_other() -> None:
    """A concrete instance of the property's partial-batch behaviour."""
    name = "SYNTHETIC_batched_two_statuses_one_change_from_meta_examples.json"
    document = json.loads((FIXTURES / name).read_bytes())
    document["entry"][0]["changes"][0]["value"]["statuses"][0]["timestamp"] = {"x": 1}
    parsed = parse_webhook(json.dumps(document).encode())
    assert [e.status for e in parsed.events] == ["failed"]  # type: ignore[union-attr]
    assert [d.path for d in parsed.defects] == ["$.entry[0].changes[0].value.statuses[0].timestamp"]
