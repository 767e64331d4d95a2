"""The model contract: an ExitModel computes every level of a dynamic-compute model in one call."""

from __future__ import annotations

import abc
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from exitbench.errors import UsageError


class UnknownLevel(UsageError, KeyError):
    """A level named or numbered that the model does not have."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass
class DynamicOutput:
    """The model's own input-adaptive execution (e.g. router-driven slimming).

    ``estimates`` is ``[S, N]``; ``macs`` the realised multiply-accumulates per block ``[B]``;
    ``level_share`` optionally ``[B, L]``, the fraction of each block run at each level (for the model's
    own use: not recorded; the realised MACs per block are).
    """

    estimates: torch.Tensor
    macs: torch.Tensor
    level_share: torch.Tensor | None = None


@dataclass
class LevelOutputs:
    """Everything ``forward_all`` returns for one mixture of N samples cut into B blocks."""

    estimates: torch.Tensor  # [L, S, N]
    alpha: torch.Tensor | None = None  # [L, S, B] inverse-gamma shape of the per-block error variance
    beta: torch.Tensor | None = None  # [L, S, B] inverse-gamma scale
    router_logits: torch.Tensor | None = None  # [B, L]
    dynamic: DynamicOutput | None = None
    sigma2: torch.Tensor | None = None  # [L, S, B] Gaussian error variance per sample of each block
    scores: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [L, B] per-block exit scores
    extras: dict[str, Any] = field(default_factory=dict)  # free for the model's own use; not recorded

    def validate(self, num_levels: int, num_sources: int, num_samples: int, num_blocks: int) -> None:
        """Raise ValueError naming the first tensor whose shape or values break the contract."""
        def check(name: str, t: torch.Tensor | None, shape: tuple[int, ...]) -> None:
            if t is None:
                return
            if tuple(t.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape}")
            if not torch.isfinite(t).all():
                raise ValueError(f"model output {name} contains NaN or Inf")

        check("estimates", self.estimates, (num_levels, num_sources, num_samples))
        check("alpha", self.alpha, (num_levels, num_sources, num_blocks))
        check("beta", self.beta, (num_levels, num_sources, num_blocks))
        if (self.alpha is None) != (self.beta is None):
            raise ValueError("alpha and beta must be given together")
        check("router_logits", self.router_logits, (num_blocks, num_levels))
        check("sigma2", self.sigma2, (num_levels, num_sources, num_blocks))
        if self.sigma2 is not None and not (self.sigma2 > 0).all():
            raise ValueError("sigma2 must be positive (a Gaussian error variance per sample)")
        if self.sigma2 is not None and self.alpha is not None:
            raise ValueError("give one uncertainty family: alpha/beta (inverse-gamma) or sigma2 (Gaussian)")
        for name, t in self.scores.items():
            if not name.isidentifier():
                raise ValueError(f"exit score name {name!r} must be an identifier (it names a column)")
            if t is None or tuple(t.shape) != (num_levels, num_blocks):
                raise ValueError(f"scores[{name!r}] has shape {None if t is None else tuple(t.shape)},"
                                 f" expected {(num_levels, num_blocks)}")
            if torch.isnan(t).any():
                raise ValueError(f"scores[{name!r}] contains NaN (use -inf for 'no evidence')")
        if self.dynamic is not None:
            check("dynamic.estimates", self.dynamic.estimates, (num_sources, num_samples))
            check("dynamic.macs", self.dynamic.macs, (num_blocks,))

    def cpu(self) -> "LevelOutputs":
        """The same outputs on the CPU (tensors already there are kept; ``extras`` stays as it is)."""
        host = lambda t: None if t is None else t.cpu()  # noqa: E731
        dyn = self.dynamic
        if dyn is not None:
            dyn = DynamicOutput(host(dyn.estimates), host(dyn.macs), host(dyn.level_share))
        return LevelOutputs(estimates=host(self.estimates), alpha=host(self.alpha), beta=host(self.beta),
                            router_logits=host(self.router_logits), dynamic=dyn, sigma2=host(self.sigma2),
                            scores={k: host(v) for k, v in self.scores.items()}, extras=self.extras)

    def part(self, start: int, stop: int, first_block: int, last_block: int) -> "LevelOutputs":
        """The outputs of samples [start, stop) and blocks [first_block, last_block): one utterance of a row."""
        blk = lambda t: None if t is None else t[..., first_block:last_block]  # noqa: E731
        dyn = None
        if self.dynamic is not None:
            share = self.dynamic.level_share
            dyn = DynamicOutput(self.dynamic.estimates[..., start:stop], self.dynamic.macs[first_block:last_block],
                                None if share is None else share[first_block:last_block])
        return LevelOutputs(estimates=self.estimates[..., start:stop], alpha=blk(self.alpha), beta=blk(self.beta),
                            router_logits=None if self.router_logits is None
                            else self.router_logits[first_block:last_block],
                            dynamic=dyn, sigma2=blk(self.sigma2), scores={k: blk(v) for k, v in self.scores.items()},
                            extras=dict(self.extras))


class OnlineUnsupported(UsageError):
    """A model without an incremental pass (``ExitModel.start``): it cannot run a policy online."""


@dataclass
class LevelStep:
    """One level of an incremental pass: the variance outputs ``[S, B]`` (blocks that stopped hold stale values)."""

    alpha: torch.Tensor | None = None
    beta: torch.Tensor | None = None
    sigma2: torch.Tensor | None = None


class ExitState(abc.ABC):
    """An incremental pass over one mixture (online execution): levels computed one at a time.

    ``forward_until(l)`` computes up to level l for the running blocks and returns level l's variance
    outputs; ``estimate(blocks)`` decodes the current level's waveform for those blocks; ``stop(blocks)``
    marks blocks as exited at the current level. A chunk-safe model stops computing them; a
    whole-utterance model goes on while any block runs. ``macs`` counts what was executed.
    """

    level: int = -1  # the last level computed
    macs: float = 0.0  # multiply-accumulates executed so far

    @property
    @abc.abstractmethod
    def num_blocks(self) -> int:
        """Blocks of the mixture."""

    @abc.abstractmethod
    def forward_until(self, level: int) -> LevelStep:
        """Compute levels up to ``level`` (≥ the current one) for the running blocks; that level's outputs."""

    @abc.abstractmethod
    def estimate(self, blocks: "np.ndarray | None" = None) -> torch.Tensor:
        """The current level's waveforms ``[S, N]`` for ``blocks`` (bool ``[B]``; default: the running ones);
        samples of other blocks are zero."""

    @abc.abstractmethod
    def stop(self, blocks: "np.ndarray") -> None:
        """Blocks (bool ``[B]``) that exit at the current level."""


