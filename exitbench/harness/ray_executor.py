"""The Ray executor: model actors compute every level, CPU tasks compute metrics, the driver writes shards.

Model actors load the checkpoint once (one per GPU, or CPU actors) and hand each utterance's
waveforms and block statistics to a CPU task for SDR/PESQ/STOI, so an actor never waits on metrics.
Work in flight is bounded, so memory stays flat however long the test set. Actors restart and
their calls are retried when a worker dies; the driver writes each shard once, atomically, so a
retry can neither duplicate nor lose rows.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import exitbench
from exitbench.harness.runner import PreparedRun
from exitbench.results.store import ResultStore


def ensure_ray(address: str | None = None, extra_pythonpath: list[str] | None = None) -> bool:
    """Start or join Ray (``address`` or RAY_ADDRESS joins a cluster); True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    runtime_env: dict[str, Any] = {}
    if address:  # a remote cluster may not have exitbench installed: ship the package
        runtime_env["py_modules"] = [str(Path(exitbench.__file__).parent)]
    env_vars = {"PYTHONWARNINGS": "ignore::DeprecationWarning"}
    if extra_pythonpath:
        env_vars["PYTHONPATH"] = os.pathsep.join(extra_pythonpath)
    runtime_env["env_vars"] = env_vars
    ray.init(address=address, runtime_env=runtime_env, include_dashboard=False, log_to_driver=False,
             configure_logging=False, ignore_reinit_error=True)
    return True


class ModelWorker:
    """Holds the model and the test set; runs the forward half of the unit of work."""

    def __init__(self, spec_json: str, threads: int, device: str):
        import torch

        from exitbench.harness.runner import open_for_model
        from exitbench.harness.spec import RunSpec
        from exitbench.models.registry import resolve_model

        torch.set_num_threads(max(1, threads))
        self.spec = RunSpec.from_json(spec_json)
        self.resolved = resolve_model(self.spec.model)
        self.model = self.resolved.model.to(device)
        self.testset = open_for_model(self.spec, self.model)

    def identity(self) -> str:
        """The checkpoint identity this worker loaded (checked against the driver's)."""
        return self.resolved.identity

    def forward(self, utt_ids: list[str], with_metrics: bool) -> list[tuple[Any, Any]]:
        """Forward half for a shard: (LevelRecord or tables, error) per utterance."""
        from exitbench.harness.record import load_and_forward, metrics_or_error

        out = []
        for utt_id in utt_ids:
            rec, err = load_and_forward(self.model, self.testset, utt_id)
            if rec is not None and with_metrics:
                table, err = metrics_or_error(rec, self.spec.settings)
                out.append(((rec.blocks, table) if table is not None else None, err))
            else:
                out.append((rec, err))
        return out

    def pid(self) -> int:
        """The worker's process id (tests kill it)."""
        return os.getpid()


def _metrics(rec: Any, settings: Any) -> tuple[Any, Any]:
    from exitbench.harness.record import metrics_or_error

    table, err = metrics_or_error(rec, settings)
    return ((rec.blocks, table) if table is not None else None, err)


@dataclass
class _Shard:
    index: int
    ids: list[str]
    pending: int = 0
    blocks: list = field(default_factory=list)
    utts: list = field(default_factory=list)
    errors: list = field(default_factory=list)


