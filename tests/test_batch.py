"""--batch: utterances sharing a model pass record what one pass each records (issue 15, item 4).

Kernels chosen by batch size round differently (about 1e-6 of an output's scale on this CPU), so equal means:
every row, id, count and error the same, every float within that rounding (``contract.BATCH_TOL``).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from exitbench.errors import UsageError
from exitbench.harness.cli import app
from exitbench.harness.local import LocalExecutor
from exitbench.harness.runner import execute, prepare
from exitbench.harness.spec import RecordSettings, RunSpec
from exitbench.models.contract import check_forward_many
from exitbench.models.registry import resolve_model

runner = CliRunner()
#: lengths vary by ±25 % around 1.5 s: every utterance's last block is partial, and no two are equal
VARIED = (("num_utterances", "5"), ("seconds", "1.5"))


def tables(root, run_id):
    """The run's blocks and utterances tables, rows in a fixed order."""
    out = {}
    for name, keys in (("blocks", ["utt_id", "level", "source", "block"]), ("utterances", ["utt_id", "level", "source"])):
        t = pq.read_table(root / name / f"run={run_id}" / "part-0.parquet").to_pandas()
        out[name] = t.sort_values(keys).reset_index(drop=True)
    return out


def record(root, spec, **kw):
    return execute(prepare(spec), root, LocalExecutor("cpu", **kw))


def assert_identical(a, b):
    """Same rows and keys; floats to float32 kernel rounding (SI-SNR: 1e-4 dB)."""
    for name in a:
        x, y = a[name], b[name]
        assert list(x.columns) == list(y.columns) and x.shape == y.shape, name
        for col in x.columns:
            if x[col].dtype.kind == "f":
                np.testing.assert_allclose(x[col].to_numpy(), y[col].to_numpy(), rtol=1e-5, atol=1e-4,
                                           equal_nan=True, err_msg=f"{name}.{col}")
            else:
                assert x[col].equals(y[col]), f"{name}.{col}"
    changed = a["blocks"]["e_est"].to_numpy() != b["blocks"]["e_est"].to_numpy()
    return float(changed.mean())


@pytest.mark.parametrize("model_args,dataset", [((("chunked", "true"),), VARIED),  # a row of blocks, any length
                                                ((), VARIED)])
def test_a_batched_recording_is_the_one_by_one_recording(tmp_path, model_args, dataset):
    """press-s chunked (one row of whole blocks of utterances of different lengths) and press-s whole (equal
    lengths stacked: synthetic lengths vary, so the stack groups by length and runs the rest alone)."""
    spec = RunSpec("press-s", "synthetic", dataset, RecordSettings(metrics=("stoi",), shard_size=5), model_args)
    one = record(tmp_path / "one", spec)
    many = record(tmp_path / "many", spec, batch=4)
    assert one.run_id == many.run_id and one.num_errors == many.num_errors == 0
    assert_identical(tables(tmp_path / "one", one.run_id), tables(tmp_path / "many", many.run_id))
    manifest = pq.read_table(tmp_path / "many" / "runs" / f"run={many.run_id}" / "manifest.parquet").to_pylist()[0]
    execution = json.loads(manifest["execution"])
    assert execution["batch"] == 4 and 0 <= execution["batch_difference"] < 1e-5


def test_press_stacks_equal_lengths_into_one_exact_batch():
    model = resolve_model("press-s").model
    gen = torch.Generator().manual_seed(3)
    mixes = [0.1 * torch.randn(n, generator=gen) for n in (8000, 8000, 8000, 9100)]
    calls = []
    hook = model.module.register_forward_hook(lambda mod, args, out: calls.append(tuple(args[0].shape)))
    try:
        together = model.forward_many(mixes)
    finally:
        hook.remove()
    assert sorted(calls) == [(1, 9100), (3, 8000)]  # one pass for the three of equal length
    for m, out in zip(mixes, together):
        alone = model.forward_all(m)
        for a, b in ((out.estimates, alone.estimates), (out.alpha, alone.alpha), (out.beta, alone.beta)):
            assert a.shape == b.shape and float((a - b).abs().max() / b.abs().max()) < 1e-5


