"""Paired comparison of two recordings of one test set: a regression gate with a stated error rate.

Every utterance is scored by both runs, so the comparison is paired: per utterance the metric
(averaged over sources) of the candidate minus the base. One *row* per (static level or replayed
policy configuration, metric). The gate tests all rows of a comparison together and controls the
family-wise error rate: when no row truly drops by more than its tolerance, the probability that
*any* row is called 'worse' is at most ``alpha`` (default 0.05), whatever the number of rows and
however they correlate (levels of one model, and policies replaying them, are strongly correlated).

The test is a studentised max-statistic paired bootstrap. Row j has n_j pairs, mean delta d̄_j and
standard error se_j = s_j / √n_j (s_j with n_j − 1 degrees of freedom). The utterances are resampled
B times, jointly for all rows (so the resamples keep the rows' correlation); resample b gives, per
row, T_bj = (d̄_j − d̄*_bj) / se*_bj. The (1 − alpha) quantile c of max_j T_bj / h_j over the
resamples is the simultaneous critical value, and with c_j = c · h_j

    high_j = d̄_j + c_j · se_j

holds as an upper bound of the true mean delta for every row at once with probability ≈ 1 − alpha.
A row is 'worse' when high_j < −tolerance_j. The same construction on −T gives simultaneous lower
bounds low_j ('better' when low_j > +tolerance_j), a family of its own at ``alpha``; 'better' never
gates. h_j = 1 for every ordinary row. A row whose own bootstrap distribution is far heavier-tailed
than Student's t (its 1 − alpha/2 quantile above twice t_{n_j−1}(1 − alpha/2); typically a row where
only one or two utterances changed, so that many resamples have se* = 0) would otherwise set the
critical value of every row: its statistic is divided by h_j = that quantile / (2 t) before the max,
so it keeps its own wide bound without widening the others' (h_j = ∞, never significant, when the
quantile is infinite). A row whose deltas are all equal has se_j = 0 and the exact bounds [d̄, d̄];
a row with fewer than two pairs is 'n/a' and not tested. A compared metric that either run did not
record, and a tolerance key that is not a compared metric, are usage errors (exit 2): the gate
never passes having compared nothing.

The minimum detectable difference (``mdd``) of a row is the true drop that the gate flags with
probability ``power`` (80 %) at this test-set size (normal approximation: the gate fires when
d̄_j < −tolerance_j − c_j·se_j, and d̄_j ~ N(−drop, se_j²)):

    mdd_j = tolerance_j + (c_j + z_power) · se_j,    z_power = Φ⁻¹(power) (0.84 at 80 %)

Calibration (``benchmarks/bench_compare_gate.py``, 2000 simulated comparisons per cell, ±1 point;
``tests/test_compare.py`` checks the 24-row case): 20 utterances, a 1 dB per-utterance spread,
tolerance 0 and no true change give false alarms of 5.1 %, 4.1 % and 3.6 % at alpha 0.05 on 1 row,
6 independent rows and 24 rows correlated at 0.7, where the old per-row rule (each row's 95 %
percentile interval below −tolerance) gave 3.6 %, 18 % and 20 %. The bootstrap-t
is accurate from about 20 utterances on (a single row of strongly skewed or heavy-tailed deltas:
up to ~7 %) and conservative below (6 utterances: 1-3 % on 6-24 rows).

``bootstrap_mean_ci`` and ``verdict`` are that per-row rule (no multiplicity control), kept as
the baseline of ``benchmarks/bench_compare_gate.py``. Curve-level readouts (area under the Pareto
front of mean SI-SNRi against GMAC/s, regret at a fixed compute) are reported beside the rows, without a
significance test; they do not gate.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass, field
from statistics import NormalDist
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
DEFAULT_ALPHA = 0.05  #: family-wise error rate of the gate
DEFAULT_POWER = 0.8  #: power at which the minimum detectable difference is stated
DEFAULT_TOLERANCE = 0.1
_HEAVY = 2.0  # a row whose bootstrap-t quantile exceeds this many times Student's is scaled (module docstring)
_MAX_CELLS = 1 << 22  # resamples × utterances per chunk of the bootstrap
_STEP = 128  # resamples per step of the bootstrap-t statistics
#: columns per matrix product of the bootstrap: every product has this width, so a row's sums do not depend on
#: the other rows stacked beside it (BLAS picks its kernels, and their order of summation, by a product's shape)
_PANEL = 64


class IncompatibleRuns(UsageError):
    """Two runs that cannot be compared (different test sets, no shared utterances...)."""


class MetricNotRecorded(UsageError):
    """A compared metric that one of the runs did not record (every value missing)."""


def parse_metrics(text: str | Sequence[str]) -> tuple[str, ...]:
    """A comma list (or sequence) of utterance metrics, checked against LEVEL_METRICS."""
    items = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    bad = [m for m in items if m not in LEVEL_METRICS]
    if bad or not items:
        raise UsageError(f"unknown metric(s) {bad or items}; choose from {', '.join(LEVEL_METRICS)}")
    return tuple(dict.fromkeys(items))


def parse_tolerance(text: str | float | dict[str, float], metrics: Sequence[str]) -> dict[str, float]:
    """``0.1`` (every metric), ``si_snri=0.2,pesq=0.05`` (others 0.1) or a dict, as {metric: tolerance}.

    A key that is not one of the compared ``metrics`` is an error (a typo would otherwise be ignored).
    """
    metrics = list(metrics)
    default, explicit = DEFAULT_TOLERANCE, {}
    if isinstance(text, dict):
        explicit = {str(k).strip(): v for k, v in text.items()}
    elif isinstance(text, (int, float)):
        default = text
    else:
        for item in filter(None, (s.strip() for s in str(text).split(","))):
            key, eq, value = item.partition("=")
            try:
                if eq:
                    explicit[key.strip()] = float(value)
                else:
                    default = float(item)
            except ValueError:
                raise UsageError(f"--tolerance {item!r}: expected a number or metric=number") from None
    unknown = [k for k in explicit if k not in metrics]
    if unknown:
        raise UsageError(f"--tolerance: unknown key(s) {', '.join(map(repr, unknown))}; valid keys are the compared"
                         f" metrics: {', '.join(metrics)} (compare more with --metric)")
    out = {m: float(explicit.get(m, default)) for m in metrics}
    if not all(math.isfinite(v) and v >= 0 for v in out.values()):
        raise UsageError("--tolerance must be a finite number, not negative")
    return out


# -- per-utterance values ------------------------------------------------------------------------
def level_values(root: str | os.PathLike, run_id: str, metrics: Sequence[str]) -> pd.DataFrame:
    """Long frame (kind='level', name, metric, utt_id, value): per utterance and level, the source mean."""
    return level_values_long(root, [run_id], metrics).drop(columns="run")


def level_values_long(root: str | os.PathLike, run_ids: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """``level_values`` of many runs as one long frame with a ``run`` column, from one connection and one
    query (history: not one connection per run); run order as given, per run the rows of ``level_values``."""
    cols = ", ".join(f"avg({m}) AS {m}" for m in metrics)
    order = {r: i for i, r in enumerate(run_ids)}  # a repeated run: its last position, as a dict keeps it
    con = connect(root, runs=list(order), tables=("utterances",))  # those runs' files only
    try:
        # the run order joined in (not a per-row map over a pandas string column afterwards: 0.15 s at 1,000 runs)
        wide = con.execute(f"SELECT u.run, utt_id, level, level_name AS name, {cols} FROM utterances u"
                           f" JOIN (SELECT unnest(?) AS run, unnest(?) AS _o) o ON u.run = o.run"
                           f" GROUP BY o._o, u.run, utt_id, level, level_name ORDER BY o._o, level, utt_id",
                           [list(order), list(order.values())]).df()
    finally:
        con.close()
    long = wide.melt(id_vars=["run", "utt_id", "level", "name"], value_vars=list(metrics), var_name="metric",
                     value_name="value")
    if len(metrics) > 1:  # melt stacks the metrics: back to run order (stable: per run, metric by metric)
        codes = pd.Categorical(long["run"], categories=sorted(order, key=order.get)).codes
        long = long.iloc[np.argsort(codes, kind="stable")]
    return long.assign(kind="level").reset_index(drop=True)


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


def _paired_matrix(base: pd.DataFrame, cand: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deltas as [rows (kind, name, metric), utterances] (NaN = no pair), and each row's n, base and candidate means."""
    keys = ["kind", "name", "metric"]
    merged = base[keys + ["utt_id", "value"]].merge(cand[keys + ["utt_id", "value"]], on=keys + ["utt_id"],
                                                    suffixes=("_b", "_c"))
    merged["delta"] = merged["value_c"] - merged["value_b"]
    merged.loc[~np.isfinite(merged["value_b"]) | ~np.isfinite(merged["value_c"]), "delta"] = np.nan
    wide = merged.set_index(keys + ["utt_id"])["delta"].unstack("utt_id")  # [rows, utterances], NaN = no pair
    out = wide.index.to_frame(index=False)
    paired = merged.dropna(subset=["delta"]).groupby(keys)
    stats = paired.agg(n=("delta", "size"), base=("value_b", "mean"), candidate=("value_c", "mean"))
    out = out.merge(stats.reset_index(), on=keys, how="left")
    out["n"] = out["n"].fillna(0).astype(int)
    # utterances the base scored and the candidate no longer can (a silent or failed estimate: NaN)
    merged["lost"] = np.isfinite(merged["value_b"]) & ~np.isfinite(merged["value_c"])
    lost = merged.groupby(keys)["lost"].sum().rename("lost").reset_index()
    out = out.merge(lost, on=keys, how="left")
    out["lost"] = out["lost"].fillna(0).astype(int)
    return wide, out


