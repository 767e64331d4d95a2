"""Figures drawn from the tidy frames of ``exitbench.results.analysis``; each returns a matplotlib Figure.

No figure computes data beyond sorting and selecting rows: what is drawn is what the query returned.
Call inside ``style.figure_style()`` for the report look (``paper=True`` for LaTeX-ready sizes).
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
from matplotlib import mlab
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from exitbench.errors import UsageError
from exitbench.reports.style import (COLUMN_WIDTH, PAGE_WIDTH, RUN_STYLES, STRATEGY_ORDER, level_colors,
                                     strategy_color)

METRIC_LABELS = {"si_snri": "SI-SNRi (dB)", "snri": "SNRi (dB)", "sdri": "SDRi (dB)", "pesq": "PESQ",
                 "stoi": "STOI", "estoi": "ESTOI", "gmacs": "GMAC/s", "si_snr": "SI-SNR (dB)", "sdr": "SDR (dB)"}


class FigureError(UsageError):
    """A frame that lacks what a figure needs (no rows, missing columns)."""


def _need(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise FigureError(f"{what}: frame lacks columns {missing}")
    if frame.empty:
        raise FigureError(f"{what}: nothing to draw (empty frame)")


def _run_label(run: str, runs: Sequence[str]) -> str:
    return f" [{run[:8]}]" if len(runs) > 1 else ""


def _strategies(frame: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(frame["strategy"]))
    return [s for s in STRATEGY_ORDER if s in present] + [s for s in present if s not in STRATEGY_ORDER]


# -- regret -------------------------------------------------------------------------------------------
def regret_figure(curves: pd.DataFrame, width: float = PAGE_WIDTH) -> Figure:
    """Regret vs GMAC/s: one panel per target t, one line per strategy (and run), as PRESS Fig. 4."""
    _need(curves, ["run", "strategy", "t", "gmacs", "regret"], "regret figure")
    targets = sorted(curves["t"].unique())
    runs = list(dict.fromkeys(curves["run"]))
    strategies = _strategies(curves)
    fig, axes = plt.subplots(1, len(targets), figsize=(width, width / max(len(targets), 1) * 0.85 + 0.4),
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
                ax.plot(g["gmacs"], g["regret"], linestyle="none" if single else ls,
                        marker=marker if single or strategy != "dynamic" else None, markersize=5 if single else 3.5,
                        color=strategy_color(strategy, si), label=strategy + _run_label(run, runs),
                        drawstyle="default")
        ax.set_title(f"t = {t:g} dB")
        ax.set_xlabel("GMAC/s")
    axes[0][0].set_ylabel("one-sided exit-SNR regret (dB)")
    axes[0][0].legend(loc="best", frameon=True)
    return fig


# -- calibration ----------------------------------------------------------------------------------------
def calibration_figure(reliability: pd.DataFrame, decision: pd.DataFrame | None = None,
                       width: float = PAGE_WIDTH) -> Figure:
    """PIT reliability per exit with the diagonal, and the exit decision's reliability at t (PRESS Fig. 5)."""
    _need(reliability, ["level", "level_name", "expected", "observed", "ks"], "calibration figure")
    panels = 1 if decision is None else 2
    fig, axes = plt.subplots(1, panels, figsize=(width * panels / 2, width / 2 * 0.95), squeeze=False,
                             layout="constrained")
    ax = axes[0][0]
    levels = sorted(reliability["level"].unique())
    colors = level_colors(len(levels))
    ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=1, label="calibrated")
    for color, lv in zip(colors, levels):
        g = reliability[reliability["level"] == lv].sort_values("expected")
        ax.plot(g["expected"], g["observed"], color=color, marker="o", markersize=2.5,
                label=f"{g['level_name'].iloc[0]} (KS {g['ks'].iloc[0]:.2f})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="PIT quantile (expected)", ylabel="observed fraction",
           title="PIT reliability of σ² per exit")
    ax.set_aspect("equal")
    ax.legend(loc="upper left", frameon=True)
    if decision is not None:
        _need(decision, ["level", "level_name", "mean_predicted", "observed", "t"], "decision reliability")
        ax = axes[0][1]
        ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=1, label="calibrated")
        for color, lv in zip(colors, levels):
            g = decision[(decision["level"] == lv) & (decision["count"] > 0)]
            ax.plot(g["mean_predicted"], g["observed"], color=color, marker="o", markersize=3,
                    label=str(g["level_name"].iloc[0]) if len(g) else str(lv))
        pooled = decision[(decision["level"] == -1) & (decision["count"] > 0)]
        if len(pooled):
            ax.plot(pooled["mean_predicted"], pooled["observed"], color="black", linewidth=2, marker="s",
                    markersize=3.5, label="all levels")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted P(exit-SNR ≥ t)", ylabel="observed frequency",
               title=f"exit decision at t = {decision['t'].iloc[0]:g} dB")
        ax.set_aspect("equal")
        ax.legend(loc="upper left", frameon=True)
    return fig


