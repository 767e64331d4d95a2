"""Record once and replay, against re-running inference once per threshold (DeeBERT-style scripts).

    python benchmarks/bench_rerun_vs_replay.py [--thresholds 50]

Baseline: for each threshold p, run the model over the demo set again and pick each block's exit
with the probabilistic rule (PRESS-style early exit, t = 15 dB). We time 3 such passes and
extrapolate to the full count (said in the output). exitbench: one recording (every exit, block
statistics, SI-SNR only), then the whole sweep over the thresholds from the recorded statistics.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from exitbench.datasets.registry import open_testset
from exitbench.harness.local import LocalExecutor
from exitbench.harness.runner import execute, prepare
from exitbench.harness.spec import RecordSettings, RunSpec
from exitbench.models.registry import resolve_model
from exitbench.results.replays import load_block_arrays, sweep_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--thresholds", type=int, default=50)
    args = p.parse_args()
    torch.set_num_threads(1)
    grid = np.linspace(0.0, 1.0, args.thresholds)

    model = resolve_model("press-s").model
    ts = open_testset("demo", sample_rate=8000)
    utts = [ts.load(i) for i in ts.ids()]

    def one_pass() -> None:
        with torch.inference_mode():
            for u in utts:
                model.forward_all(torch.from_numpy(u.mixture))  # a script re-runs the model per threshold

    passes = 3
    t0 = time.perf_counter()
    for _ in range(passes):
        one_pass()
    per_pass = (time.perf_counter() - t0) / passes
    baseline = per_pass * len(grid)

    root = tempfile.mkdtemp()
    t0 = time.perf_counter()
    outcome = execute(prepare(RunSpec("press-s", "demo", (), RecordSettings(metrics=()))), root, LocalExecutor())
    t_record = time.perf_counter() - t0
    t0 = time.perf_counter()
    arrays = load_block_arrays(root, outcome.run_id)
    frame = sweep_run(root, outcome.run_id, [15.0], ["probabilistic:t=15"], store=False, arrays=arrays)
    t_sweep = time.perf_counter() - t0
    ours = t_record + t_sweep
    print(f"| {len(utts)} demo utterances, {len(grid)} thresholds of probabilistic:t=15 | seconds | ratio |")
    print("| --- | --- | --- |")
    print(f"| re-run inference per threshold ({passes} passes timed, x{len(grid)}) | {baseline:.1f} | 1.0 |")
    print(f"| exitbench: record once ({t_record:.1f} s) + sweep {len(frame)} configurations ({t_sweep:.2f} s)"
          f" | {ours:.1f} | {baseline / ours:.1f}x faster |")


if __name__ == "__main__":
    main()