def _row_order(out: pd.DataFrame, base: pd.DataFrame) -> np.ndarray:
    """Row positions in display order: levels (model order), then policies; by metric within each."""
    level_order = base.drop_duplicates("name").set_index("name").get("level", pd.Series(dtype=float))
    k = out["kind"].map({"level": 0, "policy": 1})
    lv = out["name"].map(level_order).fillna(0)
    return pd.DataFrame({"k": k, "l": lv, "name": out["name"], "metric": out["metric"]}).sort_values(
        ["k", "l", "name", "metric"]).index.to_numpy()


# -- the gate: simultaneous bounds over all rows ------------------------------------------------------------
@dataclass
class SimultaneousBounds:
    """Per-row effects and simultaneous one-sided bounds (arrays over rows; see the module docstring)."""

    n: np.ndarray  # pairs per row
    mean: np.ndarray  # mean delta d̄
    se: np.ndarray  # its standard error (0: every delta equal; NaN: fewer than two pairs)
    low: np.ndarray  # simultaneous lower bounds (the 'better' family)
    high: np.ndarray  # simultaneous upper bounds (the 'worse' family: the gate)
    crit_low: np.ndarray  # per-row critical values c_j of the two families
    crit_high: np.ndarray
    mdd: np.ndarray  # minimum detectable drop at ``power``
    tested: np.ndarray  # bool: rows with at least two pairs
    critical: float  # c of the 'worse' family (NaN when no tested row varies)
    alpha: float
    power: float

    @property
    def n_tested(self) -> int:
        """Rows in the tested family."""
        return int(self.tested.sum())


