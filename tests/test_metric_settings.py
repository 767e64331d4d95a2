"""--stoi-backend and --metric-levels: what they record, and how they enter the run id."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import numpy as np
import pytest

from exitbench import SCHEMA_VERSION
from exitbench.errors import UsageError
from exitbench.harness.local import LocalExecutor
from exitbench.harness.record import forward_utterance, tensor_metrics, utterance_metrics
from exitbench.harness.runner import execute, prepare
from exitbench.harness.spec import RecordSettings, RunSpec, compute_run_id
from exitbench.results.store import ResultStore

MODEL, DATA = "exitbench_testmodels:tiny_exits", "synthetic"
OPTS = (("num_utterances", "3"),)


def _spec(**settings) -> RunSpec:
    return RunSpec(MODEL, DATA, OPTS, RecordSettings(**settings))


def _utterances(root, run_id):
    df = ResultStore(root).read_shards(run_id, "utterances").to_pandas()
    return df.sort_values(["utt_id", "level", "source"]).reset_index(drop=True)


def test_torch_stoi_records_what_pystoi_records(tmp_path):
    torch_run = execute(prepare(_spec(metrics=("stoi",))), tmp_path, LocalExecutor("cpu"))
    ref_run = execute(prepare(_spec(metrics=("stoi",), stoi_backend="pystoi")), tmp_path, LocalExecutor("cpu"))
    assert torch_run.run_id != ref_run.run_id  # a different computation is a different recording
    a, b = _utterances(tmp_path, torch_run.run_id), _utterances(tmp_path, ref_run.run_id)
    for col in ("stoi", "estoi", "mix_stoi", "mix_estoi"):
        assert np.isfinite(a[col]).all()
        np.testing.assert_allclose(a[col], b[col], atol=1e-9, rtol=0)


def test_pystoi_keeps_the_run_id_a_first_wave_recording_had():
    """Settings added later enter the id only away from their legacy value: old roots still resume."""
    settings = RecordSettings(stoi_backend="pystoi", block_size=2000)
    legacy = {k: v for k, v in asdict(settings).items() if k not in ("stoi_backend", "metric_levels")}
    payload = json.dumps({"model": "m", "dataset": "d", "fingerprint": "f", "dataset_options": [],
                          "settings": legacy, "schema": SCHEMA_VERSION}, sort_keys=True, default=list)
    assert compute_run_id("m", "d", "f", (), settings) == hashlib.sha256(payload.encode()).hexdigest()[:16]
    assert compute_run_id("m", "d", "f", (), RecordSettings(block_size=2000)) != \
        compute_run_id("m", "d", "f", (), settings)


def test_metric_levels_skip_the_other_levels_and_keep_the_mixture(tmp_path):
    run = execute(prepare(_spec(metrics=("pesq", "stoi"), metric_levels=(("pesq", "last"),))), tmp_path,
                  LocalExecutor("cpu"))
    df = _utterances(tmp_path, run.run_id)
    last = df.level == df.level.max()
    assert np.isfinite(df.pesq[last]).all() and df.pesq[~last].isna().all()
    assert np.isfinite(df.mix_pesq).all() and np.isfinite(df.stoi).all()  # other metrics: every level


def test_metric_levels_are_canonical_by_name_in_the_run_id():
    levels = prepare(_spec()).model.levels
    by_name = prepare(_spec(metric_levels=(("pesq", levels[-1]),)))
    assert prepare(_spec(metric_levels=(("pesq", "last"),))).run_id == by_name.run_id
    assert prepare(_spec(metric_levels=(("pesq", str(len(levels) - 1)),))).run_id == by_name.run_id
    assert prepare(_spec(metric_levels=(("pesq", "all"),))).run_id == prepare(_spec()).run_id
    assert by_name.run_id != prepare(_spec()).run_id


@pytest.mark.parametrize("settings, message", [
    (dict(metric_levels=(("pesq", "exit9"),)), "not a level of this model"),
    (dict(metrics=("stoi",), metric_levels=(("pesq", "last"),)), "leaves out"),
    (dict(metric_levels=(("si_snr", "last"),)), "always computed"),
    (dict(stoi_backend="matlab"), "--stoi-backend"),
])
def test_bad_metric_settings_are_usage_errors(settings, message):
    with pytest.raises(UsageError, match=message):
        prepare(_spec(**settings))


def test_metrics_precomputed_next_to_the_model_give_the_same_table():
    """The GPU worker's split (tensor metrics there, the rest in a CPU task) changes no value."""
    p = prepare(_spec())
    rec = forward_utterance(p.model, p.testset.load(p.utt_ids[0]))
    whole = utterance_metrics(rec, p.spec.settings).to_pandas()
    rec.precomputed = tensor_metrics(rec, p.spec.settings, "cpu")
    split = utterance_metrics(rec, p.spec.settings).to_pandas()
    assert whole.equals(split)
