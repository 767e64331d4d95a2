"""Turn a run spec into a finished recording: resolve, shard, execute, compact, write the manifest."""

from __future__ import annotations

import datetime as _dt
import os
import socket
import subprocess
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol

import pyarrow as pa

import exitbench
from exitbench.datasets.base import TestSet
from exitbench.datasets.registry import open_testset, parse_dataset_arg
from exitbench.errors import ResultsRootError, UsageError, WorkersLostError
from exitbench.harness.spec import RunSpec, compute_run_id
from exitbench.models.base import ExitModel
from exitbench.models.registry import ResolvedModel, resolve_model
from exitbench.results.locks import RunLock, is_locked
from exitbench.results.schema import LEVELS
from exitbench.results.store import ResultStore, json_dumps


@dataclass
class PreparedRun:
    """A spec resolved against the file system: the model, the test set, the shards, the run id."""

    spec: RunSpec
    resolved: ResolvedModel
    testset: TestSet
    utt_ids: list[str]
    run_id: str

    @property
    def model(self) -> ExitModel:
        return self.resolved.model

    def shards(self) -> list[list[str]]:
        """Fixed shard membership: consecutive runs of ``shard_size`` ids in the test set's order."""
        k = self.spec.settings.shard_size
        return [self.utt_ids[i:i + k] for i in range(0, len(self.utt_ids), k)]


@dataclass
class RunOutcome:
    """What a recording did."""

    run_id: str
    root: Path
    already_complete: bool
    num_utterances: int
    num_errors: int
    shards_done: int
    shards_skipped: int
    rows: dict[str, int] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)


class ShardExecutor(Protocol):
    """Runs shards and publishes each through ``store.write_shard`` as it finishes."""

    def run(self, prepared: PreparedRun, store: ResultStore, shards: dict[int, list[str]],
            on_utterance: Callable[[int], None]) -> None: ...


def open_for_model(spec: RunSpec, model: ExitModel) -> TestSet:
    """Open the spec's test set with the model's rate and the spec's options."""
    options: dict[str, Any] = dict(spec.dataset_options)
    options.setdefault("sample_rate", model.sample_rate)
    options["resample"] = spec.settings.resample
    if spec.settings.limit is not None:
        options["limit"] = spec.settings.limit
    return open_testset(spec.dataset, **options)


def load_model(spec: RunSpec, check: bool = True) -> ResolvedModel:
    """The spec's model with its arguments and block size (contract-checked unless ``check`` is False)."""
    return resolve_model(spec.model, dict(spec.model_args), check=check, block_size=spec.settings.block_size)


def resolve_metric_levels(pairs: tuple[tuple[str, str], ...], levels: list[str]
                          ) -> tuple[tuple[str, str], ...]:
    """--metric-levels in canonical form: level names in model order ('last' = the deepest static level,
    indices allowed, 'dynamic' for a router's output); 'all' drops the entry."""
    out = []
    names = levels + ["dynamic"]
    for metric, text in pairs:
        chosen: set[str] = set()
        for item in (t.strip() for t in text.split("+")):
            if item == "all":
                chosen = set(names)
                break
            if item == "last":
                item = levels[-1]
            elif item.isdigit() and int(item) < len(levels):
                item = levels[int(item)]
            if item not in names:
                raise UsageError(f"--metric-levels {metric}={text}: {item!r} is not a level of this model"
                                 f" ({', '.join(levels)}, dynamic, last, all or an index)")
            chosen.add(item)
        if chosen != set(names):
            out.append((metric, "+".join(n for n in names if n in chosen)))
    return tuple(sorted(out))


def prepare(spec: RunSpec) -> PreparedRun:
    """Resolve the model and test set and compute the run id (raises clear errors on bad input)."""
    resolved = load_model(spec)
    testset = open_for_model(spec, resolved.model)
    ids = testset.ids()
    if spec.settings.limit is not None:
        ids = ids[: spec.settings.limit]
    if not ids:
        raise UsageError(f"test set {spec.dataset!r} has no utterances: nothing to record")
    name, _ = parse_dataset_arg(spec.dataset)
    # the block size actually used enters the id, whether given or the model's own, and the levels
    # of --metric-levels by name
    settings = replace(spec.settings, block_size=resolved.model.block_size,
                       metric_levels=resolve_metric_levels(spec.settings.metric_levels, list(resolved.model.levels)))
    spec = replace(spec, settings=replace(spec.settings, metric_levels=settings.metric_levels))
    run_id = compute_run_id(resolved.identity, name, testset.fingerprint(),
                            tuple(sorted(spec.dataset_options)), settings)
    return PreparedRun(spec, resolved, testset, ids, run_id)


