"""Exit probabilities P(exit-SNR ≥ t) from a model's predicted error variance (DESIGN §5).

Two families. PRESS's inverse-gamma: σ² ~ InvGamma(α, β), the ratios are shifted gamma variables
and P = Q(α, x) (regularised upper incomplete gamma). Gaussian: a predicted variance σ² per sample
of the block, errors iid N(0, σ²), so the error energy ‖x − x̂‖² ~ σ²·χ²_n = Gamma(n/2, scale 2σ²).
With the same large-n reading of the ratios as PRESS (‖x‖² ≈ ‖x̂‖² + ‖e‖²), each condition is
``‖e‖² ≤ limit``: SNR ≥ τ at limit ‖x̂‖²/(τ − 1), SNRi at ‖x̂ − y‖²/(τ − 1), SNR_ref at n·P_ref/τ, so
P = P(n/2, limit/(2σ²)) (the regularised lower incomplete gamma), and the max over the three
conditions is P at the largest limit.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.special import gammainc, gammaincc

from exitbench.errors import UsageError
from exitbench.policies.arrays import BlockArrays

CONDITIONS = ("snr", "snri", "snr_ref")
CONDITION_CHOICES = ("all", *CONDITIONS)
_CHUNK = 1 << 20


def upper_gamma(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Q(a, x) = gammaincc elementwise, split over threads (the ufunc releases the GIL; ~150 ns per value)."""
    a, x = np.broadcast_arrays(np.asarray(a, dtype=np.float64), np.asarray(x, dtype=np.float64))
    shape = a.shape
    a, x = a.reshape(-1), x.reshape(-1)
    out = np.empty(a.shape, dtype=np.float64)
    workers = min(len(os.sched_getaffinity(0)), 8, max(1, a.size // _CHUNK))
    if workers == 1:
        gammaincc(a, x, out=out)
    else:
        bounds = np.linspace(0, a.size, workers + 1).astype(np.int64)
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda i: gammaincc(a[bounds[i]:bounds[i + 1]], x[bounds[i]:bounds[i + 1]],
                                              out=out[bounds[i]:bounds[i + 1]]), range(workers)))
    return out.reshape(shape)


def gamma_rates(beta, n, e_est, e_mix, dot_est_mix, p_ref) -> dict[str, np.ndarray]:
    """The t-independent factors r_c of the gamma arguments: x_snr = (τ − 1)·r_snr, x_snri = (τ − 1)·r_snri,
    x_snr_ref = τ·r_snr_ref, with r_snr = βn/‖x̂‖², r_snri = βn/‖x̂ − y‖², r_snr_ref = β/P_ref (= 1/θ_c)."""
    beta_n = beta * n
    with np.errstate(divide="ignore", invalid="ignore"):
        # θ = 0 (silent estimate) gives r = inf and x = inf, so Q = 0: the ratio can exceed τ only by luck
        return {"snr": beta_n / np.maximum(e_est, 0.0),
                "snri": beta_n / np.maximum(e_est - 2.0 * dot_est_mix + e_mix, 0.0),
                "snr_ref": beta / p_ref}


def arguments_from_rates(t_db: float, rates: dict[str, np.ndarray], condition: str) -> np.ndarray:
    """x with P(ratio ≥ τ) = Q(α, x); for 'all' the min over conditions (Q decreasing: the max probability).

    SNR and SNRi: ratio ≈ 1 + z, so x = (τ − 1)/θ, and 0 when τ ≤ 1 (P = 1); SNR_ref: ratio ≈ z, x = τ/θ.
    """
    if condition not in CONDITION_CHOICES:
        raise UsageError(f"unknown condition {condition!r}; choose from {CONDITION_CHOICES}")
    tau = 10.0 ** (t_db / 10.0)
    shifted = max(tau - 1.0, 0.0)
    with np.errstate(invalid="ignore"):
        if condition == "snr_ref":
            return tau * rates["snr_ref"]
        if shifted == 0.0:
            one = rates["snr"] if condition == "snr" else rates["snri"]
            x = np.zeros(np.shape(one))
            return x if condition != "all" else np.minimum(x, tau * rates["snr_ref"])
        if condition != "all":
            return shifted * rates[condition]
        # (τ−1)·min(a, b) == min((τ−1)·a, (τ−1)·b) exactly: scaling by a positive number keeps the order
        return np.minimum(shifted * np.minimum(rates["snr"], rates["snri"]), tau * rates["snr_ref"])


