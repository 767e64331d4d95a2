#!/usr/bin/env python3
"""Training-step and inference throughput of a reference model, this tree against an earlier one.

    python benchmarks/bench_train_step.py --before .before [--config press-s] [--batch 16] [--seconds 4]

``--before`` is the root of an earlier checkout's package (``git archive <commit> exitbench | tar -x -C
.before``); both are measured in the same call, on the same device, at the same batch, each in its own
interpreter (the packages share a name). "before" times the old ``Trainer.train_step`` on one
GPU-resident random batch, the way the step was first measured (its input pipeline left out, which
favours it); "after" times the new loop whole: the batch drawn from the device-resident corpus by
batched mixing, the step, and the logging sync every ``log_every`` steps. Inference times
``forward_all`` of a 10-s mixture. The printed figure is audio-hours per second of the training step and
the ratio after/before; ``--profile DIR`` writes a ``torch.profiler`` kernel table of each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def worker(args: argparse.Namespace) -> dict:
    """Measure one package (whichever ``exitbench`` is first on sys.path)."""
    import torch

    import exitbench
    from exitbench.models import train as train_mod

    new = hasattr(train_mod, "DeviceCorpus")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = train_mod.load_config(args.config)
    cfg["data"].update(corpus=".corpus-none", valid_items=4, valid_seconds=1.0)
    cfg["train"].update(batch_size=args.batch, max_steps=10**9)
    if new and args.no_compile:
        cfg["train"]["compile"] = False
    if not new:
        cfg["train"]["num_workers"] = 0
    with tempfile.TemporaryDirectory() as tmp:
        trainer = train_mod.Trainer(cfg, Path(tmp), str(device), None)
        n = int(args.seconds * trainer.sr)
        trainer.net.train()
        agreement = None
        if new:
            data = trainer.loader(args.seconds, args.batch, 0)
            if trainer.compiled:  # the fused step must compute what eager mode does (same batch)
                batch = next(data)
                eager = {k: float(v) for k, v in trainer.losses(*batch).items()}
                fused = {k: float(v) for k, v in trainer.loss_fn(*batch).items()}
                # the router's Gumbel noise differs between the two; the level losses do not use it
                agreement = {k: round(abs(fused[k] - eager[k]) / max(abs(eager[k]), 1e-12), 6)
                             for k in ("nll", "neg_snr")}

            def step(i: int) -> None:
                trainer._step_and_log(next(data), 1e-3, "bench")
        else:
            torch.manual_seed(0)
            s = trainer.model.num_sources
            src = (torch.randn(args.batch, s, n, device=device) * 0.05)
            mix = src.sum(1)

            def step(i: int) -> None:
                trainer.train_step(mix, src, 1e-3)

        t0 = time.perf_counter()
        for i in range(args.warmup):
            step(i)
        _sync(torch, device)
        warm_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(args.steps):
            step(i)
        _sync(torch, device)
        wall = time.perf_counter() - t0
        profile_table = None
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=acts) as prof:
                for i in range(5):
                    step(i)
                _sync(torch, device)
            key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            profile_table = prof.key_averages().table(sort_by=key, row_limit=30)
            events = prof.key_averages()
            kernels = sum(e.count for e in events if getattr(e, "device_type", None) is not None
                          and str(e.device_type).endswith("CUDA"))
        # inference: forward_all of a 10-s mixture, eval mode
        trainer.net.eval()
        model = trainer.model
        model.to(device)
        x = torch.randn(int(10 * trainer.sr), device=device) * 0.05
        for _ in range(3):
            model.forward_all(x)
        _sync(torch, device)
        t1 = time.perf_counter()
        reps = 10
        for _ in range(reps):
            model.forward_all(x)
        _sync(torch, device)
        infer_s = (time.perf_counter() - t1) / reps
        infer_compiled_ms = None
        if new and device.type == "cuda" and not args.no_compile:
            # the same forward under torch.compile with dynamic lengths (one compile for all lengths)
            eager_module = model.module
            model.module = torch.compile(eager_module, dynamic=True)
            try:
                for length in (10.0, 7.3, 10.0):
                    model.forward_all(torch.randn(int(length * trainer.sr), device=device) * 0.05)
                _sync(torch, device)
                t1 = time.perf_counter()
                for _ in range(reps):
                    model.forward_all(x)
                _sync(torch, device)
                infer_compiled_ms = round(1000 * (time.perf_counter() - t1) / reps, 2)
            finally:
                model.module = eager_module
    audio_h = args.batch * args.seconds * args.steps / 3600
    out = {
        "package": str(Path(exitbench.__file__).parent), "new": new, "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__, "compiled": bool(getattr(trainer, "compiled", False)),
        "batch": args.batch, "seconds": args.seconds, "steps": args.steps, "warmup_s": round(warm_s, 2),
        "steps_per_s": round(args.steps / wall, 3), "audio_hours_per_s": round(audio_h / wall, 5),
        "inference_10s_ms": round(1000 * infer_s, 2), "compiled_vs_eager_rel_diff": agreement,
        "inference_10s_compiled_ms": infer_compiled_ms,
    }
    if profile_table is not None:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        name = "after" if new else "before"
        (Path(args.profile) / f"profile-{args.config}-{name}.txt").write_text(profile_table)
        out["profiled_kernel_launches_per_step"] = round(kernels / 5) if device.type == "cuda" else None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, help="root of the earlier package (holding exitbench/)")
    ap.add_argument("--config", default="press-s")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=8, help="steps before timing (torch.compile compiles here)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-compile", action="store_true", help="measure the new step without torch.compile")
    ap.add_argument("--profile", default=None, help="folder for torch.profiler tables")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    results = {}
    roots = ([("before", args.before)] if args.before else []) + [("after", ROOT)]
    for name, root in roots:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(root).resolve()), os.environ.get("PYTHONPATH")]))}
        cmd = [sys.executable, __file__, "--worker", *sys.argv[1:]]
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(name, json.dumps(results[name]), flush=True)
    if "before" in results:
        b, a = results["before"], results["after"]
        if b["new"] or not a["new"]:
            print("BUG: --before must hold the earlier package and the tree the new one", file=sys.stderr)
            return 1
        results["speedup_train"] = round(a["audio_hours_per_s"] / b["audio_hours_per_s"], 2)
        results["speedup_inference"] = round(b["inference_10s_ms"] / a["inference_10s_ms"], 2)
        print(f"training step: {b['audio_hours_per_s']:.4f} -> {a['audio_hours_per_s']:.4f} audio-h/s"
              f" ({results['speedup_train']}x); inference of 10 s: {b['inference_10s_ms']} -> "
              f"{a['inference_10s_ms']} ms ({results['speedup_inference']}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
