"""Calibration readouts: PIT uniformity, CRPS closed form, exit-decision reliability (exitbench.policies.calibration)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, stats

from exitbench.policies import BlockArrays, PolicyError
from exitbench.policies.calibration import (
    calibration_summary, crps_relative_precision, decision_reliability, ks_distance, pit_reliability, pit_values)


def simulated(num_blocks=3000, levels=2, n=1000, beta_factor=1.0, seed=0) -> BlockArrays:
    """Blocks whose errors x − x̂ ~ N(0, σ²I), σ² ~ InvGamma(α, β) drawn from the predicted (α, β);
    the recorded beta is the true one times beta_factor."""
    rng = np.random.default_rng(seed)
    shape = (num_blocks, levels, 1)
    alpha = rng.uniform(3, 10, shape)
    beta = rng.uniform(0.05, 1.0, shape) * alpha
    sigma2 = beta / rng.gamma(alpha)
    stats_ = {k: np.zeros(shape) for k in ("sum_ref", "sum_est", "sum_mix")}
    stats_.update(e_est=np.zeros(shape), e_ref=np.zeros(shape), dot_est_ref=np.zeros(shape))
    for b in range(num_blocks):
        xhat = rng.normal(size=(levels, n))
        x = xhat + rng.normal(size=(levels, n)) * np.sqrt(sigma2[b, :, 0])[:, None]
        stats_["e_est"][b, :, 0] = (xhat * xhat).sum(1)
        stats_["e_ref"][b, :, 0] = (x * x).sum(1)
        stats_["dot_est_ref"][b, :, 0] = (xhat * x).sum(1)
    # a mixture that is useless as a reference: SNRi and SNR_ref never decide
    stats_.update(e_mix=stats_["e_ref"] * 0 + 1e6, dot_mix_ref=stats_["e_ref"] * 0, dot_est_mix=stats_["e_ref"] * 0)
    arrays = BlockArrays(utt=np.zeros(num_blocks, int), utt_ids=["u"], block=np.arange(num_blocks, dtype=np.int32),
                         start=np.arange(num_blocks) * n, n=np.full(num_blocks, n), stats=stats_,
                         macs=np.ones((num_blocks, levels)), sample_rate=8000, alpha=alpha, beta=beta * beta_factor)
    return arrays.with_p_ref(1e-12)


@pytest.fixture(scope="module")
def calibrated():
    return simulated()


def test_pit_uniform_when_simulated_from_the_model(calibrated):
    u = pit_values(calibrated)
    assert u.shape == (3000, 2, 1)
    assert ks_distance(u) < 0.025
    rel = pit_reliability(u, bins=10)
    assert np.abs(rel.observed - rel["quantile"]).max() < 0.025
    summary = calibration_summary(calibrated)
    assert summary.ks.max() < 0.035 and summary["count"].tolist() == [3000, 3000]


@pytest.mark.parametrize("factor", [4.0, 0.25])
def test_pit_not_uniform_when_variances_are_off(calibrated, factor):
    off = simulated(beta_factor=factor)
    assert ks_distance(pit_values(off)) > 0.3
    assert calibration_summary(off).crps.mean() > calibration_summary(calibrated).crps.mean()


@pytest.mark.parametrize("alpha,s", [(3.0, 0.2), (6.5, 0.15), (1.2, 2.0)])
def test_crps_closed_form_matches_numeric_integral(alpha, s):
    dist = stats.gamma(alpha, scale=s)
    below, _ = integrate.quad(lambda z: dist.cdf(z) ** 2, 0, 1)
    above, _ = integrate.quad(lambda z: dist.sf(z) ** 2, 1, np.inf)
    # err/(βn) = s, so the predictive for the relative precision is Gamma(α, scale s)
    assert crps_relative_precision(alpha, 1.0, 1.0, s) == pytest.approx(below + above, rel=1e-7)


def test_decision_reliability_follows_the_diagonal(calibrated):
    rel = decision_reliability(calibrated, t_db=4.0, bins=5, condition="snr")
    full = rel[rel["count"] > 300]
    assert len(full) >= 3 and rel["count"].sum() == 6000
    assert np.abs(full.observed - full.mean_predicted).max() < 0.05
    off = decision_reliability(simulated(beta_factor=4.0, num_blocks=1000), t_db=4.0, bins=5, condition="snr")
    off = off[off["count"] > 100]
    assert (off.observed - off.mean_predicted).min() > 0.05  # too pessimistic: exits more often than predicted


def test_calibration_needs_variances(calibrated):
    bare = BlockArrays(utt=calibrated.utt, utt_ids=["u"], block=calibrated.block, start=calibrated.start,
                       n=calibrated.n, stats=calibrated.stats, macs=calibrated.macs, sample_rate=8000)
    with pytest.raises(PolicyError, match="no variance head"):
        pit_values(bare)


@pytest.mark.parametrize("alpha,beta,err", [(3.0, 0.5, 0.2), (1.5, 2.0, 0.05), (8.0, 0.1, 0.03)])
def test_log_crps_matches_monte_carlo(alpha, beta, err):
    """CRPS of 10·log10 σ², σ² ~ InvGamma(α, β), at the observed error power: E|X − y| − ½E|X − X′| by simulation."""
    from exitbench.policies.calibration import crps_log_error_db

    n = 4000
    arrays = simulated(num_blocks=1, levels=1, n=n)
    arrays.alpha[:], arrays.beta[:] = alpha, beta
    st = arrays.stats
    st["e_ref"][:], st["e_est"][:], st["dot_est_ref"][:] = err * n, 0.0, 0.0  # ‖x − x̂‖² = err·n
    got = float(crps_log_error_db(arrays)[0, 0, 0])
    rng = np.random.default_rng(1)
    x = 10 * np.log10(beta / rng.gamma(alpha, size=400_000))
    x2 = 10 * np.log10(beta / rng.gamma(alpha, size=400_000))
    y = 10 * np.log10(err)
    want = np.abs(x - y).mean() - 0.5 * np.abs(x - x2).mean()
    assert got == pytest.approx(want, rel=0.01, abs=0.01)


def test_log_crps_mean_is_not_made_by_near_silent_blocks(calibrated):
    """The relative CRPS's mean explodes on a few blocks whose error dwarfs the prediction (a near-silent
    reference predicted near-silent, a loud error); the log-scale CRPS grows only by the dB it is off."""
    from exitbench.policies.calibration import crps_log_error_db, crps_values

    arrays = simulated(num_blocks=400, levels=1)
    st = arrays.stats
    err = st["e_ref"] - 2 * st["dot_est_ref"] + st["e_est"]
    st["e_ref"][:4], st["e_est"][:4], st["dot_est_ref"][:4] = 1e4 * err[:4], 0.0, 0.0  # 40 dB above it
    rel, log = crps_values(arrays)[:, 0, 0], crps_log_error_db(arrays)[:, 0, 0]
    assert rel[:4].sum() > 0.9 * rel.sum()  # the old mean is those four blocks
    assert log[:4].sum() < 0.5 * log.sum()
    summary = calibration_summary(arrays)
    assert {"crps", "crps_median", "crps_rel_median"} <= set(summary.columns)
