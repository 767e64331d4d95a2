"""Regression gating on real checkpoints: paired bootstrap compare, the run registry, and history over steps."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import record_local
from scipy import stats as sps
from typer.testing import CliRunner

import exitbench

from exitbench.harness.cli import app
from exitbench.models.checkpoint import save_checkpoint
from exitbench.models.registry import resolve_model
from exitbench.results.compare import (bootstrap_mean_ci, compare_runs, front_area, pareto_front, regret_at,
                                       verdict)
from exitbench.results.history import history
from exitbench.results.catalog import SchemaMismatch, list_runs
from exitbench.results.store import ResultStore
from exitbench.results.views import connect

runner = CliRunner()
OPTIONS = (("num_utterances", "6"), ("seconds", "0.5"))
BROKEN_EXIT = 2  # the candidate's exit3 decoder outputs silence: a real, deterministic regression of one level
# (the deepest exit, which fixes the source permutation of every level, is left intact)




@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """press-s at step 1000, a copy with broken deep decoders at step 2000, and a rerun of the first elsewhere."""
    tmp = tmp_path_factory.mktemp("compare")
    ck = resolve_model("press-s").checkpoint
    base_ck, cand_ck, copy_ck = tmp / "press-step1000.pt", tmp / "press-step2000.pt", tmp / "rerun" / "copy.pt"
    save_checkpoint(base_ck, ck.architecture, ck.config, ck.state_dict, {**ck.metadata, "step": 1000})
    sd = {k: (torch.zeros_like(v) if k.startswith(f"decoders.{BROKEN_EXIT}.decoder.") else v)
          for k, v in ck.state_dict.items()}
    save_checkpoint(cand_ck, ck.architecture, ck.config, sd, {**ck.metadata, "step": 2000})
    copy_ck.parent.mkdir()
    shutil.copy(base_ck, copy_ck)
    root, root_b = tmp / "results", tmp / "results-b"
    base = record_local(root, model=str(base_ck), options=OPTIONS, metrics=(), shard_size=6)
    cand = record_local(root, model=str(cand_ck), options=OPTIONS, metrics=(), shard_size=6)
    rerun = record_local(root_b, model=str(copy_ck), options=OPTIONS, metrics=(), shard_size=6)
    return {"root": root, "root_b": root_b, "base": base.run_id, "cand": cand.run_id, "rerun": rerun.run_id,
            "base_ck": base_ck, "cand_ck": cand_ck, "tmp": tmp}


def per_utt(root, run_id):
    """Per (utt, level) SI-SNRi averaged over sources, straight from the Parquet file."""
    t = pq.read_table(root / "utterances" / f"run={run_id}" / "part-0.parquet").to_pandas()
    return t.groupby(["level_name", "utt_id"])["si_snri"].mean()


def test_gate_fires_on_a_real_regression(runs):
    result = runner.invoke(app, ["compare", runs["base"][:8], runs["cand"][:8], "-r", str(runs["root"]),
                                 "--tolerance", "0.1"])
    assert result.exit_code == 1, result.output
    assert "REGRESSION" in result.output and "Traceback" not in result.output
    cmp = compare_runs(runs["root"], runs["base"], runs["cand"], policies=["static:l=2", "static:l=0", "router"])
    lv = cmp.rows[cmp.rows["kind"] == "level"].set_index("name")
    # the broken exit is significantly worse; the untouched ones are bit-identical, hence 'same'
    assert lv.loc["exit3", "verdict"] == "worse" and lv.loc["exit3", "ci_high"] < -0.1
    assert list(lv.loc[["exit1", "exit2", "exit4"], "verdict"]) == ["same"] * 3
    assert (lv.loc[["exit1", "exit2", "exit4"], ["delta", "ci_low", "ci_high"]].to_numpy() == 0).all()
    # the mean delta is the paired mean of the per-utterance source means, computed independently
    d = (per_utt(runs["root"], runs["cand"]) - per_utt(runs["root"], runs["base"])).groupby("level_name").mean()
    np.testing.assert_allclose(lv.loc[d.index, "delta"], d, atol=1e-9)
    assert (lv["n"] == 6).all()
    assert (lv["ci_low"] <= lv["delta"]).all() and (lv["delta"] <= lv["ci_high"]).all()
    # replayed policies are compared per utterance too: a static replay equals the recorded level exactly
    pol = cmp.rows[cmp.rows["kind"] == "policy"].set_index("name")
    assert list(pol.loc[["static:l=2", "static:l=0"], "verdict"]) == ["worse", "same"]
    np.testing.assert_allclose(pol.loc["static:l=2", ["base", "candidate", "delta"]].to_numpy(float),
                               lv.loc["exit3", ["base", "candidate", "delta"]].to_numpy(float), atol=1e-6)
    assert any("router" in n and "no router" in n for n in cmp.notes)  # press has no router: noted, not failed
    # curve level: SI-SNRi can only drop (the other levels and every decision are unchanged); exit-SNR
    # regret may move either way (silence has a 0 dB SNR, above what an untrained exit reaches)
    front = cmp.curves[cmp.curves["readout"] == "front_area"].iloc[0]
    assert front["delta"] <= 1e-9
    regret = cmp.curves[cmp.curves["readout"] == "regret_at"]
    assert set(regret["policy"]) >= {"static", "probabilistic"} and np.isfinite(regret["delta"]).all()


def test_gate_is_quiet_on_an_identical_rerun(runs):
    assert runs["rerun"] == runs["base"]  # same bytes under another name: same run id, recorded again elsewhere
    result = runner.invoke(app, ["compare", runs["base"], runs["rerun"], "-r", str(runs["root"]),
                                 "--candidate-results", str(runs["root_b"]), "--policy", "oracle:t=10",
                                 "--policy", "probabilistic:t=15,p=0.5", "-m", "si_snri,snri"])
    assert result.exit_code == 0, result.output
    assert "no significant regression" in result.output
    cmp = compare_runs(runs["root"], runs["base"], runs["rerun"], candidate_root=runs["root_b"],
                       metrics=["si_snri", "snri"], policies=["oracle:t=10"])
    assert set(cmp.rows["verdict"]) == {"same"} and (cmp.rows["delta"].abs() < 1e-9).all()
    assert len(cmp.rows) == 2 * (4 + 1)


def test_explicit_policy_that_neither_run_supports_is_noted(runs):
    cmp = compare_runs(runs["root"], runs["base"], runs["cand"], policies=["router"], curves=False)
    assert not (cmp.rows["kind"] == "policy").any()
    assert any("router" in n and "no router" in n for n in cmp.notes)


def test_runs_on_different_test_sets_are_refused(runs, tmp_path):
    root = tmp_path / "two-sets"
    shutil.copytree(runs["root"], root)
    other = record_local(root, model=str(runs["base_ck"]), options=(("num_utterances", "2"), ("seconds", "0.5")),
                         metrics=())
    result = runner.invoke(app, ["compare", runs["base"], other.run_id, "-r", str(root)])
    assert result.exit_code == 2 and "different test sets" in result.output
    result = runner.invoke(app, ["compare", runs["base"], "ffffffff", "-r", str(root)])
    assert result.exit_code == 2 and "no run 'ffffffff'" in result.output
    result = runner.invoke(app, ["history", "-r", str(root)])
    assert result.exit_code == 2 and "choose one with --group" in result.output
    fp = connect(root).execute("SELECT dataset_fingerprint FROM runs WHERE run_id=?", [runs["base"]]).fetchone()[0]
    assert list(history(root, group=fp[:10], model_glob="*step*").runs["run_id"]) == [runs["base"], runs["cand"]]


def test_bootstrap_matches_scipy_and_is_seeded():
    rng = np.random.default_rng(3)
    d = rng.normal(0.4, 1.0, size=(3, 40))
    mean, lo, hi = bootstrap_mean_ci(d, 0.9, resamples=4000, seed=1)
    np.testing.assert_allclose(mean, d.mean(axis=1))
    for i in range(3):
        ref = sps.bootstrap((d[i],), np.mean, confidence_level=0.9, n_resamples=4000, method="percentile",
                            random_state=np.random.default_rng(0)).confidence_interval
        assert abs(lo[i] - ref.low) < 0.05 and abs(hi[i] - ref.high) < 0.05
    again = bootstrap_mean_ci(d, 0.9, resamples=4000, seed=1)
    np.testing.assert_array_equal(again[1], lo)
    # a missing pair (NaN) is left out of that row only
    d2 = d.copy()
    d2[0, :5] = np.nan
    m2, lo2, _ = bootstrap_mean_ci(d2, 0.9, resamples=500, seed=1)
    assert m2[0] == pytest.approx(d[0, 5:].mean()) and np.isfinite(lo2[0])
    m3, lo3, hi3 = bootstrap_mean_ci(np.full((1, 4), np.nan))
    assert np.isnan(m3[0]) and np.isnan(lo3[0]) and np.isnan(hi3[0])


@pytest.mark.parametrize("low,high,tol,expect", [
    (-0.5, -0.2, 0.1, "worse"), (-0.5, -0.05, 0.1, "same"), (-0.3, 0.2, 0.1, "same"),
    (0.2, 0.5, 0.1, "better"), (-0.05, 0.05, 0.0, "same"), (np.nan, np.nan, 0.1, "n/a")])
def test_verdict_is_worse_only_when_the_whole_interval_is_below_minus_tolerance(low, high, tol, expect):
    assert verdict(low, high, tol) == expect


def test_front_area_and_regret_at_on_hand_computed_curves():
    g, q = pareto_front(np.array([1.0, 2.0, 2.5, 3.0, 4.0]), np.array([5.0, 7.0, 6.0, 9.0, 8.0]))
    assert list(g) == [1.0, 2.0, 3.0] and list(q) == [5.0, 7.0, 9.0]
    # step front over [1, 4]: 5 on [1,2), 7 on [2,3), 9 on [3,4] -> mean 7
    assert front_area(g, q, 1.0, 4.0) == pytest.approx(7.0)
    assert np.isnan(front_area(g, q, 0.5, 4.0))  # nothing reachable below the cheapest point
    # regret falls 6 -> 2 between 1 and 3 GMAC/s; a dominated point (2.5, 6.5) is ignored
    assert regret_at(np.array([1.0, 3.0, 2.5]), np.array([6.0, 2.0, 6.5]), 2.0) == pytest.approx(4.0)
    assert np.isnan(regret_at(np.array([1.0, 3.0]), np.array([6.0, 2.0]), 0.5))


def test_history_shows_both_steps_and_marks_the_regression(runs):
    hist = history(runs["root"])
    assert list(hist.runs["step"]) == [1000, 2000]
    assert set(hist.table["step"]) == {1000, 2000}
    bad = hist.regressions
    assert set(bad["name"]) == {"exit3"} and set(bad["step"]) == {2000}
    first = hist.table[hist.table["step"] == 1000]
    assert first["delta"].isna().all() and not first["regression"].any()
    fig = runs["tmp"] / "history.png"
    result = runner.invoke(app, ["history", "-r", str(runs["root"]), "--out", str(fig), "--fail-on-regression"])
    assert result.exit_code == 1, result.output
    assert "REGRESSION" in result.output and fig.stat().st_size > 5000
    assert runner.invoke(app, ["history", "-r", str(runs["root"]), "--group", "nope"]).exit_code == 2


def test_registry_filters(runs):
    root = runs["root"]
    assert list(list_runs(root, step="1500..")["run_id"]) == [runs["cand"]]
    assert list(list_runs(root, step="1000")["run_id"]) == [runs["base"]]
    sha = connect(root).execute("SELECT checkpoint_sha256 FROM runs WHERE run_id=?", [runs["cand"]]).fetchone()[0]
    assert list(list_runs(root, checkpoint=sha[:10])["run_id"]) == [runs["cand"]]
    assert set(list_runs(root, checkpoint="*step*.pt")["run_id"]) == {runs["base"], runs["cand"]}
    assert list(list_runs(root, checkpoint=str(runs["base_ck"]))["run_id"]) == [runs["base"]]
    assert len(list_runs(root, dataset="synth*", status="complete", harness_version=exitbench.__version__)) == 2
    assert list_runs(root, dataset="wsj0-2mix").empty
    assert len(list_runs(root, since="2000-01-01", until="2999-12-31")) == 2
    assert list_runs(root, until="2000-01-01").empty
    result = runner.invoke(app, ["catalog", "-r", str(root), "--step", "2000", "--csv"])
    assert result.exit_code == 0 and runs["cand"] in result.output and runs["base"] not in result.output
    result = runner.invoke(app, ["catalog", "-r", str(root), "--step", "x..y"])
    assert result.exit_code == 2 and "expected N, A..B" in result.output


def test_registry_and_compare_refuse_another_schema_version(runs, tmp_path):
    root = tmp_path / "mixed"
    shutil.copytree(runs["root"], root)
    store = ResultStore(root)
    m = store.read_manifest(runs["cand"])
    m["schema_version"] = exitbench.SCHEMA_VERSION + 1
    store.write_manifest(m)
    with pytest.raises(SchemaMismatch, match="schema version"):
        list_runs(root)
    assert len(list_runs(root, any_schema=True)) == 2
    assert list(list_runs(root, schema_version=exitbench.SCHEMA_VERSION)["run_id"]) == [runs["base"]]
    result = runner.invoke(app, ["registry", "-r", str(root)])
    assert result.exit_code == 2 and "mix schema versions" in result.output  # the old name still works
    assert "is now `exitbench catalog`" in result.output
    result = runner.invoke(app, ["compare", runs["base"], runs["cand"], "-r", str(root)])
    assert result.exit_code == 2 and f"schema version {exitbench.SCHEMA_VERSION + 1}" in result.output
