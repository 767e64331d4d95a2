"""The Ray executor: model actors compute every level, CPU tasks compute metrics, the driver writes shards.

Model actors load the checkpoint once (one per GPU, or CPU actors), compute the torch metrics (SDR,
STOI) on their GPU, and hand each utterance's record by object reference to a CPU task for the rest
(PESQ; everything but SI-SNR on a CPU actor), so an actor never waits on CPU metrics and the driver
never holds a waveform: it receives only the Arrow tables it writes.
Work in flight is bounded, so memory stays flat however long the test set. When an actor, its
worker or its node dies, its shards run again on live actors; the driver writes each shard once,
atomically, so a retry can neither duplicate nor lose rows.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import exitbench
from exitbench.errors import UsageError, WorkersLostError
from exitbench.harness.runner import PreparedRun
from exitbench.results.store import ResultStore


#: seconds a run waits for its first model worker to start, whatever --worker-wait says
STARTUP_WAIT_S = 60.0
#: CPUs per GPU from which two model actors share each GPU by default (four from twice as many)
ACTORS_CPU_RULE = 8


def ensure_ray(address: str | None = None) -> bool:
    """Start or join Ray (``address`` or RAY_ADDRESS joins a cluster); True if this call started it."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        # a local cluster listens on loopback only: for multi-node support Ray would bind the
        # machine's outward address (read when ray is first imported, hence before the import)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # Ray turns token authentication on for a new local cluster when RAY_AUTH_MODE is unset, and prints a
        # line saying so before anything of ours; asking for that same mode keeps it, without the line. Only
        # before ray's first import: its configuration is read then (set later, the driver would still
        # think it disabled while the cluster it starts wants a token, and fail to connect)
        if "ray" not in sys.modules:
            os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if ray.is_initialized():
        return False
    # a remote cluster may not have exitbench installed: the package is shipped. A local cluster's workers
    # inherit this process's environment and import exitbench as it does; a job runtime_env would also keep
    # them off the worker processes Ray starts in advance (measured on the 2-core box: 1.06 s instead of
    # 0.37 s for the first two tasks, 0.9 s instead of 0.55 s for an actor)
    runtime_env = {"py_modules": [str(Path(exitbench.__file__).parent)]} if address else None
    ray.init(address=address, runtime_env=runtime_env, include_dashboard=False, log_to_driver=False,
             configure_logging=False, ignore_reinit_error=True)
    return True


