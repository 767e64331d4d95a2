"""Two worked adapters of real third-party code: Asteroid's ConvTasNet and DPRNNTasNet with early exits.

`examples/asteroid_exits.py` adds the exits with the adapter toolkit, as the README's "Evaluate
your own model" shows. Asteroid comes from its PyPI package (the test command installs it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

EXAMPLES = str(Path(__file__).parents[1] / "examples")
sys.path.insert(0, EXAMPLES)

if os.environ.get("CI"):
    import asteroid  # noqa: F401  (CI installs it: a missing install must fail, not skip)
else:
    pytest.importorskip("asteroid", reason="pip install --no-deps asteroid==0.7.0 (see the README)")

import asteroid_exits  # noqa: E402

from exitbench.harness.cli import app  # noqa: E402
from exitbench.models.adapters import measure_macs  # noqa: E402
from exitbench.models.contract import check_model  # noqa: E402
from exitbench.results.views import connect  # noqa: E402

FACTORIES = {"conv_tasnet": asteroid_exits.conv_tasnet, "dprnn_tasnet": asteroid_exits.dprnn_tasnet}


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def adapted(request):
    return request.param, FACTORIES[request.param]()


def test_the_deepest_exit_is_asteroids_own_output(adapted):
    _, model = adapted
    check_model(model)
    x = 0.1 * torch.randn(12_345)
    with torch.no_grad():
        ours = model.forward_all(x).estimates
        theirs = model.module(x[None])[0]
    assert ours.shape == (model.num_levels, 2, 12_345)
    torch.testing.assert_close(ours[-1], theirs, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(ours[0], ours[-1]), "a shallower exit must be an estimate of its own"


def test_exit_macs_rise_and_the_deepest_is_the_whole_forward(adapted):
    _, model = adapted
    macs = [model.macs_per_sample(i) for i in range(model.num_levels)]
    assert macs == sorted(macs) and len(set(macs)) == len(macs)
    probe = torch.zeros(1, model.sample_rate)
    torch.manual_seed(0)
    probe.normal_(0, 0.1)
    whole = measure_macs(model.module, probe)[0]
    # the deepest exit computes what Asteroid's forward does (the exit path runs no layer twice)
    assert macs[-1] == pytest.approx(whole, rel=0.01)


def test_an_asteroid_model_goes_from_factory_to_run_replay_and_report(adapted, tmp_path):
    name, model = adapted
    runner = CliRunner()
    env = {"PYTHONPATH": os.pathsep.join([EXAMPLES, os.environ.get("PYTHONPATH", "")])}
    target = f"asteroid_exits:{name}"
    r = runner.invoke(app, ["run", "--executor", "local", "-m", target, "--model-arg", "n_repeats=2",
                            "--dataset", "demo", "--limit", "4", "--metrics", "stoi", "-r", str(tmp_path), "-q"],
                      env=env)
    assert r.exit_code == 0, r.output
    con = connect(tmp_path)
    run_id, levels = con.execute("SELECT run_id, num_levels FROM runs").fetchone()
    assert levels == 2
    gmacs = [g for (g,) in con.execute("SELECT gmacs FROM levels ORDER BY level").fetchall()]
    assert gmacs == sorted(gmacs) and gmacs[0] > 0
    assert con.execute("SELECT count(DISTINCT utt_id) FROM utterances").fetchone()[0] == 4
    r = runner.invoke(app, ["replay", run_id, "-p", "oracle:t=0", "-r", str(tmp_path)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["report", run_id, "-r", str(tmp_path), "-o", str(tmp_path / "report")])
    assert r.exit_code == 0 and list((tmp_path / "report").glob("*.html")), r.output
    again = runner.invoke(app, ["run", "--executor", "local", "-m", target, "--model-arg", "n_repeats=2",
                                "--model-arg", "seed=1", "--dataset", "demo", "--limit", "4", "--metrics", "stoi",
                                "-r", str(tmp_path), "-q"], env=env)
    assert again.exit_code == 0 and "already complete" not in again.output  # other weights, another run
