"""Calibration of the predicted error variances: PIT, reliability, KS, CRPS, and exit-decision reliability."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps
from scipy.special import beta as beta_fn
from scipy.special import gammainc

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


def pit_values(arrays: BlockArrays) -> np.ndarray:
    """PIT values per block, level, source [K, L, S]: uniform when the predicted variance is calibrated.

    Inverse-gamma: u = P(σ² ≤ ‖x − x̂‖²/n) = Q(α, β·n/‖x − x̂‖²). Gaussian (σ² per sample):
    u = P(σ²·χ²_n ≤ ‖x − x̂‖²) = P(n/2, ‖x − x̂‖²/(2σ²)).
    """
    _require_variances(arrays)
    n = arrays.n[:, None, None].astype(np.float64)
    if arrays.alpha is None:
        return gammainc(n / 2.0, error_energy(arrays) / (2.0 * arrays.sigma2))
    return upper_gamma(arrays.alpha, arrays.beta * n / error_energy(arrays))


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


def calibration_summary(arrays: BlockArrays) -> pd.DataFrame:
    """Per static level: KS distance of the PIT from uniform, mean PIT, mean relative CRPS, count."""
    u = pit_values(arrays)
    crps = crps_values(arrays)
    return pd.DataFrame([{"level": lv, "ks": ks_distance(u[:, lv]), "mean_pit": float(u[:, lv].mean()),
                          "crps": float(crps[:, lv].mean()), "count": int(u[:, lv].size)}
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
