"""Budget(λ), the cost-matched random baseline and the learned router, each against an independent
computation: a loop over blocks (and, for the baseline's expectation, simulation)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.special import digamma

from exitbench.policies import BlockArrays, parse_policy
from exitbench.policies.base import PolicyError
from exitbench.policies.budget import lambda_for_budget, mean_gmacs
from exitbench.policies.learned import block_features, fit_router, load_router
from exitbench.policies.matched import cost_groups, expected_regret, matched_draw, matched_summary
from exitbench.policies.replay import replay, summarize
from exitbench.policies.sweep import sweep
from exitbench.policies.synthetic import random_block_table


def arrays_of(seed: int, utts: int = 12, blocks: int = 9, levels: int = 4, sources: int = 2, run_id: str | None = None):
    table = random_block_table(utts, blocks, levels, sources, seed=seed)
    arr = BlockArrays.from_arrow(table, levels, 8000, False)
    # uneven costs: the last block of every utterance is short, so there are two cost groups
    return arr.with_run_id(run_id) if run_id else arr


# -- budget ---------------------------------------------------------------------------------------------
def _loop_predicted_snr_db(a: BlockArrays, k: int, lv: int) -> float:
    """min over sources of max(SNR, SNRi, SNR_ref) at σ̂² = β·exp(−ψ(α)), written out per scalar."""
    worst = math.inf
    for s in range(a.num_sources):
        sig = a.beta[k, lv, s] * math.exp(-digamma(a.alpha[k, lv, s]))
        err = a.n[k] * sig
        st = {name: a.stats[name][k, lv, s] for name in a.stats}
        snr = 1 + st["e_est"] / err
        snri = 1 + max(st["e_est"] - 2 * st["dot_est_mix"] + st["e_mix"], 0.0) / err
        ref = a.n[k] * a.p_ref[k] / err
        worst = min(worst, 10 * math.log10(max(snr, snri, ref)))
    return worst


def _loop_budget_choice(a: BlockArrays, lam: float) -> np.ndarray:
    out = []
    for k in range(a.num_blocks):
        best, pick = -math.inf, -1
        for lv in range(a.num_levels):
            g = a.macs[k, lv] / a.n[k] * a.sample_rate / 1e9
            obj = _loop_predicted_snr_db(a, k, lv) - lam * g
            if obj > best + 1e-12:  # strictly better (a tie keeps the cheaper, earlier level: MACs grow here)
                best, pick = obj, lv
        out.append(pick)
    return np.array(out)


@pytest.mark.parametrize("lam", [0.0, 3.0, 40.0, 400.0, 1e5])
def test_budget_choice_against_a_loop_over_blocks(lam):
    a = arrays_of(1)
    got = parse_policy(f"budget:lam={lam}")(a)
    assert np.array_equal(got, _loop_budget_choice(a, lam))


def test_budget_solves_the_largest_spend_within_each_budget():
    a = arrays_of(2)
    lo, hi = mean_gmacs(a, np.zeros(a.num_blocks, int)), mean_gmacs(a, np.full(a.num_blocks, a.num_levels - 1))
    # every λ where a choice can change, from a loop: the spends C(λ) of all step intervals
    cuts = set()
    for k in range(a.num_blocks):
        f = [_loop_predicted_snr_db(a, k, lv) for lv in range(a.num_levels)]
        g = [a.macs[k, lv] / a.n[k] * a.sample_rate / 1e9 for lv in range(a.num_levels)]
        for i in range(a.num_levels):
            for j in range(i + 1, a.num_levels):
                if (f[j] - f[i]) / (g[j] - g[i]) > 0:
                    cuts.add((f[j] - f[i]) / (g[j] - g[i]))
    cuts = sorted(cuts)
    reps = [cuts[0] / 2] + [(x + y) / 2 for x, y in zip(cuts, cuts[1:])] + [cuts[-1] * 2 + 1]
    spends = [mean_gmacs(a, _loop_budget_choice(a, r)) for r in [0.0] + reps[::7] + reps[-1:]]
    for budget in np.linspace(lo, hi, 9)[1:-1]:
        pol = parse_policy(f"budget:gmacs={budget}")
        spend = mean_gmacs(a, pol(a))
        assert spend <= budget + 1e-12
        # no λ the loop visits spends more while staying within the budget
        assert spend >= max(s for s in spends if s <= budget) - 1e-12
        lam = pol.lam_for(a)
        assert np.array_equal(pol(a), _loop_budget_choice(a, lam))
    # a budget above the deepest level's spend: the level of highest predicted exit-SNR everywhere (λ = 0)
    assert lambda_for_budget(a, hi * 2) == 0.0


def test_budget_needs_variances_and_refuses_negative_numbers():
    a = BlockArrays.from_arrow(random_block_table(3, 4, 3, 1, seed=0, variances=False), 3, 8000, False)
    with pytest.raises(PolicyError, match="variance"):
        parse_policy("budget:gmacs=0.1")(a)
    with pytest.raises(PolicyError, match="out of range"):
        parse_policy("budget:lam=-1")


def test_budget_sweep_hits_its_budgets_and_its_spec_replays():
    a = arrays_of(3)
    frame = sweep(a, ["budget"], targets=(10.0, 15.0))
    rows = frame[frame.policy == "budget"]
    assert len(rows) == 2 * 21
    budgets = [parse_policy(f"budget:{p}").values["gmacs"] for p in rows["params"]]
    assert (rows["gmacs"].to_numpy() <= np.array(budgets) + 1e-12).all()
    assert rows["gmacs"].is_monotonic_increasing or np.all(np.diff(rows[rows.t == 10.0]["gmacs"]) >= -1e-12)
    one = rows.iloc[5]
    again = summarize(a, parse_policy(f"budget:{one['params']}")(a), [one["t"]])[0]
    assert again["regret"] == pytest.approx(one["regret"], abs=1e-12)


# -- cost-matched random ---------------------------------------------------------------------------------
def _short_last_block(a: BlockArrays) -> BlockArrays:
    """The last block of each utterance half as long (so that cost groups differ)."""
    n = a.n.copy()
    last = np.append(a.utt_starts[1:], a.num_blocks) - 1
    n[last] //= 2
    macs = a.macs * (n / a.n)[:, None]
    return BlockArrays(utt=a.utt, utt_ids=a.utt_ids, block=a.block, start=a.start, n=n, stats=a.stats, macs=macs,
                       sample_rate=a.sample_rate, alpha=a.alpha, beta=a.beta)


def test_matched_draws_keep_every_cost_groups_histogram_and_total_macs():
    a = _short_last_block(arrays_of(4))
    chosen = parse_policy("probabilistic:t=12,p=0.6")(a)
    groups = cost_groups(a)
    assert len(np.unique(groups)) == 2
    total = a.macs[np.arange(a.num_blocks), chosen].sum()
    seen_different = False
    for seed in range(5):
        draw = matched_draw(a, chosen, np.random.default_rng(seed))
        for g in np.unique(groups):
            assert np.array_equal(np.bincount(draw[groups == g], minlength=4), np.bincount(chosen[groups == g], minlength=4))
        assert a.macs[np.arange(a.num_blocks), draw].sum() == pytest.approx(total, rel=1e-12)
        seen_different |= not np.array_equal(draw, chosen)
    assert seen_different


def test_expected_matched_regret_by_a_loop_and_by_simulation():
    a = _short_last_block(arrays_of(5))
    chosen = parse_policy("probabilistic:t=12,p=0.6")(a)
    t = 12.0
    snr = a.exit_snr_db()
    groups = cost_groups(a)
    # the loop: every block's regret averaged over the levels its group's blocks were given
    loop = 0.0
    for k in range(a.num_blocks):
        members = [j for j in range(a.num_blocks) if groups[j] == groups[k]]
        loop += sum(max(0.0, t - snr[k, chosen[j]]) for j in members) / len(members)
    assert expected_regret(a, chosen, t) == pytest.approx(loop / a.num_blocks, rel=1e-12)
    # simulation: the mean over many draws converges to it
    sims = [summarize(a, matched_draw(a, chosen, np.random.default_rng(i)), [t])[0]["regret"] for i in range(2000)]
    assert np.mean(sims) == pytest.approx(expected_regret(a, chosen, t), abs=4 * np.std(sims) / math.sqrt(len(sims)))
    band = matched_summary(a, chosen, [t], draws=200, seed=1)[0]
    assert band["matched_regret_lo"] <= band["matched_regret"] <= band["matched_regret_hi"]


def test_sweep_adds_the_matched_band_to_dynamic_rows_only():
    a = arrays_of(6)
    frame = sweep(a, ["static", "probabilistic:p=0.7", "budget:gmacs=0.3", "oracle"], targets=(12.0,), matched_draws=5)
    static = frame[frame.policy == "static"]
    assert static["matched_regret"].isna().all()
    dyn = frame[frame.policy.isin(["probabilistic", "budget", "oracle"])]
    assert dyn["matched_regret"].notna().all()
    assert np.allclose(dyn["matched_gmacs"], dyn["gmacs"], rtol=1e-9)  # equal block lengths: exactly the same spend
    oracle = frame[frame.policy == "oracle"].iloc[0]
    assert oracle["regret"] < oracle["matched_regret_lo"]  # the oracle's placement beats random placement


# -- learned router ---------------------------------------------------------------------------------------
def test_router_application_equals_sklearn_predict_proba(tmp_path):
    from sklearn.linear_model import LogisticRegression

    from exitbench.policies.learned import target_levels

    val = arrays_of(7, utts=30, run_id="val-run")
    router = fit_router(val, 12.0, "val-run")
    path = router.save(tmp_path / "r.json")
    x, _ = block_features(val, 12.0)
    y = target_levels(val, 12.0)
    mean, scale = x.mean(0), x.std(0)
    scale[scale == 0] = 1
    ref = LogisticRegression(C=1.0, max_iter=2000, random_state=0).fit((x - mean) / scale, y)
    test = arrays_of(8, run_id="test-run")
    xt, _ = block_features(test, 12.0)
    got = load_router(str(path)).probabilities(test)
    want = np.zeros_like(got)
    want[:, ref.classes_] = ref.predict_proba((xt - mean) / scale)
    assert np.allclose(got, want, atol=1e-12)
    assert json.loads(path.read_text())["fitted_on"] == "val-run"


def test_learned_policy_against_a_loop_and_refused_on_its_own_run(tmp_path):
    val = arrays_of(9, utts=30, run_id="val-run")
    path = fit_router(val, 12.0, "val-run").save(tmp_path / "r.json")
    with pytest.raises(PolicyError, match="fitted on run val-run"):
        parse_policy(f"learned:router={path},q=0.5")(val)
    test = arrays_of(10, run_id="test-run")
    probs = load_router(str(path)).probabilities(test)
    for q in (0.0, 0.3, 0.5, 0.9, 1.0):
        want = []
        for k in range(test.num_blocks):
            acc, pick = 0.0, test.num_levels - 1
            for lv in range(test.num_levels - 1):
                acc += probs[k, lv]
                if acc >= q:
                    pick = lv
                    break
            want.append(pick)
        assert np.array_equal(parse_policy(f"learned:router={path},q={q}")(test), want)
    # its sweep over q is the staircase of the same choices
    frame = sweep(test, [f"learned:router={path}"], targets=(12.0,))
    row = frame.iloc[10]
    direct = summarize(test, parse_policy(f"learned:router={path},{row['params'].split(',')[-1]}")(test), [12.0])[0]
    assert row["regret"] == pytest.approx(direct["regret"], abs=1e-12)
    assert row["gmacs"] == pytest.approx(direct["gmacs"], rel=1e-12)


def test_learned_router_predicts_the_target_better_than_chance(tmp_path):
    val = arrays_of(11, utts=40, run_id="val-run")
    router = fit_router(val, 12.0, "val-run")
    test = arrays_of(12, utts=40, run_id="test-run")
    from exitbench.policies.learned import target_levels

    y = target_levels(test, 12.0)
    pred = router.probabilities(test).argmax(axis=1)
    majority = np.bincount(target_levels(val, 12.0)).argmax()
    assert (pred == y).mean() > (y == majority).mean() + 0.05


def test_a_missing_or_foreign_router_file_is_one_line(tmp_path):
    test = arrays_of(13, run_id="t")
    with pytest.raises(PolicyError, match="no router file"):
        parse_policy(f"learned:router={tmp_path / 'nope.json'}")(test)
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(PolicyError, match="not a router file"):
        parse_policy(f"learned:router={bad}")(test)


# -- per-source exits ---------------------------------------------------------------------------------------
def test_per_source_replay_matches_the_stitched_waveform_of_each_source():
    from test_policies import _si_snr, _snr, _waveform_recording

    rng = np.random.default_rng(3)
    block = 500
    arrays, waves = _waveform_recording(rng, levels=3, sources=2, block=block)
    chosen = rng.integers(0, 3, size=(arrays.num_blocks, 2))
    per_block, per_utt = replay(arrays, chosen, t=10.0)
    costs = [1e3, 3e3, 9e3]
    for u, uid in enumerate(arrays.utt_ids):
        ref, mix, est, _ = waves[uid]
        b0, nb = arrays.utt_starts[u], -(-ref.shape[1] // block)
        out = np.empty_like(ref)
        for b in range(nb):
            sl = slice(b * block, (b + 1) * block)
            for s in range(2):
                out[s, sl] = est[chosen[b0 + b, s], s, sl]
        si, sn = _si_snr(ref, out), _snr(ref, out)
        for s in range(2):
            assert per_utt.iloc[u][f"si_snr_s{s}"] == pytest.approx(si[s], abs=1e-6)
            assert per_utt.iloc[u][f"snri_s{s}"] == pytest.approx(sn[s] - _snr(ref, mix[None])[s], abs=1e-6)
        # each source pays its own level's share of the block's MACs
        macs = sum(np.mean([costs[chosen[b0 + b, s]] for s in range(2)]) * min(block, ref.shape[1] - b * block)
                   for b in range(nb))
        assert per_utt.iloc[u]["gmacs"] == pytest.approx(macs / ref.shape[1] * 8000 / 1e9, rel=1e-12)
        # a block's exit-SNR is the worst source's own, at its own level
        p_ref = (mix ** 2).mean()
        for b in range(nb):
            sl = slice(b * block, min((b + 1) * block, ref.shape[1]))
            own = []
            for s in range(2):
                e = ((ref[s, sl] - out[s, sl]) ** 2).sum()
                best = max((ref[s, sl] ** 2).sum(), ((ref[s, sl] - mix[sl]) ** 2).sum(), (sl.stop - sl.start) * p_ref)
                own.append(10 * np.log10(best / e))
            assert per_block.exit_snr[b0 + b] == pytest.approx(min(own), abs=1e-9)
    assert (per_block["level"] == chosen.max(axis=1)).all() and (per_block["level_s1"] == chosen[:, 1]).all()


def test_per_source_policies_against_a_loop_over_blocks_and_sources():
    from exitbench.policies.probability import condition_probability

    a = arrays_of(14, utts=6)
    t = 12.0
    snr = a.source_exit_snr_db()
    orc = parse_policy(f"oracle:t={t},per_source=1")(a)
    prob = parse_policy(f"probabilistic:t={t},p=0.6,per_source=1")(a)
    assert orc.shape == prob.shape == (a.num_blocks, a.num_sources)
    for k in range(a.num_blocks):
        for s in range(a.num_sources):
            first = next((lv for lv in range(a.num_levels) if snr[k, lv, s] >= t), a.num_levels - 1)
            assert orc[k, s] == first
            p = [condition_probability(t, "all", a.alpha[k, lv, s], a.beta[k, lv, s], a.n[k], a.stats["e_est"][k, lv, s],
                                       a.stats["e_mix"][k, lv, s], a.stats["dot_est_mix"][k, lv, s], a.p_ref[k])
                 for lv in range(a.num_levels)]
            assert prob[k, s] == next((lv for lv in range(a.num_levels) if p[lv] >= 0.6), a.num_levels - 1)
    # per-source exits never spend more than one level per block for the worst source, and the oracle's
    # per-source choice has no more regret than its joint one at lower or equal compute
    joint = parse_policy(f"oracle:t={t}")(a)
    sj, sp = summarize(a, joint, [t])[0], summarize(a, orc, [t])[0]
    assert sp["gmacs"] <= sj["gmacs"] + 1e-12
    # budget per source: within its budget, and per (block, source) the loop's argmax
    pol = parse_policy("budget:gmacs=0.25,per_source=1")
    ch = pol(a)
    assert 0.2 < mean_gmacs(a, ch) <= 0.25 + 1e-12
    lam = pol.lam_for(a)
    from exitbench.policies.budget import predicted_exit_snr_db

    f = predicted_exit_snr_db(a, per_source=True)
    for k in range(0, a.num_blocks, 7):
        for s in range(a.num_sources):
            obj = [f[k, lv, s] - lam * a.macs[k, lv] / a.n[k] * 8000 / 1e9 / a.num_sources for lv in range(a.num_levels)]
            assert ch[k, s] == int(np.argmax(obj))
    frame = sweep(a, ["probabilistic:per_source=1", "budget:per_source=1"], targets=(t,), p_grid=[0.3, 0.6])
    assert len(frame[frame.policy == "probabilistic"]) == 2 and len(frame[frame.policy == "budget"]) == 21
    row = frame[(frame.policy == "probabilistic") & (frame.p == 0.6)].iloc[0]
    assert row["regret"] == pytest.approx(summarize(a, prob, [t])[0]["regret"], abs=1e-12)


def test_the_vectorised_band_equals_replaying_each_draw():
    a = _short_last_block(arrays_of(15))
    chosen = parse_policy("probabilistic:t=12,p=0.6")(a)
    band = matched_summary(a, chosen, [9.0, 12.0], draws=7, seed=3)
    each = [summarize(a, matched_draw(a, chosen, np.random.default_rng([3, i])), [9.0, 12.0]) for i in range(7)]
    for j in range(2):
        reg = [e[j]["regret"] for e in each]
        assert band[j]["matched_regret_lo"] == pytest.approx(np.quantile(reg, 0.025), abs=1e-12)
        assert band[j]["matched_regret_hi"] == pytest.approx(np.quantile(reg, 0.975), abs=1e-12)
        for c in ("gmacs", "si_snri", "snri"):
            assert band[j][f"matched_{c}"] == pytest.approx(np.mean([e[j][c] for e in each]), rel=1e-10, abs=1e-12)
