"""Online execution: the policy runs inside the model between exits and stops the forward pass for real.

For each utterance the model's incremental pass (``ExitModel.start``) computes one level at a time;
after each level the policy (``Policy.stops``) decides, per running block, from the same block sums,
variances and reference power that a replay reads, whether that block exits there. A chunk-safe model
then stops computing the block; a whole-utterance model goes on while any block runs. Recorded per
utterance: wall-clock time (the decisions included), the MACs executed, and beside them the replay's
choices and MACs for the same policy on the run's recording, and the same for the static deepest
level executed the same way (the baseline a saving is measured against).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import torch

from exitbench.errors import UsageError
from exitbench.metrics.blockstats import block_starts, block_stats
from exitbench.models.base import ExitModel
from exitbench.policies.arrays import STAT_COLUMNS, BlockArrays
from exitbench.policies.base import Policy, parse_policy

#: the per-utterance table an online run writes
ONLINE_SCHEMA = pa.schema([
    ("utt_id", pa.string()), ("num_samples", pa.int64()), ("num_blocks", pa.int32()),
    ("wall_s", pa.float64()), ("baseline_wall_s", pa.float64()),
    ("macs_executed", pa.float64()), ("baseline_macs_executed", pa.float64()),
    ("macs_replay", pa.float64()), ("macs_deepest", pa.float64()),
    ("choices_equal", pa.int32()), ("choices", pa.list_(pa.int16())), ("replay_choices", pa.list_(pa.int16())),
])


@dataclass
class OnlinePass:
    """One utterance executed online: the chosen level per block, the stitched output, what it cost."""

    choices: np.ndarray  # [B] int64
    output: torch.Tensor  # [S, N] each block's estimate at its exit (sources in the model's order)
    macs: float
    wall_s: float


def _step_arrays(stats: dict[str, np.ndarray], alpha: np.ndarray | None, beta: np.ndarray | None,
                 sigma2: np.ndarray | None, idx: np.ndarray, starts: np.ndarray, macs: float | np.ndarray,
                 sample_rate: int, p_ref: np.ndarray | None) -> BlockArrays:
    """One level of the blocks ``idx`` as BlockArrays (the reference sums zero: online never reads them)."""
    pick = lambda a: None if a is None else np.ascontiguousarray(a.T[idx][:, None, :], dtype=np.float64)  # noqa: E731
    st = {c: np.ascontiguousarray(stats[c][0].T[idx][:, None, :]) for c in STAT_COLUMNS}
    n = stats["n"][0, 0, idx].astype(np.int64)
    return BlockArrays(utt=np.zeros(idx.size, dtype=np.int64), utt_ids=["u"], block=idx.astype(np.int32),
                       start=starts[idx], n=n, stats=st, macs=(np.asarray(macs, dtype=np.float64) * n)[:, None],
                       sample_rate=sample_rate, alpha=pick(alpha), beta=pick(beta), sigma2=pick(sigma2),
                       p_ref=None if p_ref is None else p_ref[idx])


def execute(model: ExitModel, mixture: np.ndarray, policy: Policy,
            sync: Callable[[], None] | None = None) -> OnlinePass:
    """Run ``policy`` inside ``model``'s incremental pass over one mixture ``[N]`` (the clock includes deciding)."""
    levels, lv = list(model.levels), model.num_levels
    mix64 = np.asarray(mixture, dtype=np.float64)
    zeros_ref = np.zeros((model.num_sources, mix64.shape[0]))
    starts = block_starts(mix64.shape[0], model.block_size)
    reads = policy.reads_estimate()
    t0 = time.perf_counter()
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(mixture, dtype=np.float32)).to(model.device)
        state = model.start(x)
        nb = state.num_blocks
        choices = np.full(nb, -1, dtype=np.int64)
        running = np.ones(nb, dtype=bool)
        output = torch.zeros(model.num_sources, mix64.shape[0], device=model.device)
        p_ref = None
        for level in range(lv):
            step = state.forward_until(level)
            est = state.estimate() if reads and level < lv - 1 else None
            if level == lv - 1:
                stop = running.copy()
            else:
                est_np = (est if est is not None else torch.zeros_like(output)).float().cpu().numpy()
                stats = block_stats(est_np[None], zeros_ref, mix64, model.block_size)
                to_np = lambda t: None if t is None else t.detach().double().cpu().numpy()  # noqa: E731
                if p_ref is None:  # the utterance's mixture power, summed as a replay sums it
                    p_ref = _step_arrays(stats, None, None, None, np.arange(nb), starts, 0.0,
                                         model.sample_rate, None).p_ref
                idx = np.flatnonzero(running)
                arrays = _step_arrays(stats, to_np(step.alpha), to_np(step.beta), to_np(step.sigma2), idx, starts,
                                      model.macs_per_sample(level), model.sample_rate, p_ref)
                stop = np.zeros(nb, dtype=bool)
                stop[idx] = np.asarray(policy.stops(arrays, level, levels), dtype=bool)
            if stop.any():
                out = est if est is not None else state.estimate(stop)
                mask = torch.as_tensor(np.repeat(stop, model.block_size)[:mix64.shape[0]], device=output.device)
                output = torch.where(mask, out.to(output.dtype), output)
                choices[stop] = level
                state.stop(stop)
                running &= ~stop
            if not running.any():
                break
        if sync is not None:
            sync()
    return OnlinePass(choices, output, float(state.macs), time.perf_counter() - t0)


