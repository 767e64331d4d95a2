"""Figures have the series they should; the HTML report is self-contained and renders in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from conftest import record_local  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from exitbench.reports import build, figures as F  # noqa: E402
from exitbench.reports.audio import load_mixture  # noqa: E402
from exitbench.reports.style import figure_style, save_figure  # noqa: E402
from exitbench.results import analysis as A  # noqa: E402

TARGETS = (10.0, 15.0, 20.0)


@pytest.fixture(scope="module")
def runs(synthetic_run, tmp_path_factory):
    """The session's press-s recording, and a slimmable model with a router in a root of its own."""
    root = tmp_path_factory.mktemp("slim-reports")
    slim = record_local(root, "slimdemucs-s", "synthetic",
                        (("num_utterances", "4"), ("sample_rate", "16000"), ("num_sources", "1")), metrics=())
    return {"press": (synthetic_run.root, synthetic_run.run_id), "slim": (root, slim.run_id)}


def _labels(ax):
    return [ln.get_label() for ln in ax.lines if not ln.get_label().startswith("_")]


def test_regret_figure_one_panel_per_target_one_line_per_strategy(runs):
    root, run = runs["press"]
    with figure_style():
        fig = F.regret_figure(A.regret_curves(root, run, TARGETS))
    assert [ax.get_title() for ax in fig.axes] == ["t = 10 dB", "t = 15 dB", "t = 20 dB"]
    for ax in fig.axes:
        assert sorted(_labels(ax)) == ["dynamic", "oracle", "static", "uniform"]
        static = next(ln for ln in ax.lines if ln.get_label() == "static")
        assert len(static.get_xdata()) == 4  # one point per level
    assert sorted(t.get_text() for t in fig.axes[0].get_legend().get_texts()) == ["dynamic", "oracle", "static",
                                                                                 "uniform"]
    plt.close(fig)
    sroot, srun = runs["slim"]
    with figure_style():
        fig = F.regret_figure(A.regret_curves(sroot, srun, (15.0,)))
    assert "router" in _labels(fig.axes[0]) and len(fig.axes) == 1
    plt.close(fig)


def test_calibration_figure_has_diagonal_and_a_curve_per_exit(runs):
    root, run = runs["press"]
    with figure_style():
        fig = F.calibration_figure(A.calibration(root, run), A.decision_reliability(root, run, 15.0))
    pit, dec = fig.axes
    labels = _labels(pit)
    assert labels[0] == "calibrated" and len(labels) == 5
    assert all(re.fullmatch(r"exit\d \(KS \d\.\d\d\)", lab) for lab in labels[1:])
    diag = pit.lines[0]
    assert list(diag.get_xdata()) == [0, 1] and list(diag.get_ydata()) == [0, 1]
    assert "all levels" in _labels(dec) and dec.get_title() == "exit decision at t = 15 dB"
    plt.close(fig)


def test_pareto_figure_series(runs):
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


def test_utilization_and_distribution_figures(runs):
    sroot, srun = runs["slim"]
    frame = A.utilization(sroot, srun)
    with figure_style():
        fig = F.utilization_figure(frame)
    ax, cbar = fig.axes
    assert len(ax.collections[0].get_offsets()) == len(frame) == 4 and cbar.get_ylabel() == "input SNR (dB)"
    plt.close(fig)
    root, run = runs["press"]
    long = A.utterance_metrics(root, run, ("si_snri", "pesq", "stoi"))
    with figure_style():
        fig = F.distributions_figure(long)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_ylabel() for ax in visible] == ["SI-SNRi (dB)", "PESQ", "STOI"]
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
    return build.build_report(both, [press, slim], tmp_path_factory.mktemp("out"), TARGETS), press, slim


def test_report_is_self_contained(report):
    path, press, slim = report
    text = path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)
    assert "<script" not in text and "<link" not in text and "@import" not in text
    assert text.count('src="data:image/png;base64,') == 6 * 2 + 1  # six panels per run + the joint Pareto
    assert f"Run {press}" in text and f"Run {slim}" in text
    assert "not available" not in text  # both models have every figure (slimdemucs has variance heads too)
    assert "95% bootstrap CI" in text and "probabilistic:t=15,p=0.9" in text
    # the probabilistic curve against the static exits at equal compute, for the separator (variances)
    assert text.count("Probabilistic policy vs static exits at equal compute") >= 1
    assert "probabilistic regret (dB)" in text and "(given)" in text


def test_report_picks_targets_inside_the_runs_own_range(runs, tmp_path):
    root, press = runs["press"]
    text = build.build_report(root, [press], tmp_path).read_text()
    targets = A.auto_targets(root, press)
    assert f"targets t = {', '.join(f'{t:g}' for t in targets)} dB (auto:" in text


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
    assert dom.count("<img") == 13 and "Per-level metrics" in dom


def test_report_command(runs, tmp_path):

    from exitbench.harness.cli import app

    root, run = runs["press"]
    cli = CliRunner()
    res = cli.invoke(app, ["report", run[:6], "-r", str(root), "-o", str(tmp_path / "html"),
                           "--targets", "15"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "html" / f"report-{run[:8]}.html").is_file()
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
