"""Metrics against training step over the checkpoints of one training run, with regressions marked.

A group is the runs of one test set (dataset fingerprint), ordered by the step recorded in each
checkpoint's metadata. Each step is compared with the previous one by the gate of
``exitbench.results.compare``: a regression is a drop beyond the tolerance whose simultaneous
interval (family-wise error ``alpha`` over the rows of that step's comparison) lies wholly below it.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from exitbench.errors import UsageError
from exitbench.results.compare import (DEFAULT_ALPHA, DEFAULT_RESAMPLES, DEFAULT_TOLERANCE, IncompatibleRuns,
                                       SimultaneousBounds, check_alpha, gate_verdicts, level_values_long,
                                       parse_metrics, parse_tolerance, policy_values,
                                       simultaneous_bounds_many)
from exitbench.results.catalog import list_runs

COLUMNS = ("step", "run_id", "kind", "name", "metric", "n", "mean", "delta", "ci_low", "ci_high", "verdict",
           "regression")


@dataclass
class History:
    """The per-step table of a group of runs and what was left out of it."""

    dataset: str
    fingerprint: str
    runs: pd.DataFrame  # the runs used, one per step, ordered by step
    table: pd.DataFrame  # COLUMNS; delta/CI/verdict against the previous step (NaN/'' at the first)
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> pd.DataFrame:
        """Rows whose step dropped significantly beyond tolerance against the previous step."""
        return self.table[self.table["regression"]]


def select_group(root: str | os.PathLike, model_glob: str | None = None, group: str | None = None
                 ) -> tuple[pd.DataFrame, list[str]]:
    """Complete runs of one test set with a step, one per step (the latest), ordered by step; and notes."""
    runs = list_runs(root, status="complete")
    notes: list[str] = []
    if model_glob:
        pats = [model_glob]
        keep = runs.apply(lambda r: any(
            fnmatch.fnmatch(str(v or ""), p) or fnmatch.fnmatch(Path(str(v or "")).name, p)
            for v in (r["checkpoint_path"], r["model"]) for p in pats), axis=1) if len(runs) else []
        runs = runs[keep] if len(runs) else runs
    if group:
        runs = runs[(runs["dataset"] == group) | runs["dataset_fingerprint"].fillna("").str.startswith(group)]
    if runs.empty:
        raise UsageError(f"no complete run in {root} matches"
                         f"{' --model-glob ' + model_glob if model_glob else ''}"
                         f"{' --group ' + group if group else ''}")
    groups = runs.groupby("dataset_fingerprint", sort=False)
    if groups.ngroups > 1:
        listing = "; ".join(f"{g['dataset'].iloc[0]} {fp[:12]} ({len(g)} runs)" for fp, g in groups)
        raise UsageError(f"the runs cover {groups.ngroups} test sets; choose one with --group (a dataset name or"
                         f" fingerprint prefix): {listing}")
    no_step = runs[runs["step"].isna()]
    if len(no_step):
        notes.append(f"{len(no_step)} run(s) without a training step in their checkpoint metadata left out:"
                     f" {', '.join(no_step['run_id'])}")
    runs = runs[runs["step"].notna()].copy()
    runs["step"] = runs["step"].astype(int)
    runs = runs.sort_values(["step", "finished_at"])
    dup = runs[runs.duplicated("step", keep="last")]
    if len(dup):
        notes.append(f"{len(dup)} older run(s) at an already covered step left out (the latest run per step is"
                     f" used): {', '.join(dup['run_id'])}")
    runs = runs.drop_duplicates("step", keep="last").reset_index(drop=True)
    if runs.empty:
        raise UsageError("no run of the group has a training step (checkpoint metadata 'step')")
    return runs, notes


def history(root: str | os.PathLike, model_glob: str | None = None, group: str | None = None,
            metrics: Sequence[str] = ("si_snri",), tolerance: float | str = 0.1, policies: Sequence[str] = (),
            alpha: float = DEFAULT_ALPHA, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> History:
    """Per step: the mean of each metric per level (and policy), and its paired delta to the previous step.

    Set-wise: every step's per-utterance values come from one query, the means from one group-by,
    and each step's gate works on arrays (the bootstrap's resamples drawn once for all steps), so the
    cost per step is a few small array operations, not a connection or a data-frame join.
    """
    metrics = parse_metrics(metrics)
    tol = parse_tolerance(tolerance, metrics)
    check_alpha(alpha, resamples)
    runs, notes = select_group(root, model_glob, group)
    run_ids = list(runs["run_id"])
    values = level_values_long(root, run_ids, metrics)  # one query for every step
    if policies:
        frames = [values]
        for step, run_id in zip(runs["step"], run_ids):
            pol, skipped = policy_values(root, run_id, list(policies), metrics)
            for spec, why in skipped.items():
                notes.append(f"step {step}: policy {spec} left out: {why}")
            if len(pol):
                frames.append(pol.assign(run=run_id))
        values = pd.concat(frames, ignore_index=True)
    # the step index of each row (run ids are unique here: one run per step); categorical codes, not a per-row
    # map over the string column (0.07 s at 1,000 runs)
    step_of = pd.Categorical(values["run"], categories=run_ids).codes
    values = values.iloc[np.argsort(step_of, kind="stable")].assign(_r=np.sort(step_of, kind="stable"))
    values = values.reset_index(drop=True)
    values["value"] = values["value"].astype("float64")
    means = (values.groupby(["_r", "kind", "name", "metric"], sort=False)["value"]
             .agg(mean="mean", n="count").reset_index())
    gates = _step_gates(values, len(run_ids), tol, alpha, resamples, seed)
    table = means.merge(gates, on=["_r", "kind", "name", "metric"], how="left")
    first = table["_r"] == 0
    table["verdict"] = table["verdict"].fillna("n/a").where(~first, "")
    table["step"] = runs["step"].astype(int).to_numpy()[table["_r"].to_numpy()]
    table["run_id"] = np.asarray(run_ids, dtype=object)[table["_r"].to_numpy()]
    table["regression"] = table["verdict"] == "worse"
    return History(str(runs["dataset"].iloc[0]), str(runs["dataset_fingerprint"].iloc[0]), runs,
                   table[list(COLUMNS)].reset_index(drop=True), notes)


def _step_gates(values: pd.DataFrame, num_runs: int, tol: dict[str, float], alpha: float, resamples: int,
                seed: int) -> pd.DataFrame:
    """``gate_table(previous step, step)`` for every step after the first, on arrays: _r, kind, name, metric,
    delta, ci_low, ci_high, verdict (the same numbers: same rows, same utterance columns, same resamples)."""
    # the (kind, name, metric) rows in order of first appearance, as factorizing their MultiIndex gives (without
    # building one: 0.07 s at 1,000 runs): each column's codes combined into one integer, factorized
    parts = [pd.factorize(values[c], use_na_sentinel=False) for c in ("kind", "name", "metric")]
    width = [len(u) for _, u in parts]
    combined = (parts[0][0].astype(np.int64) * width[1] + parts[1][0]) * width[2] + parts[2][0]
    kcode, kcomb = pd.factorize(combined)
    kind_of = np.asarray(parts[0][1], dtype=object)[kcomb // (width[1] * width[2])]
    name_of = np.asarray(parts[1][1], dtype=object)[(kcomb // width[2]) % width[1]]
    metric_of = np.asarray(parts[2][1], dtype=object)[kcomb % width[2]]
    ucode, uuniq = pd.factorize(values["utt_id"].astype(str), sort=True)  # columns sorted, as unstack does
    r = values["_r"].to_numpy()
    v = values["value"].to_numpy(np.float64)
    bounds_at = np.searchsorted(r, np.arange(num_runs + 1))
    k_all, u_all = len(kcomb), len(uuniq)
    tol_of = np.asarray([tol.get(m, DEFAULT_TOLERANCE) for m in metric_of], dtype=np.float64)

    def grid(i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = bounds_at[i], bounds_at[i + 1]
        val = np.full((k_all, u_all), np.nan)
        have = np.zeros((k_all, u_all), dtype=bool)
        val[kcode[a:b], ucode[a:b]] = v[a:b]
        have[kcode[a:b], ucode[a:b]] = True
        return val, have

    # each step's paired deltas first, then every step's bootstrap in one batched call (steps with equally many
    # utterances share the matrix products and quantiles; each step stays its own family)
    steps: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
    prev = grid(0) if num_runs else None
    for i in range(1, num_runs):
        cur = grid(i)
        (vb, hb), (vc, hc) = prev, cur
        if not hb.any() or not hc.any():
            raise IncompatibleRuns("nothing to compare: a run has no per-utterance values")
        both = hb & hc
        rows, cols = np.flatnonzero(both.any(axis=1)), np.flatnonzero(both.any(axis=0))
        fb, fc = np.isfinite(vb), np.isfinite(vc)
        d = np.where(both & fb & fc, vc - vb, np.nan)[np.ix_(rows, cols)]
        lost = (both & fb & ~fc).sum(axis=1)[rows]
        steps.append((i, rows, d, lost))
        prev = cur
    all_bounds = simultaneous_bounds_many([st[2] for st in steps], [tol_of[st[1]] for st in steps], alpha,
                                          resamples, seed)
    out: list[tuple[int, np.ndarray, SimultaneousBounds, np.ndarray]] = []
    for (i, rows, _d, lost), bounds in zip(steps, all_bounds):
        verdict = gate_verdicts(bounds, tol_of[rows]).astype(object)
        verdict[lost > 0] = "worse"  # as gate_table: a value the previous step had and this one lost
        out.append((i, rows, bounds, verdict))
    if not out:
        return pd.DataFrame({"_r": pd.Series(dtype=int), "kind": [], "name": [], "metric": [],
                             "delta": pd.Series(dtype=float), "ci_low": pd.Series(dtype=float),
                             "ci_high": pd.Series(dtype=float), "verdict": pd.Series(dtype=object)})
    rows = np.concatenate([o[1] for o in out])
    return pd.DataFrame({"_r": np.concatenate([np.full(len(o[1]), o[0]) for o in out]), "kind": kind_of[rows],
                         "name": name_of[rows], "metric": metric_of[rows],
                         "delta": np.concatenate([o[2].mean for o in out]),
                         "ci_low": np.concatenate([o[2].low for o in out]),
                         "ci_high": np.concatenate([o[2].high for o in out]),
                         "verdict": np.concatenate([o[3] for o in out])})


def plot_history(hist: History, path: str | os.PathLike) -> Path:
    """One panel per metric: mean against step per level/policy; significant regressions as red markers."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(hist.table["metric"]))
    fig, axes = plt.subplots(len(metrics), 1, figsize=(7, 3.2 * len(metrics)), squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        sub = hist.table[hist.table["metric"] == metric]
        for name, line in sub.groupby("name", sort=False):
            line = line.sort_values("step")
            ax.plot(line["step"], line["mean"], marker="o", ms=3, label=name)
            bad = line[line["regression"]]
            ax.scatter(bad["step"], bad["mean"], s=90, facecolors="none", edgecolors="red", linewidths=1.8,
                       zorder=5, label="_regression")
        ax.set_ylabel(f"mean {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    axes[-1, 0].set_xlabel("training step")
    axes[0, 0].set_title(f"{hist.dataset} ({hist.fingerprint[:12]}): red circles = significant regressions")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