class RayExecutor:
    """Record shards on a Ray cluster (local by default)."""

    def __init__(self, workers: int | None = None, gpus_per_worker: float | None = None,
                 cpus_per_metric_task: float = 1.0, address: str | None = None,
                 max_shards_in_flight: int | None = None, max_metric_tasks: int | None = None,
                 cpus_per_worker: float = 1.0):
        self.workers = workers
        self.gpus_per_worker = gpus_per_worker
        self.cpus_per_metric_task = cpus_per_metric_task
        self.cpus_per_worker = cpus_per_worker
        self.address = address
        self.max_shards_in_flight = max_shards_in_flight
        self.max_metric_tasks = max_metric_tasks
        self.actors: list[Any] = []

    def _plan(self) -> tuple[int, float, int]:
        import ray

        res = ray.cluster_resources()
        gpus, cpus = float(res.get("GPU", 0)), float(res.get("CPU", 1))
        gpw = self.gpus_per_worker if self.gpus_per_worker is not None else (1.0 if gpus >= 1 else 0.0)
        if gpw > 0 and gpus < gpw:
            raise ValueError(f"--gpus-per-worker {gpw} but the cluster has {gpus:g} GPU(s)")
        if self.workers is not None:
            workers = self.workers
        elif gpw > 0:
            workers = max(1, int(gpus // gpw))
        else:  # leave most CPUs to the metric tasks, which dominate on CPU-only machines
            workers = max(1, int(cpus // 4))
        metric_slots = self.max_metric_tasks or max(2, int(2 * cpus // max(self.cpus_per_metric_task, 1e-3)))
        return workers, gpw, metric_slots

    def run(self, prepared: PreparedRun, store: ResultStore, shards: dict[int, list[str]],
            on_utterance: Callable[[int], None]) -> None:
        """Run ``shards`` and write each one as soon as all its utterances are done."""
        import ray

        started = ensure_ray(self.address)
        try:
            self._run(prepared, store, shards, on_utterance)
        finally:
            for a in self.actors:
                ray.kill(a)
            self.actors = []
            if started:
                ray.shutdown()

    def _run(self, prepared: PreparedRun, store: ResultStore, shards: dict[int, list[str]],
             on_utterance: Callable[[int], None]) -> None:
        import ray

        from exitbench.harness.record import assemble_shard

        if not shards:
            return
        workers, gpw, metric_slots = self._plan()
        settings = prepared.spec.settings
        with_metrics_in_actor = not settings.metrics  # SI-SNR alone is too cheap to ship elsewhere
        device = "cuda" if gpw > 0 else "cpu"
        Actor = ray.remote(ModelWorker).options(num_cpus=self.cpus_per_worker, num_gpus=gpw,
                                                max_restarts=-1, max_task_retries=3)
        threads = max(1, int(self.cpus_per_worker))
        self.actors = [Actor.remote(prepared.spec.to_json(), threads, device)
                       for _ in range(min(workers, len(shards)))]
        identities = set(ray.get([a.identity.remote() for a in self.actors]))
        if identities != {prepared.resolved.identity}:
            raise RuntimeError("workers loaded a different checkpoint than the driver (a shared path changed?)")
        metrics_fn = ray.remote(_metrics).options(num_cpus=self.cpus_per_metric_task, max_retries=3)
        settings_ref = ray.put(settings)

        queue = deque(sorted(shards))
        state: dict[int, _Shard] = {}
        forwards: dict[Any, int] = {}  # ref -> shard
        metric_refs: dict[Any, tuple[int, str]] = {}  # ref -> (shard, utterance)
        waiting_records: deque = deque()  # (shard, utterance, record ref) not yet given to a metric task
        max_forward = self.max_shards_in_flight or 2 * len(self.actors)
        submitted = 0

        def submit_forwards() -> None:
            nonlocal submitted
            # bounded: two shards per actor at most, and none while metric work is backed up
            while queue and len(forwards) < max_forward and len(waiting_records) < metric_slots:
                index = queue.popleft()
                state[index] = _Shard(index, shards[index], pending=len(shards[index]))
                actor = self.actors[submitted % len(self.actors)]
                forwards[actor.forward.remote(shards[index], with_metrics_in_actor)] = index
                submitted += 1

        def submit_metrics() -> None:
            while waiting_records and len(metric_refs) < metric_slots:
                index, utt_id, rec = waiting_records.popleft()
                metric_refs[metrics_fn.remote(rec, settings_ref)] = (index, utt_id)

        def settle(shard: _Shard, result: Any, err: Any) -> None:
            if result is not None:
                shard.blocks.append(result[0])
                shard.utts.append(result[1])
            if err is not None:
                shard.errors.append(err)
            shard.pending -= 1
            on_utterance(1)
            if shard.pending == 0:
                store.write_shard(prepared.run_id, shard.index,
                                  assemble_shard(shard.blocks, shard.utts, shard.errors))
                del state[shard.index]

        submit_forwards()
        while forwards or metric_refs or waiting_records:
            ready, _ = ray.wait(list(forwards) + list(metric_refs), num_returns=1)
            ref = ready[0]
            if ref in forwards:
                index = forwards.pop(ref)
                shard = state[index]
                try:
                    results = ray.get(ref)
                except ray.exceptions.RayError as exc:  # retries exhausted: every utterance fails
                    reason = f"worker failed: {type(exc).__name__}"
                    results = [(None, (u, "worker", reason)) for u in shard.ids]
                    with_m = True
                else:
                    with_m = with_metrics_in_actor
                for utt_id, (rec, err) in zip(shard.ids, results):
                    if rec is None or with_m:
                        settle(shard, rec, err)
                    else:
                        waiting_records.append((index, utt_id, ray.put(rec)))
            else:
                index, utt_id = metric_refs.pop(ref)
                try:
                    result, err = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    result, err = None, (utt_id, "metrics", f"metric task failed: {type(exc).__name__}")
                settle(state[index], result, err)
            submit_metrics()
            submit_forwards()
