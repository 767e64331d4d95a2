"""BSS-eval SDR with the source order fixed (the permutation is decided elsewhere, once per utterance).

SDR_j depends only on estimate j and reference j (interference and artefacts both count as distortion),
so it is computed channel by channel: the fast-bss-eval torch backend in float64 (default), or
mir_eval's reference implementation. Both use a 512-tap distortion filter.
"""

from __future__ import annotations

import warnings

import numpy as np

from exitbench.metrics.warning_filters import WARNING_FILTERS

BACKENDS = ("fast_bss_eval", "mir_eval")
MIR_EVAL_FILTER_LENGTH = 512  # fixed inside mir_eval.separation


def _as_sources(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"{name} must be [S, N] (or [N] for one source), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return x


def _sdr_fast(est: np.ndarray, ref: np.ndarray, filter_length: int, device: str = "cpu") -> np.ndarray:
    import torch
    from fast_bss_eval.torch import sdr_loss

    # SDR is invariant to the scale of either signal; normalising here keeps fast-bss-eval's own
    # normalisation (which clamps norms at 1e-6) from skewing very quiet signals
    est = est / np.linalg.norm(est, axis=-1, keepdims=True)
    ref = ref / np.linalg.norm(ref, axis=-1, keepdims=True)
    try:
        with torch.no_grad():
            neg = sdr_loss(torch.from_numpy(est).to(device), torch.from_numpy(ref).to(device),
                           filter_length=filter_length, pairwise=False)
    except RuntimeError:
        # torch 2.13's MKL build can fail batched float64 solves after torch.set_num_threads raised
        # the thread count; mir_eval computes the same quantity (slower) for the default filter length
        if filter_length != 512:
            raise
        return _sdr_mir_eval(est, ref)
    return -neg.cpu().numpy().astype(np.float64)


def _sdr_mir_eval(est: np.ndarray, ref: np.ndarray) -> np.ndarray:
    with WARNING_FILTERS, warnings.catch_warnings():
        # mir_eval.separation is deprecated upstream; the warning says nothing about these inputs
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        from mir_eval.separation import bss_eval_sources

        return np.asarray(bss_eval_sources(ref, est, compute_permutation=False)[0], dtype=np.float64)


def sdr(est: np.ndarray, ref: np.ndarray, backend: str = "fast_bss_eval", filter_length: int = 512,
        device: str = "cpu") -> np.ndarray:
    """BSS-eval SDR (dB) per source, est[s] against ref[s] (no permutation search); NaN for a silent estimate.

    ``device``: where fast-bss-eval's float64 solves run (a CUDA device in a GPU model worker)."""
    est = _as_sources(est, "est")
    ref = _as_sources(ref, "ref")
    if est.shape != ref.shape:
        raise ValueError(f"est and ref shapes differ: {est.shape} vs {ref.shape}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown SDR backend {backend!r}; choose one of {BACKENDS}")
    if backend == "mir_eval" and filter_length != MIR_EVAL_FILTER_LENGTH:
        raise ValueError(f"mir_eval's filter length is fixed at {MIR_EVAL_FILTER_LENGTH}, not {filter_length}")
    if filter_length < 1:
        raise ValueError(f"filter_length must be >= 1, got {filter_length}")
    silent_ref = ~np.any(ref, axis=-1)
    if silent_ref.any():
        raise ValueError(f"SDR is undefined for all-silent reference source(s) {np.flatnonzero(silent_ref).tolist()}")
    out = np.full(est.shape[0], np.nan)
    # a silent estimate makes SDR 0/0; it gets NaN and the other sources are still scored
    ok = np.any(est, axis=-1)
    if ok.any():
        if backend == "fast_bss_eval":
            out[ok] = _sdr_fast(est[ok], ref[ok], filter_length, device)
        else:
            out[ok] = _sdr_mir_eval(est[ok], ref[ok])
    return out
