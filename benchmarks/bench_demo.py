"""Where the time of `exitbench demo` goes: Ray's start, resolving the run, the workers' start, recording, report.

    python benchmarks/bench_demo.py [--model press-s] [--device auto]

The phases are the demo command's own calls, in its order, each timed; the total is compared with the
sum of the phases (a ratio, so the breakdown accounts for the wall time it claims to explain). Two
differences from the command: the report's imports are timed on their own ("report: import"), where the
command loads them while the workers record, and Ray stays up, where the command stops it in a thread
while the report is drawn.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

T0 = time.perf_counter()
from exitbench.harness.ray_executor import RayExecutor, ensure_ray  # noqa: E402
from exitbench.harness.runner import execute, prepare  # noqa: E402
from exitbench.harness.spec import RecordSettings, RunSpec  # noqa: E402

IMPORTS = time.perf_counter() - T0


SITECUSTOMIZE = """\
import os
if os.environ.get("EXITBENCH_STACKS"):
    import sys, threading, time, traceback

    def _exitbench_stacks(path, every):
        # a Python thread holding the GIL to read the others' frames (faulthandler's watchdog reads them
        # without it and crashed a driver); a gap in the dumps means something held the GIL that long
        with open(path, "w", buffering=1) as f:
            f.write(f"started {time.time():.3f}: {' '.join(sys.argv)[:300]}\\n")
            me = threading.get_ident()
            while True:
                time.sleep(every)
                f.write(f"--- {time.time():.3f}\\n")
                for tid, frame in sys._current_frames().items():
                    if tid != me:
                        f.write(f"thread {tid}:\\n" + "".join(traceback.format_stack(frame)[-10:]))

    threading.Thread(target=_exitbench_stacks, daemon=True, name="exitbench-stacks",
                     args=(os.path.join(os.environ["EXITBENCH_STACKS"], f"{os.getpid()}.txt"),
                           float(os.environ["EXITBENCH_STACKS_EVERY"]))).start()
"""


def stack_dumps(folder: Path, every: float) -> None:
    """Make this process and every Python process started from here on (Ray's workers inherit the environment
    through the raylet) write their stacks into ``folder`` every ``every`` seconds."""
    import os

    folder.mkdir(parents=True, exist_ok=True)
    site = Path(tempfile.mkdtemp())
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    os.environ["EXITBENCH_STACKS"] = str(folder.resolve())
    os.environ["EXITBENCH_STACKS_EVERY"] = str(every)
    exec(SITECUSTOMIZE, {})


def timed_report_parts(build: Any) -> dict[str, float]:
    """Wrap the report's analysis queries and figure steps with timers; the totals fill in as it runs."""
    import functools

    totals: dict[str, float] = {}

    def wrap(owner: Any, name: str) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def timed(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                totals[name] = totals.get(name, 0.0) + time.perf_counter() - t

        setattr(owner, name, timed)

    for name in ("regret_curves", "pareto", "exit_map", "policy_summary", "deciding_condition", "slices",
                 "level_summary", "utterance_metrics"):
        wrap(build.A, name)
    for name in ("calibration_bands", "decision_bands", "utilization_vs_input_snr"):
        wrap(build.Q, name)
    for name in ("run_figures", "_run_section", "_png_data_uri", "listen"):
        wrap(build, name)
    for name in ("open_run_model", "model_output", "recompute"):
        wrap(build.AU, name)
    return totals


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="press-s")
    p.add_argument("--device", default="auto")
    p.add_argument("--cpus-per-worker", type=float, default=None, help="Ray CPUs each model actor reserves")
    p.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs each model actor holds")
    p.add_argument("--timeline", help="write Ray's timeline of the recording here and summarise it per task")
    p.add_argument("--reps", type=int, default=1,
                   help="record this many times in one Ray session (a fresh results root each time); prints when"
                        " each utterance was done; the phases are of the last recording")
    p.add_argument("--stacks", help="a folder: this process and every Ray process started after it write all their"
                                    " threads' Python stacks there every --stacks-every seconds, to show what a"
                                    " stall waits on")
    p.add_argument("--stacks-every", type=float, default=2.0)
    args = p.parse_args()
    if args.stacks:
        stack_dumps(Path(args.stacks), args.stacks_every)
    dataset = "demo-enhance" if args.model.startswith("slimdemucs") else "demo"
    root = Path(tempfile.mkdtemp())
    marks: dict[str, float] = {}

    t = time.perf_counter()
    ensure_ray()
    marks["ray start"] = time.perf_counter() - t
    t = time.perf_counter()
    prepared = prepare(RunSpec(args.model, dataset, (), RecordSettings()))
    marks["resolve model and test set"] = time.perf_counter() - t
    executor = RayExecutor(device=args.device, cpus_per_worker=args.cpus_per_worker,
                           gpus_per_worker=args.gpus_per_worker)
    t_reps = time.perf_counter()
    for rep in range(1, args.reps):  # earlier recordings first, so that the phases below are of the last one
        done: list[float] = []
        t = time.perf_counter()
        execute(prepared, root / f"rep{rep}", executor, on_utterance=lambda k: done.append(time.perf_counter()))
        print(f"recording {rep}: {time.perf_counter() - t:.2f} s; utterances done at (s): "
              + ", ".join(f"{d - t:.1f}" for d in done))
    if args.reps > 1:
        marks[f"earlier recordings ({args.reps - 1})"] = time.perf_counter() - t_reps
    first: list[float] = []
    t = time.perf_counter()
    outcome = execute(prepared, root / "results", executor, on_utterance=lambda k: first.append(time.perf_counter()))
    end = time.perf_counter()
    if args.reps > 1:
        print(f"recording {args.reps} (phases below): utterances done at (s): "
              + ", ".join(f"{d - t:.1f}" for d in first))
    if args.timeline:
        import sys

        sys.path.insert(0, str(Path(__file__).parent))
        from bench_harness import timeline_summary

        timeline_summary(args.timeline, end - t)
    marks["workers' start (to the first utterance)"] = first[0] - t
    marks[f"recording {outcome.num_utterances} utterances"] = end - first[0]
    t = time.perf_counter()
    from exitbench.reports import build

    report_parts = timed_report_parts(build)
    marks["report: import"] = time.perf_counter() - t
    t = time.perf_counter()
    build.build_report(root / "results", [prepared.run_id], root / "reports")
    marks["report"] = time.perf_counter() - t
    total = time.perf_counter() - T0
    print(f"| exitbench demo ({args.model}, device {args.device}) | seconds |")
    print("| --- | --- |")
    print(f"| imports | {IMPORTS:.2f} |")
    for k, v in marks.items():
        print(f"| {k} | {v:.2f} |")
    print(f"| total (accounted for: {(IMPORTS + sum(marks.values())) / total:.2f}) | {total:.2f} |")
    print("\n| report part (nested parts overlap) | seconds |\n| --- | --- |")
    for name, sec in sorted(report_parts.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {sec:.2f} |")


if __name__ == "__main__":
    main()
