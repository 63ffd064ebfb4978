"""``delivery-monitor inspect``: events as JSON lines, summary on stderr, exit status per file."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import sys
from pathlib import Path

import msgspec
import pytest

from streams.core.events import Event
from streams.inspection import main

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "whatsapp"
FAILED_131049 = FIXTURES / "meta_doc_status_failed_131049.json"
BATCHED = FIXTURES / "SYNTHETIC_batched_two_statuses_one_change_from_meta_examples.json"
INBOUND = FIXTURES / "meta_doc_inbound_text.json"


def compact(path: Path) -> bytes:
    return json.dumps(json.loads(path.read_bytes())).encode()


def events_of(stdout: str) -> list[Event]:
    return [msgspec.json.decode(line, type=Event) for line in stdout.splitlines()]


def test_pretty_printed_files_print_events_and_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([str(BATCHED), str(INBOUND)]) == 0
    out, err = capsys.readouterr()
    events = events_of(out)
    assert [type(e).__name__ for e in events] == [
        "StatusEvent",
        "StatusEvent",
        "InboundMessageEvent",
    ]
    assert json.loads(out.splitlines()[0])["kind"] == "status"
    assert "status events 2, other events 1" in err
    assert "failed 1" in err and "sent 1" in err
    assert "131049 1" in err
    assert "us_marketing_pause 1" in err
    assert "inbound_message 1" in err


def test_summary_only_prints_no_events(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--summary-only", str(FAILED_131049)]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert "country      US 1" in err


def test_json_lines_report_bad_lines_by_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A capture file of one body per line: good lines print, bad lines are named by number."""
    path = tmp_path / "capture.log"  # no .jsonl suffix: detected from the first line
    lines = [compact(FAILED_131049), b'{"hello": 1}', b"", compact(INBOUND), b"not json"]
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert main([str(path)]) == 1
    out, err = capsys.readouterr()
    assert len(events_of(out)) == 2
    errors = [line for line in err.splitlines() if line.startswith(str(path))]
    assert errors == [
        f"{path}:2: $: not a WhatsApp webhook: no 'entry' (Cloud API) and no 'statuses', "
        "'messages', 'contacts' or 'errors' (On-Premises API)",
        f"{path}:5: $: not valid JSON: JSON is malformed: invalid character (byte 4)",
    ]
    assert "unparseable 2" in err


