"""The queries behind every figure and report table: tidy pandas frames from a results root.

Table reads and aggregations go through DuckDB (``views.connect``); policy curves come from
``exitbench.policies`` (replay and sweep are exact over the recorded block sums, DESIGN §4-5).
Nothing in ``exitbench.reports`` computes figure data: it only draws these frames.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from exitbench.errors import UsageError
from exitbench.policies import BlockArrays, PolicyError, parse_policy
from exitbench.policies.calibration import (calibration_summary, observed_exit, pit_reliability, pit_values)
from exitbench.policies.probability import level_probabilities
from exitbench.policies.replay import replay
from exitbench.policies.sweep import sweep
from exitbench.results.replays import load_block_arrays, run_shape
from exitbench.results.views import connect, fetch_arrow, runs_of_params

Root = str | os.PathLike

#: sweep policy name -> the strategy name a figure shows
STRATEGIES = {"probabilistic": "dynamic", "static": "static", "oracle": "oracle", "uniform": "uniform",
              "router": "router", "budget": "budget", "learned": "learned router"}
#: seeds of the cost-matched random baseline a report draws per point of a dynamic curve
MATCHED_DRAWS = 20
#: utterance-table metrics a summary may ask for (each a column of the utterances table)
LEVEL_METRICS = ("si_snri", "sdri", "pesq", "stoi", "estoi")
#: metrics a replayed policy has exactly from the block sums (others need materialised audio)
REPLAY_METRICS = ("si_snri", "snri")
DEFAULT_TARGETS = (10.0, 15.0, 20.0)


class AnalysisError(UsageError):
    """A query that cannot be answered for this run (missing feature, unknown utterance or key)."""


# -- helpers ---------------------------------------------------------------------------------------
def _df(root: Root, sql: str, params: list | None = None) -> pd.DataFrame:
    con = connect(root, runs=runs_of_params(params))  # the views cover the queried run's files only
    try:
        return fetch_arrow(con, sql, params).to_pandas()
    finally:
        con.close()


def _level_names(root: Root, run_id: str) -> dict[int, str]:
    levels = run_shape(root, run_id)["levels"]
    return dict(zip(levels["level"].astype(int), levels["name"]))


def _check_metrics(metrics: Sequence[str], allowed: Sequence[str]) -> list[str]:
    bad = [m for m in metrics if m not in allowed]
    if bad:
        raise AnalysisError(f"unknown metric(s) {bad}; choose from {list(allowed)}")
    return list(metrics)


def default_policy(arrays: BlockArrays, t: float = 15.0) -> str:
    """The policy a figure shows when none is named: PRESS's where variances exist, else the router, else the oracle."""
    feats = arrays.features()
    if "alpha" in feats:
        return f"probabilistic:t={t:g},p=0.9"
    if feats & {"router_logit", "dynamic"}:
        return "router"
    return f"oracle:t={t:g}"


# -- regret ----------------------------------------------------------------------------------------
def auto_targets(root: Root, run_ids: str | Sequence[str], count: int = 3) -> list[float]:
    """Exit-SNR targets (dB) inside the model's own range: the quantiles 1/(count+1) .. count/(count+1)
    (the quartiles for three) of the deepest static level's block exit-SNR in the first run, rounded
    to 0.5 dB; so the deepest level reaches the lowest target on 3/4 of the blocks, the highest on 1/4."""
    run_id = run_ids if isinstance(run_ids, str) else run_ids[0]
    arrays = load_block_arrays(root, run_id)
    deepest = arrays.exit_snr_db()[:, arrays.num_levels - 1]
    deepest = deepest[np.isfinite(deepest)]
    if deepest.size == 0:
        return list(DEFAULT_TARGETS)
    qs = np.quantile(deepest, np.arange(1, count + 1) / (count + 1))
    return sorted({float(np.round(2 * q) / 2) for q in qs})


def routers_for(root: Root, run_id: str, arrays: BlockArrays | None = None) -> list[str]:
    """Router files under ``<root>/routers/`` that apply to this run: fitted on another run of the same
    checkpoint (when the file records one), with the same levels and features."""
    from exitbench.policies.learned import load_router

    folder = os.path.join(os.fspath(root), "routers")
    if not os.path.isdir(folder):
        return []
    arrays = arrays if arrays is not None else load_block_arrays(root, run_id)
    sha = manifest(root, run_id).get("checkpoint_sha256")
    found = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not name.endswith(".json"):
            continue
        try:
            router = load_router(path)
            if router.info.get("checkpoint_sha256") not in (None, sha):
                continue
            router.check(arrays)
        except PolicyError:
            continue
        found.append(path)
    return found


