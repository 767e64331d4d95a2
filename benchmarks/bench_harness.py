"""Harness benchmarks (issue 6): overhead, a sequential asteroid-style baseline, worker scaling, memory.

Every figure is a ratio against a baseline measured in the same script on the same data:

    python benchmarks/bench_harness.py overhead --n 1000 --seconds 5 --repeat 1   # metrics off vs a bare loop
    python benchmarks/bench_harness.py asteroid   # exitbench (Ray, all metrics) vs a sequential recipe loop
    python benchmarks/bench_harness.py scaling    # Ray executor with 1 vs 2 model workers
    python benchmarks/bench_harness.py memory --n 300   # peak RSS of driver and workers (then --n 3000)
    python benchmarks/bench_harness.py gpu --n 3000 --seconds 5   # every metric, on a GPU machine (Ray bundle)
    python benchmarks/bench_harness.py floor --n 5 --seconds 5    # the gpu command's metric floor alone
    python benchmarks/bench_harness.py batching --n 1000 --seconds 5 --batch 16   # --batch vs one per pass
    python benchmarks/bench_harness.py host --n 104 --seconds 5   # a model worker's time: model half vs host half
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import threading
import time
import warnings

import numpy as np
import torch

from exitbench.datasets.synthetic import SyntheticMixtures
from exitbench.harness.local import LocalExecutor
from exitbench.harness.ray_executor import RayExecutor, ensure_ray
from exitbench.harness.runner import execute, prepare
from exitbench.harness.spec import RecordSettings, RunSpec
from exitbench.models.registry import resolve_model


def spec(n: int, seconds: float, metrics: tuple[str, ...], shard: int = 8, files: bool = False,
         model_args: tuple[tuple[str, str], ...] = ()) -> RunSpec:
    """press-s on n synthetic mixtures of ~seconds, generated on the fly or (files) read from WAV files."""
    dataset = f"wsj0-2mix:{wsj_folder(n, seconds)}" if files else "synthetic"
    opts = () if files else (("num_utterances", str(n)), ("seconds", str(seconds)))
    return RunSpec("press-s", dataset, opts, RecordSettings(metrics=metrics, shard_size=shard), model_args)


def _write_utterance(args: tuple[int, float, str]) -> None:
    import soundfile as sf

    index, seconds, root = args
    utt = SyntheticMixtures(num_utterances=index + 1, seconds=seconds).load(f"syn{index:05d}")
    name = f"{utt.id}.wav"
    sf.write(f"{root}/mix/{name}", utt.mixture, utt.sample_rate, subtype="FLOAT")
    for k, src in enumerate(utt.sources):
        sf.write(f"{root}/s{k + 1}/{name}", src, utt.sample_rate, subtype="FLOAT")


def wsj_folder(n: int, seconds: float) -> str:
    """The synthetic mixtures written once as a wsj0-2mix split folder (mix/, s1/, s2/; float WAV).

    Generating a synthetic mixture costs more CPU than reading a file (37 ms against ~1 ms for 5 s):
    read from disk, as WSJ0-2mix is, the model worker's time is the model's and exitbench's."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    root = f"{tempfile.gettempdir()}/exitbench-bench-wsj-{n}x{seconds:g}s"
    if not (os.path.isdir(f"{root}/s2") and len(os.listdir(f"{root}/s2")) == n):  # written whole before?
        for d in ("mix", "s1", "s2"):
            os.makedirs(f"{root}/{d}", exist_ok=True)
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(_write_utterance, [(i, seconds, root) for i in range(n)], chunksize=16))
    return root


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def testset(n: int, seconds: float, files: bool):
    from exitbench.datasets.registry import open_testset

    return open_testset(f"wsj0-2mix:{wsj_folder(n, seconds)}") if files else \
        SyntheticMixtures(num_utterances=n, seconds=seconds)


def bare_loop(n: int, seconds: float, device: str = "cpu", files: bool = False,
              model_args: dict[str, str] | None = None) -> float:
    """Load each utterance and run every level on ``device``, estimates back on the host, nothing else."""
    from exitbench.harness.devices import full_float32

    full_float32(device)  # float32 convolutions, as exitbench records on a GPU
    model = resolve_model("press-s", model_args).model.to(device)
    ts = testset(n, seconds, files)

    def go() -> None:
        with torch.inference_mode():
            for utt_id in ts.ids():
                mix = torch.from_numpy(ts.load(utt_id).mixture).to(device)
                model.forward_all(mix).estimates.cpu()
    return timed(go)[0]


