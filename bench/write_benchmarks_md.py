"""Render ``BENCHMARKS.md`` (repo root) from results files of ``bench/run.py``.

    python -m bench.write_benchmarks_md [RESULTS_JSON...] [--out BENCHMARKS.md]

The first file gives the page's header and its sections; the sections of the others (e.g. an
``alert_quality-*.json`` of ``bench/alert_quality.py``) are added after them, each with the run
it comes from. Default: ``bench/results/latest.json``, plus
``bench/results/alert_quality-latest.json`` when it exists.

    python -m bench.write_benchmarks_md --only alert_quality bench/results/alert_quality-latest.json

replaces just that section of the existing page (or adds it before the hand-written part) and
leaves the rest as it is.

Only figures that are in the results file are written: nothing is estimated or carried over,
except a hand-written section at the end of the existing page (from its first ``## `` heading
that says "hand-written" to the end), which is kept as it is: update it by hand when the figures
it discusses change.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.report import merge_results, render_benchmarks_md, render_section, splice_section

BENCH = Path(__file__).resolve().parent

RESULTS = BENCH / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=BENCH.parent / "BENCHMARKS.md")
    parser.add_argument("--only", metavar="SECTION", help="replace only this section of the page")
    args = parser.parse_args(argv)
    paths: list[Path] = args.results or default_results()
    if not paths:
        parser.error(f"no results file given and none in {RESULTS}")
    first, *others = (json.loads(p.read_text()) for p in paths)
    results = merge_results(first, *others)
    if args.only:
        # the page's header tells another run: the section says which run it comes from
        section = merge_results({}, first, *others)["sections"].get(args.only)
        if section is None:
            parser.error(f"no section {args.only!r} in {', '.join(str(p) for p in paths)}")
        page = args.out.read_text() if args.out.exists() else ""
        text = "\n".join(render_section(results, args.only, section))
        args.out.write_text(splice_section(page, args.only, text))
        print(f"wrote the {args.only} section of {args.out} from {paths[0]}")
        return 0
    kept = hand_written(args.out.read_text()) if args.out.exists() else ""
    text = render_benchmarks_md(results)
    args.out.write_text(text + ("\n" + kept if kept else ""))
    print(f"wrote {args.out} from {', '.join(str(p) for p in paths)}")
    if kept:
        print(f"kept its hand-written section ({kept.splitlines()[0]!r}): check it still holds")
    return 0


def default_results() -> list[Path]:
    """latest.json and alert_quality-latest.json, those that exist."""
    names = ("latest.json", "alert_quality-latest.json")
    return [RESULTS / n for n in names if (RESULTS / n).exists()]


def hand_written(text: str) -> str:
    """The hand-written tail of a BENCHMARKS.md: from the first "## ..." heading that says
    "hand-written" to the end ("" if there is none)."""
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith("## ") and "hand-written" in line.lower():
            return "".join(lines[i:])
    return ""


if __name__ == "__main__":
    sys.exit(main())
