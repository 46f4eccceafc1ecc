"""Print benchmark JSON results (from ``--json FILE``) as Markdown tables, e.g. for the README.

python benchmarks/show_results.py results/streaming.json results/build.json ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from common import format_value


def _row(cells: tuple[Any, ...]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def markdown(result: dict[str, Any]) -> str:
    """One result file as a heading, a line about the machine, the rows and the bars."""
    machine = result.get("machine", {})
    when = (
        f"{machine.get('time', '?')}, {machine.get('cpus', '?')} CPUs, load {machine.get('load_avg_1m', '?')}"
    )
    settings = ", ".join(f"{k}={v}" for k, v in result.get("settings", {}).items())
    lines = [
        f"### {result['title']}",
        "",
        f"{when}, torch {machine.get('torch', '?')}; {settings}",
        "",
        "| row | value | unit | note |",
        "| --- | ---: | --- | --- |",
    ]
    for row in result["rows"]:
        cells = (row["name"], format_value(row["value"]), row["unit"], row.get("note", ""))
        lines.append(_row(cells))
    if result.get("bars"):
        lines += ["", "| bar | measured | needed | status |", "| --- | ---: | ---: | --- |"]
        for bar in result["bars"]:
            measured = "-" if bar["ratio"] is None else f"{format_value(bar['ratio'])}{bar['unit']}"
            needed = f"{bar['relation']} {format_value(bar['threshold'])}{bar['unit']}"
            lines.append(_row((bar["name"], measured, needed, bar["status"])))
    for note in result.get("notes", []):
        lines += ["", f"Note: {note}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="JSON files written with --json")
    args = parser.parse_args(argv)
    print("\n\n".join(markdown(json.loads(path.read_text())) for path in args.files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