def overhead(args: argparse.Namespace) -> None:
    """Metrics off: exitbench's executors against a bare forward loop over the same WAV files.

    Ray's start is inside its timing (a fresh local cluster each repeat); every timing resolves and
    loads the model itself. Each executor runs with its default (overlap on a GPU) and with the host half
    of the work in the model's own thread (overlap off), so the overlap's gain is measured in the same run."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(1)  # the same thread count as one Ray model actor
    n, sec = args.n, args.seconds
    wsj_folder(n, sec)  # written once, outside every timing
    bare_loop(4, sec, device)  # CUDA context and kernels warmed once, outside every timing
    base = min(bare_loop(n, sec, device, files=True) for _ in range(args.repeat))
    rows = []
    for overlap in (None,) if args.defaults_only else (None, False):
        label = "default" if overlap is None else "overlap off"
        t = min(timed(lambda: execute(prepare(spec(n, sec, (), files=True)), tempfile.mkdtemp(),
                                      LocalExecutor(device, overlap=overlap)))[0] for _ in range(args.repeat))
        rows.append((f"local, {label}", t))
    ray_kw = [("defaults", {})] + ([] if args.defaults_only else [("overlap off", {"overlap": False})])
    if device != "cpu" and args.one_actor:
        ray_kw.append(("one actor per GPU", {"gpus_per_worker": 1.0}))
    if device != "cpu" and args.four_actors:
        ray_kw.append(("four actors per GPU", {"gpus_per_worker": 0.25}))
    for label, kw in ray_kw:
        ray_t = []
        for _ in range(args.repeat):
            first: dict[str, float] = {}
            t0 = time.perf_counter()
            started = ensure_ray()
            execute(prepare(spec(n, sec, (), files=True)), tempfile.mkdtemp(), RayExecutor(**kw),
                    on_utterance=lambda k: first.setdefault("t", time.perf_counter()))
            ray_t.append((time.perf_counter() - t0, first.get("t", t0) - t0))
            if started:
                if args.timeline and not kw:
                    timeline_summary(args.timeline, ray_t[-1][0])
                import ray

                ray.shutdown()
        t, to_first = min(ray_t)
        rows.append((f"ray, {label} (Ray's start included; first utterance after {to_first:.1f} s)", t))
    print(f"| {n} utterances x {sec:g} s (WAV files), metrics off, {device} | seconds | ratio to bare loop |")
    print("| --- | --- | --- |")
    print(f"| bare forward loop (1 thread) | {base:.2f} | 1.00 |")
    for label, t in rows:
        print(f"| exitbench run --executor {label} | {t:.2f} | {t / base:.2f} |")


def host(args: argparse.Namespace) -> None:
    """Where a model worker's time goes per utterance, in one thread: the model half (load, every level, the
    copy to the host: ``record.forward_stage``) against the host half (permutation, block statistics, the torch
    metrics on the GPU, SI-SNR and the tables: ``finish_stage`` and ``metrics_or_error``), WAV files, one
    utterance at a time, the first 4 not timed. ``--metrics`` none: what a metrics-off run does."""
    from exitbench.harness.record import finish_stage, forward_stage, metrics_or_error

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(1)
    from exitbench.harness.devices import full_float32

    full_float32(device)
    n, sec = args.n, args.seconds
    ts = testset(n, sec, files=True)
    model = resolve_model("press-s").model.to(device)
    rows = []
    for metrics in ((), ("sdr", "pesq", "stoi")):
        settings = RecordSettings(metrics=tuple(m for m in metrics if m != "pesq"))  # PESQ: CPU tasks, not here
        fwd = rest = 0.0
        for i, utt_id in enumerate(ts.ids()):
            t0 = time.perf_counter()
            staged = forward_stage(model, ts, [utt_id])
            t1 = time.perf_counter()
            for rec, err in finish_stage(model, staged, settings, device):
                assert rec is not None, err
                if not metrics:
                    metrics_or_error(rec, settings)
            t2 = time.perf_counter()
            if i >= 4:
                fwd, rest = fwd + t1 - t0, rest + t2 - t1
        k = max(1, n - 4)
        rows.append(("metrics off" if not metrics else "SDR and STOI on the model's device", fwd / k, rest / k))
    print(f"| {n} utterances x ~{sec:g} s, {device}, one thread | model half (ms) | host half (ms) | host / model |")
    print("| --- | --- | --- | --- |")
    for label, f, r in rows:
        print(f"| {label} | {1000 * f:.2f} | {1000 * r:.2f} | {r / f:.2f} |")


def batching(args: argparse.Namespace) -> None:
    """Metrics off, the chunk-safe press-s (chunked=true) on WAV files of varied length: --batch B against
    one utterance per pass, both executors, against the bare one-at-a-time forward loop; Ray's start included."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(1)  # the same thread count as one Ray model actor
    n, sec, b = args.n, args.seconds, args.batch
    chunked = (("chunked", "true"),)
    wsj_folder(n, sec)  # written once, outside every timing
    bare_loop(4, sec, device, model_args=dict(chunked))  # CUDA context and kernels warmed outside every timing
    base = min(bare_loop(n, sec, device, files=True, model_args=dict(chunked)) for _ in range(args.repeat))
    rows = []
    for label, make in (("local", lambda k: LocalExecutor(device, batch=k)), ("ray", lambda k: RayExecutor(batch=k))):
        for k in (1, b):
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                started = ensure_ray() if label == "ray" else False
                execute(prepare(spec(n, sec, (), shard=max(8, b), files=True, model_args=chunked)),
                        tempfile.mkdtemp(), make(k))
                times.append(time.perf_counter() - t0)
                if started:
                    import ray

                    ray.shutdown()
            rows.append((f"exitbench run --executor {label} --batch {k}", min(times)))
    print(f"| {n} utterances x ~{sec:g} s (WAV files), press-s chunked=true, metrics off, {device} | seconds |"
          f" ratio to bare loop |")
    print("| --- | --- | --- |")
    print(f"| bare forward loop, one utterance per pass (1 thread) | {base:.2f} | 1.00 |")
    for label, t in rows:
        print(f"| {label} | {t:.2f} | {t / base:.2f} |")


