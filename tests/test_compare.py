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
from exitbench.errors import UsageError
from exitbench.results.compare import (MetricNotRecorded, bootstrap_mean_ci, compare_runs, front_area, gate_verdicts,
                                       pareto_front, parse_tolerance, regret_at, simultaneous_bounds,
                                       simultaneous_bounds_many, verdict)
from exitbench.results.history import history
from exitbench.results.catalog import SchemaMismatch, list_runs
from exitbench.results.store import ResultStore
from exitbench.results.views import connect

runner = CliRunner()
OPTIONS = (("num_utterances", "6"), ("seconds", "1.0"))  # at 0.5 s press-s (2026-12-07) gave one silent exit4 estimate
NOISY_OPTIONS = (("num_utterances", "16"), ("seconds", "1.0"))  # enough utterances for a paired interval that
# a few-dB drop clears, whatever the spread of the base model's SI-SNRi on these synthetic mixtures
BROKEN_EXIT = 2  # the candidate's exit3 decoder outputs silence: a real, deterministic regression of one level
# (the deepest exit, which fixes the source permutation of every level, is left intact)
NOISE = 0.2  # a second candidate: Gaussian noise of 0.2 × each weight tensor's std on every weight, so every
# level and policy degrades by a few dB with utterance-to-utterance spread (correlated rows, none constant)




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
    gen = torch.Generator().manual_seed(0)
    noisy_ck = tmp / "noisy" / "press-noisy.pt"
    noisy_ck.parent.mkdir()
    sd = {k: (v + NOISE * v.float().std() * torch.randn(v.shape, generator=gen)
              if v.is_floating_point() and v.numel() > 1 else v) for k, v in ck.state_dict.items()}
    save_checkpoint(noisy_ck, ck.architecture, ck.config, sd, ck.metadata)
    root, root_b, root_n = tmp / "results", tmp / "results-b", tmp / "results-noisy"
    root_m = tmp / "results-many"
    base = record_local(root, model=str(base_ck), options=OPTIONS, metrics=(), shard_size=6)
    cand = record_local(root, model=str(cand_ck), options=OPTIONS, metrics=(), shard_size=6)
    rerun = record_local(root_b, model=str(copy_ck), options=OPTIONS, metrics=(), shard_size=6)
    noisy = record_local(root_n, model=str(noisy_ck), options=NOISY_OPTIONS, metrics=(), shard_size=8)
    many = record_local(root_m, model=str(base_ck), options=NOISY_OPTIONS, metrics=(), shard_size=8)
    return {"root": root, "root_b": root_b, "root_n": root_n, "base": base.run_id, "cand": cand.run_id,
            "rerun": rerun.run_id, "noisy": noisy.run_id, "root_m": root_m, "many": many.run_id, "base_ck": base_ck, "cand_ck": cand_ck, "tmp": tmp}


def per_utt(root, run_id):
    """Per (utt, level) SI-SNRi averaged over sources, straight from the Parquet file."""
    t = pq.read_table(root / "utterances" / f"run={run_id}" / "part-0.parquet").to_pandas()
    return t.groupby(["level_name", "utt_id"])["si_snri"].mean()


