"""The cost-matched random baseline: for a policy's choice, random choices that spend the same compute.

Given the levels a policy chose per block, a draw permutes them at random among the blocks whose
per-level MACs are identical (blocks of one length, for a model whose MACs depend on the length
only): the level histogram of every such group is the policy's exactly, so the total MACs are too,
and the mean GMAC/s over utterances differs only through the utterances' different lengths (it is
reported per draw). What the policy gains over these draws is what it gains by *where* it puts the
compute, not by how much it spends. The expected regret under the draws has a closed form (each
block's level is distributed as its group's histogram) and is what ``matched_summary`` reports as
the band's centre; the interval is the seeds' quantiles.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from exitbench.policies.arrays import BlockArrays
from exitbench.policies.replay import composite_from_sums, utterance_gmacs, utterance_sum

DEFAULT_DRAWS = 20


def cost_groups(arrays: BlockArrays) -> np.ndarray:
    """Per block the index of its group of blocks with identical per-level MACs [K]."""
    if "cost_groups" not in arrays._cache:
        _, inverse = np.unique(arrays.macs, axis=0, return_inverse=True)
        arrays._cache["cost_groups"] = np.asarray(inverse).reshape(-1).astype(np.int64)
    return arrays._cache["cost_groups"]


def matched_draw(arrays: BlockArrays, chosen: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw: ``chosen`` permuted at random within each group of equal-cost blocks [K]."""
    groups = cost_groups(arrays)
    keys = rng.random(arrays.num_blocks)
    order = np.lexsort((keys, groups))  # blocks by group, in random order inside each
    by_group = np.argsort(groups, kind="stable")  # blocks by group, in block order
    out = np.empty_like(chosen)
    out[by_group] = chosen[order]
    return out


def expected_regret(arrays: BlockArrays, chosen: np.ndarray, t: float) -> float:
    """The exact mean regret at t over all draws (each block at its group's level histogram)."""
    groups = cost_groups(arrays)
    lv = arrays.num_levels
    g = int(groups.max()) + 1 if groups.size else 0
    hist = np.zeros((g, lv))
    np.add.at(hist, (groups, chosen), 1.0)
    hist /= np.maximum(hist.sum(axis=1, keepdims=True), 1.0)
    regret = np.maximum(0.0, t - arrays.exit_snr_db()[:, :lv])
    return float((regret * hist[groups]).sum(axis=1).mean())


def matched_summary(arrays: BlockArrays, chosen: np.ndarray, targets: Sequence[float], draws: int = DEFAULT_DRAWS,
                    seed: int = 0, level: float = 0.95) -> list[dict[str, float]]:
    """Per target: the cost-matched random baseline's expected regret, its interval over ``draws`` seeds
    (quantiles at (1 ± level)/2), and its mean GMAC/s, SI-SNRi and SNRi over the draws.

    The draws are evaluated together (a trailing draw axis through the utterance sums), with the same
    arithmetic as ``replay.summarize`` of each draw."""
    chosen = np.asarray(chosen, dtype=np.int64)
    picks = np.stack([matched_draw(arrays, chosen, np.random.default_rng([seed, i])) for i in range(draws)], axis=1)
    k = np.arange(arrays.num_blocks)[:, None]
    lv = arrays.num_levels
    gm = utterance_gmacs(arrays, arrays.macs[k, picks]).mean(axis=0)  # [D]
    sums = {name: utterance_sum(arrays, arrays.stats[name][k, picks].transpose(0, 2, 1))  # [U, S, D]
            for name in ("sum_est", "e_est", "dot_est_ref")}
    m = composite_from_sums(arrays, sums["sum_est"], sums["e_est"], sums["dot_est_ref"])
    exit_snr = arrays.exit_snr_db()[:, :lv][k, picks]  # [K, D]
    lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
    out = []
    for t in targets:
        reg = np.maximum(0.0, float(t) - exit_snr).mean(axis=0)
        out.append({"t": float(t), "matched_regret": expected_regret(arrays, chosen, float(t)),
                    "matched_regret_lo": float(np.quantile(reg, lo_q)), "matched_regret_hi": float(np.quantile(reg, hi_q)),
                    "matched_gmacs": float(gm.mean()), "matched_si_snri": float(m["si_snri"].mean(axis=(0, 1)).mean()),
                    "matched_snri": float(m["snri"].mean(axis=(0, 1)).mean())})
    return out