def test_oversized_line_is_reported_and_the_next_line_still_parses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "capture.jsonl"
    huge = b'{"statuses": "' + b"x" * (4 * 1024 * 1024) + b'"}'
    path.write_bytes(compact(INBOUND) + b"\n" + huge + b"\n" + compact(FAILED_131049) + b"\n")
    assert main(["--summary-only", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:2: $: body is 3145730 bytes, larger than the 3145728 limit" in err
    assert "status events 1, other events 1" in err


def test_oversized_single_body_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "huge.json"
    path.write_bytes(b'{\n"statuses": "' + b"x" * (4 * 1024 * 1024) + b'"}\n')
    assert main([str(path)]) == 1
    assert f"{path}: $: body is 3145729 bytes, larger than" in capsys.readouterr().err


def test_jsonl_suffix_forces_line_mode_even_when_line_one_is_bad(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "capture.jsonl"
    path.write_bytes(b"{broken\n" + compact(FAILED_131049) + b"\n")
    assert main(["--summary-only", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:1: $: not valid JSON" in err
    assert "status events 1" in err


def test_gzip_is_detected_from_content(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bodies.bin"
    path.write_bytes(gzip.compress(compact(BATCHED) + b"\n" + compact(FAILED_131049) + b"\n"))
    assert main([str(path)]) == 0
    assert len(events_of(capsys.readouterr().out)) == 3


def test_gzipped_pretty_printed_body(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "body.json.gz"
    with BATCHED.open("rb") as source, gzip.open(path, "wb") as packed:
        shutil.copyfileobj(source, packed)
    assert main([str(path)]) == 0
    assert len(events_of(capsys.readouterr().out)) == 2


def test_invalid_utf8_and_deep_nesting_are_reported_not_raised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "odd.log"
    path.write_bytes(b'{"statuses": ["\xff"]}\n' + b"[" * 100_000 + b"\n")
    assert main([str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: $: not valid JSON: a string is not valid UTF-8" in err
    path.write_bytes(b"[" * 100_000 + b"\n")
    assert main([str(path)]) == 1
    assert f"{path}: $: not valid JSON: nested too deeply" in capsys.readouterr().err


def test_unparseable_file_gives_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broken.json"
    path.write_bytes(b'{\n  "object": "whatsapp_business_account",\n  "entry": [\n')
    assert main([str(path), str(FAILED_131049)]) == 1
    out, err = capsys.readouterr()
    assert len(events_of(out)) == 1  # the other file still prints
    assert f"{path}: $: not valid JSON: Input data was truncated" in err.splitlines()


def test_single_line_file_errors_carry_no_line_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "page.json"
    path.write_bytes(b'{"object": "page", "entry": []}')
    assert main([str(path)]) == 1
    assert f"{path}: $.object: object is 'page'" in capsys.readouterr().err


def test_missing_file_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.json"
    assert main([str(missing)]) == 1
    assert f"{missing}: cannot read: No such file or directory" in capsys.readouterr().err


def test_corrupt_gzip_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.gz"
    path.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    assert main([str(path)]) == 1
    assert f"{path}: cannot read:" in capsys.readouterr().err


def test_stdin_is_read_when_no_file_or_dash(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in ([], ["-"]):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(FAILED_131049.read_bytes())))
        assert main(argv) == 0
        (event,) = events_of(capsys.readouterr().out)
        assert event.wamid == "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI0QUQ2MjA4NEYyRkExNjMyREUA"  # type: ignore[union-attr]


def test_defects_are_reported_but_do_not_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = json.loads(BATCHED.read_bytes())
    del document["entry"][0]["changes"][0]["value"]["statuses"][0]["id"]
    path = tmp_path / "partly_bad.json"
    path.write_text(json.dumps(document))
    assert main([str(path)]) == 0
    out, err = capsys.readouterr()
    assert len(events_of(out)) == 1
    assert (
        f"{path}: defect $.entry[0].changes[0].value.statuses[0]: "
        "Object missing required field `id`"
    ) in err
    assert "defects 1" in err


def test_templates_are_counted_from_callback_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = json.loads(BATCHED.read_bytes())
    items = document["entry"][0]["changes"][0]["value"]["statuses"]
    items[0]["biz_opaque_callback_data"] = "template=spring_sale;campaign=c1"
    items[1]["biz_opaque_callback_data"] = "spring_sale"
    path = tmp_path / "attributed.json"
    path.write_text(json.dumps(document))
    assert main(["--summary-only", str(path)]) == 0
    assert "template     spring_sale 2" in capsys.readouterr().err
    assert main(["--summary-only", "--no-raw-template", str(path)]) == 0
    err = capsys.readouterr().err
    assert "template     spring_sale 1, (unattributed: not_a_template_name) 1" in err


def test_tracking_ids_are_unattributed_unless_the_operator_format_names_a_template(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = json.loads(BATCHED.read_bytes())
    items = document["entry"][0]["changes"][0]["value"]["statuses"]
    items[0]["biz_opaque_callback_data"] = "3f2b1c9e-4d5a-4b6c-8d7e-9f0a1b2c3d4e"
    items[1]["biz_opaque_callback_data"] = "order:12345|spring_sale"
    path = tmp_path / "ids.json"
    path.write_text(json.dumps(document))
    assert main(["--summary-only", str(path)]) == 0
    assert "template     (unattributed: not_a_template_name) 2" in capsys.readouterr().err
    pattern = r"order:\d+\|(?P<template>\w+)"
    assert main(["--summary-only", "--template-pattern", pattern, str(path)]) == 0
    err = capsys.readouterr().err
    assert "spring_sale 1" in err and "(unattributed: not_a_template_name) 1" in err
    with pytest.raises(SystemExit):
        main(["--template-pattern", "order:(\\d+)", str(path)])
    assert "needs a named group 'template'" in capsys.readouterr().err


def test_inbound_message_errors_are_listed_in_the_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (
        main(["--summary-only", str(FIXTURES / "SYNTHETIC_inbound_unsupported_131051.json")]) == 0
    )
    assert "inbound err  131051 1" in capsys.readouterr().err
