"""Permutation-invariant assignment of estimates to references by SI-SNR, and applying it."""

from __future__ import annotations

import itertools

import numpy as np

from exitbench.metrics.snr import DEFAULT_EPS, si_snr

EXHAUSTIVE_MAX_SOURCES = 4  # S! candidates up to here (24); the Hungarian algorithm beyond


def pairwise_si_snr(est: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """SI-SNR (dB) of every pair: out[r, e] = si_snr(est[e], ref[r])."""
    est = np.asarray(est, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    return si_snr(est[None, :, :], ref[:, None, :])


def best_permutation(est: np.ndarray, ref: np.ndarray) -> tuple[int, ...]:
    """The perm maximising mean SI-SNR when est[perm[s]] is matched to ref[s] (identity wins ties)."""
    est = np.asarray(est)
    ref = np.asarray(ref)
    if est.ndim != 2 or est.shape != ref.shape:
        raise ValueError(f"est and ref must both be [S, N] of one shape, got {est.shape} and {ref.shape}")
    num_sources = est.shape[0]
    scores = pairwise_si_snr(est, ref)
    # an undefined score (silent reference) must not decide the assignment: give it the floor value
    scores = np.nan_to_num(scores, nan=10.0 * np.log10(DEFAULT_EPS))
    if num_sources <= EXHAUSTIVE_MAX_SOURCES:
        rows = np.arange(num_sources)
        best, best_total = tuple(range(num_sources)), -np.inf
        for perm in itertools.permutations(range(num_sources)):
            total = scores[rows, perm].sum()
            if total > best_total:
                best, best_total = perm, total
        return tuple(int(p) for p in best)
    from scipy.optimize import linear_sum_assignment  # only beyond EXHAUSTIVE_MAX_SOURCES (scipy.optimize: 0.6 s)

    row, col = linear_sum_assignment(scores, maximize=True)
    perm = np.empty(num_sources, dtype=int)
    perm[row] = col
    return tuple(int(p) for p in perm)


def apply_permutation(est: np.ndarray, perm: tuple[int, ...] | list[int] | np.ndarray) -> np.ndarray:
    """Reorder the source axis (second to last) of est [..., S, N]: out[..., s, :] = est[..., perm[s], :]."""
    est = np.asarray(est)
    perm = np.asarray(perm, dtype=int)
    if est.ndim < 2:
        raise ValueError(f"est must be [..., S, N], got shape {est.shape}")
    if sorted(perm.tolist()) != list(range(est.shape[-2])):
        raise ValueError(f"{perm.tolist()} is not a permutation of the {est.shape[-2]} sources")
    return est[..., perm, :]
