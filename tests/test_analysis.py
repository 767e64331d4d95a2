"""The analysis queries behind the figures, on real recordings: rows, exactness, flags, intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import record_local

from exitbench.policies.calibration import ks_distance, pit_values
from exitbench.results import analysis as A
from exitbench.results.replays import load_block_arrays, replay_run
from exitbench.results.views import connect

TARGETS = (10.0, 15.0, 20.0)


@pytest.fixture(scope="module")
def press(synthetic_run):
    """(root, run id, levels frame) of the session's press-s recording (variance heads, no router)."""
    con = connect(synthetic_run.root)
    levels = con.execute("SELECT * FROM levels WHERE run = ? ORDER BY level", [synthetic_run.run_id]).df()
    return synthetic_run.root, synthetic_run.run_id, levels


@pytest.fixture(scope="module")
def slim(tmp_path_factory):
    """A slimmable enhancer with a router and a dynamic level, recorded without the slow metrics."""
    root = tmp_path_factory.mktemp("slim")
    out = record_local(root, "slimdemucs-s", "synthetic",
                       (("num_utterances", "4"), ("sample_rate", "16000"), ("num_sources", "1")), metrics=())
    return root, out.run_id


@pytest.fixture(scope="module")
def slim_pair(slim):
    """A second recording in the slim root (another test set) for frames that span several runs."""
    root, first = slim
    second = record_local(root, "slimdemucs-s", "synthetic", (("num_utterances", "3"), ("sample_rate", "16000"),
                                                             ("num_sources", "1"), ("seed", "1")), metrics=())
    return root, first, second.run_id


def test_regret_curves_have_every_strategy_per_target(press):
    root, run, levels = press
    f = A.regret_curves(root, run, TARGETS)
    assert set(f["strategy"]) == {"dynamic", "static", "oracle", "uniform", "budget"}
    assert f.attrs["skipped"].keys() == {"router"}  # press-s has no router
    dyn = f[f["strategy"].isin(["dynamic", "budget", "oracle"])]
    assert dyn["matched_regret"].notna().all() and f.loc[f.strategy == "static", "matched_regret"].isna().all()
    assert (dyn["matched_regret_lo"] <= dyn["matched_regret_hi"]).all()
    for t in TARGETS:
        at = f[f["t"] == t]
        static = at[at["strategy"] == "static"].sort_values("level")
        assert static["level"].tolist() == levels["level"].tolist()
        np.testing.assert_allclose(static["gmacs"], levels["gmacs"], rtol=1e-9)
        assert static["level_name"].tolist() == levels["name"].tolist()
        assert len(at[at["strategy"] == "dynamic"]) == 101 and at.loc[at.strategy == "oracle", "regret"].size == 1
    # the oracle exits with zero regret where any level reaches t, else at the deepest: never above the deepest
    for t in TARGETS:
        at = f[f["t"] == t]
        deepest = at.loc[(at.strategy == "static") & (at.level == len(levels) - 1), "regret"].iloc[0]
        assert at.loc[at.strategy == "oracle", "regret"].iloc[0] <= deepest + 1e-9


def test_router_strategy_present_with_a_router(slim):
    root, run = slim
    f = A.regret_curves(root, run, (15.0,))
    assert "router" in set(f["strategy"]) and not f.attrs["skipped"]


def _brute_front(cost, value):
    out = []
    for i in range(len(cost)):
        if not (np.isfinite(cost[i]) and np.isfinite(value[i])):
            out.append(False)
            continue
        dom = (cost <= cost[i]) & (value >= value[i]) & ((cost < cost[i]) | (value > value[i]))
        out.append(not dom.any())
    return np.array(out)


def test_non_dominated_on_a_hand_made_frame():
    cost = np.array([1.0, 2.0, 2.0, 3.0, 0.5, 4.0, 4.0, np.nan, 5.0])
    value = np.array([1.0, 3.0, 2.0, 2.5, 0.2, 3.0, 5.0, 9.0, np.nan])
    flags = A.non_dominated(cost, value)
    assert flags.tolist() == [True, True, False, False, True, False, True, False, False]
    # ties: two identical points dominate neither each other nor are dropped
    assert A.non_dominated([1.0, 1.0, 2.0], [3.0, 3.0, 1.0]).tolist() == [True, True, False]
    rng = np.random.default_rng(0)
    c, v = rng.integers(0, 8, 300).astype(float), rng.integers(0, 8, 300).astype(float)
    np.testing.assert_array_equal(A.non_dominated(c, v), _brute_front(c, v))


