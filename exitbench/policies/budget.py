"""The budget policy's maths: a predicted exit-SNR per block and level, and λ for a mean compute budget.

Predicted exit-SNR (DESIGN §5, "budget"): the error power per sample is predicted by the geometric
mean of the model's σ² distribution, σ̂² = exp E[ln σ²] (= β·exp(−ψ(α)) for PRESS's inverse-gamma,
the point value ``sigma2`` for the Gaussian family), and the three ratios of the exit-SNR are read
as the probabilistic policy reads them (‖x‖² ≈ ‖x̂‖² + ‖e‖², ‖e‖² ≈ n·σ̂²):

    SNR ≈ 1 + ‖x̂‖²/(n σ̂²),  SNRi ≈ 1 + ‖x̂ − y‖²/(n σ̂²),  SNR_ref ≈ P_ref/σ̂²,

per source the max of the three in dB, per block the min over sources (as the true exit-SNR).

budget(λ) chooses per block argmax_l f_l − λ·g_l with f the predicted exit-SNR (dB) and g the block's
compute in GMAC/s (its MACs / n · sample rate / 1e9); ties go to the cheaper level. The chosen g
never grows with λ, so the mean GMAC/s C(λ) is a non-increasing step function whose steps lie at
the pairwise breakpoints (f_j − f_i)/(g_j − g_i) of the blocks; ``lambda_for_budget`` returns a λ
strictly inside the first step interval whose C is within the budget (the largest compute the
budget allows), found by bisection over the sorted breakpoints: exact, no tolerance.
"""

from __future__ import annotations

import numpy as np
from scipy.special import digamma

from exitbench.policies.arrays import BlockArrays
from exitbench.policies.replay import utterance_gmacs


def predicted_error_power(arrays: BlockArrays) -> np.ndarray:
    """σ̂² = exp E[ln σ²] per block, level and source [K, L, S] (inverse-gamma or Gaussian family)."""
    if "predicted_error_power" not in arrays._cache:
        if arrays.alpha is not None and arrays.beta is not None:
            with np.errstate(over="ignore"):
                out = arrays.beta * np.exp(-digamma(arrays.alpha))
        elif arrays.sigma2 is not None:
            out = np.asarray(arrays.sigma2, dtype=np.float64)
        else:
            raise ValueError("this recording has no predicted variances (alpha, beta or sigma2)")
        arrays._cache["predicted_error_power"] = out
    return arrays._cache["predicted_error_power"]


def predicted_exit_snr_db(arrays: BlockArrays, per_source: bool = False) -> np.ndarray:
    """Predicted exit-SNR (dB) per block and static level [K, L]: min over sources of max(SNR, SNRi, SNR_ref)
    (``per_source``: each source's own, [K, L, S])."""
    key = "predicted_exit_snr"
    if key not in arrays._cache:
        st = arrays.stats
        n = arrays.n[:, None, None].astype(np.float64)
        err = n * predicted_error_power(arrays)  # predicted ‖e‖²
        diff = np.maximum(st["e_est"] - 2.0 * st["dot_est_mix"] + st["e_mix"], 0.0)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            ratio = np.maximum(np.maximum(1.0 + st["e_est"] / err, 1.0 + diff / err),
                               n * arrays.p_ref[:, None, None] / err)
            db = 10.0 * np.log10(ratio)
        arrays._cache[key] = np.where(np.isnan(db), np.inf, db)  # 0/0: a silent estimate predicted error-free
    per = arrays._cache[key]
    return per if per_source else per.min(axis=2)


def block_gmacs(arrays: BlockArrays) -> np.ndarray:
    """Compute per block and static level in GMAC per second of audio [K, L]."""
    return arrays.macs / arrays.n[:, None] * (arrays.sample_rate / 1e9)


def choose_at(value: np.ndarray, cost: np.ndarray, lam: float) -> np.ndarray:
    """argmax_l value − λ·cost per block, ties to the cheaper level (then the lower index) [K]."""
    objective = value - lam * cost
    best = objective.max(axis=1, keepdims=True)
    tied = objective == best
    return np.argmin(np.where(tied, cost, np.inf), axis=1).astype(np.int64)


