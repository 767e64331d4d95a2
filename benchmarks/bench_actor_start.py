"""Where a model actor's start and first calls go, outside Ray: N fresh processes at once, each timing its phases.

    python benchmarks/bench_actor_start.py [--model press-s] [--device auto] [--procs 1 4] [--calls 4]

Each process does what ``ModelWorker`` does, in its order: import torch, create the device's context, load
the model and move it there, open the test set, then ``--calls`` single-utterance calls, each split into
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


def child(model: str, dataset: str, device: str, calls: int) -> None:
    """One process: its phases' seconds as a JSON line on stdout."""
    marks: dict[str, float] = {}
    t = time.perf_counter()
    import torch

    marks["import torch"] = time.perf_counter() - t
    t = time.perf_counter()
    from exitbench.harness.devices import full_float32, resolve_device

    device = resolve_device(device)
    if device.startswith("cuda"):
        torch.zeros(1, device=device)
        torch.cuda.synchronize()
    full_float32(device)
    marks["device context"] = time.perf_counter() - t
    t = time.perf_counter()
    from exitbench.harness.record import finish_stage, forward_stage
    from exitbench.harness.runner import load_model, open_for_model
    from exitbench.harness.spec import RecordSettings, RunSpec

    spec = RunSpec(model, dataset, (), RecordSettings())
    resolved = load_model(spec, check=False)
    net = resolved.model.to(device)
    marks["exitbench imports, load model"] = time.perf_counter() - t
    t = time.perf_counter()
    testset = open_for_model(spec, net)
    ids = testset.ids()
    marks["open test set"] = time.perf_counter() - t
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
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    dataset = "demo-enhance" if args.model.startswith("slimdemucs") else "demo"
    if args.child:
        child(args.model, dataset, args.device, args.calls)
        return
    cmd = [sys.executable, __file__, "--child", "--model", args.model, "--device", args.device,
           "--calls", str(args.calls)]
    for n in args.procs:
        t = time.perf_counter()
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(n)]
        outs = [json.loads(pr.communicate()[0].strip().splitlines()[-1]) for pr in procs]
        wall = time.perf_counter() - t
        print(f"\n| {n} process(es) at once, {args.model}, device {args.device} |"
              + " | ".join(f" process {i} (s)" for i in range(n)) + " |")
        print("| --- |" + " --- |" * n)
        for key in outs[0]:
            print(f"| {key} |" + " | ".join(f" {o[key]:.3f}" for o in outs) + " |")
        print(f"| sum of phases |" + " | ".join(f" {sum(o.values()):.2f}" for o in outs) + " |")
        print(f"\nwall of the round, interpreter starts included: {wall:.2f} s")


if __name__ == "__main__":
    main()
