"""Policies, probabilities, replay exactness and BlockArrays conversion (exitbench.policies)."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest
import torch
from scipy.special import gammaincc
from torchmetrics.functional.audio import scale_invariant_signal_noise_ratio

from exitbench.policies import BlockArrays, PolicyError, RecordingError, parse_policy
from exitbench.policies.arrays import STAT_COLUMNS, DynamicArrays
from exitbench.policies.base import POLICIES
from exitbench.policies.builtin import Oracle, Probabilistic, Router, Static, Uniform
from exitbench.policies.probability import condition_probability, level_probabilities
from exitbench.policies.replay import replay
from exitbench.policies.synthetic import block_table_from_waveforms, random_block_table


# -- hand-built arrays ----------------------------------------------------------------------------
def tiny(err: np.ndarray, n: int = 100, alpha=None, beta=None, router=None, utt=None, macs_per_sample=(1, 2, 4)):
    """Blocks whose exit-SNR is exactly −10·log10(err) dB: e_ref = e_est = 1, ‖x − x̂‖² = err, the mixture
    as far from the reference as ‖x‖ (SNRi ratio = SNR ratio) and a negligible P_ref."""
    err = np.asarray(err, dtype=np.float64)
    k, lv = err.shape[:2]
    err = err.reshape(k, lv, -1)
    s = err.shape[2]
    one = np.ones_like(err)
    stats = {"sum_ref": 0 * one, "sum_est": 0 * one, "sum_mix": 0 * one, "e_ref": one, "e_est": one,
             "e_mix": 2 * one, "dot_est_ref": (2 - err) / 2, "dot_mix_ref": one, "dot_est_mix": one}
    arrays = BlockArrays(utt=np.zeros(k, int) if utt is None else np.asarray(utt), utt_ids=["a", "b", "c"][:1 if utt is None else max(utt) + 1],
                         block=np.arange(k, dtype=np.int32), start=np.arange(k) * n, n=np.full(k, n),
                         stats=stats, macs=np.outer(np.full(k, n), macs_per_sample).astype(float), sample_rate=8000,
                         alpha=alpha, beta=beta, router_logit=router)
    return arrays.with_p_ref(1e-9)


ERR = np.array([[0.5, 0.05, 0.01],   # 3, 13, 20 dB
                [0.5, 0.2, 0.15],    # never reaches 10 dB
                [0.01, 0.01, 0.001]])  # 20 dB at once


def test_exit_snr_of_hand_built_blocks():
    np.testing.assert_allclose(tiny(ERR).exit_snr_db(), -10 * np.log10(ERR), atol=1e-9)


def test_static_and_uniform():
    a = tiny(ERR)
    assert Static(l=2)(a).tolist() == [2, 2, 2]
    with pytest.raises(PolicyError, match="out of range"):
        Static(l=3)(a)
    big = tiny(np.tile(ERR, (2000, 1)))
    c1, c2 = Uniform()(big, seed=1), Uniform()(big, seed=1)
    assert np.array_equal(c1, c2) and not np.array_equal(c1, Uniform()(big, seed=2))
    assert not np.array_equal(c1, Uniform(seed=5)(big, seed=1))
    counts = np.bincount(c1, minlength=3)
    assert counts.sum() == 6000 and np.all(np.abs(counts - 2000) < 200)


def test_oracle_first_level_reaching_target_else_deepest():
    a = tiny(ERR)
    assert Oracle(t=10)(a).tolist() == [1, 2, 0]
    assert Oracle(t=3.0)(a).tolist() == [0, 0, 0]  # 3.0103 dB ≥ 3
    assert Oracle(t=25)(a).tolist() == [2, 2, 2]
    assert Oracle(t=-5)(a).tolist() == [0, 0, 0]


def test_probabilistic_known_probabilities():
    n = 100
    alpha = np.array([[[2.0], [4.0], [6.0]]] * 3)
    beta = np.array([[[0.02], [0.01], [0.001]]] * 3)
    a = tiny(ERR, n=n, alpha=alpha, beta=beta)
    t = 10.0
    tau = 10.0
    # the three conditions by hand: e_est = 1, ‖x̂ − y‖² = 1 − 2 + 2 = 1, P_ref = 1e-9
    x_snr = (tau - 1) * beta * n / 1.0
    x_ref = tau * beta / 1e-9
    expected = gammaincc(alpha, np.minimum(x_snr, x_ref))[:, :, 0]
    got = level_probabilities(a, t)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_allclose(level_probabilities(a, t, "snr_ref"), gammaincc(alpha, x_ref)[:, :, 0], rtol=1e-12)
    # P rows are [Q(2, 18), Q(4, 9), Q(6, 0.9)] = [~0, 0.021, 0.9977]
    assert Probabilistic(t=t, p=0.01)(a).tolist() == [1, 1, 1]
    assert Probabilistic(t=t, p=0.5)(a).tolist() == [2, 2, 2]
    assert Probabilistic(t=t, p=0.999)(a).tolist() == [2, 2, 2]  # none reaches: deepest
    assert Probabilistic(t=t, p=0.0)(a).tolist() == [0, 0, 0]
    # τ ≤ 1: SNR and SNRi ratios are ≥ 1 by construction, so P = 1 at every level
    assert np.all(level_probabilities(a, 0.0) == 1.0)
    assert np.all(level_probabilities(a, 0.0, "snr_ref") < 1.0)


def test_probabilistic_min_over_sources():
    alpha = np.full((1, 2, 2), 4.0)
    beta = np.array([[[0.001, 0.05], [0.001, 0.001]]])  # source 1 is doubtful at level 0 only
    a = tiny(np.full((1, 2, 2), 0.1), alpha=alpha, beta=beta, macs_per_sample=(1, 2))
    p = level_probabilities(a, 10.0)
    p_src = condition_probability(10.0, "all", alpha, beta, 100.0, 1.0, 2.0, 1.0, 1e-9)
    np.testing.assert_allclose(p, p_src.min(axis=2))
    assert p[0, 0] < 0.1 < 0.9 < p[0, 1]
    assert Probabilistic(t=10, p=0.5)(a).tolist() == [1]


def test_requirements_and_router():
    a = tiny(ERR)
    with pytest.raises(PolicyError, match=r"probabilistic needs predicted variances \(alpha, beta or sigma2\), but this "
                                          r"recording's model has no variance head"):
        Probabilistic()(a)
    with pytest.raises(PolicyError, match="router needs router logits or the model's dynamic output"):
        Router()(a)
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    assert Router()(tiny(ERR, router=logits)).tolist() == [1, 0, 2]
    dyn = tiny(ERR, router=logits)
    dyn.dynamic = DynamicArrays(stats={k: v[:, 0] for k, v in dyn.stats.items()}, macs=np.ones(3))
    assert Router()(dyn).tolist() == [3, 3, 3]


def test_parse_policy_and_registry():
    pol = parse_policy("probabilistic:t=20,p=0.9")
    assert isinstance(pol, Probabilistic) and pol.t == 20.0 and pol.p == 0.9 and pol.condition == "all"
    assert parse_policy(pol.spec()) == pol
    assert parse_policy("static") == Static(l=0) and parse_policy("static:l=2").l == 2
    assert isinstance(parse_policy("exitbench.policies.builtin:Oracle:t=3"), Oracle)
    assert {"static", "uniform", "oracle", "probabilistic", "router"} <= set(POLICIES.names())
    with pytest.raises(PolicyError, match="unknown policy 'greedy'"):
        parse_policy("greedy:t=1")
    with pytest.raises(PolicyError, match="has no parameter q; its parameters: t, p, condition"):
        parse_policy("probabilistic:q=1")
    with pytest.raises(PolicyError, match="is not a float"):
        parse_policy("oracle:t=high")
    with pytest.raises(PolicyError, match="must be one of"):
        parse_policy("probabilistic:condition=pesq")
    with pytest.raises(PolicyError, match="not key=value"):
        parse_policy("oracle:t")
    with pytest.raises(PolicyError, match="not a Policy subclass"):
        parse_policy("numpy:zeros")


def test_oracle_is_minimal_zero_regret_assignment_brute_force():
    rng = np.random.default_rng(3)
    for trial in range(5):
        err = 10 ** (-rng.uniform(0, 2.5, (4, 3)))  # 0..25 dB
        macs_ps = np.sort(rng.uniform(1, 10, 3))
        a = tiny(err, macs_per_sample=macs_ps)
        t = 10.0
        snr = a.exit_snr_db()
        chosen = Oracle(t=t)(a)
        reachable = (snr >= t).any(axis=1)
        regret = np.maximum(0, t - snr[np.arange(4), chosen])
        assert np.all(regret[reachable] == 0)
        best_unreachable = np.maximum(0, t - snr.max(axis=1))
        # where t is unreachable the oracle takes the deepest level; regret is that of the deepest
        assert np.allclose(regret[~reachable], np.maximum(0, t - snr[~reachable, 2]))
        assert np.all(regret[~reachable] >= best_unreachable[~reachable])
        macs_oracle = a.macs[np.arange(4), chosen][reachable].sum()
        sub = np.flatnonzero(reachable)
        for assign in itertools.product(range(3), repeat=len(sub)):
            assign = np.array(assign, dtype=int)
            if np.all(snr[sub, assign] >= t):
                assert macs_oracle <= a.macs[sub, assign].sum() + 1e-9


# -- probabilities against Monte-Carlo sampling -------------------------------------------------------
@pytest.mark.parametrize("condition", ["snr", "snri", "snr_ref"])
def test_probabilities_match_monte_carlo(condition):
    rng = np.random.default_rng(11)
    n, draws = 2000, 3000
    alpha, beta = 6.0, 0.05
    xhat = rng.normal(0, 1.0, n)
    y = xhat + rng.normal(0, 0.8, n)
    e_est, e_mix, dot_est_mix = xhat @ xhat, y @ y, xhat @ y
    p_ref = 1.0
    sigma2 = beta / rng.gamma(alpha, 1.0, draws)  # InvGamma(α, β)
    err = rng.normal(size=(draws, n)) * np.sqrt(sigma2)[:, None]  # x − x̂
    x = xhat + err
    e2 = (err * err).sum(1)
    ratio = {"snr": (x * x).sum(1) / e2, "snri": ((x - y) ** 2).sum(1) / e2, "snr_ref": n * p_ref / e2}[condition]
    for q in (0.2, 0.5, 0.8):
        t = 10 * np.log10(np.quantile(ratio, q))  # targets spanning the distribution
        pred = condition_probability(t, condition, alpha, beta, float(n), e_est, e_mix, dot_est_mix, p_ref)
        mc = (ratio >= 10 ** (t / 10)).mean()
        se = np.sqrt(max(mc * (1 - mc), 1e-3) / draws)
        assert abs(pred - mc) < 4 * se, (condition, q, pred, mc)


# -- replay exactness against stitched waveforms -------------------------------------------------------
def _waveform_recording(rng, n_utts=3, levels=3, sources=2, block=500, dynamic=False, router=False):
    tables, waves = [], {}
    for u in range(n_utts):
        n = int(rng.integers(1700, 2600))  # the last block is shorter
        b = -(-n // block)
        ref = rng.normal(size=(sources, n)) * rng.uniform(0.5, 2, (sources, 1))
        mix = ref.sum(0) + 0.3 * rng.normal(size=n) + 0.05
        # level-dependent noise, varying per block so policies pick different levels
        scale = np.repeat(rng.uniform(0.05, 1.0, (levels, sources, b)), block, axis=2)[:, :, :n]
        scale = scale / (1 + 2 * np.arange(levels))[:, None, None]
        est = ref[None] + scale * rng.normal(size=(levels, sources, n)) + 0.01 * u
        alpha = rng.uniform(3, 8, (levels, sources, b))
        beta = rng.uniform(0.01, 0.5, (levels, sources, b))
        dyn = ref + 0.1 * rng.normal(size=(sources, n)) if dynamic else None
        logits = rng.normal(size=(b, levels)) if router else None
        tables.append(block_table_from_waveforms(
            f"u{u}", ref, mix, est, block, [1e3, 3e3, 9e3][:levels], alpha, beta, logits,
            dyn, np.full(b, 5e3 * block) if dynamic else None))
        waves[f"u{u}"] = (ref, mix, est, dyn)
    table = pa.concat_tables(tables)
    return BlockArrays.from_arrow(table, levels, 8000, has_dynamic=dynamic), waves


def _stitch(est, dyn, chosen, block):
    out = np.empty(est.shape[1:])
    for b, lv in enumerate(chosen):
        sl = slice(b * block, (b + 1) * block)
        out[:, sl] = dyn[:, sl] if lv == est.shape[0] else est[lv][:, sl]
    return out


def _si_snr(ref, est):
    ref = ref - ref.mean(-1, keepdims=True)
    est = est - est.mean(-1, keepdims=True)
    target = (est * ref).sum(-1, keepdims=True) / (ref * ref).sum(-1, keepdims=True) * ref
    return 10 * np.log10((target**2).sum(-1) / ((est - target) ** 2).sum(-1))


def _snr(ref, est):
    return 10 * np.log10((ref**2).sum(-1) / ((ref - est) ** 2).sum(-1))


@pytest.mark.parametrize("dynamic", [False, True])
def test_replay_matches_stitched_waveforms(dynamic):
    rng = np.random.default_rng(5)
    block = 500
    arrays, waves = _waveform_recording(rng, dynamic=dynamic, router=not dynamic, block=block)
    policies = [Static(l=0), Static(l=2), Uniform(seed=3), Oracle(t=12), Probabilistic(t=12, p=0.7),
                Probabilistic(t=8, p=0.3, condition="snr_ref"), Router()]
    starts = arrays.utt_starts
    for pol in policies:
        chosen = pol(arrays, seed=1)
        per_block, per_utt = replay(arrays, chosen, t=12.0)
        assert len(per_block) == arrays.num_blocks
        for u, uid in enumerate(arrays.utt_ids):
            ref, mix, est, dyn = waves[uid]
            ch = chosen[starts[u]:starts[u] + (-(-ref.shape[1] // block))]
            out = _stitch(est, dyn, ch, block)
            row = per_utt.iloc[u]
            si = _si_snr(ref, out)
            si_tm = scale_invariant_signal_noise_ratio(torch.from_numpy(out), torch.from_numpy(ref)).numpy()
            si_mix, snr_mix = _si_snr(ref, mix[None]), _snr(ref, mix[None])
            for s in range(ref.shape[0]):
                assert abs(row[f"si_snr_s{s}"] - si[s]) < 1e-6, pol
                assert abs(row[f"si_snr_s{s}"] - si_tm[s]) < 1e-6, pol
                assert abs(row[f"snr_s{s}"] - _snr(ref, out)[s]) < 1e-6
                assert abs(row[f"si_snri_s{s}"] - (si[s] - si_mix[s])) < 1e-6
                assert abs(row[f"snri_s{s}"] - (_snr(ref, out)[s] - snr_mix[s])) < 1e-6
            assert abs(row["si_snri"] - np.mean(si - si_mix)) < 1e-6
            macs = [5e3 * block if lv == 3 else [1e3, 3e3, 9e3][lv] * min(block, ref.shape[1] - b * block)
                    for b, lv in enumerate(ch)]
            assert row["gmacs"] == pytest.approx(sum(macs) / ref.shape[1] * 8000 / 1e9, rel=1e-12)
        # per-block exit-SNR and regret from the stitched signals
        u0 = waves[arrays.utt_ids[0]]
        ref, mix, est, dyn = u0
        out = _stitch(est, dyn, chosen[: -(-ref.shape[1] // block)], block)
        p_ref = (mix**2).mean()
        for b in range(2):
            sl = slice(b * block, (b + 1) * block)
            e = ((ref[:, sl] - out[:, sl]) ** 2).sum(1)
            best = np.maximum.reduce([(ref[:, sl] ** 2).sum(1), ((ref[:, sl] - mix[sl]) ** 2).sum(1),
                                      np.full(ref.shape[0], block * p_ref)])
            assert per_block.exit_snr[b] == pytest.approx(10 * np.log10((best / e).min()), abs=1e-9)
            assert per_block.regret[b] == pytest.approx(max(0.0, 12.0 - per_block.exit_snr[b]), abs=1e-12)


# -- BlockArrays.from_arrow -----------------------------------------------------------------------------
def test_from_arrow_round_trip_shuffled_and_dictionary():
    table = random_block_table(5, 4, 3, 2, seed=2, router=True, dynamic=True)
    a = BlockArrays.from_arrow(table, 3, 8000, has_dynamic=True)
    assert (a.num_blocks, a.num_levels, a.num_sources, a.num_utts) == (20, 3, 2, 5)
    assert a.features() == {"alpha", "beta", "router_logit", "dynamic"}
    rows = table.to_pandas()
    r = rows[(rows.utt_id == "utt00000003") & (rows.block == 2) & (rows.level == 1) & (rows.source == 1)].iloc[0]
    k = 3 * 4 + 2
    for name in STAT_COLUMNS + ("alpha", "beta"):
        assert getattr(a, name, None) is not None or name in STAT_COLUMNS
        value = a.stats[name][k, 1, 1] if name in STAT_COLUMNS else getattr(a, name)[k, 1, 1]
        assert value == r[name]
    assert a.macs[k, 1] == r["macs"] and a.router_logit[k, 1] == r["router_logit"] and a.n[k] == r["n"]
    dyn_row = rows[(rows.utt_id == "utt00000003") & (rows.block == 2) & (rows.level == 3) & (rows.source == 0)].iloc[0]
    assert a.dynamic.stats["e_est"][k, 0] == dyn_row["e_est"] and a.dynamic.macs[k] == dyn_row["macs"]
    # shuffled rows and a dictionary-typed utt_id give the same arrays
    perm = np.random.default_rng(0).permutation(table.num_rows)
    shuffled = table.take(pa.array(perm))
    shuffled = shuffled.set_column(0, "utt_id", shuffled.column("utt_id").dictionary_encode())
    b = BlockArrays.from_arrow(shuffled, 3, 8000, has_dynamic=True)
    assert b.utt_ids == a.utt_ids and np.array_equal(b.block, a.block)
    for name in STAT_COLUMNS:
        assert np.array_equal(a.stats[name], b.stats[name])
    np.testing.assert_allclose(a.p_ref, b.p_ref)


def test_from_arrow_errors():
    table = random_block_table(3, 4, 2, 1, seed=1)
    with pytest.raises(RecordingError, match=r"missing rows: \(utt 'utt00000001', block 2\) has 1 of 2 rows"):
        BlockArrays.from_arrow(table.filter(pa.array(np.arange(table.num_rows) != 13)), 2, 8000, False)
    dup = pa.concat_tables([table, table.slice(5, 1)])
    with pytest.raises(RecordingError, match="duplicated rows"):
        BlockArrays.from_arrow(dup, 2, 8000, False)
    with pytest.raises(RecordingError, match="level values span 0..1, expected 0..2"):
        BlockArrays.from_arrow(table, 2, 8000, has_dynamic=True)
    with pytest.raises(RecordingError, match="lacks columns"):
        BlockArrays.from_arrow(table.drop_columns(["dot_est_mix"]), 2, 8000, False)
    no_block = table.filter(pa.compute.not_equal(table.column("block"), 1))
    with pytest.raises(RecordingError, match="missing blocks"):
        BlockArrays.from_arrow(no_block, 2, 8000, False)


# -- oracle vs oracle-best, the reference power p_ref, level names, parameter ranges (issue 16) -------------
def _first_reaching(snr_row, t):
    """PRESS's oracle for one block, by a plain loop: the first level reaching t, else the deepest."""
    for lv, s in enumerate(snr_row):
        if s >= t:
            return lv
    return len(snr_row) - 1


