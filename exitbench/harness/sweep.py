"""Sweeps: record every (checkpoint, test set) of a TOML spec once, then replay every policy configuration.

Everything a sweep writes is keyed by content (the run id; the run and the policy spec for a
replay), so a second invocation skips what is stored and an interrupted one resumes where it
stopped: finished shards, finished recordings and finished replays are kept.

The spec (see examples/sweep.toml)::

    checkpoints = ["ckpt/press-m/step-*.pt", "press-s"]   # paths, globs, bundled names, module:factory
    targets = [10.0, 15.0, 20.0]                          # exit-SNR targets t (dB)

    [settings]                # recording settings (they enter the run id) and execution
    metrics = "none"          # "all", "none" or a list of sdr, pesq, stoi (SI-SNR is always computed)
    stoi_backend = "torch"    # or "pystoi"; metric_levels = { pesq = "last" } limits a metric's levels
    shard_size = 8
    executor = "local"        # or "ray"; [settings.ray] holds workers, gpus_per_worker, address...

    [[testsets]]
    dataset = "wsj0-2mix:/data/wsj0-mix/2speakers/wav8k/min"
    split = "tt"
    options = { limit_seconds = "10" }   # other loader options (as --dataset-opt key=value)

    [[policies]]
    name = "probabilistic"
    t = [10, 20]              # a list is a grid axis; a scalar is fixed; unset: every target (t),
    p = [0.5, 0.9]            # every level (static l), else the parameter's default

Relative paths (checkpoints, dataset paths, ``results``) are relative to the spec file's folder.
"""

from __future__ import annotations

import glob as _glob
import itertools
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from exitbench.errors import ResultsRootError, UsageError, WorkersLostError
from exitbench.datasets.registry import parse_dataset_arg
from exitbench.harness.spec import ALL_METRICS, RecordSettings, RunSpec
from exitbench.models.checkpoint import load_checkpoint
from exitbench.models.registry import BUNDLED
from exitbench.policies import PolicyError
from exitbench.policies.base import get_policy_class
from exitbench.policies.builtin import DEFAULT_TARGETS, Static

_TOP_KEYS = {"checkpoints", "testsets", "policies", "targets", "settings", "results", "name", "model_args"}
_SETTING_KEYS = {"metrics", "sdr_backend", "stoi_backend", "metric_levels", "shard_size", "resample", "limit", "executor", "ray", "seed", "block_size"}
_RAY_KEYS = {"workers", "gpus_per_worker", "cpus_per_metric_task", "cpus_per_worker", "address",
             "max_shards_in_flight", "max_metric_tasks"}
_TESTSET_KEYS = {"dataset", "split", "variant", "options"}


class SweepSpecError(UsageError):
    """A sweep spec that cannot be read or does not follow the format; the message says where."""


@dataclass(frozen=True)
class CheckpointEntry:
    """One model of the sweep: what to pass as --model, and its training step if the checkpoint says."""

    model: str
    step: int | None = None


@dataclass(frozen=True)
class TestsetEntry:
    """One test set: NAME[:PATH] and loader options as (key, text) pairs (as ``--dataset-opt``)."""

    dataset: str
    options: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class PolicyGrid:
    """One ``[[policies]]`` table: a policy name and, per parameter, the values to visit."""

    name: str
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def configurations(self, num_levels: int, targets: Sequence[float]) -> list[str]:
        """Canonical specs of every configuration of the grid for a model with ``num_levels`` levels."""
        cls = get_policy_class(self.name)
        given = dict(self.grid)
        unknown = sorted(set(given) - {p.name for p in cls.params})
        if unknown:
            raise PolicyError(f"policy {self.name!r} has no parameter {', '.join(unknown)}; its parameters:"
                              f" {', '.join(p.name for p in cls.params) or 'none'}")
        axes: list[tuple[str, list[Any]]] = []
        for p in cls.params:
            if p.name in given:
                values = list(given[p.name])
            elif p.name == "t":
                values = list(targets)
            elif cls is Static and p.name == "l":
                values = list(range(num_levels))
            else:
                values = [p.default]
            axes.append((p.name, values))
        specs = []
        for combo in itertools.product(*(v for _, v in axes)):
            specs.append(cls(**{k: v for (k, _), v in zip(axes, combo)}).spec())
        return list(dict.fromkeys(specs))


