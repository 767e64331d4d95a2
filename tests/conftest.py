"""Shared fixtures: a small synthetic recording made once per session, and the test plug-ins."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "plugins"))
# the test session's local Ray cluster listens on loopback only (see exitbench.harness.ray_executor)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import torch  # noqa: E402

# One intra-op thread for the whole session: small tensors on a shared two-core machine run faster
# and steadier so, and raising the count again later trips an MKL bug in batched float64 solves
# (torch 2.13 CPU: "Pivots given to lu_solve must all be greater or equal to 1").
torch.set_num_threads(1)

from exitbench.harness.local import LocalExecutor  # noqa: E402
from exitbench.harness.runner import execute, prepare  # noqa: E402
from exitbench.harness.spec import RecordSettings, RunSpec  # noqa: E402


def record_local(root: Path, model: str = "press-s", dataset: str = "synthetic",
                 options: tuple = (("num_utterances", "5"),), **settings) -> object:
    """Record in-process into ``root`` and return the RunOutcome."""
    spec = RunSpec(model, dataset, tuple(sorted(options)), RecordSettings(**settings))
    return execute(prepare(spec), root, LocalExecutor())


PLUGINS = str(Path(__file__).parent / "plugins")


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """One local Ray cluster for the whole test session (ray.init costs seconds)."""
    import os

    import ray

    marker_dir = tmp_path_factory.mktemp("ray-markers")
    env = {"PYTHONPATH": os.pathsep.join([PLUGINS, os.environ.get("PYTHONPATH", "")]),
           "EXITBENCH_TEST_KILL_MARKER": str(marker_dir / "kill-once"),
           "EXITBENCH_TEST_KILL_COUNT": str(marker_dir / "kill-count")}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": env})
    yield marker_dir / "kill-once"
    ray.shutdown()


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory):
    """One recording of the shipped separator on 5 synthetic mixtures, with every metric."""
    root = tmp_path_factory.mktemp("results")
    outcome = record_local(root, shard_size=2)
    return outcome