def _least_regret(snr_row, macs_row, t):
    """oracle-best for one block, by a plain loop: least regret, then least MACs, then lowest index."""
    return min(range(len(snr_row)), key=lambda lv: (max(0.0, t - snr_row[lv]), macs_row[lv], lv))


def test_oracle_and_oracle_best_against_a_loop_over_blocks():
    rng = np.random.default_rng(16)
    for trial in range(20):
        k, lv = 40, 4
        err = 10 ** (-rng.choice([0.3, 0.8, 1.2, 1.5, 2.0], size=(k, lv)))  # few values: exit-SNR ties are common
        macs_ps = rng.choice([1.0, 2.0, 3.0], size=lv)  # not increasing, with ties: the tie-break matters
        a = tiny(err, macs_per_sample=macs_ps)
        snr = a.exit_snr_db()
        t = float(rng.choice([5.0, 10.0, 12.0, 15.0, 25.0]))
        oracle, best = Oracle(t=t)(a), parse_policy(f"oracle-best:t={t:g}")(a)
        assert oracle.tolist() == [_first_reaching(snr[b], t) for b in range(k)]
        assert best.tolist() == [_least_regret(snr[b], a.macs[b], t) for b in range(k)]
        regret = lambda chosen: np.maximum(0.0, t - snr[np.arange(k), chosen])  # noqa: E731
        assert np.all(regret(best) <= regret(oracle))
        for other in [Static(l=i)(a) for i in range(lv)] + [Uniform()(a, seed=trial)]:
            assert regret(best).mean() <= regret(other).mean()


