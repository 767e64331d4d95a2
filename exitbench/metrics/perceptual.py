"""PESQ (ITU-T P.862 via the ``pesq`` package) and STOI / ESTOI (via ``pystoi``)."""

from __future__ import annotations

import math

import numpy as np

PESQ_MODES = {8000: "nb", 16000: "wb"}  # narrow-band at 8 kHz, wide-band at 16 kHz
PESQ_MIN_SECONDS = 0.25  # P.862 needs at least a quarter of a second of audio


def _as_mono_pair(est: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    est = np.asarray(est)
    ref = np.asarray(ref)
    if est.ndim != 1 or ref.ndim != 1:
        raise ValueError(f"est and ref must be mono [N], got shapes {est.shape} and {ref.shape}")
    if est.shape != ref.shape:
        raise ValueError(f"est and ref lengths differ: {est.shape[0]} vs {ref.shape[0]} samples")
    return est, ref


def pesq_score(est: np.ndarray, ref: np.ndarray, sample_rate: int) -> tuple[float, str | None]:
    """PESQ MOS-LQO of est against ref (NB at 8 kHz, WB at 16 kHz) as (score, None), or (nan, reason)."""
    est, ref = _as_mono_pair(est, ref)
    mode = PESQ_MODES.get(int(sample_rate))
    # the checks below name the usual failures before the C code does, with a clearer reason
    if mode is None:
        return math.nan, f"PESQ needs 8000 or 16000 Hz audio, got {sample_rate} Hz"
    if est.shape[0] < PESQ_MIN_SECONDS * sample_rate:
        return math.nan, f"too short for PESQ: {est.shape[0] / sample_rate:.3f} s < {PESQ_MIN_SECONDS} s"
    if not (np.isfinite(est).all() and np.isfinite(ref).all()):
        return math.nan, "audio contains NaN or Inf"
    if not np.any(ref):
        return math.nan, "silent reference"
    if not np.any(est):
        return math.nan, "silent estimate"
    try:
        from pesq import pesq

        score = float(pesq(int(sample_rate), ref, est, mode))
    except Exception as exc:  # the pesq package raises its own error types and plain ValueErrors alike
        message = exc.args[0] if exc.args else ""
        if isinstance(message, bytes):
            message = message.decode(errors="replace")
        return math.nan, f"pesq failed: {type(exc).__name__}: {message}"
    if not math.isfinite(score):
        return math.nan, "pesq returned a non-finite score"
    return score, None


def stoi_score(est: np.ndarray, ref: np.ndarray, sample_rate: int, extended: bool = False) -> float:
    """STOI (or ESTOI with extended=True) of est against ref, computed by pystoi."""
    from pystoi import stoi

    est, ref = _as_mono_pair(est, ref)
    return float(stoi(ref, est, int(sample_rate), extended=extended))
