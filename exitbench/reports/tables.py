"""The result tables of a report with a unit in every header, and their export as HTML, Markdown, LaTeX or CSV.

Every number comes from a query of ``exitbench.results.analysis`` (``level_summary``,
``policy_summary``, ``slices``, ``regret_at_equal_compute``); this module only arranges and formats
them. The CSV export is tidy (one row per run, level or policy, and metric) and carries the query's
numbers unrounded; Markdown, LaTeX and HTML show ``mean [lo, hi]`` cells rounded for reading.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from exitbench.errors import UsageError

#: a metric's header in every table and figure axis: its name and its unit
METRIC_HEADERS = {
    "si_snri": "SI-SNRi (dB)", "si_snr": "SI-SNR (dB)", "snri": "SNRi (dB)", "snr": "SNR (dB)",
    "sdri": "SDRi (dB)", "sdr": "SDR (dB)", "pesq": "PESQ (MOS-LQO)", "stoi": "STOI (0–1)",
    "estoi": "ESTOI (0–1)", "gmacs": "GMAC/s", "regret": "regret (dB)", "input_snr": "input SNR (dB)",
    "duration": "duration (s)", "utilization": "utilization (fraction of full MACs)",
}
#: the unit of each metric alone (the CSV's ``unit`` column)
METRIC_UNITS = {"si_snri": "dB", "si_snr": "dB", "snri": "dB", "snr": "dB", "sdri": "dB", "sdr": "dB",
                "pesq": "MOS-LQO", "stoi": "0-1", "estoi": "0-1", "gmacs": "GMAC/s", "regret": "dB",
                "input_snr": "dB", "duration": "s"}
FORMATS = ("markdown", "csv", "latex")


def header(metric: str) -> str:
    """The header of a metric: name and unit (an unknown metric keeps its own name)."""
    return METRIC_HEADERS.get(metric, metric)


# -- numbers as text -------------------------------------------------------------------------------
def fmt_value(v: Any, digits: int = 3) -> str:
    """A number for reading: ``digits`` decimals (scientific when tiny or huge); '–' for missing."""
    if v is None or (isinstance(v, (float, np.floating)) and not np.isfinite(v)) or v is pd.NA:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if abs(v) < 1e-9:  # rounding noise (a difference of equal numbers), not a small quantity
            v = 0.0
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 10 ** -digits):
            return f"{v:.{digits}g}"
        out = f"{v:.{digits}f}"
        return "0." + "0" * digits if out.lstrip("-") == "0." + "0" * digits else out  # no '-0.000'
    return str(v)


def degenerate(lo: float, hi: float) -> bool:
    """An interval of no width (lo == hi up to rounding noise in the last bits)."""
    return math.isclose(lo, hi, rel_tol=1e-9, abs_tol=1e-12)


def fmt_interval(mean: float, lo: float, hi: float, digits: int = 3) -> str:
    """'mean [lo, hi]'; the mean alone when the interval is missing or degenerate (lo == hi).

    Where the rounded bounds would read the same although the interval has a width, more digits are
    shown (up to six) so that no printed interval looks degenerate when it is not."""
    if mean is None or not np.isfinite(mean):
        return "–"
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)) or degenerate(float(lo), float(hi)):
        return fmt_value(mean, digits)
    d = digits
    while fmt_value(lo, d) == fmt_value(hi, d) and d < 6:
        d += 1
    return f"{fmt_value(mean, d)} [{fmt_value(lo, d)}, {fmt_value(hi, d)}]"


@dataclass(frozen=True)
class Interval:
    """A table cell: a mean and its confidence interval (NaN bounds: no interval)."""

    mean: float
    lo: float = float("nan")
    hi: float = float("nan")

    def text(self, digits: int = 3) -> str:
        return fmt_interval(self.mean, self.lo, self.hi, digits)


def has_target(spec: str) -> bool:
    """Whether a policy configuration has an exit-SNR target t of its own (oracle, probabilistic: yes)."""
    from exitbench.policies import PolicyError, parse_policy

    try:
        return "t" in parse_policy(spec).values
    except PolicyError:
        return "t=" in spec


# -- a table -----------------------------------------------------------------------------------------
@dataclass
class Table:
    """A titled table: headers (with units), rows of cells (text, numbers or Intervals), notes."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[Any]]
    text_columns: set[int] = field(default_factory=set)  # left-aligned (labels, names)
    notes: list[str] = field(default_factory=list)

    def cell(self, value: Any, digits: int = 3) -> str:
        if isinstance(value, Interval):
            return value.text(digits)
        return fmt_value(value, digits)

    def to_html(self, digits: int = 3) -> str:
        """An HTML table (escaped), its notes below as a caption paragraph."""
        def cls(i: int) -> str:
            return ' class="l"' if i in self.text_columns else ""

        head = "".join(f"<th{cls(i)}>{html.escape(c)}</th>" for i, c in enumerate(self.columns))
        body = "".join("<tr>" + "".join(f"<td{cls(i)}>{html.escape(self.cell(v, digits))}</td>"
                                        for i, v in enumerate(row)) + "</tr>" for row in self.rows)
        notes = "".join(f'<p class="tnote">{html.escape(n)}</p>' for n in self.notes)
        return (f'<div class="scroll"><table id="{html.escape(self.key)}"><thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table></div>{notes}")

    def to_markdown(self, digits: int = 3) -> str:
        """A GitHub pipe table, its title above in bold and its notes below."""
        def esc(s: str) -> str:
            return s.replace("|", "\\|")

        align = ["---" if i in self.text_columns else "---:" for i in range(len(self.columns))]
        lines = [f"**{esc(self.title)}**", "", "| " + " | ".join(esc(c) for c in self.columns) + " |",
                 "| " + " | ".join(align) + " |"]
        lines += ["| " + " | ".join(esc(self.cell(v, digits)) for v in row) + " |" for row in self.rows]
        lines += [""] + [f"_{esc(n)}_" for n in self.notes] if self.notes else []
        return "\n".join(lines) + "\n"

    def to_latex(self, digits: int = 3) -> str:
        """A booktabs ``table`` with its title as the caption and its notes as a footnote row."""
        spec = "".join("l" if i in self.text_columns else "r" for i in range(len(self.columns)))
        lines = ["% needs \\usepackage{booktabs}", "\\begin{table}[t]", "\\centering",
                 f"\\caption{{{latex_escape(self.title)}}}", f"\\label{{tab:{latex_label(self.key)}}}",
                 f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
                 " & ".join(latex_escape(c) for c in self.columns) + " \\\\", "\\midrule"]
        lines += [" & ".join(latex_escape(self.cell(v, digits)) for v in row) + " \\\\" for row in self.rows]
        lines.append("\\bottomrule")
        for n in self.notes:
            lines.append(f"\\multicolumn{{{len(self.columns)}}}{{p{{0.95\\linewidth}}}}"
                         f"{{\\footnotesize {latex_escape(n)}}} \\\\")
        lines += ["\\end{tabular}", "\\end{table}"]
        return "\n".join(lines) + "\n"


_LATEX = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_", "{": "\\{",
          "}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}", "–": "--", "−": "$-$",
          "≥": "$\\geq$", "≤": "$\\leq$", "σ": "$\\sigma$", "²": "$^2$", "·": "$\\cdot$", "×": "$\\times$",
          "ρ": "$\\rho$", "∝": "$\\propto$"}


def latex_escape(text: str) -> str:
    """Text safe inside a LaTeX tabular (special characters escaped, a few Unicode signs as math)."""
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def latex_label(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-:" else "-" for ch in text)


# -- run labels ---------------------------------------------------------------------------------------
def run_label(manifest: Mapping[str, Any], with_dataset: bool = False) -> str:
    """A run for a reader: its model and training step, with the short run id ('press-s step 9353 · 564cf48c')."""
    model = str(manifest.get("model") or manifest.get("architecture") or "model")
    if "/" in model or model.endswith(".pt"):
        model = model.rstrip("/").rsplit("/", 1)[-1]
    step = manifest.get("step")
    parts = [model] + ([f"step {int(step)}"] if step is not None and not pd.isna(step) else [])
    if with_dataset and manifest.get("dataset"):
        parts.append(f"on {manifest['dataset']}")
    return " ".join(parts) + f" · {str(manifest.get('run_id', ''))[:8]}"


def run_labels(manifests: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Labels of several runs, naming the test set too where model and step alone would repeat."""
    plain = [run_label(m).rsplit(" · ", 1)[0] for m in manifests]
    clash = len(set(plain)) < len(plain)
    return {str(m["run_id"]): run_label(m, with_dataset=clash) for m in manifests}


# -- the tables of a report ----------------------------------------------------------------------------
LEVEL_METRIC_ORDER = ("si_snri", "sdri", "pesq", "stoi", "estoi", "gmacs")
POLICY_METRIC_ORDER = ("gmacs", "si_snri", "snri", "regret")


def _runs(frame: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(frame["run"])) if len(frame) else []


def _titled(title: str, runs: Sequence[str], labels: Mapping[str, str]) -> str:
    return f"{title}: {labels[runs[0]]}" if len(runs) == 1 and runs[0] in labels else title


def level_table(summary: pd.DataFrame, labels: Mapping[str, str] | None = None, key: str = "levels",
                confidence: float = 0.95) -> Table:
    """Per run and level: 'mean [lo, hi]' of each metric (``level_summary``, one run or several)."""
    labels = labels or {}
    runs = _runs(summary)
    metrics = [m for m in LEVEL_METRIC_ORDER if m in set(summary["metric"])]
    metrics += [m for m in dict.fromkeys(summary["metric"]) if m not in metrics]
    multi = len(runs) > 1
    cols = (["run"] if multi else []) + ["level", "exit", "kind"] + [header(m) for m in metrics] + ["utterances"]
    rows = []
    for run in runs:
        g = summary[summary["run"] == run]
        for (lv, name, kind), h in g.groupby(["level", "level_name", "kind"], sort=True):
            by = {r.metric: r for r in h.itertuples(index=False)}
            cells = [Interval(by[m].mean, by[m].ci_lo, by[m].ci_hi) if m in by else float("nan") for m in metrics]
            n = int(h["n"].max()) if len(h) else 0
            rows.append(([labels.get(run, run)] if multi else []) + [int(lv), name, kind] + cells + [n])
    text = {0, 2, 3} if multi else {1, 2}
    notes = [f"Mean over utterances (each the mean over its sources) and a {confidence:.0%} percentile-bootstrap"
             " interval over utterances, seeded; GMAC/s is giga multiply-accumulates per second of audio (a"
             " static exit's is fixed, so it has no interval). PESQ: MOS-LQO, higher is better (about 1 to 4.5);"
             " STOI and ESTOI: intelligibility from 0 to 1. 'utterances' counts those with a finite value."]
    return Table(key, _titled("Per-level results", runs, labels), cols, rows, text, notes)


def policy_table(summary: pd.DataFrame, labels: Mapping[str, str] | None = None, key: str = "policies",
                 confidence: float = 0.95) -> Table:
    """Per run and policy configuration (``policy_summary``): t only where the policy has a target."""
    labels = labels or {}
    runs = _runs(summary)
    metrics = [m for m in POLICY_METRIC_ORDER if m in set(summary["metric"])]
    multi = len(runs) > 1
    cols = (["run"] if multi else []) + ["policy", "target t (dB)"] + [header(m) for m in metrics]
    rows, untargeted = [], {}
    for run in runs:
        g = summary[summary["run"] == run]
        for policy, h in g.groupby("policy", sort=False):
            by = {r.metric: r for r in h.itertuples(index=False)}
            t = float(h["t"].iloc[0])
            if not has_target(str(policy)):
                untargeted.setdefault(t, []).append(str(policy).split(":")[0])
                t_cell: Any = "–"
            else:
                t_cell = f"{t:g}"
            cells = [Interval(by[m].mean, by[m].ci_lo, by[m].ci_hi) if m in by else float("nan") for m in metrics]
            rows.append(([labels.get(run, run)] if multi else []) + [policy, t_cell] + cells)
    notes = [f"Exact replays of each policy over the recorded blocks: GMAC/s, SI-SNRi and SNRi are means over"
             f" utterances with {confidence:.0%} bootstrap intervals; regret is the mean one-sided exit-SNR"
             " regret max(0, t − exit-SNR) over blocks at the policy's own t (no interval: blocks are not"
             " independent draws)."]
    for t, names in untargeted.items():
        names = list(dict.fromkeys(names))
        one = len(names) == 1
        notes.append(f"{' and '.join(names)} ha{'s' if one else 've'} no target of {'its' if one else 'their'} own"
                     f" ('–'); {'its' if one else 'their'} regret is scored at t = {t:g} dB, the first target.")
    return Table(key, _titled("Policies (exact replays)", runs, labels), cols, rows, {0, 1} if multi else {0},
                 notes)


def equal_compute_table(frame: pd.DataFrame, labels: Mapping[str, str] | None = None,
                        key: str = "equal-compute") -> Table:
    """``regret_at_equal_compute``: the probabilistic curve against each static exit at that exit's GMAC/s."""
    labels = labels or {}
    multi = len(_runs(frame)) > 1
    cols = (["run"] if multi else []) + ["target t (dB)", "static exit", "GMAC/s", "static regret (dB)",
                                         "probabilistic regret (dB)", "difference (dB)"]
    rows = [([labels.get(r.run, r.run)] if multi else []) + [f"{r.t:g}", r.level_name, r.gmacs, r.static_regret,
                                                            r.dynamic_regret, r.difference]
            for r in frame.itertuples(index=False)]
    notes = ["Regret over blocks; the probabilistic curve (over p) is interpolated at each static exit's GMAC/s."
             " A negative difference: the probabilistic policy has less regret than the static exit for the"
             " same compute."]
    return Table(key, "Probabilistic policy vs static exits at equal compute", cols, rows,
                 {0, 2} if multi else {1}, notes)


def matched_gain_table(frame: pd.DataFrame, labels: Mapping[str, str] | None = None,
                       key: str = "matched-gain") -> Table:
    """``gain_over_matched``: each dynamic policy against its cost-matched random baseline at equal GMAC/s."""
    labels = labels or {}
    multi = len(_runs(frame)) > 1
    cols = (["run"] if multi else []) + ["target t (dB)", "policy", "at GMAC/s of", "GMAC/s", "policy regret (dB)",
                                         "cost-matched random (dB)", "95 % of draws (dB)", "gain (dB)"]
    rows = [([labels.get(r.run, r.run)] if multi else []) + [f"{r.t:g}", r.strategy, r.level_name, r.gmacs, r.regret,
                                                            r.matched_regret,
                                                            f"{r.matched_regret_lo:.3f}–{r.matched_regret_hi:.3f}",
                                                            r.gain]
            for r in frame.itertuples(index=False)]
    notes = ["The cost-matched random baseline gives the blocks the same levels as the policy, permuted at random among"
             " blocks of equal cost (so the same compute, placed by chance); its regret is the exact expectation"
             " over permutations, the band the central 95 % of the seeded draws. Both curves are interpolated at"
             " each static exit's GMAC/s. A positive gain: the policy puts the same compute where it lowers regret."]
    return Table(key, "Dynamic policies vs cost-matched random at equal compute", cols, rows,
                 {0, 2} if multi else {1}, notes)


def deciding_condition_table(frame: pd.DataFrame, key: str = "deciding-condition") -> Table:
    """``deciding_condition``: which of SNR, SNRi, SNR_ref sets each exit's block exit-SNR, in % of blocks."""
    cols = ["level", "exit", "SNR decides (%)", "SNRi decides (%)", "SNR_ref decides (%)", "blocks"]
    rows = [[int(r.level), r.level_name, 100 * r.snr, 100 * r.snri, 100 * r.snr_ref, int(r.blocks)]
            for r in frame.itertuples(index=False)]
    notes = ["A block's exit-SNR is the worst source's max(SNR, SNRi, SNR_ref); each cell is the share of blocks"
             " where that ratio is the max. SNR_ref uses P_ref = the utterance's mixture power (the default;"
             " policies take p_ref=<dBFS> for a fixed one, as PRESS uses): where it decides, a target t measures"
             " the error against the mixture's loudness rather than the estimate's SNR."]
    return Table(key, "Which condition decides the exit-SNR", cols, rows, {1}, notes)


def slice_label(lo: float, hi: float, unit: str = "") -> str:
    """A bucket '[lo, hi)' with rounding noise removed (−2.2e-16 reads as 0)."""
    def r(v: float) -> str:
        v = 0.0 if abs(v) < 1e-9 else v
        return f"{v:.3g}"

    return f"{r(lo)} to {r(hi)}{(' ' + unit) if unit else ''}"


def slices_table(frame: pd.DataFrame, labels: Mapping[str, str] | None = None, key: str = "slices") -> Table:
    """``slices``: rows are buckets (or categories), columns each level's mean of each metric, and n."""
    labels = labels or {}
    runs = _runs(frame)
    multi = len(runs) > 1
    by = str(frame["by"].iloc[0]) if len(frame) else "input_snr"
    unit = METRIC_UNITS.get(by, "")
    metrics = list(dict.fromkeys(frame["metric"]))
    levels = frame[["level", "level_name"]].drop_duplicates().sort_values("level")
    cols = (["run"] if multi else []) + [header(by) if by in METRIC_HEADERS else by]
    for m in metrics:
        cols += [f"{name} {header(m)}" if len(metrics) > 1 else f"{name}" for name in levels["level_name"]]
    cols.append("n (utterance-sources)")
    rows = []
    for run in runs:
        g = frame[frame["run"] == run]
        for bucket, h in g.groupby("bucket", sort=False):
            first = h.iloc[0]
            name = (slice_label(first["bucket_lo"], first["bucket_hi"], "")
                    if pd.notna(first["bucket_lo"]) else str(bucket))
            cells = []
            for m in metrics:
                hm = h[h["metric"] == m].set_index("level")
                cells += [float(hm.loc[lv, "mean"]) if lv in hm.index else float("nan") for lv in levels["level"]]
            rows.append(([labels.get(run, run)] if multi else []) + [name] + cells + [int(h["n"].max())])
    what = " and ".join(header(m) for m in metrics)
    title = _titled(f"{what} per exit by {header(by) if by in METRIC_HEADERS else by}", runs, labels)
    note = ("Quantile buckets [lo, hi) of the (utterance, source) rows' " + (header(by) if by in METRIC_HEADERS
            else by) + "; the last bucket includes its upper edge" if pd.notna(frame["bucket_lo"]).any()
            else f"One row per value of the metadata key {by!r}")
    notes = [f"{note}. Cells: the mean over the rows in the bucket (n: rows with a finite value)."
             + (f" The level columns hold {what}." if len(metrics) == 1 else "")]
    return Table(key, title, cols, rows, {0, 1} if multi else {0}, notes)


# -- tidy CSV ------------------------------------------------------------------------------------------
TIDY_COLUMNS = ["run", "label", "section", "level", "level_name", "kind", "policy", "t", "metric", "unit",
                "mean", "ci_lo", "ci_hi", "n"]


def tidy_results(levels: pd.DataFrame | None, policies: pd.DataFrame | None,
                 labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """``level_summary`` and ``policy_summary`` rows in one frame, unrounded (t empty without a target)."""
    labels = labels or {}
    parts = []
    if levels is not None and len(levels):
        parts.append(levels.assign(section="level", policy=pd.NA, t=np.nan))
    if policies is not None and len(policies):
        pol = policies.assign(section="policy", level=pd.NA, level_name=pd.NA, kind=pd.NA)
        pol["t"] = [t if has_target(p) else np.nan for p, t in zip(pol["policy"], pol["t"])]
        parts.append(pol)
    if not parts:
        return pd.DataFrame(columns=TIDY_COLUMNS)
    out = pd.concat(parts, ignore_index=True)
    out["label"] = out["run"].map(lambda r: labels.get(r, r))
    out["unit"] = out["metric"].map(lambda m: METRIC_UNITS.get(m, ""))
    out["level"] = out["level"].astype("Int64")
    return out[TIDY_COLUMNS]


def slices_tidy(frame: pd.DataFrame, labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The ``slices`` frame as it is, with the run's label and the metric's unit."""
    labels = labels or {}
    out = frame.copy()
    out.insert(1, "label", out["run"].map(lambda r: labels.get(r, r)))
    out.insert(out.columns.get_loc("metric") + 1, "unit", out["metric"].map(lambda m: METRIC_UNITS.get(m, "")))
    return out


def render(tables: Iterable[Table], fmt: str, digits: int = 3) -> str:
    """Tables as Markdown or LaTeX, one after the other (CSV is ``tidy_results``/``slices_tidy``)."""
    if fmt not in ("markdown", "latex"):
        raise UsageError(f"--format must be one of {list(FORMATS)}, not {fmt!r}")
    sep = "\n"
    return sep.join(t.to_markdown(digits) if fmt == "markdown" else t.to_latex(digits) for t in tables)