def regret_curves(root: Root, run_id: str, targets: Sequence[float] = DEFAULT_TARGETS,
                  arrays: BlockArrays | None = None, matched_draws: int = MATCHED_DRAWS,
                  routers: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean one-sided exit-SNR regret (dB, over blocks) vs GMAC/s for every strategy and target t.

    Columns: run, strategy (dynamic = probabilistic over p, static per level, oracle, uniform,
    router where recorded, budget over mean budgets, learned router over q for every router file
    that applies, see ``routers_for``), policy, params, t, p, level (static only), level_name, gmacs,
    regret, si_snri, snri, and the cost-matched random baseline of every dynamic point
    (``policies.sweep.MATCHED_COLUMNS``). Strategies the recording cannot support are listed in
    ``attrs['skipped']``.
    """
    arrays = arrays if arrays is not None else load_block_arrays(root, run_id)
    routers = routers_for(root, run_id, arrays) if routers is None else list(routers)
    frame = sweep(arrays, None, targets=tuple(float(t) for t in targets), matched_draws=matched_draws,
                  also=[f"learned:router={r}" for r in routers])
    names = _level_names(root, run_id)
    frame.insert(0, "strategy", frame["policy"].map(STRATEGIES).fillna(frame["policy"]))
    frame.insert(0, "run", run_id)
    static = frame["policy"] == "static"
    level = pd.Series(np.nan, index=frame.index)
    level[static] = [parse_policy(f"static:{p}").values["l"] for p in frame.loc[static, "params"]]
    frame.insert(frame.columns.get_loc("p") + 1, "level", level.astype("Int64"))
    frame.insert(frame.columns.get_loc("level") + 1, "level_name", frame["level"].map(names))
    return frame.reset_index(drop=True)


def gain_over_matched(curves: pd.DataFrame, strategies: Sequence[str] = ("dynamic", "budget", "learned router")
                      ) -> pd.DataFrame:
    """Each dynamic strategy against its cost-matched random baseline at the static levels' own GMAC/s.

    Per run, target t, strategy and static level whose GMAC/s lies inside the strategy's curve: the
    curve's regret and its baseline's expected regret and 95 % band, each interpolated linearly in
    GMAC/s between neighbouring points. Columns: run, t, strategy, level_name, gmacs, regret,
    matched_regret, matched_regret_lo, matched_regret_hi, gain (matched − policy, dB; positive: the
    policy places the same compute better than chance).
    """
    cols = ["run", "t", "strategy", "level_name", "gmacs", "regret", "matched_regret", "matched_regret_lo",
            "matched_regret_hi", "gain"]
    rows = []
    if "matched_regret" not in curves:
        return pd.DataFrame(rows, columns=cols)
    for (run, t), group in curves.groupby(["run", "t"], sort=True):
        static = group[group["strategy"] == "static"].sort_values("gmacs")
        for strategy in strategies:
            g = group[(group["strategy"] == strategy) & group["matched_regret"].notna()]
            if len(g) < 2:
                continue
            g = g.groupby("gmacs", as_index=False)[["regret", "matched_regret", "matched_regret_lo",
                                                    "matched_regret_hi"]].min().sort_values("gmacs")
            x = g["gmacs"].to_numpy(float)
            for _, row in static.iterrows():
                at = float(row["gmacs"])
                if not x[0] <= at <= x[-1]:
                    continue
                v = {c: float(np.interp(at, x, g[c].to_numpy(float)))
                     for c in ("regret", "matched_regret", "matched_regret_lo", "matched_regret_hi")}
                rows.append({"run": run, "t": float(t), "strategy": strategy, "level_name": row["level_name"],
                             "gmacs": at, **v, "gain": v["matched_regret"] - v["regret"]})
    return pd.DataFrame(rows, columns=cols)


def regret_at_equal_compute(curves: pd.DataFrame) -> pd.DataFrame:
    """The dynamic (probabilistic) curve against the static staircase at the static levels' own GMAC/s.

    For each run, target t and static level whose GMAC/s lies inside the dynamic curve's range, the
    dynamic curve's regret linearly interpolated there (between neighbouring p) beside the static
    level's. Columns: run, t, level_name, gmacs, static_regret, dynamic_regret, difference
    (dynamic − static, dB; negative: dynamic spends the same compute for less regret).
    """
    rows = []
    for (run, t), group in curves.groupby(["run", "t"], sort=True):
        dyn = group[group["strategy"] == "dynamic"].sort_values("gmacs")
        static = group[group["strategy"] == "static"].sort_values("gmacs")
        if len(dyn) < 2 or static.empty:
            continue
        # the curve as a function of compute: for equal GMAC/s keep the least regret
        dyn = dyn.groupby("gmacs", as_index=False)["regret"].min()
        x, y = dyn["gmacs"].to_numpy(float), dyn["regret"].to_numpy(float)
        for _, row in static.iterrows():
            g = float(row["gmacs"])
            if not x[0] <= g <= x[-1]:
                continue
            d = float(np.interp(g, x, y))
            rows.append({"run": run, "t": float(t), "level_name": row["level_name"], "gmacs": g,
                         "static_regret": float(row["regret"]), "dynamic_regret": d,
                         "difference": d - float(row["regret"])})
    return pd.DataFrame(rows, columns=["run", "t", "level_name", "gmacs", "static_regret", "dynamic_regret",
                                       "difference"])


# -- calibration -----------------------------------------------------------------------------------
def calibration_scores(root: Root, run_id: str, arrays: BlockArrays | None = None) -> pd.DataFrame:
    """Per static level: KS distance of the PIT from uniform, mean PIT, mean relative CRPS, count."""
    arrays = arrays if arrays is not None else load_block_arrays(root, run_id)
    _need_variances(arrays, run_id)
    out = calibration_summary(arrays)
    out.insert(0, "run", run_id)
    out.insert(2, "level_name", out["level"].map(_level_names(root, run_id)))
    return out


def calibration(root: Root, run_id: str, bins: int = 20, arrays: BlockArrays | None = None) -> pd.DataFrame:
    """PIT reliability per level: columns run, level, level_name, expected (quantile), observed, ks, crps.

    ``observed`` is the fraction of PIT values ≤ ``expected`` (the diagonal if calibrated); each
    level's KS distance and mean CRPS repeat on its rows (``calibration_scores`` has one row per level).
    """
    arrays = arrays if arrays is not None else load_block_arrays(root, run_id)
    _need_variances(arrays, run_id)
    u = pit_values(arrays)
    scores = calibration_scores(root, run_id, arrays)
    parts = []
    for row in scores.itertuples(index=False):
        rel = pit_reliability(u[:, row.level], bins).rename(columns={"quantile": "expected"})
        parts.append(rel.assign(run=run_id, level=row.level, level_name=row.level_name, ks=row.ks, crps=row.crps))
    cols = ["run", "level", "level_name", "expected", "observed", "ks", "crps"]
    return pd.concat(parts, ignore_index=True)[cols]


def decision_reliability(root: Root, run_id: str, t: float = 15.0, bins: int = 10, condition: str = "all",
                         arrays: BlockArrays | None = None) -> pd.DataFrame:
    """Predicted P(exit-SNR ≥ t) in equal-width bins vs the observed frequency, per level and pooled (level −1).

    Columns: run, t, level, level_name, bin_lo, bin_hi, count, mean_predicted, observed (NaN where a
    bin is empty).
    """
    arrays = arrays if arrays is not None else load_block_arrays(root, run_id)
    _need_variances(arrays, run_id)
    pred = level_probabilities(arrays, float(t), condition)  # [K, L]
    hit = observed_exit(arrays, float(t), condition).astype(np.float64)
    names = _level_names(root, run_id) | {-1: "all levels"}
    edges = np.linspace(0.0, 1.0, bins + 1)
    parts = []
    for lv in [*range(arrays.num_levels), -1]:
        p = (pred if lv < 0 else pred[:, lv]).ravel()
        h = (hit if lv < 0 else hit[:, lv]).ravel()
        idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)
        count = np.bincount(idx, minlength=bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_pred = np.bincount(idx, weights=p, minlength=bins) / count
            obs = np.bincount(idx, weights=h, minlength=bins) / count
        parts.append(pd.DataFrame({"run": run_id, "t": float(t), "level": lv, "level_name": names[lv],
                                   "bin_lo": edges[:-1], "bin_hi": edges[1:], "count": count,
                                   "mean_predicted": mean_pred, "observed": obs}))
    return pd.concat(parts, ignore_index=True)


def _need_variances(arrays: BlockArrays, run_id: str) -> None:
    if arrays.alpha is None:
        raise AnalysisError(f"run {run_id} has no predicted variances (its model has no variance head):"
                            " calibration needs them")


# -- per-utterance metrics, level summaries ---------------------------------------------------------
def utterance_metrics(root: Root, run_id: str, metrics: Sequence[str] = LEVEL_METRICS) -> pd.DataFrame:
    """Long frame of per-utterance values (mean over sources): run, level, level_name, kind, utt_id, metric, value.

    ``gmacs`` is available as a metric: the utterance's MACs per second of audio (realised for a
    dynamic level). Rows whose value is NaN (a metric not recorded, PESQ on silence) are kept.
    """
    metrics = _check_metrics(metrics, (*LEVEL_METRICS, "si_snr", "snri", "sdr", "gmacs"))
    sr = _df(root, "SELECT sample_rate FROM runs WHERE run_id = ?", [run_id])
    if sr.empty:
        raise AnalysisError(f"no run {run_id} in {root}")
    exprs = ", ".join(f"avg(u.macs / u.num_samples * {int(sr.iloc[0, 0])} / 1e9) AS gmacs" if m == "gmacs"
                      else f"avg(u.{m}) AS {m}" for m in metrics)
    wide = _df(root, f"""
        SELECT u.level, any_value(l.name) AS level_name, any_value(l.kind) AS kind, u.utt_id, {exprs}
        FROM utterances u JOIN levels l ON l.run = u.run AND l.level = u.level
        WHERE u.run = ? GROUP BY u.level, u.utt_id ORDER BY u.level, u.utt_id""", [run_id])
    long = wide.melt(id_vars=["level", "level_name", "kind", "utt_id"], value_vars=metrics,
                     var_name="metric", value_name="value")
    long.insert(0, "run", run_id)
    return long


def bootstrap_ci(values: np.ndarray, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0,
                 max_cells: int = 1 << 24) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (resampling the values with replacement), vectorised and seeded."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.nan, np.nan
    if v.size == 1:
        return float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    per = max(1, max_cells // v.size)  # resamples per chunk bounds the memory of the index matrix
    means = np.concatenate([v[rng.integers(0, v.size, size=(min(per, n_boot - i), v.size))].mean(axis=1)
                            for i in range(0, n_boot, per)])
    a = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [a, 1.0 - a])
    return float(lo), float(hi)


def level_summary(root: Root, run_id: str, metrics: Sequence[str] = (*LEVEL_METRICS, "gmacs"),
                  n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per level and metric: mean over utterances and a percentile-bootstrap CI (resampling utterances).

    Columns: run, level, level_name, kind, metric, mean, ci_lo, ci_hi, n (utterances with a finite
    value), n_nan (those without: a silent estimate, a metric that could not be computed). The bootstrap is seeded (``seed``) so a report is reproducible; for a static level the
    GMAC/s interval has zero width.
    """
    long = utterance_metrics(root, run_id, metrics)
    rows = []
    for (lv, name, kind, metric), g in long.groupby(["level", "level_name", "kind", "metric"], sort=False):
        v = g["value"].to_numpy(dtype=np.float64)
        finite = v[np.isfinite(v)]
        lo, hi = bootstrap_ci(finite, n_boot, confidence, seed)
        rows.append({"run": run_id, "level": int(lv), "level_name": name, "kind": kind, "metric": metric,
                     "mean": float(finite.mean()) if finite.size else np.nan, "ci_lo": lo, "ci_hi": hi,
                     "n": int(finite.size), "n_nan": int(v.size - finite.size)})
    out = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(metrics)}
    return out.sort_values(["metric", "level"], key=lambda s: s.map(order) if s.name == "metric" else s,
                           kind="stable").reset_index(drop=True)