def asteroid_loop(n: int, seconds: float, device: str = "cpu", files: bool = False, total: int | None = None
                  ) -> float:
    """The sequential recipe: one utterance at a time, every exit, mir_eval SDR + PESQ + STOI in the loop.

    ``total``: the loop runs on the first n utterances of a set of ``total`` (files only)."""
    from mir_eval.separation import bss_eval_sources
    from pesq import pesq
    from pystoi import stoi

    model = resolve_model("press-s").model.to(device)
    ts = testset(total or n, seconds, files)

    def go() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for utt_id in ts.ids()[:n]:
                utt = ts.load(utt_id)
                with torch.inference_mode():
                    mix = torch.from_numpy(utt.mixture).to(device)
                    est = model.forward_all(mix).estimates.cpu().numpy().astype(np.float64)
                ref = utt.sources.astype(np.float64)
                for level in range(est.shape[0]):
                    sdr, _, _, perm = bss_eval_sources(ref, est[level])
                    for s in range(ref.shape[0]):
                        e = est[level][perm[s]]
                        pesq(8000, ref[s], e, "nb")
                        stoi(ref[s], e, 8000)
                        stoi(ref[s], e, 8000, extended=True)
    return timed(go)[0]


def asteroid(args: argparse.Namespace) -> None:
    n, sec = args.n, args.seconds
    base = asteroid_loop(n, sec)
    ensure_ray()
    ours = timed(lambda: execute(prepare(spec(n, sec, ("sdr", "pesq", "stoi"), shard=4)), tempfile.mkdtemp(),
                                 RayExecutor()))[0]
    print(f"| {n} utterances x {sec:g} s, every exit, SDR+PESQ+STOI+ESTOI | seconds | speed-up |")
    print("| --- | --- | --- |")
    print(f"| sequential recipe loop (mir_eval in the loop) | {base:.2f} | 1.00 |")
    print(f"| exitbench run --executor ray (defaults, fast-bss-eval) | {ours:.2f} | {base / ours:.2f} |")


