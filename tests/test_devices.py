"""--device: where the model runs, one-line errors for devices that are not there, and the manifest's record."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from exitbench.harness.cli import app
from exitbench.results.views import connect

COMMON = ["--model", "press-s", "--dataset", "synthetic", "--dataset-opt", "num_utterances=2",
          "--dataset-opt", "seconds=0.5", "--metrics", "none", "--quiet"]


def test_local_executor_records_where_the_model_ran(tmp_path):
    res = CliRunner().invoke(app, ["run", *COMMON, "--executor", "local", "--device", "cpu",
                                   "--results", str(tmp_path)])
    assert res.exit_code == 0, res.output
    execution = connect(tmp_path).execute("SELECT execution FROM runs").fetchone()[0]
    info = json.loads(execution)
    assert info["executor"] == "local" and info["device"] == "cpu" and info["gpu"] is None
    assert info["torch"] == torch.__version__


def test_a_device_that_is_not_there_is_one_line_exit_2(tmp_path):
    for device, words in (("cuda", "no CUDA device"), ("tpu", "--device must be auto, cpu, cuda")):
        if device == "cuda" and torch.cuda.is_available():
            continue
        res = CliRunner().invoke(app, ["run", *COMMON, "--executor", "local", "--device", device,
                                       "--results", str(tmp_path)])
        assert res.exit_code == 2 and words in res.output and "Traceback" not in res.output, res.output
    res = CliRunner().invoke(app, ["run", *COMMON, "--device", "cpu", "--gpus-per-worker", "1",
                                   "--results", str(tmp_path)])
    assert res.exit_code == 2 and "contradict" in res.output, res.output


def test_ray_executor_device_cuda_without_gpus_is_exit_2(ray_session, tmp_path):
    if torch.cuda.is_available():
        return
    res = CliRunner().invoke(app, ["run", *COMMON, "--device", "cuda", "--results", str(tmp_path)])
    assert res.exit_code == 2 and "--device cuda but the cluster has 0 GPU(s)" in res.output, res.output


def test_ray_executor_records_its_device(ray_session, tmp_path):
    res = CliRunner().invoke(app, ["run", *COMMON, "--device", "cpu", "--results", str(tmp_path)])
    assert res.exit_code == 0, res.output
    info = json.loads(connect(tmp_path).execute("SELECT execution FROM runs").fetchone()[0])
    assert info["executor"] == "ray" and info["device"] == "cpu" and info["gpus_per_worker"] == 0.0


def test_sweep_takes_the_device_too(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text('name = "d"\ncheckpoints = ["press-s"]\ntargets = [10.0]\n[settings]\nmetrics = "none"\n'
                    'executor = "local"\n[[testsets]]\ndataset = "synthetic"\n'
                    '[testsets.options]\nnum_utterances = 2\nseconds = 0.5\n')
    res = CliRunner().invoke(app, ["sweep", str(spec), "--results", str(tmp_path / "r"), "--device", "tpu", "-q"])
    assert res.exit_code == 2 and "--device must be auto, cpu, cuda" in res.output, res.output
    res = CliRunner().invoke(app, ["sweep", str(spec), "--results", str(tmp_path / "r"), "--device", "cpu", "-q"])
    assert res.exit_code == 0, res.output
    info = json.loads(connect(tmp_path / "r").execute("SELECT execution FROM runs").fetchone()[0])
    assert info["device"] == "cpu"