def test_gate_fires_on_a_real_regression(runs):
    result = runner.invoke(app, ["compare", runs["base"][:8], runs["cand"][:8], "-r", str(runs["root"]),
                                 "--tolerance", "0.1"])
    assert result.exit_code == 1, result.output
    assert "REGRESSION" in result.output and "Traceback" not in result.output
    # the family: 4 levels + oracle + probabilistic (press has no router), one metric
    assert "6 row(s) tested at family-wise alpha 0.05" in result.output
    assert "REGRESSION: 1 of 6 row(s)" in result.output
    cmp = compare_runs(runs["root"], runs["base"], runs["cand"], policies=["static:l=2", "static:l=0", "router"])
    lv = cmp.rows[cmp.rows["kind"] == "level"].set_index("name")
    # the broken exit is significantly worse; the untouched ones are bit-identical, hence 'same'
    # the broken exit outputs silence: NaN by the silent-estimate rule, so every utterance the base scored is
    # lost in the candidate, and that alone makes the row worse (the gate does not go blind where an exit broke)
    assert lv.loc["exit3", "verdict"] == "worse" and lv.loc["exit3", "lost"] == 6 and lv.loc["exit3", "n"] == 0
    assert any("exit3 si_snri: 6 utterance(s)" in n and "silent" in n for n in cmp.notes)
    assert list(lv.loc[["exit1", "exit2", "exit4"], "verdict"]) == ["same"] * 3
    assert (lv.loc[["exit1", "exit2", "exit4"], ["delta", "ci_low", "ci_high"]].to_numpy() == 0).all()
    # the mean delta is the paired mean of the per-utterance source means, computed independently
    d = (per_utt(runs["root"], runs["cand"]) - per_utt(runs["root"], runs["base"])).groupby("level_name").mean()
    np.testing.assert_allclose(lv.loc[d.index, "delta"], d, atol=1e-9)
    scored = lv.drop(index="exit3")
    assert (scored["n"] == 6).all()
    assert (scored["ci_low"] <= scored["delta"]).all() and (scored["delta"] <= scored["ci_high"]).all()
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
    assert "12 row(s) tested at family-wise alpha 0.05" in result.output  # 2 metrics × (4 levels + 2 policies)
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


def test_history_gives_each_step_the_numbers_of_compare(runs, tmp_path):
    """Four steps of weights drifting by noise, so every level's deltas vary and each step's gate bootstraps:
    history's batched bounds (every step's resamples in a few products) are those of `compare` of the two steps."""
    ck = resolve_model("press-s").checkpoint
    root = tmp_path / "drift"
    gen = torch.Generator().manual_seed(1)
    sd = dict(ck.state_dict)
    ids = []
    for step in (100, 200, 300, 400):
        sd = {k: (v + 0.03 * v.float().std() * torch.randn(v.shape, generator=gen)
                  if v.is_floating_point() and v.numel() > 1 else v) for k, v in sd.items()}
        path = tmp_path / f"drift-{step}.pt"
        save_checkpoint(path, ck.architecture, ck.config, sd, {**ck.metadata, "step": step})
        ids.append(record_local(root, model=str(path), options=OPTIONS, metrics=(), shard_size=6).run_id)
    hist = history(root, metrics=["si_snri", "snri"], tolerance=0.05)
    assert list(hist.runs["run_id"]) == ids
    for prev, cur, step in zip(ids, ids[1:], (200, 300, 400)):
        rows = compare_runs(root, prev, cur, metrics=["si_snri", "snri"], tolerance=0.05, policies=[],
                            curves=False).rows.set_index(["name", "metric"])
        mine = hist.table[hist.table["step"] == step].set_index(["name", "metric"]).loc[rows.index]
        assert (rows["se"] > 0).all()  # the bootstrap ran for every row
        for col in ("delta", "ci_low", "ci_high", "verdict"):
            assert list(mine[col]) == list(rows[col]), (step, col)


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


# -- the gate's error rate and power -----------------------------------------------------------------------
def _correlated_deltas(rng, rows, utts=20, rho=0.7, spread=1.0):
    """Per-utterance deltas [rows, utts] with no true change, `spread` dB spread, correlation `rho` between rows."""
    shared = rng.standard_normal((1, utts))
    return spread * (np.sqrt(rho) * shared + np.sqrt(1 - rho) * rng.standard_normal((rows, utts)))


def test_gate_holds_its_family_wise_error_rate_on_24_correlated_rows():
    """No true change on 24 rows correlated at 0.7 (20 utterances, 1 dB spread, tolerance 0: the worst case).

    400 simulated comparisons. The gate's true rate here is 0.036-0.047 (runs of 2000-4000 simulations,
    benchmarks/bench_compare_gate.py), so the Monte-Carlo sd of a 400-simulation estimate is at most
    √(0.05·0.95/400) ≈ 0.011: the bound 0.08 is ~3 sd above alpha (a gate at alpha fails it with
    < 0.5 % chance over seeds), while a gate at twice alpha would pass it with < 10 % chance and the
    old per-row rule (~20 %) practically never. The lower bound 0.01 catches a gate that never fires.
    The old rule is run on (100 of) the same data sets to show that the test tells the two apart.
    """
    rng = np.random.default_rng(2024)
    sims, gate, old = 400, 0, 0
    for s in range(sims):
        d = _correlated_deltas(rng, 24)
        gate += bool((simultaneous_bounds(d, 0.0, alpha=0.05, resamples=1000, seed=s).high < 0).any())
        if s < 100:  # the old rule needs fewer simulations to be seen far above alpha
            _, lo, hi = bootstrap_mean_ci(d, 0.95, resamples=500, seed=s)
            old += any(verdict(a, b, 0.0) == "worse" for a, b in zip(lo, hi))
    assert 0.01 <= gate / sims <= 0.08, gate / sims
    assert old / 100 >= 0.12, old / 100


