"""Paired comparison of two recordings of one test set: per-utterance deltas, bootstrap CIs, verdicts, curves.

Every utterance is scored by both runs, so the comparison is paired: per utterance the metric
(averaged over sources) of the candidate minus the base, per static level and per replayed policy
configuration. A percentile bootstrap over utterances (the same resamples for every row, so rows
stay comparable) gives the confidence interval of the mean delta. A row is 'worse' only when the
whole interval lies below −tolerance (a significant regression), 'better' when it lies above
+tolerance, else 'same'. Curve-level readouts (area under the Pareto front of mean SI-SNRi against
GMAC/s, regret at a fixed compute) are reported beside them, without a significance test.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from exitbench.errors import UsageError
from exitbench.policies import PolicyError, parse_policy
from exitbench.results.catalog import resolve_run
from exitbench.results.views import connect

#: per-utterance metrics of the utterance table that a comparison can use (all: higher is better)
LEVEL_METRICS = ("si_snr", "si_snri", "snr", "snri", "sdr", "sdri", "pesq", "stoi", "estoi")
#: metrics a policy replay yields exactly from the block sums
REPLAY_METRICS = ("si_snr", "si_snri", "snr", "snri")
#: policies compared when none are named: each where both recordings support it
DEFAULT_POLICIES = ("oracle:t=15", "probabilistic:t=15,p=0.9", "router")
DEFAULT_RESAMPLES = 2000
_MAX_CELLS = 1 << 22  # resamples × utterances per chunk of the bootstrap


class IncompatibleRuns(UsageError):
    """Two runs that cannot be compared (different test sets, no shared utterances...)."""


def parse_metrics(text: str | Sequence[str]) -> tuple[str, ...]:
    """A comma list (or sequence) of utterance metrics, checked against LEVEL_METRICS."""
    items = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    bad = [m for m in items if m not in LEVEL_METRICS]
    if bad or not items:
        raise UsageError(f"unknown metric(s) {bad or items}; choose from {', '.join(LEVEL_METRICS)}")
    return tuple(dict.fromkeys(items))


def parse_tolerance(text: str | float, metrics: Sequence[str]) -> dict[str, float]:
    """``0.1`` (every metric) or ``si_snri=0.2,pesq=0.05`` (others 0.1) as {metric: tolerance}."""
    if isinstance(text, (int, float)):
        return {m: float(text) for m in metrics}
    out = {m: 0.1 for m in metrics}
    for item in filter(None, (s.strip() for s in str(text).split(","))):
        key, eq, value = item.partition("=")
        try:
            if not eq:
                out = {m: float(item) for m in metrics} | {k: v for k, v in out.items() if k not in metrics}
                continue
            out[key.strip()] = float(value)
        except ValueError:
            raise UsageError(f"--tolerance {item!r}: expected a number or metric=number") from None
    if any(v < 0 for v in out.values()):
        raise UsageError("--tolerance must not be negative")
    return out


# -- per-utterance values ------------------------------------------------------------------------
def level_values(root: str | os.PathLike, run_id: str, metrics: Sequence[str]) -> pd.DataFrame:
    """Long frame (kind='level', name, metric, utt_id, value): per utterance and level, the source mean."""
    cols = ", ".join(f"avg({m}) AS {m}" for m in metrics)
    con = connect(root)
    try:
        wide = con.execute(f"SELECT utt_id, level, level_name AS name, {cols} FROM utterances WHERE run = ?"
                           " GROUP BY utt_id, level, level_name ORDER BY level, utt_id", [run_id]).df()
    finally:
        con.close()
    long = wide.melt(id_vars=["utt_id", "level", "name"], value_vars=list(metrics), var_name="metric",
                     value_name="value")
    return long.assign(kind="level")


def policy_values(root: str | os.PathLike, run_id: str, specs: Sequence[str], metrics: Sequence[str],
                  arrays: Any = None) -> tuple[pd.DataFrame, dict[str, str]]:
    """Long frame (kind='policy', name=spec, metric, utt_id, value) of replayed policies; and the skipped ones."""
    from exitbench.results.replays import load_block_arrays, replay_run

    usable = [m for m in metrics if m in REPLAY_METRICS]
    frames, skipped = [], {}
    if not usable or not specs:
        return pd.DataFrame(columns=["utt_id", "name", "metric", "value", "kind"]), skipped
    arrays = arrays if arrays is not None else load_block_arrays(root, run_id)
    for spec in specs:
        policy = parse_policy(spec)
        if not policy.supports(arrays):
            try:
                policy.check_requirements(arrays)
            except PolicyError as exc:
                skipped[policy.spec()] = str(exc)
            continue
        res = replay_run(root, run_id, spec, arrays=arrays)
        wide = res.per_utt[["utt_id", *usable]].assign(name=res.policy)
        frames.append(wide.melt(id_vars=["utt_id", "name"], value_vars=usable, var_name="metric",
                                value_name="value"))
    if not frames:
        return pd.DataFrame(columns=["utt_id", "name", "metric", "value", "kind"]), skipped
    return pd.concat(frames, ignore_index=True).assign(kind="policy"), skipped


# -- the bootstrap ----------------------------------------------------------------------------------
def bootstrap_mean_ci(deltas: np.ndarray, confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and percentile-bootstrap CI of the mean of each row of ``deltas`` [M, U] (NaN = missing pair).

    The utterances are resampled once for all rows (paired resampling); a row's resampled mean is
    the weighted mean over its non-missing entries. Returns (mean, low, high), each [M].
    """
    if not 0 < confidence < 1:
        raise UsageError(f"confidence must lie in (0, 1), not {confidence}")
    d = np.atleast_2d(np.asarray(deltas, dtype=np.float64))
    m, u = d.shape
    valid = np.isfinite(d)
    x = np.where(valid, d, 0.0)
    w = valid.astype(np.float64)
    n = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = x.sum(axis=1) / n
    if u == 0:
        return mean, np.full(m, np.nan), np.full(m, np.nan)
    rng = np.random.default_rng(seed)
    means = np.empty((resamples, m))
    chunk = max(1, _MAX_CELLS // u)
    for r0 in range(0, resamples, chunk):
        r1 = min(resamples, r0 + chunk)
        idx = rng.integers(0, u, size=(r1 - r0, u))
        counts = np.bincount((np.arange(r1 - r0)[:, None] * u + idx).ravel(),
                             minlength=(r1 - r0) * u).reshape(r1 - r0, u).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            means[r0:r1] = (counts @ x.T) / (counts @ w.T)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.full(m, np.nan), np.full(m, np.nan)
    ok = n > 0
    if ok.any():  # a row with pairs has a finite mean in every resample that drew one of them
        lo[ok], hi[ok] = np.nanquantile(means[:, ok], [alpha, 1.0 - alpha], axis=0)
    return mean, lo, hi


def verdict(low: float, high: float, tolerance: float) -> str:
    """'worse' if the CI lies below −tolerance, 'better' if above +tolerance, else 'same' ('n/a' if no CI)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "n/a"
    if high < -tolerance:
        return "worse"
    if low > tolerance:
        return "better"
    return "same"


def paired_table(base: pd.DataFrame, cand: pd.DataFrame, tolerance: dict[str, float], confidence: float = 0.95,
                 resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """Per (kind, name, metric): n pairs, base/candidate means, mean delta, bootstrap CI and verdict."""
    keys = ["kind", "name", "metric"]
    cols = keys + ["n", "base", "candidate", "delta", "ci_low", "ci_high", "tolerance", "verdict"]
    if base.empty or cand.empty:
        return pd.DataFrame(columns=cols)
    merged = base[keys + ["utt_id", "value"]].merge(cand[keys + ["utt_id", "value"]], on=keys + ["utt_id"],
                                                    suffixes=("_b", "_c"))
    merged["delta"] = merged["value_c"] - merged["value_b"]
    merged.loc[~np.isfinite(merged["value_b"]) | ~np.isfinite(merged["value_c"]), "delta"] = np.nan
    wide = merged.set_index(keys + ["utt_id"])["delta"].unstack("utt_id")  # [rows, utterances], NaN = no pair
    order = {"level": 0, "policy": 1}
    mean, lo, hi = bootstrap_mean_ci(wide.to_numpy(), confidence, resamples, seed)
    out = wide.index.to_frame(index=False)
    paired = merged.dropna(subset=["delta"]).groupby(keys)
    stats = paired.agg(n=("delta", "size"), base=("value_b", "mean"), candidate=("value_c", "mean"))
    out = out.merge(stats.reset_index(), on=keys, how="left")
    out["n"] = out["n"].fillna(0).astype(int)
    out["delta"], out["ci_low"], out["ci_high"] = mean, lo, hi
    out["tolerance"] = out["metric"].map(tolerance).fillna(0.1)
    out["verdict"] = [verdict(a, b, t) for a, b, t in zip(out["ci_low"], out["ci_high"], out["tolerance"])]
    level_order = base.drop_duplicates("name").set_index("name").get("level", pd.Series(dtype=float))
    out["_k"] = out["kind"].map(order)
    out["_l"] = out["name"].map(level_order).fillna(0)
    return out.sort_values(["_k", "_l", "name", "metric"]).drop(columns=["_k", "_l"])[cols].reset_index(drop=True)


# -- curves -------------------------------------------------------------------------------------------
def pareto_front(gmacs: np.ndarray, quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-dominated points (less compute, more quality), sorted by compute."""
    g, q = np.asarray(gmacs, float), np.asarray(quality, float)
    ok = np.isfinite(g) & np.isfinite(q)
    g, q = g[ok], q[ok]
    order = np.lexsort((-q, g))
    g, q = g[order], q[order]
    keep = q > np.maximum.accumulate(np.r_[-np.inf, q[:-1]])
    return g[keep], q[keep]


def front_area(front_g: np.ndarray, front_q: np.ndarray, lo: float, hi: float) -> float:
    """Mean over [lo, hi] of the best quality reachable with at most g GMAC/s (a step function)."""
    if not (hi > lo) or front_g.size == 0 or front_g[0] > lo:
        return float("nan")
    edges = np.clip(np.r_[front_g, hi], lo, hi)
    return float(np.sum(front_q * np.diff(edges)) / (hi - lo))


def regret_at(gmacs: np.ndarray, regret: np.ndarray, at: float) -> float:
    """Least regret reachable with at most ``at`` GMAC/s, linearly interpolated on the lower front.

    NaN below the curve's cheapest point; beyond its dearest point, that point's regret.
    """
    g, r = pareto_front(np.asarray(gmacs, float), -np.asarray(regret, float))
    if g.size == 0 or at < g[0]:
        return float("nan")
    return float(-np.interp(at, g, r))


def curve_points(root: str | os.PathLike, run_id: str, targets: Sequence[float], arrays: Any = None) -> pd.DataFrame:
    """Every policy over its range (the sweep) plus the static levels: policy, params, t, gmacs, regret, si_snri."""
    from exitbench.results.replays import load_block_arrays, sweep_run

    arrays = arrays if arrays is not None else load_block_arrays(root, run_id)
    return sweep_run(root, run_id, targets=list(targets), store=False, arrays=arrays)


def curve_table(base_pts: pd.DataFrame, cand_pts: pd.DataFrame, targets: Sequence[float],
                at_gmacs: float | None, tolerance: float) -> tuple[pd.DataFrame, float]:
    """Front area of mean SI-SNRi vs GMAC/s, and regret at a fixed compute per target and policy."""
    rows = []
    q_b = base_pts.drop_duplicates(["policy", "params"])
    q_c = cand_pts.drop_duplicates(["policy", "params"])
    fb, fc = pareto_front(q_b["gmacs"], q_b["si_snri"]), pareto_front(q_c["gmacs"], q_c["si_snri"])
    lo = max(fb[0][0] if fb[0].size else np.nan, fc[0][0] if fc[0].size else np.nan)
    hi = min(q_b["gmacs"].max(), q_c["gmacs"].max())
    ab, ac = front_area(*fb, lo, hi), front_area(*fc, lo, hi)
    rows.append({"readout": "front_area", "policy": "all", "t": np.nan, "at_gmacs": np.nan, "base": ab,
                 "candidate": ac, "delta": ac - ab, "better": "higher",
                 "verdict": _plain_verdict(ac - ab, tolerance, higher_better=True)})
    static_b = base_pts[base_pts["policy"] == "static"]
    if at_gmacs is None and len(static_b):
        at_gmacs = float((static_b["gmacs"].min() + static_b["gmacs"].max()) / 2)
    for t in targets:
        for policy in sorted(set(base_pts["policy"]) & set(cand_pts["policy"])):
            pb = base_pts[(base_pts["policy"] == policy) & np.isclose(base_pts["t"], t)]
            pc = cand_pts[(cand_pts["policy"] == policy) & np.isclose(cand_pts["t"], t)]
            if len(pb) < 2 or len(pc) < 2 or at_gmacs is None:
                continue  # a single operating point has no regret-vs-compute curve to interpolate
            rb, rc = regret_at(pb["gmacs"], pb["regret"], at_gmacs), regret_at(pc["gmacs"], pc["regret"], at_gmacs)
            rows.append({"readout": "regret_at", "policy": policy, "t": float(t), "at_gmacs": at_gmacs,
                         "base": rb, "candidate": rc, "delta": rc - rb, "better": "lower",
                         "verdict": _plain_verdict(rc - rb, tolerance, higher_better=False)})
    return pd.DataFrame(rows), (np.nan if at_gmacs is None else at_gmacs)


def _plain_verdict(delta: float, tolerance: float, higher_better: bool) -> str:
    if not np.isfinite(delta):
        return "n/a"
    d = delta if higher_better else -delta
    return "worse" if d < -tolerance else "better" if d > tolerance else "same"


# -- the whole comparison ----------------------------------------------------------------------------
@dataclass
class Comparison:
    """The outcome of ``compare_runs``."""

    base: dict[str, Any]
    candidate: dict[str, Any]
    rows: pd.DataFrame  # paired per-utterance rows with verdicts
    curves: pd.DataFrame  # curve-level readouts (not significance-tested)
    notes: list[str] = field(default_factory=list)
    confidence: float = 0.95
    at_gmacs: float = float("nan")

    @property
    def regressions(self) -> pd.DataFrame:
        """Rows whose delta is significantly below −tolerance."""
        return self.rows[self.rows["verdict"] == "worse"]

    @property
    def regressed(self) -> bool:
        """True when any paired row is a significant regression beyond tolerance (the CI gate)."""
        return bool(len(self.regressions))


def check_comparable(base: dict[str, Any], cand: dict[str, Any]) -> None:
    """Raise IncompatibleRuns if the two runs did not record the same test set."""
    if base["dataset_fingerprint"] != cand["dataset_fingerprint"]:
        raise IncompatibleRuns(
            f"runs {base['run_id']} and {cand['run_id']} were recorded on different test sets"
            f" ({base['dataset']} {str(base['dataset_fingerprint'])[:12]} vs {cand['dataset']}"
            f" {str(cand['dataset_fingerprint'])[:12]}); a paired comparison needs the same utterances")


def run_values(root: str | os.PathLike, run_id: str, metrics: Sequence[str], policies: Sequence[str],
               arrays: Any = None) -> tuple[pd.DataFrame, dict[str, str]]:
    """Levels and replayed policies of one run as one long frame of per-utterance values; and skipped policies."""
    lv = level_values(root, run_id, metrics)
    pol, skipped = policy_values(root, run_id, policies, metrics, arrays)
    frame = pd.concat([lv, pol], ignore_index=True) if len(pol) else lv
    return frame.astype({"value": "float64"}), skipped


def compare_runs(root: str | os.PathLike, base: str, candidate: str, *, candidate_root: str | os.PathLike | None = None,
                 metrics: Sequence[str] = ("si_snri",), tolerance: float | dict[str, float] = 0.1,
                 policies: Sequence[str] | None = None, confidence: float = 0.95,
                 resamples: int = DEFAULT_RESAMPLES, seed: int = 0, targets: Sequence[float] = (10.0, 15.0, 20.0),
                 at_gmacs: float | None = None, curves: bool = True) -> Comparison:
    """Compare ``candidate`` against ``base`` (run ids or unique prefixes; the candidate may live in another root)."""
    from exitbench.results.replays import load_block_arrays

    metrics = parse_metrics(metrics)
    tol = tolerance if isinstance(tolerance, dict) else parse_tolerance(tolerance, metrics)
    croot = candidate_root if candidate_root is not None else root
    b, c = resolve_run(root, base), resolve_run(croot, candidate)
    check_comparable(b, c)
    notes: list[str] = []
    explicit = policies is not None
    specs = [parse_policy(s).spec() for s in (policies if explicit else DEFAULT_POLICIES)]
    arrays_b = load_block_arrays(root, b["run_id"])
    arrays_c = load_block_arrays(croot, c["run_id"])
    vb, skip_b = run_values(root, b["run_id"], metrics, specs, arrays_b)
    vc, skip_c = run_values(croot, c["run_id"], metrics, specs, arrays_c)
    for spec in specs:
        why = skip_b.get(spec) or skip_c.get(spec)
        if why:
            notes.append(f"policy {spec} not compared: {why}")
    if specs and any(m not in REPLAY_METRICS for m in metrics):
        notes.append(f"{', '.join(m for m in metrics if m not in REPLAY_METRICS)}: per static level only (policy"
                     " replays yield the SNR family exactly, not BSS-eval/PESQ/STOI)")
    ub, uc = set(vb["utt_id"]), set(vc["utt_id"])
    if not ub & uc:
        raise IncompatibleRuns(f"runs {b['run_id']} and {c['run_id']} share no successfully recorded utterance")
    if ub != uc:
        notes.append(f"{len(ub ^ uc)} utterance(s) recorded in only one run (failed in the other): compared on"
                     f" the {len(ub & uc)} shared ones")
    names_b = set(vb.loc[vb["kind"] == "level", "name"])
    names_c = set(vc.loc[vc["kind"] == "level", "name"])
    if names_b != names_c:
        notes.append(f"levels in one run only: {sorted(names_b ^ names_c)} (compared by level name)")
    rows = paired_table(vb, vc, tol, confidence, resamples, seed)
    for metric, empty in rows[rows["n"] == 0].groupby("metric")["name"]:
        notes.append(f"{metric}: no utterance has a finite value in both runs for {', '.join(empty)}"
                     " (not recorded? see the runs' settings.metrics)")
    curve_df, at = pd.DataFrame(), float("nan")
    if curves:
        pts_b = curve_points(root, b["run_id"], targets, arrays_b)
        pts_c = curve_points(croot, c["run_id"], targets, arrays_c)
        curve_df, at = curve_table(pts_b, pts_c, targets, at_gmacs, tol.get("si_snri", 0.1))
    return Comparison(b, c, rows, curve_df, notes, confidence, at)
