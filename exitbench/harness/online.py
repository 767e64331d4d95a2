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
from exitbench.metrics.blockstats import block_stats, num_blocks
from exitbench.models.base import ExitModel
from exitbench.policies.arrays import LEVEL_STATS, STAT_COLUMNS, BlockArrays
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
                 sigma2: np.ndarray | None, idx: np.ndarray, blocks: "_Blocks", macs: float,
                 sample_rate: int, p_ref: np.ndarray | None) -> BlockArrays:
    """One level of the blocks ``idx`` as BlockArrays (the reference sums zero: online never reads them)."""
    pick = lambda a: None if a is None else np.ascontiguousarray(a.T[idx][:, None, :], dtype=np.float64)  # noqa: E731
    st = {c: np.ascontiguousarray(stats[c][0].T[idx][:, None, :]) for c in STAT_COLUMNS}
    n = blocks.n[idx]
    return BlockArrays(utt=blocks.utt[idx], utt_ids=blocks.utt_ids, block=blocks.block[idx], start=blocks.start[idx],
                       n=n, stats=st, macs=(float(macs) * n)[:, None], sample_rate=sample_rate,
                       alpha=pick(alpha), beta=pick(beta), sigma2=pick(sigma2),
                       p_ref=None if p_ref is None else p_ref[idx])


@dataclass
class _Blocks:
    """The blocks of one pass: several utterances' blocks in a row for a chunk-safe model."""

    utt: np.ndarray  # [B] utterance index
    utt_ids: list[str]
    block: np.ndarray  # [B] block index within its utterance
    start: np.ndarray  # [B] first sample within its utterance
    n: np.ndarray  # [B] samples of the utterance in the block
    offsets: np.ndarray  # [U + 1] first block of each utterance in the pass

    @classmethod
    def of(cls, lengths: Sequence[int], block_size: int) -> "_Blocks":
        nbs = [num_blocks(n, block_size) for n in lengths]
        utt = np.repeat(np.arange(len(lengths)), nbs)
        block = np.concatenate([np.arange(k) for k in nbs]).astype(np.int32)
        start = block.astype(np.int64) * block_size
        n = np.minimum(block_size, np.asarray(lengths, dtype=np.int64)[utt] - start)
        return cls(utt, [str(i) for i in range(len(lengths))], block, start, n, np.concatenate([[0], np.cumsum(nbs)]))


def _level_stats(est: torch.Tensor | None, idx: np.ndarray, fixed: dict[str, np.ndarray], blocks: _Blocks,
                 t: int) -> dict[str, np.ndarray]:
    """The block sums of one level's estimate ``[S, N]`` (None: not read, zeros) for the running blocks ``idx``.

    Only those blocks leave the device, laid in a row for ``metrics.blockstats.block_stats`` (float64, block by
    block, the samples past an utterance's end zero), so a decision sees a recording's numbers.
    """
    out = dict(fixed)
    if est is None:
        return out
    s_, n = est.shape
    nb = blocks.n.size
    x = torch.nn.functional.pad(est, (0, nb * t - n)).reshape(s_, nb, t)
    e = x.index_select(1, torch.as_tensor(idx, device=est.device)).float().cpu().numpy()  # [S, k, T]
    e = e * (np.arange(t) < blocks.n[idx, None])  # a batch's padding between utterances is not read
    k = idx.size
    st = block_stats(e.reshape(1, s_, k * t), np.zeros((s_, k * t)), fixed["_mix_blocks"][idx].reshape(-1), t)
    for name in LEVEL_STATS:
        full = np.zeros((1, s_, nb))
        full[0][:, idx] = st[name][0]
        out[name] = full
    return out


