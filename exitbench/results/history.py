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
from exitbench.results.compare import (DEFAULT_ALPHA, DEFAULT_RESAMPLES, gate_table, level_values_of_runs,
                                       parse_metrics, parse_tolerance, run_values)
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
    """Per step: the mean of each metric per level (and policy), and its paired delta to the previous step."""
    metrics = parse_metrics(metrics)
    tol = parse_tolerance(tolerance, metrics)
    runs, notes = select_group(root, model_glob, group)
    levels = level_values_of_runs(root, list(runs["run_id"]), metrics)  # one query for every step
    frames, prev = [], None
    for _, run in runs.iterrows():
        values, skipped = run_values(root, run["run_id"], metrics, list(policies), levels=levels[run["run_id"]])
        for spec, why in skipped.items():
            notes.append(f"step {run['step']}: policy {spec} left out: {why}")
        means = (values.groupby(["kind", "name", "metric"], sort=False)["value"]
                 .agg(mean="mean", n="count").reset_index())
        if prev is None:
            cmp = means.assign(delta=np.nan, ci_low=np.nan, ci_high=np.nan, verdict="")
        else:
            pt, _ = gate_table(prev, values, tol, alpha, resamples, seed)
            cmp = means.merge(pt[["kind", "name", "metric", "delta", "ci_low", "ci_high", "verdict"]],
                              on=["kind", "name", "metric"], how="left")
            cmp["verdict"] = cmp["verdict"].fillna("n/a")
        frames.append(cmp.assign(step=int(run["step"]), run_id=run["run_id"]))
        prev = values
    table = pd.concat(frames, ignore_index=True)
    table["regression"] = table["verdict"] == "worse"
    return History(str(runs["dataset"].iloc[0]), str(runs["dataset_fingerprint"].iloc[0]), runs,
                   table[list(COLUMNS)], notes)


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
