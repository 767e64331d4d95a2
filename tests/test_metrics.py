"""exitbench.metrics against its reference implementations: torchmetrics, mir_eval, pesq, pystoi."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torchmetrics.functional.audio import scale_invariant_signal_noise_ratio, signal_noise_ratio

from exitbench.datasets.synthetic import SyntheticMixtures
from exitbench.metrics import (
    apply_permutation,
    best_permutation,
    pesq_score,
    sdr,
    si_snr,
    snr,
    stoi_score,
)


def _degrade(sources: np.ndarray, seed: int, leak: float = 0.25, noise: float = 0.03) -> np.ndarray:
    """Estimates as a separator makes them: leakage of the other sources, noise, a gain and a DC offset."""
    rng = np.random.default_rng(seed)
    sources = sources.astype(np.float64)
    others = sources.sum(0, keepdims=True) - sources
    est = 0.8 * sources + leak * others + noise * rng.standard_normal(sources.shape)
    return est + 0.01  # DC offset: SI-SNR must remove it, SNR must not


@pytest.fixture(scope="module")
def utt8k():
    return SyntheticMixtures(num_utterances=3, sample_rate=8000).load("syn00001")


@pytest.fixture(scope="module")
def utt16k():
    return SyntheticMixtures(num_utterances=3, sample_rate=16000, seconds=1.5).load("syn00002")


def _tm(fn, est, ref, **kw) -> np.ndarray:
    return fn(torch.from_numpy(np.asarray(est, np.float64)), torch.from_numpy(np.asarray(ref, np.float64)),
              **kw).numpy()


# --- SI-SNR / SNR ------------------------------------------------------------------------------------

def test_si_snr_matches_torchmetrics(utt8k):
    est = _degrade(utt8k.sources, seed=1)
    levels = np.stack([_degrade(utt8k.sources, seed=s, noise=0.01 * (s + 1)) for s in range(3)])  # [L,S,N]
    ours = si_snr(levels, utt8k.sources)  # leading dims broadcast against ref [S,N]
    ref = _tm(scale_invariant_signal_noise_ratio, levels, np.broadcast_to(utt8k.sources, levels.shape))
    assert ours.shape == (3, 2)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    assert np.ptp(ours) > 1.0  # the levels really differ
    np.testing.assert_allclose(si_snr(est, utt8k.sources), _tm(scale_invariant_signal_noise_ratio, est,
                                                               utt8k.sources), atol=1e-4, rtol=0)


def test_snr_matches_torchmetrics_without_zero_mean(utt8k):
    est = _degrade(utt8k.sources, seed=2)
    ours = snr(est, utt8k.sources)
    np.testing.assert_allclose(ours, _tm(signal_noise_ratio, est, utt8k.sources, zero_mean=False),
                               atol=1e-4, rtol=0)
    # the DC offset must count against plain SNR (it would vanish with zero_mean=True)
    assert np.all(ours < _tm(signal_noise_ratio, est, utt8k.sources, zero_mean=True) - 1e-3)


def test_perfect_estimate_is_capped_finite_and_silent_reference_is_nan(utt8k):
    ref = utt8k.sources.astype(np.float64)
    np.testing.assert_array_equal(si_snr(ref, ref), [120.0, 120.0])
    np.testing.assert_array_equal(si_snr(2.0 * ref + 3.0, ref), [120.0, 120.0])  # scale and offset free
    np.testing.assert_array_equal(snr(ref, ref), [120.0, 120.0])
    assert np.isnan(si_snr(ref[0], np.zeros_like(ref[0])))
    assert np.isnan(snr(ref[0], np.zeros_like(ref[0])))
    # a silent (or constant) estimate: NaN by the one rule of every recorded metric (it was 0 dB for SNR and
    # -120 dB for SI-SNR, finite values averaged in beside NaN SDR and PESQ)
    assert np.isnan(snr(np.zeros_like(ref[0]), ref[0])) and np.isnan(si_snr(np.zeros_like(ref[0]), ref[0]))
    with pytest.raises(ValueError, match="lengths differ"):
        si_snr(ref[:, :-1], ref)


# --- SDR ---------------------------------------------------------------------------------------------

def _mir_eval_sdr(est, ref):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mir_eval.separation import bss_eval_sources
        return bss_eval_sources(ref.astype(np.float64), est.astype(np.float64), compute_permutation=False)[0]


@pytest.mark.parametrize("num_sources", [2, 1])
def test_sdr_fast_bss_eval_matches_mir_eval(utt8k, num_sources):
    ref = utt8k.sources[:num_sources].astype(np.float64)
    est = _degrade(utt8k.sources, seed=3)[:num_sources]
    # an echo 50 samples late on one channel: BSS-eval forgives it (filters up to 512 taps), SI-SNR does not
    est[0, 50:] += 0.7 * est[0, :-50]
    ours = sdr(est, ref)
    assert ours.shape == (num_sources,)
    np.testing.assert_allclose(ours, _mir_eval_sdr(est, ref), atol=1e-3, rtol=0)
    np.testing.assert_allclose(sdr(est, ref, backend="mir_eval"), ours, atol=1e-3, rtol=0)
    assert ours[0] > si_snr(est[0], ref[0]) + 1.0


def test_sdr_keeps_the_source_order(utt8k):
    ref = utt8k.sources.astype(np.float64)
    swapped = _degrade(utt8k.sources, seed=4)[::-1].copy()
    ours = sdr(swapped, ref)
    np.testing.assert_allclose(ours, _mir_eval_sdr(swapped, ref), atol=1e-3, rtol=0)
    assert np.all(ours < 0)  # mismatched pairs score badly; no permutation search rescued them


def test_sdr_silent_estimate_is_nan_and_silent_reference_raises(utt8k):
    ref = utt8k.sources.astype(np.float64)
    est = _degrade(utt8k.sources, seed=5)
    est[1] = 0.0
    out = sdr(est, ref)
    assert np.isnan(out[1]) and np.isfinite(out[0])
    np.testing.assert_allclose(out[0], _mir_eval_sdr(est[:1], ref[:1])[0], atol=1e-3)
    ref[0] = 0.0
    with pytest.raises(ValueError, match="silent reference"):
        sdr(_degrade(utt8k.sources, seed=5), ref)
    with pytest.raises(ValueError, match="unknown SDR backend"):
        sdr(est, utt8k.sources, backend="nope")


# --- PESQ / STOI -------------------------------------------------------------------------------------

@pytest.mark.parametrize("fixture, mode", [("utt8k", "nb"), ("utt16k", "wb")])
def test_pesq_score_equals_direct_pesq_call(request, fixture, mode):
    from pesq import pesq

    utt = request.getfixturevalue(fixture)
    ref = utt.sources[0]
    est = _degrade(utt.sources, seed=6)[0].astype(np.float32)
    score, reason = pesq_score(est, ref, utt.sample_rate)
    assert reason is None
    assert score == pesq(utt.sample_rate, ref, est, mode)
    assert 1.0 <= score <= 4.7


def test_pesq_score_failures_give_nan_and_a_reason(utt8k):
    ref, est = utt8k.sources[0], _degrade(utt8k.sources, seed=7)[0]
    cases = {
        "silent estimate": (np.zeros_like(est), ref),
        "silent reference": (est, np.zeros_like(ref)),
        "too short": (est[:800], ref[:800]),  # 0.1 s
    }
    for expected, (e, r) in cases.items():
        score, reason = pesq_score(e, r, 8000)
        assert math.isnan(score) and expected in reason
    score, reason = pesq_score(est, ref, 44100)
    assert math.isnan(score) and "8000 or 16000" in reason
    # white noise against white noise: no utterance for PESQ's VAD to find; pesq's own error becomes a reason
    rng = np.random.default_rng(0)
    score, reason = pesq_score(1e-4 * rng.standard_normal(8000), np.r_[1.0, np.zeros(7999)], 8000)
    assert math.isnan(score) and reason


@pytest.mark.parametrize("extended", [False, True])
def test_stoi_score_equals_pystoi(utt16k, extended):
    from pystoi import stoi

    ref = utt16k.sources[1]
    est = _degrade(utt16k.sources, seed=8)[1]
    ours = stoi_score(est, ref, utt16k.sample_rate, extended=extended)
    # not bitwise: pystoi's ESTOI itself varies in the last bits from call to call (threaded BLAS)
    assert abs(ours - stoi(ref, est, utt16k.sample_rate, extended=extended)) < 1e-12
    assert 0.0 < ours < 1.0


# --- permutation -------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_sources, perm", [(2, (1, 0)), (3, (2, 0, 1)), (3, (0, 2, 1)), (5, (3, 0, 4, 1, 2))])
def test_best_permutation_recovers_a_shuffle(num_sources, perm):
    utt = SyntheticMixtures(num_utterances=1, num_sources=num_sources, seconds=1.0).load("syn00000")
    est = _degrade(utt.sources, seed=9, leak=0.2)
    shuffled = np.empty_like(est)
    shuffled[list(perm)] = est  # est[s] now sits at shuffled[perm[s]]
    found = best_permutation(shuffled, utt.sources)
    assert found == perm
    np.testing.assert_array_equal(apply_permutation(shuffled, found), est)
    assert best_permutation(est, utt.sources) == tuple(range(num_sources))


def test_apply_permutation_reorders_the_source_axis_of_every_level():
    est = np.arange(4 * 3 * 5, dtype=float).reshape(4, 3, 5)  # [L, S, N]
    out = apply_permutation(est, (2, 0, 1))
    for s, p in enumerate((2, 0, 1)):
        np.testing.assert_array_equal(out[:, s], est[:, p])
    with pytest.raises(ValueError, match="not a permutation"):
        apply_permutation(est, (0, 0, 1))
