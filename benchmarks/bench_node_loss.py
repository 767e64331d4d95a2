"""A worker node lost mid-run, again and again (issue 12): rows lost, rows duplicated, runs completed, time added.

On a real two-worker Ray cluster on this machine (tests/raycluster.py: `ray start --block` nodes with
their own temp dirs, in a loopback-only network namespace; needs root), each trial records the same
run twice into fresh roots with `exitbench run --address ... --workers 2`: once undisturbed (the
baseline, same cluster, same minute) and once with one worker node's raylet SIGKILLed as soon as
the first shard is published. Every (utterance, block, level, source) is checked against an
in-process recording of the same spec.

    python benchmarks/bench_node_loss.py --trials 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

import pyarrow.parquet as pq  # noqa: E402
from raycluster import DRIVER_ENV, Cluster  # noqa: E402

from exitbench.harness.local import LocalExecutor  # noqa: E402
from exitbench.harness.runner import execute, prepare  # noqa: E402
from exitbench.harness.spec import RecordSettings, RunSpec  # noqa: E402
from exitbench.results.views import connect  # noqa: E402

KEYS = ["utt_id", "block", "level", "source"]


def one_run(cluster: Cluster, root: Path, n: int, kill: bool) -> tuple[float, int]:
    """Record into ``root`` (killing worker node 1 after the first shard if ``kill``); (wall s, exit code)."""
    cmd = [sys.executable, "-m", "exitbench", "run", "--address", cluster.address, "--workers", "2",
           "--dataset", "synthetic", "--dataset-opt", f"num_utterances={n}", "--shard-size", "2",
           "--metrics", "none", "-r", str(root), "-q"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cluster.wrap(cmd), env=dict(os.environ, **DRIVER_ENV), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if kill:
        while proc.poll() is None and not any((root / "_staging").glob("*/shard-*/_SUCCESS")):
            time.sleep(0.05)
        cluster.nodes[1].kill_raylet()
    out, _ = proc.communicate(timeout=600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(out[-2000:], file=sys.stderr)
    return wall, proc.returncode


def audit(root: Path, reference: set) -> dict:
    """Rows lost and duplicated against the reference, and whether the run says complete."""
    con = connect(root)
    got = con.execute("SELECT utt_id, block, level, source FROM blocks").fetchall()
    status = con.execute("SELECT status, num_errors FROM runs").fetchall()
    return {"lost": len(reference - set(got)), "duplicated": len(got) - len(set(got)),
            "extra": len(set(got) - reference), "complete": status == [("complete", 0)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--n", type=int, default=40, help="utterances per run")
    args = ap.parse_args()
    why = Cluster.available()
    if why:
        sys.exit(f"cannot start a cluster here: {why}")

    work = Path(tempfile.mkdtemp(prefix="bench-node-loss-"))
    spec = RunSpec("press-s", "synthetic", (("num_utterances", str(args.n)),), RecordSettings(metrics=(), shard_size=2))
    out = execute(prepare(spec), work / "reference", LocalExecutor())
    ref_rows = pq.read_table(work / "reference" / "blocks" / f"run={out.run_id}" / "part-0.parquet",
                             columns=KEYS).to_pylist()
    reference = {tuple(r[k] for k in KEYS) for r in ref_rows}

    cluster = Cluster()
    rows = []
    try:
        cluster.start_head(cpus=0)
        cluster.add_worker(cpus=1)
        cluster.add_worker(cpus=1)
        for trial in range(args.trials):
            base_wall, base_rc = one_run(cluster, work / f"base-{trial}", args.n, kill=False)
            kill_wall, kill_rc = one_run(cluster, work / f"kill-{trial}", args.n, kill=True)
            a = audit(work / f"kill-{trial}", reference)
            rows.append({"trial": trial + 1, "base_s": base_wall, "kill_s": kill_wall, "rc": kill_rc,
                         "base_rc": base_rc, **a})
            print(f"trial {trial + 1}: undisturbed {base_wall:.1f} s, node lost {kill_wall:.1f} s (exit {kill_rc});"
                  f" lost {a['lost']}, duplicated {a['duplicated']}, complete {a['complete']}", flush=True)
            cluster.replace_worker(1)
    finally:
        cluster.stop()

    completed = sum(r["complete"] and r["rc"] == 0 for r in rows)
    added = [r["kill_s"] - r["base_s"] for r in rows]
    print(f"\n{args.trials} trials of {args.n} utterances ({len(reference)} block rows each), one worker node of two"
          f" SIGKILLed after the first shard:")
    print(f"  rows lost: {sum(r['lost'] for r in rows)}, duplicated: {sum(r['duplicated'] for r in rows)},"
          f" unexpected: {sum(r['extra'] for r in rows)}")
    print(f"  runs completed: {completed}/{len(rows)}")
    print(f"  wall undisturbed: median {statistics.median(r['base_s'] for r in rows):.1f} s;"
          f" with a lost node: median {statistics.median(r['kill_s'] for r in rows):.1f} s;"
          f" added per lost node: median {statistics.median(added):.1f} s"
          f" (ratio {statistics.median(r['kill_s'] / r['base_s'] for r in rows):.2f}x)")


if __name__ == "__main__":
    main()
