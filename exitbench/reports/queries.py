"""Queries the report needs beyond ``exitbench.results.analysis``: intervals, trends and the utterances to hear.

Each builds on an analysis query and adds what a reader needs to judge it: bootstrap intervals
(over utterances, since the blocks of one utterance are not independent), bin counts, a fitted
trend and its rank correlation, the utterances worth listening to.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from exitbench.policies import BlockArrays
from exitbench.results import analysis as A
from exitbench.results.replays import load_block_arrays, run_shape

Root = str | os.PathLike


def df(root: Root, sql: str, params: list | None = None) -> pd.DataFrame:
    """A SQL query over the root's views as a pandas frame."""
    from exitbench.results.views import connect, fetch_arrow, runs_of_params

    con = connect(root, runs=runs_of_params(params))  # the views cover the queried run's files only
    try:
        return fetch_arrow(con, sql, params).to_pandas()
    finally:
        con.close()


def _bootstrap_weights(num_utts: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, U] counts of each utterance in a resample with replacement (seeded)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(num_utts, np.full(num_utts, 1.0 / num_utts), size=n_boot).astype(np.float64)


def _ratio_interval(hits: np.ndarray, counts: np.ndarray, weights: np.ndarray,
                    confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of Σ_u w·hits / Σ_u w·counts over resamples (hits, counts: [U, Q])."""
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = (weights @ hits) / (weights @ counts)  # [B, Q]
    a = (1.0 - confidence) / 2.0
    lo = np.full(hits.shape[1], np.nan)
    hi = np.full(hits.shape[1], np.nan)
    for q in range(hits.shape[1]):
        r = ratio[:, q]
        r = r[np.isfinite(r)]
        if r.size:
            lo[q], hi[q] = np.quantile(r, [a, 1.0 - a])
    return lo, hi


def calibration_bands(root: Root, run_id: str, bins: int = 20, arrays: BlockArrays | None = None,
                      n_boot: int = 400, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """``analysis.calibration`` plus, per point, a bootstrap interval over utterances (lo, hi) and the counts.

    Extra columns: lo, hi (the observed fraction's percentile interval when utterances are resampled),
    count (PIT values of the level: blocks × sources), utterances.
    """
    from exitbench.policies.calibration import pit_values

    arrays = arrays if arrays is not None else load_block_arrays(root, run_id)
    rel = A.calibration(root, run_id, bins, arrays)
    u = pit_values(arrays)  # [K, L, S]
    w = _bootstrap_weights(arrays.num_utts, n_boot, seed)
    parts = []
    for lv, g in rel.groupby("level", sort=False):
        q = g["expected"].to_numpy(dtype=np.float64)
        vals = u[:, int(lv), :]  # [K, S]
        below = (vals[:, :, None] <= q[None, None, :]).sum(axis=1).astype(np.float64)  # [K, Q]
        hits = np.zeros((arrays.num_utts, q.size))
        np.add.at(hits, arrays.utt, below)
        counts = np.bincount(arrays.utt, minlength=arrays.num_utts).astype(np.float64) * vals.shape[1]
        lo, hi = _ratio_interval(hits, np.repeat(counts[:, None], q.size, axis=1), w, confidence)
        parts.append(g.assign(lo=lo, hi=hi, count=int(vals.size), utterances=int((counts > 0).sum())))
    return pd.concat(parts, ignore_index=True)


def decision_bands(root: Root, run_id: str, t: float = 15.0, bins: int = 10, arrays: BlockArrays | None = None,
                   n_boot: int = 400, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """``analysis.decision_reliability`` plus obs_lo, obs_hi (bootstrap over utterances) and utterances per bin."""
    from exitbench.policies.calibration import observed_exit
    from exitbench.policies.probability import level_probabilities

    arrays = arrays if arrays is not None else load_block_arrays(root, run_id)
    dec = A.decision_reliability(root, run_id, t, bins, arrays=arrays)
    pred = level_probabilities(arrays, float(t), "all")  # [K, L]
    hit = observed_exit(arrays, float(t), "all").astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    w = _bootstrap_weights(arrays.num_utts, n_boot, seed)
    parts = []
    for lv, g in dec.groupby("level", sort=False):
        p = pred if lv < 0 else pred[:, [int(lv)]]
        h = hit if lv < 0 else hit[:, [int(lv)]]
        idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)  # [K, L']
        cell = arrays.utt[:, None] * bins + idx
        counts = np.bincount(cell.ravel(), minlength=arrays.num_utts * bins).reshape(arrays.num_utts, bins)
        hits = np.bincount(cell.ravel(), weights=h.ravel(), minlength=arrays.num_utts * bins
                           ).reshape(arrays.num_utts, bins)
        lo, hi = _ratio_interval(hits, counts.astype(np.float64), w, confidence)
        g = g.sort_values("bin_lo")
        parts.append(g.assign(obs_lo=lo, obs_hi=hi, utterances=(counts > 0).sum(axis=0)))
    return pd.concat(parts, ignore_index=True)


@dataclass
class Trend:
    """A least-squares line through (x, y) and Spearman's rank correlation of the two."""

    slope: float
    intercept: float
    rho: float
    p_value: float
    n: int


def trend(x: np.ndarray, y: np.ndarray) -> Trend:
    """Linear fit and Spearman ρ over the finite pairs (NaN where fewer than three)."""
    from scipy import stats

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3 or np.ptp(x) == 0:
        return Trend(np.nan, np.nan, np.nan, np.nan, int(x.size))
    slope, intercept = np.polyfit(x, y, 1)
    if np.ptp(y) == 0:
        return Trend(float(slope), float(intercept), np.nan, np.nan, int(x.size))
    res = stats.spearmanr(x, y)
    return Trend(float(slope), float(intercept), float(res.statistic), float(res.pvalue), int(x.size))


def utilization_vs_input_snr(root: Root, run_id: str, policy: str | None = None,
                             t: float = 15.0) -> tuple[pd.DataFrame, Trend]:
    """``analysis.utilization`` (the router's dynamic level where recorded) and its trend over input SNR."""
    frame = A.utilization(root, run_id, policy, t)
    return frame, trend(frame["input_snr"].to_numpy(), frame["utilization"].to_numpy())


def deepest_static_level(root: Root, run_id: str) -> tuple[int, str]:
    levels = run_shape(root, run_id)["levels"]
    row = levels[levels["kind"] == "static"].sort_values("level").iloc[-1]
    return int(row["level"]), str(row["name"])


def pick_utterances(root: Root, run_id: str, utt_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """The utterances to listen to: those named, else the best, median and worst by the deepest static
    level's SI-SNRi (mean over sources). Columns: role, utt_id, si_snri, input_snr, duration."""
    level, _ = deepest_static_level(root, run_id)
    per = df(root, """SELECT utt_id, avg(si_snri) AS si_snri, min(input_snr) AS input_snr,
                                any_value(duration) AS duration
                         FROM utterances WHERE run = ? AND level = ? GROUP BY utt_id""", [run_id, level])
    if per.empty:
        raise A.AnalysisError(f"run {run_id} has no utterances at its deepest level")
    if utt_ids:
        missing = [u for u in utt_ids if u not in set(per["utt_id"])]
        if missing:
            raise A.AnalysisError(f"run {run_id} has no utterance {missing[0]!r}")
        chosen = per.set_index("utt_id").loc[list(dict.fromkeys(utt_ids))].reset_index()
        return chosen.assign(role="chosen")[["role", "utt_id", "si_snri", "input_snr", "duration"]]
    ranked = per[np.isfinite(per["si_snri"])].sort_values(["si_snri", "utt_id"], ascending=[False, True])
    ranked = ranked.reset_index(drop=True)
    if ranked.empty:
        raise A.AnalysisError(f"run {run_id}: no utterance has a finite SI-SNRi at the deepest level")
    picks = [("best", 0), ("median", (len(ranked) - 1) // 2), ("worst", len(ranked) - 1)]
    rows, seen = [], set()
    for role, i in picks:
        if i in seen:
            continue
        seen.add(i)
        rows.append({"role": role, **ranked.iloc[i][["utt_id", "si_snri", "input_snr", "duration"]].to_dict()})
    return pd.DataFrame(rows)


def metadata_slice_keys(root: Root, run_id: str, max_keys: int = 2, max_categories: int = 8) -> list[str]:
    """Metadata keys worth a slice table: non-numeric, 2..max_categories values, at most max_keys (by name)."""
    meta = df(root, "SELECT DISTINCT utt_id, metadata FROM utterances WHERE run = ?", [run_id])
    values: dict[str, set] = {}
    for text in meta["metadata"].dropna():
        try:
            d = json.loads(text)
        except (TypeError, json.JSONDecodeError):
            continue
        for k, v in d.items():
            if isinstance(v, (str, bool)) or v is None:
                values.setdefault(k, set()).add(str(v))
            else:
                values.setdefault(k, set()).add(None)  # numeric: bucketed by the input SNR slice already
    keys = [k for k, vs in sorted(values.items()) if None not in vs and 2 <= len(vs) <= max_categories
            and len(vs) < len(meta)]
    return keys[:max_keys]
