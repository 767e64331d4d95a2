"""Benchmark: false alarms and power of the compare gate against the old per-row rule, by simulation.

Run: python benchmarks/bench_compare_gate.py [--sims 2000 --utts 20 --resamples 2000 --alpha 0.05]

Per-utterance deltas (candidate − base) are simulated as the issue did: ``--utts`` utterances (20,
the demo set's size), a 1 dB per-utterance spread, rows equicorrelated at ρ (each row's delta =
√ρ·shared + √(1−ρ)·own, standard normal), tolerance 0 (a true change of exactly −tolerance is the
worst case for false alarms; with a tolerance τ read every drop below as τ larger). Configurations:
1 row, 6 independent rows, 24 rows correlated at 0.7.

* old per-row rule: a row is 'worse' when its 95 % percentile-bootstrap interval lies below
  −tolerance (``bootstrap_mean_ci`` + ``verdict``, each row at 2.5 % one-sided, no multiplicity
  control); the gate fails on any 'worse' row.
* gate: ``simultaneous_bounds`` (studentised max-statistic paired bootstrap, family-wise ``--alpha``).

False alarms: no true change, the fraction of simulated comparisons that fail. Power: the fraction
that fail when the true mean delta of one row (the hardest case: found among all the others), or of
every row, is −0.5 dB or −1 dB. Each cell is ± its binomial 95 % half-width (≈ 1.96·√(p(1−p)/sims)).
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from exitbench.results.compare import bootstrap_mean_ci, simultaneous_bounds, verdict

CONFIGS = ((1, 0.0), (6, 0.0), (24, 0.7))  # (rows, correlation)
DROPS = (0.5, 1.0)


def simulate(rng: np.random.Generator, rows: int, rho: float, utts: int) -> np.ndarray:
    """Deltas [rows, utts] with unit spread, mean 0 and correlation ``rho`` between rows."""
    shared = rng.standard_normal((1, utts))
    return np.sqrt(rho) * shared + np.sqrt(1.0 - rho) * rng.standard_normal((rows, utts))


def old_rule_fails(d: np.ndarray, resamples: int, seed: int) -> bool:
    """The pre-gate rule: any row whose 95 % percentile interval lies below −0 ('worse')."""
    _, lo, hi = bootstrap_mean_ci(d, 0.95, resamples, seed)
    return any(verdict(a, b, 0.0) == "worse" for a, b in zip(lo, hi))


def gate_fails(d: np.ndarray, alpha: float, resamples: int, seed: int) -> tuple[bool, float]:
    """The gate: any row whose simultaneous upper bound lies below −0; and the median row MDD."""
    b = simultaneous_bounds(d, 0.0, alpha, resamples, seed)
    return bool((b.high < 0).any()), float(np.median(b.mdd))


def cell(hits: int, sims: int) -> str:
    """A rate with its binomial 95 % half-width."""
    p = hits / sims
    return f"{100 * p:.1f} % ± {100 * 1.96 * np.sqrt(p * (1 - p) / sims):.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sims", type=int, default=2000, help="simulated comparisons per cell")
    p.add_argument("--utts", type=int, default=20, help="utterances per comparison (the demo set has 20)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (as compare's default)")
    p.add_argument("--alpha", type=float, default=0.05, help="family-wise alpha of the gate")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    lines = [f"| rows | ρ | false alarms, per-row rule | false alarms, gate (α = {args.alpha:g}) |"
             + "".join(f" gate power, {d:g} dB drop: one row / every row |" for d in DROPS)
             + " median MDD (dB, 80 % power) |",
             "|---:|---:|---:|---:|" + "---:|" * len(DROPS) + "---:|"]
    for rows, rho in CONFIGS:
        old = gate = 0
        power = {(d, which): 0 for d in DROPS for which in ("one", "all")}
        mdds = []
        for s in range(args.sims):
            d = simulate(rng, rows, rho, args.utts)
            old += old_rule_fails(d, args.resamples, s)
            fails, mdd = gate_fails(d, args.alpha, args.resamples, s)
            gate += fails
            mdds.append(mdd)
            for drop in DROPS:
                one = d.copy()
                one[0] -= drop
                power[drop, "one"] += gate_fails(one, args.alpha, args.resamples, s)[0]
                if rows > 1:
                    power[drop, "all"] += gate_fails(d - drop, args.alpha, args.resamples, s)[0]
        pw = "".join(f" {cell(power[dr, 'one'], args.sims)} / "
                     f"{cell(power[dr, 'all'], args.sims) if rows > 1 else '(same)'} |" for dr in DROPS)
        lines.append(f"| {rows} | {rho:g} | {cell(old, args.sims)} | {cell(gate, args.sims)} |{pw}"
                     f" {np.median(mdds):.2f} |")
    print(f"{args.utts} utterances, 1 dB per-utterance spread, tolerance 0, {args.sims} simulated comparisons per"
          f" cell, {args.resamples} bootstrap resamples\n")
    print("\n".join(lines))
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
