"""Figures drawn from the tidy frames of ``exitbench.results.analysis``; each returns a matplotlib Figure.

No figure computes data beyond sorting and selecting rows: what is drawn is what the query returned
(``exitbench.reports.queries`` adds the intervals and trends the report shows).
Call inside ``style.figure_style()`` for the report look (``paper=True`` for LaTeX-ready sizes).
Runs are named by ``run_labels`` (run id -> label) where given, else by their short id; every legend
that would cover data is drawn below the axes.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import mlab
from matplotlib import ticker as mticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from exitbench.errors import UsageError
from exitbench.reports.style import (COLUMN_WIDTH, PAGE_WIDTH, RUN_STYLES, STRATEGY_ORDER, level_colors,
                                     strategy_color)
from exitbench.reports.tables import METRIC_HEADERS

METRIC_LABELS = {k: v for k, v in METRIC_HEADERS.items()}
#: a Pareto figure whose compute spans more than this ratio gets a logarithmic compute axis
LOG_RATIO = 10.0


class FigureError(UsageError):
    """A frame that lacks what a figure needs (no rows, missing columns)."""


def _need(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise FigureError(f"{what}: frame lacks columns {missing}")
    if frame.empty:
        raise FigureError(f"{what}: nothing to draw (empty frame)")


def _name(run: str, run_labels: Mapping[str, str] | None) -> str:
    return (run_labels or {}).get(run, run[:8])


def _run_label(run: str, runs: Sequence[str], run_labels: Mapping[str, str] | None = None) -> str:
    """The suffix naming a run on an artist (empty when only one run is drawn)."""
    return f" [{_name(run, run_labels)}]" if len(runs) > 1 else ""


def _strategies(frame: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(frame["strategy"]))
    return [s for s in STRATEGY_ORDER if s in present] + [s for s in present if s not in STRATEGY_ORDER]


def _legend_below(fig: Figure, handles: Sequence[Any], labels: Sequence[str], ncol: int | None = None) -> Any:
    """One legend under the axes, in columns, so that no entry covers data."""
    ncol = ncol or max(1, min(len(labels), 4))
    return fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False, fontsize="small")


def _factorised_legend(fig: Figure, axes: Sequence[Any], runs: Sequence[str],
                       run_labels: Mapping[str, str] | None, ncol: int | None = None) -> Any:
    """A legend below the figure: one entry per series (colour) and, for several runs, one per run (line style).

    Artists carry '<series> [<run>]' labels; for several runs the legend lists each series once
    (drawn as the first run draws it) and then each run's line style and marker in grey."""
    seen: dict[str, Any] = {}
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        for h, lab in zip(handles, labels):
            key = lab.rsplit(" [", 1)[0] if len(runs) > 1 else lab
            seen.setdefault(key, h)
    handles, labels = list(seen.values()), list(seen)
    if len(runs) > 1:
        for ri, run in enumerate(runs):
            ls, marker = RUN_STYLES[ri % len(RUN_STYLES)]
            handles.append(Line2D([], [], color="0.35", linestyle=ls, marker=marker, markersize=4))
            labels.append(_name(run, run_labels))
    return _legend_below(fig, handles, labels, ncol)


# -- regret -------------------------------------------------------------------------------------------
def regret_figure(curves: pd.DataFrame, width: float = PAGE_WIDTH,
                  run_labels: Mapping[str, str] | None = None) -> Figure:
    """Regret vs GMAC/s: one panel per target t, one line per strategy (and run), as PRESS Fig. 4."""
    _need(curves, ["run", "strategy", "t", "gmacs", "regret"], "regret figure")
    targets = sorted(curves["t"].unique())
    runs = list(dict.fromkeys(curves["run"]))
    strategies = _strategies(curves)
    fig, axes = plt.subplots(1, len(targets), figsize=(width, width / max(len(targets), 1) * 0.85 + 0.8),
                             sharey=False, squeeze=False, layout="constrained")
    for ax, t in zip(axes[0], targets):
        at = curves[curves["t"] == t]
        for ri, run in enumerate(runs):
            ls, marker = RUN_STYLES[ri % len(RUN_STYLES)]
            for si, strategy in enumerate(strategies):
                g = at[(at["run"] == run) & (at["strategy"] == strategy)].sort_values(["gmacs", "regret"])
                if g.empty:
                    continue
                single = len(g) == 1
                color = strategy_color(strategy, si)
                if not single and "matched_regret" in g and g["matched_regret"].notna().sum() > 1:
                    # the cost-matched random baseline: the same compute placed at random (a band over seeds)
                    m = g[g["matched_regret"].notna()].sort_values("gmacs")
                    ax.fill_between(m["gmacs"], m["matched_regret_lo"], m["matched_regret_hi"], color=color,
                                    alpha=0.15, linewidth=0)
                    ax.plot(m["gmacs"], m["matched_regret"], linestyle=(0, (2, 2)), linewidth=0.8, color=color,
                            label=f"{strategy}, cost-matched random" + _run_label(run, runs, run_labels))
                ax.plot(g["gmacs"], g["regret"], linestyle="none" if single else ls,
                        marker=marker if single or strategy != "dynamic" else None, markersize=5 if single else 3.5,
                        color=color, label=strategy + _run_label(run, runs, run_labels),
                        drawstyle="default")
        ax.set_title(f"t = {t:g} dB")
        ax.set_xlabel("GMAC/s")
    axes[0][0].set_ylabel("one-sided exit-SNR regret (dB)")
    _factorised_legend(fig, axes[0], runs, run_labels)
    return fig