def test_oracle_best_is_the_least_regret_then_cheapest_assignment_brute_force():
    rng = np.random.default_rng(5)
    for _ in range(5):
        err = 10 ** (-rng.choice([0.5, 1.0, 1.5, 2.5], size=(4, 3)))
        a = tiny(err, macs_per_sample=rng.choice([1.0, 2.0, 4.0], size=3))
        snr, t = a.exit_snr_db(), 14.0
        best = parse_policy("oracle-best:t=14")(a)
        total = lambda assign: (np.maximum(0.0, t - snr[np.arange(4), assign]).sum(),  # noqa: E731
                                a.macs[np.arange(4), assign].sum())
        least = min(total(np.array(c)) for c in itertools.product(range(3), repeat=4))
        got = total(best)
        assert got[0] == pytest.approx(least[0]) and got[1] == pytest.approx(least[1])
    # PRESS's oracle is not that bound: block 1 never reaches 10 dB and its deepest level is not its best
    a = tiny(np.array([[0.5, 0.05, 0.01], [0.5, 0.1, 0.15], [0.01, 0.01, 0.001]]))
    assert Oracle(t=12)(a).tolist() == [1, 2, 0] and parse_policy("oracle-best:t=12")(a).tolist() == [1, 1, 0]
    assert Oracle.__doc__.startswith("PRESS's oracle: per block the first static level")


