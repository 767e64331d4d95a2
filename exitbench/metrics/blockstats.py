"""Per-block sufficient statistics (DESIGN §4): every SNR-family metric of any per-block choice of levels
is an exact function of these sums, because blocks do not overlap."""

from __future__ import annotations

import numpy as np

STAT_KEYS = ("n", "sum_ref", "sum_est", "sum_mix", "e_ref", "e_est", "e_mix",
             "dot_est_ref", "dot_mix_ref", "dot_est_mix")


def num_blocks(num_samples: int, block_size: int) -> int:
    """ceil(num_samples / block_size): the last block may be shorter."""
    if block_size < 1:
        raise ValueError(f"block_size must be a positive number of samples, got {block_size}")
    return -(-int(num_samples) // int(block_size))


def block_starts(num_samples: int, block_size: int) -> np.ndarray:
    """The first sample of each block."""
    return np.arange(num_blocks(num_samples, block_size), dtype=np.int64) * int(block_size)


def _blocked(x: np.ndarray, num_samples: int, nb: int, block_size: int) -> np.ndarray:
    # zero padding adds nothing to any sum, so one reshape gives every block at once
    out = np.zeros(x.shape[:-1] + (nb * block_size,), dtype=np.float64)
    out[..., :num_samples] = x
    return out.reshape(x.shape[:-1] + (nb, block_size))


def block_stats(est: np.ndarray, ref: np.ndarray, mix: np.ndarray, block_size: int) -> dict[str, np.ndarray]:
    """Sums per (level, source, block) of est [L,S,N], ref [S,N], mix [N]; each value a float64 [L,S,B] array."""
    est = np.asarray(est)
    ref = np.asarray(ref)
    mix = np.asarray(mix)
    if est.ndim != 3 or ref.ndim != 2 or mix.ndim != 1:
        raise ValueError(f"expected est [L,S,N], ref [S,N], mix [N]; got {est.shape}, {ref.shape}, {mix.shape}")
    num_levels, num_sources, num_samples = est.shape
    if ref.shape != (num_sources, num_samples) or mix.shape != (num_samples,):
        raise ValueError(f"shapes disagree: est {est.shape}, ref {ref.shape}, mix {mix.shape}")
    if num_samples == 0:
        raise ValueError("empty signals")
    for name, x in (("est", est), ("ref", ref), ("mix", mix)):
        if not np.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or Inf")
    nb = num_blocks(num_samples, block_size)
    e = _blocked(est, num_samples, nb, block_size)   # [L,S,B,T]
    r = _blocked(ref, num_samples, nb, block_size)   # [S,B,T]
    m = _blocked(mix, num_samples, nb, block_size)   # [B,T]
    n = np.full(nb, float(block_size))
    n[-1] = num_samples - (nb - 1) * block_size
    shape = (num_levels, num_sources, nb)
    stats = {
        "n": n,
        "sum_ref": r.sum(-1),
        "sum_est": e.sum(-1),
        "sum_mix": m.sum(-1),
        "e_ref": np.einsum("sbt,sbt->sb", r, r),
        "e_est": np.einsum("lsbt,lsbt->lsb", e, e),
        "e_mix": np.einsum("bt,bt->b", m, m),
        "dot_est_ref": np.einsum("lsbt,sbt->lsb", e, r),
        "dot_mix_ref": np.einsum("bt,sbt->sb", m, r),
        "dot_est_mix": np.einsum("lsbt,bt->lsb", e, m),
    }
    return {k: np.ascontiguousarray(np.broadcast_to(stats[k], shape), dtype=np.float64) for k in STAT_KEYS}