@dataclass
class OnlineSummary:
    """An online run of one policy over a recorded run's test set, against its replay and the static deepest."""

    run_id: str
    policy: str
    device: str
    chunk_safe: bool
    table: pa.Table
    info: dict[str, Any] = field(default_factory=dict)

    def figures(self) -> dict[str, float]:
        """Totals: choices equal, predicted and executed MAC savings, wall-clock saving (vs the static deepest)."""
        t = self.table.to_pydict()
        tot = lambda k: float(np.sum(t[k]))  # noqa: E731
        blocks = int(np.sum(t["num_blocks"]))
        return {
            "utterances": len(t["utt_id"]), "blocks": blocks, "choices_equal": int(np.sum(t["choices_equal"])),
            "mac_saving_replay": 1.0 - tot("macs_replay") / tot("macs_deepest"),
            "mac_saving_executed": 1.0 - tot("macs_executed") / tot("baseline_macs_executed"),
            "wall_saving": 1.0 - tot("wall_s") / tot("baseline_wall_s"),
            "wall_s": tot("wall_s"), "baseline_wall_s": tot("baseline_wall_s"),
        }


def run_online(results: Any, run: str, policy_spec: str, *, device: str | None = None, limit: int | None = None,
               repeats: int = 1, progress: Callable[[int, int], None] | None = None) -> OnlineSummary:
    """Execute ``policy_spec`` online over run ``run``'s test set (``results``: an ``exitbench.Results``).

    The model and test set are rebuilt from the run's stored spec; the replay's choices come from its
    recording. Each utterance runs the policy and the static deepest level alternately ``repeats``
    times; the fastest of each is kept (machines are noisy; both see the same noise).
    """
    from exitbench.harness.devices import resolve_device
    from exitbench.harness.runner import load_model, open_for_model
    from exitbench.harness.spec import RunSpec
    from exitbench.results.store import ResultStore

    run_id = results.run_id(run)
    manifest = ResultStore(results.root).read_manifest(run_id) or {}
    if not manifest.get("spec"):
        raise UsageError(f"run {run_id} has no stored spec; online execution rebuilds the model from it")
    spec = RunSpec.from_json(manifest["spec"])
    policy = parse_policy(policy_spec)
    if not policy.online:
        policy.stops(None, 0, ())  # raises the one-line reason
    resolved = load_model(spec)
    model = resolved.model
    dev = resolve_device(device or "auto")
    model.to(dev).eval()
    sync = torch.cuda.synchronize if str(dev).startswith("cuda") else None
    testset = open_for_model(spec, model)
    arrays = results.arrays(run_id)
    policy.check_requirements(arrays)
    replay = policy(arrays)
    if replay.ndim != 1:
        raise UsageError(f"{policy_spec}: online execution takes one level per block")
    baseline = parse_policy(f"static:l={model.num_levels - 1}")
    starts = arrays.utt_starts
    ends = np.append(starts[1:], arrays.num_blocks)
    where = {u: (int(a), int(b)) for u, a, b in zip(arrays.utt_ids, starts, ends)}
    ids = [u for u in testset.ids() if u in where]
    if limit is not None:
        ids = ids[:limit]
    if not ids:
        raise UsageError(f"run {run_id}: no utterance of its test set has blocks to compare with")
    rows: dict[str, list] = {f.name: [] for f in ONLINE_SCHEMA}
    warm = testset.load(ids[0]).mixture
    execute(model, warm, baseline, sync)  # warm-up (allocator, kernels) outside the clock
    if progress is not None:
        progress(0, len(ids))
    for i, utt_id in enumerate(ids):
        mix = testset.load(utt_id).mixture
        best = best_base = None
        for _ in range(max(1, int(repeats))):
            b = execute(model, mix, baseline, sync)
            o = execute(model, mix, policy, sync)
            best_base = b if best_base is None or b.wall_s < best_base.wall_s else best_base
            best = o if best is None or o.wall_s < best.wall_s else best
        a, z = where[utt_id]
        rep = replay[a:z]
        k = np.arange(a, z)
        rows["utt_id"].append(utt_id)
        rows["num_samples"].append(int(np.asarray(mix).shape[-1]))
        rows["num_blocks"].append(z - a)
        rows["wall_s"].append(best.wall_s)
        rows["baseline_wall_s"].append(best_base.wall_s)
        rows["macs_executed"].append(best.macs)
        rows["baseline_macs_executed"].append(best_base.macs)
        rows["macs_replay"].append(float(arrays.macs[k, rep].sum()))
        rows["macs_deepest"].append(float(arrays.macs[k, -1].sum()))
        rows["choices_equal"].append(int((best.choices == rep).sum()) if best.choices.shape == rep.shape else 0)
        rows["choices"].append(best.choices.astype(np.int16).tolist())
        rows["replay_choices"].append(rep.astype(np.int16).tolist())
        if progress is not None:
            progress(i + 1, len(ids))
    table = pa.table(rows, schema=ONLINE_SCHEMA)
    name = torch.cuda.get_device_name(dev) if sync is not None else "cpu"
    return OnlineSummary(run_id, policy.spec(), name, bool(model.chunk_safe), table,
                         {"repeats": int(repeats), "threads": torch.get_num_threads(),
                          "model": spec.model, "model_args": dict(spec.model_args)})


def stitch(estimates: torch.Tensor, choices: Sequence[int], block_size: int) -> torch.Tensor:
    """Each block of ``estimates [L, S, N]`` at its chosen level: the waveform a replay of ``choices`` describes."""
    n = estimates.shape[-1]
    level = torch.as_tensor(np.repeat(np.asarray(choices), block_size)[:n], device=estimates.device)
    return estimates.gather(0, level[None, None, :].expand(1, estimates.shape[1], n))[0]