# -- Pareto ---------------------------------------------------------------------------------------------
def pareto_figure(frame: pd.DataFrame, width: float = COLUMN_WIDTH * 1.6) -> Figure:
    """Metric vs GMAC/s: static staircase, each dynamic policy's curve, point area by parameters, front marked."""
    _need(frame, ["run", "strategy", "policy", "t", "gmacs", "value", "metric", "num_params", "front"],
          "Pareto figure")
    metric = frame["metric"].iloc[0]
    runs = list(dict.fromkeys(frame["run"]))
    front_col = "front_all" if len(runs) > 1 and "front_all" in frame else "front"
    fig, ax = plt.subplots(figsize=(width, width * 0.72), layout="constrained")
    pmax = float(frame["num_params"].max()) or 1.0
    area = lambda p: 15 + 120 * np.asarray(p, dtype=float) / pmax  # noqa: E731 - point area ∝ parameters
    for ri, run in enumerate(runs):
        ls, marker = RUN_STYLES[ri % len(RUN_STYLES)]
        rl = _run_label(run, runs)
        fr = frame[frame["run"] == run]
        static = fr[fr["strategy"] == "static"].sort_values("gmacs")
        if len(static):
            best = np.fmax.accumulate(static["value"].to_numpy())
            ax.plot(static["gmacs"], best, drawstyle="steps-post", color=strategy_color("static"), linestyle=ls,
                    linewidth=1, label="static staircase" + rl)
            ax.scatter(static["gmacs"], static["value"], s=area(static["num_params"]), marker=marker,
                       color=strategy_color("static"), alpha=0.8, zorder=3, label="static levels" + rl)
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
                ax.plot(g["gmacs"], g["value"], linestyle=ls, color=color, label=label)
            elif strategy == "oracle":
                continue  # drawn once below as a curve over t
            else:
                ax.scatter(g["gmacs"], g["value"], s=area(g["num_params"]), marker="P" if strategy == "router"
                           else "X", color=color, zorder=3, label=label)
        oracle = others[others["strategy"] == "oracle"].sort_values("gmacs")
        if len(oracle):
            ax.plot(oracle["gmacs"], oracle["value"], linestyle=ls, marker=marker, markersize=3,
                    color=strategy_color("oracle"), label="oracle (over t)" + rl)
    front = frame[frame[front_col]]
    ax.scatter(front["gmacs"], front["value"], s=60, facecolors="none", edgecolors="black", linewidths=1.1,
               zorder=4, label="non-dominated")
    ax.set(xlabel="GMAC/s", ylabel=METRIC_LABELS.get(metric, metric),
           title=f"{METRIC_LABELS.get(metric, metric)} vs compute (area ∝ parameters)")
    ax.legend(loc="best", fontsize="small", frameon=True)
    return fig


# -- exit map -------------------------------------------------------------------------------------------
def exit_map_figure(blocks: pd.DataFrame, audio: np.ndarray | None = None, sample_rate: int | None = None,
                    note: str = "", width: float = PAGE_WIDTH) -> Figure:
    """One utterance: its spectrogram (if audio), the chosen exit per block, and per-block exit-SNR (PRESS Fig. 1)."""
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
    colors = level_colors(max(len(names), int(blocks["level"].max()) + 1))
    ax = axes[-2]
    edges = np.append(t0, t1[-1])
    ax.stairs(blocks["level"].to_numpy(), edges, color="black", linewidth=1.5, baseline=None, label="chosen level")
    if names:
        ax.set_yticks(range(len(names)), names)
    ax.set_ylim(-0.5, max(len(names) - 0.5, blocks["level"].max() + 0.5))
    ax.set_ylabel("exit")
    ax.set_title(f"policy {blocks['policy'].iloc[0]}", loc="left")
    ax = axes[-1]
    for color, col, name in zip(colors, exit_cols, names):
        ax.stairs(blocks[col].to_numpy(), edges, color=color, linewidth=0.8, alpha=0.7, baseline=None,
                  label=f"{name}")
    ax.bar((t0 + t1) / 2, blocks["exit_snr"], width=(t1 - t0) * 0.9,
           color=[colors[int(lv) % len(colors)] for lv in blocks["level"]], alpha=0.55, label="chosen exit")
    ax.axhline(float(blocks["t"].iloc[0]), color="black", linestyle="--", linewidth=1,
               label=f"t = {float(blocks['t'].iloc[0]):g} dB")
    ax.set(xlabel="time (s)", ylabel="exit-SNR (dB)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="x-small", frameon=False)
    if note:
        fig.suptitle(note, fontsize="small", color="0.35")
    return fig


# -- utilization ----------------------------------------------------------------------------------------
def utilization_figure(frame: pd.DataFrame, width: float = COLUMN_WIDTH * 1.4) -> Figure:
    """Per-utterance mean utilization vs SI-SNRi, coloured by input SNR (slimming paper, Fig. 1)."""
    _need(frame, ["utilization", "si_snri", "input_snr", "source"], "utilization figure")
    fig, ax = plt.subplots(figsize=(width, width * 0.75), layout="constrained")
    sc = ax.scatter(frame["si_snri"], frame["utilization"], c=frame["input_snr"], cmap="viridis", s=18,
                    edgecolors="none")
    fig.colorbar(sc, ax=ax, label="input SNR (dB)")
    ax.set(xlabel="SI-SNRi (dB)", ylabel="mean utilization (MACs / full)", title=f"utilization: {frame['source'].iloc[0]}")
    return fig


# -- distributions --------------------------------------------------------------------------------------
def distributions_figure(long: pd.DataFrame, kind: str = "box", width: float = PAGE_WIDTH) -> Figure:
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
    draw = sns.boxplot if kind == "box" else sns.violinplot
    for ax, metric in zip(axes.ravel(), metrics):
        g = finite[finite["metric"] == metric]
        extra = {"hue": "run", "hue_order": runs} if len(runs) > 1 else {"color": "#56B4E9"}
        draw(data=g, x="level_name", y="value", order=order, ax=ax, **extra,
             **({"fliersize": 2, "linewidth": 0.8} if kind == "box" else {"linewidth": 0.8, "cut": 0}))
        ax.set(xlabel="", ylabel=METRIC_LABELS.get(metric, metric))
        ax.tick_params(axis="x", rotation=30 if len(order) > 5 else 0)
    for ax in axes.ravel()[len(metrics):]:
        ax.set_visible(False)
    return fig