def default_policy_specs(arrays: BlockArrays, targets: Sequence[float] = DEFAULT_TARGETS,
                         ps: Sequence[float] = (0.5, 0.9, 0.99)) -> list[str]:
    """The policy configurations a report tabulates: uniform, oracle and PRESS's at each t, the router."""
    feats = arrays.features()
    specs = ["uniform"] + [f"oracle:t={t:g}" for t in targets]
    if "alpha" in feats:
        specs += [f"probabilistic:t={t:g},p={p:g}" for t in targets for p in ps]
    if feats & {"router_logit", "dynamic"}:
        specs.append("router")
    return specs


def policy_summary(root: Root, run_id: str, specs: Sequence[str] | None = None,
                   targets: Sequence[float] = DEFAULT_TARGETS, n_boot: int = 2000, confidence: float = 0.95,
                   seed: int = 0, arrays: BlockArrays | None = None) -> pd.DataFrame:
    """Per policy configuration (replayed exactly): means and bootstrap CIs over utterances of GMAC/s,
    SI-SNRi and SNRi, and the mean one-sided regret over blocks at the policy's t.

    Columns: run, policy, t, metric (gmacs, si_snri, snri, regret), mean, ci_lo, ci_hi, n. Regret has
    no interval (its blocks are not independent draws); a policy without its own t is scored at the
    first target.
    """
    arrays = arrays if arrays is not None else load_block_arrays(root, run_id)
    specs = list(specs) if specs is not None else default_policy_specs(arrays, targets)
    rows = []
    for i, spec in enumerate(specs):
        try:
            policy = parse_policy(spec)
            policy.check_requirements(arrays)
        except PolicyError as exc:
            raise AnalysisError(f"policy {spec!r} on run {run_id}: {exc}") from None
        t = float(policy.values.get("t", targets[0] if len(targets) else 15.0))
        per_block, per_utt = replay(arrays, policy(arrays, seed), t)
        for metric in ("gmacs", "si_snri", "snri"):
            v = per_utt[metric].to_numpy(dtype=np.float64)
            lo, hi = bootstrap_ci(v, n_boot, confidence, seed + i)
            rows.append({"run": run_id, "policy": policy.spec(), "t": t, "metric": metric,
                         "mean": float(np.nanmean(v)), "ci_lo": lo, "ci_hi": hi, "n": int(np.isfinite(v).sum())})
        rows.append({"run": run_id, "policy": policy.spec(), "t": t, "metric": "regret",
                     "mean": float(per_block["regret"].mean()), "ci_lo": np.nan, "ci_hi": np.nan,
                     "n": len(per_block)})
    return pd.DataFrame(rows, columns=["run", "policy", "t", "metric", "mean", "ci_lo", "ci_hi", "n"])


