"""Commands against the number of runs in a results root: clones of one recorded run under new ids and steps.

    exitbench demo -r /tmp/seed --executor local --metrics none        # record one run once
    python benchmarks/bench_store_scale.py --seed /tmp/seed --work /tmp/scale [--sizes 1,100,1000,5000]
                                           [--repeat 3] [--pack] [--commands runs,query,history,...]

For each size N a root is built from the seed run's files: the data files are hard-linked (a copy where
links fail) under ``run=<new id>`` and the manifest is rewritten with the new run id, a training step
(1000 + 10 i), and start/finish times one minute apart. Each command then runs as a fresh process
(``python -m exitbench ...``), start to finish, ``--repeat`` times; the table gives the median wall time
and the largest peak RSS of the child (``os.wait4``). ``--pack`` also times every command on a copy of
each root after ``exitbench pack``, ``--auto`` on a root packed every 64 runs as it was built (the layout
automatic packing gives a root recorded run by run). ``--perturb`` rewrites each clone's per-utterance
SI-SNR(i) and SNR(i) with a random walk over the steps plus per-utterance noise (clones alone have equal
deltas at every step, so the gate's bounds are exact and ``history`` never bootstraps; a training run's
steps differ). ``--interleave`` alternates the roots repetition by repetition (on a shared machine the
sizes measured later otherwise meet a different load). The built roots are kept under ``--work`` (reused
when present).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
DATA_TABLES = ("blocks", "utterances", "levels", "errors")
COMMANDS = ("runs", "query", "history", "compare", "replay", "report")


def seed_run(seed: Path) -> tuple[str, dict]:
    """The one complete run of the seed root: its id and manifest."""
    manifests = sorted((seed / "runs").glob("run=*/manifest.parquet"))
    if len(manifests) != 1:
        sys.exit(f"{seed}: expected exactly one run, found {len(manifests)}")
    row = pq.read_table(manifests[0]).to_pylist()[0]
    return row["run_id"], row


def run_id_of(i: int) -> str:
    """A stable 16-hex run id for clone ``i``."""
    return hashlib.sha256(f"clone-{i}".encode()).hexdigest()[:16]


PERTURBED = ("si_snr", "si_snri", "snr", "snri")


def perturbed_utterances(table: pa.Table, i: int, walk: float) -> pa.Table:
    """The seed's utterance rows with ``walk`` (this step's drift) plus N(0, 0.3) dB per row added to SI-SNR(i)
    and SNR(i) (seeded by the clone index, so a rebuilt root is the same)."""
    import numpy as np

    rng = np.random.default_rng(i)
    noise = rng.normal(0.0, 0.3, table.num_rows)
    for name in PERTURBED:
        col = table.column(name).to_numpy(zero_copy_only=False)
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(col + walk + noise))
    return table


def build_root(seed: Path, root: Path, n: int, perturb: bool = False, every: int = 0) -> None:
    """``n`` clones of the seed run under ``root`` (hard links for the data files, rewritten manifests); with
    ``every``, packed after each ``every`` runs, as a root that records run by run packs itself."""
    stamp = f"{n}{' perturbed' if perturb else ''}{f' packed every {every}' if every else ''}"
    if (root / ".built").exists() and (root / ".built").read_text() == stamp:
        return
    shutil.rmtree(root, ignore_errors=True)
    src_id, manifest = seed_run(seed)
    schema = pq.read_schema(seed / "runs" / f"run={src_id}" / "manifest.parquet")
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    utterances = pq.read_table(seed / "utterances" / f"run={src_id}" / "part-0.parquet")
    import numpy as np

    walk = np.cumsum(np.random.default_rng(12345).normal(0.0, 0.05, n))
    for i in range(n):
        rid = run_id_of(i)
        for table in DATA_TABLES:
            src = seed / table / f"run={src_id}" / "part-0.parquet"
            dst = root / table / f"run={rid}" / "part-0.parquet"
            dst.parent.mkdir(parents=True, exist_ok=True)
            if perturb and table == "utterances":
                pq.write_table(perturbed_utterances(utterances, i, float(walk[i])), dst, compression="zstd")
                continue
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
        m = dict(manifest, run_id=rid, step=1000 + 10 * i,
                 started_at=(t0 + dt.timedelta(minutes=2 * i)).isoformat(),
                 finished_at=(t0 + dt.timedelta(minutes=2 * i + 1)).isoformat())
        out = root / "runs" / f"run={rid}" / "manifest.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist([m], schema=schema), out, compression="zstd")
        if every and (i + 1) % every == 0:  # a child process: this one stays small (its children's RSS is read)
            subprocess.run([sys.executable, "-m", "exitbench", "pack", "-r", str(root), "-q"], check=True, cwd=REPO)
    (root / ".built").write_text(stamp)


def child(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one ``python -m exitbench`` process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "exitbench", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):  # 1: a regression found, which is an answer
        sys.exit(f"exitbench {' '.join(args)} failed ({proc.returncode}): {err[-2000:]}")
    return wall, usage.ru_maxrss / 1024  # Linux: KiB


def command_args(name: str, root: Path, n: int, out: Path) -> list[str]:
    first, last = run_id_of(0), run_id_of(n - 1)
    r = ["-r", str(root)]
    return {
        "runs": ["runs", *r],
        "query": ["query", f"SELECT level, avg(si_snri) FROM utterances WHERE run = '{last}' GROUP BY level", *r],
        "history": ["history", *r],
        "compare": ["compare", first, last, *r],
        "replay": ["replay", last, "--policy", "oracle:t=10", *r],
        "report": ["report", last, *r, "-o", str(out)],
    }[name]


def pack_copy(root: Path, packed: Path) -> None:
    """A copy of ``root`` (hard links) packed with ``exitbench pack``."""
    if (packed / ".built").exists() and (packed / ".built").read_text() == (root / ".built").read_text():
        return
    shutil.rmtree(packed, ignore_errors=True)
    shutil.copytree(root, packed, copy_function=os.link)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "exitbench", "pack", "-r", str(packed), "-q"], check=True, cwd=REPO)
    print(f"  packed {packed.name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def auto_root(a: argparse.Namespace, n: int) -> Path:
    """The root of ``n`` runs as automatic packing leaves it (built once, packed every AUTO_PACK_RUNS runs)."""
    every = int(subprocess.run([sys.executable, "-c", "from exitbench.results.pack import AUTO_PACK_RUNS as n;"
                                " print(n)"], capture_output=True, text=True, check=True, cwd=REPO).stdout)
    root = a.work / f"auto-{n}"
    t0 = time.perf_counter()
    build_root(a.seed, root, n, a.perturb, every=every)
    print(f"  built {root.name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=Path, required=True, help="a results root holding exactly one complete run")
    p.add_argument("--work", type=Path, required=True, help="where the roots are built (kept)")
    p.add_argument("--sizes", default="1,100,1000,5000", help="comma list of run counts")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--commands", default=",".join(COMMANDS), help=f"comma list of {', '.join(COMMANDS)}")
    p.add_argument("--pack", action="store_true", help="also time every command on a packed copy of each root")
    p.add_argument("--auto", action="store_true",
                   help="also time every command on a root packed every AUTO_PACK_RUNS runs while it was built (the"
                        " layout a root recorded run by run has)")
    p.add_argument("--no-unpacked", action="store_true", help="with --pack: time the packed roots only")
    p.add_argument("--perturb", action="store_true",
                   help="perturb each clone's SI-SNR(i)/SNR(i) (a random walk plus noise) so that steps differ")
    p.add_argument("--interleave", action="store_true",
                   help="time each command on every root in turn, repetition by repetition (on a shared machine a"
                        " change of load then hits every size alike, not the sizes measured later)")
    a = p.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    commands = [c for c in a.commands.split(",") if c]
    print("| command | runs | layout | median s | min s | peak RSS MiB |")
    print("| --- | --- | --- | --- | --- | --- |")
    if a.interleave:
        interleaved(a, sizes, commands)
        return
    for n in sizes:
        root = a.work / f"root-{n}"
        t0 = time.perf_counter()
        build_root(a.seed, root, n, a.perturb)
        print(f"  built {root.name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        layouts = [] if a.no_unpacked else [("files", root)]
        if a.pack:
            pack_copy(root, a.work / f"packed-{n}")
            layouts.append(("packed", a.work / f"packed-{n}"))
        if a.auto:
            layouts.append(("auto", auto_root(a, n)))
        for layout, r in layouts:
            for name in commands:
                walls, rss = [], []
                for _ in range(a.repeat):
                    w, m = child(command_args(name, r, n, a.work / "reports"))
                    walls.append(w)
                    rss.append(m)
                print(f"| `{name}` | {n} | {layout} | {statistics.median(walls):.2f} | {min(walls):.2f} |"
                      f" {max(rss):.0f} |", flush=True)


def interleaved(a: argparse.Namespace, sizes: list[int], commands: list[str]) -> None:
    """``--interleave``: per command, repetition r runs on every (size, layout) before repetition r + 1."""
    roots: list[tuple[int, str, Path]] = []
    for n in sizes:
        root = a.work / f"root-{n}"
        build_root(a.seed, root, n, a.perturb)
        if not a.no_unpacked:
            roots.append((n, "files", root))
        if a.pack:
            pack_copy(root, a.work / f"packed-{n}")
            roots.append((n, "packed", a.work / f"packed-{n}"))
        if a.auto:
            roots.append((n, "auto", auto_root(a, n)))
    for name in commands:
        walls: dict[int, list[float]] = {i: [] for i in range(len(roots))}
        rss: dict[int, list[float]] = {i: [] for i in range(len(roots))}
        for _ in range(a.repeat):
            for i, (n, _layout, r) in enumerate(roots):
                w, m = child(command_args(name, r, n, a.work / "reports"))
                walls[i].append(w)
                rss[i].append(m)
        for i, (n, layout, _r) in enumerate(roots):
            print(f"| `{name}` | {n} | {layout} | {statistics.median(walls[i]):.2f} | {min(walls[i]):.2f} |"
                  f" {max(rss[i]):.0f} |", flush=True)


if __name__ == "__main__":
    main()