def check_alpha(alpha: float, resamples: int) -> None:
    """Raise UsageError unless 0 < alpha < 0.5 and ``resamples`` resolves the (1 − alpha) quantile."""
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 0.5):
        raise UsageError(f"--alpha must lie in (0, 0.5), not {alpha}")
    need = math.ceil(10 / alpha)
    if resamples < need:
        raise UsageError(f"--resamples {resamples} is too few for --alpha {alpha:g}: use at least {need}")


def _resample_counts(rng: np.random.Generator, b: int, u: int) -> np.ndarray:
    """How often each of ``u`` utterances is drawn in each of ``b`` bootstrap resamples, [b, u] float."""
    idx = rng.integers(0, u, size=(b, u))
    return np.bincount((np.arange(b)[:, None] * u + idx).ravel(), minlength=b * u).reshape(b, u).astype(np.float64)


@functools.lru_cache(maxsize=4)
def _resample_chunks(seed: int, resamples: int, u: int) -> tuple[np.ndarray, ...]:
    """The resample counts of ``_bootstrap_t``, chunk by chunk (the same for every comparison of U utterances
    at one seed, so ``history`` draws them once for all its steps)."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_CELLS // u)
    chunks = tuple(_resample_counts(rng, min(resamples, r0 + chunk) - r0, u) for r0 in range(0, resamples, chunk))
    for c in chunks:
        c.setflags(write=False)  # shared between calls
    return chunks


def _panel_product(counts: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``counts @ cols`` [R, U] @ [U, C] as products of exactly ``_PANEL`` columns each (the last one zero-padded):
    each column's sums are then the same whatever the others, as history's gate needs to give compare's numbers."""
    r, c = counts.shape[0], cols.shape[1]
    out = np.empty((r, c))
    for a in range(0, c, _PANEL):
        b = min(a + _PANEL, c)
        panel = cols[:, a:b]
        if b - a < _PANEL:
            panel = np.concatenate([panel, np.zeros((cols.shape[0], _PANEL - (b - a)))], axis=1)
        out[:, a:b] = (counts @ panel)[:, :b - a]
    return out