# -- slices ----------------------------------------------------------------------------------------
def _json_path(key: str) -> str:
    return '$."' + key.replace('"', '\\"') + '"'


def slices(root: Root, run_id: str, by: str = "input_snr", metrics: Sequence[str] = ("si_snri",),
           bins: int | Sequence[float] = 4, max_categories: int = 12) -> pd.DataFrame:
    """Per-level means of metrics by input-SNR bucket, duration bucket, or a metadata key.

    ``by='input_snr'`` groups (utterance, source) rows by the source's input SNR; ``'duration'``
    by utterance length; any other name is a key of the utterances' metadata JSON. Numeric keys
    with more than ``max_categories`` distinct values are bucketed like the numeric columns:
    ``bins`` quantile buckets (an int) or explicit edges. Columns: run, by, bucket (label),
    bucket_lo, bucket_hi (NaN for categories), level, level_name, metric, mean, n.
    """
    metrics = _check_metrics(metrics, (*LEVEL_METRICS, "si_snr", "snri", "sdr"))
    con = connect(root, runs=[run_id])
    try:
        if by in ("input_snr", "duration"):
            key_sql, params = f"u.{by}", []
        else:
            present = con.execute("SELECT count(*) FILTER (WHERE json_extract_string(metadata, ?) IS NOT NULL),"
                                  " any_value(metadata) FROM utterances WHERE run = ?",
                                  [_json_path(by), run_id]).fetchone()
            if not present[0]:
                keys = sorted(json.loads(present[1] or "{}")) if present[1] else []
                raise AnalysisError(f"run {run_id} has no metadata key {by!r}; slice by input_snr, duration"
                                    f" or one of {keys}")
            key_sql, params = "json_extract_string(u.metadata, ?)", [_json_path(by)]
        values = con.execute(f"SELECT DISTINCT {key_sql} AS k FROM utterances u WHERE u.run = ?",
                             params + [run_id]).df()["k"]
        numeric = pd.to_numeric(values, errors="coerce")
        bucketed = by in ("input_snr", "duration") or (numeric.notna().all() and len(values) > max_categories)
        aggs = ", ".join(f"avg(u.{m}) AS {m}, count(u.{m}) AS n_{m}" for m in metrics)
        if bucketed:
            edges = _edges(numeric.to_numpy(dtype=np.float64), bins)
            buckets = pd.DataFrame({"bucket": [_bucket_label(a, b) for a, b in zip(edges[:-1], edges[1:])],
                                    "bucket_lo": edges[:-1], "bucket_hi": edges[1:],
                                    "last": np.arange(len(edges) - 1) == len(edges) - 2})
            con.register("_buckets", buckets)
            # half-open buckets [lo, hi), the last one closed so the maximum is counted
            frame = con.execute(f"""
                SELECT b.bucket, b.bucket_lo, b.bucket_hi, u.level, any_value(l.name) AS level_name, {aggs}
                FROM utterances u JOIN levels l ON l.run = u.run AND l.level = u.level
                JOIN _buckets b ON CAST({key_sql} AS DOUBLE) >= b.bucket_lo
                     AND (CAST({key_sql} AS DOUBLE) < b.bucket_hi OR (b.last AND CAST({key_sql} AS DOUBLE) <= b.bucket_hi))
                WHERE u.run = ? GROUP BY ALL ORDER BY b.bucket_lo, u.level""", params * 3 + [run_id]).df()
        else:
            frame = con.execute(f"""
                SELECT {key_sql} AS bucket, NULL::DOUBLE AS bucket_lo, NULL::DOUBLE AS bucket_hi, u.level,
                       any_value(l.name) AS level_name, {aggs}
                FROM utterances u JOIN levels l ON l.run = u.run AND l.level = u.level
                WHERE u.run = ? GROUP BY ALL ORDER BY bucket, u.level""", params + [run_id]).df()
    finally:
        con.close()
    parts = [frame[["bucket", "bucket_lo", "bucket_hi", "level", "level_name"]].assign(
        metric=m, mean=frame[m], n=frame[f"n_{m}"]) for m in metrics]
    out = pd.concat(parts, ignore_index=True)
    out.insert(0, "by", by)
    out.insert(0, "run", run_id)
    return out


