"""``exitbench table`` and ``exitbench slices``: every format, numbers equal to the queries behind them."""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import pytest
from conftest import record_local
from typer.testing import CliRunner

from exitbench.harness.cli import app
from exitbench.reports import tables as T
from exitbench.results import analysis as A

cli = CliRunner()
TARGETS = (10.0, 15.0)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """press-s on four utterances of the bundled demo set (with metadata) and on synthetic mixtures, one root."""
    root = tmp_path_factory.mktemp("tables")
    demo = record_local(root, "press-s", "demo", (), metrics=("stoi",), limit=4)
    syn = record_local(root, "press-s", "synthetic", (("num_utterances", "3"),), metrics=())
    return root, demo.run_id, syn.run_id


def _run(*args: str) -> str:
    res = cli.invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res.stdout


def _markdown_rows(text: str, title_start: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the pipe table under the bold title that starts with ``title_start``."""
    block = text.split(f"**{title_start}", 1)[1].splitlines()[1:]
    start = next(i for i, ln in enumerate(block) if ln.startswith("| "))
    lines = []
    for ln in block[start:]:
        if not ln.startswith("| "):
            break
        lines.append(ln)
    split = lambda ln: [c.strip() for c in ln.strip().strip("|").split(" | ")]  # noqa: E731
    return split(lines[0]), [split(ln) for ln in lines[2:]]


def test_table_csv_is_the_queries_unrounded(root):
    r, demo, _ = root
    out = _run("table", demo[:6], "-r", str(r), "--format", "csv", "--targets", "10,15")
    got = pd.read_csv(io.StringIO(out))
    assert list(got.columns) == T.TIDY_COLUMNS
    levels = A.level_summary(r, demo)
    policies = A.policy_summary(r, demo, targets=TARGETS)
    lv = got[got["section"] == "level"].reset_index(drop=True)
    assert len(lv) == len(levels)
    for col in ("mean", "ci_lo", "ci_hi"):
        np.testing.assert_array_equal(lv[col].to_numpy(), levels[col].to_numpy())  # bit for bit
    assert list(lv["metric"]) == list(levels["metric"]) and list(lv["n"]) == list(levels["n"])
    assert set(lv.loc[lv["metric"] == "si_snri", "unit"]) == {"dB"} and set(lv.loc[lv["metric"] == "gmacs",
                                                                                  "unit"]) == {"GMAC/s"}
    pol = got[got["section"] == "policy"].reset_index(drop=True)
    assert list(pol["policy"]) == list(policies["policy"])
    for col in ("mean", "ci_lo", "ci_hi"):
        np.testing.assert_array_equal(pol[col].to_numpy(), policies[col].to_numpy())
    assert pol.loc[pol["policy"] == "uniform:seed=0", "t"].isna().all()  # no target of its own
    assert (pol.loc[pol["policy"] == "oracle:t=15", "t"] == 15.0).all()
    assert set(got["label"]) == {T.run_label(A.manifest(r, demo))}


def test_table_markdown_shows_the_queries_rounded_with_units(root):
    r, demo, _ = root
    out = _run("table", demo, "-r", str(r), "--targets", "10,15")
    head, rows = _markdown_rows(out, "Per-level results")
    assert head[:3] == ["level", "exit", "kind"] and "SI-SNRi (dB)" in head and "GMAC/s" in head
    assert not {"si_snri", "gmacs", "level_name"} & set(head)
    levels = A.level_summary(r, demo)
    si = levels[levels["metric"] == "si_snri"].set_index("level")
    gm = levels[levels["metric"] == "gmacs"].set_index("level")
    for row in rows:
        lv = int(row[0])
        assert row[head.index("SI-SNRi (dB)")] == T.fmt_interval(si.loc[lv, "mean"], si.loc[lv, "ci_lo"],
                                                                si.loc[lv, "ci_hi"])
        assert row[head.index("GMAC/s")] == T.fmt_value(gm.loc[lv, "mean"])  # static: one value, no interval
    assert len(rows) == 4
    head, rows = _markdown_rows(out, "Policies")
    assert head == ["policy", "target t (dB)", "GMAC/s", "SI-SNRi (dB)", "SNRi (dB)", "regret (dB)"]
    by = {row[0]: row for row in rows}
    assert by["uniform:seed=0"][1] == "–" and by["oracle:t=10"][1] == "10"
    pol = A.policy_summary(r, demo, targets=TARGETS)
    p = pol[(pol["policy"] == "oracle:t=15") & (pol["metric"] == "si_snri")].iloc[0]
    assert by["oracle:t=15"][3] == T.fmt_interval(p["mean"], p["ci_lo"], p["ci_hi"])
    assert "has no target of its own" in out


def test_table_latex_and_several_runs(root, tmp_path):
    r, demo, syn = root
    dest = tmp_path / "tab" / "levels.tex"
    res = cli.invoke(app, ["table", demo, syn, "-r", str(r), "--format", "latex", "--what", "levels",
                           "--metrics", "si_snri,gmacs", "--digits", "2", "-o", str(dest)])
    assert res.exit_code == 0, res.output
    tex = dest.read_text()
    assert tex.count("\\begin{tabular}{lrllrrr}") == 1 and "\\toprule" in tex and "\\bottomrule" in tex
    assert "run & level & exit & kind & SI-SNRi (dB) & GMAC/s & utterances \\\\" in tex
    body = tex.split("\\midrule", 1)[1].split("\\bottomrule", 1)[0]
    assert body.count("\\\\") == 8  # four exits of each run
    labels = T.run_labels([A.manifest(r, demo), A.manifest(r, syn)])
    # model and step repeat, so the test set names each run; LaTeX specials are escaped
    assert labels[demo].startswith("press-s step") and " on demo · " in labels[demo]
    assert T.latex_escape(labels[demo]) in tex and T.latex_escape(labels[syn]) in tex
    si = A.level_summary(r, syn, ("si_snri",))
    row = si[si["level"] == 3].iloc[0]
    assert T.fmt_interval(row["mean"], row["ci_lo"], row["ci_hi"], 2) in tex
    assert T.latex_escape("probabilistic:t=1_0") == "probabilistic:t=1\\_0" and T.latex_escape("95%") == "95\\%"


def test_slices_in_every_format_equal_the_query(root):
    r, demo, _ = root
    out = _run("slices", demo, "-r", str(r), "--by", "input_snr", "--format", "csv", "--bins", "2")
    got = pd.read_csv(io.StringIO(out))
    ref = A.slices(r, demo, "input_snr", ("si_snri",), 2)
    for col in ("bucket_lo", "bucket_hi", "mean"):
        np.testing.assert_array_equal(got[col].to_numpy(), ref[col].to_numpy())
    assert list(got["level_name"]) == list(ref["level_name"]) and list(got["n"]) == list(ref["n"])
    assert set(got["unit"]) == {"dB"}
    md = _run("slices", demo, "-r", str(r), "--by", "engine1", "--metrics", "si_snri")
    head, rows = _markdown_rows(md, "SI-SNRi (dB) per exit by engine1")
    assert head == ["engine1", "exit1", "exit2", "exit3", "exit4", "n (utterance-sources)"]
    ref = A.slices(r, demo, "engine1", ("si_snri",))
    for row in rows:
        g = ref[ref["bucket"] == row[0]].set_index("level_name")
        assert [row[head.index(n)] for n in ("exit1", "exit4")] == [T.fmt_value(g.loc[n, "mean"]) for n in
                                                                   ("exit1", "exit4")]
        assert int(row[-1]) == int(g["n"].max())
    assert sorted(r[0] for r in rows) == sorted(ref["bucket"].unique())
    tex = _run("slices", demo, "-r", str(r), "--metrics", "si_snri,stoi", "--format", "latex")
    assert "exit1 SI-SNRi (dB)" in tex and "exit4 STOI (0--1)" in tex and "input SNR (dB)" in tex
    assert re.search(r"\n-?\d[\d.]* to -?\d[\d.]* &", tex)  # buckets read 'lo to hi'


def test_bad_table_and_slices_inputs_are_one_line_exit_2(root):
    r, demo, _ = root
    for args, msg in ((["table", demo, "-r", str(r), "--format", "html"], "--format must be one of"),
                      (["table", demo, "-r", str(r), "--what", "all"], "--what must be"),
                      (["table", demo, "-r", str(r), "--metrics", "nope"], "unknown metric"),
                      (["table", "zzzz", "-r", str(r)], "no run 'zzzz'"),
                      (["slices", demo, "-r", str(r), "--by", "nope"], "no metadata key 'nope'"),
                      (["slices", demo, "-r", str(r), "--format", "xls"], "--format must be one of")):
        res = cli.invoke(app, args)
        assert res.exit_code == 2 and msg in res.output and len(res.output.strip().splitlines()) == 1, res.output
