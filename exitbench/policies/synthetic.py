"""Synthetic long block tables (DESIGN §4 schema) for tests and benchmarks of the policies.

``block_table_from_waveforms`` computes the recorded sums from real waveforms (what a recorder does);
``random_block_table`` draws internally consistent sums for millions of blocks without waveforms: every
block's signals live in a 4-dimensional space spanned by the constant vector and three zero-mean
orthonormal directions, so all sums and inner products are those of real signals.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from exitbench.policies.arrays import STAT_COLUMNS

SCHEMA = pa.schema([
    ("utt_id", pa.string()), ("block", pa.int32()), ("level", pa.int16()), ("source", pa.int16()),
    ("start", pa.int64()), ("n", pa.int64()),
    *[(name, pa.float64()) for name in STAT_COLUMNS],
    ("alpha", pa.float64()), ("beta", pa.float64()), ("macs", pa.float64()), ("router_logit", pa.float64()),
])


def _table(columns: dict[str, np.ndarray], utt_codes: np.ndarray, utt_ids: Sequence[str]) -> pa.Table:
    arrays = []
    for field in SCHEMA:
        if field.name == "utt_id":
            dictionary = pa.array(list(utt_ids), pa.string())
            arrays.append(dictionary.take(pa.array(utt_codes, pa.int32())))
            continue
        col = columns.get(field.name)
        if col is None:
            arrays.append(pa.nulls(len(utt_codes), field.type))
        else:
            mask = np.isnan(col) if col.dtype.kind == "f" and np.isnan(col).any() else None
            arrays.append(pa.array(col, field.type, mask=mask))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def block_table_from_waveforms(utt_id: str, ref: np.ndarray, mix: np.ndarray, est: np.ndarray, block_size: int,
                               macs_per_sample: Sequence[float], alpha: np.ndarray | None = None,
                               beta: np.ndarray | None = None, router_logits: np.ndarray | None = None,
                               dynamic_est: np.ndarray | None = None,
                               dynamic_macs: np.ndarray | None = None) -> pa.Table:
    """Long block table of one utterance: ref [S, N], mix [N], est [L, S, N]; alpha/beta [L, S, B];
    router_logits [B, L]; dynamic_est [S, N] with dynamic_macs [B] adds pseudo-level L."""
    lv, s, n = est.shape
    if dynamic_est is not None:
        est = np.concatenate([est, dynamic_est[None]], axis=0)
    lp = est.shape[0]
    starts = np.arange(0, n, block_size)
    b = len(starts)
    counts = np.diff(np.append(starts, n))

    def bsum(v: np.ndarray) -> np.ndarray:  # [..., N] -> [..., B]
        return np.add.reduceat(v, starts, axis=-1)

    x = np.broadcast_to(ref[None], est.shape)
    y = np.broadcast_to(mix[None, None], est.shape)
    stats = {"sum_ref": bsum(x), "sum_est": bsum(est), "sum_mix": bsum(y), "e_ref": bsum(x * x),
             "e_est": bsum(est * est), "e_mix": bsum(y * y), "dot_est_ref": bsum(est * x),
             "dot_mix_ref": bsum(y * x), "dot_est_mix": bsum(est * y)}  # each [Lp, S, B]

    def rows(v: np.ndarray) -> np.ndarray:  # [Lp, S, B] -> rows ordered (block, level, source)
        return np.ascontiguousarray(np.transpose(v, (2, 0, 1))).reshape(-1)

    grid = np.zeros((lp, s, b))
    cols = {name: rows(v) for name, v in stats.items()}
    cols["block"] = rows(grid + np.arange(b))
    cols["level"] = rows(grid + np.arange(lp)[:, None, None])
    cols["source"] = rows(grid + np.arange(s)[None, :, None])
    cols["start"] = rows(grid + starts)
    cols["n"] = rows(grid + counts)
    macs = np.asarray(macs_per_sample, dtype=np.float64)[:, None, None] * counts + 0.0 * grid[:lv]
    if dynamic_est is not None:
        macs = np.concatenate([macs, np.broadcast_to(np.asarray(dynamic_macs, float), (1, s, b))], axis=0)
    cols["macs"] = rows(macs)
    pad = np.full((lp - lv, s, b), np.nan)
    if alpha is not None:
        cols["alpha"] = rows(np.concatenate([alpha, pad]))
        cols["beta"] = rows(np.concatenate([beta, pad]))
    if router_logits is not None:
        logits = np.broadcast_to(np.asarray(router_logits, float).T[:, None, :], (lv, s, b))
        cols["router_logit"] = rows(np.concatenate([logits, pad]))
    cols = {k: (v.astype(np.int64) if k in ("block", "level", "source", "start", "n") else v) for k, v in cols.items()}
    return _table(cols, np.zeros(len(cols["n"]), dtype=np.int64), [utt_id])


def random_block_table(num_utts: int, blocks_per_utt: int, num_levels: int, num_sources: int = 1, seed: int = 0,
                       block_size: int = 2000, variances: bool = True, router: bool = False,
                       dynamic: bool = False, chunk_blocks: int = 1 << 18) -> pa.Table:
    """A sorted long block table of random but internally consistent block sums (see module doc)."""
    rng = np.random.default_rng(seed)
    lv, s = num_levels, num_sources
    lp = lv + int(dynamic)
    k = num_utts * blocks_per_utt
    rows = k * lp * s
    names = (*STAT_COLUMNS, "macs") + (("alpha", "beta") if variances else ()) + (("router_logit",) if router else ())
    cols = {name: np.empty(rows) for name in names}
    macs_per_sample = 1e4 * 2.0 ** np.arange(lv)
    n_all = np.full(k, block_size, dtype=np.int64)
    utt_snr = rng.normal(8.0, 4.0, num_utts)  # utterance difficulty (dB at level 0)
    for k0 in range(0, k, chunk_blocks):
        k1 = min(k, k0 + chunk_blocks)
        kc = k1 - k0
        n = n_all[k0:k1].astype(np.float64)
        power = np.exp(rng.normal(0.0, 1.0, (kc, 1, s)))
        x = rng.normal(size=(kc, 1, s, 4)) * np.array([0.05, 1, 1, 1])
        x *= np.sqrt(n[:, None, None, None] * power[..., None] / (x * x).sum(-1, keepdims=True))
        y = x.sum(axis=2, keepdims=True) + rng.normal(size=(kc, 1, 1, 4)) * np.sqrt(0.1 * n)[:, None, None, None]
        snr = (utt_snr[np.arange(k0, k1) // blocks_per_utt][:, None, None] + 5.0 * np.arange(lp)[None, :, None]
               + rng.normal(0.0, 3.0, (kc, lp, s)))
        e = rng.normal(size=(kc, lp, s, 4))
        e *= np.sqrt((x * x).sum(-1) * 10.0 ** (-snr / 10.0) / (e * e).sum(-1))[..., None]
        est = x + e
        sq = np.sqrt(n)[:, None, None]
        out = {"sum_ref": sq * x[..., 0], "sum_est": sq * est[..., 0], "sum_mix": sq * y[..., 0],
               "e_ref": (x * x).sum(-1), "e_est": (est * est).sum(-1), "e_mix": (y * y).sum(-1),
               "dot_est_ref": (est * x).sum(-1), "dot_mix_ref": (y * x).sum(-1), "dot_est_mix": (est * y).sum(-1)}
        macs = np.broadcast_to((macs_per_sample[None, :] * n[:, None])[:, :, None], (kc, lv, s))
        if dynamic:
            macs = np.concatenate([macs, np.broadcast_to(n[:, None, None] * macs_per_sample.mean(), (kc, 1, s))], 1)
        out["macs"] = macs
        if variances:
            alpha = rng.uniform(3.0, 10.0, (kc, lp, s))
            sigma2 = (e * e).sum(-1) / n[:, None, None]
            out["alpha"] = alpha
            out["beta"] = (alpha + 1.0) * sigma2 * np.exp(rng.normal(0.0, 0.3, (kc, lp, s)))
            if dynamic:
                out["alpha"][:, lv] = np.nan
                out["beta"][:, lv] = np.nan
        if router:
            logit = np.broadcast_to(rng.normal(size=(kc, lp, 1)), (kc, lp, s)).copy()
            if dynamic:
                logit[:, lv] = np.nan
            out["router_logit"] = logit
        for name in names:
            cols[name].reshape(k, lp, s)[k0:k1] = np.broadcast_to(out[name], (kc, lp, s))
    blk = np.arange(k) % blocks_per_utt
    shape = (k, lp, s)
    cols["block"] = np.broadcast_to(blk[:, None, None], shape).reshape(-1)
    cols["level"] = np.broadcast_to(np.arange(lp)[None, :, None], shape).reshape(-1)
    cols["source"] = np.broadcast_to(np.arange(s)[None, None, :], shape).reshape(-1)
    cols["start"] = np.broadcast_to((blk * block_size)[:, None, None], shape).reshape(-1)
    cols["n"] = np.broadcast_to(n_all[:, None, None], shape).reshape(-1)
    utt = np.broadcast_to((np.arange(k) // blocks_per_utt)[:, None, None], shape).reshape(-1)
    return _table(cols, utt, [f"utt{u:08d}" for u in range(num_utts)])
