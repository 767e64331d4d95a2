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

#: forms of this tree's step that --variants can measure side by side (layers.PRELU_FORM, train.cuda_graphs)
VARIANTS: dict[str, dict] = {
    "compiled": {"prelu": "native", "graphs": False},  # the step as first compiled (2026-12-02)
    "partials": {"prelu": "partials", "graphs": False},
    "graphs": {"prelu": "native", "graphs": True},
    "partials+graphs": {"prelu": "partials", "graphs": True},
}


def _sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def worker(args: argparse.Namespace) -> dict:
    """Measure one package (whichever ``exitbench`` is first on sys.path)."""
    import torch

    import exitbench
    from exitbench.models import train as train_mod

    new = hasattr(train_mod, "DeviceCorpus")
    variant = VARIANTS[args.variant] if new else {}
    if "prelu" in variant:
        from exitbench.models import layers

        layers.PRELU_FORM = variant["prelu"]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = train_mod.load_config(args.config)
    cfg["data"].update(corpus=".corpus-none", valid_items=4, valid_seconds=1.0)
    cfg["train"].update(batch_size=args.batch, max_steps=10**9)
    if new and args.no_compile:
        cfg["train"]["compile"] = False
    if new and "cuda_graphs" in train_mod.TRAIN_DEFAULTS:
        cfg["train"]["cuda_graphs"] = variant.get("graphs", False)
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
            # every kernel by its whole name (the table truncates them), GPU time per step
            rows = []
            for e in prof.key_averages():
                t = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
                if t and str(getattr(e, "device_type", "")).endswith("CUDA"):
                    rows.append((t / 5, e.count / 5, e.key))
            rows.sort(reverse=True)
            kernel_csv = "us_per_step,calls_per_step,name\n" + "".join(f"{t:.1f},{c:g},{n}\n" for t, c, n in rows)
        # inference: forward_all of a 10-s mixture, eval mode (once per call: the first variant)
        infer_s, infer_compiled_ms = float('nan'), None
        if not args.no_inference and (not new or args.variant == args.variants.split(',')[0]):
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
        "package": str(Path(exitbench.__file__).parent), "new": new, "variant": args.variant if new else None,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__, "compiled": bool(getattr(trainer, "compiled", False)),
        "batch": args.batch, "seconds": args.seconds, "steps": args.steps, "warmup_s": round(warm_s, 2),
        "steps_per_s": round(args.steps / wall, 3), "audio_hours_per_s": round(audio_h / wall, 5),
        "inference_10s_ms": round(1000 * infer_s, 2) if infer_s == infer_s else None, "compiled_vs_eager_rel_diff": agreement,
        "inference_10s_compiled_ms": infer_compiled_ms,
    }
    if profile_table is not None:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        name = f"after-{args.variant}" if new else "before"
        (Path(args.profile) / f"profile-{args.config}-{name}.txt").write_text(profile_table)
        (Path(args.profile) / f"kernels-{args.config}-{name}.csv").write_text(kernel_csv)
        out["gpu_ms_per_step"] = round(sum(t for t, _, _ in rows) / 1000, 2)
        out["profiled_kernel_launches_per_step"] = round(sum(c for _, c, _ in rows)) if device.type == "cuda" else None
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
    ap.add_argument("--no-inference", action="store_true", help="skip the forward_all timings")
    ap.add_argument("--profile", default=None, help="folder for torch.profiler tables")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--variants", default="partials",
                    help=f"comma-separated forms of this tree's step to measure, each in its own process: {', '.join(VARIANTS)}")
    ap.add_argument("--variant", default="partials", help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    results = {}
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        ap.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    roots = ([("before", args.before, None)] if args.before else []) + [(f"after-{v}", ROOT, v) for v in variants]
    for name, root, variant in roots:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(root).resolve()), os.environ.get("PYTHONPATH")]))}
        cmd = [sys.executable, __file__, "--worker", *sys.argv[1:], "--variant", variant or variants[0]]
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            print(f"{name} failed:", proc.stderr[-3000:], file=sys.stderr)
            continue  # the other variants are still measured
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(name, json.dumps(results[name]), flush=True)
    afters = [k for k in results if k.startswith("after-")]
    if not afters:
        return 1
    best = max(afters, key=lambda k: results[k]["audio_hours_per_s"])
    results["best"] = best
    for k in afters:
        print(f"{k}: {results[k]['audio_hours_per_s']:.4f} audio-h/s, {results[k]['steps_per_s']} steps/s,"
              f" launches/step {results[k].get('profiled_kernel_launches_per_step')}")
    if "before" in results:
        b, a = results["before"], results[best]
        if b["new"] or not a["new"]:
            print("BUG: --before must hold the earlier package and the tree the new one", file=sys.stderr)
            return 1
        for k in afters:
            results[f"speedup_train_{k}"] = round(results[k]["audio_hours_per_s"] / b["audio_hours_per_s"], 2)
        results["speedup_train"] = round(a["audio_hours_per_s"] / b["audio_hours_per_s"], 2)
        timed = b["inference_10s_ms"] and a["inference_10s_ms"]  # None with --no-inference
        results["speedup_inference"] = round(b["inference_10s_ms"] / a["inference_10s_ms"], 2) if timed else None
        print(f"training step ({best}): {b['audio_hours_per_s']:.4f} -> {a['audio_hours_per_s']:.4f} audio-h/s"
              f" ({results['speedup_train']}x); inference of 10 s: {b['inference_10s_ms']} -> "
              f"{a['inference_10s_ms']} ms ({results['speedup_inference']}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
