"""Figures have the series they should; the HTML report is self-contained, readable and renders in headless Chromium.

Each defect of the old report has a test that fails on it: units in headers, no 't=' for policies
without a target, degenerate intervals printed once, the manifest folded, runs labelled by model and
step, legends outside the axes, Pareto rings under the curves, every exit's colour in the exit map's
legend, utilization against input SNR, calibration with counts and intervals, audio to listen to.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from conftest import record_local  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from exitbench.reports import audio as AU  # noqa: E402
from exitbench.reports import build, figures as F, queries as Q, tables as T  # noqa: E402
from exitbench.reports.audio import load_mixture  # noqa: E402
from exitbench.reports.style import figure_style, level_colors, save_figure  # noqa: E402
from exitbench.results import analysis as A  # noqa: E402
from exitbench.results.replays import load_block_arrays, run_shape  # noqa: E402

TARGETS = (10.0, 15.0, 20.0)


@pytest.fixture(scope="module")
def runs(synthetic_run, tmp_path_factory):
    """The session's press-s recording, and a slimmable model with a router (on five noisy utterances of the
    bundled enhancement demo set, whose input SNRs differ) in a root of its own."""
    root = tmp_path_factory.mktemp("slim-reports")
    slim = record_local(root, "slimdemucs-s", "demo-enhance", (), metrics=(), limit=5)
    return {"press": (synthetic_run.root, synthetic_run.run_id), "slim": (root, slim.run_id)}


def _labels(ax):
    return [ln.get_label() for ln in ax.lines if not ln.get_label().startswith("_")]


def _legend_texts(legend):
    return [t.get_text() for t in legend.get_texts()]


def test_regret_figure_one_panel_per_target_one_line_per_strategy(runs):
    root, run = runs["press"]
    with figure_style():
        fig = F.regret_figure(A.regret_curves(root, run, TARGETS))
    assert [ax.get_title() for ax in fig.axes] == ["t = 10 dB", "t = 15 dB", "t = 20 dB"]
    names = ["budget", "budget, cost-matched random", "dynamic", "dynamic, cost-matched random", "oracle", "static",
             "uniform"]
    for ax in fig.axes:
        assert sorted(_labels(ax)) == names
        static = next(ln for ln in ax.lines if ln.get_label() == "static")
        assert len(static.get_xdata()) == 4  # one point per level
        assert ax.get_legend() is None  # no legend over the curves
        assert len(ax.collections) == 2  # one cost-matched band per dynamic curve
    assert sorted(_legend_texts(fig.legends[0])) == names
    plt.close(fig)
    sroot, srun = runs["slim"]
    with figure_style():
        fig = F.regret_figure(A.regret_curves(sroot, srun, (15.0,)))
    assert "router" in _labels(fig.axes[0]) and len(fig.axes) == 1
    plt.close(fig)


def test_calibration_figure_has_diagonal_counts_and_intervals(runs):
    root, run = runs["press"]
    rel = Q.calibration_bands(root, run)
    dec = Q.decision_bands(root, run, 15.0)
    with figure_style():
        fig = F.calibration_figure(rel, dec)
    pit, dec_ax, counts = fig.axes
    labels = _labels(pit)
    assert labels[0] == "calibrated" and len(labels) == 5
    assert all(re.fullmatch(r"exit\d \(KS \d\.\d\d, n=\d+\)", lab) for lab in labels[1:])
    diag = pit.lines[0]
    assert list(diag.get_xdata()) == [0, 1] and list(diag.get_ydata()) == [0, 1]
    assert len(pit.collections) == 4  # a shaded interval per exit
    assert dec_ax.get_title() == "exit decision at t = 15 dB"
    assert len(dec_ax.containers) == 1  # the pooled curve's error bars
    pooled = dec[dec["level"] == -1].sort_values("bin_lo")
    np.testing.assert_array_equal([b.get_height() for b in counts.patches], pooled["count"])  # the bin counts
    assert "all exits pooled (95% interval)" in _legend_texts(fig.legends[0])
    plt.close(fig)


def test_calibration_intervals_wrap_the_query(runs):
    root, run = runs["press"]
    arrays = load_block_arrays(root, run)
    rel = Q.calibration_bands(root, run, arrays=arrays)
    base = A.calibration(root, run, arrays=arrays)
    pd.testing.assert_frame_equal(rel[base.columns].reset_index(drop=True), base)  # the points are the query's
    scores = A.calibration_scores(root, run, arrays)
    assert dict(zip(rel["level"], rel["count"])) == dict(zip(scores["level"], scores["count"]))
    inner = rel[(rel["expected"] > 0) & (rel["expected"] < 1)]
    assert (inner["lo"] <= inner["observed"] + 1e-12).all() and (inner["observed"] <= inner["hi"] + 1e-12).all()
    assert (inner["hi"] > inner["lo"]).any()
    dec = Q.decision_bands(root, run, 15.0, arrays=arrays)
    ref = A.decision_reliability(root, run, 15.0, arrays=arrays)
    merged = dec.merge(ref, on=["level", "bin_lo"], suffixes=("", "_q"))
    np.testing.assert_array_equal(merged["count"], merged["count_q"])
    ok = merged[merged["count"] > 0]
    assert (ok["obs_lo"] <= ok["observed"] + 1e-12).all() and (ok["observed"] <= ok["obs_hi"] + 1e-12).all()
    assert (ok["utterances"] >= 1).all() and (ok["utterances"] <= arrays.num_utts).all()


def test_pareto_figure_series_rings_under_curves_legend_below(runs):
    root, run = runs["press"]
    frame = A.pareto(root, run, "si_snri", TARGETS)
    with figure_style():
        fig = F.pareto_figure(frame)
    ax = fig.axes[0]
    labels = _labels(ax)
    assert {"static staircase", "dynamic t=10", "dynamic t=15", "dynamic t=20", "oracle (over t)"} <= set(labels)
    colls = {c.get_label(): c for c in ax.collections}
    static = colls["static levels"]
    sizes = static.get_sizes()
    assert len(static.get_offsets()) == 4 and np.all(np.diff(sizes) > 0)  # area grows with the parameters
    front = colls["non-dominated"]
    assert len(front.get_offsets()) == int(frame["front"].sum())
    np.testing.assert_allclose(np.sort(front.get_offsets()[:, 0]), np.sort(frame.loc[frame.front, "gmacs"]))
    # the rings mark the front without covering it: small, hollow, beneath every curve
    assert front.get_sizes().max() <= 25 and front.get_facecolors().size == 0
    assert all(front.get_zorder() < ln.get_zorder() for ln in ax.lines)
    assert ax.get_legend() is None and len(fig.legends) == 1
    plt.close(fig)


def _overlap(a, b) -> bool:
    return not (a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0)


def test_several_runs_share_a_legend_outside_the_axes_with_model_and_step(runs, report):
    path, press, slim, root = report
    labels = T.run_labels([A.manifest(root, press), A.manifest(root, slim)])
    assert re.fullmatch(r"press-s step \d+ · " + press[:8], labels[press])
    assert re.fullmatch(r"slimdemucs-s step \d+ · " + slim[:8], labels[slim])
    with figure_style():
        fig = F.pareto_figure(A.pareto(root, [press, slim], "si_snri", TARGETS), run_labels=labels)
    fig.canvas.draw()
    ax, legend = fig.axes[0], fig.legends[0]
    texts = _legend_texts(legend)
    assert labels[press] in texts and labels[slim] in texts  # runs by model and step, not by hash
    assert not any(t.endswith("]") for t in texts)  # one entry per series, not series × runs
    renderer = fig.canvas.get_renderer()
    assert not _overlap(legend.get_window_extent(renderer), ax.get_window_extent(renderer))
    assert ax.get_xscale() == "log"  # 0.05 and 0.9 GMAC/s both readable
    plt.close(fig)
    curves = pd.concat([A.regret_curves(root, r, (15.0,)) for r in (press, slim)])
    with figure_style():
        fig = F.regret_figure(curves, run_labels=labels)
    fig.canvas.draw()
    legend = fig.legends[0]
    assert {labels[press], labels[slim]} <= set(_legend_texts(legend))
    assert not _overlap(legend.get_window_extent(fig.canvas.get_renderer()),
                        fig.axes[0].get_window_extent(fig.canvas.get_renderer()))
    plt.close(fig)


def test_exit_map_with_audio_and_block_only_fallback(runs):
    root, run = runs["press"]
    blocks = A.exit_map(root, run, "syn00001", "oracle:t=1")
    mix = load_mixture(root, run, "syn00001")
    assert mix.audio is not None and mix.audio.size == blocks["n"].sum()
    with figure_style():
        fig = F.exit_map_figure(blocks, mix.audio, mix.sample_rate)
    spec, levels, snr = fig.axes
    assert len(spec.images) == 1
    chosen = levels.patches[0]  # the stairs of the chosen level
    assert len(levels.patches) == 1 and chosen.get_label() == "chosen level"
    assert len(snr.containers[0]) == len(blocks)  # one bar per block
    plt.close(fig)
    with figure_style():
        fig = F.exit_map_figure(blocks, None, 8000, note="mixture audio unavailable")
    assert len(fig.axes) == 2 and fig.get_suptitle() == "mixture audio unavailable"
    plt.close(fig)


def test_exit_map_legend_lists_every_exit_colour(runs):
    root, run = runs["press"]
    blocks = A.exit_map(root, run, "syn00002", "probabilistic:t=15,p=0.9")
    with figure_style():
        fig = F.exit_map_figure(blocks, None, 8000)
    snr = fig.axes[-1]
    legend = snr.get_legend()
    names = [c.removeprefix("exit_snr_") for c in blocks.columns if c.startswith("exit_snr_")]
    assert _legend_texts(legend) == names + ["t = 15 dB"]  # one entry per exit (L = 4), then the target
    colors = [to_hex(h.get_color()) for h in legend.legend_handles[:len(names)]]
    assert colors == [to_hex(c) for c in level_colors(len(names))] and len(set(colors)) == len(names)
    bar_colors = {to_hex(b.get_facecolor()[:3]) for b in snr.containers[0]}
    assert bar_colors <= set(colors)  # every bar's colour is explained by the legend
    plt.close(fig)


def test_missing_audio_gives_a_reason(runs, tmp_path):
    root, run = runs["press"]
    # a run whose test set cannot be reopened: copy the tables, then point its spec at an unknown dataset
    import duckdb
    import pyarrow.parquet as pq

    from exitbench.results.views import fetch_arrow

    dst = tmp_path / "moved"
    shutil.copytree(root, dst)
    for f in (dst / "runs").rglob("*.parquet"):
        sql = f"SELECT * REPLACE (replace(spec, '\"synthetic\"', '\"nope-set\"') AS spec) FROM '{f}'"
        pq.write_table(fetch_arrow(duckdb.connect(), sql), f)
    mix = load_mixture(dst, run, "syn00001")
    assert mix.audio is None and "nope-set" in mix.reason
    rf = build.RunFigures(run, A.manifest(dst, run))
    build.listen(dst, run, rf, Q.pick_utterances(dst, run), load_block_arrays(dst, run), TARGETS)
    assert not rf.listening and "nope-set" in rf.audio_reason


def test_audio_refuses_a_checkpoint_that_changed_since_the_recording(runs, tmp_path):
    import duckdb
    import pyarrow.parquet as pq

    from exitbench.results.views import fetch_arrow

    root, run = runs["press"]
    dst = tmp_path / "changed"
    shutil.copytree(root, dst)
    for f in (dst / "runs").rglob("*.parquet"):
        sql = f"SELECT * REPLACE ('0123456789abcdef' AS checkpoint_sha256) FROM '{f}'"
        pq.write_table(fetch_arrow(duckdb.connect(), sql), f)
    with pytest.raises(AU.AudioUnavailable, match="no longer the one recorded"):
        AU.open_run_model(dst, run)


def test_utilization_against_input_snr_with_trend(runs):
    sroot, srun = runs["slim"]
    frame, tr = Q.utilization_vs_input_snr(sroot, srun)
    assert (frame["source"] == "dynamic").all()  # the router's own dynamic level
    with figure_style():
        fig = F.utilization_figure(frame, tr)
    ax, cbar = fig.axes
    pts = ax.collections[0].get_offsets()
    assert len(pts) == len(frame) == 5 and cbar.get_ylabel() == "SI-SNRi (dB)"
    np.testing.assert_allclose(pts[:, 0], frame["input_snr"])  # x is the input SNR (slimming paper)
    np.testing.assert_allclose(pts[:, 1], frame["utilization"])
    assert ax.get_xlabel() == "input SNR (dB)"
    from scipy import stats

    rho = stats.spearmanr(frame["input_snr"], frame["utilization"]).statistic
    assert np.isfinite(rho) and tr.rho == pytest.approx(rho) and tr.n == 5
    fit = np.polyfit(frame["input_snr"], frame["utilization"], 1)
    assert tr.slope == pytest.approx(fit[0]) and len(ax.lines) == 1  # the fitted trend
    caption = build._utilization_caption(frame, tr, run_shape(sroot, srun)["levels"])
    assert f"Spearman rank correlation ρ = {rho:.2f}" in caption and "router's dynamic level" in caption
    plt.close(fig)


def test_distribution_figures(runs):
    root, run = runs["press"]
    sroot, srun = runs["slim"]
    long = A.utterance_metrics(root, run, ("si_snri", "pesq", "stoi"))
    with figure_style():
        fig = F.distributions_figure(long)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_ylabel() for ax in visible] == ["SI-SNRi (dB)", "PESQ (MOS-LQO)", "STOI (0–1)"]
    assert [t.get_text() for t in visible[0].get_xticklabels()] == ["exit1", "exit2", "exit3", "exit4"]
    plt.close(fig)
    with pytest.raises(F.FigureError, match="NaN"):
        F.distributions_figure(A.utterance_metrics(sroot, srun, ("pesq",)))


def test_paper_style_writes_vector_text(runs, tmp_path):
    root, run = runs["press"]
    with figure_style(paper=True):
        fig = F.regret_figure(A.regret_curves(root, run, (15.0,)))
        assert plt.rcParams["svg.fonttype"] == "none" and plt.rcParams["font.size"] == 8
        paths = save_figure(fig, tmp_path / "regret", ("pdf", "svg"))
    assert [p.suffix for p in paths] == [".pdf", ".svg"]
    svg = paths[1].read_text()
    assert "<text" in svg and "t = 15 dB" in svg  # text stays text: LaTeX-friendly, searchable
    assert paths[0].read_bytes().startswith(b"%PDF")
    assert plt.rcParams["svg.fonttype"] != "none"  # the style does not leak out of its block


# -- formatting ---------------------------------------------------------------------------------------------
def test_degenerate_intervals_print_one_value():
    assert T.fmt_interval(0.869, 0.869, 0.869) == "0.869"
    assert T.fmt_interval(0.869, 0.869, 0.869 + 1e-12) == "0.869"  # float noise: the old report said [0.869, 0.869]
    assert T.fmt_interval(6.688, 4.736, 8.419) == "6.688 [4.736, 8.419]"
    assert T.fmt_interval(0.8691, 0.86912, 0.86914) == "0.86910 [0.86912, 0.86914]"  # a width: more digits
    assert T.fmt_interval(1.0, np.nan, np.nan) == "1.000" and T.fmt_interval(np.nan, 0, 1) == "–"
    assert T.fmt_value(-4.44e-16) == "0.000"


def test_level_table_units_and_static_compute_without_interval(runs):
    root, run = runs["press"]
    summary = A.level_summary(root, run)
    noisy = summary.copy()  # the bootstrap of a constant can differ from it in the last bits
    g = noisy["metric"] == "gmacs"
    noisy.loc[g, "ci_hi"] = noisy.loc[g, "ci_hi"] + 1e-12
    t = T.level_table(noisy)
    gcol = t.columns.index("GMAC/s")
    assert all("[" not in t.cell(r[gcol]) for r in t.rows)
    assert t.columns[:3] == ["level", "exit", "kind"]
    assert {"SI-SNRi (dB)", "SDRi (dB)", "PESQ (MOS-LQO)", "STOI (0–1)", "ESTOI (0–1)", "GMAC/s"} <= set(t.columns)


def test_policy_table_has_no_target_for_policies_without_one(runs):
    root, run = runs["press"]
    summary = A.policy_summary(root, run, targets=TARGETS)
    t = T.policy_table(summary)
    tcol = t.columns.index("target t (dB)")
    by = {r[0]: t.cell(r[tcol]) for r in t.rows}
    assert by["uniform:seed=0"] == "–"  # the old table printed t=10.000
    assert by["oracle:t=15"] == "15" and by["probabilistic:t=20,p=0.9,condition=all"] == "20"
    assert any("uniform has no target of its own" in n and "t = 10 dB" in n for n in t.notes)
    tidy = T.tidy_results(None, summary)
    assert tidy.loc[tidy["policy"] == "uniform:seed=0", "t"].isna().all()


# -- the HTML report -------------------------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    """One report of two runs side by side (both in one root: the press-s root gets a copy of the slim run)."""
    root, press = runs["press"]
    sroot, slim = runs["slim"]
    both = tmp_path_factory.mktemp("both")
    for r, run in ((root, press), (sroot, slim)):
        for table in r.iterdir():
            if (table / f"run={run}").is_dir():
                shutil.copytree(table / f"run={run}", both / table.name / f"run={run}")
    return build.build_report(both, [press, slim], tmp_path_factory.mktemp("out"), TARGETS), press, slim, both


class _Tables(HTMLParser):
    """Every table's header and cell texts by id; every id and link of the page; figures and captions."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict[str, list]] = {}
        self.ids: list[str] = []
        self.links: list[str] = []
        self.stack: list[str | None] = []
        self.cell: list[str] | None = None
        self.captions: list[str] = []
        self.in_caption = False
        self.audio = 0
        self.figures = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "a" and a.get("href", "").startswith("#"):
            self.links.append(a["href"][1:])
        if tag == "table":
            self.stack.append(a.get("id"))
            if a.get("id"):
                self.tables[a["id"]] = {"th": [], "rows": []}
        elif tag == "tr" and self.stack and self.stack[-1]:
            self.tables[self.stack[-1]]["rows"].append([])
        elif tag in ("th", "td"):
            self.cell = []
        elif tag == "figcaption":
            self.in_caption, self.captions = True, self.captions + [""]
        elif tag == "audio":
            self.audio += 1
        elif tag == "figure":
            self.figures += 1

    def handle_endtag(self, tag):
        if tag == "table" and self.stack:
            self.stack.pop()
        elif tag in ("th", "td") and self.cell is not None and self.stack and self.stack[-1]:
            text = "".join(self.cell).strip()
            t = self.tables[self.stack[-1]]
            (t["th"] if tag == "th" else t["rows"][-1]).append(text)
            self.cell = None
        elif tag == "figcaption":
            self.in_caption = False

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)
        if self.in_caption:
            self.captions[-1] += data


