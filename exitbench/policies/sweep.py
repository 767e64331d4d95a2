"""Policy sweeps without a loop over thresholds: the staircase of DESIGN §5, exact per threshold.

For a policy "first level l with score_l ≥ p, else the deepest", let M_l = max(score_0..score_l)
(running maximum). The first l with score_l ≥ p is the first l with M_l ≥ p, and M is
non-decreasing, so the chosen level is #{l < L−1 : M_l < p}: a staircase in p that steps from l
to l+1 where p passes M_l. On a sorted grid p_0 < … < p_{G−1} the step of level l happens at
grid index J_l = #{j : p_j ≤ M_l} (one searchsorted). Any per-block quantity f then equals
f_0 + Σ_{l: j ≥ J_l} (f_{l+1} − f_l), so its sum over blocks (or over one utterance's blocks) at
every grid point is one bincount of the steps f_{l+1} − f_l at J_l followed by a cumsum over j.
This is exact (up to float rounding of the sums) for GMAC/s and regret, and for SI-SNRi because
the utterance sums Σsum_est, Σe_est, Σdot_est_ref it is computed from are such sums.
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

import numpy as np
import pandas as pd

from exitbench.policies.arrays import BlockArrays
from exitbench.policies.base import BUILTIN_POLICIES, Policy, PolicyError, get_policy_class, split_spec
from exitbench.policies.base import parse_policy
from exitbench.policies.builtin import (DEFAULT_P_GRID, DEFAULT_TARGETS, Budget, Learned, Oracle, OracleBest, Probabilistic,
                                        Router, Static, Threshold, Uniform)
from exitbench.policies.matched import DEFAULT_DRAWS, cost_groups, matched_summary
from exitbench.policies.probability import level_probabilities
from exitbench.policies.replay import composite_from_sums, summarize, utterance_gmacs

COLUMNS = ("policy", "params", "t", "p", "gmacs", "regret", "si_snri", "snri")
#: the cost-matched random baseline's columns (NaN for static levels, uniform and a dynamic output)
MATCHED_COLUMNS = ("matched_regret", "matched_regret_lo", "matched_regret_hi", "matched_gmacs", "matched_si_snri",
                   "matched_snri")
#: policies whose choice is a per-block allocation a cost-matched random draw can be compared with
MATCHABLE = ("probabilistic", "budget", "learned", "threshold", "oracle", "oracle-best", "router")
#: the budgets a budget sweep visits when none are given: this many between the cheapest and deepest level
BUDGET_POINTS = 21
_SUM_STATS = ("sum_est", "e_est", "dot_est_ref")
_CHUNK_CELLS = 1 << 21  # utterances × grid points × sources per chunk of the SI-SNRi accumulation


def staircase_curve(arrays: BlockArrays, scores: np.ndarray, grid: Sequence[float], t: float) -> dict[str, np.ndarray]:
    """Exact mean GMAC/s, regret at t, SI-SNRi and SNRi for every p in ``grid`` of the policy
    "first level with score ≥ p, else the deepest"; ``scores`` is [K, L−1] (the deepest needs none)."""
    grid = np.asarray(grid, dtype=np.float64)
    order = np.argsort(grid, kind="stable")
    g_sorted = grid[order]
    k, lv = arrays.num_blocks, arrays.num_levels
    if scores.shape != (k, lv - 1):
        raise ValueError(f"scores must be [K, L-1] = {(k, lv - 1)}, got {scores.shape}")
    g = len(grid)
    running = scores.copy()
    for lv_i in range(1, lv - 1):  # column by column: accumulate along a short axis is slow
        np.maximum(running[:, lv_i - 1], running[:, lv_i], out=running[:, lv_i])
    steps = grid_index(g_sorted, running)  # J [K, L-1]
    del running

    def curve(per_block: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """Σ_b weight_b · f_b(chosen level at p_j) for every j; per_block is [K, L]."""
        delta = (np.diff(per_block, axis=1) * weight[:, None]).ravel()
        acc = np.bincount(steps.ravel(), weights=delta, minlength=g + 1)
        return float(per_block[:, 0] @ weight) + np.cumsum(acc)[:g]

    counts = np.diff(np.append(arrays.utt_starts, k))
    u = arrays.num_utts
    w_gmacs = np.repeat(arrays.sample_rate / 1e9 / arrays.utt_samples / u, counts)
    gmacs = curve(arrays.macs, w_gmacs)
    regret = curve(np.maximum(0.0, t - arrays.exit_snr_db()[:, :lv]), np.full(k, 1.0 / k))
    si_snri, snri = _metric_curves(arrays, steps, g)
    out = {"gmacs": gmacs, "regret": regret, "si_snri": si_snri, "snri": snri}
    unsort = np.empty_like(order)
    unsort[order] = np.arange(g)
    return {name: v[unsort] for name, v in out.items()}


def grid_index(grid: np.ndarray, values: np.ndarray) -> np.ndarray:
    """#{j : grid_j ≤ v} per value (== searchsorted(grid, v, 'right')), arithmetic on an evenly spaced grid."""
    g = len(grid)
    step = (grid[-1] - grid[0]) / (g - 1) if g > 1 else 0.0
    if g < 3 or step <= 0 or not np.allclose(np.diff(grid), step, rtol=1e-9, atol=0):
        return np.searchsorted(grid, values, side="right")
    with np.errstate(invalid="ignore"):
        guess = np.floor((values - grid[0]) / step)
    idx = (np.clip(np.nan_to_num(guess, nan=g), -1, g) + 1).astype(np.int64)
    np.clip(idx, 0, g, out=idx)
    nan = np.isnan(values)
    # the guess is off by at most one cell through rounding (grid values may be rounded): correct it exactly
    padded = np.concatenate([[-np.inf], grid, [np.inf]])  # padded[i] = grid[i-1], sentinels at both ends
    idx -= padded.take(idx) > values
    idx += padded.take(idx + 1) <= values
    np.minimum(idx, g, out=idx)  # v = +inf passes the upper sentinel
    idx[nan] = g  # searchsorted sorts NaN last
    return idx