@dataclass
class SweepSpec:
    """A parsed sweep spec."""

    checkpoints: list[CheckpointEntry]
    testsets: list[TestsetEntry]
    policies: list[PolicyGrid]
    targets: tuple[float, ...] = DEFAULT_TARGETS
    settings: RecordSettings = field(default_factory=RecordSettings)
    executor: str = "local"
    executor_options: dict[str, Any] = field(default_factory=dict)
    results: Path | None = None
    seed: int = 0
    name: str = "sweep"
    model_args: tuple[tuple[str, str], ...] = ()  # for module:factory checkpoints (as --model-arg)

    def run_specs(self) -> list[tuple[CheckpointEntry, TestsetEntry, RunSpec]]:
        """Every (checkpoint, test set) pair as a run spec, checkpoints in step order."""
        def args(ck: CheckpointEntry) -> tuple[tuple[str, str], ...]:
            return self.model_args if ":" in ck.model and not Path(ck.model).exists() else ()
        return [(ck, ts, RunSpec(ck.model, ts.dataset, ts.options, self.settings, args(ck)))
                for ck in self.checkpoints for ts in self.testsets]


def _text(value: Any) -> str:
    """A TOML value as the text ``--dataset-opt key=value`` would pass."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _resolve_path(text: str, base: Path) -> str:
    p = Path(text).expanduser()
    return str(p if p.is_absolute() else (base / p))


def expand_checkpoints(entries: Sequence[str], base: Path) -> list[CheckpointEntry]:
    """Paths, globs, bundled names and module:factory targets -> entries ordered by step, then path."""
    out: list[CheckpointEntry] = []
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip():
            raise SweepSpecError(f"checkpoints: {entry!r} is not a path, glob or model name")
        if entry in BUNDLED:
            out.append(CheckpointEntry(entry, load_checkpoint(_bundled_path(entry)).step))
            continue
        path = _resolve_path(entry, base)
        if any(ch in entry for ch in "*?["):
            files = sorted(f for f in _glob.glob(path, recursive=True) if Path(f).is_file())
            if not files:
                raise SweepSpecError(f"checkpoints: glob {entry!r} matches no file (relative to {base})")
            out += [CheckpointEntry(f, load_checkpoint(f).step) for f in files]
        elif Path(path).is_file():
            out.append(CheckpointEntry(path, load_checkpoint(path).step))
        elif ":" in entry and not Path(entry.split(":")[0]).suffix:
            out.append(CheckpointEntry(entry, None))  # module:factory: no file, no step
        else:
            raise SweepSpecError(f"checkpoints: {entry!r} is neither a file (relative to {base}), a glob, a"
                                 f" bundled model ({', '.join(BUNDLED)}) nor a module:factory target")
    seen: dict[str, CheckpointEntry] = {}
    for ck in out:
        seen.setdefault(str(Path(ck.model).resolve()) if Path(ck.model).exists() else ck.model, ck)
    return sorted(seen.values(), key=lambda c: (c.step is None, c.step or 0, c.model))


def _bundled_path(name: str) -> Path:
    from exitbench.models.registry import resolve_checkpoint_path

    path = resolve_checkpoint_path(name)
    assert path is not None
    return path


def _metrics(value: Any) -> tuple[str, ...]:
    if value in ("all", None):
        return ALL_METRICS
    if value in ("none", "", []):
        return ()
    if isinstance(value, str):
        value = [m.strip() for m in value.split(",")]
    if not isinstance(value, list):
        raise SweepSpecError(f"settings.metrics: expected 'all', 'none' or a list, not {value!r}")
    return tuple(value)


def _check_keys(table: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise SweepSpecError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def parse_sweep_spec(data: dict[str, Any], base: Path = Path(".")) -> SweepSpec:
    """Validate a spec's TOML data (relative paths against ``base``) and expand the checkpoint globs."""
    _check_keys(data, _TOP_KEYS, "sweep spec")
    settings_t = data.get("settings", {})
    _check_keys(settings_t, _SETTING_KEYS, "[settings]")
    ray_t = settings_t.get("ray", {})
    _check_keys(ray_t, _RAY_KEYS, "[settings.ray]")
    try:
        settings = RecordSettings(metrics=_metrics(settings_t.get("metrics", "all")),
                                  sdr_backend=settings_t.get("sdr_backend", "fast_bss_eval"),
                                  stoi_backend=settings_t.get("stoi_backend", "torch"),
                                  metric_levels=tuple(sorted((str(k), str(v)) for k, v in
                                                             dict(settings_t.get("metric_levels", {})).items())),
                                  shard_size=int(settings_t.get("shard_size", 8)),
                                  resample=bool(settings_t.get("resample", False)),
                                  limit=settings_t.get("limit"), block_size=settings_t.get("block_size"))
    except (TypeError, ValueError) as exc:
        raise SweepSpecError(f"[settings]: {exc}") from None
    executor = settings_t.get("executor", "local")
    if executor not in ("local", "ray"):
        raise SweepSpecError(f"settings.executor must be 'local' or 'ray', not {executor!r}")

    ck_raw = data.get("checkpoints")
    if isinstance(ck_raw, dict):
        ck_raw = ck_raw.get("paths")
    if isinstance(ck_raw, str):
        ck_raw = [ck_raw]
    if not ck_raw:
        raise SweepSpecError("sweep spec: 'checkpoints' is missing or empty (a list of paths, globs or names)")
    checkpoints = expand_checkpoints(ck_raw, base)

    testsets = []
    for i, t in enumerate(data.get("testsets", [])):
        if not isinstance(t, dict) or "dataset" not in t:
            raise SweepSpecError(f"[[testsets]] #{i + 1}: needs dataset = \"NAME[:PATH]\"")
        _check_keys(t, _TESTSET_KEYS, f"[[testsets]] #{i + 1}")
        name, path = parse_dataset_arg(t["dataset"])
        dataset = name if path is None else f"{name}:{_resolve_path(path, base)}"
        opts = {str(k): _text(v) for k, v in t.get("options", {}).items()}
        opts.update({k: _text(t[k]) for k in ("split", "variant") if k in t})
        testsets.append(TestsetEntry(dataset, tuple(sorted(opts.items()))))
    if not testsets:
        raise SweepSpecError("sweep spec: no [[testsets]] table (each: dataset = \"NAME[:PATH]\" and options)")

    policies = []
    for i, p in enumerate(data.get("policies", [])):
        if not isinstance(p, dict) or "name" not in p:
            raise SweepSpecError(f"[[policies]] #{i + 1}: needs name = \"...\"")
        grid = tuple((k, tuple(v) if isinstance(v, list) else (v,)) for k, v in p.items() if k != "name")
        if any(len(v) == 0 for _, v in grid):
            raise SweepSpecError(f"[[policies]] #{i + 1} ({p['name']}): an empty list of values")
        g = PolicyGrid(str(p["name"]), grid)
        try:  # a bad name or parameter fails now, before any compute is spent
            g.configurations(2, [15.0])
        except PolicyError as exc:
            raise SweepSpecError(f"[[policies]] #{i + 1}: {exc}") from None
        policies.append(g)

    targets = tuple(float(t) for t in data.get("targets", DEFAULT_TARGETS))
    if not targets:
        raise SweepSpecError("sweep spec: 'targets' is empty")
    results = Path(_resolve_path(data["results"], base)) if "results" in data else None
    model_args = data.get("model_args", {})
    if not isinstance(model_args, dict):
        raise SweepSpecError("sweep spec: 'model_args' must be a table, e.g. model_args = { seed = 3 }")
    return SweepSpec(checkpoints, testsets, policies, targets, settings, executor, dict(ray_t), results,
                     int(settings_t.get("seed", 0)), str(data.get("name", "sweep")),
                     tuple(sorted((str(k), _text(v)) for k, v in model_args.items())))


