"""The Ray executor on a real local cluster: same rows as in-process, resumable, fault tolerant."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import PLUGINS

from exitbench.harness.local import LocalExecutor
from exitbench.harness.ray_executor import RayExecutor
from exitbench.harness.runner import execute, prepare
from exitbench.harness.spec import RecordSettings, RunSpec
from exitbench.results.store import ResultStore
from exitbench.results.views import connect

SPEC = RunSpec("press-s", "synthetic", (("num_utterances", "6"),), RecordSettings(metrics=("stoi",), shard_size=2))


def blocks_of(root: Path, run_id: str):
    return pq.read_table(root / "blocks" / f"run={run_id}" / "part-0.parquet")


def assert_same_rows(got, want, rtol=1e-3):
    """Same keys in the same order; floats equal up to thread-count rounding of the convolutions."""
    assert got.num_rows == want.num_rows
    for name in got.column_names:
        a, b = got.column(name).to_numpy(zero_copy_only=False), want.column(name).to_numpy(zero_copy_only=False)
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-5, err_msg=name)
        else:
            assert (a == b).all(), name


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    outcome = execute(prepare(SPEC), root, LocalExecutor())
    return root, outcome


def test_ray_run_equals_the_in_process_run(ray_session, local_reference, tmp_path):
    outcome = execute(prepare(SPEC), tmp_path, RayExecutor(workers=1, max_metric_tasks=2))
    root, ref = local_reference
    assert outcome.run_id == ref.run_id and outcome.num_errors == 0
    assert_same_rows(blocks_of(tmp_path, outcome.run_id), blocks_of(root, ref.run_id))
    u_ray = pq.read_table(tmp_path / "utterances" / f"run={outcome.run_id}" / "part-0.parquet")
    u_loc = pq.read_table(root / "utterances" / f"run={ref.run_id}" / "part-0.parquet")
    assert_same_rows(u_ray.drop_columns(["metadata"]), u_loc.drop_columns(["metadata"]), rtol=1e-3)


def test_a_sigkilled_worker_is_retried_without_duplicates_or_gaps(ray_session, local_reference, tmp_path):
    spec = RunSpec("exitbench_testmodels:dies_once", SPEC.dataset, SPEC.dataset_options, SPEC.settings)
    ray_session.write_text("1")
    outcome = execute(prepare(spec), tmp_path, RayExecutor(workers=1))
    assert ray_session.read_text() == "0", "the worker never reached the kill"
    assert outcome.num_errors == 0
    root, ref = local_reference
    got, want = blocks_of(tmp_path, outcome.run_id), blocks_of(root, ref.run_id)
    assert_same_rows(got, want)


class CountingRay(RayExecutor):
    def run(self, prepared, store, shards, on_utterance):
        self.asked = sorted(shards)
        super().run(prepared, store, shards, on_utterance)


def test_a_rerun_does_only_the_missing_shards(ray_session, local_reference, tmp_path):
    p = prepare(SPEC)
    store = ResultStore(tmp_path)
    shards = p.shards()
    LocalExecutor().run(p, store, {0: shards[0], 2: shards[2]}, lambda k: None)  # an earlier, cut-off run
    ex = CountingRay(workers=1)
    outcome = execute(p, tmp_path, ex)
    assert ex.asked == [1] and outcome.shards_skipped == 2
    root, ref = local_reference
    assert_same_rows(blocks_of(tmp_path, p.run_id), blocks_of(root, ref.run_id))


def test_two_runs_into_one_root_do_not_clobber_each_other(ray_session, tmp_path):
    specs = [RunSpec("press-s", "synthetic", (("num_utterances", str(n)),), RecordSettings(metrics=(), shard_size=1))
             for n in (3, 4)]
    outcomes, errors = {}, []

    def go(spec):
        try:
            outcomes[spec] = execute(prepare(spec), tmp_path, RayExecutor(workers=1, max_metric_tasks=1))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(s,)) for s in specs]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    con = connect(tmp_path)
    counts = dict(con.execute("SELECT run, count(DISTINCT utt_id) FROM utterances GROUP BY run").fetchall())
    assert counts == {outcomes[specs[0]].run_id: 3, outcomes[specs[1]].run_id: 4}
    assert con.execute("SELECT count(*) FROM runs WHERE status = 'complete'").fetchone()[0] == 2


def test_a_model_that_raises_gives_error_rows_on_ray(ray_session, tmp_path):
    spec = RunSpec("exitbench_testmodels:raise_on_long", SPEC.dataset, SPEC.dataset_options,
                   RecordSettings(metrics=(), shard_size=2))
    outcome = execute(prepare(spec), tmp_path, RayExecutor(workers=1))
    assert outcome.num_errors > 0
    con = connect(tmp_path)
    assert con.execute("SELECT count(*) FROM errors WHERE stage='model' AND reason LIKE '%model raised%'"
                       ).fetchone()[0] == outcome.num_errors
    assert con.execute("SELECT count(DISTINCT utt_id) FROM utterances").fetchone()[0] == 6 - outcome.num_errors


def test_ctrl_c_leaves_nothing_partial_visible(tmp_path):
    """SIGINT to a real `exitbench run --executor ray`: finished shards kept, no partial file readable."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([PLUGINS, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "exitbench", "run", "--executor", "ray", "--workers", "1",
           "--dataset", "synthetic", "--dataset-opt", "num_utterances=400", "--shard-size", "1",
           "--metrics", "stoi", "-r", str(tmp_path), "-q"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    staging = tmp_path / "_staging"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not any(staging.glob("*/shard-*/_SUCCESS")):
        time.sleep(0.2)
    # The interrupt must land mid-run; a run that ended first, or never finished a shard, tests nothing.
    if proc.poll() is not None or not any(staging.glob("*/shard-*/_SUCCESS")):
        proc.kill()
        pytest.fail(f"no shard finished while the run was live (rc={proc.poll()}): {proc.communicate()[0][-2000:]}")
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "interrupted" in output and "Traceback" not in output
    con = connect(tmp_path)
    assert con.execute("SELECT count(*) FROM blocks").fetchone()[0] == 0
    assert con.execute("SELECT status FROM runs").fetchone()[0] == "running"
    assert not list(tmp_path.glob("*/*/*.parquet.tmp")) and not list(tmp_path.glob("**/.*.tmp"))
    finished = list(staging.glob("*/shard-*/_SUCCESS"))
    assert finished, "no shard was finished before the interrupt"