class ModelWorker:
    """Holds the model and the test set; runs the forward half of the unit of work."""

    def __init__(self, spec_json: str, threads: int, device: str, batch: int = 1):
        import torch

        from exitbench.harness.runner import load_model, open_for_model
        from exitbench.harness.spec import RunSpec

        from exitbench.harness.devices import full_float32

        torch.set_num_threads(max(1, threads))
        full_float32(device)
        self._model_lock = threading.Lock()
        self.spec = RunSpec.from_json(spec_json)
        if device.startswith("cuda"):
            from exitbench.harness.record import gpu_metrics_used, warm_gpu_metrics

            if gpu_metrics_used(self.spec.settings):  # CUDA's libraries load while the model does
                threading.Thread(target=warm_gpu_metrics, args=(device,), daemon=True,
                                 name="exitbench-gpu-warm-up").start()
        self.resolved = load_model(self.spec, check=False)  # the driver checked the contract
        self.model = self.resolved.model.to(device)
        self.device = device
        self.testset = open_for_model(self.spec, self.model)
        self.batch_error, self.batch_difference = "", None
        if batch > 1:  # on this worker's device: a batch that changed an output would change the recording
            from exitbench.models.contract import check_forward_many

            try:
                self.batch_difference = check_forward_many(self.model, batch, self.spec.model)
            except UsageError as exc:
                self.batch_error = str(exc)

    def identity(self) -> tuple[str, str, float | None]:
        """The checkpoint identity this worker loaded (checked against the driver's), why its ``batch`` cannot be
        used ('' when it can) and what it changes of an output (``check_forward_many``)."""
        return self.resolved.identity, self.batch_error, self.batch_difference

    def forward(self, utt_id: str, with_metrics: bool) -> tuple[Any, Any]:
        """Forward half for one utterance: (result, error).

        With ``with_metrics`` the result is the (blocks, utterances) tables; otherwise it is a reference
        to the LevelRecord, put in the object store here, so that the waveforms go from this actor to a
        metric task without passing through the driver. On a GPU the torch metrics (SDR, STOI) are
        computed here first, next to the model."""
        return self._forward([utt_id], with_metrics)[0]

    def forward_many(self, utt_ids: list[str], with_metrics: bool) -> list[tuple[Any, Any]]:
        """``forward`` of several utterances in one model pass (``--batch``), a result per utterance."""
        return self._forward(utt_ids, with_metrics)

    def _forward(self, utt_ids: list[str], with_metrics: bool) -> list[tuple[Any, Any]]:
        from exitbench.harness.record import finish_stage, forward_stage

        # one model pass at a time; on a GPU actor (two calls at once) the host half of the other call
        # (block statistics, the torch metrics, tables) runs meanwhile
        with self._model_lock:
            staged = forward_stage(self.model, self.testset, utt_ids)
        recs = finish_stage(self.model, staged, self.spec.settings, self.device)
        return [self._result(rec, err, with_metrics) for rec, err in recs]

    def _result(self, rec: Any, err: Any, with_metrics: bool) -> tuple[Any, Any]:
        import ray

        from exitbench.harness.record import metrics_or_error

        if rec is None:
            return None, err
        if with_metrics:
            table, err = metrics_or_error(rec, self.spec.settings)
            return ((rec.blocks, table) if table is not None else None), err
        return ray.put(rec), None

    def pid(self) -> int:
        """The worker's process id (tests kill it)."""
        return os.getpid()


def _metrics(rec: Any, settings: Any) -> tuple[Any, Any]:
    from exitbench.harness.record import metrics_or_error

    table, err = metrics_or_error(rec, settings)
    return ((rec.blocks, table) if table is not None else None, err)


def _warm_metric_worker() -> int:
    """Import what a metric task needs, so that the first real task of this worker does not wait on it."""
    import exitbench.harness.record  # noqa: F401  (torch, pyarrow, the metric code)
    import pesq  # noqa: F401
    import pystoi  # noqa: F401

    return os.getpid()


