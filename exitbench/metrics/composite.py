"""Metrics rebuilt from summed block statistics (the replay engine's maths, DESIGN §4-5).

Inputs are SUMS over whatever blocks were chosen (or one block's values), as broadcasting arrays.
Everything is float64; energies that cancel to tiny negatives are floored as in ``snr.energy_ratio_db``,
so a replay agrees with the metrics of its stitched waveform to rounding.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from exitbench.metrics.snr import DEFAULT_EPS, energy_ratio_db

_TINY = np.finfo(np.float64).tiny


def _f64(*arrays: ArrayLike) -> list[np.ndarray]:
    return [np.asarray(a, dtype=np.float64) for a in arrays]


def si_snr_from_sums(n: ArrayLike, sum_est: ArrayLike, sum_ref: ArrayLike, e_est: ArrayLike, e_ref: ArrayLike,
                     dot: ArrayLike, eps: float = DEFAULT_EPS) -> np.ndarray:
    """SI-SNR (dB) with the zero-mean corrections D, E, F: 10·log10(D² / (E·F − D²)); NaN where E ≤ 0."""
    n, sum_est, sum_ref, e_est, e_ref, dot = _f64(n, sum_est, sum_ref, e_est, e_ref, dot)
    live = _not_constant(n, sum_est, e_est)
    d = sum_est * (sum_ref / n)
    np.subtract(dot, d, out=d)  # D; in place because sweeps call this on large arrays
    e = e_ref - sum_ref * sum_ref / n
    f = sum_est * (sum_est / n)
    np.subtract(e_est, f, out=f)
    f *= e
    d *= d
    # D²/E is the target energy and F − D²/E the residual energy of the projection; E·F − D² ≥ 0 by
    # Cauchy–Schwarz, so a negative value is rounding and is floored inside energy_ratio_db
    f -= d
    with np.errstate(divide="ignore", invalid="ignore"):
        out = energy_ratio_db(d, f, eps)
    return np.where((e > 0) & live, out, np.nan)


def _not_constant(n: np.ndarray, sum_est: np.ndarray, e_est: np.ndarray) -> np.ndarray:
    """False where the (stitched) estimate is constant: its zero-mean energy Σx̂² − (Σx̂)²/N vanishes
    (to rounding: at most 1e-12 of Σx̂²), the silent-estimate rule of ``metrics.snr``."""
    spread = e_est - sum_est * (sum_est / n)
    return spread > 1e-12 * np.maximum(e_est, 0.0)


def snr_from_sums(e_est: ArrayLike, e_ref: ArrayLike, dot: ArrayLike, eps: float = DEFAULT_EPS,
                  n: ArrayLike | None = None, sum_est: ArrayLike | None = None) -> np.ndarray:
    """Plain SNR (dB): 10·log10(e_ref / (e_ref − 2·dot + e_est)); NaN where e_ref ≤ 0, and (given n and
    sum_est) where the estimate is constant."""
    e_est, e_ref, dot = _f64(e_est, e_ref, dot)
    out = energy_ratio_db(e_ref, e_ref - 2.0 * dot + e_est, eps)
    ok = e_ref > 0
    if n is not None and sum_est is not None:
        ok = ok & _not_constant(*_f64(n, sum_est), e_est)
    return np.where(ok, out, np.nan)


def composite_metrics(n: ArrayLike, sum_ref: ArrayLike, sum_est: ArrayLike, sum_mix: ArrayLike, e_ref: ArrayLike,
                      e_est: ArrayLike, e_mix: ArrayLike, dot_est_ref: ArrayLike, dot_mix_ref: ArrayLike,
                      dot_est_mix: ArrayLike | None = None, eps: float = DEFAULT_EPS) -> dict[str, np.ndarray]:
    """si_snr, snr, si_snr_mix, snr_mix, si_snri, snri (dB) from summed block statistics."""
    # dot_est_mix is accepted so a whole block_stats dict can be splatted in; no metric here needs it
    del dot_est_mix
    si = si_snr_from_sums(n, sum_est, sum_ref, e_est, e_ref, dot_est_ref, eps)
    si_mix = si_snr_from_sums(n, sum_mix, sum_ref, e_mix, e_ref, dot_mix_ref, eps)
    plain = snr_from_sums(e_est, e_ref, dot_est_ref, eps, n=n, sum_est=sum_est)
    plain_mix = snr_from_sums(e_mix, e_ref, dot_mix_ref, eps)
    return {"si_snr": si, "snr": plain, "si_snr_mix": si_mix, "snr_mix": plain_mix,
            "si_snri": si - si_mix, "snri": plain - plain_mix}


def exit_snr_ratios(n: ArrayLike, e_ref: ArrayLike, e_est: ArrayLike, e_mix: ArrayLike, dot_est_ref: ArrayLike,
                    dot_mix_ref: ArrayLike, p_ref: ArrayLike, eps: float = DEFAULT_EPS) -> dict[str, np.ndarray]:
    """The linear exit ratios of DESIGN §5 per block and source: snr, snri, snr_ref, each clipped to [0, 1/eps]."""
    n, e_ref, e_est, e_mix, dot_est_ref, dot_mix_ref, p_ref = _f64(
        n, e_ref, e_est, e_mix, dot_est_ref, dot_mix_ref, p_ref)
    # ‖x − x̂‖² from the sums cancels to rounding noise (even slightly negative) for a perfect estimate;
    # the floor plus the 1/eps cap turn that into "as good as it gets" rather than inf or a sign flip
    err = np.maximum(e_ref - 2.0 * dot_est_ref + e_est, _TINY)
    ref_minus_mix = np.maximum(e_ref - 2.0 * dot_mix_ref + e_mix, 0.0)
    cap = 1.0 / eps
    with np.errstate(over="ignore"):
        return {
            "snr": np.clip(np.maximum(e_ref, 0.0) / err, 0.0, cap),
            "snri": np.clip(ref_minus_mix / err, 0.0, cap),
            "snr_ref": np.clip(n * np.maximum(p_ref, 0.0) / err, 0.0, cap),
        }


def true_exit_snr_db(n: ArrayLike, e_ref: ArrayLike, e_est: ArrayLike, e_mix: ArrayLike, dot_est_ref: ArrayLike,
                     dot_mix_ref: ArrayLike, p_ref: ArrayLike, *, source_axis: int,
                     eps: float = DEFAULT_EPS) -> np.ndarray:
    """True exit-SNR (dB): 10·log10 of min over sources (source_axis) of max(snr, snri, snr_ref)."""
    n, e_ref, e_est, e_mix, dot_est_ref, dot_mix_ref, p_ref = _f64(
        n, e_ref, e_est, e_mix, dot_est_ref, dot_mix_ref, p_ref)
    err = np.maximum(e_ref - 2.0 * dot_est_ref + e_est, _TINY)
    ref_minus_mix = np.maximum(e_ref - 2.0 * dot_mix_ref + e_mix, 0.0)
    # the three ratios share one denominator, so their max is the largest numerator over it
    best = np.maximum(np.maximum(np.maximum(e_ref, 0.0), ref_minus_mix), n * np.maximum(p_ref, 0.0))
    with np.errstate(over="ignore"):
        r = np.clip(best / err, 0.0, 1.0 / eps)
    worst_source = np.min(r, axis=source_axis)
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(worst_source)
    return np.maximum(out, 10.0 * np.log10(eps))