def _parse(text: str) -> _Tables:
    p = _Tables()
    p.feed(text)
    return p


def test_report_is_self_contained(report):
    path, press, slim, _ = report
    text = path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)
    assert "<script" not in text and "<link" not in text and "@import" not in text
    assert text.count('src="data:image/png;base64,') == 6 * 2 + 1  # six panels per run + the joint Pareto
    assert "not available" not in text  # both models have every figure (slimdemucs has variance heads too)
    assert "95% percentile-bootstrap interval" in text and "probabilistic:t=15,p=0.9" in text
    # the probabilistic curve against the static exits at equal compute, for the separator (variances)
    assert text.count("Probabilistic policy vs static exits at equal compute") >= 1
    assert "probabilistic regret (dB)" in text and "(given)" in text


def test_report_has_contents_and_a_caption_under_every_figure(report):
    path, press, slim, _ = report
    page = _parse(path.read_text())
    assert len(page.ids) == len(set(page.ids))  # anchors are unique across runs
    assert page.links and set(page.links) <= set(page.ids)  # every contents entry leads somewhere
    toc = path.read_text().split('<nav class="toc" id="contents">', 1)[1].split("</nav>", 1)[0]
    for run in (press, slim):
        for part in ("levels", "policies", "regret", "calibration", "pareto", "exit-map", "utilization",
                     "distributions", "slices", "listen", "manifest", "errors"):
            assert f'href="#run-{run[:12]}-{part}"' in toc
    assert page.figures == 13 and len(page.captions) == 13
    assert [c.split(".", 1)[0] for c in page.captions] == [f"Figure {i}" for i in range(1, 14)]
    assert all(len(c) > 150 for c in page.captions)  # what is plotted and how to read it
    caps = " ".join(page.captions)
    assert "Spearman rank correlation ρ =" in caps and "bars below count" in caps and "open rings" in caps