def shards_per_actor(num_shards: int, actors: int, max_in_flight: int | None = None) -> int:
    """Shards queued on one actor at a time, at least one: two keep it busy while results drain (or
    ``max_in_flight`` shared out over the actors), but no more than an even share of the run's, so that the
    first actor ready does not take the shards of a small run that the others, a moment later, would have
    run beside it."""
    actors = max(actors, 1)
    return max(1, min((max_in_flight or 2 * actors) // actors, -(-num_shards // actors)))


def _is_infrastructure(exc: BaseException) -> bool:
    """True for a Ray failure of the machinery (a dead actor, worker or node, a lost object), not of our code."""
    import ray.exceptions as rex

    code_failures = (rex.RayTaskError, rex.RuntimeEnvSetupError)
    return isinstance(exc, rex.RayError) and not isinstance(exc, code_failures)


def _last_line(exc: BaseException) -> str:
    """The last non-empty line of an error (a remote traceback ends with the actual exception)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


@dataclass
class _Shard:
    """One shard in flight; ``attempt`` tells results of an abandoned attempt from the current one."""

    index: int
    ids: list[str]
    attempt: int = 0
    pending: int = 0
    settled: int = 0
    blocks: list = field(default_factory=list)
    utts: list = field(default_factory=list)
    errors: list = field(default_factory=list)


@dataclass
class _Slot:
    """One model actor: starting until its identity call returns, then ready for shards."""

    actor: Any
    identity_ref: Any
    ready: bool = False
    in_flight: int = 0


class RayExecutor:
    """Record shards on a Ray cluster (local by default).

    Failures of the machinery are retried at the level of the shard: when a model actor, its worker
    process or its node dies, the shard's partial results are dropped, the actor leaves the
    rotation (a replacement is started wherever the cluster has room) and the shard runs again on a
    live actor. Only an utterance that itself fails (its load, the model on that input, its
    metrics) becomes an errors row. With no live actor for ``worker_wait_s`` seconds, or a shard
    that lost its worker ``max_shard_attempts`` times, the run stops with :class:`WorkersLostError`;
    every shard published so far is kept and a rerun resumes.
    """

    def __init__(self, workers: int | None = None, gpus_per_worker: float | None = None,
                 cpus_per_metric_task: float = 1.0, address: str | None = None,
                 max_shards_in_flight: int | None = None, max_metric_tasks: int | None = None,
                 cpus_per_worker: float | None = None, worker_wait_s: float = 60.0, max_shard_attempts: int = 5,
                 device: str = "auto", batch: int = 1, overlap: bool | None = None):
        from exitbench.harness.record import check_batch

        self.batch = check_batch(batch)
        self.batch_difference: float | None = None  # the largest an actor measured (check_forward_many)
        device = (device or "auto").strip().lower()
        if device not in ("auto", "cpu", "cuda"):
            raise UsageError(f"--device for the ray executor must be auto, cpu or cuda (the actors pick their"
                             f" GPU), got {device!r}")
        if device == "cpu":
            if gpus_per_worker:
                raise UsageError(f"--device cpu and --gpus-per-worker {gpus_per_worker} contradict each other")
            gpus_per_worker = 0.0
        self.device_request = device
        # two calls at once per actor, so one's host half overlaps the other's model pass (None: on GPU
        # actors; a CPU actor's one CPU is the model's)
        self.overlap = overlap
        self.workers = workers
        self.gpus_per_worker = gpus_per_worker
        self.cpus_per_metric_task = cpus_per_metric_task
        self.cpus_per_worker = cpus_per_worker
        self.address = address
        self.max_shards_in_flight = max_shards_in_flight
        self.max_metric_tasks = max_metric_tasks
        self.worker_wait_s = worker_wait_s
        self.max_shard_attempts = max_shard_attempts
        self.slots: list[_Slot] = []
        self.retried_shards = 0  # shards run again after an infrastructure failure (for reports and tests)
        self.actors_lost = 0
        self.on_note: Callable[[str], None] = lambda msg: None  # one line per lost worker, for the CLI
        self.device: str | None = None  # decided when the run starts (cuda when the actors hold GPUs)

    def describe(self) -> dict[str, Any]:
        """Where the model ran, for the run's manifest (the GPU's name as this process sees it)."""
        from exitbench.harness.devices import describe_device

        out = describe_device("ray", self.device or "unknown")
        out["gpus_per_worker"] = self.gpus_per_worker
        out["batch"] = self.batch
        out["overlap"] = self._overlap(self.device or "cpu")
        if self.batch_difference is not None:
            out["batch_difference"] = self.batch_difference
        return out

    def _overlap(self, device: str) -> bool:
        return device == "cuda" if self.overlap is None else bool(self.overlap)

    def _plan(self, res: dict[str, float] | None = None) -> tuple[int, float, float, int, float]:
        """(actors, GPUs and CPUs each reserves, metric-task slots, CPUs left to metric tasks) for the
        cluster's resources (``ray.cluster_resources()`` unless given)."""
        import ray

        res = ray.cluster_resources() if res is None else res
        gpus, cpus = float(res.get("GPU", 0)), float(res.get("CPU", 1))
        if self.gpus_per_worker is not None:
            gpw = self.gpus_per_worker
        elif gpus >= 1:
            # several actors share each GPU when the CPUs allow: a model's eager forward pass is often bound
            # by one CPU thread's kernel launches, and other processes keep the GPU busy meanwhile. Measured
            # on an H100 host with 16 CPUs, 1000 utterances with metrics off, Ray's start included: four
            # actors 21.9 s, two 28.9 s, the bare one-process loop 19.6 s (README, GPU section)
            gpw = (0.25 if cpus >= 2 * ACTORS_CPU_RULE * gpus else
                   0.5 if cpus >= ACTORS_CPU_RULE * gpus else 1.0)
        else:
            gpw = 0.0
        if self.device_request == "cuda" and gpw <= 0:
            raise UsageError(f"--device cuda but the cluster has {gpus:g} GPU(s)")
        if gpw > 0 and gpus < gpw:
            raise UsageError(f"--gpus-per-worker {gpw} but the cluster has {gpus:g} GPU(s)")
        if self.workers is not None:
            workers = self.workers
        elif gpw > 0:
            workers = max(1, int(gpus // gpw))
        else:  # leave most CPUs to the metric tasks, which dominate on CPU-only machines
            workers = max(1, int(cpus // 4))
        if self.cpus_per_worker is not None:
            cpw = self.cpus_per_worker
        else:  # a CPU actor's one CPU runs the model. A GPU actor's host work is about 55 ms of one thread
            # per utterance (bench_harness.py host on the H200: 23.5 model, 31.1 host half), 0.41 of a core
            # at the pace of the 3000-mixture run, whatever the number of actors: a GPU's actors reserve one
            # CPU between them, not one each that the metric tasks (PESQ, the run's bottleneck) would lose
            cpw = min(gpw, 1.0) if gpw > 0 else 1.0
        metric_slots = self.max_metric_tasks or max(2, int(2 * cpus // max(self.cpus_per_metric_task, 1e-3)))
        # CPUs the actors leave to metric tasks (with none, a task could never run: the actor computes)
        return workers, gpw, cpw, metric_slots, cpus - workers * cpw

    def run(self, prepared: PreparedRun, store: ResultStore, shards: dict[int, list[str]],
            on_utterance: Callable[[int], None]) -> None:
        """Run ``shards`` and write each one as soon as all its utterances are done."""
        import ray

        started = ensure_ray(self.address)
        try:
            self._run(prepared, store, shards, on_utterance)
        finally:
            for slot in self.slots:
                ray.kill(slot.actor, no_restart=True)
            self.slots = []
            if started:
                ray.shutdown()

    def _run(self, prepared: PreparedRun, store: ResultStore, shards: dict[int, list[str]],
             on_utterance: Callable[[int], None]) -> None:
        import ray

        from exitbench.harness.record import assemble_shard, host_metrics_needed

        if not shards:
            return
        workers, gpw, cpw, metric_slots, spare = self._plan()
        tasks_for_metrics = spare >= self.cpus_per_metric_task
        settings = prepared.spec.settings
        device = "cuda" if gpw > 0 else "cpu"
        # SI-SNR alone is too cheap to ship elsewhere, and so is what is left once the actor's GPU has
        # computed the torch metrics; without spare CPUs a task would never run
        with_metrics_in_actor = (not settings.metrics or not tasks_for_metrics
                                 or (device == "cuda" and not host_metrics_needed(settings)))
        self.device = device
        from exitbench.harness.devices import full_float32

        full_float32(device)  # as the actors do (the manifest's description is this process's)
        # Ray restarts nothing by itself: a dead actor is replaced here and its shard requeued, so a
        # call to an actor that is gone fails at once instead of waiting on a restart that may never come
        Actor = ray.remote(ModelWorker).options(num_cpus=cpw, num_gpus=gpw,
                                                max_restarts=0, max_task_retries=0,
                                                max_concurrency=2 if self._overlap(device) else 1)
        threads = max(1, int(cpw))
        spec_json = prepared.spec.to_json()
        target = min(workers, len(shards))
        starts_left = target + 2 * len(shards)  # every start beyond the first needs a lost actor

        def start_actor() -> None:
            nonlocal starts_left
            starts_left -= 1
            actor = Actor.remote(spec_json, threads, device, self.batch)
            self.slots.append(_Slot(actor, actor.identity.remote()))

        def drop(slot: _Slot) -> None:
            if slot in self.slots:
                self.slots.remove(slot)
                self.actors_lost += 1
                ray.kill(slot.actor, no_restart=True)

        for _ in range(target):
            start_actor()
        metrics_fn = ray.remote(_metrics).options(num_cpus=self.cpus_per_metric_task, max_retries=3)
        settings_ref = ray.put(settings)
        if not with_metrics_in_actor and len([n for n in ray.nodes() if n.get("Alive")]) == 1:
            # the metric workers import torch and the metric packages while the actors load the model,
            # instead of after the first forward (seconds of a small run's wall time). On one node
            # only: on several, a warm-up task could take the one CPU of the node an actor needs
            warm = ray.remote(_warm_metric_worker).options(num_cpus=self.cpus_per_metric_task, max_retries=0)
            for _ in range(max(0, min(metric_slots, int(spare // max(self.cpus_per_metric_task, 1e-3))))):
                warm.remote()  # fire and forget: its worker stays up, imports done, for the metric tasks

        queue = deque(sorted(shards))
        state: dict[int, _Shard] = {}
        attempts: dict[int, int] = {i: 0 for i in shards}
        forwards: dict[Any, tuple[_Slot, int, int, list[str]]] = {}  # ref -> (slot, shard, attempt, utterances)
        metric_refs: dict[Any, tuple[int, int, str]] = {}  # ref -> (shard, attempt, utterance)
        waiting: deque = deque()  # (shard, attempt, utterance, record ref) not yet given to a metric task
        # utterances queued per actor: two shards' worth keeps it busy while results drain
        per_actor = shards_per_actor(len(shards), target, self.max_shards_in_flight) * settings.shard_size
        no_worker_since: float | None = None
        ever_ready = False

        def requeue(index: int, why: str) -> None:
            shard = state.pop(index, None)
            if shard is None:
                return
            if shard.settled:
                on_utterance(-shard.settled)  # the progress display counts them again on the retry
            attempts[index] += 1
            self.retried_shards += 1
            if attempts[index] >= self.max_shard_attempts:
                raise WorkersLostError(
                    f"shard {index} ({len(shard.ids)} utterances from {shard.ids[0]}) lost its worker"
                    f" {attempts[index]} times (last: {why}); the {len(store.finished_shards(prepared.run_id))}"
                    f" finished shard(s) are kept, rerun the same command to resume")
            self.on_note(f"lost a worker ({why}): shard {index} runs again (attempt {attempts[index] + 1})")
            queue.appendleft(index)

        def submit_forwards() -> None:
            for slot in sorted((s for s in self.slots if s.ready), key=lambda s: s.in_flight):
                # bounded: a few shards per actor, and none while metric work is backed up
                while queue and slot.in_flight < per_actor and len(waiting) < metric_slots:
                    index = queue.popleft()
                    ids = shards[index]
                    state[index] = _Shard(index, ids, attempt=attempts[index], pending=len(ids))
                    # one call per utterance, or per --batch of them (an actor runs them in order): its
                    # metric tasks can start as soon as its own forward is done, not after the whole shard's
                    for g in range(0, len(ids), self.batch):
                        group = ids[g:g + self.batch]
                        ref = (slot.actor.forward.remote(group[0], with_metrics_in_actor) if len(group) == 1
                               else slot.actor.forward_many.remote(group, with_metrics_in_actor))
                        forwards[ref] = (slot, index, attempts[index], group)
                    slot.in_flight += len(ids)

        def submit_metrics() -> None:
            while waiting and len(metric_refs) < metric_slots:
                index, attempt, utt_id, rec = waiting.popleft()
                if index in state and state[index].attempt == attempt:
                    metric_refs[metrics_fn.remote(rec, settings_ref)] = (index, attempt, utt_id)

        def settle(shard: _Shard, result: Any, err: Any) -> None:
            if result is not None:
                shard.blocks.append(result[0])
                shard.utts.append(result[1])
            if err is not None:
                shard.errors.append(err)
            shard.pending -= 1
            shard.settled += 1
            on_utterance(1)
            if shard.pending == 0:
                store.write_shard(prepared.run_id, shard.index,
                                  assemble_shard(shard.blocks, shard.utts, shard.errors))
                del state[shard.index]

        def lose(slot: _Slot, why: str) -> None:
            """An actor is gone: its shards go back to the queue, a replacement starts if allowed."""
            drop(slot)
            for ref, (s, index, attempt, _utt) in list(forwards.items()):
                if s is slot:
                    del forwards[ref]
                    if index in state and state[index].attempt == attempt:
                        requeue(index, why)
            if starts_left > 0 and len(self.slots) < target:
                start_actor()

        while queue or forwards or metric_refs or waiting or state:
            submit_metrics()
            submit_forwards()
            starting = {s.identity_ref: s for s in self.slots if not s.ready}
            refs = list(forwards) + list(metric_refs) + list(starting)
            if not any(s.ready for s in self.slots):
                no_worker_since = no_worker_since or time.monotonic()
                # workers that are still starting (importing torch, loading the model: tens of seconds
                # on a loaded node) are not lost ones: before the first is up, wait at least a minute
                wait = self.worker_wait_s if ever_ready else max(self.worker_wait_s, STARTUP_WAIT_S)
                if time.monotonic() - no_worker_since > wait:
                    raise WorkersLostError(
                        f"no model worker has been alive for {wait:g} s (the cluster lost its"
                        f" nodes, or has no room for a worker); the"
                        f" {len(store.finished_shards(prepared.run_id))} finished shard(s) are kept, rerun"
                        f" the same command to resume")
            else:
                no_worker_since = None
            if not refs:  # every actor died and no replacement may start
                if starts_left > 0:
                    start_actor()
                    continue
                raise WorkersLostError("every model worker died and no replacement could be started; rerun"
                                       " the same command to resume")
            ready, _ = ray.wait(refs, num_returns=1, timeout=1.0)
            if not ready:
                continue
            ref = ready[0]
            if ref in starting:
                slot = starting[ref]
                try:
                    identity = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    if isinstance(exc, ray.exceptions.RayActorError) and exc.actor_init_failed:
                        # the model itself cannot be built there: no retry will help
                        raise UsageError(f"a model worker could not load {prepared.spec.model!r}:"
                                         f" {_last_line(exc)}") from None
                    if not _is_infrastructure(exc):
                        raise
                    lose(slot, type(exc).__name__)
                    continue
                identity, batch_error, difference = identity
                if batch_error:
                    raise UsageError(batch_error)
                if difference is not None:
                    self.batch_difference = max(self.batch_difference or 0.0, difference)
                if identity != prepared.resolved.identity:
                    raise UsageError("workers loaded a different checkpoint than the driver (did a shared"
                                     " path change?)")
                slot.ready = True
                ever_ready = True
            elif ref in forwards:
                slot, index, attempt, group = forwards.pop(ref)
                slot.in_flight -= len(group)
                try:
                    got = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    if not _is_infrastructure(exc):
                        raise
                    if index in state and state[index].attempt == attempt:
                        requeue(index, type(exc).__name__)
                    lose(slot, type(exc).__name__)
                    continue
                shard = state.get(index)
                if shard is None or shard.attempt != attempt:
                    continue  # an abandoned attempt
                for utt_id, (rec, err) in zip(group, [got] if len(group) == 1 else got):
                    if rec is None or with_metrics_in_actor:
                        settle(shard, rec, err)
                    else:
                        waiting.append((index, attempt, utt_id, rec))  # a reference owned by the actor
            else:
                index, attempt, utt_id = metric_refs.pop(ref)
                try:
                    result, err = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    if not _is_infrastructure(exc):
                        raise
                    if index in state and state[index].attempt == attempt:
                        requeue(index, f"metric task: {type(exc).__name__}")
                    continue
                shard = state.get(index)
                if shard is not None and shard.attempt == attempt:
                    settle(shard, result, err)