def breakpoints(value: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Every positive λ where some block's choice can change: (f_j − f_i)/(g_j − g_i) over level pairs, sorted."""
    out = []
    lv = value.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(lv):
            for j in range(i + 1, lv):
                dg = cost[:, j] - cost[:, i]
                lam = (value[:, j] - value[:, i]) / dg
                out.append(lam[np.isfinite(lam) & (lam > 0) & (dg != 0)])
    return np.unique(np.concatenate(out)) if out else np.zeros(0)


def mean_gmacs(arrays: BlockArrays, chosen: np.ndarray) -> float:
    """Mean over utterances of the GMAC/s a choice of static levels spends (the sweeps' compute axis);
    ``chosen`` [K, S] (per-source exits) counts each source's share, the mean over sources."""
    k = np.arange(arrays.num_blocks)
    macs = arrays.macs[k, chosen] if chosen.ndim == 1 else arrays.macs[k[:, None], chosen].mean(axis=1)
    return float(utterance_gmacs(arrays, macs).mean())


def budget_problem(arrays: BlockArrays, per_source: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(value, cost) rows of the per-block objective [R, L]: one row per block, or per (block, source) with
    each source paying 1/S of the block's compute (per-source exits; rows ordered block-major)."""
    if not per_source:
        return budget_value(arrays), block_gmacs(arrays)
    s = arrays.num_sources
    value = _finite(predicted_exit_snr_db(arrays, per_source=True)).transpose(0, 2, 1).reshape(-1, arrays.num_levels)
    cost = np.repeat(block_gmacs(arrays) / s, s, axis=0)
    return value, cost


def choose_budget(arrays: BlockArrays, lam: float, per_source: bool = False) -> np.ndarray:
    """budget(λ)'s choice: [K], or [K, S] for per-source exits."""
    value, cost = budget_problem(arrays, per_source)
    chosen = choose_at(value, cost, lam)
    return chosen.reshape(arrays.num_blocks, arrays.num_sources) if per_source else chosen


def lambda_for_budget(arrays: BlockArrays, budget: float, per_source: bool = False) -> float:
    """The least λ (inside a step of C) whose mean GMAC/s is ≤ ``budget``; the cheapest choice if none is."""
    finite, cost = budget_problem(arrays, per_source)
    cuts = breakpoints(finite, cost)
    # one representative λ per step interval: (0, c0), (c0, c1), ..., (c_last, ∞)
    reps = np.concatenate([[cuts[0] / 2 if cuts.size else 1.0], (cuts[:-1] + cuts[1:]) / 2,
                           [cuts[-1] * 2 + 1.0] if cuts.size else []])
    shape = (arrays.num_blocks, arrays.num_sources) if per_source else (arrays.num_blocks,)
    spend = lambda lam: mean_gmacs(arrays, choose_at(finite, cost, lam).reshape(shape))  # noqa: E731
    within = lambda i: spend(float(reps[i])) <= budget  # noqa: E731
    if spend(0.0) <= budget:
        return 0.0
    lo, hi = 0, len(reps) - 1
    if not within(hi):
        return float(reps[hi])  # no λ meets the budget: the cheapest choice the objective makes
    while lo < hi:  # C is non-increasing over the intervals: the first one within budget
        mid = (lo + hi) // 2
        if within(mid):
            hi = mid
        else:
            lo = mid + 1
    return float(reps[lo])


def budget_value(arrays: BlockArrays) -> np.ndarray:
    """The per-block objective's value term with infinities (silent estimates) replaced by a large finite dB."""
    return _finite(predicted_exit_snr_db(arrays))


def _finite(value: np.ndarray) -> np.ndarray:
    fin = np.isfinite(value)
    if fin.all():
        return value
    top = value[fin].max() if fin.any() else 0.0
    return np.where(fin, value, top + 1e3)
