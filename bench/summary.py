"""Collect the ratio rows every benchmark wrote with --json into one Markdown table.

`make bench` runs each benchmark with `--json bench-results/NAME.json`, then this script:

    python bench/summary.py bench-results            # prints the table, writes bench-results/summary.md

Rows are copied as measured (A, B, ratio, target/note); the table says when and in which mode each
benchmark ran and how long it took, so ratios from different runs are never mistaken for one run.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from report import Row, markdown_table


def collect(results_dir: Path) -> str:
    """The summary document for every *.json benchmark report in `results_dir`."""
    reports = sorted(path for path in results_dir.glob("*.json"))
    if not reports:
        raise SystemExit(f"bench/summary.py: error: no benchmark reports (*.json) in {results_dir}")
    sections = [f"# vf3d benchmarks ({len(reports)} reports in {results_dir})", ""]
    lines = ["| benchmark | measurement | A | B | ratio | target / note |", "|---|---|---|---|---|---|"]
    notes = []
    for path in reports:
        try:
            report = json.loads(path.read_text())
            rows = [Row(**row) for row in report["rows"]]
        except (ValueError, KeyError, TypeError) as error:
            raise SystemExit(f"bench/summary.py: error: {path} is not a benchmark report ({type(error).__name__}: {error})") from None
        name = path.stem
        written = datetime.fromtimestamp(path.stat().st_mtime).isoformat(timespec="minutes")
        wall = report.get("wall_seconds")
        notes.append(
            f"- `{name}`: mode {report.get('mode', '?')}, written {written}" + (f", {float(wall):.0f} s wall" if wall is not None else "")
        )
        table = markdown_table(rows).splitlines()[2:]  # drop its header: one shared header above
        lines += [f"| {name} {line}" for line in table]
    sections += (
        lines
        + ["", "Each benchmark measured its A and B side by side in one run; ratios from different rows come", "from different runs.", ""]
        + notes
    )
    return "\n".join(sections) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path, help="folder of benchmark JSON reports")
    args = parser.parse_args()
    document = collect(args.results_dir)
    (args.results_dir / "summary.md").write_text(document)
    sys.stdout.write(document)


if __name__ == "__main__":
    main()
