"""PRIVATE STAND-IN float64 formulas (DESIGN §4-5) for the policies, until exitbench.metrics.composite lands.

TODO(lead): dedupe. Every function here mirrors one in ``exitbench.metrics.composite`` / ``.snr``
(same conventions: error energies floored, every SNR-like value clipped to ±10·log10(1/EPS) dB), so the
swap is an import change. Nothing outside ``exitbench.policies`` should import this module.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-12  # relative floor of error energies: caps every SNR-like value at 120 dB (as metrics.snr)
_TINY = np.finfo(np.float64).tiny
_LIMIT_DB = -10.0 * np.log10(EPS)


def ratio_db(signal: np.ndarray, error: np.ndarray) -> np.ndarray:
    """10·log10(signal/error), error floored at EPS·signal, clipped to ±120 dB (finite, so sums stay finite)."""
    num = np.empty(np.broadcast_shapes(np.shape(signal), np.shape(error)))
    np.maximum(signal, 0.0, out=num)
    den = np.maximum(error, EPS * num)
    np.maximum(den, _TINY, out=den)
    np.divide(num, den, out=num)  # in place: these run on [utterances, grid points] arrays in sweeps
    with np.errstate(divide="ignore"):
        np.log10(num, out=num)
    num *= 10.0
    return np.clip(num, -_LIMIT_DB, _LIMIT_DB, out=num)


def si_snr_db(n, sum_est, sum_ref, e_est, e_ref, dot) -> np.ndarray:
    """SI-SNR (dB) from sums: D² / (E·F − D²) with zero-mean corrections D, E, F (DESIGN §4)."""
    d = sum_est * (sum_ref / n)
    np.subtract(dot, d, out=d)
    e = e_ref - sum_ref * sum_ref / n
    f = sum_est * (sum_est / n)
    np.subtract(e_est, f, out=f)
    f *= e
    d *= d
    f -= d  # E·F − D², in place: these run on [utterances, sources, grid points] arrays in sweeps
    return ratio_db(d, f)


def snr_db(e_est, e_ref, dot) -> np.ndarray:
    """Plain SNR (dB): Σx² / Σ(x − x̂)², with Σ(x − x̂)² = e_ref − 2·dot + e_est."""
    return ratio_db(e_ref, e_ref - 2.0 * dot + e_est)


def exit_snr_db(n, e_ref, e_est, e_mix, dot_est_ref, dot_mix_ref, p_ref, source_axis: int = -1) -> np.ndarray:
    """True exit-SNR (dB): min over sources of max(SNR, SNRi, SNR_ref) of one block (DESIGN §5)."""
    err = np.maximum(e_ref - 2.0 * dot_est_ref + e_est, _TINY)
    ref_minus_mix = np.maximum(e_ref - 2.0 * dot_mix_ref + e_mix, 0.0)
    # max of the three ratios over one shared denominator = one ratio of the largest numerator
    best = np.maximum(np.maximum(np.maximum(e_ref, 0.0), ref_minus_mix), n * np.maximum(p_ref, 0.0))
    with np.errstate(over="ignore"):
        r = np.clip(best / err, 0.0, 1.0 / EPS)
    worst = np.min(r, axis=source_axis)
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(worst)
    return np.maximum(out, -_LIMIT_DB)