def _level_deltas(arrays: BlockArrays, name: str) -> np.ndarray:
    """stat(l+1) − stat(l) per block, level < L−1 and source [K, L−1, S], cached (shared by all targets)."""
    key = ("level_delta", name)
    if key not in arrays._cache:
        arrays._cache[key] = np.diff(arrays.stats[name], axis=1)
    return arrays._cache[key]


def _metric_curves(arrays: BlockArrays, steps: np.ndarray, g: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean SI-SNRi and SNRi over utterances and sources per grid point, chunked over utterances."""
    s_count = arrays.num_sources
    starts = np.append(arrays.utt_starts, arrays.num_blocks)
    per_chunk = max(1, _CHUNK_CELLS // ((g + 1) * s_count))
    si_total = np.zeros(g)
    snr_total = np.zeros(g)
    for u0 in range(0, arrays.num_utts, per_chunk):
        u1 = min(u0 + per_chunk, arrays.num_utts)
        b0, b1 = starts[u0], starts[u1]
        local = arrays.utt[b0:b1] - u0
        flat = (local[:, None] * (g + 1) + steps[b0:b1]).ravel()
        sums = {}
        for name in _SUM_STATS:
            base = np.add.reduceat(arrays.stats[name][b0:b1, 0], starts[u0:u1] - b0, axis=0)  # [Uc, S]
            deltas = _level_deltas(arrays, name)[b0:b1]  # [kb, L-1, S]
            per_source = []
            for s in range(s_count):
                delta = deltas[:, :, s].ravel()
                acc = np.bincount(flat, weights=delta, minlength=(u1 - u0) * (g + 1)).reshape(u1 - u0, g + 1)
                per_source.append(np.cumsum(acc, axis=1)[:, :g] + base[:, s, None])
            sums[name] = np.stack(per_source, axis=1)  # [Uc, S, G]
        m = composite_from_sums(arrays, sums["sum_est"], sums["e_est"], sums["dot_est_ref"], slice(u0, u1))
        si_total += m["si_snri"].mean(axis=1).sum(axis=0)
        snr_total += m["snri"].mean(axis=1).sum(axis=0)
    return si_total / arrays.num_utts, snr_total / arrays.num_utts


# -- per-policy sweeps -------------------------------------------------------------------------
def _row(policy: Policy, t: float, p: float, summary: dict[str, float]) -> dict[str, Any]:
    return {"policy": policy.qualified_name(), "params": policy.param_string(), "t": t, "p": p,
            **{k: summary[k] for k in ("gmacs", "regret", "si_snri", "snri")}}


def sweep_probabilistic(arrays: BlockArrays, targets: Sequence[float], p_grid: Sequence[float],
                        condition: str = "all", p_ref: str | float = "mixture") -> list[dict[str, Any]]:
    """Probabilistic(t, p) for every target and p: one exact staircase per target.

    ``p_ref`` is the policy's reference power (its decisions); regret is measured on ``arrays``."""
    Probabilistic(condition=condition).check_requirements(arrays)
    rows = []
    decide = arrays.at_reference(p_ref)
    for t in targets:
        probs = level_probabilities(decide, float(t), condition, slice(0, arrays.num_levels - 1))
        c = staircase_curve(arrays, probs, p_grid, float(t))
        for j, p in enumerate(p_grid):
            pol = Probabilistic(t=t, p=p, condition=condition, p_ref=p_ref)
            rows.append(_row(pol, float(t), float(p), {k: float(v[j]) for k, v in c.items()}))
    return rows


def sweep_oracle(arrays: BlockArrays, targets: Sequence[float], p_ref: str | float = "mixture",
                 cls: type[Policy] = Oracle) -> list[dict[str, Any]]:
    """Oracle(t) (or OracleBest(t)) at every target (regret measured at the same t, on ``arrays``)."""
    rows = []
    for t in targets:
        pol = cls(t=t, p_ref=p_ref)
        rows.append(_row(pol, float(t), np.nan, summarize(arrays, pol(arrays), [t])[0]))
    return rows


def sweep_static(arrays: BlockArrays, targets: Sequence[float],
                 levels: Sequence[int | str] | None = None) -> list[dict[str, Any]]:
    """Static(l) for every level (or those given: indices, or names the arrays know), regret at every target."""
    rows = []
    for lv in range(arrays.num_levels) if levels is None else levels:
        pol = Static(l=Static(l=lv).level_index("l", arrays))  # rows name levels by index
        rows += [_row(pol, s["t"], np.nan, s) for s in summarize(arrays, pol(arrays), targets)]
    return rows


def sweep_uniform(arrays: BlockArrays, targets: Sequence[float], seed: int = 0, draws: int = 3) -> list[dict[str, Any]]:
    """Uniform: exact expected GMAC/s and regret; SI-SNRi/SNRi averaged over ``draws`` seeded draws.

    GMAC/s and regret are linear in the per-block choice, so their expectation is the mean over
    levels; SI-SNRi is not, so it is estimated from draws (seeds seed, seed+1, ...).
    """
    pol = Uniform(seed=seed)
    lv = arrays.num_levels
    gmacs = float(np.mean([utterance_gmacs(arrays, arrays.macs[:, i]).mean() for i in range(lv)]))
    snr = arrays.exit_snr_db()[:, :lv]
    drawn = [summarize(arrays, pol(arrays, seed=i), targets[:1])[0] for i in range(draws)]
    si = float(np.mean([d["si_snri"] for d in drawn]))
    sn = float(np.mean([d["snri"] for d in drawn]))
    return [_row(pol, float(t), np.nan, {"gmacs": gmacs, "regret": float(np.maximum(0.0, t - snr).mean()),
                                         "si_snri": si, "snri": sn}) for t in targets]


def budget_grid(arrays: BlockArrays, points: int = BUDGET_POINTS) -> list[float]:
    """Mean budgets (GMAC/s) evenly spaced from the cheapest static level's compute to the deepest's."""
    from exitbench.policies.budget import mean_gmacs

    lo = mean_gmacs(arrays, np.zeros(arrays.num_blocks, dtype=np.int64))
    hi = mean_gmacs(arrays, np.full(arrays.num_blocks, arrays.num_levels - 1, dtype=np.int64))
    return [float(x) for x in np.round(np.linspace(lo, hi, points), 6)]


def sweep_budget(arrays: BlockArrays, targets: Sequence[float], budgets: Sequence[float] | None = None,
                 p_ref: str | float = "mixture") -> list[dict[str, Any]]:
    """Budget(gmacs=B) for every budget B (λ solved per B on ``arrays``), regret at every target."""
    rows = []
    for b in budgets if budgets is not None else budget_grid(arrays):
        pol = Budget(gmacs=b, p_ref=p_ref)
        rows += [_row(pol, s["t"], np.nan, s) for s in summarize(arrays, pol(arrays), targets)]
    return rows


def sweep_learned(arrays: BlockArrays, targets: Sequence[float], router: str,
                  qs: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """Learned(router, q) over q at every target: one exact staircase each (the router's own t decides)."""
    pol = Learned(router=router)
    cum = pol.cumulative(arrays)[:, : arrays.num_levels - 1]
    grid = list(qs) if qs is not None else list(Learned.param("q").sweep or (0.5,))
    rows = []
    for t in targets:
        c = staircase_curve(arrays, cum, grid, float(t))
        for j, q in enumerate(grid):
            rows.append(_row(Learned(router=router, q=q), float(t), np.nan, {k: float(v[j]) for k, v in c.items()}))
    return rows


def with_matched(frame: pd.DataFrame, arrays: BlockArrays, draws: int = DEFAULT_DRAWS, seed: int = 0) -> pd.DataFrame:
    """The frame with the cost-matched random baseline of every row of a MATCHABLE policy (others NaN).

    Rows whose choices have the same level histogram in every cost group share one baseline (it
    depends on nothing else), so a sweep over p costs one set of draws per distinct allocation.
    """
    out = frame.copy()
    for c in MATCHED_COLUMNS:
        out[c] = np.nan
    if out.empty:
        return out
    groups = cost_groups(arrays)
    cells = (int(groups.max()) + 1) * (arrays.num_levels + 1)
    done: dict[tuple[float, bytes], dict[str, float]] = {}
    for i, row in out.iterrows():
        if row["policy"] not in MATCHABLE:
            continue
        spec = f"{row['policy']}:{row['params']}" if row["params"] else str(row["policy"])
        chosen = parse_policy(spec)(arrays)
        if chosen.ndim != 1 or chosen.max(initial=0) >= arrays.num_levels:
            continue  # per-source exits, or the model's dynamic output: no one level per block to permute
        key = (float(row["t"]), np.bincount(groups * (arrays.num_levels + 1) + chosen, minlength=cells).tobytes())
        if key not in done:
            done[key] = matched_summary(arrays, chosen, [float(row["t"])], draws, seed)[0]
        for c in MATCHED_COLUMNS:
            out.at[i, c] = done[key][c]
    return out


def sweep_router(arrays: BlockArrays, targets: Sequence[float]) -> list[dict[str, Any]]:
    """The model's own routing, regret at every target."""
    pol = Router()
    return [_row(pol, s["t"], np.nan, s) for s in summarize(arrays, pol(arrays), targets)]


def threshold_grid(scores: np.ndarray, points: int = 41) -> list[float]:
    """Thresholds spanning a score's recorded range: its quantiles (ties merged), below and above all."""
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        return [0.0]
    q = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, points)))
    return [float(finite.min()) - 1.0, *map(float, q), float(finite.max()) + 1.0]