def execute(model: ExitModel, mixture: np.ndarray | Sequence[np.ndarray], policy: Policy,
            sync: Callable[[], None] | None = None) -> OnlinePass | list[OnlinePass]:
    """Run ``policy`` inside ``model``'s incremental pass over one mixture ``[N]`` (the clock includes deciding).

    A list of mixtures runs as one pass for a chunk-safe model: every utterance zero-padded to whole
    blocks and put in a row (each block is separated on its own, so nothing changes but the batch);
    the pass's wall-clock time and MACs are shared among its utterances by their blocks.
    """
    many = not (isinstance(mixture, np.ndarray) and mixture.ndim == 1)
    mixes = [np.asarray(m) for m in mixture] if many else [np.asarray(mixture)]
    if many and len(mixes) > 1 and not model.chunk_safe:
        raise UsageError(f"{type(model).__name__} is not chunk-safe: its utterances cannot share a pass")
    levels, lv, t, S = list(model.levels), model.num_levels, model.block_size, model.num_sources
    blocks = _Blocks.of([m.shape[-1] for m in mixes], t)
    nb = blocks.n.size
    joint = len(mixes) > 1  # one utterance runs as it is; several in a row of whole blocks
    total = nb * t if joint else mixes[0].shape[-1]
    mix64 = np.zeros(total)
    for u, m in enumerate(mixes):
        mix64[blocks.offsets[u] * t:blocks.offsets[u] * t + m.shape[-1]] = m
    reads = policy.reads_estimate()
    to_np = lambda x: None if x is None else x.detach().double().cpu().numpy()  # noqa: E731
    t0 = time.perf_counter()
    with torch.inference_mode():
        x = torch.from_numpy(mix64.astype(np.float32)).to(model.device)
        state = model.start(x)
        if state.num_blocks != nb:
            raise UsageError(f"the model's pass has {state.num_blocks} blocks, expected {nb}")
        choices = np.full(nb, -1, dtype=np.int64)
        running = np.ones(nb, dtype=bool)
        output = torch.zeros(S, total, device=model.device)
        # the mixture's sums once, as metrics.blockstats takes them (the reference's are zero: never read);
        # each utterance's mixture power then summed as a replay sums it
        mix_blocks = np.zeros(nb * t)
        mix_blocks[:total] = mix64
        mb = mix_blocks.reshape(nb, t)
        fixed = {c: np.zeros((1, S, nb)) for c in STAT_COLUMNS}
        fixed["e_mix"] = np.ascontiguousarray(np.broadcast_to(np.einsum("bt,bt->b", mb, mb), (1, S, nb)))
        fixed["sum_mix"] = np.ascontiguousarray(np.broadcast_to(mb.sum(-1), (1, S, nb)))
        fixed["n"] = np.broadcast_to(blocks.n.astype(np.float64), (1, S, nb))
        fixed["_mix_blocks"] = mb
        p_ref = _step_arrays(fixed, None, None, None, np.arange(nb), blocks, 0.0, model.sample_rate, None).p_ref
        for level in range(lv):
            step = state.forward_until(level)
            est = state.estimate() if reads and level < lv - 1 else None
            if level == lv - 1:
                stop = running.copy()
            else:
                idx = np.flatnonzero(running)
                stats = _level_stats(est, idx, fixed, blocks, t)
                arrays = _step_arrays(stats, to_np(step.alpha), to_np(step.beta), to_np(step.sigma2), idx, blocks,
                                      model.macs_per_sample(level), model.sample_rate, p_ref)
                stop = np.zeros(nb, dtype=bool)
                stop[idx] = np.asarray(policy.stops(arrays, level, levels), dtype=bool)
            if stop.any():
                out = est if est is not None else state.estimate(stop)
                mask = torch.as_tensor(np.repeat(stop, t)[:total], device=output.device)
                output = torch.where(mask, out.to(output.dtype), output)
                choices[stop] = level
                state.stop(stop)
                running &= ~stop
            if not running.any():
                break
        if sync is not None:
            sync()
    wall, macs = time.perf_counter() - t0, float(state.macs)
    passes = []
    for u, m in enumerate(mixes):
        a, z = blocks.offsets[u], blocks.offsets[u + 1]
        share = (z - a) / nb
        passes.append(OnlinePass(choices[a:z], output[:, a * t:a * t + m.shape[-1]], macs * share, wall * share))
    return passes if many else passes[0]


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
               repeats: int = 1, batch: int = 1, progress: Callable[[int, int], None] | None = None
               ) -> OnlineSummary:
    """Execute ``policy_spec`` online over run ``run``'s test set (``results``: an ``exitbench.Results``).

    The model and test set are rebuilt from the run's stored spec; the replay's choices come from its
    recording. Each utterance runs the policy and the static deepest level alternately ``repeats``
    times; the fastest of each is kept (machines are noisy; both see the same noise). ``batch`` > 1
    (chunk-safe models only) runs that many utterances in one pass, their figures shared by blocks.
    """
    from exitbench.harness.devices import full_float32, resolve_device
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
    full_float32(dev)  # the numbers its decisions read are those a recording on this device holds
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
    batch = max(1, int(batch))
    if batch > 1 and not model.chunk_safe:
        raise UsageError(f"--batch {batch}: {spec.model} is not chunk-safe, so its utterances cannot share a pass")
    warm = [testset.load(u).mixture for u in ids[:batch]]
    execute(model, warm if batch > 1 else warm[0], baseline, sync)  # warm-up (allocator, kernels) outside the clock
    if progress is not None:
        progress(0, len(ids))
    for g in range(0, len(ids), batch):
        group = ids[g:g + batch]
        mixes = [testset.load(u).mixture for u in group]
        arg = mixes if batch > 1 else mixes[0]
        best = best_base = None
        for _ in range(max(1, int(repeats))):
            b = execute(model, arg, baseline, sync)
            o = execute(model, arg, policy, sync)
            b, o = (b, o) if batch > 1 else ([b], [o])
            best_base = b if best_base is None or sum(p.wall_s for p in b) < sum(p.wall_s for p in best_base) else best_base
            best = o if best is None or sum(p.wall_s for p in o) < sum(p.wall_s for p in best) else best
        for utt_id, mix, ran, base in zip(group, mixes, best, best_base):
            a, z = where[utt_id]
            rep = replay[a:z]
            k = np.arange(a, z)
            rows["utt_id"].append(utt_id)
            rows["num_samples"].append(int(np.asarray(mix).shape[-1]))
            rows["num_blocks"].append(z - a)
            rows["wall_s"].append(ran.wall_s)
            rows["baseline_wall_s"].append(base.wall_s)
            rows["macs_executed"].append(ran.macs)
            rows["baseline_macs_executed"].append(base.macs)
            rows["macs_replay"].append(float(arrays.macs[k, rep].sum()))
            rows["macs_deepest"].append(float(arrays.macs[k, -1].sum()))
            rows["choices_equal"].append(int((ran.choices == rep).sum()) if ran.choices.shape == rep.shape else 0)
            rows["choices"].append(ran.choices.astype(np.int16).tolist())
            rows["replay_choices"].append(rep.astype(np.int16).tolist())
        if progress is not None:
            progress(min(g + batch, len(ids)), len(ids))
    table = pa.table(rows, schema=ONLINE_SCHEMA)
    name = torch.cuda.get_device_name(dev) if sync is not None else "cpu"
    return OnlineSummary(run_id, policy.spec(), name, bool(model.chunk_safe), table,
                         {"repeats": int(repeats), "batch": batch, "threads": torch.get_num_threads(),
                          "model": spec.model, "model_args": dict(spec.model_args)})


def stitch(estimates: torch.Tensor, choices: Sequence[int], block_size: int) -> torch.Tensor:
    """Each block of ``estimates [L, S, N]`` at its chosen level: the waveform a replay of ``choices`` describes."""
    n = estimates.shape[-1]
    level = torch.as_tensor(np.repeat(np.asarray(choices), block_size)[:n], device=estimates.device)
    return estimates.gather(0, level[None, None, :].expand(1, estimates.shape[1], n))[0]