def scaling(args: argparse.Namespace) -> None:
    n, sec = args.n, args.seconds
    ensure_ray()
    rows = []
    for workers in (1, 2):
        t = timed(lambda: execute(prepare(spec(n, sec, ())), tempfile.mkdtemp(),
                                  RayExecutor(workers=workers)))[0]
        rows.append((workers, t))
    print(f"| {n} utterances x {sec:g} s, metrics off | seconds | speed-up |")
    print("| --- | --- | --- |")
    for w, t in rows:
        print(f"| {w} model worker(s) | {t:.2f} | {rows[0][1] / t:.2f} |")


class RssSampler(threading.Thread):
    """Peak RSS per Ray worker process (by pid), sampled every 0.2 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peaks: dict[int, tuple[str, int]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            for p in psutil.process_iter(["pid", "name", "cmdline"]):
                try:
                    name = " ".join(p.info["cmdline"] or [])[:40]
                    if name.startswith("ray::"):
                        rss = p.memory_info().rss
                        prev = self.peaks.get(p.pid, (name, 0))
                        self.peaks[p.pid] = (name, max(prev[1], rss))
                except Exception:
                    pass
            self.stop.wait(0.2)


def memory(args: argparse.Namespace) -> None:
    ensure_ray()
    # one size per process: ru_maxrss is the peak over the process's whole life
    for n in (args.n,):
        sampler = RssSampler()
        sampler.start()
        t = timed(lambda: execute(prepare(spec(n, 0.5, (), shard=16)), tempfile.mkdtemp(),
                                  RayExecutor(workers=1)))[0]
        sampler.stop.set()
        sampler.join()
        driver = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        worker = max((v[1] for v in sampler.peaks.values()), default=0) / 2**20
        print(f"| {n} | {driver:.0f} | {worker:.0f} | {t:.1f} |")


class GpuSampler(threading.Thread):
    """Mean GPU utilisation from nvidia-smi, sampled every second."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        import subprocess

        while not self.stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                self.samples.append(float(out.split()[0]))
            except Exception:
                pass
            self.stop.wait(1.0)


def blas_threads(n: int):
    """A context in which numpy's and scipy's BLAS/OpenMP pools use ``n`` threads (threadpoolctl where
    installed; it is on this box, and the probes say so when it is not)."""
    import contextlib

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("threadpoolctl not installed: BLAS threads not pinned", flush=True)
        return contextlib.nullcontext()
    return threadpool_limits(limits=n)


def metric_floor_per_utterance(seconds: float, device: str, probe: int = 20) -> float:
    """Single-threaded seconds of the metrics that run on CPU tasks, per utterance, every level.

    With a GPU the torch metrics (SDR, STOI, ESTOI) are computed there first, as the model worker
    does, and only the rest (PESQ, SI-SNR, the table) is timed; without one, everything is. Threads
    pinned to one (torch and, through threadpoolctl, BLAS/OpenMP) so that the figure is CPU work a core
    must do, warm-up (the first utterance) excluded; the model's forward pass is outside the timed part.
    Wall time of a single-threaded section is at least its CPU time, so the floor errs high, never low.
    """
    from exitbench.harness.record import forward_utterance, tensor_metrics, utterance_metrics

    settings = RecordSettings()
    model = resolve_model("press-s").model.to(device)
    utts = list(SyntheticMixtures(num_utterances=probe + 1, seconds=seconds))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with blas_threads(1):
            recs = [forward_utterance(model, u) for u in utts]
            if device != "cpu":
                for rec in recs:
                    rec.precomputed = tensor_metrics(rec, settings, device)
            utterance_metrics(recs[0], settings)  # warm-up, not timed
            t0 = time.perf_counter()
            for rec in recs[1:]:
                utterance_metrics(rec, settings)
            return (time.perf_counter() - t0) / probe
    finally:
        torch.set_num_threads(threads)


def check_ratio(name: str, ratio: float) -> str:
    """A ratio against a floor must be >= 1; below it the benchmark (not exitbench) is wrong."""
    if ratio < 1.0:
        raise SystemExit(f"BUG in the benchmark: {name} = {ratio:.2f} < 1 against a floor")
    return f"{ratio:.2f}"


