"""Render ``BENCHMARKS.md`` (repo root) from a results file of ``bench/run.py``.

    python bench/write_benchmarks_md.py [RESULTS_JSON] [--out BENCHMARKS.md]

Only figures that are in the results file are written: nothing is estimated or carried over.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from report import render_benchmarks_md  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="?", type=Path, default=BENCH / "results" / "latest.json")
    parser.add_argument("--out", type=Path, default=BENCH.parent / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    args.out.write_text(render_benchmarks_md(results))
    print(f"wrote {args.out} from {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