RAW = {"si_snri", "sdri", "snri", "pesq", "stoi", "estoi", "gmacs", "regret", "level_name", "t", "mean", "ci_lo"}


def test_report_headers_carry_units(report):
    path, press, slim, _ = report
    page = _parse(path.read_text())
    for run in (press, slim):
        levels = page.tables[f"run-{run[:12]}-levels-table"]["th"]
        policies = page.tables[f"run-{run[:12]}-policies-table"]["th"]
        assert not RAW & set(levels + policies), (levels, policies)  # the old report had si_snri, gmacs, t
        assert "SI-SNRi (dB)" in levels and "GMAC/s" in levels and "STOI (0–1)" in levels
        assert policies == ["policy", "target t (dB)", "GMAC/s", "SI-SNRi (dB)", "SNRi (dB)", "regret (dB)"]
        rows = page.tables[f"run-{run[:12]}-policies-table"]["rows"]
        untargeted = [r for r in rows if r and r[0].split(":")[0] in ("uniform", "router")]
        assert untargeted and all(r[1] == "–" for r in untargeted)
        gm = levels.index("GMAC/s")
        static = [r for r in page.tables[f"run-{run[:12]}-levels-table"]["rows"] if r and r[2] == "static"]
        assert static and all("[" not in r[gm] for r in static)  # a static exit's compute: one number
        slices = page.tables[f"run-{run[:12]}-slices-0"]["th"]
        assert slices[0] == "input SNR (dB)" and slices[-1] == "n (utterance-sources)"