def test_gate_detects_a_true_drop_among_24_correlated_rows():
    # one row of 24 drops by 1.5 dB (20 utterances, 1 dB spread): MDD at 80 % power is ~0.8 dB here
    rng = np.random.default_rng(7)
    hits, sims = 0, 60
    for s in range(sims):
        d = _correlated_deltas(rng, 24)
        d[5] -= 1.5
        b = simultaneous_bounds(d, 0.0, resamples=1000, seed=s)
        v = gate_verdicts(b, 0.0)
        hits += v[5] == "worse"
        assert np.all(b.mdd[np.isfinite(b.mdd)] > 0)
    assert hits / sims >= 0.9, hits / sims


def test_bounds_are_simultaneous_and_the_mdd_follows_its_formula():
    rng = np.random.default_rng(3)
    d = _correlated_deltas(rng, 6, rho=0.0) - 0.3
    one = simultaneous_bounds(d[:1], 0.1, resamples=2000, seed=1)
    six = simultaneous_bounds(d, 0.1, resamples=2000, seed=1)
    assert six.n_tested == 6 and one.n_tested == 1
    assert six.critical > one.critical > 1.3  # six rows need a larger simultaneous critical value than one
    assert six.high[0] > one.high[0] and six.low[0] < one.low[0]
    np.testing.assert_allclose(six.mean, d.mean(axis=1))
    np.testing.assert_allclose(six.se, d.std(axis=1, ddof=1) / np.sqrt(20))
    np.testing.assert_allclose(six.high, six.mean + six.crit_high * six.se)
    np.testing.assert_allclose(six.mdd, 0.1 + (six.crit_high + sps.norm.ppf(0.8)) * six.se)
    assert (six.low <= six.mean).all() and (six.mean <= six.high).all()
    again = simultaneous_bounds(d, 0.1, resamples=2000, seed=1)
    np.testing.assert_array_equal(again.high, six.high)  # seeded
    wider = simultaneous_bounds(d, 0.1, alpha=0.01, resamples=2000, seed=1)
    assert (wider.high > six.high).all()


def test_gate_edge_rows_constant_missing_and_few_changed_utterances():
    rng = np.random.default_rng(5)
    d = np.vstack([np.full(20, -0.5),  # every utterance equally worse: exact bounds, worse
                   np.zeros(20),  # bit-identical: exact zero
                   np.full(20, np.nan),  # not recorded: not tested
                   np.r_[2.0, np.zeros(19)],  # one utterance improved: its bootstrap-t is degenerate ...
                   rng.standard_normal(20) - 1.2])  # ... and must not hide this regression
    d[4, 3] = np.nan  # a missing pair is left out of its row only
    b = simultaneous_bounds(d, 0.1, resamples=2000, seed=0)
    v = gate_verdicts(b, 0.1)
    assert list(v) == ["worse", "same", "n/a", "same", "worse"], (v, b)
    assert b.n_tested == 4 and list(b.n) == [20, 20, 0, 20, 19]
    assert b.low[0] == b.high[0] == -0.5 and b.se[1] == 0 and np.isnan(b.high[2])
    assert b.high[3] == np.inf and b.crit_high[4] < 3  # the degenerate row keeps its own (infinite) bound only