def _hand_exit_snr_db(a, p_ref_power):
    """True exit-SNR from the sums, written out: 10·log10 of the min over sources of max(SNR, SNRi, SNR_ref)."""
    st, n = a.stats, a.n[:, None, None].astype(float)
    err = st["e_ref"] - 2 * st["dot_est_ref"] + st["e_est"]
    ratios = np.stack([st["e_ref"] / err, (st["e_ref"] - 2 * st["dot_mix_ref"] + st["e_mix"]) / err,
                       n * p_ref_power / err])
    return 10 * np.log10(ratios.max(axis=0).min(axis=-1))


def test_fixed_p_ref_changes_oracle_decisions_as_computed_by_hand():
    a = tiny(ERR)  # its own reference power is negligible (1e-9): exit-SNR = −10·log10(err)
    assert Oracle(t=19.5)(a).tolist() == [2, 2, 0]
    assert parse_policy("oracle:t=19.5,p_ref=mixture")(a).tolist() == [2, 2, 0]  # mixture: the arrays' own
    fixed = parse_policy("oracle:t=19.5,p_ref=-10")  # 0.1 mean power: SNR_ref = 100·0.1/err, 10 dB over SNR
    by_hand = [_first_reaching(row, 19.5) for row in _hand_exit_snr_db(a, 10 ** (-10 / 10))]
    assert by_hand == [1, 2, 0] and fixed(a).tolist() == by_hand
    assert parse_policy("oracle-best:t=19.5,p_ref=-10")(a).tolist() == [1, 2, 0]
    # on a recording with several utterances, per-utterance mixture power vs one fixed power
    table = random_block_table(6, 10, 3, num_sources=2, seed=4)
    arr = BlockArrays.from_arrow(table, 3, 8000, False)
    for db in (-30.0, 0.0, 6.0):
        snr = _hand_exit_snr_db(arr, 10 ** (db / 10))
        for t in (5.0, 15.0):
            want = [_first_reaching(row, t) for row in snr]
            assert parse_policy(f"oracle:t={t:g},p_ref={db:g}")(arr).tolist() == want
    assert not np.array_equal(parse_policy("oracle:t=15,p_ref=6")(arr), Oracle(t=15)(arr))
    np.testing.assert_allclose(arr.exit_snr_db(), _hand_exit_snr_db(arr, arr.utterance_mixture_power()[:, None, None]))