def _bootstrap_t(xc: np.ndarray, w: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """T[j, b] = (d̄_j − d̄*_bj) / se*_bj from centred deltas ``xc`` and pair weights ``w``, [rows, U] each.

    Rows × resamples (each row's statistics contiguous, as its quantile and its family's maximum read them).
    """
    m, u = xc.shape
    out = np.empty((m, resamples))
    # a row with every pair present has n* = U in every resample (the counts of a resample sum to U, exactly in
    # float64): only the rows with missing pairs need their weights multiplied
    partial = np.flatnonzero(~(w > 0).all(axis=1))
    p = len(partial)
    cols = np.ascontiguousarray(np.concatenate([w[partial], xc, xc * xc]).T)  # [U, p + 2 rows]: one product
    # resamples _STEP at a time: the temporaries stay small and are reused (1.8x faster than whole chunks)
    chunks = _resample_chunks(int(seed), int(resamples), int(u))
    steps = (c[i:i + _STEP] for c in chunks for i in range(0, len(c), _STEP))
    r0 = 0
    for counts in steps:
        r1 = r0 + counts.shape[0]
        sums = _panel_product(counts, cols)
        s1, s2 = sums[:, p:p + m], sums[:, p + m:]
        n = np.full_like(s1, float(u))
        n[:, partial] = sums[:, :p]
        # t = -mean / sqrt(max(s2 - n·mean·mean, 0) / (n - 1) / n), mean = s1 / n (= d̄* − d̄), in place
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.divide(s1, n)
            var = np.multiply(n, mean)
            var *= mean
            np.subtract(s2, var, out=var)
            np.maximum(var, 0.0, out=var)
            var /= n - 1
            var /= n
            np.sqrt(var, out=var)
            np.negative(mean, out=mean)
            t = np.divide(mean, var, out=mean)
        t[n < 2] = np.nan
        out[:, r0:r1] = t.T
        r0 = r1
    return out


def _row_quantile(x: np.ndarray, q: float) -> np.ndarray:
    """``np.quantile(x, q, axis=1, method="higher")`` of [rows, resamples]: the same order statistic (its rank
    asked of numpy itself), selected by one partition of each row (4x faster than numpy's own path)."""
    k = int(np.quantile(np.arange(x.shape[1]), q, method="higher"))
    return np.partition(x, k, axis=1)[:, k]


def _heavy_scale(q: np.ndarray, df: np.ndarray, alpha: float) -> np.ndarray:
    """h_j = max(1, q_j / (_HEAVY · t_{df_j}(1 − alpha/2))) of rows with bootstrap-t quantiles ``q`` (inf: q is).

    Student's quantile exceeds the normal one, so a row whose q is below _HEAVY normal quantiles has h = 1
    exactly without it: scipy.special (0.3-0.4 s to import, more than a history's whole bootstrap) is imported
    only for a row above that, a heavy-tailed one.
    """
    h = np.ones_like(q)
    z = NormalDist().inv_cdf(1 - alpha / 2) * (1 - 1e-9)  # a margin for the last digits of either quantile
    heavy = ~(q <= _HEAVY * z)
    if heavy.any():
        from scipy.special import stdtrit

        ref = _HEAVY * -stdtrit(df[heavy], alpha / 2)  # t.isf(alpha / 2, df)
        with np.errstate(invalid="ignore"):
            h[heavy] = np.maximum(1.0, q[heavy] / ref)
    return h


def _family_critical(t: np.ndarray, alpha: float, df: np.ndarray, family: np.ndarray,
                     families: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row critical values c_f·h_j and per family f its c_f, the quantile of the max over the family's rows of
    T[j, b] / h_j (module docstring); ``t`` [rows, resamples] with -inf for NaN (overwritten), ``family`` [rows]
    numbers each row's family, in ascending order."""
    h = _heavy_scale(_row_quantile(t, 1 - alpha / 2), df, alpha)
    keep = np.isfinite(h)
    t[keep] /= h[keep, None]  # the scaled statistics, in place
    t[~keep] = -np.inf
    starts = np.flatnonzero(np.r_[True, family[1:] != family[:-1]]) if len(family) else np.zeros(0, int)
    c = np.full(families, np.nan)
    if len(starts):
        fams = family[starts]
        size = np.diff(np.r_[starts, len(family)])
        if (size == size[0]).all():  # families of equally many rows (a history's steps): 10x faster than reduceat
            top = t.reshape(len(starts), int(size[0]), t.shape[1]).max(axis=1)
        else:
            top = np.maximum.reduceat(t, starts, axis=0)  # [families present, resamples]: exact maxima
        any_keep = np.logical_or.reduceat(keep, starts)
        cf = np.maximum(0.0, _row_quantile(top, 1 - alpha))
        c[fams] = np.where(any_keep, cf, np.nan)
    with np.errstate(invalid="ignore"):
        return np.where(keep, c[family] * np.where(keep, h, 1.0), np.inf), c


def simultaneous_bounds(deltas: np.ndarray, tolerance: float | np.ndarray = 0.0, alpha: float = DEFAULT_ALPHA,
                        resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                        power: float = DEFAULT_POWER) -> SimultaneousBounds:
    """Simultaneous one-sided bounds of the mean of each row of ``deltas`` [rows, U] (NaN = missing pair)."""
    return simultaneous_bounds_many([deltas], [tolerance], alpha, resamples, seed, power)[0]


def simultaneous_bounds_many(deltas: Sequence[np.ndarray], tolerances: Sequence[float | np.ndarray],
                             alpha: float = DEFAULT_ALPHA, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                             power: float = DEFAULT_POWER) -> list[SimultaneousBounds]:
    """``simultaneous_bounds`` of several comparisons, each its own family (``history``: one per step).

    The same numbers as one call each (the same resamples: they depend only on the seed and the number of
    utterances), but comparisons of equally many utterances share one bootstrap: their rows are stacked, so
    a history of 1,000 steps makes a few matrix products and column-wise quantiles, not 1,000 of each.
    """
    check_alpha(alpha, resamples)
    if not 0 < power < 1:
        raise UsageError(f"power must lie in (0, 1), not {power}")
    mats = [np.atleast_2d(np.asarray(d, dtype=np.float64)) for d in deltas]
    tols = [np.broadcast_to(np.asarray(t, dtype=np.float64), (d.shape[0],)) for d, t in zip(mats, tolerances)]
    out: list[SimultaneousBounds | None] = [None] * len(mats)
    by_u: dict[int, list[int]] = {}
    for i, d in enumerate(mats):
        by_u.setdefault(d.shape[1], []).append(i)
    # a batch's bootstrap statistics [resamples, rows] (and its sums, three times as wide) stay near _MAX_CELLS
    cap = max(1, _MAX_CELLS // (2 * int(resamples)))
    for group in by_u.values():
        batch: list[int] = []
        rows = 0
        for k, i in enumerate(group):
            batch.append(i)
            rows += mats[i].shape[0]
            if rows >= cap or k == len(group) - 1:
                for j, b in zip(batch, _bounds_batch([mats[j] for j in batch], [tols[j] for j in batch], alpha,
                                                     resamples, seed, power)):
                    out[j] = b
                batch, rows = [], 0
    return out  # type: ignore[return-value]


def _bounds_batch(mats: list[np.ndarray], tols: list[np.ndarray], alpha: float, resamples: int, seed: int,
                  power: float) -> list[SimultaneousBounds]:
    """``simultaneous_bounds`` of comparisons over equally many utterances, their rows stacked (all row-wise but
    the family's critical value, taken per comparison)."""
    d = np.concatenate(mats) if len(mats) > 1 else mats[0]
    family = np.repeat(np.arange(len(mats)), [x.shape[0] for x in mats])
    m, u = d.shape
    tol = np.concatenate(tols) if len(tols) > 1 else tols[0]
    valid = np.isfinite(d)
    w = valid.astype(np.float64)
    n = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(valid, d, 0.0).sum(axis=1) / n
        xc = np.where(valid, d - mean[:, None], 0.0)
        se = np.sqrt((xc * xc).sum(axis=1) / (n - 1) / n)
    tested = n >= 2
    constant = tested & (np.where(valid, d, -np.inf).max(axis=1) == np.where(valid, d, np.inf).min(axis=1))
    se = np.where(constant, 0.0, np.where(tested, se, np.nan))
    varies = tested & ~constant
    crit_hi, crit_lo = np.full(m, np.nan), np.full(m, np.nan)
    crit_hi[constant] = crit_lo[constant] = 0.0
    critical = np.full(len(mats), np.nan)
    z_power = float("nan")  # only rows that vary read it: a constant row's MDD is its tolerance, an untested one NaN
    if varies.any():
        t = _bootstrap_t(xc[varies], w[varies], resamples, seed)
        undefined = np.isnan(t)  # fewer than two pairs drawn, or no spread: below every other value in both families
        df, fam = n[varies] - 1, family[varies]
        lower = np.negative(t)
        lower[undefined] = -np.inf
        t[undefined] = -np.inf
        crit_hi[varies], critical = _family_critical(t, alpha, df, fam, len(mats))
        crit_lo[varies], _ = _family_critical(lower, alpha, df, fam, len(mats))
        z_power = NormalDist().inv_cdf(power)  # norm.ppf(power), to the last digit or two
    with np.errstate(invalid="ignore"):
        high = np.where(constant, mean, mean + crit_hi * se)
        low = np.where(constant, mean, mean - crit_lo * se)
        mdd = np.where(constant, tol, tol + (crit_hi + z_power) * se)
    bounds = []
    edges = np.r_[0, np.cumsum([x.shape[0] for x in mats])]
    for f in range(len(mats)):
        a, b = edges[f], edges[f + 1]
        bounds.append(SimultaneousBounds(
            n=n[a:b].astype(int), mean=mean[a:b], se=se[a:b], low=low[a:b], high=high[a:b], crit_low=crit_lo[a:b],
            crit_high=crit_hi[a:b], mdd=mdd[a:b], tested=tested[a:b], critical=float(critical[f]),
            alpha=float(alpha), power=float(power)))
    return bounds


def gate_verdicts(bounds: SimultaneousBounds, tolerance: float | np.ndarray) -> np.ndarray:
    """Per row: 'worse' (high < −tolerance), 'better' (low > +tolerance), 'same', or 'n/a' (not tested)."""
    tol = np.broadcast_to(np.asarray(tolerance, dtype=np.float64), bounds.mean.shape)
    return np.where(~bounds.tested, "n/a", np.where(bounds.high < -tol, "worse",
                                                     np.where(bounds.low > tol, "better", "same")))


GATE_COLUMNS = ("kind", "name", "metric", "n", "base", "candidate", "delta", "se", "ci_low", "ci_high", "crit",
                "mdd", "tolerance", "verdict", "lost")


def gate_table(base: pd.DataFrame, cand: pd.DataFrame, tolerance: dict[str, float], alpha: float = DEFAULT_ALPHA,
               resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
               power: float = DEFAULT_POWER) -> tuple[pd.DataFrame, SimultaneousBounds]:
    """Per (kind, name, metric): n, means, delta, se, simultaneous bounds (ci_low/ci_high), crit, mdd, verdict."""
    check_alpha(alpha, resamples)
    if base.empty or cand.empty:
        raise IncompatibleRuns("nothing to compare: a run has no per-utterance values")
    wide, out = _paired_matrix(base, cand)
    out["tolerance"] = out["metric"].map(tolerance).fillna(DEFAULT_TOLERANCE)
    bounds = simultaneous_bounds(wide.to_numpy(), out["tolerance"].to_numpy(), alpha, resamples, seed, power)
    out["delta"], out["se"], out["ci_low"], out["ci_high"] = bounds.mean, bounds.se, bounds.low, bounds.high
    out["crit"], out["mdd"] = bounds.crit_high, bounds.mdd
    out["verdict"] = gate_verdicts(bounds, out["tolerance"].to_numpy())
    # a value the base had and the candidate lost is a regression outright (no sampling noise makes an
    # estimate silent): the gate must not go blind exactly where an exit broke
    out.loc[out["lost"] > 0, "verdict"] = "worse"
    order = _row_order(out, base)
    bounds = SimultaneousBounds(**{f: (v[order] if isinstance(v, np.ndarray) else v)
                                   for f, v in vars(bounds).items()})
    return out.loc[order, list(GATE_COLUMNS)].reset_index(drop=True), bounds


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
    rows: pd.DataFrame  # GATE_COLUMNS: paired per-utterance rows with simultaneous bounds and verdicts
    curves: pd.DataFrame  # curve-level readouts (not significance-tested)
    notes: list[str] = field(default_factory=list)
    alpha: float = DEFAULT_ALPHA  # family-wise error rate of the gate
    at_gmacs: float = float("nan")
    critical: float = float("nan")  # the simultaneous critical value c of the 'worse' family
    power: float = DEFAULT_POWER  # at which the rows' mdd is stated

    @property
    def n_tested(self) -> int:
        """Rows in the tested family (every row but the 'n/a' ones)."""
        return int((self.rows["verdict"] != "n/a").sum())

    @property
    def regressions(self) -> pd.DataFrame:
        """Rows whose simultaneous upper bound lies below −tolerance."""
        return self.rows[self.rows["verdict"] == "worse"]

    @property
    def regressed(self) -> bool:
        """True when any row is a significant regression beyond tolerance (the gate, family-wise at ``alpha``)."""
        return bool(len(self.regressions))


def check_comparable(base: dict[str, Any], cand: dict[str, Any]) -> None:
    """Raise IncompatibleRuns if the two runs did not record the same test set."""
    if base["dataset_fingerprint"] != cand["dataset_fingerprint"]:
        raise IncompatibleRuns(
            f"runs {base['run_id']} and {cand['run_id']} were recorded on different test sets"
            f" ({base['dataset']} {str(base['dataset_fingerprint'])[:12]} vs {cand['dataset']}"
            f" {str(cand['dataset_fingerprint'])[:12]}); a paired comparison needs the same utterances")


def run_values(root: str | os.PathLike, run_id: str, metrics: Sequence[str], policies: Sequence[str],
               arrays: Any = None, levels: pd.DataFrame | None = None) -> tuple[pd.DataFrame, dict[str, str]]:
    """Levels (``levels`` if already read) and replayed policies of one run as one long frame; and skipped policies."""
    lv = levels if levels is not None else level_values(root, run_id, metrics)
    pol, skipped = policy_values(root, run_id, policies, metrics, arrays)
    frame = pd.concat([lv, pol], ignore_index=True) if len(pol) else lv
    return frame.astype({"value": "float64"}), skipped


def _recorded_metrics(run: dict[str, Any]) -> list[str] | None:
    """The metrics a run's settings list beyond the always-recorded SNR family (None when unknown)."""
    try:
        settings = run.get("settings")
        settings = json.loads(settings) if isinstance(settings, str) else settings
        recorded = settings.get("metrics") if isinstance(settings, dict) else None
    except (TypeError, ValueError, AttributeError):
        return None
    return [str(m) for m in recorded] if isinstance(recorded, (list, tuple)) else None


def check_recorded(values: pd.DataFrame, run: dict[str, Any], role: str, metrics: Sequence[str]) -> None:
    """Raise MetricNotRecorded if a compared metric has no finite value at any level of this run."""
    lv = values[values["kind"] == "level"]
    present = set(lv.loc[np.isfinite(lv["value"].to_numpy(np.float64)), "metric"])
    missing = [m for m in metrics if m not in present]
    if missing:
        recorded = _recorded_metrics(run)
        extra = "" if recorded is None else f"; its settings.metrics: {', '.join(recorded) or 'none'}"
        raise MetricNotRecorded(
            f"{role} run {run['run_id']} did not record {', '.join(missing)} (every value missing{extra}): record"
            f" it with `exitbench run --metrics ...` or leave it out of --metric")


def compare_runs(root: str | os.PathLike, base: str, candidate: str, *, candidate_root: str | os.PathLike | None = None,
                 metrics: Sequence[str] = ("si_snri",), tolerance: float | str | dict[str, float] = DEFAULT_TOLERANCE,
                 policies: Sequence[str] | None = None, alpha: float = DEFAULT_ALPHA,
                 resamples: int = DEFAULT_RESAMPLES, seed: int = 0, targets: Sequence[float] = (10.0, 15.0, 20.0),
                 at_gmacs: float | None = None, curves: bool = True, power: float = DEFAULT_POWER) -> Comparison:
    """Compare ``candidate`` against ``base`` (run ids or unique prefixes; the candidate may live in another root)."""
    from exitbench.results.replays import load_block_arrays

    metrics = parse_metrics(metrics)
    tol = parse_tolerance(tolerance, metrics)
    check_alpha(alpha, resamples)
    croot = candidate_root if candidate_root is not None else root
    b, c = resolve_run(root, base), resolve_run(croot, candidate)
    check_comparable(b, c)
    notes: list[str] = []
    explicit = policies is not None
    specs = [parse_policy(s).spec() for s in (policies if explicit else DEFAULT_POLICIES)]
    lv_b, lv_c = level_values(root, b["run_id"], metrics), level_values(croot, c["run_id"], metrics)
    check_recorded(lv_b, b, "base", metrics)  # before any replay: a metric not recorded is a quick answer
    check_recorded(lv_c, c, "candidate", metrics)
    arrays_b = load_block_arrays(root, b["run_id"])
    arrays_c = load_block_arrays(croot, c["run_id"])
    vb, skip_b = run_values(root, b["run_id"], metrics, specs, arrays_b, levels=lv_b)
    vc, skip_c = run_values(croot, c["run_id"], metrics, specs, arrays_c, levels=lv_c)
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
    rows, bounds = gate_table(vb, vc, tol, alpha, resamples, seed, power)
    if not bounds.n_tested:
        raise IncompatibleRuns(f"runs {b['run_id']} and {c['run_id']}: no row has two or more utterances with"
                               " values in both runs, so there is nothing to test")
    for r in rows[rows["lost"] > 0].itertuples(index=False):
        notes.append(f"{r.name} {r.metric}: {r.lost} utterance(s) scored in the base have no value in the candidate"
                     f" (a silent or failed estimate): worse")
    for metric, empty in rows[rows["verdict"] == "n/a"].groupby("metric")["name"]:
        notes.append(f"{metric} not tested for {', '.join(empty)}: fewer than two utterances have it in both runs"
                     " (recorded for some levels only? see --metric-levels)")
    curve_df, at = pd.DataFrame(), float("nan")
    if curves:
        pts_b = curve_points(root, b["run_id"], targets, arrays_b)
        pts_c = curve_points(croot, c["run_id"], targets, arrays_c)
        curve_df, at = curve_table(pts_b, pts_c, targets, at_gmacs, tol.get("si_snri", DEFAULT_TOLERANCE))
    return Comparison(b, c, rows, curve_df, notes, float(alpha), at, bounds.critical, float(power))
