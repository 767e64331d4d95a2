"""The model contract, checked before any shard: one line naming what is wrong and what was expected.

``check_model`` runs on every model ``run``/``sweep``/``check-model`` resolves: the wrapped module
is a torch module; levels are named, unique; rate, sources and block size are positive; MACs are
positive and non-decreasing in level; and one dry ``forward_all`` on a short synthetic input
returns outputs of the right shapes, floating dtypes and finite values.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from exitbench.errors import UsageError
from exitbench.models.base import ExitModel, LevelOutputs


class ContractError(UsageError):
    """A model that breaks the ExitModel contract (exit 2, before any run is created)."""


def _fail(name: str, what: str) -> ContractError:
    return ContractError(f"model {name}: {what}")


def _declared(model: ExitModel, name: str) -> None:
    try:
        module = model.module
    except AttributeError:
        raise _fail(name, "has no `module` attribute; set self.module to the torch.nn.Module in __init__") from None
    if not isinstance(module, torch.nn.Module):
        raise _fail(name, f"`module` is a {type(module).__name__}; expected a torch.nn.Module")
    levels = model.levels
    if not isinstance(levels, (tuple, list)) or not levels or not all(isinstance(x, str) and x for x in levels):
        raise _fail(name, f"`levels` is {levels!r}; expected a non-empty tuple of level names, cheapest first")
    dupes = sorted({x for x in levels if list(levels).count(x) > 1})
    if dupes:
        raise _fail(name, f"level names must be unique; {dupes} repeat")
    for attr in ("sample_rate", "num_sources", "block_size"):
        v = getattr(model, attr, None)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise _fail(name, f"`{attr}` is {v!r}; expected a positive integer")


def _macs(model: ExitModel, name: str) -> list[float]:
    macs = []
    for i, level in enumerate(model.levels):
        try:
            m = model.macs_per_sample(i)
        except TypeError as exc:
            raise _fail(name, f"macs_per_sample({i}) raised TypeError ({exc}); expected it to return the"
                              f" cumulative MACs per input sample of level {level!r}"
                              f" (exitbench.models.adapters.measure_macs counts them)") from None
        except Exception as exc:
            raise _fail(name, f"macs_per_sample({i}) raised {type(exc).__name__}: {exc}") from None
        if not isinstance(m, (int, float)) or isinstance(m, bool) or not math.isfinite(m) or m <= 0:
            raise _fail(name, f"macs_per_sample({i}) for level {level!r} is {m!r}; expected a positive number"
                              f" (exitbench.models.adapters.measure_macs counts them)")
        macs.append(float(m))
    drops = [f"{model.levels[i]} {macs[i]:g} < {model.levels[i - 1]} {macs[i - 1]:g}"
             for i in range(1, len(macs)) if macs[i] < macs[i - 1]]
    if drops:
        raise _fail(name, f"MACs must not decrease with the level (levels are cheapest first): {'; '.join(drops)}")
    return macs


def _check_tensor(name: str, what: str, t: Any, shape: tuple[int, ...]) -> None:
    if not isinstance(t, torch.Tensor):
        raise _fail(name, f"{what} is a {type(t).__name__}; expected a tensor of shape {list(shape)}")
    if tuple(t.shape) != shape:
        raise _fail(name, f"{what} has shape {list(t.shape)}; expected {list(shape)}"
                          f" (levels, sources, samples/blocks as in the ExitModel contract)")
    if not t.is_floating_point():
        raise _fail(name, f"{what} has dtype {t.dtype}; expected a floating dtype")
    if not torch.isfinite(t).all():
        raise _fail(name, f"{what} contains NaN or Inf on a synthetic input")


def _dry_run(model: ExitModel, name: str) -> None:
    n = max(2 * model.block_size + model.block_size // 2, 400)  # two blocks and a partial one
    gen = torch.Generator().manual_seed(0)
    mixture = (0.1 * torch.randn(n, generator=gen)).to(model.device)
    try:
        with torch.inference_mode():
            out = model.forward_all(mixture)
    except Exception as exc:
        raise _fail(name, f"forward_all on a {n}-sample synthetic mixture raised {type(exc).__name__}: {exc}"
                          ) from None
    if not isinstance(out, LevelOutputs):
        raise _fail(name, f"forward_all returned a {type(out).__name__}; expected"
                          f" exitbench.models.base.LevelOutputs")
    L, S, B = model.num_levels, model.num_sources, model.num_blocks(n)
    _check_tensor(name, "estimates", out.estimates, (L, S, n))
    if (out.alpha is None) != (out.beta is None):
        raise _fail(name, "alpha and beta must be given together (the inverse-gamma parameters per block)")
    for what in ("alpha", "beta"):
        if getattr(out, what) is not None:
            _check_tensor(name, what, getattr(out, what), (L, S, B))
            if not (getattr(out, what) > 0).all():
                raise _fail(name, f"{what} must be positive (inverse-gamma parameters)")
    if out.router_logits is not None:
        _check_tensor(name, "router_logits", out.router_logits, (B, L))
    if out.dynamic is not None:
        _check_tensor(name, "dynamic.estimates", out.dynamic.estimates, (S, n))
        _check_tensor(name, "dynamic.macs", out.dynamic.macs, (B,))
    try:  # the rest of the contract (sigma2, exit scores, one uncertainty family)
        out.validate(L, S, n, B)
    except ValueError as exc:
        raise _fail(name, str(exc)) from None
    if model.chunk_safe:
        _check_chunk_safe(model, name, mixture, out)
    if type(model).start is not ExitModel.start:
        _check_incremental(model, name, mixture, out)


def _close(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    """Largest difference of two outputs relative to their scale (0 when both are absent)."""
    if a is None or b is None:
        return 0.0 if a is None and b is None else math.inf
    if a.shape != b.shape:
        return math.inf
    scale = float(b.abs().max()) + 1e-12
    return float((a.double() - b.double()).abs().max()) / scale


#: relative tolerance of the chunk-safety and incremental-pass checks: batched and unbatched GEMMs on the
#: CPU round differently (about 1e-7 relative), nothing more is allowed
_TOL = 1e-4


def _check_chunk_safe(model: ExitModel, name: str, mixture: torch.Tensor, out: LevelOutputs) -> None:
    """A chunk-safe model: each block's outputs equal those of forward_all on that block alone."""
    t = model.block_size
    with torch.inference_mode():
        for b in range(model.num_blocks(mixture.shape[0])):
            part = model.forward_all(mixture[b * t:(b + 1) * t])
            worst = max(_close(part.estimates, out.estimates[..., b * t:b * t + part.estimates.shape[-1]]),
                        _close(part.alpha, None if out.alpha is None else out.alpha[..., b:b + 1]),
                        _close(part.beta, None if out.beta is None else out.beta[..., b:b + 1]),
                        _close(part.sigma2, None if out.sigma2 is None else out.sigma2[..., b:b + 1]))
            if worst > _TOL:
                raise _fail(name, f"declares chunk_safe, but block {b}'s outputs on its own differ from those"
                                  f" within the mixture (relative difference {worst:.2g}): its outputs depend"
                                  f" on other blocks; set chunk_safe = False")


