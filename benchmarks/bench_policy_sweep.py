"""Benchmark: the full policy sweep on a 10-million-row block table against a pandas loop over thresholds.

Run: python benchmarks/bench_policy_sweep.py [--utts 100000 --blocks 25 --levels 4 --sources 1]
(default 2.5 M blocks × 4 levels × 1 source = 10 M rows). Prints wall times, the speed ratio and
peak RSS. The pandas baseline re-selects levels and regroups per threshold, as a straightforward
DataFrame implementation would; it is timed on a few thresholds and extrapolated (printed as such).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import pandas as pd

from exitbench.metrics.composite import si_snr_from_sums, snr_from_sums
from exitbench.policies.arrays import BlockArrays
from exitbench.policies.builtin import DEFAULT_P_GRID, DEFAULT_TARGETS
from exitbench.policies.probability import level_probabilities
from exitbench.policies.sweep import sweep
from exitbench.policies.synthetic import random_block_table


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (GiB; ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def pandas_baseline(arrays: BlockArrays, t: float, thresholds: list[float]) -> tuple[pd.DataFrame, float, float]:
    """Per threshold: pick each block's first level with P ≥ p via a long DataFrame, regroup, compute metrics."""
    t0 = time.perf_counter()
    k, lv = arrays.num_blocks, arrays.num_levels
    probs = level_probabilities(arrays, t, "all")
    long = pd.DataFrame({
        "blk": np.repeat(np.arange(k), lv), "utt": np.repeat(arrays.utt, lv), "level": np.tile(np.arange(lv), k),
        "P": probs.ravel(), "macs": arrays.macs.ravel(), "exit_snr": arrays.exit_snr_db().ravel(),
        **{name: arrays.stats[name][:, :, 0].ravel() for name in ("sum_est", "e_est", "dot_est_ref")},
    })
    utt = pd.DataFrame({"n": arrays.utt_samples,
                        **{name: np.add.reduceat(arrays.stats[name][:, 0, 0], arrays.utt_starts)
                           for name in ("sum_ref", "e_ref", "sum_mix", "e_mix", "dot_mix_ref")}})
    utt["si_mix"] = si_snr_from_sums(utt.n, utt.sum_mix, utt.sum_ref, utt.e_mix, utt.e_ref, utt.dot_mix_ref)
    utt["snr_mix"] = snr_from_sums(utt.e_mix, utt.e_ref, utt.dot_mix_ref)
    setup = time.perf_counter() - t0
    rows = []
    t1 = time.perf_counter()
    for p in thresholds:
        ok = long[(long.P >= p) | (long.level == lv - 1)]
        chosen = ok.drop_duplicates("blk", keep="first")  # rows are sorted by (block, level)
        g = chosen.groupby("utt")[["macs", "sum_est", "e_est", "dot_est_ref"]].sum().join(utt)
        si = si_snr_from_sums(g.n, g.sum_est, g.sum_ref, g.e_est, g.e_ref, g.dot_est_ref) - g.si_mix
        sn = snr_from_sums(g.e_est, g.e_ref, g.dot_est_ref) - g.snr_mix
        rows.append({"p": p, "gmacs": (g.macs / g.n * arrays.sample_rate / 1e9).mean(),
                     "regret": np.maximum(0.0, t - chosen.exit_snr).mean(), "si_snri": si.mean(), "snri": sn.mean()})
    return pd.DataFrame(rows), setup, (time.perf_counter() - t1) / len(thresholds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utts", type=int, default=100_000)
    ap.add_argument("--blocks", type=int, default=25)
    ap.add_argument("--levels", type=int, default=4)
    ap.add_argument("--sources", type=int, default=1)
    ap.add_argument("--baseline-thresholds", type=int, default=5)
    args = ap.parse_args()

    t0 = time.perf_counter()
    table = random_block_table(args.utts, args.blocks, args.levels, args.sources, variances=True, router=True)
    print(f"table: {table.num_rows:,} rows ({table.nbytes / 2**30:.2f} GiB arrow), built in "
          f"{time.perf_counter() - t0:.1f} s; peak RSS {peak_rss_gib():.2f} GiB")

    t0 = time.perf_counter()
    arrays = BlockArrays.from_arrow(table, args.levels, 8000, has_dynamic=False)
    t_conv = time.perf_counter() - t0
    print(f"BlockArrays.from_arrow: {t_conv:.2f} s ({arrays.num_blocks:,} blocks × {arrays.num_levels} levels × "
          f"{arrays.num_sources} sources, {arrays.num_utts:,} utterances); peak RSS {peak_rss_gib():.2f} GiB")

    targets, grid = list(DEFAULT_TARGETS), list(DEFAULT_P_GRID)
    t0 = time.perf_counter()
    frame = sweep(arrays, targets=targets, p_grid=grid)
    t_sweep = time.perf_counter() - t0
    rss_sweep = peak_rss_gib()
    n_prob = int((frame.policy == "probabilistic").sum())
    print(f"sweep: {len(frame)} rows ({', '.join(f'{k} {v}' for k, v in frame.policy.value_counts().items())}) "
          f"in {t_sweep:.2f} s; peak RSS {rss_sweep:.2f} GiB (includes the table)")

    t = targets[1]
    picks = grid[:: max(1, len(grid) // args.baseline_thresholds)][: args.baseline_thresholds]
    base, setup, per_threshold = pandas_baseline(arrays, t, picks)
    ours = frame[(frame.policy == "probabilistic") & (frame.t == t)].set_index("p").loc[picks]
    err = np.abs(ours[["gmacs", "regret", "si_snri", "snri"]].to_numpy() - base[["gmacs", "regret", "si_snri",
                                                                                   "snri"]].to_numpy()).max()
    extrapolated = len(targets) * setup + n_prob * per_threshold
    print(f"pandas baseline: setup {setup:.2f} s per target, {per_threshold:.2f} s per threshold (timed on "
          f"{len(picks)} thresholds at t={t}); EXTRAPOLATED to the sweep's {n_prob} probabilistic thresholds: "
          f"{extrapolated:.0f} s; max |difference| to the sweep on the timed thresholds: {err:.2e}")
    print(f"ratio (extrapolated pandas probabilistic sweep / full five-policy sweep): {extrapolated / t_sweep:.0f}x")
    print(f"goal: sweep < 10 s -> {'met' if t_sweep < 10 else 'MISSED'}; "
          f"peak RSS < 4 GiB -> {'met' if rss_sweep < 4 else 'MISSED'}")


if __name__ == "__main__":
    main()
