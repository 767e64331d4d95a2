"""The adapter toolkit: your own early-exit network as an ExitModel in a few lines.

- :func:`measure_macs` counts multiply-accumulates with ``torch.utils.flop_counter.FlopCounterMode``
  (FLOPs / 2), split by module path, plus analytic counts for ops it cannot see (recurrent kernels:
  ``nn.LSTM`` and ``nn.GRU`` are declared here; add your own with ``analytic``). An analytic count
  applies only to a module in which FlopCounterMode counted nothing (on CPU torch decomposes a GRU
  into matrix products it counts, but runs an LSTM as one opaque kernel).
- :class:`MultiExitAdapter` wraps an ``nn.Module`` and "where each exit taps the network" (module
  paths whose outputs a head turns into an estimate, or a callable returning every exit's
  estimate) into an :class:`~exitbench.models.base.ExitModel`; it measures its own MACs per exit.

Example (a network whose ``blocks.0``, ``blocks.1``, ... feed a shared decoder)::

    model = MultiExitAdapter(net, taps=["blocks.0", "blocks.1", "blocks.2"],
                             head=lambda level, feats, mixture: net.decode(feats, mixture),
                             sample_rate=8000, num_sources=2)
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from exitbench.errors import UsageError
from exitbench.models.base import ExitModel, LevelOutputs

#: MACs of a module call that FlopCounterMode does not count: (module, inputs, output) -> MACs
AnalyticCount = Callable[[nn.Module, tuple, Any], float]


def _rnn_macs(gates: int) -> AnalyticCount:
    """MACs of an nn.LSTM (4 gates) or nn.GRU (3 gates): per step, layer and direction, gates·H·(in + H)."""
    def count(mod: nn.Module, inputs: tuple, output: Any) -> float:
        x = inputs[0]
        if isinstance(x, nn.utils.rnn.PackedSequence):
            steps = int(x.data.shape[0])  # total (batch x time) steps
        else:
            steps = int(x.shape[0] * x.shape[1]) if x.dim() == 3 else int(x.shape[0])
        h, dirs = mod.hidden_size, 2 if mod.bidirectional else 1
        total = 0.0
        for layer in range(mod.num_layers):
            width = mod.input_size if layer == 0 else h * dirs
            total += dirs * gates * h * (width + h)
        return float(steps * total)
    return count


#: analytic counts every measurement uses unless told otherwise
DEFAULT_ANALYTIC: dict[type, AnalyticCount] = {nn.LSTM: _rnn_macs(4), nn.GRU: _rnn_macs(3)}


class MacCount:
    """MACs of one measured call: the total, and per module path (a parent includes its children)."""

    def __init__(self, by_path: dict[str, float]):
        self.by_path = by_path

    @property
    def total(self) -> float:
        return self.by_path.get("", 0.0)

    def of(self, paths: Sequence[str]) -> float:
        """MACs of the modules at ``paths`` (a path inside another listed one is not counted twice)."""
        keep = [p for p in paths if not any(p != q and (q == "" or p.startswith(q + ".")) for q in paths)]
        missing = [p for p in keep if p not in self.by_path and p != ""]
        if missing:
            raise UsageError(f"no module ran at path(s) {missing}; known: {sorted(self.by_path)[:12]}...")
        return sum(self.by_path.get(p, 0.0) for p in dict.fromkeys(keep))


def count_macs(module: nn.Module, call: Callable[[], Any],
               analytic: Mapping[type | str, AnalyticCount] | None = None) -> MacCount:
    """Run ``call()`` (which runs ``module``) once and count its MACs per module path of ``module``."""
    rules: dict[type | str, AnalyticCount] = {**DEFAULT_ANALYTIC, **(analytic or {})}
    names = {id(m): name for name, m in module.named_modules()}
    extra: dict[str, float] = {}
    hooks = []
    for name, m in module.named_modules():
        rule = rules.get(name) or next((r for t, r in rules.items() if isinstance(t, type) and isinstance(m, t)),
                                       None)
        if rule is not None:
            def hook(mod: nn.Module, inputs: tuple, output: Any, rule: AnalyticCount = rule) -> None:
                path = names[id(mod)]
                extra[path] = extra.get(path, 0.0) + rule(mod, inputs, output)
            hooks.append(m.register_forward_hook(hook))
    try:
        with FlopCounterMode(display=False) as counter:
            call()
    finally:
        for h in hooks:
            h.remove()
    by_path: dict[str, float] = {}
    root = type(module).__name__
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            by_path.setdefault("", 0.0)
            by_path[""] = max(by_path[""], sum(ops.values()) / 2)
            continue
        if key != root and not key.startswith(root + "."):
            continue
        path = key[len(root) + 1:] if key != root else ""
        by_path[path] = sum(ops.values()) / 2  # FlopCounterMode counts a multiply-add as 2 FLOPs
    for path, macs in extra.items():
        if by_path.get(path, 0.0) > 0:
            continue  # this torch build decomposes the kernel into ops FlopCounterMode counts: keep those
        parts = path.split(".") if path else []
        for i in range(len(parts) + 1):  # the module and each of its parents
            key = ".".join(parts[:i])
            by_path[key] = by_path.get(key, 0.0) + macs
    return MacCount(by_path)


def measure_macs(module: nn.Module, example: torch.Tensor, levels: Sequence[Sequence[str]] | None = None,
                 analytic: Mapping[type | str, AnalyticCount] | None = None,
                 call: Callable[[torch.Tensor], Any] | None = None) -> list[float]:
    """MACs per input sample of ``module`` on ``example`` (last dim = samples): one figure per level.

    ``levels[l]`` lists the module paths that level l's output needs (cumulative: the trunk up to
    that exit and its own head); without ``levels`` the whole call is one level. ``call`` runs the
    module on the example (default ``module(example)``).
    """
    run = call or module
    with torch.no_grad():
        count = count_macs(module, lambda: run(example), analytic)
    n = example.shape[-1]
    if levels is None:
        return [count.total / n]
    return [count.of(list(paths)) / n for paths in levels]


class _StopForward(Exception):
    """Raised from a forward hook to stop a pass once the tap of interest has produced its output."""


def _pad_sources(est: torch.Tensor, num_sources: int, n: int) -> torch.Tensor:
    """An exit's estimate as ``[S, N]``: drop a batch dim of 1, trim or zero-pad the time axis to N."""
    if est.dim() == 3 and est.shape[0] == 1:
        est = est[0]
    if est.dim() == 1 and num_sources == 1:
        est = est[None]
    if est.dim() != 2 or est.shape[0] != num_sources:
        raise UsageError(f"an exit returned shape {tuple(est.shape)}; expected [{num_sources}, samples]"
                         f" (or [1, {num_sources}, samples])")
    if est.shape[-1] >= n:
        return est[..., :n]
    return torch.nn.functional.pad(est, (0, n - est.shape[-1]))


