"""Your own model: identities from content, model arguments, block size, the contract check, the toolkit."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import PLUGINS
from typer.testing import CliRunner

from exitbench.harness.cli import app
from exitbench.harness.local import LocalExecutor
from exitbench.harness.runner import BrokenModelError, execute, prepare
from exitbench.harness.spec import RecordSettings, RunSpec
from exitbench.models.adapters import MultiExitAdapter, measure_macs
from exitbench.models.registry import resolve_model
from exitbench.results.views import connect

SMALL = (("num_utterances", "3"),)
TINY = "exitbench_testmodels:tiny_exits"


def run_id(model: str, args: tuple = (), **settings) -> str:
    return prepare(RunSpec(model, "synthetic", SMALL, RecordSettings(metrics=(), **settings), args)).run_id


# -- identities -------------------------------------------------------------------------------------
def test_a_factory_run_id_changes_with_its_weights_its_arguments_and_the_block_size(monkeypatch):
    base = run_id(TINY)
    assert run_id(TINY) == base, "the same model and inputs must give the same id"
    assert run_id(TINY, (("seed", "1"),)) != base  # other weights
    assert run_id(TINY, (("hidden", "8"),)) != base  # another argument
    assert run_id(TINY, (("hidden", "16"),)) == base  # its default, given explicitly: the same model
    assert run_id(TINY, block_size=4000) != base  # another block size
    assert run_id(TINY, block_size=2000) == base  # the model's own block size, given explicitly
    assert run_id("press-s", block_size=4000) != run_id("press-s")


def test_weights_from_the_environment_can_never_reuse_a_run(monkeypatch, tmp_path):
    monkeypatch.setenv("EXITBENCH_TEST_SEED", "0")
    spec = RunSpec("exitbench_testmodels:env_seeded", "synthetic", SMALL, RecordSettings(metrics=()))
    first = execute(prepare(spec), tmp_path, LocalExecutor())
    monkeypatch.setenv("EXITBENCH_TEST_SEED", "1")
    second = execute(prepare(spec), tmp_path, LocalExecutor())
    assert second.run_id != first.run_id and not second.already_complete


def test_one_changed_weight_changes_the_identity():
    a = resolve_model(TINY)
    b = resolve_model(TINY)
    with torch.no_grad():
        b.model.module.mask.weight[0, 0, 0] += 1e-3
    assert a.model.identity() != b.model.identity()


def test_model_args_are_typed_by_the_factory_signature():
    m = resolve_model(TINY, {"hidden": "8", "seed": "3"}).model
    assert m.module.hidden == 8
    with pytest.raises(ValueError, match="expected an integer"):
        resolve_model(TINY, {"hidden": "eight"})
    with pytest.raises(ValueError, match="takes no argument 'hiden'; its arguments: seed, hidden, block_size"):
        resolve_model(TINY, {"hiden": "8"})
    with pytest.raises(ValueError, match="applies to module:factory models"):
        resolve_model("press-s", {"seed": "1"})


def test_block_size_is_a_recording_setting(tmp_path):
    out = execute(prepare(RunSpec("press-s", "synthetic", SMALL, RecordSettings(metrics=(), block_size=4000))),
                  tmp_path, LocalExecutor())
    con = connect(tmp_path)
    assert con.execute("SELECT block_size FROM runs").fetchone()[0] == 4000
    assert con.execute("SELECT max(n) FROM blocks").fetchone()[0] == 4000
    assert out.num_errors == 0
    with pytest.raises(ValueError, match="not a positive multiple of the encoder stride"):
        prepare(RunSpec("press-s", "synthetic", SMALL, RecordSettings(metrics=(), block_size=2001)))


# -- the contract check -----------------------------------------------------------------------------
CONTRACT_MISTAKES = {
    "no_module": "has no `module` attribute",
    "dup_levels": "level names must be unique",
    "zero_macs": "is 0.0; expected a positive number",
    "falling_macs": "MACs must not decrease with the level",
    "bad_shape": "estimates has shape [4, 1, 5000]; expected [4, 2, 5000]",
    "int_dtype": "expected a floating dtype",
    "nan": "contains NaN or Inf",
}


@pytest.mark.parametrize("what", sorted(CONTRACT_MISTAKES))
def test_every_contract_mistake_is_one_line_exit_2_and_no_run(what, tmp_path):
    result = CliRunner().invoke(app, ["run", "--executor", "local", "-m", "exitbench_testmodels:broken",
                                      "--model-arg", f"what={what}", "-r", str(tmp_path), "-q"])
    assert result.exit_code == 2, result.output
    assert CONTRACT_MISTAKES[what] in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 3  # one error line (folded by the terminal at most)
    assert not (tmp_path / "runs").exists()


def test_an_adapter_without_macs_and_a_missing_argument_are_exit_2():
    runner = CliRunner()
    r = runner.invoke(app, ["check-model", "-m", "exitbench_testmodels:no_macs"])
    assert r.exit_code == 2 and "macs_per_sample" in r.output
    r = runner.invoke(app, ["check-model", "-m", "exitbench_testmodels:broken"])
    assert r.exit_code == 2 and "missing a required argument: 'what'" in r.output
    r = runner.invoke(app, ["check-model", "-m", TINY])
    assert r.exit_code == 0 and "fits the ExitModel contract" in r.output


def test_a_model_failing_the_same_way_on_the_first_utterances_stops_the_run(tmp_path):
    # fine on the contract's short synthetic input, raises on every real (> 2 s) utterance
    spec = RunSpec("exitbench_testmodels:raise_on_long", "synthetic",
                   (("num_utterances", "12"), ("seconds", "3")), RecordSettings(metrics=(), shard_size=2))
    p = prepare(spec)
    with pytest.raises(BrokenModelError, match="failed on the first 5 utterances with the same error"):
        execute(p, tmp_path, LocalExecutor())
    con = connect(tmp_path)
    assert con.execute("SELECT status FROM runs").fetchall() == [("failed",)]
    assert not (tmp_path / "_staging").exists() and not (tmp_path / "errors").exists()


# -- the toolkit ------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_measure_macs_agrees_with_the_shipped_separators_declared_macs(level):
    press = resolve_model("press-s").model
    x = torch.randn(1, 16000)
    measured = measure_macs(press.module, x, call=lambda x: press.module(x, upto=level))[0]
    assert measured == pytest.approx(press.macs_per_sample(level), rel=0.01)


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_measure_macs_agrees_with_the_shipped_enhancers_declared_macs(level):
    slim = resolve_model("slimdemucs-s").model
    x = torch.randn(1, 64_000)
    # the LSTM is counted by the toolkit's analytic rule, which FlopCounterMode cannot see
    measured = measure_macs(slim.module, x, call=lambda x: slim.module(x, levels=[level], router=False))[0]
    assert measured == pytest.approx(slim.macs_per_sample(level), rel=0.01)


def test_measure_macs_splits_by_module_path_and_counts_recurrent_kernels():
    net = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3, padding=1), torch.nn.Conv1d(4, 4, 1))
    x = torch.randn(1, 1, 100)
    per_level = measure_macs(net, x, levels=[["0"], ["0", "1"]])
    assert per_level == pytest.approx([1 * 4 * 3, 1 * 4 * 3 + 4 * 4])
    lstm = torch.nn.LSTM(5, 7, num_layers=2, bidirectional=True, batch_first=True)
    got = measure_macs(lstm, torch.randn(1, 10, 5), call=lambda x: lstm(x))[0] * 5 / 10  # per time step
    assert got == pytest.approx(2 * 4 * 7 * (5 + 7) + 2 * 4 * 7 * (14 + 7))


def test_the_adapter_measures_each_exit_and_records_replays_and_reports(tmp_path):
    model = resolve_model(TINY).model
    assert isinstance(model, MultiExitAdapter)
    macs = [model.macs_per_sample(i) for i in range(3)]
    h = model.module.hidden
    step = h * h * 3 / 8  # one more repeat: a dilated conv of h x h x 3 per frame, a frame every 8 samples
    # (one frame more than N / 8 on the 1 s probe: the encoder pads both ends)
    assert macs[1] - macs[0] == pytest.approx(step, rel=2e-3) and macs[2] - macs[1] == pytest.approx(step, rel=2e-3)
    runner = CliRunner()
    env = {"PYTHONPATH": os.pathsep.join([PLUGINS, os.environ.get("PYTHONPATH", "")])}
    r = runner.invoke(app, ["run", "--executor", "local", "-m", TINY, "--dataset-opt", "num_utterances=3",
                            "--metrics", "stoi", "-r", str(tmp_path), "-q"], env=env)
    assert r.exit_code == 0, r.output
    rid = connect(tmp_path).execute("SELECT run_id FROM runs").fetchone()[0]
    r = runner.invoke(app, ["replay", rid, "-p", "oracle:t=5", "-r", str(tmp_path)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["report", rid, "-r", str(tmp_path), "-o", str(tmp_path / "report")])
    assert r.exit_code == 0, r.output
    assert list((tmp_path / "report").glob("*.html"))
