"""End-to-end recording in-process: tables, exactness of the block statistics, errors, resumption."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torchmetrics.functional.audio import scale_invariant_signal_noise_ratio as tm_si_snr
from conftest import record_local
from typer.testing import CliRunner

from exitbench.datasets.synthetic import SyntheticMixtures
from exitbench.harness.cli import app
from exitbench.harness.local import LocalExecutor
from exitbench.harness.runner import execute, prepare
from exitbench.harness.spec import RecordSettings, RunSpec
from exitbench.metrics import composite_metrics
from exitbench.models.checkpoint import load_checkpoint, save_checkpoint
from exitbench.models.registry import resolve_model
from exitbench.results.schema import STAT_COLUMNS
from exitbench.results.views import connect

runner = CliRunner()


def test_five_tables_are_readable_with_exact_row_counts(synthetic_run):
    con = connect(synthetic_run.root)
    rid = synthetic_run.run_id
    ts = SyntheticMixtures(num_utterances=5)
    n_blocks = sum(int(np.ceil(ts.load(i).num_samples / 2000)) for i in ts.ids())
    assert con.execute("SELECT count(*) FROM blocks WHERE run=?", [rid]).fetchone()[0] == n_blocks * 4 * 2
    assert con.execute("SELECT count(*) FROM utterances WHERE run=?", [rid]).fetchone()[0] == 5 * 4 * 2
    assert con.execute("SELECT count(*) FROM levels WHERE run=?", [rid]).fetchone()[0] == 4
    assert con.execute("SELECT count(*) FROM errors WHERE run=?", [rid]).fetchone()[0] == 0
    status, n_utt, sha = con.execute(
        "SELECT status, num_utterances, checkpoint_sha256 FROM runs WHERE run=?", [rid]).fetchone()
    assert (status, n_utt) == ("complete", 5)
    assert sha == load_checkpoint(resolve_model("press-s").checkpoint.path).sha256
    # compacted: one file per table, no staging left behind
    assert [p.name for p in (synthetic_run.root / "blocks" / f"run={rid}").iterdir()] == ["part-0.parquet"]
    assert not (synthetic_run.root / "_staging" / f"run={rid}").exists()
    # every metric was computed and is finite for the separator's output
    row = con.execute("SELECT count(*) FILTER (WHERE pesq IS NULL OR isnan(pesq) OR isnan(stoi) OR isnan(sdr))"
                      " FROM utterances WHERE run=?", [rid]).fetchone()
    assert row[0] == 0


def test_second_run_is_recognised_as_done(synthetic_run):
    again = record_local(synthetic_run.root, shard_size=2)
    assert again.run_id == synthetic_run.run_id
    assert again.already_complete and again.shards_done == 0


def test_block_statistics_rebuild_the_recorded_utterance_metrics(synthetic_run):
    con = connect(synthetic_run.root)
    sums = ", ".join(f"sum({c}) AS {c}" for c in STAT_COLUMNS)
    df = con.execute(f"""
        SELECT b.utt_id, b.level, b.source, {sums}, any_value(u.si_snr) AS si_snr, any_value(u.snr) AS snr,
               any_value(u.si_snri) AS si_snri
        FROM blocks b JOIN utterances u USING (run, utt_id, level, source)
        WHERE run = ? GROUP BY ALL""", [synthetic_run.run_id]).df()
    got = composite_metrics(*(df[c].to_numpy() for c in STAT_COLUMNS))
    np.testing.assert_allclose(got["si_snr"], df["si_snr"], atol=1e-6)
    np.testing.assert_allclose(got["snr"], df["snr"], atol=1e-6)
    np.testing.assert_allclose(got["si_snri"], df["si_snri"], atol=1e-6)


def test_recorded_si_snr_matches_torchmetrics_on_a_fresh_forward(synthetic_run):
    """The shared permutation is applied consistently: recompute one utterance independently."""
    model = resolve_model("press-s").model
    utt = SyntheticMixtures(num_utterances=5).load("syn00003")
    with torch.inference_mode():
        est = model.forward_all(torch.from_numpy(utt.mixture)).estimates.double()
    ref = torch.from_numpy(utt.sources).double()
    perms = [(0, 1), (1, 0)]
    best = max(perms, key=lambda p: tm_si_snr(est[-1][list(p)], ref).mean())
    expect = tm_si_snr(est[:, list(best)], ref.expand(4, -1, -1)).numpy()  # [L, S]
    got = connect(synthetic_run.root).execute(
        "SELECT level, source, si_snr FROM utterances WHERE run=? AND utt_id='syn00003' ORDER BY 1, 2",
        [synthetic_run.run_id]).fetchall()
    np.testing.assert_allclose(np.array([r[2] for r in got]).reshape(4, 2), expect, atol=1e-3)


@pytest.mark.parametrize("factory,fragment", [("nan_on_long", "NaN"), ("raise_on_long", "model raised")])
def test_a_failing_model_gives_error_rows_and_the_run_goes_on(tmp_path, factory, fragment):
    ts = SyntheticMixtures(num_utterances=6)
    long_ids = {i for i in ts.ids() if ts.load(i).num_samples > 16000}
    assert 0 < len(long_ids) < 6
    result = runner.invoke(app, ["run", "--executor", "local", "--model", f"exitbench_testmodels:{factory}",
                                 "--dataset", "synthetic",
                                 "--dataset-opt", "num_utterances=6", "--metrics", "none", "-r", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert f"{len(long_ids)} utterance(s) failed" in result.output
    con = connect(tmp_path)
    errors = con.execute("SELECT utt_id, stage, reason FROM errors").fetchall()
    assert {e[0] for e in errors} == long_ids
    assert all(e[1] == "model" and fragment in e[2] for e in errors)
    done = {r[0] for r in con.execute("SELECT DISTINCT utt_id FROM utterances").fetchall()}
    assert done == set(ts.ids()) - long_ids
    assert con.execute("SELECT status, num_errors FROM runs").fetchone() == ("complete", len(long_ids))


class InterruptAfter(LocalExecutor):
    """Publishes ``k`` shards, then behaves like Ctrl-C; counts the shards it was asked to run."""

    def __init__(self, k: int | None):
        super().__init__("cpu")
        self.k, self.asked = k, []

    def run(self, prepared, store, shards, on_utterance):
        self.asked = sorted(shards)
        for i, (index, ids) in enumerate(shards.items()):
            if self.k is not None and i == self.k:
                raise KeyboardInterrupt
            super().run(prepared, store, {index: ids}, on_utterance)


def test_an_interrupted_run_resumes_with_only_the_missing_shards(tmp_path):
    spec = RunSpec("press-s", "synthetic", (("num_utterances", "5"),), RecordSettings(metrics=(), shard_size=2))
    p = prepare(spec)
    with pytest.raises(KeyboardInterrupt):
        execute(p, tmp_path / "a", InterruptAfter(1))
    # nothing of the unfinished run is visible to DuckDB, and its manifest says so
    con = connect(tmp_path / "a")
    assert con.execute("SELECT count(*) FROM blocks").fetchone()[0] == 0
    assert con.execute("SELECT status FROM runs").fetchone()[0] == "running"
    resumed = InterruptAfter(None)
    outcome = execute(prepare(spec), tmp_path / "a", resumed)
    assert resumed.asked == [1, 2] and outcome.shards_skipped == 1
    fresh = execute(prepare(spec), tmp_path / "b", LocalExecutor())
    a = pq.read_table(tmp_path / "a" / "blocks" / f"run={p.run_id}" / "part-0.parquet")
    b = pq.read_table(tmp_path / "b" / "blocks" / f"run={fresh.run_id}" / "part-0.parquet")
    assert a.equals(b)


def test_run_id_follows_checkpoint_bytes_and_settings(tmp_path):
    base = prepare(RunSpec("press-s", "synthetic", (("num_utterances", "2"),))).run_id
    assert prepare(RunSpec("press-s", "synthetic", (("num_utterances", "2"),))).run_id == base
    assert prepare(RunSpec("press-s", "synthetic", (("num_utterances", "2"),),
                           RecordSettings(metrics=("sdr",)))).run_id != base
    assert prepare(RunSpec("press-s", "synthetic", (("num_utterances", "3"),))).run_id != base
    ck = resolve_model("press-s").checkpoint
    copy = tmp_path / "copy.pt"
    shutil.copy(ck.path, copy)
    assert prepare(RunSpec(str(copy), "synthetic", (("num_utterances", "2"),))).run_id == base
    sd = dict(ck.state_dict)
    key = next(iter(sd))
    sd[key] = sd[key] + 1e-3
    save_checkpoint(tmp_path / "perturbed.pt", ck.architecture, ck.config, sd, ck.metadata)
    assert prepare(RunSpec(str(tmp_path / "perturbed.pt"), "synthetic", (("num_utterances", "2"),))).run_id != base


@pytest.mark.parametrize("args,fragment", [
    (["--model", "no-such-model.pt"], "neither a checkpoint file"),
    (["--dataset", "no-such-set"], "unknown dataset"),
    (["--metrics", "pesq,bogus"], "unknown metrics"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, args, fragment):
    result = runner.invoke(app, ["run", "--executor", "local", "-r", str(tmp_path), *args])
    assert result.exit_code == 2
    assert fragment in result.output and "Traceback" not in result.output


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    result = runner.invoke(app, ["run", "--executor", "local", "-r", str(tmp_path), "--model", str(bad)])
    assert result.exit_code == 2 and "cannot be read" in result.output


def test_runs_and_query_commands(synthetic_run):
    result = runner.invoke(app, ["runs", "-r", str(synthetic_run.root)])
    assert result.exit_code == 0 and synthetic_run.run_id in result.output
    result = runner.invoke(app, ["query", "SELECT count(DISTINCT utt_id) AS n FROM utterances", "--csv",
                                 "-r", str(synthetic_run.root)])
    assert result.exit_code == 0 and result.output.strip().splitlines() == ["n", "5"]
    result = runner.invoke(app, ["query", "SELECT nope FROM utterances", "-r", str(synthetic_run.root)])
    assert result.exit_code == 2 and "nope" in result.output


def test_the_gpu_warm_up_runs_the_torch_metrics_once_and_never_raises(monkeypatch):
    """A GPU actor warms up (``warm_gpu_metrics``, in a thread) only when the run computes a torch metric there;
    the warm-up makes SDR's and both STOIs' calls on the device, and a failure stays inside it."""
    import exitbench.harness.record as R
    import exitbench.metrics.stoi_torch as ST
    from exitbench.harness.spec import RecordSettings

    assert R.gpu_metrics_used(RecordSettings())
    assert R.gpu_metrics_used(RecordSettings(metrics=("stoi",)))
    assert not R.gpu_metrics_used(RecordSettings(metrics=("pesq",)))
    assert not R.gpu_metrics_used(RecordSettings(metrics=("sdr", "stoi"), sdr_backend="mir_eval",
                                                 stoi_backend="pystoi"))
    calls: list[tuple] = []
    real_sdr, real_stoi = R.sdr, ST.stoi_torch
    monkeypatch.setattr(R, "sdr", lambda est, ref, **k: calls.append(("sdr", k["device"])) or real_sdr(est, ref, **k))
    monkeypatch.setattr(ST, "stoi_torch", lambda x, y, fs, extended=False, **k:
                        calls.append(("stoi", str(x.device), extended)) or real_stoi(x, y, fs, extended, **k))
    R.warm_gpu_metrics("cpu")  # the same calls as on a GPU, on CPU here
    assert calls == [("sdr", "cpu"), ("stoi", "cpu", False), ("stoi", "cpu", True)]
    R.warm_gpu_metrics("not-a-device")  # never raises: the real call reports its own failure