def pool_frames_to_blocks(frames: torch.Tensor, hop: int, num_samples: int, block_size: int) -> torch.Tensor:
    """Per-frame values ``[S, F]`` (frame f covers samples f·hop .. f·hop + hop − 1, the last frame the
    rest) as the exact mean over each block's samples ``[S, B]``: what a per-sample value averages to."""
    s, f = frames.shape
    idx = torch.clamp(torch.arange(num_samples, device=frames.device) // hop, max=f - 1)
    per_sample = frames[:, idx]  # [S, N]
    b = -(-num_samples // block_size)
    padded = torch.nn.functional.pad(per_sample, (0, b * block_size - num_samples))
    counts = torch.full((b,), float(block_size), device=frames.device, dtype=per_sample.dtype)
    counts[-1] = num_samples - (b - 1) * block_size
    return padded.view(s, b, block_size).sum(-1) / counts


def block_sums(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """``Σ`` over each block of the last axis: ``[..., N]`` -> ``[..., B]`` (the last block may be shorter)."""
    n = x.shape[-1]
    b = -(-n // block_size)
    return torch.nn.functional.pad(x, (0, b * block_size - n)).unflatten(-1, (b, block_size)).sum(-1)


def agreement_scores(estimates: torch.Tensor, block_size: int) -> torch.Tensor:
    """Per block, how much exit l agrees with exit l − 1 (dB): 10·log10(‖x̂_{l−1}‖² / ‖x̂_l − x̂_{l−1}‖²),
    summed over sources; ``[L, B]``, −inf at the first exit (no evidence), +inf where they coincide."""
    e = estimates.double()
    prev = block_sums((e[:-1] ** 2).sum(1), block_size)
    diff = block_sums(((e[1:] - e[:-1]) ** 2).sum(1), block_size)
    with torch.no_grad():
        db = 10 * torch.log10(prev / diff)
    db = torch.where(diff == 0, torch.full_like(db, float("inf")), db)
    db = torch.where(prev == 0, torch.full_like(db, float("-inf")), db)
    first = torch.full((1, db.shape[1]), float("-inf"), dtype=db.dtype)
    return torch.cat([first, db], 0)


class MultiExitAdapter(ExitModel):
    """An ``nn.Module`` with several exits as an ExitModel, MACs measured per exit.

    Say where the exits are in one of three ways:

    - ``taps`` (module paths) and ``head(level, output_of_tap, mixture[1, N])``, which turns a tap's
      output into that exit's estimate (forward hooks capture the taps in one pass);
    - ``upto(level, mixture[1, N])``: the estimate of exit ``level`` computing only what it needs
      (``forward_all`` calls it per level unless ``exits`` is given too);
    - ``exits(mixture[1, N])``: every exit's estimate in one pass, cheapest first.

    Estimates may be ``[S, N]`` or ``[1, S, N]``; a model whose decoder drops or adds a few samples
    is trimmed or zero-padded to N. MACs per sample are measured on a ``probe_seconds`` input: a
    pass stopped right after tap l plus head l, or one call of ``upto(l, ...)``; with ``exits``
    alone pass ``macs_per_sample`` (or ``levels_paths``: the module paths each exit needs).

    An exit may also return a dict: ``{"estimate": ..., "alpha": [S, B], "beta": [S, B]}`` (PRESS's
    inverse-gamma variance per block, ``uncertainty="invgamma"``), ``{"estimate": ..., "sigma2": ...}``
    (a Gaussian error variance per sample, ``uncertainty="gaussian"``: ``[S, B]`` per block, or
    ``[S, F]`` per frame of ``variance_hop`` samples, pooled exactly to each block's mean), and
    ``"scores": {name: [B]}`` (the exit's own per-block confidence). ``scores=("agreement",)`` adds
    the adapter's agreement of each exit with the one before it (dB, see ``agreement_scores``);
    the ``threshold:score=NAME,tau=X`` policy exits on any recorded score.
    """

    def __init__(self, module: nn.Module, *, sample_rate: int, num_sources: int,
                 taps: Sequence[str] | None = None,
                 head: Callable[[int, Any, torch.Tensor], torch.Tensor] | None = None,
                 exits: Callable[[torch.Tensor], Sequence[torch.Tensor]] | None = None,
                 upto: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
                 levels: Sequence[str] | None = None, block_size: int | None = None,
                 macs_per_sample: Sequence[float] | None = None,
                 levels_paths: Sequence[Sequence[str]] | None = None,
                 analytic: Mapping[type | str, AnalyticCount] | None = None, probe_seconds: float = 1.0,
                 uncertainty: str = "none", variance_hop: int | None = None, scores: Sequence[str] = ()):
        if taps is not None and (exits is not None or upto is not None):
            raise UsageError("MultiExitAdapter takes taps=[module paths] or exits/upto callables, not both")
        if taps is None and exits is None and upto is None:
            raise UsageError("MultiExitAdapter needs taps=[module paths], upto(level, mixture) or exits(mixture)")
        if taps is not None and head is None:
            raise UsageError("MultiExitAdapter with taps needs head(level, tap_output, mixture)")
        self.module = module.eval()
        self.sample_rate, self.num_sources = int(sample_rate), int(num_sources)
        self.block_size = int(block_size or max(1, sample_rate // 4))  # 250 ms blocks unless told
        self.taps, self.head, self.exits, self.upto = list(taps or []), head, exits, upto
        if taps is not None:
            known = dict(module.named_modules())
            missing = [t for t in self.taps if t not in known]
            if missing:
                raise UsageError(f"tap(s) {missing} are not module paths of {type(module).__name__};"
                                 f" some that are: {[n for n in known if n][:10]}")
        n_levels = len(self.taps) if taps is not None else None
        if levels is not None:
            self.levels = tuple(levels)
        elif n_levels is not None:
            self.levels = tuple(f"exit{i + 1}" for i in range(n_levels))
        else:
            raise UsageError("MultiExitAdapter with exits or upto callables needs levels=[names, cheapest first]")
        if uncertainty not in ("none", "invgamma", "gaussian"):
            raise UsageError(f"uncertainty must be 'none', 'invgamma' or 'gaussian', not {uncertainty!r}")
        self.uncertainty, self.variance_hop, self.score_names = uncertainty, variance_hop, tuple(scores)
        self._analytic = analytic
        probe = torch.zeros(1, max(1, int(probe_seconds * sample_rate)))
        torch.manual_seed(0)
        probe.normal_(0, 0.1)
        if macs_per_sample is not None:
            self._macs = [float(m) for m in macs_per_sample]
        elif levels_paths is not None:
            self._macs = measure_macs(module, probe, levels_paths, analytic, call=self._call_all)
        elif taps is not None:
            self._macs = [self._measure_tap(level, probe) for level in range(len(self.taps))]
        elif upto is not None:
            self._macs = [measure_macs(module, probe, None, analytic, call=lambda x, l=level: upto(l, x))[0]
                          for level in range(len(self.levels))]
        else:
            raise UsageError("MultiExitAdapter with exits alone needs macs_per_sample, levels_paths or upto")
        if len(self._macs) != len(self.levels):
            raise UsageError(f"{len(self._macs)} MACs figures for {len(self.levels)} levels")

    # -- running ----------------------------------------------------------------------------------
    def _call_all(self, mixture: torch.Tensor) -> list[torch.Tensor]:
        if self.exits is not None:
            return list(self.exits(mixture))
        if self.upto is not None:
            return [self.upto(level, mixture) for level in range(len(self.levels))]
        captured: dict[int, Any] = {}
        hooks = []
        modules = dict(self.module.named_modules())
        for level, path in enumerate(self.taps):
            def hook(mod: nn.Module, inputs: tuple, output: Any, level: int = level) -> None:
                captured.setdefault(level, output)
            hooks.append(modules[path].register_forward_hook(hook))
        try:
            self.module(mixture)
        finally:
            for h in hooks:
                h.remove()
        missing = [self.taps[i] for i in range(len(self.taps)) if i not in captured]
        if missing:
            raise RuntimeError(f"tap(s) {missing} did not run in the forward pass")
        return [self.head(level, captured[level], mixture) for level in range(len(self.taps))]  # type: ignore[misc]

    def _measure_tap(self, level: int, probe: torch.Tensor) -> float:
        """MACs per sample of a pass stopped right after tap ``level``, plus head ``level``."""
        captured: dict[str, Any] = {}

        def stop(mod: nn.Module, inputs: tuple, output: Any) -> None:
            captured["out"] = output
            raise _StopForward

        target = dict(self.module.named_modules())[self.taps[level]]

        def call() -> None:
            handle = target.register_forward_hook(stop)
            try:
                self.module(probe)
            except _StopForward:
                pass
            finally:
                handle.remove()
            self.head(level, captured["out"], probe)  # type: ignore[misc]

        with torch.no_grad():
            count = count_macs(self.module, call, self._analytic)
        return count.total / probe.shape[-1]

    def forward_all(self, mixture: torch.Tensor) -> LevelOutputs:
        """Every exit's estimate on a mono mixture ``[N]``."""
        n = mixture.shape[-1]
        with torch.no_grad():
            outs = self._call_all(mixture.to(self.device, torch.float32)[None])
        if len(outs) != self.num_levels:
            raise RuntimeError(f"the network produced {len(outs)} exits; the adapter declares {self.num_levels}")
        parts = [o if isinstance(o, dict) else {"estimate": o} for o in outs]
        est = torch.stack([_pad_sources(p["estimate"].float(), self.num_sources, n) for p in parts])
        b = self.num_blocks(n)
        out = LevelOutputs(estimates=est)

        def stacked(key: str) -> torch.Tensor:
            missing = [i for i, p in enumerate(parts) if key not in p]
            if missing:
                raise RuntimeError(f"uncertainty={self.uncertainty!r} but exit(s) {missing} returned no {key!r}")
            return torch.stack([p[key].reshape(self.num_sources, -1).double() for p in parts])

        if self.uncertainty == "invgamma":
            out.alpha, out.beta = stacked("alpha"), stacked("beta")
        elif self.uncertainty == "gaussian":
            s2 = stacked("sigma2")
            if self.variance_hop:  # per frame: the exact mean over each block's samples
                s2 = torch.stack([pool_frames_to_blocks(v, self.variance_hop, n, self.block_size) for v in s2])
            out.sigma2 = s2
        names = sorted({k for p in parts for k in p.get("scores", {})})
        for name in names:
            out.scores[name] = torch.stack([torch.as_tensor(p["scores"][name], dtype=torch.float64).reshape(-1)
                                            .expand(b) for p in parts])
        if "agreement" in self.score_names:
            out.scores["agreement"] = agreement_scores(est, self.block_size)
        return out

    def macs_per_sample(self, level: int | str) -> float:
        """Measured cumulative MACs per input sample of ``level``."""
        return self._macs[self.level_index(level)]
