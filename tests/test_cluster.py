"""A real two-node Ray cluster on this machine: a node lost mid-run loses nothing and duplicates nothing.

The head has no CPUs, so every model actor lives on a worker node (each `ray start --block` with
its own temp dir); a node is lost by SIGKILL of its raylet, as when a machine dies. Only the
processes these tests started are stopped, by pid.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import PLUGINS, record_local
from raycluster import DRIVER_ENV, Cluster

from exitbench.results.views import connect

pytestmark = [pytest.mark.timeout(600),
              pytest.mark.skipif(Cluster.available() is not None, reason=str(Cluster.available()))]

N_UTTS = 40
KEYS = ["utt_id", "block", "level", "source"]


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    try:
        c.start_head(cpus=0)
        c.add_worker(cpus=1)
        c.add_worker(cpus=1)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same run recorded in-process: what the cluster run must hold, row for row."""
    root = tmp_path_factory.mktemp("reference")
    out = record_local(root, options=(("num_utterances", str(N_UTTS)),), metrics=(), shard_size=2)
    return pq.read_table(root / "blocks" / f"run={out.run_id}" / "part-0.parquet").to_pandas()


def run_cli(cluster: Cluster, root: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "exitbench", "run", "--address", cluster.address, "--workers", "2",
           "--dataset", "synthetic", "--dataset-opt", f"num_utterances={N_UTTS}", "--shard-size", "2",
           "--metrics", "none", "-r", str(root), "-q", *extra]
    env = dict(os.environ, **DRIVER_ENV, PYTHONPATH=os.pathsep.join([PLUGINS, os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen(cluster.wrap(cmd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_shards(root: Path, proc: subprocess.Popen, n: int = 1, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if len(list((root / "_staging").glob("*/shard-*/_SUCCESS"))) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"no shard was published (rc {proc.poll()}): {proc.communicate()[0][-3000:]}")


def assert_exactly_the_reference(root: Path, reference) -> None:
    con = connect(root)
    got = con.execute("SELECT * EXCLUDE (run) FROM blocks ORDER BY utt_id, block, level, source").df()
    assert len(got) == len(got.drop_duplicates(KEYS)), "duplicated rows"
    assert len(got) == len(reference), f"{len(reference) - len(got)} rows lost"
    assert (got[KEYS].values == reference[KEYS].values).all()
    np.testing.assert_allclose(got["e_est"], reference["e_est"], rtol=1e-3)
    assert con.execute("SELECT status, num_errors FROM runs").fetchall() == [("complete", 0)]
    assert con.execute("SELECT count(*) FROM errors").fetchone()[0] == 0


def test_a_worker_node_killed_mid_run_loses_and_duplicates_nothing(cluster, reference, tmp_path):
    proc = run_cli(cluster, tmp_path)
    wait_for_shards(tmp_path, proc)
    cluster.nodes[1].kill_raylet()
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    assert "lost a worker" in output and "runs again" in output
    assert_exactly_the_reference(tmp_path, reference)
    rerun = run_cli(cluster, tmp_path)
    assert "already complete" in rerun.communicate(timeout=300)[0] and rerun.returncode == 0
    cluster.replace_worker(1)


def test_losing_every_worker_stops_with_exit_4_and_the_same_command_resumes(cluster, reference, tmp_path):
    proc = run_cli(cluster, tmp_path, "--worker-wait", "5")
    wait_for_shards(tmp_path, proc, n=2)
    for node in cluster.nodes[1:]:
        node.kill_raylet()
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 4, output[-3000:]
    assert "no model worker has been alive" in output and "rerun the same command to resume" in output
    assert "Traceback" not in output
    con = connect(tmp_path)
    assert con.execute("SELECT status FROM runs").fetchone()[0] == "failed"
    assert con.execute("SELECT count(*) FROM blocks").fetchone()[0] == 0  # nothing published half-done
    kept = len(list((tmp_path / "_staging").glob("*/shard-*/_SUCCESS")))
    assert kept >= 2

    for i in range(1, len(cluster.nodes)):
        cluster.replace_worker(i)
    rerun = run_cli(cluster, tmp_path)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output[-3000:]
    assert_exactly_the_reference(tmp_path, reference)