def test_fixed_p_ref_changes_probabilistic_decisions_as_computed_by_hand():
    n, t, p = 100, 10.0, 0.9
    alpha = np.array([[[2.0], [4.0], [6.0]]] * 3)
    beta = np.array([[[0.02], [0.01], [0.001]]] * 3)
    a = tiny(ERR, n=n, alpha=alpha, beta=beta)
    # SNR_ref alone: P = Q(α, τ·β/P_ref) (PRESS's inverse-gamma); with P_ref = 1e-9 nothing is likely
    assert parse_policy("probabilistic:t=10,p=0.9,condition=snr_ref")(a).tolist() == [2, 2, 2]
    tau, power = 10 ** (t / 10), 10 ** (-10 / 10)
    prob = gammaincc(alpha[..., 0], tau * beta[..., 0] / power)
    want = [_first_reaching(row, p) for row in prob]  # "first level with P ≥ p" is the same loop
    assert want == [1, 1, 1]
    assert parse_policy("probabilistic:t=10,p=0.9,condition=snr_ref,p_ref=-10")(a).tolist() == want


def test_p_ref_is_part_of_the_spec_only_when_set():
    assert parse_policy("oracle:t=10").spec() == "oracle:t=10"  # unchanged: stored replays keep their names
    assert parse_policy("oracle:t=10,p_ref=mixture").spec() == "oracle:t=10"
    fixed = parse_policy("oracle:t=10,p_ref=-25")
    assert fixed.spec() == "oracle:t=10,p_ref=-25" and parse_policy(fixed.spec()) == fixed
    assert fixed != parse_policy("oracle:t=10")
    from exitbench.results.replays import policy_slug

    assert policy_slug(fixed.spec()) != policy_slug("oracle:t=10")
    pol = parse_policy("probabilistic:t=20,p=0.5,p_ref=-30.5")
    assert pol.spec() == "probabilistic:t=20,p=0.5,condition=all,p_ref=-30.5"
    assert "mixture" in Oracle.param("p_ref").help and "default" in Oracle.param("p_ref").help