def _check_incremental(model: ExitModel, name: str, mixture: torch.Tensor, out: LevelOutputs) -> None:
    """An incremental pass (``start``): level by level the same outputs as forward_all; stopping a block works."""
    import numpy as np

    try:
        with torch.inference_mode():
            state = model.start(mixture)
            for level in range(model.num_levels):
                step = state.forward_until(level)
                est = state.estimate()
                worst = max(_close(est, out.estimates[level]),
                            _close(step.alpha, None if out.alpha is None else out.alpha[level]),
                            _close(step.beta, None if out.beta is None else out.beta[level]),
                            _close(step.sigma2, None if out.sigma2 is None else out.sigma2[level]))
                if worst > _TOL:
                    raise _fail(name, f"its incremental pass (start/forward_until) differs from forward_all at"
                                      f" level {model.levels[level]!r} (relative difference {worst:.2g})")
            state = model.start(mixture)
            state.forward_until(0)
            stop = np.zeros(state.num_blocks, dtype=bool)
            stop[0] = True
            state.stop(stop)
            state.forward_until(model.num_levels - 1)
            est = state.estimate()
    except ContractError:
        raise
    except Exception as exc:
        raise _fail(name, f"its incremental pass (start/forward_until/estimate/stop) raised"
                          f" {type(exc).__name__}: {exc}") from None
    want = (model.num_sources, mixture.shape[0])
    if tuple(est.shape) != want:
        raise _fail(name, f"estimate() after a stop has shape {list(est.shape)}; expected {list(want)}")
    if not bool((est[:, :model.block_size] == 0).all()):
        raise _fail(name, "estimate() returned samples of a block that had stopped; they must be zero")