def test_report_folds_and_summarises_the_manifest(report):
    path, press, slim, root = report
    text = path.read_text()
    assert "<pre" not in text and "&quot;settings&quot;" not in text  # no raw JSON dump
    for run in (press, slim):
        block = text.split(f'<details id="run-{run[:12]}-manifest-details">', 1)[1]
        summary = html.unescape(block.split("</summary>", 1)[0])
        m = A.manifest(root, run)
        for part in (m["model"], f"step {m['step']}", f"test set {m['dataset']}",
                     f"{m['num_utterances']} utterances", "recorded on cpu"):
            assert part in summary, (part, summary)
    labels = T.run_labels([A.manifest(root, press), A.manifest(root, slim)])
    assert f'<h2 id="run-{press[:12]}">{html.escape(labels[press])}</h2>' in text
    assert html.escape(labels[slim]) in text.split("<title>", 1)[1].split("</title>", 1)[0]


def test_report_plays_every_level_and_policy(report):
    path, press, slim, root = report
    text = path.read_text()
    page = _parse(text)
    uris = re.findall(r'<audio controls preload="metadata" src="(data:audio/[^"]+)"', text)
    assert page.audio == len(uris) > 0
    assert all(u.startswith("data:audio/ogg;codecs=opus;base64,") for u in uris)  # libsndfile here has Opus
    for run, sources, levels in ((press, 2, 4), (slim, 1, 5)):
        a = f"run-{run[:12]}-listen"
        section = text.split(f'id="{a}"', 1)[1].split('-manifest"', 1)[0]
        picks = Q.pick_utterances(root, run)
        assert list(picks["role"]) == ["best", "median", "worst"]
        for utt in picks["utt_id"]:
            assert f'id="{a}-{utt}"' in section
        rows = section.count("<tr>") - section.count("<thead>")
        assert rows >= 3 * (2 + levels + 2)  # mixture, references, every level, at least two policies
        assert "the re-computed estimates" in section and "Ogg/Opus" in section