def test_sweep_keeps_a_fixed_p_ref():
    from exitbench.policies.replay import summarize
    from exitbench.policies.sweep import sweep

    arr = BlockArrays.from_arrow(random_block_table(8, 12, 3, num_sources=2, seed=2), 3, 8000, False)
    frame = sweep(arr, ["oracle:p_ref=-20", "oracle-best", "probabilistic:p_ref=-20,condition=snr_ref"],
                  targets=(10.0,), p_grid=(0.2, 0.7))
    rows = {(r.policy, r.params): r for r in frame.itertuples()}
    assert set(rows) == {("oracle", "t=10,p_ref=-20"), ("oracle-best", "t=10"),
                         ("probabilistic", "t=10,p=0.2,condition=snr_ref,p_ref=-20"),
                         ("probabilistic", "t=10,p=0.7,condition=snr_ref,p_ref=-20")}
    for (name, params), r in rows.items():
        want = summarize(arr, parse_policy(f"{name}:{params}")(arr), [10.0])[0]  # regret on the recording's reference
        assert r.gmacs == pytest.approx(want["gmacs"]) and r.regret == pytest.approx(want["regret"])
        assert r.si_snri == pytest.approx(want["si_snri"])
    oracle_mixture = summarize(arr, Oracle(t=10)(arr), [10.0])[0]
    assert rows[("oracle", "t=10,p_ref=-20")].gmacs != pytest.approx(oracle_mixture["gmacs"])