def git_commit() -> str | None:
    """The harness's git commit, if it runs from a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def base_manifest(p: PreparedRun) -> dict[str, Any]:
    """The manifest row of a run, status 'running'."""
    ck = p.resolved.checkpoint
    name, path = parse_dataset_arg(p.spec.dataset)
    return {
        "run_id": p.run_id, "status": "running", "model": p.spec.model,
        "model_args": json_dumps(dict(p.spec.model_args)) if p.spec.model_args else None,
        "architecture": ck.architecture if ck else p.spec.model,
        "checkpoint_path": str(Path(ck.path).resolve()) if ck else None,
        "checkpoint_sha256": ck.sha256 if ck else p.resolved.identity,
        "step": ck.step if ck else None,
        "dataset": name, "dataset_path": path, "dataset_fingerprint": p.testset.fingerprint(),
        "sample_rate": p.model.sample_rate, "num_sources": p.model.num_sources,
        "block_size": p.model.block_size, "num_levels": p.model.num_levels,
        "num_utterances": len(p.utt_ids), "num_errors": None,
        "settings": json_dumps(asdict(p.spec.settings)), "spec": p.spec.to_json(),
        "model_metadata": json_dumps(ck.metadata if ck else {}),
        "harness_version": exitbench.__version__, "schema_version": exitbench.SCHEMA_VERSION,
        "git_commit": git_commit(), "host": socket.gethostname(), "started_at": _now(),
        "finished_at": None,
    }


def levels_table(p: PreparedRun, utterances: pa.Table) -> pa.Table:
    """The levels table: static levels from the model, the dynamic one from realised MACs."""
    m = p.model
    rows = [{"level": i, "name": m.levels[i], "kind": "static", "macs_per_sample": m.macs_per_sample(i),
             "gmacs": m.gmacs_per_second(i), "params": m.num_parameters(i)} for i in range(m.num_levels)]
    utts = utterances.select(["level", "source", "macs", "num_samples"]).to_pandas()
    dyn = utts[(utts["level"] == m.num_levels) & (utts["source"] == 0)]
    if len(dyn):
        mps = float(dyn["macs"].sum() / dyn["num_samples"].sum())
        rows.append({"level": m.num_levels, "name": "dynamic", "kind": "dynamic", "macs_per_sample": mps,
                     "gmacs": mps * m.sample_rate / 1e9, "params": m.num_parameters()})
    return pa.Table.from_pylist(rows, schema=LEVELS)



def infrastructure_error_ids(store: ResultStore, run_id: str) -> set[str]:
    """Utterances of a published run whose errors row blames a worker or a metric task, not the data."""
    return {e["utt_id"] for e in _errors(store, run_id)
            if e["stage"] == "worker" or str(e["reason"]).startswith(("worker failed", "metric task failed"))}


#: how many first utterances, all failing in the model stage for one reason, stop a run
BROKEN_MODEL_PROBE = 5


class BrokenModelError(UsageError):
    """The first utterances of a run all failed in the model stage with the same reason (exit 2)."""


class _FirstUtterancesCheck:
    """Stops a run (BrokenModelError) whose model fails the same way on its first utterances.

    Called by the store with each shard's tables before they are published.
    """

    def __init__(self, total: int, model: str):
        self.model = model
        self.need = min(BROKEN_MODEL_PROBE, total)
        self.seen: list[tuple[str, str]] = []  # (stage, reason) of the first utterances, in shard order

    def __call__(self, tables: dict[str, pa.Table]) -> None:
        if len(self.seen) >= self.need:
            return
        failed = [(e["stage"], e["reason"]) for e in tables["errors"].to_pylist()]
        ok = tables["utterances"].column("utt_id").unique().to_pylist()
        self.seen += [("ok", "")] * len(ok) + failed
        first = self.seen[: self.need]
        if len(first) == self.need and len(set(first)) == 1 and first[0][0] == "model":
            raise BrokenModelError(f"model {self.model} failed on the first {self.need} utterances with the"
                                   f" same error, so the run stops: {first[0][1]}")


def execute(p: PreparedRun, root: str | os.PathLike, executor: ShardExecutor, force: bool = False,
            on_start: Callable[[int, int], None] | None = None,
            on_utterance: Callable[[int], None] | None = None,
            on_shard: Callable[[int], None] | None = None,
            on_note: Callable[[str], None] | None = None) -> RunOutcome:
    """Record a prepared run into ``root``: only the missing shards; then publish the run whole.

    One process at a time records a run id (RunLock; a second one gets RunLockedError). A run is
    marked ``complete`` only when every utterance has rows or an errors row caused by itself.
    """
    store = ResultStore(root, on_shard_written=on_shard)
    store.check_writable()
    shards = p.shards()
    note = on_note or (lambda msg: None)
    removed = store.clean_orphans(lambda rid: is_locked(store.root, rid))
    if removed:
        note(f"removed {len(removed)} leftover(s) of killed writers from {store.root}")
    if not force and _complete_and_sound(store, p.run_id):
        return _already(p, store, len(shards))
    with RunLock(store.root, p.run_id):
        if force:
            store.delete_run(p.run_id)
        old = store.read_manifest(p.run_id)
        manifest = base_manifest(p)
        if old and old.get("started_at"):
            manifest["started_at"] = old["started_at"]  # a resumed run keeps its first start
        if old and old.get("status") == "complete":  # finished meanwhile, or holds infrastructure errors
            bad = infrastructure_error_ids(store, p.run_id)
            if not bad:
                return _already(p, store, len(shards))
            redo = {i for i, ids in enumerate(shards) if bad.intersection(ids)}
            note(f"run {p.run_id} holds {len(bad)} errors rows of worker failures from an older exitbench:"
                 f" recording its {len(redo)} shard(s) again")
            store.write_manifest(manifest)  # 'running' first: readers stop seeing the old tables
            store.restage(p.run_id, shards, redo)
        store.write_manifest(manifest)
        done = store.finished_shards(p.run_id)
        todo = {i: ids for i, ids in enumerate(shards) if i not in done}
        if on_start:
            on_start(sum(len(v) for v in todo.values()), sum(len(shards[i]) for i in done))
        if not done:  # a fresh run: make sure its model does not fail the same way on everything
            store.before_shard = _FirstUtterancesCheck(len(p.utt_ids), p.spec.model)
        try:
            executor.run(p, store, todo, on_utterance or (lambda k: None))
        except WorkersLostError:
            manifest["status"] = "failed"
            store.write_manifest(manifest)
            raise
        except BrokenModelError:
            store.delete_run(p.run_id)  # only errors rows of a broken adapter: keep nothing of it
            store.drop_staging(p.run_id)
            manifest["status"] = "failed"
            store.write_manifest(manifest)
            raise
        finally:
            store.before_shard = None
        missing = set(range(len(shards))) - store.finished_shards(p.run_id)
        if missing:  # an executor that returns early is a bug, never a finished run
            manifest["status"] = "failed"
            store.write_manifest(manifest)
            raise RuntimeError(f"the executor returned with {len(missing)} shard(s) unfinished:"
                               f" {sorted(missing)[:10]}")
        tables = store.compacted_tables(p.run_id)
        tables["levels"] = levels_table(p, tables["utterances"])
        if hasattr(executor, "describe"):  # where the model ran (a resumed run: where its last part ran)
            manifest["execution"] = json_dumps(executor.describe())
        manifest.update(status="complete", finished_at=_now(), num_errors=tables["errors"].num_rows)
        rows = store.publish(manifest, tables)
    _auto_pack(store.root, note)
    return RunOutcome(p.run_id, store.root, False, len(p.utt_ids), rows["errors"], len(todo),
                      len(shards) - len(todo), rows, _errors(store, p.run_id))


def _auto_pack(root: Path, note: Callable[[str], None]) -> None:
    """After a publication: pack the root when it holds many unpacked runs (``results.pack.auto_pack``); a failure
    of that optional step is reported, never the run's."""
    import duckdb

    from exitbench.results.pack import auto_pack

    try:
        done = auto_pack(root)
    except (ResultsRootError, OSError, duckdb.Error) as exc:
        note(f"automatic packing of {root} skipped: {exc}")
        return
    if done is not None and done.packed_runs:
        note(f"packed {done.packed_runs} runs of {root} into large files (EXITBENCH_AUTO_PACK=0 turns this off)")


def _complete_and_sound(store: ResultStore, run_id: str) -> bool:
    """Complete, and holding no errors row that blames the machinery."""
    return store.is_complete(run_id) and not infrastructure_error_ids(store, run_id)


def _already(p: PreparedRun, store: ResultStore, num_shards: int) -> RunOutcome:
    m = store.read_manifest(p.run_id) or {}
    return RunOutcome(p.run_id, store.root, True, len(p.utt_ids), int(m.get("num_errors") or 0),
                      0, num_shards, errors=_errors(store, p.run_id))


def _errors(store: ResultStore, run_id: str) -> list[dict[str, Any]]:
    table = store.read_published(run_id, "errors")  # its own file, or its rows of a pack
    return [] if table is None else table.to_pylist()
