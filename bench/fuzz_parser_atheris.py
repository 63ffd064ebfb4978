"""Coverage-guided fuzzing of ``parse_webhook`` with atheris (libFuzzer), for a bounded time.

Not part of the test suite (the suite's bounded fuzzing is ``tests/unit/test_parse_fuzz.py``);
atheris is not a project dependency. Run::

    .venv/bin/pip install atheris          # a manylinux wheel: no clang needed on x86_64
    .venv/bin/python -m bench.fuzz_parser_atheris                         # 60 s
    .venv/bin/python -m bench.fuzz_parser_atheris -max_total_time=600 -workers=2 -jobs=2

Any libFuzzer flag is passed through. Without a corpus directory on the command line, a fresh
one in a temporary directory is seeded with tests/fixtures/whatsapp/*.json (libFuzzer writes the
inputs it finds interesting there, never into the fixtures), and a dictionary of webhook keys and
values guides mutations. The only allowed outcomes are a result or ``ParseError``: anything else
(RecursionError, TypeError, a crash in msgspec) stops the run, writes ``crash-<sha1>`` with the
input to the current directory and exits non-zero. Reproduce one with
``.venv/bin/python -m bench.fuzz_parser_atheris crash-<sha1>``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import atheris

REPO = Path(__file__).resolve().parent.parent

with atheris.instrument_imports(include=["streams"]):
    from streams.core import ParsedWebhook, ParseError, parse_webhook

TOKENS = [
    "object", "whatsapp_business_account", "entry", "changes", "field", "value", "messages",
    "user_preferences", "statuses", "contacts", "errors", "metadata", "phone_number_id",
    "display_phone_number", "id", "status", "timestamp", "recipient_id", "recipient_user_id",
    "recipient_type", "group", "wa_id", "user_id", "code", "title", "error_data", "details",
    "pricing", "conversation", "origin", "biz_opaque_callback_data", "from", "system",
    "message_template_status_update", "phone_number_quality_update", "account_update",
    "sent", "delivered", "read", "failed", "1750030073", "131049", "16505551234", "US.1",
]  # fmt: skip


def test_one_input(data: bytes) -> None:
    try:
        parsed = parse_webhook(data)
    except ParseError as exc:
        if not exc.path.startswith("$") or not exc.reason:
            raise AssertionError(f"ParseError without a path or reason: {exc!r}") from None
        return
    if not isinstance(parsed, ParsedWebhook) or (parsed.defects and not parsed.events):
        raise AssertionError(f"a result that should have been a ParseError: {parsed!r}")


def main() -> None:
    args = list(sys.argv)
    if not any(arg.startswith(("-max_total_time=", "-runs=")) for arg in args):
        args.append("-max_total_time=60")
    work = Path(tempfile.mkdtemp(prefix="fuzz-parser-"))  # kept: libFuzzer exits the process
    if not any(arg.startswith("-dict=") for arg in args):
        words = [f'"\\"{token}\\""' for token in TOKENS] + ['"{"', '"["', '":"', '","']
        (work / "webhook.dict").write_text("\n".join(words) + "\n")
        args.append(f"-dict={work / 'webhook.dict'}")
    if not any(not arg.startswith("-") for arg in args[1:]):  # no corpus or input given
        corpus = work / "corpus"
        corpus.mkdir()
        for sample in sorted((REPO / "tests" / "fixtures" / "whatsapp").glob("*.json")):
            shutil.copy(sample, corpus / sample.name)
        args.append(str(corpus))
        print(f"corpus: {corpus} (seeded from tests/fixtures/whatsapp)", file=sys.stderr)
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