def test_level_parameters_take_names_resolved_with_the_run():
    a = tiny(ERR).with_level_names(["exit1", "exit2", "exit3"])
    assert parse_policy("static:l=exit2")(a).tolist() == [1, 1, 1]
    assert parse_policy("static:l=2")(a).tolist() == [2, 2, 2]  # digits stay an index
    assert parse_policy("static:l=exit2").spec() == "static:l=exit2"
    with pytest.raises(PolicyError, match=r"^static: no level named 'exit9'; this run's levels are exit1, exit2,"
                                          r" exit3 \(or their indices 0..2\)$"):
        parse_policy("static:l=exit9")(a)
    with pytest.raises(PolicyError, match="is a level name, but these block arrays do not carry"):
        parse_policy("static:l=exit2")(tiny(ERR))
    with pytest.raises(RecordingError, match="level_names has 2 names for 3 levels"):
        tiny(ERR).with_level_names(["a", "b"])
    from exitbench.policies.sweep import sweep

    frame = sweep(a, ["static:l=exit3"], targets=(10.0,))
    assert frame.params.tolist() == ["l=2"]  # sweep rows name the level by index, as for every static row


@pytest.mark.parametrize("spec, message", [
    ("probabilistic:p=1.5", "p must be in [0, 1]"),
    ("probabilistic:p=-0.1", "p must be in [0, 1]"),
    ("oracle:t=inf", "must be finite"),
    ("oracle-best:t=nan", "must be finite"),
    ("threshold:tau=-inf", "must be finite"),
    ("static:l=-1", "l must be ≥ 0"),
    ("static:l=", "is not a level index (0, 1, ...) or a level name"),
    ("uniform:seed=-1", "seed must be ≥ 0"),
    ("oracle:p_ref=loud", "is not 'mixture' or a reference power in dBFS"),
    ("oracle:p_ref=inf", "is not 'mixture' or a finite reference power"),
    ("threshold:score=", "is not a non-empty name"),
    ("oracle-best:p=0.5", "has no parameter p; its parameters: t, p_ref"),
    ("static:level=1", "has no parameter level"),
])
def test_policy_parameters_are_range_checked_in_one_line(spec, message):
    with pytest.raises(PolicyError) as info:
        parse_policy(spec)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_parameter_range_ends_are_allowed():
    assert parse_policy("probabilistic:p=0").p == 0.0 and parse_policy("probabilistic:p=1").p == 1.0  # sweep ends
    assert parse_policy("uniform:seed=0").seed == 0 and parse_policy("static:l=0").l == 0
    assert parse_policy("oracle:t=-5,p_ref=0").p_ref == 0.0


def test_the_cli_replays_a_static_level_by_name(synthetic_run):
    """The arrays a replay loads carry the level names: static:l=exit2 is the second exit, index 1."""
    from exitbench.policies.base import parse_policy
    from exitbench.results.replays import load_block_arrays

    arrays = load_block_arrays(synthetic_run.root, synthetic_run.run_id)
    by_name = parse_policy("static:l=exit2").choose(arrays)
    by_index = parse_policy("static:l=1").choose(arrays)
    assert (by_name == by_index).all() and (by_name == 1).all()
