"""Sweeps on real checkpoints: spec parsing, record-once, replays stored, rerun skips, interrupted sweeps resume."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import record_local
from typer.testing import CliRunner


from exitbench.harness.cli import app
from exitbench.harness.sweep import (default_record_fn, load_sweep_spec, parse_sweep_spec, replay_stored,
                                     run_sweep)
from exitbench.models.checkpoint import save_checkpoint
from exitbench.models.registry import resolve_model
from exitbench.results.replays import stored_sweep_files
from exitbench.results.replays import replay_run
from exitbench.results.views import connect

runner = CliRunner()

SPEC = """
name = "tiny"
checkpoints = ["ckpt/*.pt"]
targets = [10.0, 20.0]

[settings]
metrics = "none"
shard_size = 2

[[testsets]]
dataset = "synthetic"
options = { num_utterances = 4, seconds = 0.5 }

[[policies]]
name = "static"

[[policies]]
name = "uniform"
seed = [0, 1]

[[policies]]
name = "oracle"

[[policies]]
name = "probabilistic"
t = 15.0
p = [0.5, 0.9]

[[policies]]
name = "router"
"""
OPTIONS = (("num_utterances", "4"), ("seconds", "0.5"))




@pytest.fixture
def spec_dir(tmp_path):
    """Two checkpoints of one 'training run', named so that file order and step order disagree."""
    ck = resolve_model("press-s").checkpoint
    sd = {k: v * 1.5 if k.startswith("decoders.1.mask") else v for k, v in ck.state_dict.items()}
    save_checkpoint(tmp_path / "ckpt" / "z-early.pt", ck.architecture, ck.config, ck.state_dict,
                    {**ck.metadata, "step": 1000})
    save_checkpoint(tmp_path / "ckpt" / "a-late.pt", ck.architecture, ck.config, sd, {**ck.metadata, "step": 2000})
    (tmp_path / "sweep.toml").write_text(SPEC)
    return tmp_path


EXPECTED_CONFIGS = ["static:l=0", "static:l=1", "static:l=2", "static:l=3", "uniform:seed=0", "uniform:seed=1",
                    "oracle:t=10", "oracle:t=20", "probabilistic:t=15,p=0.5,condition=all",
                    "probabilistic:t=15,p=0.9,condition=all"]


def test_spec_expands_globs_by_step_and_policy_grids(spec_dir):
    spec = load_sweep_spec(spec_dir / "sweep.toml")
    assert [c.model.rsplit("/", 1)[-1] for c in spec.checkpoints] == ["z-early.pt", "a-late.pt"]
    assert [c.step for c in spec.checkpoints] == [1000, 2000]
    assert spec.testsets[0].options == OPTIONS and spec.settings.metrics == () and spec.settings.shard_size == 2
    configs = [c for g in spec.policies for c in g.configurations(4, spec.targets)]
    assert configs == EXPECTED_CONFIGS + ["router"]


@pytest.mark.parametrize("patch,fragment", [
    ({"checkpoints": ["nothing/*.pt"]}, "matches no file"),
    ({"policies": [{"name": "oracle", "tt": 3}]}, "has no parameter tt"),
    ({"policies": [{"name": "nosuch"}]}, "nosuch"),
    ({"settings": {"metrics": ["bogus"]}}, "unknown metrics"),
    ({"setings": {}}, "unknown key(s) ['setings']"),
    ({"testsets": []}, "no [[testsets]]"),
])
def test_bad_specs_fail_before_any_compute(spec_dir, patch, fragment):
    data = {"checkpoints": ["ckpt/*.pt"], "testsets": [{"dataset": "synthetic"}], **patch}
    with pytest.raises(ValueError) as info:
        parse_sweep_spec(data, spec_dir)
    assert fragment in str(info.value)
    (spec_dir / "bad.toml").write_text('checkpoints = ["nothing/*.pt"]\n[[testsets]]\ndataset = "synthetic"\n')
    result = runner.invoke(app, ["sweep", str(spec_dir / "bad.toml"), "-r", str(spec_dir / "r")])
    assert result.exit_code == 2 and "matches no file" in result.output and "Traceback" not in result.output


def test_sweep_resumes_after_an_interruption_and_a_rerun_skips_everything(spec_dir):
    root = spec_dir / "results"
    spec = load_sweep_spec(spec_dir / "sweep.toml")
    early, late = spec.checkpoints
    # one recording already done by hand (same settings -> same run id)
    pre = record_local(root, model=early.model, options=OPTIONS, metrics=(), shard_size=2)

    # a sweep interrupted (Ctrl-C) while recording the second checkpoint keeps what it finished
    record = default_record_fn(spec, root)

    def interrupt_on_late(run_spec):
        if run_spec.model == late.model:
            raise KeyboardInterrupt
        return record(run_spec)

    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, root, interrupt_on_late)
    assert all(replay_stored(root, pre.run_id, c).exists() for c in EXPECTED_CONFIGS)
    assert not replay_stored(root, pre.run_id, "router").exists()

    result = runner.invoke(app, ["sweep", str(spec_dir / "sweep.toml"), "-r", str(root), "-q"])
    assert result.exit_code == 0, result.output
    assert "skipping policy router" in result.output and "no router" in result.output
    assert "1 complete (skipped), 1 recorded" in result.output
    con = connect(root)
    runs = con.execute("SELECT run_id, step, status FROM runs ORDER BY step").fetchall()
    assert [(r[1], r[2]) for r in runs] == [(1000, "complete"), (2000, "complete")] and runs[0][0] == pre.run_id
    late_id = runs[1][0]
    for run_id in (pre.run_id, late_id):
        assert all(replay_stored(root, run_id, c).exists() for c in EXPECTED_CONFIGS)
        curves = pd.concat([pq.read_table(f).to_pandas() for f in stored_sweep_files(root, run_id)])
        assert set(curves["policy"]) == {"static", "uniform", "oracle", "probabilistic"}
        assert set(curves["t"]) >= {10.0, 20.0}
    # a stored replay is the replay: per-utterance SI-SNRi identical to a fresh one
    stored = pq.read_table(replay_stored(root, late_id, "oracle:t=20")).to_pandas()
    fresh = replay_run(root, late_id, "oracle:t=20").per_utt
    pd.testing.assert_series_equal(stored["si_snri"], fresh["si_snri"], check_names=False)

    # a rerun records nothing and replays nothing
    stamps = {p: p.stat().st_mtime_ns for p in (root / "replays").rglob("*.parquet")}
    stamps |= {p: p.stat().st_mtime_ns for p in (root / "sweeps").rglob("*.parquet")}
    result = runner.invoke(app, ["sweep", str(spec_dir / "sweep.toml"), "-r", str(root), "-q"])
    assert result.exit_code == 0, result.output
    assert "2 complete (skipped)" in result.output and "replayed" not in result.output.split("replays:")[-1]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert len(list((root / "replays").rglob("*.parquet"))) == 2 * len(EXPECTED_CONFIGS)


def test_dry_run_prints_the_plan_without_recording(spec_dir):
    result = runner.invoke(app, ["sweep", str(spec_dir / "sweep.toml"), "-r", str(spec_dir / "r"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "2 recording(s)" in result.output and not (spec_dir / "r" / "runs").exists()


def test_model_args_and_block_size_in_a_spec_reach_factories_and_the_run_id():
    data = {"checkpoints": ["press-s", "exitbench_testmodels:tiny_exits"], "model_args": {"seed": 3, "hidden": 8},
            "settings": {"block_size": 4000, "metrics": "none"},
            "testsets": [{"dataset": "synthetic", "options": {"num_utterances": 2}}]}
    sp = parse_sweep_spec(data)
    by_model = {rs.model: rs for _, _, rs in sp.run_specs()}
    assert by_model["exitbench_testmodels:tiny_exits"].model_args == (("hidden", "8"), ("seed", "3"))
    assert by_model["press-s"].model_args == ()  # a checkpoint carries its own config
    assert all(rs.settings.block_size == 4000 for rs in by_model.values())
    from exitbench.harness.runner import prepare

    p = prepare(by_model["exitbench_testmodels:tiny_exits"])
    assert p.model.module.hidden == 8 and p.model.block_size == 4000