def check_model(model: Any, name: str = "") -> None:
    """Raise ContractError (one line) unless ``model`` meets the ExitModel contract."""
    name = repr(name) if name else type(model).__name__
    if not isinstance(model, ExitModel):
        raise _fail(name, f"is a {type(model).__name__}; expected an exitbench.models.base.ExitModel"
                          f" (wrap a torch module with exitbench.models.adapters.MultiExitAdapter)")
    _declared(model, name)
    _macs(model, name)
    _dry_run(model, name)


def _differences(a: LevelOutputs, b: LevelOutputs) -> dict[str, float]:
    """Per output field, the largest relative difference between two outputs of one mixture (0: bit-equal)."""
    pairs = {"estimates": (a.estimates, b.estimates), "alpha": (a.alpha, b.alpha), "beta": (a.beta, b.beta),
             "sigma2": (a.sigma2, b.sigma2), "router_logits": (a.router_logits, b.router_logits)}
    if a.dynamic is not None or b.dynamic is not None:
        pairs["dynamic.estimates"] = (a.dynamic and a.dynamic.estimates, b.dynamic and b.dynamic.estimates)
        pairs["dynamic.macs"] = (a.dynamic and a.dynamic.macs, b.dynamic and b.dynamic.macs)
    for k in set(a.scores) | set(b.scores):
        pairs[f"scores[{k}]"] = (a.scores.get(k), b.scores.get(k))
    return {k: (0.0 if (x is None and y is None) or (x is not None and y is not None and x.shape == y.shape
                                                        and torch.equal(x, y)) else _close(x, y))
            for k, (x, y) in pairs.items()}


#: relative difference ``--batch`` may make to an output: kernels chosen by batch size round differently (about
#: 1e-6 of the output's scale on the CPU; the same order as recording on another device), nothing more
BATCH_TOL = 1e-5


def check_forward_many(model: ExitModel, batch: int, name: str = "") -> float:
    """Raise UsageError (one line) unless ``forward_many`` of a few synthetic mixtures gives what ``forward_all``
    gives each of them, to ``BATCH_TOL`` of each output's scale, on the model's device; return the largest
    relative difference (0.0: bit for bit), which the run's manifest records."""
    name = repr(name) if name else type(model).__name__
    t = model.block_size
    gen = torch.Generator().manual_seed(1)
    lengths = [2 * t + t // 2, 2 * t + t // 2, 3 * t + t // 3][:max(2, min(int(batch), 3))]
    mixes = [(0.1 * torch.randn(n, generator=gen)).to(model.device) for n in lengths]
    try:
        with torch.inference_mode():
            together = model.forward_many(mixes)
            alone = [model.forward_all(m) for m in mixes]
    except Exception as exc:
        raise UsageError(f"--batch {batch}: {name}.forward_many on {len(mixes)} synthetic mixtures raised"
                         f" {type(exc).__name__}: {exc}") from None
    if len(together) != len(mixes):
        raise UsageError(f"--batch {batch}: {name}.forward_many returned {len(together)} outputs for {len(mixes)}"
                         f" mixtures")
    worst = 0.0
    for i, (a, b) in enumerate(zip(together, alone)):
        diffs = _differences(a, b)
        field, diff = max(diffs.items(), key=lambda kv: kv[1])
        if diff > BATCH_TOL:
            raise UsageError(f"--batch {batch}: {name} gives other outputs in a batch than alone ({field} of a"
                             f" {lengths[i]}-sample mixture, relative difference {diff:.2g} on {model.device},"
                             f" more than {BATCH_TOL:g}); record with --batch 1")
        worst = max(worst, diff)
    return worst
