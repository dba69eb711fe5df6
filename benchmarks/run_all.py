"""Run every benchmark, each in its own process, and print their tables.

Run: ``python benchmarks/run_all.py [--quick] [--write]``; ``--write`` also saves the tables,
with the machine they ran on, to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
from pathlib import Path

from common import machine

HERE = Path(__file__).parent
BENCHMARKS = [
    "overhead.py",
    "fusion.py",
    "competition.py",
    "batching.py",
    "locality.py",
    "overload.py",
    "faults.py",
    "autoscaling.py",
    "pipelines.py",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument("--write", action="store_true", help="save the tables to benchmarks/RESULTS.md")
    args = parser.parse_args()
    sections = []
    failed = []
    for name in BENCHMARKS:
        script = HERE / name
        if not script.exists():
            continue
        print(f"### {name}", flush=True)
        command = [sys.executable, str(script), *(["--quick"] if args.quick else [])]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
        print(done.stdout, flush=True)
        if done.returncode != 0:
            failed.append(name)
        sections.append(_section(name, done.stdout.strip(), done.returncode))
    if args.write:
        mode = "quick" if args.quick else "full"
        header = [
            "# Benchmark results",
            "",
            f"Machine: {machine()}.",
            f"Run: `python benchmarks/run_all.py{' --quick' if args.quick else ''} --write` ({mode}), "
            f"{datetime.date.today().isoformat()}; every ratio compares two runs made side by side on one cluster.",
        ]
        (HERE / "RESULTS.md").write_text("\n".join(header) + "\n\n" + "\n\n".join(sections) + "\n", encoding="utf-8")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _section(name: str, output: str, status: int) -> str:
    """Markdown for one benchmark: its own output, or its plain text in a code block."""
    if status != 0 and not output:
        return f"## {name}\n\nfailed with exit status {status}"
    if output.startswith("#"):
        return output
    return f"## {name}\n\n```\n{output}\n```"


if __name__ == "__main__":
    sys.exit(main())
