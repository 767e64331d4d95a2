"""Assemble the figures of one or several runs: the self-contained HTML report, or vector figures for a paper."""

from __future__ import annotations

import base64
import html
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from exitbench.errors import UsageError
from exitbench.policies import PolicyError, RecordingError
from exitbench.reports import figures as F
from exitbench.reports.audio import load_mixture
from exitbench.reports.style import figure_style, save_figure
from exitbench.results import analysis as A
from exitbench.results.replays import load_block_arrays

#: what can go wrong for one panel of a report without making the rest useless
PANEL_ERRORS = (A.AnalysisError, F.FigureError, PolicyError, RecordingError)


@dataclass
class Panel:
    """One figure of a run (or the reason it could not be drawn)."""

    key: str
    title: str
    figure: Any = None  # matplotlib Figure
    reason: str = ""


@dataclass
class RunFigures:
    """Every figure and table of one run."""

    run_id: str
    manifest: dict[str, Any]
    panels: list[Panel] = field(default_factory=list)
    level_table: pd.DataFrame | None = None
    policy_table: pd.DataFrame | None = None
    equal_compute_table: pd.DataFrame | None = None
    errors: pd.DataFrame | None = None


def _panel(key: str, title: str, draw: Callable[[], Any]) -> Panel:
    try:
        return Panel(key, title, draw())
    except PANEL_ERRORS as exc:
        return Panel(key, title, None, str(exc))


def check_inputs(root: str | os.PathLike, run_ids: Sequence[str], utt_id: str | None, policy: str | None) -> None:
    """Fail early, with the reason, on an utterance or policy the user named that a run cannot show."""
    from exitbench.policies import parse_policy

    for run_id in run_ids:
        if utt_id is not None and utt_id not in A.utterance_ids(root, run_id):
            raise A.AnalysisError(f"run {run_id} has no utterance {utt_id!r}")
        if policy is not None:
            try:
                parse_policy(policy).check_requirements(load_block_arrays(root, run_id))
            except (PolicyError, RecordingError) as exc:
                raise A.AnalysisError(f"policy {policy!r} on run {run_id}: {exc}") from None