def sweep_threshold(arrays: BlockArrays, targets: Sequence[float], score: str,
                    taus: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """Threshold(score, tau) over tau (the score's range by default) at every target: one staircase each."""
    sc = arrays.scores[score][:, : arrays.num_levels - 1]
    grid = list(taus) if taus is not None else threshold_grid(sc)
    rows = []
    for t in targets:
        c = staircase_curve(arrays, np.where(np.isnan(sc), -np.inf, sc), grid, float(t))
        for j, tau in enumerate(grid):
            rows.append(_row(Threshold(score=score, tau=tau), float(t), np.nan, {k: float(v[j]) for k, v in c.items()}))
    return rows


def sweep_generic(arrays: BlockArrays, cls: type[Policy], fixed: dict[str, Any], targets: Sequence[float],
                  seed: int = 0, grids: dict[str, Sequence[Any]] | None = None) -> list[dict[str, Any]]:
    """Any policy: the product of its parameters' sweep values (fixed ones held; ``grids`` overrides
    a parameter's values), choose + summarize each."""
    grids = grids or {}
    names = [p.name for p in cls.params if p.name not in fixed]
    axes = [list(targets) if p.name == "t" else list(grids.get(p.name) or p.sweep or (p.default,))
            for p in cls.params if p.name not in fixed]
    rows = []
    for combo in itertools.product(*axes):
        pol = cls(**fixed, **dict(zip(names, combo)))
        ts = [pol.values["t"]] if "t" in pol.values else list(targets)
        p = float(pol.values["p"]) if "p" in pol.values else np.nan
        rows += [_row(pol, s["t"], p, s) for s in summarize(arrays, pol(arrays, seed), ts)]
    return rows


def sweep(arrays: BlockArrays, policies: Sequence[str] | None = None, targets: Sequence[float] = DEFAULT_TARGETS,
          p_grid: Sequence[float] = DEFAULT_P_GRID, seed: int = 0, uniform_draws: int = 3,
          budgets: Sequence[float] | None = None, matched_draws: int = 0, also: Sequence[str] = ()) -> pd.DataFrame:
    """Every policy over its parameters, as a tidy frame with columns policy, params, t, p, gmacs, regret, si_snri, snri.

    ``policies`` are names or specs (``probabilistic:condition=snr`` holds condition and sweeps t, p;
    ``static:l=2`` one level). None: every built-in whose requirements the recording meets; the others
    are listed with the reason in ``frame.attrs['skipped']``. A policy named explicitly that cannot run
    raises PolicyError. gmacs, si_snri, snri are means over utterances; regret the mean over blocks.
    ``budgets``: the mean GMAC/s a budget sweep hits (default ``budget_grid``). ``matched_draws`` > 0 adds
    the cost-matched random baseline of every dynamic row (``MATCHED_COLUMNS``, see ``with_matched``).
    ``also``: specs swept beside the defaults when ``policies`` is None (e.g. learned routers).
    """
    explicit = policies is not None
    # the threshold policy needs a recorded exit score: by default, one sweep per score the model has
    specs = list(policies) if explicit else [p for p in BUILTIN_POLICIES if p != "threshold"] + \
        [f"threshold:score={name}" for name in sorted(arrays.scores)] + list(also)
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for spec in specs:
        name, raw = split_spec(spec)
        cls = get_policy_class(name)
        probe = cls(**raw)
        fixed = {k: probe.values[k] for k in raw}
        try:
            probe.check_requirements(arrays)
        except PolicyError as exc:
            if explicit:
                raise
            skipped[name] = str(exc)
            continue
        ts = [fixed["t"]] if "t" in fixed else list(targets)
        if fixed.get("per_source"):  # per-source exits: no staircase over [K, S] choices; each configuration replayed
            grid = {"p": [fixed["p"]] if "p" in fixed else list(p_grid)} if cls is Probabilistic else \
                {"gmacs": budgets or budget_grid(arrays)} if cls is Budget and "lam" not in fixed else {}
            rows += sweep_generic(arrays, cls, fixed, ts, seed, grid)
        elif cls is Probabilistic:
            grid = [fixed["p"]] if "p" in fixed else list(p_grid)
            rows += sweep_probabilistic(arrays, ts, grid, probe.values["condition"], probe.values["p_ref"])
        elif cls in (Oracle, OracleBest):
            rows += sweep_oracle(arrays, ts, probe.values["p_ref"], cls)
        elif cls is Static:
            rows += sweep_static(arrays, ts, [fixed["l"]] if "l" in fixed else None)
        elif cls is Uniform:
            rows += sweep_uniform(arrays, ts, probe.values["seed"], uniform_draws)
        elif cls is Router:
            rows += sweep_router(arrays, ts)
        elif cls is Learned:
            rows += sweep_learned(arrays, ts, probe.values["router"], [fixed["q"]] if "q" in fixed else None)
        elif cls is Budget:
            rows += sweep_budget(arrays, ts, [fixed["gmacs"]] if "gmacs" in fixed else budgets, probe.values["p_ref"]) \
                if "lam" not in fixed else sweep_generic(arrays, cls, fixed, ts, seed)
        elif cls is Threshold:
            rows += sweep_threshold(arrays, ts, probe.values["score"], [fixed["tau"]] if "tau" in fixed else None)
        else:
            rows += sweep_generic(arrays, cls, fixed, ts, seed)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    if matched_draws > 0:
        frame = with_matched(frame, arrays, matched_draws, seed)
    frame.attrs["skipped"] = skipped
    return frame
