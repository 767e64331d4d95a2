"""Calibration of the predicted error variances: PIT, reliability, KS, CRPS, and exit-decision reliability."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps
from scipy.special import beta as beta_fn
from scipy.special import gammainc, gammaincinv, gammainccinv

from exitbench.policies.arrays import BlockArrays
from exitbench.policies.base import PolicyError
from exitbench.policies.probability import CONDITION_CHOICES, level_probabilities, upper_gamma

_TINY = np.finfo(np.float64).tiny


def _require_variances(arrays: BlockArrays) -> None:
    if (arrays.alpha is None or arrays.beta is None) and arrays.sigma2 is None:
        raise PolicyError("calibration needs predicted variances (alpha, beta or sigma2), but this recording's"
                          " model has no variance head")


def error_energy(arrays: BlockArrays) -> np.ndarray:
    """‖x − x̂‖² per block, static level and source [K, L, S] (floored at the smallest positive float)."""
    st = arrays.stats
    return np.maximum(st["e_ref"] - 2.0 * st["dot_est_ref"] + st["e_est"], _TINY)


def invgamma_pit(alpha: np.ndarray, beta: np.ndarray, n: np.ndarray, err: np.ndarray) -> np.ndarray:
    """u = P(σ² ≤ ‖x − x̂‖²/n) = Q(α, β·n/‖x − x̂‖²) for σ² ~ InvGamma(α, β), elementwise (broadcasting)."""
    return upper_gamma(alpha, np.asarray(beta, dtype=np.float64) * n / np.maximum(err, _TINY))


def pit_values(arrays: BlockArrays) -> np.ndarray:
    """PIT values per block, level, source [K, L, S]: uniform when the predicted variance is calibrated.

    Inverse-gamma: u = P(σ² ≤ ‖x − x̂‖²/n) = Q(α, β·n/‖x − x̂‖²). Gaussian (σ² per sample):
    u = P(σ²·χ²_n ≤ ‖x − x̂‖²) = P(n/2, ‖x − x̂‖²/(2σ²)).
    """
    _require_variances(arrays)
    n = arrays.n[:, None, None].astype(np.float64)
    if arrays.alpha is None:
        return gammainc(n / 2.0, error_energy(arrays) / (2.0 * arrays.sigma2))
    return invgamma_pit(arrays.alpha, arrays.beta, n, error_energy(arrays))


def pit_reliability(u: np.ndarray, bins: int = 20) -> pd.DataFrame:
    """The PIT's empirical CDF at quantiles 0, 1/bins, ..., 1: observed fraction of u ≤ q (diagonal if calibrated)."""
    u = np.sort(np.asarray(u, dtype=np.float64).ravel())
    q = np.linspace(0.0, 1.0, bins + 1)
    return pd.DataFrame({"quantile": q, "observed": np.searchsorted(u, q, side="right") / max(u.size, 1)})


def ks_distance(u: np.ndarray) -> float:
    """Kolmogorov–Smirnov distance of the PIT values from Uniform(0, 1)."""
    return float(sps.ks_1samp(np.asarray(u, dtype=np.float64).ravel(), sps.uniform.cdf).statistic)


def crps_relative_precision(alpha: np.ndarray, beta: np.ndarray, n: np.ndarray, err: np.ndarray) -> np.ndarray:
    """CRPS of the predicted precision 1/σ² ~ Gamma(α, rate β) relative to the observed n/‖x − x̂‖².

    Dividing by the observed precision makes the score dimensionless (CRPS scales with its variable),
    so blocks of any loudness weigh alike: the predictive Gamma(α, scale s = ‖x − x̂‖²/(βn)) is scored
    at 1 with the closed form of Scheuerer & Möller (2015):
    CRPS = y(2F_α(y) − 1) − αs(2F_{α+1}(y) − 1) − s/B(½, α), F_a the Gamma(a, s) CDF, y = 1.
    Unlike a CRPS of σ² itself it is finite for every α > 0. Lower is better; 0 only for a point mass at 1.
    """
    s = np.asarray(err, dtype=np.float64) / (beta * n)
    y = 1.0
    return (y * (2.0 * gammainc(alpha, y / s) - 1.0) - alpha * s * (2.0 * gammainc(alpha + 1.0, y / s) - 1.0)
            - s / beta_fn(0.5, alpha))


def crps_values(arrays: BlockArrays) -> np.ndarray:
    """Relative-precision CRPS per block, level, source [K, L, S] (see crps_relative_precision)."""
    _require_variances(arrays)
    return crps_relative_precision(arrays.alpha, arrays.beta, arrays.n[:, None, None].astype(np.float64),
                                   error_energy(arrays))