def load_sweep_spec(path: str | os.PathLike) -> SweepSpec:
    """Read and validate a TOML sweep spec."""
    path = Path(path)
    if not path.is_file():
        raise SweepSpecError(f"sweep spec {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SweepSpecError(f"{path}: not valid TOML: {exc}") from None
    return parse_sweep_spec(data, path.resolve().parent)


# -- execution -----------------------------------------------------------------------------------
@dataclass
class SweepReport:
    """What a sweep did: one row per recording and one per (run, policy configuration)."""

    recordings: pd.DataFrame  # checkpoint, step, dataset, run_id, status, num_errors, detail
    replays: pd.DataFrame  # run_id, checkpoint, step, dataset, policy, status, gmacs, si_snri, regret, detail
    curves: dict[str, str] = field(default_factory=dict)  # run_id -> 'computed' | 'stored' | skipped reason

    @property
    def failed(self) -> bool:
        """True when a recording failed or had utterance errors."""
        return bool((self.recordings["status"] == "failed").any() or (self.recordings["num_errors"] > 0).any())


RecordFn = Callable[[RunSpec], Any]  # returns a RunOutcome


def replay_stored(root: Path, run_id: str, spec: str) -> Path:
    """Where ``store_replay`` puts a replay's per-utterance table."""
    from exitbench.results.replays import policy_slug

    return root / "replays" / f"run={run_id}" / f"policy={policy_slug(spec)}" / "part-0.parquet"


def _stored_curves(root: Path, run_id: str, targets: Sequence[float]) -> bool:
    import pyarrow.parquet as pq

    from exitbench.results.replays import stored_sweep_files

    files = stored_sweep_files(root, run_id) + [p for p in [root / "sweeps" / f"run={run_id}" / "part-0.parquet"]
                                                if p.exists()]
    if not files:
        return False
    have = {t for f in files for t in pq.read_table(f, columns=["t"]).column("t").to_pylist()}
    return all(any(abs(float(t) - float(h)) < 1e-9 for h in have if h == h) for t in targets)


def replay_policies(root: Path, run_id: str, spec: SweepSpec, log: Callable[[str], None]) -> tuple[list[dict], str]:
    """Replay every configuration of every policy grid on one run (stored ones skipped); and the curves."""
    from exitbench.results.replays import load_block_arrays, replay_run, run_shape, store_replay, sweep_run

    rows: list[dict] = []
    arrays = None
    num_levels = run_shape(root, run_id)["num_levels"]
    supported_names = []
    for grid in spec.policies:
        configs = grid.configurations(num_levels, spec.targets)
        todo = [c for c in configs if not replay_stored(root, run_id, c).exists()]
        for c in configs:
            if c not in todo:
                rows.append(_replay_row(root, run_id, c, "stored"))
        if not todo:
            supported_names.append(grid.name)
            continue
        arrays = arrays if arrays is not None else load_block_arrays(root, run_id)
        try:
            get_policy_class(grid.name)().check_requirements(arrays)
        except PolicyError as exc:
            log(f"run {run_id}: skipping policy {grid.name}: {exc}")
            rows += [{"run_id": run_id, "policy": c, "status": "skipped", "detail": str(exc)} for c in todo]
            continue
        supported_names.append(grid.name)
        for c in todo:
            res = replay_run(root, run_id, c, spec.targets[0], spec.seed, arrays=arrays)
            store_replay(root, res)
            s = res.summary()
            rows.append({"run_id": run_id, "policy": c, "status": "replayed", "gmacs": s["gmacs"],
                         "si_snri": s["si_snri"], "regret": s["regret"], "t": s["t"]})
    curves = "no policies"
    if supported_names:
        if _stored_curves(root, run_id, spec.targets):
            curves = "stored"
        else:
            arrays = arrays if arrays is not None else load_block_arrays(root, run_id)
            sweep_run(root, run_id, spec.targets, sorted(set(supported_names)), store=True, arrays=arrays)
            curves = "computed"
    return rows, curves


def _replay_row(root: Path, run_id: str, spec: str, status: str) -> dict:
    import pyarrow.parquet as pq

    path = replay_stored(root, run_id, spec)
    t = pq.read_table(path, columns=["gmacs", "si_snri", "t"]).to_pandas()
    blocks = Path(str(path).replace(f"{os.sep}replays{os.sep}", f"{os.sep}replay_blocks{os.sep}", 1))
    regret = float("nan")
    if blocks.exists() and "regret" in pq.read_schema(blocks).names:
        regret = float(pq.read_table(blocks, columns=["regret"]).column("regret").to_pandas().mean())
    return {"run_id": run_id, "policy": spec, "status": status, "gmacs": float(t["gmacs"].mean()),
            "si_snri": float(t["si_snri"].mean()), "regret": regret,
            "t": float(t["t"].iloc[0]) if len(t) else float("nan")}


def default_record_fn(spec: SweepSpec, root: Path) -> RecordFn:
    """Record in this process or on Ray, quietly (the CLI passes one with progress bars)."""
    from exitbench.harness.runner import execute, prepare

    def record(run_spec: RunSpec) -> Any:
        if spec.executor == "ray":
            from exitbench.harness.ray_executor import RayExecutor

            ex: Any = RayExecutor(**spec.executor_options)
        else:
            from exitbench.harness.local import LocalExecutor

            ex = LocalExecutor()
        return execute(prepare(run_spec), root, ex)

    return record


def run_sweep(spec: SweepSpec, root: str | os.PathLike, record_fn: RecordFn | None = None,
              log: Callable[[str], None] = lambda msg: None) -> SweepReport:
    """Record what is missing, replay what is not stored; a failed recording is reported, not fatal.

    KeyboardInterrupt propagates (everything finished so far is kept; rerun to resume).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    record_fn = record_fn or default_record_fn(spec, root)
    started_ray = False
    if spec.executor == "ray":
        from exitbench.harness.ray_executor import ensure_ray

        started_ray = ensure_ray(spec.executor_options.get("address"))  # once for the whole sweep
    rec_rows, rep_rows, curves = [], [], {}
    try:
        for ck, ts, run_spec in spec.run_specs():
            base = {"checkpoint": ck.model, "step": ck.step, "dataset": ts.dataset}
            try:
                outcome = record_fn(run_spec)
            except (ResultsRootError, WorkersLostError):
                raise  # the machinery, not this recording: stop; the same sweep resumes
            except UsageError as exc:  # one bad (checkpoint, test set) must not lose the rest of the sweep
                log(f"recording {ck.model} on {ts.dataset} failed: {type(exc).__name__}: {exc}")
                rec_rows.append({**base, "run_id": None, "status": "failed", "num_errors": 0,
                                 "detail": f"{type(exc).__name__}: {exc}"})
                continue
            status = "complete (skipped)" if outcome.already_complete else \
                "resumed" if outcome.shards_skipped else "recorded"
            rec_rows.append({**base, "run_id": outcome.run_id, "status": status,
                             "num_errors": int(outcome.num_errors), "detail": ""})
            rows, curves[outcome.run_id] = replay_policies(root, outcome.run_id, spec, log)
            rep_rows += [{**base, **r} for r in rows]
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    rec_cols = ["checkpoint", "step", "dataset", "run_id", "status", "num_errors", "detail"]
    rep_cols = ["checkpoint", "step", "dataset", "run_id", "policy", "status", "t", "gmacs", "si_snri", "regret",
                "detail"]
    return SweepReport(pd.DataFrame(rec_rows, columns=rec_cols), pd.DataFrame(rep_rows, columns=rep_cols), curves)
