"""Uncertainty families beyond PRESS's inverse-gamma, and a model's own exit scores."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from scipy import stats as sps

from exitbench.harness.local import LocalExecutor
from exitbench.harness.runner import execute, prepare
from exitbench.harness.spec import RecordSettings, RunSpec
from exitbench.models.adapters import agreement_scores, pool_frames_to_blocks
from exitbench.models.registry import resolve_model
from exitbench.policies import parse_policy
from exitbench.policies.calibration import pit_values
from exitbench.policies.probability import gaussian_limits, gaussian_probabilities
from exitbench.results.replays import load_block_arrays, replay_run
from exitbench.results.views import connect


def test_gaussian_exit_probabilities_match_monte_carlo():
    rng = np.random.default_rng(0)
    n, trials, sigma2 = 500, 20_000, 0.01
    est = rng.normal(0, 0.3, n)  # a fixed estimate; the reference is estimate + N(0, σ²) error
    e_est = float(est @ est)
    errors = rng.normal(0, np.sqrt(sigma2), (trials, n))
    err_energy = (errors ** 2).sum(1)
    snr_db = 10 * np.log10(e_est / err_energy + 1.0)  # ‖x‖² ≈ ‖x̂‖² + ‖e‖², as the model reads it
    limits = gaussian_limits(np.float64(n), np.float64(e_est), np.float64(0.0), np.float64(0.0), np.float64(1e-12))
    for t in np.quantile(snr_db, [0.1, 0.5, 0.9]):
        p = float(gaussian_probabilities(float(t), limits, sigma2, float(n), "snr"))
        assert p == pytest.approx((snr_db >= t).mean(), abs=0.01)


def test_a_calibrated_gaussian_variance_gives_uniform_pit():
    from exitbench.policies.arrays import BlockArrays

    rng = np.random.default_rng(1)
    k, lv, n = 4000, 2, 400
    sigma2 = rng.uniform(1e-4, 1e-2, (k, lv, 1))  # the predicted variance, per block, exactly right
    err = sigma2 * rng.chisquare(n, sigma2.shape)  # ‖x − x̂‖² of a Gaussian error: σ²·χ²_n
    one = np.ones_like(err)
    stats = {"sum_ref": 0 * one, "sum_est": 0 * one, "sum_mix": 0 * one, "e_ref": one, "e_est": one,
             "e_mix": 2 * one, "dot_est_ref": (2 - err) / 2, "dot_mix_ref": one, "dot_est_mix": one}
    arrays = BlockArrays(utt=np.zeros(k, int), utt_ids=["a"], block=np.arange(k, dtype=np.int32),
                         start=np.arange(k) * n, n=np.full(k, n), stats=stats,
                         macs=np.outer(np.full(k, n), (1, 2)).astype(float), sample_rate=8000, sigma2=sigma2)
    u = pit_values(arrays).ravel()
    assert sps.ks_1samp(u, sps.uniform.cdf).statistic < 0.03
    wrong = pit_values(BlockArrays(**{**arrays.__dict__, "sigma2": sigma2 * 2, "_cache": {}})).ravel()
    assert sps.ks_1samp(wrong, sps.uniform.cdf).statistic > 0.3  # a variance off by 2x is caught


def test_per_frame_variances_pool_exactly_to_block_means():
    frames = torch.rand(2, 13, dtype=torch.float64)
    got = pool_frames_to_blocks(frames, hop=8, num_samples=100, block_size=30)
    per_sample = np.stack([[frames[s, min(i // 8, 12)].item() for i in range(100)] for s in range(2)])
    want = np.stack([[per_sample[s, b * 30:(b + 1) * 30].mean() for b in range(4)] for s in range(2)])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


def test_agreement_scores_by_hand():
    est = torch.randn(3, 2, 250, dtype=torch.float64)
    got = agreement_scores(est, 100)
    assert torch.isinf(got[0]).all() and (got[0] < 0).all()
    for level in (1, 2):
        for b in range(3):
            sl = slice(b * 100, (b + 1) * 100)
            prev = (est[level - 1, :, sl] ** 2).sum()
            diff = ((est[level, :, sl] - est[level - 1, :, sl]) ** 2).sum()
            assert got[level, b].item() == pytest.approx(10 * np.log10((prev / diff).item()), rel=1e-12)


@pytest.fixture(scope="module")
def gaussian_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gauss")
    spec = RunSpec("exitbench_testmodels:tiny_gaussian", "synthetic", (("num_utterances", "4"),),
                   RecordSettings(metrics=()))
    out = execute(prepare(spec), root, LocalExecutor())
    assert out.num_errors == 0
    return root, out.run_id


def test_gaussian_variances_and_scores_are_recorded_as_their_own_columns(gaussian_run):
    root, run_id = gaussian_run
    blocks = pq.read_table(root / "blocks" / f"run={run_id}" / "part-0.parquet").to_pandas()
    assert blocks["alpha"].isna().all() and (blocks["sigma2"] > 0).all()
    assert {"score_agreement", "score_confidence"} <= set(blocks.columns)
    # the recorded σ² of a block is the exact block mean of the model's per-frame σ² (first utterance)
    from exitbench.datasets.registry import open_testset

    model = resolve_model("exitbench_testmodels:tiny_gaussian").model
    utt = open_testset("synthetic", num_utterances=4).load(sorted(blocks.utt_id.unique())[0])
    out = model.forward_all(torch.from_numpy(utt.mixture))
    rows = blocks[blocks.utt_id == utt.id]
    perm = __import__("json").loads(connect(root).execute(
        "SELECT permutation FROM utterances WHERE run = ? AND utt_id = ? LIMIT 1", [run_id, utt.id]).fetchone()[0])
    for r in rows.itertuples():
        assert r.sigma2 == pytest.approx(out.sigma2[r.level, perm[r.source], r.block].item(), rel=1e-9)
        assert r.score_agreement == out.scores["agreement"][r.level, r.block].item()


def test_threshold_policy_equals_a_brute_force_loop_over_blocks(gaussian_run):
    root, run_id = gaussian_run
    arrays = load_block_arrays(root, run_id)
    scores = arrays.scores["agreement"]
    for tau in (-5.0, 0.0, 5.0, 20.0):
        chosen = parse_policy(f"threshold:score=agreement,tau={tau}")(arrays)
        for k in range(arrays.num_blocks):
            want = next((l for l in range(arrays.num_levels) if scores[k, l] >= tau), arrays.num_levels - 1)
            assert chosen[k] == want
    res = replay_run(root, run_id, "threshold:score=confidence,tau=1")
    assert len(res.per_utt) > 0


def test_probabilistic_exits_and_calibration_work_on_a_gaussian_recording(gaussian_run):
    root, run_id = gaussian_run
    arrays = load_block_arrays(root, run_id)
    probs = parse_policy("probabilistic:t=5,p=0.5").probabilities(arrays)
    assert probs.shape == (arrays.num_blocks, arrays.num_levels) and ((probs >= 0) & (probs <= 1)).all()
    u = pit_values(arrays)
    assert u.shape == arrays.stats["e_est"].shape and np.isfinite(u).all()
    from exitbench.policies.sweep import sweep

    frame = sweep(arrays, targets=(5.0,))
    assert {"probabilistic", "threshold"} <= set(frame.policy) and not frame.attrs["skipped"].get("probabilistic")