def test_a_failing_batch_runs_again_one_by_one_and_only_its_own_failures_are_errors(tmp_path):
    """A pass over more than 2.5 s raises: every row of a batch does, each short utterance alone does not; the
    utterances longer than 2.5 s fail alone too, as they do without --batch."""
    spec = RunSpec("exitbench_testmodels:raise_on_long_pass", "synthetic",
                   (("num_utterances", "4"), ("seconds", "2.2")), RecordSettings(metrics=(), shard_size=4))
    one = record(tmp_path / "one", spec)
    many = record(tmp_path / "many", spec, batch=4)
    errors = pq.read_table(tmp_path / "many" / "errors" / f"run={many.run_id}" / "part-0.parquet").to_pylist()
    p = prepare(spec)
    long = {u for u in p.utt_ids if p.testset.load(u).num_samples > 20000}
    assert 0 < many.num_errors == one.num_errors < 4
    assert {e["utt_id"] for e in errors} == {e["utt_id"] for e in
                                             pq.read_table(tmp_path / "one" / "errors" / f"run={one.run_id}"
                                                           / "part-0.parquet").to_pylist()}
    assert all(e["stage"] == "model" and "CUDA-like failure" in e["reason"] for e in errors)
    assert {e["utt_id"] for e in errors} == long
    assert_identical(tables(tmp_path / "one", one.run_id), tables(tmp_path / "many", many.run_id))


class _Inexact:
    """press-s chunked whose forward_many changes the outputs by 0.1 % (a batch that leaks between rows)."""

    def __new__(cls):
        model = resolve_model("press-s", {"chunked": "true"}).model
        plain = model.forward_many

        def forward_many(mixtures):
            outs = plain(mixtures)
            for o in outs:
                o.estimates = o.estimates * (1 + 1e-3)
            return outs

        model.forward_many = forward_many
        return model


def test_a_batch_that_changes_an_output_is_refused_in_one_line():
    model = _Inexact()
    with pytest.raises(UsageError, match=r"--batch 4: .* other outputs in a batch than alone \(estimates"):
        check_forward_many(model, 4, "press-s")
    assert 0 <= check_forward_many(resolve_model("press-s", {"chunked": "true"}).model, 4) < 1e-5  # the real one


def test_batch_on_the_command_line(tmp_path):
    root = tmp_path / "r"
    args = ["run", "--model", "press-s", "-d", "synthetic", "--dataset-opt", "num_utterances=3", "--metrics", "none",
            "--executor", "local", "--device", "cpu", "-r", str(root), "-q"]
    result = runner.invoke(app, [*args, "--batch", "3"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*args, "--batch", "0", "--force"])
    assert result.exit_code == 2 and "--batch must be" in result.output and "Traceback" not in result.output


def test_ray_actors_run_batches(ray_session, tmp_path):
    """On Ray: a --batch call per group of a shard (4 utterances, batch 3: a group of 3 and one alone), its
    records handed on per utterance to the metric tasks; the same tables as the in-process one-by-one run."""
    from exitbench.harness.ray_executor import RayExecutor

    spec = RunSpec("press-s", "synthetic", (("num_utterances", "4"), ("seconds", "1.5")),
                   RecordSettings(metrics=("stoi",), shard_size=4), (("chunked", "true"),))
    ref = record(tmp_path / "one", spec)
    ex = RayExecutor(workers=1, max_metric_tasks=2, device="cpu", batch=3)
    got = execute(prepare(spec), tmp_path / "ray", ex)
    assert got.run_id == ref.run_id and got.num_errors == 0
    assert_identical(tables(tmp_path / "one", ref.run_id), tables(tmp_path / "ray", got.run_id))
    assert ex.describe()["batch"] == 3 and 0 <= ex.describe()["batch_difference"] < 1e-5
