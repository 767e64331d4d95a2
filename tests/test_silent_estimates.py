"""One rule for a silent (constant) estimate across every metric: NaN, flagged, counted; never a clamp."""

from __future__ import annotations

import numpy as np

from exitbench.harness.local import LocalExecutor
from exitbench.harness.runner import execute, prepare
from exitbench.harness.spec import RecordSettings, RunSpec
from exitbench.metrics import si_snr, snr
from exitbench.metrics.composite import composite_metrics
from exitbench.metrics.blockstats import block_stats
from exitbench.results.analysis import level_summary
from exitbench.results.store import ResultStore


def test_a_silent_exit_is_nan_in_every_metric_and_flagged(tmp_path):
    spec = RunSpec("exitbench_testmodels:silent_exit", "synthetic", (("num_utterances", "2"),),
                   RecordSettings(metrics=("sdr", "pesq", "stoi"), shard_size=2))
    run = execute(prepare(spec), tmp_path, LocalExecutor("cpu"))
    assert run.num_errors == 0
    df = ResultStore(tmp_path).read_shards(run.run_id, "utterances").to_pandas()
    dead, alive = df[df.level == 0], df[df.level > 0]
    metrics = ["si_snr", "si_snri", "snr", "snri", "sdr", "sdri", "pesq", "stoi", "estoi"]
    # before: SI-SNR −120 dB and SNR 0 dB (finite, so averaged in), SDR and PESQ NaN (dropped): means over
    # different utterances without saying so
    assert dead[metrics].isna().all().all() and dead.silent_estimate.all()
    assert dead.metric_notes.str.contains("silent estimate").all()
    assert np.isfinite(alive[metrics].to_numpy()).all() and not alive.silent_estimate.any()
    summary = level_summary(tmp_path, run.run_id, metrics=("si_snri", "pesq"))
    first = summary[summary.level == 0]
    assert (first["n"] == 0).all() and (first["n_nan"] == 2).all() and first["mean"].isna().all()  # no made-up mean


def test_metric_functions_and_replay_sums_agree_on_a_constant_estimate():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((1, 4000))
    for est in (np.zeros_like(ref), np.full_like(ref, 0.3)):
        assert np.isnan(si_snr(est, ref)).all() and np.isnan(snr(est, ref)).all()
        st = block_stats(est[None], ref, ref[0] + 0.1, 1000)  # four blocks, summed as a replay does
        sums = {k: v.sum(-1) for k, v in st.items()}
        got = composite_metrics(**sums)
        assert np.isnan(got["si_snr"]).all() and np.isnan(got["snr"]).all()
    # an estimate that is pure noise, uncorrelated with the reference, still scores (low but finite)
    noise = rng.standard_normal((1, 4000))
    assert np.isfinite(si_snr(noise, ref)).all()