def test_a_shard_whose_worker_is_killed_twice_runs_again_each_time(ray_session, local_reference, tmp_path):
    """Each SIGKILL of the actor costs only a retry of its shard: no errors rows, no gaps, no duplicates."""
    count = ray_session.parent / "kill-count"
    count.write_text("2")
    spec = RunSpec("exitbench_testmodels:dies_n", SPEC.dataset, SPEC.dataset_options, SPEC.settings)
    ex = RayExecutor(workers=1)
    outcome = execute(prepare(spec), tmp_path, ex)
    assert count.read_text() == "0", "the worker was not killed twice"
    assert ex.actors_lost == 2 and ex.retried_shards >= 2  # every shard in flight on a dead actor reruns
    assert outcome.num_errors == 0
    root, ref = local_reference
    assert_same_rows(blocks_of(tmp_path, outcome.run_id), blocks_of(root, ref.run_id))


def test_a_shard_that_keeps_killing_its_worker_stops_the_run_as_failed(ray_session, tmp_path):
    from exitbench.errors import WorkersLostError

    count = ray_session.parent / "kill-count"
    count.write_text("100")
    spec = RunSpec("exitbench_testmodels:dies_n", SPEC.dataset, SPEC.dataset_options, SPEC.settings)
    with pytest.raises(WorkersLostError, match="lost its worker 3 times"):
        execute(prepare(spec), tmp_path, RayExecutor(workers=1, max_shard_attempts=3))
    count.write_text("0")
    assert ResultStore(tmp_path).read_manifest(prepare(spec).run_id)["status"] == "failed"


@pytest.mark.parametrize("res, expected", [
    # (actors, GPUs each, CPUs each, CPUs left to metric tasks)
    ({"CPU": 16.0, "GPU": 1.0}, (4, 0.25, 0.25, 15.0)),  # a GPU's actors hold one CPU between them
    ({"CPU": 8.0, "GPU": 1.0}, (2, 0.5, 0.5, 7.0)),
    ({"CPU": 32.0, "GPU": 2.0}, (8, 0.25, 0.25, 30.0)),
    ({"CPU": 4.0, "GPU": 1.0}, (1, 1.0, 1.0, 3.0)),      # too few CPUs to share the GPU
    ({"CPU": 16.0}, (4, 0.0, 1.0, 12.0)),              # CPU actors: one CPU each runs the model
])
def test_the_plan_leaves_the_metric_tasks_what_the_actors_do_not_need(res, expected):
    workers, gpw, cpw, _, spare = RayExecutor()._plan(res)
    assert (workers, gpw, cpw, spare) == expected
    assert RayExecutor(cpus_per_worker=2.0)._plan(res)[2] == 2.0  # an explicit reservation is kept


@pytest.mark.parametrize("shards, actors, in_flight, expected", [
    (3, 3, None, 1),      # the demo's 3 shards on a GPU's actors: one each, not two on the first ready
    (375, 4, None, 2),    # a long run: two per actor keep each busy while results drain
    (5, 4, None, 2),      # one actor takes the fifth
    (375, 4, 4, 1),       # --max-shards-in-flight over all actors
    (1, 1, None, 1),
])
def test_an_actor_takes_no_more_than_its_share_of_a_small_run(shards, actors, in_flight, expected):
    from exitbench.harness.ray_executor import shards_per_actor

    assert shards_per_actor(shards, actors, in_flight) == expected
