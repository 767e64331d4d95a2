"""SI-SNR and SNR in dB along the last axis (float64), and the shared energy-ratio-to-dB rule.

Edge cases, the same everywhere in ``exitbench.metrics``:
- a perfect estimate (zero error energy, or a tiny negative one from cancellation) gives a large FINITE
  value, ``-10*log10(eps)`` dB (120 dB for the default eps = 1e-12): the error energy is floored at
  ``eps`` times the signal energy, so means over utterances stay finite and replayed sums agree with
  stitched waveforms;
- no recovered signal (an estimate orthogonal to the reference: zero target energy) gives
  ``10*log10(eps)`` dB (-120 dB);
- a silent or constant estimate, like a silent (all-zero, or constant for SI-SNR) reference, leaves
  the metric undefined: NaN. One rule for every metric of a recording (SDR, PESQ and STOI of such an
  estimate are NaN too, and the row is flagged ``silent_estimate``), so that no mean mixes a clamped
  value with NaNs dropped elsewhere.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

DEFAULT_EPS = 1e-12  # relative floor of the error energy: caps every SNR-like value at 120 dB

_TINY = np.finfo(np.float64).tiny


def energy_ratio_db(signal_energy: ArrayLike, error_energy: ArrayLike,
                    eps: float = DEFAULT_EPS) -> np.ndarray:
    """10·log10(signal/error) with the error floored at eps·signal and the result clipped to ±10·log10(1/eps)."""
    sig = np.asarray(signal_energy, dtype=np.float64)
    err = np.asarray(error_energy, dtype=np.float64)
    out = np.empty(np.broadcast_shapes(sig.shape, err.shape))
    np.maximum(sig, 0.0, out=out)  # energies: a tiny negative is rounding, not information
    # floor the error so that cancellation noise around a perfect estimate cannot blow up the ratio
    den = np.asarray(np.maximum(err, eps * out))  # 0-d inputs give a scalar; keep an array to write into
    np.maximum(den, _TINY, out=den)
    # in place throughout: policy sweeps call this on [utterances, sources, thresholds] arrays
    np.divide(out, den, out=out)
    with np.errstate(divide="ignore"):
        np.log10(out, out=out)
    out *= 10.0
    limit = -10.0 * np.log10(eps)
    return np.clip(out, -limit, limit, out=out)


def _as_pair(est: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    est = np.asarray(est, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if est.shape[-1] != ref.shape[-1]:
        raise ValueError(f"est and ref lengths differ: {est.shape[-1]} vs {ref.shape[-1]} samples")
    if est.shape[-1] == 0:
        raise ValueError("empty signals")
    est, ref = np.broadcast_arrays(est, ref)
    return est, ref


def si_snr(est: np.ndarray, ref: np.ndarray, eps: float = DEFAULT_EPS) -> np.ndarray:
    """Scale-invariant SNR (dB) of est against ref along the last axis, both made zero-mean first."""
    est, ref = _as_pair(est, ref)
    est = est - est.mean(axis=-1, keepdims=True)
    ref = ref - ref.mean(axis=-1, keepdims=True)
    ref_energy = np.einsum("...t,...t->...", ref, ref)
    dot = np.einsum("...t,...t->...", est, ref)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(ref_energy > 0, dot / ref_energy, 0.0)
    target = alpha[..., None] * ref
    # the residual is formed explicitly (not as F - D²/E) because it is the more accurate route
    noise = est - target
    out = energy_ratio_db(np.einsum("...t,...t->...", target, target),
                          np.einsum("...t,...t->...", noise, noise), eps)
    return np.where((ref_energy > 0) & (np.ptp(est, axis=-1) > 0), out, np.nan)


def snr(est: np.ndarray, ref: np.ndarray, eps: float = DEFAULT_EPS) -> np.ndarray:
    """Plain SNR (dB), not zero-mean: 10·log10(‖x‖² / ‖x − x̂‖²) along the last axis."""
    est, ref = _as_pair(est, ref)
    ref_energy = np.einsum("...t,...t->...", ref, ref)
    err = ref - est
    out = energy_ratio_db(ref_energy, np.einsum("...t,...t->...", err, err), eps)
    return np.where((ref_energy > 0) & (np.ptp(est, axis=-1) > 0), out, np.nan)
