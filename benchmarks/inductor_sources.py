#!/usr/bin/env python3
"""Copy the Triton sources of the kernels a torch.profiler table names (the ones that cost the most).

    python benchmarks/inductor_sources.py PROFILE_DIR CACHE_DIR OUT_DIR [--top 30]

PROFILE_DIR holds the ``kernels-*.csv`` tables of ``bench_train_step.py --profile``; CACHE_DIR is the
``TORCHINDUCTOR_CACHE_DIR`` the benchmark compiled into. Each kernel's source goes to OUT_DIR, so that the
fused code behind a slow kernel can be read without device time.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profiles", type=Path)
    ap.add_argument("cache", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    names: list[str] = []
    for table in sorted(args.profiles.glob("kernels-*.csv")):
        found = re.findall(r"\b(triton_\w+)", table.read_text())
        names += [n for n in dict.fromkeys(found)][: args.top]
    wanted = set(names)
    args.out.mkdir(parents=True, exist_ok=True)
    copied = 0
    for src in args.cache.rglob("*.py"):
        text = src.read_text(errors="replace")
        hits = [n for n in wanted if f"def {n}(" in text]
        if hits:
            shutil.copy(src, args.out / f"{hits[0]}__{src.stem[:12]}.py")
            copied += 1
    print(f"{len(wanted)} kernel names, {copied} source files copied to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