class ExitModel(abc.ABC):
    """A dynamic-compute model wrapped for evaluation.

    Subclasses set ``levels`` (cheapest first), ``sample_rate``, ``num_sources``, ``block_size``
    and implement ``forward_all`` and ``macs_per_sample``. ``module`` is the torch module (for
    parameter counts, device moves and eval mode).
    """

    levels: tuple[str, ...] = ()
    sample_rate: int = 8000
    num_sources: int = 2
    block_size: int = 2000
    module: torch.nn.Module
    #: each block's outputs depend on its own samples only (forward_all of a mixture equals forward_all of
    #: each block on its own; the contract check verifies it), so online execution stops a block's compute
    #: when it exits; otherwise the pass goes on for the whole utterance while any block runs
    chunk_safe: bool = False
    #: options a checkpoint's model takes at run time (``--model-arg``): name -> type; they change how the
    #: model executes, not its weights, and enter the run's identity
    execution_options: dict[str, type] = {}

    @abc.abstractmethod
    def forward_all(self, mixture: torch.Tensor) -> LevelOutputs:
        """Run every level on a mono mixture ``[N]`` and return their outputs."""

    @abc.abstractmethod
    def macs_per_sample(self, level: int | str) -> float:
        """Cumulative multiply-accumulates per input sample to produce ``level``'s output."""

    def forward_many(self, mixtures: Sequence[torch.Tensor]) -> list[LevelOutputs]:
        """``forward_all`` of each mono mixture ``[N_i]``, in as few passes as give the same outputs.

        A chunk-safe model separates each block on its own, so the mixtures, each zero-padded to whole blocks
        (as its last block is within ``forward_all``), run as one row; any other model runs one pass each,
        unless it overrides this with an exact batch of its own (``PressModel`` stacks mixtures of equal
        length). ``--batch`` recordings check the outputs against ``forward_all`` before they use it.
        """
        if len(mixtures) < 2 or not self.chunk_safe:
            return [self.forward_all(m) for m in mixtures]
        t = self.block_size
        blocks = [self.num_blocks(int(m.shape[-1])) for m in mixtures]
        row = torch.cat([torch.nn.functional.pad(m, (0, b * t - int(m.shape[-1]))) for m, b in zip(mixtures, blocks)])
        out = self.forward_all(row)
        parts, first = [], 0
        for m, b in zip(mixtures, blocks):
            parts.append(out.part(first * t, first * t + int(m.shape[-1]), first, first + b))
            first += b
        return parts

    def start(self, mixture: torch.Tensor) -> ExitState:
        """Begin an incremental pass over a mono mixture ``[N]`` for online execution (override to support it)."""
        raise OnlineUnsupported(f"{type(self).__name__} has no incremental pass (ExitModel.start); online"
                                f" execution needs one")

    def set_execution_option(self, name: str, value: Any) -> None:
        """Set one of ``execution_options`` (override with the model's own handling)."""
        raise UsageError(f"{type(self).__name__} takes no execution option {name!r}")

    # -- conveniences shared by every model -------------------------------------------------
    @property
    def num_levels(self) -> int:
        return len(self.levels)

    def level_index(self, level: int | str) -> int:
        """Index of a level given by index or name."""
        if isinstance(level, str):
            try:
                return self.levels.index(level)
            except ValueError:
                raise UnknownLevel(f"unknown level {level!r}; levels are {list(self.levels)}") from None
        if not 0 <= level < self.num_levels:
            raise UnknownLevel(f"level {level} out of range 0..{self.num_levels - 1}")
        return int(level)

    def num_blocks(self, num_samples: int) -> int:
        """Blocks of ``block_size`` samples covering ``num_samples`` (the last may be shorter)."""
        return max(1, math.ceil(num_samples / self.block_size))

    def gmacs_per_second(self, level: int | str) -> float:
        """Giga-MACs per second of audio at ``level``."""
        return self.macs_per_sample(level) * self.sample_rate / 1e9

    def num_parameters(self, level: int | str | None = None) -> int:
        """Parameters used to produce ``level`` (all of them when None or not overridden)."""
        return sum(p.numel() for p in self.module.parameters())

    @property
    def device(self) -> torch.device:
        try:
            return next(self.module.parameters()).device
        except StopIteration:
            return torch.device("cpu")

    def to(self, device: str | torch.device) -> "ExitModel":
        """Move the wrapped module; returns self."""
        self.module.to(device)
        return self

    def eval(self) -> "ExitModel":
        """Put the wrapped module in eval mode; returns self."""
        self.module.eval()
        return self

    def set_block_size(self, block_size: int) -> None:
        """Record with blocks of ``block_size`` samples (a model with per-block outputs checks it can)."""
        if int(block_size) < 1:
            raise UsageError(f"block size must be at least 1 sample, got {block_size}")
        self.block_size = int(block_size)

    def identity(self) -> str:
        """A content hash: every parameter and buffer (name, dtype, shape, bytes) and ``describe()``.

        Two models with the same identity compute the same outputs; override it when a model's
        behaviour depends on more than its state dict and declared description.
        """
        h = hashlib.sha256()
        for name, t in sorted(self.module.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        h.update(json.dumps(self.describe(), sort_keys=True, default=str).encode())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for the manifest and the levels table."""
        return {
            "levels": list(self.levels),
            "sample_rate": self.sample_rate,
            "num_sources": self.num_sources,
            "block_size": self.block_size,
            "macs_per_sample": [self.macs_per_sample(i) for i in range(self.num_levels)],
            "parameters": [self.num_parameters(i) for i in range(self.num_levels)],
        }
