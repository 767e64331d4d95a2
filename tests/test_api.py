"""The Python API (exitbench.open): each method against the CLI command or internal function it stands for."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import record_local
from typer.testing import CliRunner

import exitbench
from exitbench.api import Results
from exitbench.errors import ResultsRootError
from exitbench.harness.cli import app
from exitbench.policies import PolicyError, parse_policy
from exitbench.results.catalog import list_runs
from exitbench.results.compare import compare_runs
from exitbench.results.replays import RunNotFound, load_block_arrays, policy_slug, replay_run, run_shape, sweep_run

runner = CliRunner()
SPECS = ["oracle:t=10", "oracle-best:t=10", "probabilistic:t=10,p=0.9", "oracle:t=10,p_ref=-25", "static:l=1"]


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    """press-s (variance heads) on 4 synthetic mixtures, and a second, smaller run in the same root."""
    root = tmp_path_factory.mktemp("api")
    first = record_local(root, options=(("num_utterances", "4"), ("seconds", "1.0")), metrics=(), shard_size=2)
    second = record_local(root, options=(("num_utterances", "2"), ("seconds", "0.5"), ("seed", "3")), metrics=())
    return root, first.run_id, second.run_id


def _arrays_with_names(root, run_id):
    levels = run_shape(root, run_id)["levels"]
    return load_block_arrays(root, run_id).with_level_names(levels.loc[levels.kind == "static", "name"].tolist())


def test_import_and_runs_stay_light(rec):
    root, run_id, _ = rec
    code = ("import sys, json, exitbench\n"
            "heavy = ('torch', 'ray', 'matplotlib')\n"
            "after_import = [m for m in heavy if m in sys.modules]\n"
            f"runs = exitbench.open({str(root)!r}).runs()\n"
            "print(json.dumps({'import': after_import, 'runs': [m for m in heavy if m in sys.modules],"
            " 'ids': runs.run_id.tolist()}))\n")
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert out["import"] == [] and out["runs"] == []
    assert run_id in out["ids"]
    bare = subprocess.run([sys.executable, "-c", "import sys, exitbench; print('api' in dir(exitbench),"
                                                 " 'exitbench.api' in sys.modules, 'pandas' in sys.modules)"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert bare == ["False", "False", "False"]  # exitbench.open imports the API on first use


def test_open_runs_and_prefixes(rec):
    root, run_id, second = rec
    res = exitbench.open(root)
    assert isinstance(res, Results) and exitbench.Results is Results
    runs = res.runs()
    pd.testing.assert_frame_equal(runs, list_runs(root))
    assert set(runs.run_id) == {run_id, second} and (runs.status == "complete").all()
    csv = runner.invoke(app, ["catalog", "-r", str(root), "--csv"])
    assert csv.exit_code == 0, csv.output
    assert sorted(pd.read_csv(io.StringIO(csv.stdout)).run_id) == sorted(runs.run_id)
    assert res.runs(run=run_id[:6]).run_id.tolist() == [run_id]
    assert res.run_id(run_id[:5]) == run_id
    with pytest.raises(RunNotFound, match="ambiguous"):
        res.run_id("")
    with pytest.raises(RunNotFound, match="no run 'zzz'"):
        res.levels("zzz")
    with pytest.raises(ResultsRootError):
        exitbench.open(root / "missing")


def test_levels_utterances_blocks_are_the_tables(rec):
    root, run_id, _ = rec
    res = exitbench.open(root)
    levels = res.levels(run_id[:6])
    pd.testing.assert_frame_equal(levels[["level", "name", "kind", "gmacs", "params"]],
                                  run_shape(root, run_id)["levels"])
    assert levels.name.tolist() == ["exit1", "exit2", "exit3", "exit4"]
    sql = runner.invoke(app, ["query", "-r", str(root), "--csv",
                              f"SELECT level, name, macs_per_sample FROM levels WHERE run = '{run_id}' ORDER BY level"])
    assert sql.exit_code == 0, sql.output
    pd.testing.assert_frame_equal(pd.read_csv(io.StringIO(sql.stdout)), levels[["level", "name", "macs_per_sample"]],
                                  check_dtype=False)

    def parquet(table, keys):
        frame = pq.read_table(root / table / f"run={run_id}" / "part-0.parquet").to_pandas()
        return frame.sort_values(keys).reset_index(drop=True)

    utts = res.utterances(run_id)
    pd.testing.assert_frame_equal(utts, parquet("utterances", ["utt_id", "level", "source"])[utts.columns],
                                  check_dtype=False)
    assert utts.utt_id.nunique() == 4 and set(utts.level) == {0, 1, 2, 3}
    blocks = res.blocks(run_id)
    pd.testing.assert_frame_equal(blocks, parquet("blocks", ["utt_id", "block", "level", "source"])[blocks.columns],
                                  check_dtype=False)
    first = blocks.utt_id.iloc[0]
    one = res.blocks(run_id, first)
    pd.testing.assert_frame_equal(one, blocks[blocks.utt_id == first].reset_index(drop=True))
    last = blocks.utt_id.iloc[-1]
    assert len(res.blocks(run_id, [first, last])) == len(one) + (blocks.utt_id == last).sum()
    arrays = res.arrays(run_id)
    assert arrays.level_names == ("exit1", "exit2", "exit3", "exit4") and res.arrays(run_id) is arrays
    assert arrays.num_blocks * arrays.num_levels * arrays.num_sources == len(blocks)


def test_replay_equals_the_replay_module(rec):
    root, run_id, _ = rec
    res = exitbench.open(root)
    arrays = _arrays_with_names(root, run_id)
    summary = res.replay(run_id[:6], SPECS)
    utt = res.replay(run_id, SPECS, per="utterance")
    blk = res.replay(run_id, SPECS, per="block")
    canonical = [parse_policy(spec).spec() for spec in SPECS]  # e.g. probabilistic's condition=all spelled out
    assert summary.policy.tolist() == canonical and canonical[0] == "oracle:t=10"
    for i, spec in enumerate(canonical):
        want = replay_run(root, run_id, spec, arrays=arrays)
        s = want.summary()
        row = summary.iloc[i]
        for key in ("run", "policy", "t", "gmacs", "si_snri", "snri", "regret"):
            assert row[key] == s[key], key
        assert {name: row[f"blocks_{name}"] for name in s["histogram"]} == s["histogram"]
        got = utt[utt.policy == spec].drop(columns=["policy", "t"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want.per_utt)
        got = blk[blk.policy == spec].drop(columns=["policy", "t"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want.per_block, check_categorical=False)
    # oracle-best is the lower bound on regret; a fixed reference power is another configuration
    by = summary.set_index("policy")
    assert by.loc["oracle-best:t=10", "regret"] <= min(by.loc["oracle:t=10", "regret"],
                                                       by.loc["probabilistic:t=10,p=0.9,condition=all", "regret"])
    assert by.loc["oracle:t=10,p_ref=-25", "gmacs"] != by.loc["oracle:t=10", "gmacs"]
    # level names resolve with the run's levels table; digits stay indices (exit2 is index 1)
    named = res.replay(run_id, ["static:l=exit2", "static:l=1", "static:l=2"])
    assert named.gmacs.iloc[0] == named.gmacs.iloc[1] != named.gmacs.iloc[2]
    assert named.blocks_exit2.iloc[0] == arrays.num_blocks
    with pytest.raises(PolicyError) as info:
        res.replay(run_id, "static:l=exit9")
    assert str(info.value) == ("static: no level named 'exit9'; this run's levels are exit1, exit2, exit3, exit4"
                               " (or their indices 0..3)")


def test_replay_store_matches_the_cli(rec):
    root, run_id, _ = rec
    spec = "oracle-best:t=12,p_ref=-30"
    cli = runner.invoke(app, ["replay", run_id[:6], "-p", spec, "-r", str(root)])
    assert cli.exit_code == 0, cli.output
    stored = root / "replays" / f"run={run_id}" / f"policy={policy_slug(spec)}" / "part-0.parquet"
    by_cli = pq.read_table(stored).to_pandas()
    stored.unlink()
    api = exitbench.open(root).replay(run_id, spec, per="utterance", store=True)
    by_api = pq.read_table(stored).to_pandas()
    pd.testing.assert_frame_equal(by_api, by_cli)
    pd.testing.assert_frame_equal(api.drop(columns=["policy", "t"]),
                                  by_cli.drop(columns=["policy_spec", "t"]), check_dtype=False)
    assert (by_cli.policy_spec == spec).all()


def test_sweep_equals_sweep_run(rec):
    root, run_id, _ = rec
    res = exitbench.open(root)
    got = res.sweep(run_id[:6], targets=[10.0, 15.0])
    want = sweep_run(root, run_id, [10.0, 15.0], store=False)
    pd.testing.assert_frame_equal(got, want)
    assert got.attrs["skipped"] == want.attrs["skipped"]
    assert not (root / "sweeps" / f"run={run_id}").exists()  # read-only unless asked
    some = res.sweep(run_id, ["oracle-best", "oracle:p_ref=-25", "static:l=exit3"], [10.0], store=True)
    assert set(zip(some.policy, some.params)) == {("oracle-best", "t=10"), ("oracle", "t=10,p_ref=-25"),
                                                  ("static", "l=2")}
    assert (root / "sweeps" / f"run={run_id}").is_dir()
    best = some[some.policy == "oracle-best"].iloc[0]
    assert best.regret <= got[got.t == 10.0].regret.min() + 1e-12  # the lower bound of every swept policy


def test_compare_a_run_with_itself(rec):
    root, run_id, _ = rec
    res = exitbench.open(root)
    rows = res.compare(run_id[:6], run_id, metrics="si_snri,snri", resamples=200)
    want = compare_runs(root, run_id, run_id, metrics=["si_snri", "snri"], resamples=200, curves=False)
    pd.testing.assert_frame_equal(rows, want.rows.reset_index(drop=True))
    assert not rows.attrs["regressed"] and (rows.verdict == "same").all()
    assert np.allclose(rows.delta, 0.0) and rows.attrs["base"] == rows.attrs["candidate"] == run_id
    assert {"level", "policy"} == set(rows.kind)
    cli = runner.invoke(app, ["compare", run_id, run_id, "-r", str(root), "--resamples", "200", "--no-curves"])
    assert cli.exit_code == 0 and "no significant regression" in cli.output
    curves = res.compare_curves(run_id, run_id, candidate_root=res, targets=[10.0])
    assert len(curves) and np.allclose(curves.delta.dropna(), 0.0) and (curves.verdict != "worse").all()
