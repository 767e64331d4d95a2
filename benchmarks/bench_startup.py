"""Start-up of the light commands, this tree against an earlier one, on the same results root in one run.

    mkdir -p .before && git archive ca72988 exitbench | tar -x -C .before   # the tree before the change
    python benchmarks/bench_startup.py --before .before --root results --run RUN [--repeat 5]

Each command runs as a fresh process (`python -m exitbench ...`, the package taken from the tree given
on PYTHONPATH), alternating between the trees; the table gives the median wall time and the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def wall(tree: Path, args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "exitbench", *args], cwd=tree, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(tree)})
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, required=True, help="folder holding the earlier exitbench package")
    p.add_argument("--root", type=Path, required=True, help="a results root with at least one complete run")
    p.add_argument("--run", required=True, help="a run id (or prefix) in that root, for replay")
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    root = str(a.root.resolve())
    commands = {"runs": ["runs", "-r", root], "query": ["query", "SELECT count(*) FROM blocks", "-r", root],
                "replay": ["replay", a.run, "-p", "oracle:t=10", "-r", root]}
    print("| command | before (s) | now (s) | now / before |")
    print("| --- | --- | --- | --- |")
    for name, args in commands.items():
        times: dict[str, list[float]] = {"before": [], "now": []}
        for _ in range(a.repeat):  # alternating, so that machine noise hits both alike
            times["before"].append(wall(a.before.resolve(), args))
            times["now"].append(wall(REPO, args))
        b, n = statistics.median(times["before"]), statistics.median(times["now"])
        print(f"| `exitbench {' '.join(args[:1])}` | {b:.2f} | {n:.2f} | {n / b:.2f} |")


if __name__ == "__main__":
    main()