def _edges(values: np.ndarray, bins: int | Sequence[float]) -> np.ndarray:
    values = values[np.isfinite(values)]
    if not isinstance(bins, int):
        edges = np.asarray(bins, dtype=np.float64)
        if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
            raise AnalysisError(f"bucket edges must be at least two increasing numbers, got {list(bins)}")
        return edges
    if bins < 1:
        raise AnalysisError("bins must be at least 1")
    if values.size == 0:
        raise AnalysisError("no finite values to bucket")
    edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, bins + 1)))
    return edges if edges.size > 1 else np.array([edges[0], edges[0]])


def _bucket_label(lo: float, hi: float) -> str:
    return f"{lo:.3g}–{hi:.3g}"


# -- Pareto ----------------------------------------------------------------------------------------
def non_dominated(cost: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Points no other point beats (cost ≤, value ≥, one strictly); NaN points are never on the front."""
    cost = np.asarray(cost, dtype=np.float64)
    value = np.asarray(value, dtype=np.float64)
    out = np.zeros(cost.shape, dtype=bool)
    ok = np.flatnonzero(np.isfinite(cost) & np.isfinite(value))
    if ok.size == 0:
        return out
    c, v = cost[ok], value[ok]
    uniq, inv = np.unique(c, return_inverse=True)
    best = np.full(uniq.size, -np.inf)
    np.maximum.at(best, inv, v)  # best value at each distinct cost
    before = np.concatenate([[-np.inf], np.maximum.accumulate(best)[:-1]])  # best at any strictly lower cost
    out[ok] = (v == best[inv]) & (v > before[inv])
    return out


def pareto(root: Root, run_ids: str | Sequence[str], metric: str = "si_snri",
           targets: Sequence[float] = DEFAULT_TARGETS, curves: Mapping[str, pd.DataFrame] | None = None
           ) -> pd.DataFrame:
    """Mean metric vs GMAC/s: static levels (and a recorded dynamic level) from the utterances table,
    plus every policy configuration replayed (exact for si_snri/snri), for one or several runs.

    Columns: run, strategy, policy, params, t, p, level, level_name, gmacs, value (the metric's mean),
    metric, num_params (the parameters the point needs: its level's, or the whole model's for a
    policy), front (non-dominated within its run), front_all (non-dominated over all runs given).
    ``curves``: runs' ``regret_curves`` at these targets already computed (a report draws them first).
    """
    run_ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
    curves = curves or {}
    _check_metrics([metric], (*LEVEL_METRICS, "snri", "si_snr", "sdr"))
    parts = []
    for run_id in run_ids:
        levels = _df(root, f"""
            SELECT l.level, l.name AS level_name, l.kind, l.gmacs, l.params, avg(u.{metric}) AS value
            FROM levels l LEFT JOIN utterances u ON u.run = l.run AND u.level = l.level
            WHERE l.run = ? GROUP BY ALL ORDER BY l.level""", [run_id])
        if levels.empty:
            raise AnalysisError(f"run {run_id} has no levels table rows in {root}")
        model_params = int(levels["params"].max())
        static = levels.assign(run=run_id, strategy=np.where(levels["kind"] == "dynamic", "router", "static"),
                               policy=np.where(levels["kind"] == "dynamic", "router", "static"),
                               params=[f"l={lv}" if k == "static" else "" for lv, k in
                                       zip(levels["level"], levels["kind"])],
                               t=np.nan, p=np.nan, num_params=levels["params"].astype("int64"))
        frames = [static.drop(columns=["kind"])]
        if metric in REPLAY_METRICS:
            # the policies' own values only: no cost-matched baseline (seconds of random draws)
            run_curves = curves[run_id] if run_id in curves else regret_curves(root, run_id, targets, matched_draws=0)
            # static points come from the utterances table; router over a dynamic level is the dynamic level
            keep = ~run_curves["policy"].isin(["static"] + (["router"] if (levels["kind"] == "dynamic").any() else []))
            pol = run_curves[keep].drop_duplicates(["policy", "params"]).rename(columns={metric: "value"})
            pol = pol.assign(num_params=model_params)
            pol.loc[~pol["policy"].isin(["oracle", "probabilistic"]), "t"] = np.nan  # regret's t: not a parameter
            frames.append(pol[[c for c in static.columns if c in pol.columns and c != "kind"]])
        run_frame = pd.concat(frames, ignore_index=True)
        run_frame["front"] = non_dominated(run_frame["gmacs"], run_frame["value"])
        parts.append(run_frame)
    out = pd.concat(parts, ignore_index=True)
    out["front_all"] = non_dominated(out["gmacs"], out["value"])
    out["metric"] = metric
    cols = ["run", "strategy", "policy", "params", "t", "p", "level", "level_name", "gmacs", "value", "metric",
            "num_params", "front", "front_all"]
    out["level"] = out["level"].astype("Int64")
    out["num_params"] = out["num_params"].astype("int64")
    if metric not in REPLAY_METRICS:
        out.attrs["note"] = (f"policies are not shown for {metric}: it is not a sum over blocks, so a policy's"
                             " value needs its stitched audio (only si_snri and snri replay exactly)")
    return out[cols]


# -- exit map and utilization ------------------------------------------------------------------------
def _utterance_arrays(root: Root, run_id: str, utt_id: str) -> BlockArrays:
    shape = run_shape(root, run_id)
    table = fetch_arrow(connect(root, runs=[run_id]), "SELECT * EXCLUDE (run) FROM blocks WHERE run = ? AND utt_id = ?",
                        [run_id, utt_id])
    if table.num_rows == 0:
        raise AnalysisError(f"run {run_id} has no blocks for utterance {utt_id!r}")
    return BlockArrays.from_arrow(table, shape["num_levels"], shape["sample_rate"], shape["has_dynamic"])


def _checked_policy(arrays: BlockArrays, run_id: str, policy_spec: str | None, t: float) -> Any:
    """The named policy (or the default for this recording), checked against what was recorded."""
    spec = policy_spec or default_policy(arrays, t)
    try:
        policy = parse_policy(spec)
        policy.check_requirements(arrays)
    except PolicyError as exc:
        raise AnalysisError(f"policy {spec!r} on run {run_id}: {exc}") from None
    return policy


def exit_map(root: Root, run_id: str, utt_id: str, policy_spec: str | None = None,
             t: float = 15.0, seed: int = 0) -> pd.DataFrame:
    """Per block of one utterance: the level a policy chooses and the exit-SNR there (and at every level).

    Columns: run, utt_id, policy, t, block, start, n, level, level_name, exit_snr (dB, at the chosen
    level), regret, and ``exit_snr_<name>`` per static level. Policies act per block, so replaying
    them on this utterance alone gives the same choices as over the whole run (``uniform`` draws differ).
    """
    arrays = _utterance_arrays(root, run_id, utt_id)
    policy = _checked_policy(arrays, run_id, policy_spec, t)
    target = float(policy.values.get("t", t))
    per_block, _ = replay(arrays, policy(arrays, seed), target)
    names = _level_names(root, run_id)
    out = pd.DataFrame({"run": run_id, "utt_id": utt_id, "policy": policy.spec(), "t": target,
                        "block": arrays.block, "start": arrays.start, "n": arrays.n,
                        "level": per_block["level"].to_numpy(),
                        "level_name": per_block["level"].map(names).to_numpy(),
                        "exit_snr": per_block["exit_snr"].to_numpy(), "regret": per_block["regret"].to_numpy()})
    snr = arrays.exit_snr_db()
    for lv in range(arrays.num_levels):
        out[f"exit_snr_{names[lv]}"] = snr[:, lv]
    return out


def utilization(root: Root, run_id: str, policy_spec: str | None = None, t: float = 15.0,
                seed: int = 0) -> pd.DataFrame:
    """Per utterance: mean utilization (MACs spent / MACs of the deepest level) vs SI-SNRi and input SNR.

    For a recording with a dynamic level (a slimmable net's router) and no policy named, the
    dynamic level's realised MACs; otherwise the levels a policy chooses (replayed exactly).
    Columns: run, source ('dynamic' or the policy spec), utt_id, utilization, mean_level (chosen
    level index / (L−1), averaged over blocks), si_snri, input_snr (of the hardest source: the minimum over
    sources, since in a two-speaker mixture their mean is 0 by construction), duration.
    """
    shape = run_shape(root, run_id)
    levels = shape["levels"]
    deepest = int(levels.loc[levels["kind"] == "static", "level"].max())
    base = _df(root, """
        SELECT utt_id, min(input_snr) AS input_snr, any_value(duration) AS duration,
               any_value(macs) FILTER (WHERE level = ?) AS full_macs
        FROM utterances WHERE run = ? GROUP BY utt_id ORDER BY utt_id""", [deepest, run_id])
    if base.empty:
        raise AnalysisError(f"run {run_id} has no utterances in {root}")
    if policy_spec is None and shape["has_dynamic"]:
        dyn = int(levels.loc[levels["kind"] == "dynamic", "level"].iloc[0])
        per = _df(root, """SELECT utt_id, any_value(macs) AS macs, avg(si_snri) AS si_snri FROM utterances
                           WHERE run = ? AND level = ? GROUP BY utt_id""", [run_id, dyn])
        out = base.merge(per, on="utt_id", how="left")
        out["utilization"] = out["macs"] / out["full_macs"]
        out["mean_level"] = np.nan  # a slimmable net's realised width is not one of the static levels
        source = "dynamic"
    else:
        arrays = load_block_arrays(root, run_id)
        policy = _checked_policy(arrays, run_id, policy_spec, t)
        per_block, per_utt = replay(arrays, policy(arrays, seed), float(policy.values.get("t", t)))
        blocks = per_block.assign(frac=per_block["level"] / max(arrays.num_levels - 1, 1))
        lvl = blocks.groupby("utt_id", observed=True)["frac"].mean().rename("mean_level").reset_index()
        lvl["utt_id"] = lvl["utt_id"].astype(str)
        out = base.merge(per_utt[["utt_id", "gmacs", "si_snri"]], on="utt_id").merge(lvl, on="utt_id")
        full_gmacs = out["full_macs"] / (out["duration"] * 1e9)
        out["utilization"] = out["gmacs"] / full_gmacs
        source = policy.spec()
    out.insert(0, "source", source)
    out.insert(0, "run", run_id)
    return out[["run", "source", "utt_id", "utilization", "mean_level", "si_snri", "input_snr", "duration"]]


# -- manifests and errors -----------------------------------------------------------------------------
def manifest(root: Root, run_id: str) -> dict[str, Any]:
    """The run's manifest row (runs table) as a dict, JSON columns decoded."""
    frame = _df(root, "SELECT * EXCLUDE (run) FROM runs WHERE run_id = ?", [run_id])
    if frame.empty:
        raise AnalysisError(f"no run {run_id} in {root}")
    row = frame.iloc[0].to_dict()
    for key in ("settings", "spec", "model_metadata"):
        if isinstance(row.get(key), str):
            try:
                row[key] = json.loads(row[key])
            except json.JSONDecodeError:
                pass
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}


def errors(root: Root, run_id: str) -> pd.DataFrame:
    """The utterances that failed in a run: utt_id, stage, reason."""
    return _df(root, "SELECT utt_id, stage, reason FROM errors WHERE run = ? ORDER BY utt_id", [run_id])


def utterance_ids(root: Root, run_id: str) -> list[str]:
    """The run's utterance ids, sorted."""
    return _df(root, "SELECT DISTINCT utt_id FROM utterances WHERE run = ? ORDER BY utt_id",
               [run_id])["utt_id"].tolist()


__all__ = ["AnalysisError", "bootstrap_ci", "calibration", "calibration_scores", "decision_reliability",
           "default_policy", "default_policy_specs", "errors", "exit_map", "level_summary", "manifest", "non_dominated", "pareto",
           "policy_summary", "regret_curves", "slices", "utilization", "utterance_ids", "utterance_metrics"]


def deciding_condition(root: Root, run_id: str, arrays: BlockArrays | None = None) -> pd.DataFrame:
    """Per static level: the share of blocks whose true exit-SNR is set by SNR, SNRi or SNR_ref.

    The exit-SNR of a block is min over sources of max(SNR, SNRi, SNR_ref) (docs/DESIGN.md §5); this
    says which of the three is that max for the deciding (worst) source. With P_ref the utterance's
    mixture power (the default), SNR_ref is often the largest: the target t then mostly measures the
    estimate's error against the mixture's loudness, not its SNR (PRESS uses a fixed P_ref).
    Columns: level, level_name, snr, snri, snr_ref (fractions summing to 1), blocks, p_ref.
    """
    from exitbench.metrics.composite import exit_snr_ratios

    arrays = arrays if arrays is not None else load_block_arrays(root, run_id)
    st, L = arrays.stats, arrays.num_levels
    n = arrays.n[:, None, None].astype(np.float64)
    p_ref = arrays.p_ref[:, None, None]
    r = exit_snr_ratios(n, st["e_ref"][:, :L], st["e_est"][:, :L], st["e_mix"][:, :L], st["dot_est_ref"][:, :L],
                        st["dot_mix_ref"][:, :L], p_ref)
    stack = np.stack([r["snr"], r["snri"], r["snr_ref"]], axis=-1)  # [K, L, S, 3]
    worst = np.argmin(stack.max(axis=-1), axis=2)  # the deciding source per block and level [K, L]
    which = np.take_along_axis(stack.argmax(axis=-1), worst[:, :, None], axis=2)[:, :, 0]  # [K, L]
    names = _level_names(root, run_id)
    rows = []
    for lv in range(L):
        counts = np.bincount(which[:, lv], minlength=3) / max(which.shape[0], 1)
        rows.append({"level": lv, "level_name": names.get(lv, str(lv)), "snr": counts[0], "snri": counts[1],
                     "snr_ref": counts[2], "blocks": int(which.shape[0]), "p_ref": "mixture"})
    return pd.DataFrame(rows)