def test_many_comparisons_at_once_have_the_bounds_of_one_call_each():
    """simultaneous_bounds_many (history's batched gate): each comparison its own family, the numbers of one call
    each, bit for bit, over batches of several sizes of utterances and more rows than one batch holds."""
    rng = np.random.default_rng(11)
    deltas, tols = [], []
    for i in range(1200):
        u = (20, 20, 35, 8)[i % 4]
        d = rng.normal(-0.1, 1.0, (int(rng.integers(1, 6)), u)) + rng.normal(0, 0.3, (1, u))
        d[rng.random(d.shape) < 0.05] = np.nan
        if i % 9 == 0:
            d[0] = -0.4  # constant row: exact bounds
        if i % 13 == 0:
            d[-1] = np.r_[np.zeros(u - 1), 2.0]  # one changed utterance: a heavy-tailed row
        deltas.append(d)
        tols.append(rng.uniform(0, 0.2, d.shape[0]))
    many = simultaneous_bounds_many(deltas, tols, resamples=2000, seed=4)
    # the comparisons of 20 utterances hold more rows than one batch (_MAX_CELLS / (2 × 2000 resamples))
    assert sum(d.shape[0] for d in deltas if d.shape[1] == 20) > (1 << 22) // 4000
    for d, t, b in zip(deltas, tols, many):
        one = simultaneous_bounds(d, t, resamples=2000, seed=4)
        for f in ("n", "mean", "se", "low", "high", "crit_low", "crit_high", "mdd", "tested"):
            np.testing.assert_array_equal(getattr(b, f), getattr(one, f), err_msg=f)
        assert b.critical == one.critical or (np.isnan(b.critical) and np.isnan(one.critical))


def test_bad_alpha_and_too_few_resamples_are_refused():
    d = np.zeros((1, 5))
    with pytest.raises(UsageError, match="alpha"):
        simultaneous_bounds(d, alpha=0.6)
    with pytest.raises(UsageError, match="at least 200"):
        simultaneous_bounds(d, alpha=0.05, resamples=100)


def test_gate_fails_a_candidate_degraded_everywhere(runs):
    """Noise on every weight: every level and policy drops by a few dB, with spread; all rows vary together."""
    result = runner.invoke(app, ["compare", runs["many"], runs["noisy"], "-r", str(runs["root_m"]),
                                 "--candidate-results", str(runs["root_n"]), "--no-curves"])
    assert result.exit_code == 1, result.output
    assert "6 row(s) tested at family-wise alpha 0.05" in result.output
    cmp = compare_runs(runs["root_m"], runs["many"], runs["noisy"], candidate_root=runs["root_n"], curves=False)
    assert (cmp.rows["se"] > 0).all() and (cmp.rows["delta"] < -2).all()
    assert (cmp.rows["verdict"] == "worse").all() and (cmp.rows["ci_high"] < -0.1).all()
    assert np.isfinite(cmp.critical) and (cmp.rows["mdd"] > 0.1).all()


# -- comparing nothing is an error ----------------------------------------------------------------------------
def test_a_metric_one_run_did_not_record_is_an_error(runs):
    result = runner.invoke(app, ["compare", runs["base"], runs["cand"], "-r", str(runs["root"]), "-m", "pesq"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "did not record pesq" in lines[0] and runs["base"] in lines[0]
    assert "no significant regression" not in result.output
    with pytest.raises(MetricNotRecorded, match="leave it out of --metric"):
        compare_runs(runs["root"], runs["base"], runs["cand"], metrics=["si_snri", "stoi"], curves=False)


def test_an_unknown_tolerance_key_is_an_error(runs):
    result = runner.invoke(app, ["compare", runs["base"], runs["cand"], "-r", str(runs["root"]),
                                 "--tolerance", "sisnri=0.2"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "'sisnri'" in lines[0] and "valid keys" in lines[0] and "si_snri" in lines[0]
    assert parse_tolerance("si_snri=0.2,0.05", ["si_snri", "pesq"]) == {"si_snri": 0.2, "pesq": 0.05}
    assert parse_tolerance(0.3, ["snri"]) == {"snri": 0.3}
    with pytest.raises(UsageError, match="valid keys are the compared metrics: si_snri"):
        parse_tolerance("pesq=0.1", ["si_snri"])  # a real metric, but not compared: as silent as a typo
    with pytest.raises(UsageError, match="negative"):
        parse_tolerance("-0.1", ["si_snri"])