#: quantile levels of the CRPS quadrature (midpoints): CRPS = 2 ∫ ρ_τ(y − q_τ) dτ over (0, 1)
CRPS_QUANTILES = (np.arange(100) + 0.5) / 100
_CRPS_CHUNK = 20000  # blocks per chunk: bounds the [chunk, L, S, 100] quantile array


def crps_log_error_db(arrays: BlockArrays) -> np.ndarray:
    """CRPS (dB) of the predicted per-sample error power in dB against the observed 10·log10(‖x − x̂‖²/n) [K, L, S].

    On a log scale the score is in the units of the variable and bounded by |bias| plus the predictive
    spread, so a mean over blocks means something (a relative CRPS of σ² is unbounded: a few
    near-silent references make all of its mean). Inverse-gamma: q_τ = 10·log10(β / Q⁻¹(α, τ)), the τ
    quantile of σ²; Gaussian σ² per sample: the error power is σ²·χ²ₙ/n, q_τ = 10·log10(σ² · 2P⁻¹(n/2, τ)/n).
    CRPS(F, y) = 2 ∫₀¹ ρ_τ(y − q_τ) dτ with the pinball loss ρ_τ(u) = u(τ − 1{u < 0}), by the midpoint rule
    on 100 quantile levels (checked against a Monte-Carlo E|X − y| − ½E|X − X′| in the tests).
    """
    _require_variances(arrays)
    n = arrays.n.astype(np.float64)
    y = 10.0 * np.log10(error_energy(arrays) / n[:, None, None])
    out = np.empty_like(y)
    tau = CRPS_QUANTILES
    for lo in range(0, y.shape[0], _CRPS_CHUNK):
        sl = slice(lo, lo + _CRPS_CHUNK)
        if arrays.alpha is not None:
            a, b = arrays.alpha[sl][..., None], arrays.beta[sl][..., None]
            q = 10.0 * np.log10(b / gammainccinv(a, tau))
        else:
            half_n = (n[sl] / 2.0)[:, None, None, None]
            q = 10.0 * np.log10(arrays.sigma2[sl][..., None] * gammaincinv(half_n, tau) / half_n)
        u = y[sl][..., None] - q
        out[sl] = 2.0 * np.mean(u * (tau - (u < 0)), axis=-1)
    return out


def calibration_summary(arrays: BlockArrays) -> pd.DataFrame:
    """Per static level: KS of the PIT from uniform, mean PIT, CRPS of the log error power (dB: mean and
    median), the relative CRPS's median (its mean is dominated by near-silent blocks), count."""
    u = pit_values(arrays)
    crps = crps_log_error_db(arrays)
    rel = crps_values(arrays)
    return pd.DataFrame([{"level": lv, "ks": ks_distance(u[:, lv]), "mean_pit": float(u[:, lv].mean()),
                          "crps": float(crps[:, lv].mean()), "crps_median": float(np.median(crps[:, lv])),
                          "crps_rel_median": float(np.median(rel[:, lv])), "count": int(u[:, lv].size)}
                         for lv in range(arrays.num_levels)])


def observed_exit(arrays: BlockArrays, t_db: float, condition: str = "all") -> np.ndarray:
    """Whether the true exit-SNR (min over sources of the condition's ratio, or of the max of three) ≥ t [K, L]."""
    if condition not in CONDITION_CHOICES:
        raise PolicyError(f"unknown condition {condition!r}; choose from {CONDITION_CHOICES}")
    if condition == "all":
        return arrays.exit_snr_db()[:, : arrays.num_levels] >= t_db
    st = arrays.stats
    err = error_energy(arrays)
    num = {"snr": st["e_ref"],
           "snri": st["e_ref"] - 2.0 * st["dot_mix_ref"] + st["e_mix"],
           "snr_ref": arrays.n[:, None, None] * arrays.p_ref[:, None, None] + 0.0 * err}[condition]
    with np.errstate(divide="ignore"):
        return (10.0 * np.log10(np.maximum(num, 0.0) / err)).min(axis=2) >= t_db


def decision_reliability(arrays: BlockArrays, t_db: float, bins: int = 10, condition: str = "all") -> pd.DataFrame:
    """Predicted P(exit-SNR ≥ t) binned (equal width) against the observed frequency, over blocks and levels."""
    _require_variances(arrays)
    pred = level_probabilities(arrays, t_db, condition).ravel()
    hit = observed_exit(arrays, t_db, condition).ravel().astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, pred, side="right") - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = np.bincount(idx, weights=pred, minlength=bins) / count
        observed = np.bincount(idx, weights=hit, minlength=bins) / count
    return pd.DataFrame({"bin_lo": edges[:-1], "bin_hi": edges[1:], "count": count,
                         "mean_predicted": mean_pred, "observed": observed})