# -- calibration ----------------------------------------------------------------------------------------
def calibration_figure(reliability: pd.DataFrame, decision: pd.DataFrame | None = None,
                       width: float = PAGE_WIDTH) -> Figure:
    """PIT reliability per exit with the diagonal, and the exit decision's reliability at t (PRESS Fig. 5).

    Optional columns draw the uncertainty: ``lo``/``hi`` a band around each PIT curve, ``count`` the
    values behind it (in the legend); ``obs_lo``/``obs_hi`` intervals on the pooled decision curve,
    whose bin counts are drawn as bars under it."""
    _need(reliability, ["level", "level_name", "expected", "observed", "ks"], "calibration figure")
    fig = plt.figure(figsize=(width, width / 2 * 1.12), layout="constrained")
    if decision is None:
        ax = fig.add_subplot(1, 1, 1)
        ax_dec = ax_cnt = None
    else:
        gs = fig.add_gridspec(2, 2, height_ratios=[3.2, 1])
        ax = fig.add_subplot(gs[:, 0])
        ax_dec = fig.add_subplot(gs[0, 1])
        ax_cnt = fig.add_subplot(gs[1, 1], sharex=ax_dec)
    levels = sorted(reliability["level"].unique())
    colors = level_colors(len(levels))
    ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=1, label="calibrated")
    banded = {"lo", "hi"} <= set(reliability.columns)
    for color, lv in zip(colors, levels):
        g = reliability[reliability["level"] == lv].sort_values("expected")
        label = f"{g['level_name'].iloc[0]} (KS {g['ks'].iloc[0]:.2f}"
        label += f", n={int(g['count'].iloc[0])})" if "count" in g else ")"
        if banded:
            ax.fill_between(g["expected"], g["lo"], g["hi"], color=color, alpha=0.15, linewidth=0)
        ax.plot(g["expected"], g["observed"], color=color, marker="o", markersize=2.5, label=label)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="PIT quantile q (expected fraction)",
           ylabel="observed fraction of PIT ≤ q", title="PIT reliability of σ² per exit")
    ax.set_aspect("equal")
    handles, labels = ax.get_legend_handles_labels()
    if banded:
        handles.append(Patch(color="0.5", alpha=0.3, linewidth=0))
        labels.append("95% interval (bootstrap over utterances)")
    if decision is not None:
        _need(decision, ["level", "level_name", "mean_predicted", "observed", "t"], "decision reliability")
        ax_dec.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=1)
        for color, lv in zip(colors, levels):
            g = decision[(decision["level"] == lv) & (decision["count"] > 0)]
            ax_dec.plot(g["mean_predicted"], g["observed"], color=color, linewidth=0.9, alpha=0.75, marker="o",
                        markersize=2)
        pooled = decision[(decision["level"] == -1) & (decision["count"] > 0)].sort_values("bin_lo")
        if len(pooled):
            if {"obs_lo", "obs_hi"} <= set(pooled.columns):
                err = np.vstack([np.clip(pooled["observed"] - pooled["obs_lo"], 0, None),
                                 np.clip(pooled["obs_hi"] - pooled["observed"], 0, None)])
                err = np.nan_to_num(err, nan=0.0)
                ax_dec.errorbar(pooled["mean_predicted"], pooled["observed"], yerr=err, color="black",
                                linewidth=1.8, marker="s", markersize=3.5, capsize=2, elinewidth=0.9, zorder=4)
            else:
                ax_dec.plot(pooled["mean_predicted"], pooled["observed"], color="black", linewidth=1.8, marker="s",
                            markersize=3.5, zorder=4)
            handles.append(Line2D([], [], color="black", linewidth=1.8, marker="s", markersize=3.5))
            labels.append("all exits pooled" + (" (95% interval)" if "obs_lo" in pooled else ""))
            everything = decision[decision["level"] == -1].sort_values("bin_lo")
            centers = (everything["bin_lo"] + everything["bin_hi"]) / 2
            ax_cnt.bar(centers, everything["count"], width=(everything["bin_hi"] - everything["bin_lo"]) * 0.85,
                       color="0.6")
            for x, c in zip(centers, everything["count"]):
                if c > 0:
                    ax_cnt.annotate(f"{int(c)}", (x, c), textcoords="offset points", xytext=(0, 1), ha="center",
                                    va="bottom", fontsize=6)
            ax_cnt.set_yscale("log")
            ax_cnt.set_ylim(0.8, max(float(everything["count"].max()), 1.0) * 6)
        ax_dec.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed frequency",
                   title=f"exit decision at t = {decision['t'].iloc[0]:g} dB")
        ax_dec.tick_params(labelbottom=False)
        ax_cnt.set(xlabel="predicted P(exit-SNR ≥ t)", ylabel="blocks")
        ax_cnt.grid(False, axis="y")
    _legend_below(fig, handles, labels, ncol=3)
    return fig