def run_figures(root: str | os.PathLike, run_id: str, targets: Sequence[float] = A.DEFAULT_TARGETS,
                utt_id: str | None = None, policy: str | None = None, paper: bool = False,
                tables: bool = True) -> RunFigures:
    """Draw one run's figures (regret, calibration, Pareto, exit map, utilization, distributions)."""
    arrays = load_block_arrays(root, run_id)
    out = RunFigures(run_id, A.manifest(root, run_id))
    t_mid = float(targets[len(targets) // 2]) if len(targets) else 15.0
    utt = utt_id or A.utterance_ids(root, run_id)[0]
    curves: list[pd.DataFrame] = []

    def regret() -> Any:
        curves.append(A.regret_curves(root, run_id, targets, arrays))
        return F.regret_figure(curves[0])

    with figure_style(paper):
        out.panels.append(_panel("regret", "Regret vs compute", regret))
        out.panels.append(_panel("calibration", "Calibration", lambda: F.calibration_figure(
            A.calibration(root, run_id, arrays=arrays), A.decision_reliability(root, run_id, t_mid, arrays=arrays))))
        out.panels.append(_panel("pareto", "Pareto front (SI-SNRi)",
                                 lambda: F.pareto_figure(A.pareto(root, [run_id], "si_snri", targets))))

        def exit_map() -> Any:
            blocks = A.exit_map(root, run_id, utt, policy, t_mid)
            mix = load_mixture(root, run_id, utt)
            return F.exit_map_figure(blocks, mix.audio, mix.sample_rate, note=mix.reason)

        out.panels.append(_panel("exit-map", f"Exit map of {utt}", exit_map))
        out.panels.append(_panel("utilization", "Utilization vs improvement",
                                 lambda: F.utilization_figure(A.utilization(root, run_id, policy, t_mid))))
        out.panels.append(_panel("distributions", "Per-level distributions",
                                 lambda: F.distributions_figure(A.utterance_metrics(root, run_id))))
    if tables:
        out.level_table = A.level_summary(root, run_id)
        out.equal_compute_table = A.regret_at_equal_compute(curves[0]) if curves else None
        try:
            out.policy_table = A.policy_summary(root, run_id, targets=targets, arrays=arrays)
        except PANEL_ERRORS:
            out.policy_table = None
        out.errors = A.errors(root, run_id)
    return out


# -- HTML ------------------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:1.5em;color:#222;
background:#fff;font-size:14px}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.5em}
h3{font-size:1.05em;margin-bottom:.3em}
.runs{display:grid;gap:1.5em;grid-template-columns:repeat(var(--n),minmax(0,1fr))}
.run{min-width:0}
img{max-width:100%;height:auto;border:1px solid #eee}
table{border-collapse:collapse;font-size:12px;margin:.4em 0;max-width:100%}
th,td{border:1px solid #ddd;padding:2px 6px;text-align:right;vertical-align:top}
th{background:#f3f3f3}td.l,th.l{text-align:left}
.note{color:#777;font-style:italic}.err{color:#b00}
pre{background:#f7f7f7;padding:.5em;overflow-x:auto;font-size:11px;max-height:18em}
.scroll{overflow-x:auto}
"""


def _png_data_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3) else f"{v:.{digits}f}"
    return str(v)


def _ci(mean: float, lo: float, hi: float) -> str:
    if not np.isfinite(mean):
        return "–"
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo == hi:
        return _fmt(mean)
    return f"{_fmt(mean)} [{_fmt(lo)}, {_fmt(hi)}]"


def _table(frame: pd.DataFrame, left: Sequence[str] = ()) -> str:
    head = "".join(f'<th class="{"l" if c in left else ""}">{html.escape(str(c))}</th>' for c in frame.columns)
    body = "".join("<tr>" + "".join(f'<td class="{"l" if c in left else ""}">{html.escape(_fmt(v))}</td>'
                                    for c, v in zip(frame.columns, row)) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def level_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Wide per-level table: 'mean [lo, hi]' per metric (a report helper over ``level_summary``)."""
    cells = summary.assign(cell=[_ci(m, lo, hi) for m, lo, hi in zip(summary["mean"], summary["ci_lo"],
                                                                       summary["ci_hi"])])
    wide = cells.pivot_table(index=["level", "level_name", "kind"], columns="metric", values="cell",
                             aggfunc="first", sort=False).reset_index()
    wide.columns.name = None
    metrics = list(dict.fromkeys(summary["metric"]))
    return wide[["level", "level_name", "kind", *[m for m in metrics if m in wide.columns]]]


def policy_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Wide per-policy table: 'mean [lo, hi]' per metric (a report helper over ``policy_summary``)."""
    cells = summary.assign(cell=[_ci(m, lo, hi) for m, lo, hi in zip(summary["mean"], summary["ci_lo"],
                                                                       summary["ci_hi"])])
    wide = cells.pivot_table(index=["policy", "t"], columns="metric", values="cell", aggfunc="first",
                             sort=False).reset_index()
    wide.columns.name = None
    return wide[["policy", "t", *[m for m in ("gmacs", "si_snri", "snri", "regret") if m in wide.columns]]]


MANIFEST_KEYS = ("run_id", "status", "model", "architecture", "checkpoint_path", "checkpoint_sha256", "step",
                 "dataset", "dataset_path", "dataset_fingerprint", "sample_rate", "num_sources", "block_size",
                 "num_levels", "num_utterances", "num_errors", "harness_version", "schema_version", "git_commit",
                 "host", "started_at", "finished_at")


def _run_section(rf: RunFigures) -> str:
    m = rf.manifest
    parts = [f'<div class="run"><h2>Run {html.escape(rf.run_id)}</h2>',
             f"<p>{html.escape(str(m.get('model')))} on {html.escape(str(m.get('dataset')))}, "
             f"{_fmt(m.get('num_utterances'))} utterances, {_fmt(m.get('num_errors'))} errors</p>"]
    if rf.level_table is not None:
        parts += ["<h3>Per-level metrics (mean, 95% bootstrap CI over utterances)</h3>",
                  _table(level_table(rf.level_table), left=("level_name", "kind"))]
    if rf.policy_table is not None and len(rf.policy_table):
        parts += ["<h3>Policies (exact replay; mean, 95% bootstrap CI; regret at t, over blocks)</h3>",
                  _table(policy_table(rf.policy_table), left=("policy",))]
    if rf.equal_compute_table is not None and len(rf.equal_compute_table):
        eq = rf.equal_compute_table.drop(columns=["run"]).rename(columns={
            "t": "t (dB)", "level_name": "static level", "gmacs": "GMAC/s", "static_regret": "static regret (dB)",
            "dynamic_regret": "probabilistic regret (dB)", "difference": "difference (dB)"})
        parts += ["<h3>Probabilistic policy vs static exits at equal compute (regret over blocks; the"
                  " probabilistic curve interpolated at each static exit's GMAC/s; negative: less regret)</h3>",
                  _table(eq.round(3), left=("static level",))]
    for p in rf.panels:
        parts.append(f'<h3 id="{html.escape(rf.run_id)}-{p.key}">{html.escape(p.title)}</h3>')
        if p.figure is not None:
            parts.append(f'<img alt="{html.escape(p.title)}" src="{_png_data_uri(p.figure)}">')
        else:
            parts.append(f'<p class="note">not available: {html.escape(p.reason)}</p>')
    parts.append("<h3>Manifest</h3>")
    kv = pd.DataFrame({"field": [k for k in MANIFEST_KEYS if k in m],
                       "value": [str(m[k]) for k in MANIFEST_KEYS if k in m]})
    parts.append(_table(kv, left=("field", "value")))
    extra = {k: m.get(k) for k in ("settings", "spec", "model_metadata") if m.get(k) is not None}
    parts.append(f"<pre>{html.escape(json.dumps(extra, indent=2, default=str))}</pre>")
    errs = rf.errors if rf.errors is not None else pd.DataFrame()
    parts.append(f"<h3>Errors ({len(errs)})</h3>")
    if len(errs):
        parts.append(_table(errs.head(200), left=("utt_id", "stage", "reason")))
        if len(errs) > 200:
            parts.append(f'<p class="note">… and {len(errs) - 200} more (query the errors table)</p>')
    else:
        parts.append('<p class="note">no utterance failed</p>')
    parts.append("</div>")
    return "\n".join(parts)


def build_report(root: str | os.PathLike, run_ids: Sequence[str], out_dir: str | os.PathLike = "reports",
                 targets: Sequence[float] | None = None, utt_id: str | None = None,
                 policy: str | None = None) -> Path:
    """Write one static, self-contained HTML report of the runs (side by side) and return its path.

    ``targets=None`` picks them inside the first run's own exit-SNR range (:func:`auto_targets`)."""
    if not run_ids:
        raise UsageError("no run to report")
    check_inputs(root, run_ids, utt_id, policy)
    chosen = "given"
    if targets is None:
        targets, chosen = A.auto_targets(root, run_ids), "auto: the quartiles of the deepest level's exit-SNR"
    runs = [run_figures(root, r, targets, utt_id, policy) for r in run_ids]
    sections = []
    if len(run_ids) > 1:
        with figure_style():
            both = _panel("pareto-all", "Pareto front of all runs (SI-SNRi)",
                          lambda: F.pareto_figure(A.pareto(root, run_ids, "si_snri", targets)))
        sections.append(f"<h2>{both.title}</h2>")
        sections.append(f'<img alt="{both.title}" src="{_png_data_uri(both.figure)}">' if both.figure is not None
                        else f'<p class="note">not available: {html.escape(both.reason)}</p>')
    title = "exitbench report: " + ", ".join(r[:12] for r in run_ids)
    doc = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
           f'<meta name="viewport" content="width=device-width, initial-scale=1">'
           f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
           f"<h1>{html.escape(title)}</h1>"
           f'<p class="note">results root {html.escape(str(Path(root).resolve()))}; targets t = '
           f"{', '.join(f'{t:g}' for t in targets)} dB ({chosen}). Every number is drawn from the recorded tables;"
           " policy metrics are exact replays.</p>"
           + "\n".join(sections)
           + f'<div class="runs" style="--n:{len(runs)}">' + "\n".join(_run_section(r) for r in runs) + "</div>"
           "</body></html>\n")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"report-{'-'.join(r[:8] for r in run_ids)}.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(path)
    return path


# -- paper figures ---------------------------------------------------------------------------------------
@dataclass
class PaperFigures:
    """The vector files written, and the figures a run could not have (with the reason)."""

    paths: list[Path]
    skipped: list[str]


def write_paper_figures(root: str | os.PathLike, run_ids: Sequence[str], out_dir: str | os.PathLike = "reports",
                        targets: Sequence[float] | None = None, utt_id: str | None = None,
                        policy: str | None = None, formats: Sequence[str] = ("pdf", "svg")) -> PaperFigures:
    """Write every figure alone as vector files (PDF + SVG) in the paper style (``targets=None``: auto)."""
    check_inputs(root, run_ids, utt_id, policy)
    if targets is None:
        targets = A.auto_targets(root, run_ids)
    out = Path(out_dir)
    paths: list[Path] = []
    skipped: list[str] = []
    for run_id in run_ids:
        rf = run_figures(root, run_id, targets, utt_id, policy, paper=True, tables=False)
        with figure_style(paper=True):
            for p in rf.panels:
                if p.figure is None:
                    skipped.append(f"{run_id[:8]} {p.key}: {p.reason}")
                    continue
                paths += save_figure(p.figure, out / f"{run_id[:8]}-{p.key}", formats)
    if len(run_ids) > 1:
        with figure_style(paper=True):
            both = _panel("pareto", "", lambda: F.pareto_figure(A.pareto(root, run_ids, "si_snri", targets)))
            if both.figure is not None:
                paths += save_figure(both.figure, out / "pareto-all-runs", formats)
    return PaperFigures(paths, skipped)