def test_audio_is_the_models_output_and_stitching_is_the_replay(runs):
    from exitbench.metrics import si_snr
    from exitbench.policies import parse_policy
    from exitbench.policies.replay import replay

    root, run = runs["press"]
    arrays = load_block_arrays(root, run)
    model = AU.open_run_model(root, run)
    rec = AU.recompute(root, run, "syn00002", model)
    assert rec.estimates.shape[:2] == (4, 2) and rec.max_deviation_db < 1e-6  # the recording's own numbers
    policy = parse_policy("probabilistic:t=15,p=0.9")
    chosen = policy(arrays, 0)
    _, per_utt = replay(arrays, chosen, 15.0)
    k = arrays.utt_ids.index("syn00002")
    mask = arrays.utt == k
    out = AU.stitch(rec.estimates, arrays.start[mask], arrays.n[mask], chosen[mask])
    row = per_utt.set_index("utt_id").loc["syn00002"]
    mix = [float(si_snr(rec.mixture, rec.sources[s])) for s in range(2)]
    for s in range(2):
        assert float(si_snr(out[s], rec.sources[s])) - mix[s] == pytest.approx(row[f"si_snri_s{s}"], abs=1e-6)
    codec = AU.choose_codec(rec.sample_rate)
    gain = AU.common_gain([rec.mixture, rec.sources, rec.estimates])
    uri = AU.encode(rec.estimates[3, 0], rec.sample_rate, codec, gain)
    import soundfile as sf

    decoded, sr = sf.read(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    n = min(len(decoded), rec.estimates.shape[-1])
    assert sr == rec.sample_rate and abs(len(decoded) - rec.estimates.shape[-1]) < sr // 50
    assert np.corrcoef(decoded[:n], rec.estimates[3, 0, :n] * gain)[0, 1] > 0.9  # the clip is that estimate
    assert len(uri) < 40 * 1000 * rec.mixture.size / rec.sample_rate / 8 * 4 / 3  # under 40 kbit/s


def test_clips_encoded_in_threads_are_the_clips_encoded_one_by_one(runs):
    """The listening table's clips come back in their own places, whatever thread encoded them (decoded: Ogg
    gives every stream a random serial number, so the bytes of two encodings of one clip differ)."""
    import soundfile as sf

    root, run = runs["press"]
    decoded = {}
    for workers in (1, 3):
        rf = build.RunFigures(run, A.manifest(root, run))
        build.listen(root, run, rf, Q.pick_utterances(root, run), load_block_arrays(root, run), TARGETS,
                     workers=workers)
        decoded[workers] = [None if u is None else sf.read(io.BytesIO(base64.b64decode(u.split(",", 1)[1])))[0]
                            for item in rf.listening for clip in item.clips for u in clip.uris]
    assert len(decoded[1]) == len(decoded[3]) > 10 and sum(d is not None for d in decoded[1]) > 10
    for a, b in zip(decoded[1], decoded[3]):
        assert (a is None and b is None) or np.array_equal(a, b)


def test_utt_option_chooses_the_utterances_to_hear(runs):
    root, run = runs["slim"]
    ids = A.utterance_ids(root, run)
    rf = build.run_figures(root, run, TARGETS, [ids[2], ids[0]], tables=False, audio=True)
    assert [li.utt_id for li in rf.listening] == [ids[2], ids[0]]
    assert rf.panels[3].title == f"Exit map of {ids[2]}"
    assert all(li.clips and li.max_deviation_db < 1e-6 for li in rf.listening)
    names = [c.label for c in rf.listening[0].clips]
    assert names[:2] == ["mixture", "reference"] and "dynamic estimate" in names and "router output" in names
    router = next(c for c in rf.listening[0].clips if c.label == "router output")
    assert router.uris == [None] and "same audio as dynamic" in router.note  # not encoded twice


def test_report_picks_targets_inside_the_runs_own_range(runs, tmp_path):
    root, press = runs["press"]
    text = build.build_report(root, [press], tmp_path, audio=False).read_text()
    targets = A.auto_targets(root, press)
    assert f"targets t = {', '.join(f'{t:g}' for t in targets)} dB (auto:" in text
    assert "<audio" not in text


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    path = report[0]
    shot = tmp_path / "shot.png"
    args = [CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    res = subprocess.run([*args, "--enable-logging=stderr", "--v=0", f"--screenshot={shot}",
                          "--window-size=1200,2000", path.as_uri()], capture_output=True, text=True, timeout=60)
    console = [ln for ln in res.stderr.splitlines() if "CONSOLE" in ln]
    assert res.returncode == 0 and not console, console or res.stderr[-2000:]
    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels.std() > 0.05 and (pixels.min(axis=2) < 0.9).mean() > 0.05  # not blank: text and figures drawn
    dom = subprocess.run([*args, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=60).stdout
    page = _parse(dom)
    assert dom.count("<img") == 13 and "Per-level results" in dom
    assert '<nav class="toc" id="contents">' in dom and set(page.links) <= set(page.ids)
    assert len(page.captions) == 13 and page.audio > 0
    assert "Utilization vs input SNR (router)" in dom and "Calibration of the predicted uncertainty" in dom


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_chromium_decodes_the_embedded_audio(report, tmp_path):
    text = report[0].read_text()
    uris = re.findall(r'<audio[^>]*src="(data:audio/[^"]+)"', text)
    picked = [uris[0], uris[len(uris) // 2], uris[-1]]
    probe = tmp_path / "probe.html"
    probe.write_text("""<!DOCTYPE html><html><body><div id="out">pending</div><script>
const srcs = %s, res = []; let done = 0;
srcs.forEach((s, i) => { const a = new Audio(); a.preload = 'auto';
  a.addEventListener('loadedmetadata', () => { res[i] = a.duration; fin(); });
  a.addEventListener('error', () => { res[i] = -1; fin(); }); a.src = s; });
function fin() { if (++done === srcs.length) document.getElementById('out').textContent = JSON.stringify(res); }
</script></body></html>""" % json.dumps(picked))
    args = [CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000",
            "--dump-dom", probe.as_uri()]
    dom = subprocess.run(args, capture_output=True, text=True, timeout=90).stdout
    out = re.search(r'<div id="out">([^<]*)</div>', dom).group(1)
    durations = json.loads(out)
    assert len(durations) == 3 and all(d > 0.2 for d in durations), out  # every clip decodes, with its length


def test_demo_sized_report_stays_under_3_mb(tmp_path):
    """The bundled demo set (20 two-speaker mixtures at 8 kHz) with press-s: figures, tables and audio."""
    outcome = record_local(tmp_path / "results", "press-s", "demo", (), metrics=("stoi",))
    path = build.build_report(tmp_path / "results", [outcome.run_id], tmp_path / "reports")
    text = path.read_text()
    assert path.stat().st_size < 3_000_000, path.stat().st_size
    assert text.count("<audio") >= 3 * (1 + 2 + 4 * 2)  # best, median, worst: mixture, references, every exit
    assert text.count("<figcaption>") == 6


def test_report_command(runs, tmp_path):

    from exitbench.harness.cli import app

    root, run = runs["press"]
    cli = CliRunner()
    res = cli.invoke(app, ["report", run[:6], "-r", str(root), "-o", str(tmp_path / "html"),
                           "--targets", "15", "--utt", "syn00003"])
    assert res.exit_code == 0, res.output
    html_text = (tmp_path / "html" / f"report-{run[:8]}.html").read_text()
    assert f'id="run-{run[:12]}-listen-syn00003"' in html_text and "Exit map of syn00003" in html_text
    res = cli.invoke(app, ["report", run, "-r", str(root), "-o", str(tmp_path / "paper"), "--paper",
                           "--targets", "15"])
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in (tmp_path / "paper").iterdir())
    assert len(names) == 12 and f"{run[:8]}-regret.pdf" in names and f"{run[:8]}-exit-map.svg" in names
    for args, msg in ((["report", "zzzz", "-r", str(root)], "no run 'zzzz'"),
                      (["report", run, "-r", str(root), "--utt", "nope"], "no utterance 'nope'"),
                      (["report", run, "-r", str(root), "-p", "router"], "router needs"),
                      (["report", run, "-r", str(root), "--targets", "x"], "comma-separated")):
        res = cli.invoke(app, args)
        assert res.exit_code == 2 and msg in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_report_says_which_condition_decides_the_exit_snr(report):
    """The exit-SNR is mostly the loudness condition under the default P_ref: the report says so per exit."""
    path, press, slim, _ = report
    text = path.read_text()
    assert text.count("Which condition decides the exit-SNR") >= 2  # a table per run (and its contents entry)
    assert "SNR_ref decides (%)" in text and "p_ref=&lt;dBFS&gt;" in text or "p_ref=<dBFS>" in text