def gpu(args: argparse.Namespace) -> None:
    """A WSJ0-2mix-sized set (default 3000 x ~5 s at 8 kHz), every metric at every level, on one GPU.

    The floor: single-threaded CPU seconds of the metrics that still run on CPU per utterance
    (metric_floor_per_utterance) times the utterances, over the cores. The sequential recipe loop runs
    on the first --loop utterances (it is linear in their number) and is compared per utterance.
    """
    import os

    n, sec = args.n, args.seconds
    device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a smoke test of the benchmark itself
    wsj_folder(n, sec)  # written once, outside every timing
    per_utt = metric_floor_per_utterance(sec, device)
    floor = per_utt * n / os.cpu_count()
    alone, loaded = loaded_floor(sec, device)
    loop = asteroid_loop(args.loop, sec, device, files=True, total=n) / args.loop if args.loop else float("nan")
    ensure_ray()
    sampler = GpuSampler()
    sampler.start()
    wall = timed(lambda: execute(prepare(spec(n, sec, ("sdr", "pesq", "stoi"), shard=16, files=True)),
                                 tempfile.mkdtemp(), RayExecutor()))[0]
    sampler.stop.set()
    util = float(np.mean(sampler.samples)) if sampler.samples else float("nan")
    if args.timeline:
        timeline_summary(args.timeline, wall)
    print(f"| {n} mixtures x ~{sec:g} s, every metric at every level | value |")
    print("| --- | --- |")
    print(f"| wall time (s) | {wall:.1f} |")
    import pesq

    print(f"| pesq build | {pesq.__path__[0]} |")
    print(f"| CPU-task metric time per utterance, one thread (s; goal <= 0.45) | {per_utt:.3f} |")
    print(f"| floor: that x {n} / {os.cpu_count()} cores (s) | {floor:.1f} |")
    print(f"| wall / floor (goal <= 1.15) | {check_ratio('wall / floor', wall / floor)} |")
    print(f"| the floor's work per utterance, one process alone / {os.cpu_count()} at once (s) | {alone:.3f} /"
          f" {loaded:.3f} ({loaded / alone:.2f}x) |")
    print(f"| wall / floor at the loaded rate ({loaded:.3f} s x {n} / {os.cpu_count()}) |"
          f" {check_ratio('wall / loaded floor', wall / (loaded * n / os.cpu_count()))} |")
    print(f"| sequential recipe loop, s per utterance (first {args.loop}) | {loop:.3f} |")
    print(f"| speed-up over it (goal >= 50) | {loop / (wall / n):.1f} |")
    print(f"| mean GPU utilisation (%) | {util:.0f} |")


