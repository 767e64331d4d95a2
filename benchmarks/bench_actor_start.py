"""Where a model actor's start and first calls go, outside Ray: N fresh processes at once, each timing its phases.

    python benchmarks/bench_actor_start.py [--model press-s] [--device auto] [--procs 1 4] [--calls 4]

Each process imports torch, starts a ``ModelWorker`` (the model actor's class, here outside Ray: the device's
context, the model, the test set, on a GPU the metrics' warm-up thread), then makes ``--calls`` single-utterance calls, each split into
the model pass (``forward_stage``) and the rest (``finish_stage``: block statistics and, on a GPU, SDR and
STOI there). With ``--procs 4`` the four processes start together, as four actors of one GPU do, so a cost
that only appears when processes share a device (or a disk, or the CPU) shows against ``--procs 1``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def child(model: str, dataset: str, device: str, calls: int, warm_up: bool) -> None:
    """One process: its phases' seconds as a JSON line on stdout."""
    marks: dict[str, float] = {}
    t = time.perf_counter()
    import torch

    marks["import torch"] = time.perf_counter() - t
    t = time.perf_counter()
    from exitbench.harness.devices import resolve_device
    from exitbench.harness.ray_executor import ModelWorker
    from exitbench.harness.record import finish_stage, forward_stage
    from exitbench.harness.spec import RecordSettings, RunSpec

    device = resolve_device(device)
    spec = RunSpec(model, dataset, (), RecordSettings())
    marks["exitbench imports"] = time.perf_counter() - t
    if not warm_up:
        import exitbench.harness.record as record

        record.warm_gpu_metrics = lambda *a, **k: None  # the actor's start as it was before the warm-up thread
    t = time.perf_counter()
    worker = ModelWorker(spec.to_json(), 1, device)  # the actor's own start, outside Ray
    net, testset = worker.model, worker.testset
    ids = testset.ids()
    marks["ModelWorker(): context, model, test set"] = time.perf_counter() - t
    for i, utt in enumerate(ids[:calls]):
        t = time.perf_counter()
        staged = forward_stage(net, testset, [utt])
        marks[f"call {i}: model pass"] = time.perf_counter() - t
        t = time.perf_counter()
        finish_stage(net, staged, spec.settings, device)
        marks[f"call {i}: statistics, GPU metrics"] = time.perf_counter() - t
    print(json.dumps(marks), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="press-s")
    p.add_argument("--device", default="auto")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 4], help="processes started together, per round")
    p.add_argument("--calls", type=int, default=4)
    p.add_argument("--no-warm-up", action="store_true", help="also each round without the GPU metrics' warm-up thread")
    p.add_argument("--child", choices=["warm", "cold"], help=argparse.SUPPRESS)
    args = p.parse_args()
    dataset = "demo-enhance" if args.model.startswith("slimdemucs") else "demo"
    if args.child:
        child(args.model, dataset, args.device, args.calls, args.child == "warm")
        return
    def round_of(n: int, kind: str) -> tuple[list[dict[str, float]], float]:
        cmd = [sys.executable, __file__, "--child", kind, "--model", args.model, "--device", args.device,
               "--calls", str(args.calls)]
        t = time.perf_counter()
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
        outs = []
        for i, pr in enumerate(procs):
            out, err = pr.communicate()
            lines = out.strip().splitlines()
            if pr.returncode or not lines:
                sys.exit(f"process {i} of a round failed (exit {pr.returncode}): "
                         f"{(err.strip().splitlines() or ['no output'])[-1]}")
            outs.append(json.loads(lines[-1]))
        return outs, time.perf_counter() - t

    # one round first, not shown: the first process on a fresh machine reads torch's and CUDA's libraries
    # from disk, a cost the round that happened to come first would carry alone
    round_of(1, "warm")
    kinds = ["warm", "cold"] if args.no_warm_up else ["warm"]
    for r, n in enumerate(args.procs):
        for kind in kinds if r % 2 == 0 else kinds[::-1]:  # alternating which goes first
            outs, wall = round_of(n, kind)
            print(f"\n| {n} process(es) at once, {args.model}, device {args.device}"
                  f"{'' if kind == 'warm' else ', no warm-up thread'} |"
                  + " | ".join(f" process {i} (s)" for i in range(n)) + " |")
            print("| --- |" + " --- |" * n)
            for key in outs[0]:
                print(f"| {key} |" + " | ".join(f" {o[key]:.3f}" for o in outs) + " |")
            print("| sum of phases |" + " | ".join(f" {sum(o.values()):.2f}" for o in outs) + " |")
            print(f"\nwall of the round, interpreter starts included: {wall:.2f} s")


if __name__ == "__main__":
    main()