# -- Pareto ---------------------------------------------------------------------------------------------
def pareto_figure(frame: pd.DataFrame, width: float = COLUMN_WIDTH * 1.6,
                  run_labels: Mapping[str, str] | None = None) -> Figure:
    """Metric vs GMAC/s: static staircase, each dynamic policy's curve, point area by parameters, front marked.

    The non-dominated points are small open rings drawn under the curves, so they mark the front
    without hiding it; the legend is below the axes."""
    _need(frame, ["run", "strategy", "policy", "t", "gmacs", "value", "metric", "num_params", "front"],
          "Pareto figure")
    metric = frame["metric"].iloc[0]
    runs = list(dict.fromkeys(frame["run"]))
    front_col = "front_all" if len(runs) > 1 and "front_all" in frame else "front"
    fig, ax = plt.subplots(figsize=(width, width * 0.72 + 0.3 * (2 + len(runs))), layout="constrained")
    pmax = float(frame["num_params"].max()) or 1.0
    area = lambda p: 10 + 60 * np.asarray(p, dtype=float) / pmax  # noqa: E731 - point area ∝ parameters
    for ri, run in enumerate(runs):
        ls, marker = RUN_STYLES[ri % len(RUN_STYLES)]
        rl = _run_label(run, runs, run_labels)
        fr = frame[frame["run"] == run]
        static = fr[fr["strategy"] == "static"].sort_values("gmacs")
        if len(static):
            best = np.fmax.accumulate(static["value"].to_numpy())
            ax.plot(static["gmacs"], best, drawstyle="steps-post", color=strategy_color("static"), linestyle=ls,
                    linewidth=1, zorder=2, label="static staircase" + rl)
            ax.scatter(static["gmacs"], static["value"], s=area(static["num_params"]), marker=marker,
                       color=strategy_color("static"), alpha=0.8, zorder=3, linewidths=0,
                       label="static levels" + rl)
        others = fr[fr["strategy"] != "static"]
        dyn_targets = sorted(others.loc[others["strategy"] == "dynamic", "t"].dropna().unique())
        shades = sns.light_palette(strategy_color("dynamic"), len(dyn_targets) + 2)[2:]  # darker = higher t
        for si, ((strategy, policy, t), g) in enumerate(others.groupby(["strategy", "policy", "t"], dropna=False,
                                                                      sort=False)):
            g = g.sort_values("gmacs")
            label = strategy + ("" if pd.isna(t) or strategy != "dynamic" else f" t={t:g}") + rl
            color = strategy_color(strategy, si)
            if strategy == "dynamic" and len(g) > 1:
                color = shades[dyn_targets.index(t)] if t in dyn_targets else color
                ax.plot(g["gmacs"], g["value"], linestyle=ls, color=color, linewidth=1.3, zorder=2.5, label=label)
            elif strategy == "oracle":
                continue  # drawn once below as a curve over t
            else:
                ax.scatter(g["gmacs"], g["value"], s=area(g["num_params"]) * 0.8,
                           marker="P" if strategy == "router" else "X", color=color, zorder=3.5, linewidths=0,
                           label=label)
        oracle = others[others["strategy"] == "oracle"].sort_values("gmacs")
        if len(oracle):
            ax.plot(oracle["gmacs"], oracle["value"], linestyle=ls, marker=marker, markersize=3,
                    color=strategy_color("oracle"), zorder=2.5, label="oracle (over t)" + rl)
    front = frame[frame[front_col]]
    ax.scatter(front["gmacs"], front["value"], s=22, facecolors="none", edgecolors="0.15", linewidths=0.6,
               zorder=1.8, label="non-dominated")
    ax.set(xlabel="GMAC/s", ylabel=METRIC_LABELS.get(metric, metric),
           title=f"{METRIC_LABELS.get(metric, metric)} vs compute (area ∝ parameters)")
    g = frame["gmacs"].to_numpy(dtype=float)
    g = g[np.isfinite(g) & (g > 0)]
    if g.size and g.max() / g.min() > LOG_RATIO:  # runs of very different cost: each visible on a log axis
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(mticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(mticker.NullFormatter())
        ax.set_xlabel("GMAC/s (log scale)")
    _factorised_legend(fig, [ax], runs, run_labels, ncol=3)
    return fig


# -- exit map -------------------------------------------------------------------------------------------
def exit_map_figure(blocks: pd.DataFrame, audio: np.ndarray | None = None, sample_rate: int | None = None,
                    note: str = "", width: float = PAGE_WIDTH) -> Figure:
    """One utterance: its spectrogram (if audio), the chosen exit per block, and per-block exit-SNR (PRESS Fig. 1).

    One colour per exit throughout: its exit-SNR line, the bar of a block that chose it, and its
    legend entry (every exit's colour is listed, whether chosen or not)."""
    _need(blocks, ["start", "n", "level", "level_name", "exit_snr", "t", "policy"], "exit map")
    if sample_rate is None:
        raise FigureError("exit map: sample_rate is needed to place blocks in time")
    rows = 3 if audio is not None else 2
    fig, axes = plt.subplots(rows, 1, figsize=(width, 1.35 * rows + 0.5), sharex=True, layout="constrained",
                             gridspec_kw={"height_ratios": [1.4] * (rows == 3) + [0.8, 1.0]})
    axes = np.atleast_1d(axes)
    t0 = blocks["start"].to_numpy() / sample_rate
    t1 = (blocks["start"] + blocks["n"]).to_numpy() / sample_rate
    if audio is not None:
        ax = axes[0]
        nfft = 512 if sample_rate > 12000 else 256
        spec, freqs, times = mlab.specgram(np.asarray(audio, dtype=np.float64), NFFT=nfft, Fs=sample_rate,
                                           noverlap=nfft // 2)
        db = 10.0 * np.log10(np.maximum(spec, max(float(spec.max()), 1e-20) * 1e-8))  # floor: silence is not -inf
        ax.imshow(db, origin="lower", aspect="auto", cmap="magma",
                  extent=(0.0, len(audio) / sample_rate, float(freqs[0]), float(freqs[-1])))
        ax.grid(False)
        for edge in t0[1:]:
            ax.axvline(edge, color="white", linewidth=0.5, alpha=0.6)
        ax.set_ylabel("Hz")
        ax.set_title(f"{blocks['utt_id'].iloc[0] if 'utt_id' in blocks else ''} mixture")
    exit_cols = [c for c in blocks.columns if c.startswith("exit_snr_")]
    names = [c.removeprefix("exit_snr_") for c in exit_cols]
    n_colors = max(len(names), int(blocks["level"].max()) + 1)
    colors = level_colors(n_colors)
    ax = axes[-2]
    edges = np.append(t0, t1[-1])
    levels = blocks["level"].to_numpy()
    ax.hlines(levels, t0, t1, colors=[colors[int(lv) % len(colors)] for lv in levels], linewidth=5, alpha=0.8)
    ax.stairs(levels, edges, color="black", linewidth=1.0, baseline=None, label="chosen level")
    chosen_names = dict(zip(blocks["level"].astype(int), blocks["level_name"].astype(str)))
    all_names = names + [chosen_names.get(i, str(i)) for i in range(len(names), n_colors)]  # e.g. 'dynamic'
    ax.set_yticks(range(n_colors), all_names)
    ax.set_ylim(-0.5, max(len(names) - 0.5, blocks["level"].max() + 0.5))
    ax.set_ylabel("exit")
    ax.set_title(f"policy {blocks['policy'].iloc[0]}", loc="left")
    ax = axes[-1]
    for color, col, name in zip(colors, exit_cols, names):
        ax.stairs(blocks[col].to_numpy(), edges, color=color, linewidth=0.8, alpha=0.7, baseline=None,
                  label=f"{name}")
    ax.bar((t0 + t1) / 2, blocks["exit_snr"], width=(t1 - t0) * 0.9,
           color=[colors[int(lv) % len(colors)] for lv in blocks["level"]], alpha=0.55)
    target = float(blocks["t"].iloc[0])
    ax.axhline(target, color="black", linestyle="--", linewidth=1)
    ax.set(xlabel="time (s)", ylabel="exit-SNR (dB)")
    handles = [Line2D([], [], color=colors[i], linewidth=1.0, marker="s", markersize=7, markeredgewidth=0,
                      alpha=0.85) for i in range(n_colors)]
    handles.append(Line2D([], [], color="black", linestyle="--", linewidth=1))
    labels = all_names + [f"t = {target:g} dB"]
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="x-small", frameon=False,
              title="exit (line: its exit-SNR;\nbar: chosen)", title_fontsize="x-small")
    if note:
        fig.suptitle(note, fontsize="small", color="0.35")
    return fig


# -- utilization ----------------------------------------------------------------------------------------
def utilization_figure(frame: pd.DataFrame, trend: Any = None, width: float = COLUMN_WIDTH * 1.4) -> Figure:
    """Per-utterance utilization against the utterance's input SNR, coloured by SI-SNRi (slimming paper).

    ``trend`` (``queries.Trend``) adds its least-squares line and Spearman's ρ."""
    _need(frame, ["utilization", "si_snri", "input_snr", "source"], "utilization figure")
    fig, ax = plt.subplots(figsize=(width, width * 0.78), layout="constrained")
    sc = ax.scatter(frame["input_snr"], frame["utilization"], c=frame["si_snri"], cmap="viridis", s=22,
                    edgecolors="none", zorder=3)
    fig.colorbar(sc, ax=ax, label="SI-SNRi (dB)")
    if trend is not None and np.isfinite(getattr(trend, "slope", np.nan)):
        x = frame["input_snr"].to_numpy(dtype=float)
        xs = np.linspace(np.nanmin(x), np.nanmax(x), 50)
        rho = "" if not np.isfinite(trend.rho) else f"; Spearman ρ = {trend.rho:.2f}"
        ax.plot(xs, trend.intercept + trend.slope * xs, color="black", linestyle="--", linewidth=1, zorder=2,
                label=f"linear fit ({trend.slope:+.3f} per dB{rho}, n = {trend.n})")
        _legend_below(fig, *ax.get_legend_handles_labels(), ncol=1)
    source = str(frame["source"].iloc[0])
    what = "router (dynamic level)" if source == "dynamic" else source
    ax.set(xlabel="input SNR (dB)", ylabel="utilization (MACs / full model)", ylim=(0, 1.05),
           title=f"utilization of {what}")
    return fig


# -- distributions --------------------------------------------------------------------------------------
def distributions_figure(long: pd.DataFrame, kind: str = "box", width: float = PAGE_WIDTH,
                         run_labels: Mapping[str, str] | None = None) -> Figure:
    """Per-level distributions of each metric over utterances: one panel per metric (box or violin)."""
    _need(long, ["run", "level", "level_name", "metric", "value"], "distributions figure")
    if kind not in ("box", "violin"):
        raise FigureError(f"distributions: kind must be 'box' or 'violin', not {kind!r}")
    finite = long[np.isfinite(long["value"].to_numpy(dtype=float))]
    metrics = list(dict.fromkeys(finite["metric"]))
    if not metrics:
        raise FigureError("distributions figure: every value is NaN (were metrics recorded?)")
    cols = min(len(metrics), 3)
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width, 2.1 * rows + 0.3), squeeze=False, layout="constrained")
    order = finite.sort_values("level")["level_name"].drop_duplicates().tolist()
    runs = list(dict.fromkeys(finite["run"]))
    finite = finite.assign(run=finite["run"].map(lambda r: _name(r, run_labels)))
    hue_order = [_name(r, run_labels) for r in runs]
    draw = sns.boxplot if kind == "box" else sns.violinplot
    for ax, metric in zip(axes.ravel(), metrics):
        g = finite[finite["metric"] == metric]
        extra = {"hue": "run", "hue_order": hue_order} if len(runs) > 1 else {"color": "#56B4E9"}
        draw(data=g, x="level_name", y="value", order=order, ax=ax, **extra,
             **({"fliersize": 2, "linewidth": 0.8} if kind == "box" else {"linewidth": 0.8, "cut": 0}))
        ax.set(xlabel="", ylabel=METRIC_LABELS.get(metric, metric))
        ax.tick_params(axis="x", rotation=30 if len(order) > 5 else 0)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if len(runs) > 1:
        handles, labels = axes.ravel()[0].get_legend_handles_labels()
        _legend_below(fig, handles, labels, ncol=min(len(runs), 3))
    for ax in axes.ravel()[len(metrics):]:
        ax.set_visible(False)
    return fig