def timeline_summary(path: str, wall: float) -> None:
    """Ray's timeline of the run just measured (``ray.timeline``) written to ``path``, and per kind of task
    its count, total and mean time, how busy the processes running it were over the run's wall time, and
    how its time splits between fetching its arguments, running and storing its outputs."""
    import bisect
    import json

    import ray

    time.sleep(2.0)  # workers report task events about once a second
    ray.timeline(filename=path)
    spans = [e for e in json.load(open(path)) if e.get("ph") == "X"]
    # one span per task, its category 'task::<function or Actor.method>', its tid the worker process; the
    # phases ('task:deserialize_arguments', 'task:execute', 'task:store_outputs') lie inside it on that tid
    tasks = sorted((e for e in spans if str(e.get("cat", "")).startswith("task::")), key=lambda e: e["ts"])
    by_tid: dict[str, list] = {}
    for e in tasks:
        by_tid.setdefault(e["tid"], []).append(e)
    phases = ("task:deserialize_arguments", "task:execute", "task:store_outputs")
    split: dict[str, dict[str, float]] = {}
    for e in spans:
        if e.get("cat") in phases and e["tid"] in by_tid:
            owners = by_tid[e["tid"]]
            i = bisect.bisect_right([o["ts"] for o in owners], e["ts"]) - 1
            if i >= 0 and e["ts"] <= owners[i]["ts"] + owners[i]["dur"]:
                kind = owners[i]["cat"][len("task::"):]
                split.setdefault(kind, {}).setdefault(e["cat"], 0.0)
                split[kind][e["cat"]] += e["dur"] / 1e6
    kinds: dict[str, list] = {}
    for e in tasks:
        kinds.setdefault(e["cat"][len("task::"):], []).append((e["tid"], e["dur"] / 1e6))
    print("| task (Ray timeline) | count | total (s) | mean (ms) | processes | busy per process (of the wall) |"
          " arguments / execute / outputs (ms per task) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, rows in sorted(kinds.items(), key=lambda kv: -sum(d for _, d in kv[1])):
        total = sum(d for _, d in rows)
        procs = len({p for p, _ in rows})
        parts = " / ".join(f"{1000 * split.get(name, {}).get(ph, 0.0) / len(rows):.1f}" for ph in phases)
        print(f"| {name} | {len(rows)} | {total:.1f} | {1000 * total / len(rows):.1f} | {procs} |"
              f" {total / procs / wall:.0%} | {parts} |")
    print()


def _loaded_probe(recs: list, settings: RecordSettings, barrier, results) -> None:
    """One process of ``loaded_floor``: waits for the others, then times the metrics of every record."""
    from exitbench.harness.record import utterance_metrics

    torch.set_num_threads(1)
    with blas_threads(1):  # as in the probe and in Ray's metric tasks (Ray sets OMP_NUM_THREADS to their CPUs)
        barrier.wait()
        t0 = time.perf_counter()
        for rec in recs:
            utterance_metrics(rec, settings)
        results.put((time.perf_counter() - t0) / len(recs))


def loaded_floor(seconds: float, device: str, probe: int = 8) -> tuple[float, float]:
    """The floor's work timed alone (one process) and with every core running it at once (one process per
    core, forked, started together): (seconds per utterance alone, under full load). What a core does when all
    are busy (shared caches, memory bandwidth, all-core clock, SMT siblings) bounds any executor on this box."""
    import multiprocessing as mp
    import os

    from exitbench.harness.record import forward_utterance, tensor_metrics, utterance_metrics

    settings = RecordSettings()
    model = resolve_model("press-s").model.to(device)
    recs = [forward_utterance(model, u) for u in SyntheticMixtures(num_utterances=probe, seconds=seconds)]
    if device != "cpu":
        for rec in recs:
            rec.precomputed = tensor_metrics(rec, settings, device)
    utterance_metrics(recs[0], settings)  # imports and first-call costs, inherited by every child
    ctx = mp.get_context("fork")  # the children inherit the records (host arrays) and touch no CUDA
    out = []
    for procs in (1, os.cpu_count()):
        barrier, results = ctx.Barrier(procs), ctx.Queue()
        children = [ctx.Process(target=_loaded_probe, args=(recs, settings, barrier, results)) for _ in range(procs)]
        for c in children:
            c.start()
        times = [results.get() for _ in children]
        for c in children:
            c.join()
        out.append(float(np.mean(times)))
    return out[0], out[1]


def floor(args: argparse.Namespace) -> None:
    """The metric floor alone, on any device (a check of the probe on a CPU machine)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"metric CPU time per utterance of {args.seconds:g} s, one thread: "
          f"{metric_floor_per_utterance(args.seconds, device, probe=args.n):.3f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["overhead", "asteroid", "scaling", "memory", "gpu", "floor", "batching", "host"])
    p.add_argument("--n", type=int, default=24, help="utterances")
    p.add_argument("--seconds", type=float, default=3.0, help="mean utterance length")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--loop", type=int, default=50, help="gpu: utterances of the sequential recipe loop")
    p.add_argument("--one-actor", action="store_true", help="overhead: also Ray with one actor per GPU")
    p.add_argument("--four-actors", action="store_true", help="overhead: also Ray with four actors per GPU")
    p.add_argument("--defaults-only", action="store_true",
                   help="overhead: each executor with its defaults only (not also with overlap off)")
    p.add_argument("--batch", type=int, default=16, help="batching: utterances per model pass")
    p.add_argument("--timeline", help="gpu, overhead: write Ray's timeline of the (default) Ray run here and"
                                      " summarise it")
    args = p.parse_args()
    {"overhead": overhead, "asteroid": asteroid, "scaling": scaling, "memory": memory, "gpu": gpu,
     "floor": floor, "batching": batching, "host": host}[args.what](args)


if __name__ == "__main__":
    main()
