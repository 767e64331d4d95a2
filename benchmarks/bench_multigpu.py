"""Scaling of the Ray executor across GPUs (issue 9): one call records the same set with 1, 2, 4... GPUs.

    python benchmarks/bench_multigpu.py --n 3000 --seconds 5 [--gpus 1,2,4] [--out $OUT]

A WSJ0-2mix-sized set (3000 generated two-speaker mixtures of ~5 s at 8 kHz) with every metric at
every level, one model actor per GPU and metric tasks on the remaining CPUs. Prints throughput and
scaling efficiency (throughput_k / (k * throughput_1)) per GPU count and writes the table to
``--out/multigpu.md``. Needs Ray and a machine with several GPUs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from bench_harness import spec, timed

from exitbench.harness.ray_executor import RayExecutor, ensure_ray
from exitbench.harness.runner import execute, prepare


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--gpus", default=None, help="GPU counts to try (default: 1, 2, 4, ... up to the machine's)")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args()
    import ray

    ensure_ray()
    total = int(ray.cluster_resources().get("GPU", 0))
    if total < 1:
        raise SystemExit("no GPU in the Ray cluster")
    counts = [int(x) for x in args.gpus.split(",")] if args.gpus else [k for k in (1, 2, 4, 8) if k <= total]
    rows = []
    for k in counts:
        wall = timed(lambda: execute(prepare(spec(args.n, args.seconds, ("sdr", "pesq", "stoi"), shard=16)),
                                     tempfile.mkdtemp(), RayExecutor(workers=k, gpus_per_worker=1.0)))[0]
        rows.append((k, wall, args.n / wall))
    base = rows[0][2]
    lines = [f"| GPUs | wall (s) | utterances/s | scaling efficiency |", "| --- | --- | --- | --- |"]
    lines += [f"| {k} | {w:.1f} | {t:.2f} | {t / (k * base):.0%} |" for k, w, t in rows]
    text = "\n".join(lines)
    print(text)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "multigpu.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