def test_pareto_static_points_match_replay_and_flags(press, slim):
    root, run, levels = press
    f = A.pareto(root, [run], "si_snri", TARGETS)
    static = f[f["strategy"] == "static"].sort_values("level")
    assert len(static) == len(levels)
    assert static["num_params"].tolist() == levels["params"].tolist()
    # utterances-table means agree with the exact replay of static policies (two independent paths)
    curves = A.regret_curves(root, run, TARGETS)
    replayed = curves[(curves.strategy == "static") & (curves.t == 10.0)].sort_values("level")["si_snri"]
    np.testing.assert_allclose(static["value"], replayed, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(f["front"], _brute_front(f["gmacs"].to_numpy(), f["value"].to_numpy()))
    assert (f.loc[f.strategy != "static", "num_params"] == levels["params"].max()).all()
    assert len(f[f.strategy == "dynamic"]) == 101 * len(TARGETS)



def test_pareto_of_several_runs(slim_pair):
    root, first, second = slim_pair
    g = A.pareto(root, [first, second], "si_snri", TARGETS)
    assert set(g["run"]) == {first, second}
    for run, fr in g.groupby("run"):
        assert {"router", "dynamic", "oracle", "uniform"} <= set(fr["strategy"]) and (fr.strategy == "static").sum() == 4
        assert (fr["level_name"] == "dynamic").sum() == 1  # the recorded dynamic level, from the utterances table
        np.testing.assert_array_equal(fr["front"], _brute_front(fr["gmacs"].to_numpy(), fr["value"].to_numpy()))
    np.testing.assert_array_equal(g["front_all"], _brute_front(g["gmacs"].to_numpy(), g["value"].to_numpy()))
    assert not (g["front_all"] & ~g["front"]).any()  # on the overall front implies on its run's front


def test_pareto_reuses_given_regret_curves(slim_pair, monkeypatch):
    """A report draws the regret curves first and hands them on: the fronts are the same, and none is swept again."""
    root, first, second = slim_pair
    fresh = A.pareto(root, [first, second], "si_snri", TARGETS)
    curves = {r: A.regret_curves(root, r, TARGETS) for r in (first, second)}  # with the matched baseline
    monkeypatch.setattr(A, "regret_curves", lambda *a, **k: pytest.fail("swept again"))
    pd.testing.assert_frame_equal(A.pareto(root, [first, second], "si_snri", TARGETS, curves=curves), fresh)


def test_pareto_of_a_non_sum_metric_has_static_points_only(press):
    root, run, levels = press
    f = A.pareto(root, run, "pesq")
    assert len(f) == len(levels) and set(f["strategy"]) == {"static"} and "note" in f.attrs
    with pytest.raises(A.AnalysisError, match="unknown metric"):
        A.pareto(root, run, "mos")


def test_level_summary_means_and_seeded_intervals(press):
    root, run, levels = press
    s = A.level_summary(root, run, ("si_snri", "pesq", "gmacs"), n_boot=500, seed=3)
    assert len(s) == 3 * len(levels)
    utt = connect(root).execute("SELECT level, utt_id, avg(si_snri) AS v FROM utterances WHERE run = ?"
                                " GROUP BY ALL", [run]).df()
    expected = utt.groupby("level")["v"].mean()
    got = s[s.metric == "si_snri"].set_index("level")["mean"]
    np.testing.assert_allclose(got.sort_index(), expected.sort_index(), rtol=1e-12)
    assert ((s["ci_lo"] <= s["mean"] + 1e-12) & (s["mean"] <= s["ci_hi"] + 1e-12)).all()
    gm = s[s.metric == "gmacs"].sort_values("level")
    np.testing.assert_allclose(gm["mean"], levels["gmacs"], rtol=1e-9)
    assert (gm["ci_hi"] - gm["ci_lo"] < 1e-9).all()  # static levels spend the same per second everywhere
    pd.testing.assert_frame_equal(s, A.level_summary(root, run, ("si_snri", "pesq", "gmacs"), n_boot=500, seed=3))


def test_bootstrap_ci_matches_the_normal_interval():
    v = np.random.default_rng(1).normal(2.0, 3.0, 2000)
    lo, hi = A.bootstrap_ci(v, n_boot=4000, seed=0)
    half = 1.96 * v.std(ddof=1) / np.sqrt(v.size)
    assert abs((hi - lo) / 2 - half) / half < 0.08
    assert abs((hi + lo) / 2 - v.mean()) < 0.1 * half
    assert np.isnan(A.bootstrap_ci(np.array([np.nan]))[0])


def test_calibration_frames(press):
    root, run, levels = press
    arrays = load_block_arrays(root, run)
    rel = A.calibration(root, run, bins=10, arrays=arrays)
    assert len(rel) == len(levels) * 11
    u = pit_values(arrays)
    for lv, g in rel.groupby("level"):
        assert np.all(np.diff(g["observed"]) >= 0) and g["observed"].iloc[-1] == 1.0
        assert g["ks"].iloc[0] == pytest.approx(ks_distance(u[:, lv]))
    dec = A.decision_reliability(root, run, 15.0, bins=5, arrays=arrays)
    per = dec.groupby("level")["count"].sum()
    assert (per.drop(-1) == arrays.num_blocks).all() and per[-1] == arrays.num_blocks * len(levels)
    ok = dec["count"] > 0
    assert dec.loc[ok, "observed"].between(0, 1).all() and dec.loc[~ok, "observed"].isna().all()


def test_slices_by_input_snr_duration_and_metadata(press):
    root, run, levels = press
    s = A.slices(root, run, "input_snr", ("si_snri", "pesq"), bins=3)
    assert set(s["metric"]) == {"si_snri", "pesq"}
    # every (utterance, source) row lands in exactly one bucket per level: 5 utterances × 2 sources
    assert (s[s.metric == "si_snri"].groupby("level")["n"].sum() == 10).all()
    d = A.slices(root, run, "duration", bins=[0.0, 2.0, 10.0])
    assert set(d["bucket_lo"]) <= {0.0, 2.0}
    m = A.slices(root, run, "gains_db")
    assert m["bucket"].nunique() == 5 and m["bucket_lo"].isna().all()
    with pytest.raises(A.AnalysisError, match="gains_db"):
        A.slices(root, run, "speaker")


def test_exit_map_agrees_with_a_whole_run_replay(press):
    root, run, levels = press
    utt = "syn00002"
    spec = "probabilistic:t=10,p=0.5"
    m = A.exit_map(root, run, utt, spec)
    full = replay_run(root, run, spec).per_block
    full = full[full["utt_id"].astype(str) == utt]
    assert m["block"].tolist() == list(range(len(full)))
    assert m["level"].tolist() == full["level"].tolist()
    chosen = np.array([m[f"exit_snr_{levels['name'][lv]}"].iloc[i] for i, lv in enumerate(m["level"])])
    np.testing.assert_allclose(m["exit_snr"], chosen)
    assert m["n"].sum() == connect(root).execute("SELECT any_value(num_samples) FROM utterances WHERE run = ?"
                                                 " AND utt_id = ?", [run, utt]).fetchone()[0]
    with pytest.raises(A.AnalysisError, match="no blocks"):
        A.exit_map(root, run, "nope")


def test_utilization_dynamic_and_policy(press, slim):
    sroot, srun = slim
    u = A.utilization(sroot, srun)
    t = connect(sroot).execute("SELECT utt_id, level, macs FROM utterances WHERE run = ?", [srun]).df()
    wide = t.pivot(index="utt_id", columns="level", values="macs")
    np.testing.assert_allclose(u.set_index("utt_id")["utilization"], wide[4] / wide[3])
    assert (u["source"] == "dynamic").all() and len(u) == 4

    root, run, levels = press
    p = A.utilization(root, run, "static:l=0")
    np.testing.assert_allclose(p["utilization"], levels["gmacs"].iloc[0] / levels["gmacs"].iloc[-1], rtol=1e-6)
    assert (p["mean_level"] == 0).all()
    ins = connect(root).execute("SELECT utt_id, min(input_snr) AS m FROM utterances WHERE run = ? GROUP BY 1"
                                " ORDER BY 1", [run]).df()
    np.testing.assert_allclose(p["input_snr"], ins["m"])


def test_policy_summary_and_manifest(press):
    root, run, levels = press
    s = A.policy_summary(root, run, ["oracle:t=15", "static:l=1"], n_boot=200)
    assert len(s) == 8 and set(s["metric"]) == {"gmacs", "si_snri", "snri", "regret"}
    gm = s[(s.policy == "static:l=1") & (s.metric == "gmacs")]["mean"].iloc[0]
    assert gm == pytest.approx(levels["gmacs"].iloc[1], rel=1e-9)
    with pytest.raises(A.AnalysisError, match="router"):
        A.policy_summary(root, run, ["router"])
    man = A.manifest(root, run)
    assert man["run_id"] == run and isinstance(man["spec"], dict)


def test_auto_targets_are_the_quartiles_of_the_deepest_levels_exit_snr(press):
    root, run_id, _ = press
    targets = A.auto_targets(root, run_id)
    deepest = load_block_arrays(root, run_id).exit_snr_db()[:, 3]
    assert len(targets) == 3 and targets == sorted(targets)
    for t, q in zip(targets, (0.25, 0.5, 0.75)):
        assert abs(t - np.quantile(deepest, q)) <= 0.25 + 1e-9 and abs(2 * t - round(2 * t)) < 1e-9
    assert targets != list(A.DEFAULT_TARGETS)


def test_regret_at_equal_compute_interpolates_the_dynamic_curve():
    rows = [("dynamic", None, 0.2, 3.0), ("dynamic", None, 0.6, 1.0), ("dynamic", None, 0.6, 1.4),
            ("static", "exit1", 0.3, 2.0), ("static", "exit2", 0.5, 1.75), ("static", "exit3", 0.9, 0.2),
            ("oracle", None, 0.4, 0.0)]
    curves = pd.DataFrame([{"run": "r", "t": 10.0, "strategy": s, "level_name": n, "gmacs": g, "regret": r}
                           for s, n, g, r in rows])
    eq = A.regret_at_equal_compute(curves)
    assert eq["level_name"].tolist() == ["exit1", "exit2"]  # exit3 lies beyond the curve's compute
    np.testing.assert_allclose(eq["dynamic_regret"], [2.5, 1.5])  # the lesser regret at gmacs 0.6
    np.testing.assert_allclose(eq["difference"], [0.5, -0.25])


def test_deciding_condition_matches_a_loop_over_blocks(synthetic_run):
    """Which of SNR, SNRi, SNR_ref sets each block's exit-SNR: the table against a plain per-block loop."""
    from exitbench.results.analysis import deciding_condition
    from exitbench.results.replays import load_block_arrays

    root, run = synthetic_run.root, synthetic_run.run_id
    arrays = load_block_arrays(root, run)
    got = deciding_condition(root, run, arrays)
    st = arrays.stats
    for lv in range(arrays.num_levels):
        counts = [0, 0, 0]
        for k in range(arrays.num_blocks):
            best = []
            for s in range(st["e_ref"].shape[2]):
                err = st["e_ref"][k, lv, s] - 2 * st["dot_est_ref"][k, lv, s] + st["e_est"][k, lv, s]
                ratios = [st["e_ref"][k, lv, s] / err,
                          (st["e_ref"][k, lv, s] - 2 * st["dot_mix_ref"][k, lv, s] + st["e_mix"][k, lv, s]) / err,
                          arrays.n[k] * arrays.p_ref[k] / err]
                best.append((max(ratios), int(np.argmax(ratios))))
            counts[min(best)[1]] += 1
        row = got[got.level == lv].iloc[0]
        assert [row.snr, row.snri, row.snr_ref] == pytest.approx([c / arrays.num_blocks for c in counts])


def test_a_router_fitted_on_another_run_joins_the_curves_and_never_its_own(tmp_path):
    from exitbench.policies.learned import fit_router

    root = tmp_path / "r"
    test = record_local(root, options=(("num_utterances", "3"),), metrics=())
    val = record_local(root, options=(("num_utterances", "6"), ("seed", "5")), metrics=())
    arrays = load_block_arrays(root, val.run_id)
    sha = A.manifest(root, val.run_id)["checkpoint_sha256"]
    fit_router(arrays, 10.0, val.run_id, info={"checkpoint_sha256": sha}).save(root / "routers" / "v.json")
    fit_router(arrays, 10.0, val.run_id, info={"checkpoint_sha256": "0" * 64}).save(root / "routers" / "other.json")
    assert A.routers_for(root, test.run_id) == [str(root / "routers" / "v.json")]  # not another checkpoint's
    assert A.routers_for(root, val.run_id) == []  # never on the run it was fitted on
    f = A.regret_curves(root, test.run_id, (10.0,), matched_draws=3)
    learned = f[f["strategy"] == "learned router"]
    assert len(learned) == 41 and learned["matched_regret"].notna().any()
    gains = A.gain_over_matched(f)
    assert set(gains["strategy"]) <= {"dynamic", "budget", "learned router"}
    np.testing.assert_allclose(gains["gain"], gains["matched_regret"] - gains["regret"])
    # the Python API does the same: fit on the validation run, sweep the test run, refuse the validation run
    import exitbench
    from exitbench.policies.base import PolicyError

    res = exitbench.open(root)
    path = res.fit_router(val.run_id, 10.0, tmp_path / "api.json")
    swept = res.sweep(test.run_id, [f"learned:router={path}", "budget"], [10.0], matched_draws=2)
    assert set(swept["policy"]) == {"learned", "budget"} and swept["matched_regret"].notna().any()
    with pytest.raises(PolicyError, match="fitted on run"):
        res.sweep(val.run_id, [f"learned:router={path}"], [10.0])
