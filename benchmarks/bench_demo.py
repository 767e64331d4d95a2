"""Where the time of `exitbench demo` goes: Ray's start, resolving the run, the workers' start, recording, report.

    python benchmarks/bench_demo.py [--model press-s] [--device auto]

The phases are the demo command's own calls, in its order, each timed; the total is compared with the
sum of the phases (a ratio, so the breakdown accounts for the wall time it claims to explain).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

T0 = time.perf_counter()
from exitbench.harness.ray_executor import RayExecutor, ensure_ray  # noqa: E402
from exitbench.harness.runner import execute, prepare  # noqa: E402
from exitbench.harness.spec import RecordSettings, RunSpec  # noqa: E402

IMPORTS = time.perf_counter() - T0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="press-s")
    p.add_argument("--device", default="auto")
    p.add_argument("--cpus-per-worker", type=float, default=None, help="Ray CPUs each model actor reserves")
    p.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs each model actor holds")
    p.add_argument("--timeline", help="write Ray's timeline of the recording here and summarise it per task")
    args = p.parse_args()
    dataset = "demo-enhance" if args.model.startswith("slimdemucs") else "demo"
    root = Path(tempfile.mkdtemp())
    marks: dict[str, float] = {}

    t = time.perf_counter()
    ensure_ray()
    marks["ray start"] = time.perf_counter() - t
    t = time.perf_counter()
    prepared = prepare(RunSpec(args.model, dataset, (), RecordSettings()))
    marks["resolve model and test set"] = time.perf_counter() - t
    first: list[float] = []
    t = time.perf_counter()
    outcome = execute(prepared, root / "results", RayExecutor(device=args.device,
                                                              cpus_per_worker=args.cpus_per_worker,
                                                              gpus_per_worker=args.gpus_per_worker),
                      on_utterance=lambda k: first or first.append(time.perf_counter()))
    end = time.perf_counter()
    if args.timeline:
        import sys

        sys.path.insert(0, str(Path(__file__).parent))
        from bench_harness import timeline_summary

        timeline_summary(args.timeline, end - t)
    marks["workers' start (to the first utterance)"] = first[0] - t
    marks[f"recording {outcome.num_utterances} utterances"] = end - first[0]
    t = time.perf_counter()
    from exitbench.reports.build import build_report

    build_report(root / "results", [prepared.run_id], root / "reports")
    marks["report"] = time.perf_counter() - t
    total = time.perf_counter() - T0
    print(f"| exitbench demo ({args.model}, device {args.device}) | seconds |")
    print("| --- | --- |")
    print(f"| imports | {IMPORTS:.2f} |")
    for k, v in marks.items():
        print(f"| {k} | {v:.2f} |")
    print(f"| total (accounted for: {(IMPORTS + sum(marks.values())) / total:.2f}) | {total:.2f} |")


if __name__ == "__main__":
    main()
