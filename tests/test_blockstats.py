"""Block statistics and the replay maths: sums over chosen blocks rebuild the metrics of stitched audio."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torchmetrics.functional.audio import scale_invariant_signal_noise_ratio, signal_noise_ratio

from exitbench.datasets.synthetic import SyntheticMixtures
from exitbench.metrics import (
    STAT_KEYS,
    block_starts,
    block_stats,
    composite_metrics,
    exit_snr_ratios,
    si_snr,
    snr,
    true_exit_snr_db,
)

BLOCK = 2000


def _levels(sources: np.ndarray, num_levels: int, seed: int) -> np.ndarray:
    """[L, S, N] estimates that improve with the level: less leakage, less noise, a DC offset, one perfect."""
    rng = np.random.default_rng(seed)
    sources = sources.astype(np.float64)
    others = sources.sum(0, keepdims=True) - sources
    out = []
    for level in range(num_levels - 1):
        quality = 0.5 ** level
        out.append(0.9 * sources + 0.3 * quality * others
                   + 0.05 * quality * rng.standard_normal(sources.shape) + 0.004 * quality)
    out.append(sources.copy())  # the deepest level is perfect: error energies cancel to rounding
    return np.stack(out)


@pytest.fixture(scope="module", params=["syn00000", "syn00001", "syn00002"])
def utt(request):
    u = SyntheticMixtures(num_utterances=3).load(request.param)
    assert u.num_samples % BLOCK != 0  # a partial final block is part of what is tested
    return u


def test_block_starts_and_counts():
    np.testing.assert_array_equal(block_starts(4500, 2000), [0, 2000, 4000])
    np.testing.assert_array_equal(block_starts(4000, 2000), [0, 2000])
    with pytest.raises(ValueError, match="block_size"):
        block_starts(100, 0)


def test_block_stats_equal_direct_sums(utt):
    est = _levels(utt.sources, 3, seed=0).astype(np.float32)
    stats = block_stats(est, utt.sources, utt.mixture, BLOCK)
    n_samples, nb = utt.num_samples, -(-utt.num_samples // BLOCK)
    assert set(stats) == set(STAT_KEYS)
    for key, value in stats.items():
        assert value.shape == (3, 2, nb) and value.dtype == np.float64, key
    starts = block_starts(n_samples, BLOCK)
    for b in (0, nb // 2, nb - 1):  # includes the partial last block
        sl = slice(starts[b], min(starts[b] + BLOCK, n_samples))
        x = utt.sources[:, sl].astype(np.float64)
        y = utt.mixture[sl].astype(np.float64)
        for lv in range(3):
            xh = est[lv, :, sl].astype(np.float64)
            expected = {"n": np.full(2, sl.stop - sl.start), "sum_ref": x.sum(-1), "sum_est": xh.sum(-1),
                        "sum_mix": np.full(2, y.sum()), "e_ref": (x * x).sum(-1), "e_est": (xh * xh).sum(-1),
                        "e_mix": np.full(2, (y * y).sum()), "dot_est_ref": (xh * x).sum(-1),
                        "dot_mix_ref": (y * x).sum(-1), "dot_est_mix": (xh * y).sum(-1)}
            for key, want in expected.items():
                np.testing.assert_allclose(stats[key][lv, :, b], want, rtol=1e-12, atol=1e-12, err_msg=key)
    assert stats["n"][0, 0, -1] == n_samples - (nb - 1) * BLOCK


def _tm(fn, est, ref, **kw):
    return fn(torch.from_numpy(est), torch.from_numpy(ref), **kw).numpy()


def test_replay_from_summed_block_stats_equals_stitched_waveform(utt):
    num_levels = 5
    est = _levels(utt.sources, num_levels, seed=1)
    ref = utt.sources.astype(np.float64)
    mix = utt.mixture.astype(np.float64)
    stats = block_stats(est, ref, mix, BLOCK)
    nb = stats["n"].shape[-1]
    starts = block_starts(utt.num_samples, BLOCK)
    rng = np.random.default_rng(7)
    choices = [rng.integers(0, num_levels, size=(2, nb)) for _ in range(3)]  # per source and block
    choices.append(np.repeat(rng.integers(0, num_levels, size=(1, nb)), 2, axis=0))  # one level per block
    choices.append(np.full((2, nb), num_levels - 1))  # all-perfect: the capped extreme must agree too
    for choice in choices:
        stitched = np.empty_like(ref)
        for s in range(2):
            for b, start in enumerate(starts):
                stitched[s, start:start + BLOCK] = est[choice[s, b], s, start:start + BLOCK]
        # sum the chosen block of each (source, block) over blocks
        picked = {k: np.take_along_axis(v, choice[None], axis=0)[0].sum(-1) for k, v in stats.items()}
        got = composite_metrics(**picked)
        want_si = si_snr(stitched, ref)
        want_si_mix = si_snr(mix, ref)
        np.testing.assert_allclose(got["si_snr"], want_si, atol=1e-6, rtol=0)
        np.testing.assert_allclose(got["snr"], snr(stitched, ref), atol=1e-6, rtol=0)
        np.testing.assert_allclose(got["si_snr_mix"], want_si_mix, atol=1e-6, rtol=0)
        np.testing.assert_allclose(got["snr_mix"], snr(mix, ref), atol=1e-6, rtol=0)
        np.testing.assert_allclose(got["si_snri"], want_si - want_si_mix, atol=1e-6, rtol=0)
        np.testing.assert_allclose(got["snri"], snr(stitched, ref) - snr(mix, ref), atol=1e-6, rtol=0)
        if not (choice == num_levels - 1).all():
            # torchmetrics has no cap; compare with it wherever the stitched output is imperfect
            np.testing.assert_allclose(got["si_snr"], _tm(scale_invariant_signal_noise_ratio, stitched, ref),
                                       atol=1e-6, rtol=0)
            np.testing.assert_allclose(got["snr"], _tm(signal_noise_ratio, stitched, ref, zero_mean=False),
                                       atol=1e-6, rtol=0)
        else:
            np.testing.assert_array_equal(got["si_snr"], [120.0, 120.0])
            np.testing.assert_array_equal(got["snr"], [120.0, 120.0])


def test_static_levels_from_block_stats_broadcast(utt):
    est = _levels(utt.sources, 4, seed=2)
    stats = block_stats(est, utt.sources, utt.mixture, BLOCK)
    got = composite_metrics(**{k: v.sum(-1) for k, v in stats.items()})  # every level at once: [L, S]
    np.testing.assert_allclose(got["si_snr"][:-1], si_snr(est[:-1], utt.sources), atol=1e-6, rtol=0)
    assert np.all(np.diff(got["si_snr"], axis=0) > 0)  # deeper levels are better by construction


def _hand_stats():
    """One block of 4 samples, two sources, two levels, with ratios worked out by hand."""
    x = np.array([[0.5, -0.5, 0.5, -0.5],   # ‖x0‖² = 1
                  [2.0, 0.0, 0.0, 0.0]])    # ‖x1‖² = 4
    y = x.sum(0)
    est = np.array([[[0.5, -0.5, 0.5, 0.0],     # level 0: ‖x0 − x̂0‖² = 0.25
                     [1.0, 0.0, 0.0, 0.0]],    #          ‖x1 − x̂1‖² = 1
                    [[0.5, -0.5, 0.5, -0.5],   # level 1: x̂0 perfect
                     [2.0, 0.0, 0.0, 1.0]]])   #          ‖x1 − x̂1‖² = 1 again
    return block_stats(est, x, y, block_size=4)


def test_exit_ratios_and_true_exit_snr_by_hand():
    st = _hand_stats()
    p_ref = 0.5
    args = [st[k] for k in ("n", "e_ref", "e_est", "e_mix", "dot_est_ref", "dot_mix_ref")] + [p_ref]
    r = exit_snr_ratios(*args)
    # level 0, source 0: snr = 1/0.25 = 4; snri = ‖x0 − y‖²/0.25 = ‖x1‖²/0.25 = 16; snr_ref = 4·0.5/0.25 = 8
    np.testing.assert_allclose([r["snr"][0, 0, 0], r["snri"][0, 0, 0], r["snr_ref"][0, 0, 0]], [4, 16, 8])
    # level 0, source 1: snr = 4/1 = 4; snri = ‖x0‖²/1 = 1; snr_ref = 2/1 = 2
    np.testing.assert_allclose([r["snr"][0, 1, 0], r["snri"][0, 1, 0], r["snr_ref"][0, 1, 0]], [4, 1, 2])
    # level 1, source 0 is perfect: every ratio capped at 1/eps
    np.testing.assert_allclose([r["snr"][1, 0, 0], r["snri"][1, 0, 0], r["snr_ref"][1, 0, 0]], [1e12] * 3)
    true_db = true_exit_snr_db(*args, source_axis=1)
    assert true_db.shape == (2, 1)
    # level 0: min(max(4,16,8), max(4,1,2)) = 4; level 1: min(1e12, max(4,1,2)) = 4
    np.testing.assert_allclose(true_db[:, 0], [10 * np.log10(4), 10 * np.log10(4)], atol=1e-12)
    # with a larger reference power snr_ref decides source 1: n·P_ref/‖x1 − x̂1‖² = 4·3/1 = 12
    args[-1] = 3.0
    np.testing.assert_allclose(true_exit_snr_db(*args, source_axis=1)[:, 0],
                               [10 * np.log10(12), 10 * np.log10(12)], atol=1e-12)
    with pytest.raises(TypeError):
        true_exit_snr_db(*args)  # the source axis must be named: layouts differ between callers


def test_block_stats_is_fast_and_rejects_bad_input():
    rng = np.random.default_rng(0)
    est = rng.standard_normal((8, 2, 80_000)).astype(np.float32)  # 8 levels, 10 s at 8 kHz
    ref = rng.standard_normal((2, 80_000)).astype(np.float32)
    block_stats(est, ref, ref.sum(0), BLOCK)
    t0 = time.perf_counter()
    for _ in range(5):
        block_stats(est, ref, ref.sum(0), BLOCK)
    assert (time.perf_counter() - t0) / 5 < 0.25  # about 5 ms on a laptop core; a Python loop is 100x slower
    with pytest.raises(ValueError, match="shapes disagree"):
        block_stats(est, ref[:1], ref.sum(0), BLOCK)
    est[0, 0, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        block_stats(est, ref, ref.sum(0), BLOCK)