def gamma_arguments(t_db: float, beta, n, e_est, e_mix, dot_est_mix, p_ref) -> dict[str, np.ndarray]:
    """x_c with P_c(ratio ≥ τ) = Q(α, x_c) for each condition c (broadcasting arrays, one block each).

    SNR:  ratio ≈ 1 + z, θ = ‖x̂‖²/(βn),     x = (τ − 1)/θ (0 when τ ≤ 1, so P = 1);
    SNRi: ratio ≈ 1 + z, θ = ‖x̂ − y‖²/(βn), ‖x̂ − y‖² = e_est − 2·dot_est_mix + e_mix;
    SNR_ref: ratio ≈ z,  θ = P_ref/β,       x = τ/θ.
    """
    rates = gamma_rates(beta, n, e_est, e_mix, dot_est_mix, p_ref)
    return {c: arguments_from_rates(t_db, rates, c) for c in CONDITIONS}


def condition_probability(t_db: float, condition: str, alpha, beta, n, e_est, e_mix, dot_est_mix, p_ref) -> np.ndarray:
    """Predicted P(ratio ≥ τ) for one condition (or 'all': the max over the three), elementwise."""
    rates = gamma_rates(beta, n, e_est, e_mix, dot_est_mix, p_ref)
    return upper_gamma(alpha, arguments_from_rates(t_db, rates, condition))


def gaussian_limits(n, e_est, e_mix, dot_est_mix, p_ref) -> dict[str, np.ndarray]:
    """The t-independent error-energy limits of the Gaussian family: SNR and SNRi are ``‖·‖² / (τ − 1)``
    of these, SNR_ref is this over τ (see the module docstring)."""
    return {"snr": np.maximum(e_est, 0.0), "snri": np.maximum(e_est - 2.0 * dot_est_mix + e_mix, 0.0),
            "snr_ref": n * p_ref}


def gaussian_probabilities(t_db: float, limits: dict[str, np.ndarray], sigma2, n, condition: str) -> np.ndarray:
    """P(exit-SNR ≥ t) under a Gaussian error of variance σ² per sample (elementwise over blocks)."""
    if condition not in CONDITION_CHOICES:
        raise UsageError(f"unknown condition {condition!r}; choose from {CONDITION_CHOICES}")
    tau = 10.0 ** (t_db / 10.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        shifted = np.inf if tau <= 1.0 else 1.0 / (tau - 1.0)  # τ ≤ 1: SNR, SNRi ≥ τ always (P = 1)
        lim = {"snr": limits["snr"] * shifted, "snri": limits["snri"] * shifted, "snr_ref": limits["snr_ref"] / tau}
        best = np.maximum(np.maximum(lim["snr"], lim["snri"]), lim["snr_ref"]) if condition == "all" \
            else lim[condition]
        best = np.where(np.isnan(best), np.inf, best)  # inf * 0 (a silent estimate at τ ≤ 1): reachable
        return gammainc(n / 2.0, best / (2.0 * sigma2))


def level_probabilities(arrays: BlockArrays, t_db: float, condition: str = "all",
                        levels: slice | None = None, per_source: bool = False) -> np.ndarray:
    """Predicted P(exit-SNR ≥ t) per block and static level [K, L'], min over sources (DESIGN §5);
    ``per_source``: each source's own [K, L', S]."""
    lv = slice(None) if levels is None else levels
    if (arrays.alpha is None or arrays.beta is None) and arrays.sigma2 is not None:
        key = ("gaussian_limits", lv.start, lv.stop, lv.step)
        st = arrays.stats
        n = arrays.n[:, None, None].astype(np.float64)
        if key not in arrays._cache:
            arrays._cache[key] = gaussian_limits(n, st["e_est"][:, lv], st["e_mix"][:, lv],
                                                 st["dot_est_mix"][:, lv], arrays.p_ref[:, None, None])
        out = gaussian_probabilities(t_db, arrays._cache[key], arrays.sigma2[:, lv], n, condition)
        return out if per_source else out.min(axis=2)
    if arrays.alpha is None or arrays.beta is None:
        raise UsageError("this recording has no predicted variances (alpha, beta or sigma2)")
    key = ("gamma_rates", lv.start, lv.stop, lv.step)
    if key not in arrays._cache:  # t-independent: computed once per recording for a whole sweep
        st = arrays.stats
        arrays._cache[key] = gamma_rates(arrays.beta[:, lv], arrays.n[:, None, None].astype(np.float64),
                                         st["e_est"][:, lv], st["e_mix"][:, lv], st["dot_est_mix"][:, lv],
                                         arrays.p_ref[:, None, None])
    x = arguments_from_rates(t_db, arrays._cache[key], condition)
    each = upper_gamma(arrays.alpha[:, lv], x)
    return each if per_source else each.min(axis=2)
