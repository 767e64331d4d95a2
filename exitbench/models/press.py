"""A small PRESS-style probabilistic early-exit separator (8 kHz, Conv-TasNet-like trunk).

Layout, for a mixture of N samples and hop s (``enc_stride``):

  encoder   Conv1d(1, F, K, stride s, no bias) + ReLU               -> w  [F, M] (M = ceil(N/s) + 1 frames)
  bottleneck cLN + Conv1d(F, H, 1)
  split     Conv1d(H, S*H, 1) -> S source streams [S, H, M] (later layers share weights across streams)
  trunk     num_exits groups of blocks_per_exit TCN blocks (1x1 -> PReLU/cLN -> dilated depthwise ->
            PReLU/cLN -> 1x1, residual; dilations 1, b, b^2, ... restart in each group, b = dilation_base:
            with kernel 3, base 3 covers every frame offset as base 2 does and triples a group's reach)
  exit l    after group l: a variance head on the stream features pooled over each block's frames,
            and a waveform decoder: PReLU + Conv1d(H, F, 1) mask (ReLU) times w, ConvTranspose1d(F, 1, K, s)

The inverse-gamma parameters are accumulated across exits
(:func:`exitbench.models.layers.accumulate_inverse_gamma`): alpha_l = alpha_{l-1} + softplus(a_l),
E[sigma^2]_l = E[sigma^2]_{l-1} * exp(-softplus(c_l)), beta_l = E[sigma^2]_l (alpha_l - 1), so a later
exit never predicts a larger mean error variance than an earlier one.

Cost model: producing level l in a real early-exit run costs the trunk up to exit l, the variance
heads of exits 0..l (they decide whether to stop) and the waveform decoder of exit l only;
``macs_per_sample`` and ``num_parameters`` follow it, and ``PressNet.forward(..., upto=l)`` runs
exactly that so a test can check the declared MACs against FlopCounterMode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from exitbench.errors import UsageError
from exitbench.models.base import ExitModel, ExitState, LevelOutputs, LevelStep
from exitbench.models.layers import (set_config_block_size, merge_config, ChannelNorm, depthwise_conv1d, pointwise_conv1d, prelu, recalibrate, recalibrate_step, InvGammaHead, inverse_gamma_step, block_mean,
                                     block_power, frame_block_index, num_blocks)

#: size presets; any key can be overridden in the config
PRESETS: dict[str, dict[str, Any]] = {
    "S": {"enc_channels": 128, "hidden": 64, "block_hidden": 128, "blocks_per_exit": 6},
    "M": {"enc_channels": 256, "hidden": 128, "block_hidden": 256, "blocks_per_exit": 8},
    # for CPU tests only
    "tiny": {"enc_channels": 32, "hidden": 16, "block_hidden": 32, "blocks_per_exit": 2},
}

DEFAULTS: dict[str, Any] = {
    "size": "S",
    "sample_rate": 8000,
    "num_sources": 2,
    "block_size": 2000,
    "enc_kernel": 16,
    "enc_stride": 8,
    "kernel_size": 3,
    "num_exits": 4,
    "var_hidden": 32,
    "alpha_min": 2.0,
    "calibration": None,  # {"shape": [...], "scale": [...]} per level, fitted post hoc
    "chunked": False,  # each block separated on its own (chunk-safe: online execution stops per block)
    "dilation_base": 2,  # dilations base**i in each group (same MACs and parameters for any base)
}


def resolve_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults, then the size preset, then the given keys; raises on unknown keys."""
    out = merge_config("press", config, DEFAULTS, PRESETS)
    if out["enc_kernel"] % out["enc_stride"] or out["block_size"] % out["enc_stride"]:
        raise UsageError("enc_kernel and block_size must be multiples of enc_stride")
    if not isinstance(out["dilation_base"], int) or out["dilation_base"] < 1:
        raise UsageError(f"dilation_base must be a positive integer, got {out['dilation_base']!r}")
    if out["alpha_min"] <= 1.0:
        raise UsageError("alpha_min must exceed 1 for the predicted variance to have a finite mean")
    return out


class TCNBlock(nn.Module):
    """Conv-TasNet block: pointwise up, dilated depthwise, pointwise down, residual."""

    def __init__(self, channels: int, hidden: int, kernel_size: int, dilation: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(channels, hidden, 1), nn.PReLU(), ChannelNorm(hidden),
            nn.Conv1d(hidden, hidden, kernel_size, dilation=dilation,
                      padding=dilation * (kernel_size - 1) // 2, groups=hidden),
            nn.PReLU(), ChannelNorm(hidden),
            nn.Conv1d(hidden, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up, act1, norm1, depthwise, act2, norm2, down = self.net
        h = norm1(prelu(act1, pointwise_conv1d(x, up)))
        h = norm2(prelu(act2, depthwise_conv1d(h, depthwise)))
        out = pointwise_conv1d(h, down)
        # without autograd the residual goes into the product's own buffer (x + y == y + x, bit for bit)
        return x + out if torch.is_grad_enabled() else out.add_(x)


class ExitDecoder(nn.Module):
    """Mask from the stream features, applied to the encoder output, back to a waveform."""

    def __init__(self, hidden: int, enc_channels: int, kernel: int, stride: int):
        super().__init__()
        self.act = nn.PReLU()
        self.mask = nn.Conv1d(hidden, enc_channels, 1)
        self.decoder = nn.ConvTranspose1d(enc_channels, 1, kernel, stride=stride, bias=False)

    def forward(self, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``h [batch*S, H, M]``, ``w [batch*S, F, M]`` -> padded waveform ``[batch*S, (M-1)s+K]``."""
        return self.decoder(F.relu(pointwise_conv1d(prelu(self.act, h), self.mask)) * w).squeeze(1)


class PressNet(nn.Module):
    """The torch module; ``forward(mixture [batch, N])`` returns every exit (or up to one)."""

    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        self.cfg = cfg
        fc, h, p = cfg["enc_channels"], cfg["hidden"], cfg["block_hidden"]
        k, s, S = cfg["enc_kernel"], cfg["enc_stride"], cfg["num_sources"]
        self.encoder = nn.Conv1d(1, fc, k, stride=s, bias=False)
        self.bottleneck = nn.Sequential(ChannelNorm(fc), nn.Conv1d(fc, h, 1))
        self.split = nn.Conv1d(h, S * h, 1)
        self.groups = nn.ModuleList(
            nn.Sequential(*[TCNBlock(h, p, cfg["kernel_size"], cfg["dilation_base"] ** i)
                            for i in range(cfg["blocks_per_exit"])])
            for _ in range(cfg["num_exits"])
        )
        self.var_heads = nn.ModuleList(InvGammaHead(h, cfg["var_hidden"]) for _ in range(cfg["num_exits"]))
        self.decoders = nn.ModuleList(ExitDecoder(h, fc, k, s) for _ in range(cfg["num_exits"]))

    def forward(self, mixture: torch.Tensor, upto: int | None = None) -> dict[str, torch.Tensor]:
        """``mixture [batch, N]`` -> ``estimates [batch, L', S, N]``, ``alpha, beta [batch, L', S, B]``.

        With ``upto=None`` every exit is decoded (L' = num_exits). With ``upto=l`` the trunk stops
        at exit l, the variance heads of exits 0..l run and only exit l is decoded (L' = 1 for the
        estimates, l + 1 for alpha/beta): the cost of a real early exit at l.
        """
        last = self.cfg["num_exits"] - 1 if upto is None else int(upto)
        if not 0 <= last < self.cfg["num_exits"]:
            raise ValueError(f"upto={upto} out of range 0..{self.cfg['num_exits'] - 1}")
        state = self.begin(mixture)
        alphas, betas, estimates = [], [], []
        for level in range(last + 1):
            alpha, beta = self.step(state)
            alphas.append(alpha)
            betas.append(beta)
            if upto is None or level == last:
                estimates.append(self.decode(state))
        return {"estimates": torch.stack(estimates, 1), "alpha": torch.stack(alphas, 1),
                "beta": torch.stack(betas, 1)}

    # -- the pass in stages: what forward runs, and what online execution resumes exit by exit ----
    def begin(self, mixture: torch.Tensor) -> "PressPass":
        """Encoder, bottleneck and split of ``mixture [batch, N]``: the state before exit 0."""
        cfg = self.cfg
        k, s, S, T = cfg["enc_kernel"], cfg["enc_stride"], cfg["num_sources"], cfg["block_size"]
        batch, n = mixture.shape
        # pad so frame m starts its hop at original sample m*s and the decoder covers [0, N)
        lead = k - s
        tail = lead + (-n) % s
        x = F.pad(mixture, (lead, tail)).unsqueeze(1)
        w = F.relu(self.encoder(x))  # [batch, F, M]
        m = w.shape[-1]
        norm, bottleneck = self.bottleneck
        z = pointwise_conv1d(pointwise_conv1d(norm(w), bottleneck), self.split)  # [batch, S*H, M]
        b = num_blocks(n, T)
        return PressPass(
            z=z.reshape(batch * S, -1, m), w_s=w.repeat_interleave(S, dim=0),
            index=frame_block_index(m, s, T, n, device=mixture.device), num_blocks=b, lead=lead, n=n,
            ref=block_power(mixture, T)[:, None, :].expand(batch, S, b),
            rows=torch.arange(batch, device=mixture.device))

    def step(self, state: "PressPass") -> tuple[torch.Tensor, torch.Tensor]:
        """The next exit's trunk group and variance head on the running rows: ``alpha, beta [rows, S, B]``."""
        level = state.level + 1
        if level >= self.cfg["num_exits"]:
            raise ValueError(f"the pass is already at the last exit ({level - 1})")
        state.z = self.groups[level](state.z)
        rows = state.z.shape[0] // self.cfg["num_sources"]
        raw = self.var_heads[level](block_mean(state.z, state.index, state.num_blocks))
        raw = raw.reshape(rows, self.cfg["num_sources"], 2, state.num_blocks)
        alpha, log_mean, beta = inverse_gamma_step(level, raw, state.ref, self.cfg["alpha_min"], state.prev)
        state.prev, state.level = (alpha, log_mean), level
        return alpha, beta

    def decode(self, state: "PressPass", rows: torch.Tensor | None = None) -> torch.Tensor:
        """The current exit's waveforms of the running rows (or of ``rows``, positions among them): ``[r, S, N]``."""
        S, n, lead = self.cfg["num_sources"], state.n, state.lead
        z, w_s = state.z, state.w_s
        if rows is not None:
            sel = (rows[:, None] * S + torch.arange(S, device=rows.device)).reshape(-1)
            z, w_s = z.index_select(0, sel), w_s.index_select(0, sel)
        y = self.decoders[state.level](z, w_s)[:, lead:lead + n]
        return y.reshape(-1, S, n)

    def keep(self, state: "PressPass", mask: torch.Tensor) -> None:
        """Drop the running rows where ``mask [rows]`` is False: later exits compute only the others."""
        S = self.cfg["num_sources"]
        sel = torch.nonzero(mask.repeat_interleave(S)).squeeze(1)
        state.z, state.w_s = state.z.index_select(0, sel), state.w_s.index_select(0, sel)
        state.ref, state.rows = state.ref[mask], state.rows[mask]
        state.prev = (state.prev[0][mask], state.prev[1][mask]) if state.prev is not None else None


@dataclass
class PressPass:
    """A pass between exits: the running rows' stream features after exit ``level`` and their variance so far."""

    z: torch.Tensor  # [rows*S, H, M]
    w_s: torch.Tensor  # [rows*S, F, M] encoder output, one copy per source stream
    index: torch.Tensor  # [M] block of each frame
    num_blocks: int
    lead: int
    n: int
    ref: torch.Tensor  # [rows, S, B] mixture power per block
    rows: torch.Tensor  # [rows] the batch rows still running
    level: int = -1
    prev: tuple[torch.Tensor, torch.Tensor] | None = None  # (alpha, log_mean) of exit `level`


class PressModel(ExitModel):
    """ExitModel wrapper: levels ``exit1..exitL``, cumulative MACs, per-level parameter counts.

    ``chunked=True`` (a config key, or ``--model-arg chunked=true`` on a checkpoint) separates every block
    of T samples on its own (a batch of blocks, the last zero-padded to T): the model is then chunk-safe,
    so online execution stops each block's compute at its exit. Without it the receptive field spans
    blocks and an online pass runs the whole utterance while any block is still running.
    """

    execution_options = {"chunked": bool}

    def __init__(self, config: dict[str, Any] | None = None):
        self.config = resolve_config(config)
        self.module = PressNet(self.config)
        self.levels = tuple(f"exit{i + 1}" for i in range(self.config["num_exits"]))
        self.sample_rate = int(self.config["sample_rate"])
        self.num_sources = int(self.config["num_sources"])
        self.block_size = int(self.config["block_size"])
        self.chunk_safe = bool(self.config["chunked"])

    def set_execution_option(self, name: str, value: Any) -> None:
        """``chunked``: separate each block on its own (see the class docstring)."""
        if name != "chunked":
            super().set_execution_option(name, value)
        self.config["chunked"] = self.module.cfg["chunked"] = self.chunk_safe = bool(value)

    @property
    def chunked(self) -> bool:
        """Whether each block is separated on its own (what makes the model chunk-safe)."""
        return bool(self.config["chunked"])

    def set_block_size(self, block_size: int) -> None:
        """Blocks must be a whole number of the encoder stride (enc_stride)."""
        set_config_block_size(self, block_size, "enc_stride", "the encoder stride")

    def describe(self) -> dict[str, Any]:
        """The base description, plus ``chunked`` when set (it changes every output)."""
        out = super().describe()
        if self.chunked:
            out["chunked"] = True
        return out

    def _input(self, mixture: torch.Tensor) -> torch.Tensor:
        """The module's batch: the mixture ``[1, N]``, or chunked its blocks ``[B, T]`` (the last zero-padded)."""
        if mixture.dim() != 1:
            raise ValueError(f"forward_all takes a mono mixture [N], got shape {tuple(mixture.shape)}")
        x = mixture.to(self.device, torch.float32)
        if not self.chunked:
            return x[None]
        b, t = self.num_blocks(x.shape[0]), self.block_size
        return F.pad(x, (0, b * t - x.shape[0])).reshape(b, t)

    def forward_all(self, mixture: torch.Tensor) -> LevelOutputs:
        """Every exit on a mono mixture ``[N]``."""
        with torch.no_grad():
            out = self.module(self._input(mixture))
        est, alpha, beta = out["estimates"], out["alpha"], out["beta"]  # [batch, L, S, N'], [batch, L, S, B']
        if self.chunked:  # blocks back in a row: [L, S, B*T] trimmed to N; one variance per block
            n = mixture.shape[0]
            est = est.permute(1, 2, 0, 3).reshape(est.shape[1], est.shape[2], -1)[None, ..., :n]
            alpha, beta = alpha[..., 0].permute(1, 2, 0)[None], beta[..., 0].permute(1, 2, 0)[None]
        return self._outputs(est[0], alpha[0], beta[0], mixture)

    def _outputs(self, est: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                 mixture: torch.Tensor) -> LevelOutputs:
        """One mixture's outputs from the module's: the variances recalibrated (``calibration``)."""
        alpha, beta = recalibrate(alpha, beta, self.config["calibration"], monotone=True,
                                  ref_power=self._block_power(mixture, alpha))
        return LevelOutputs(estimates=est, alpha=alpha, beta=beta)

    def _block_power(self, mixture: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
        """Mixture power per block ``[B]`` on ``like``'s device, when the calibration uses it: the power the
        heads scale their variance by (chunked, each block zero-padded to T as it is separated; else the
        last block over its own length), so that a chunked batch of utterances recalibrates as each alone."""
        cal = self.config["calibration"]
        if not cal or "power" not in cal:
            return None
        x = mixture.to(like.device, torch.float32)
        if self.chunked:
            x = F.pad(x, (0, self.num_blocks(x.shape[-1]) * self.block_size - x.shape[-1]))
        return block_power(x, self.block_size)

    def forward_many(self, mixtures: Sequence[torch.Tensor]) -> list[LevelOutputs]:
        """Chunked: one row of whole blocks (``ExitModel.forward_many``); whole-utterance: the mixtures of equal
        length stacked into one batch of the module (its rows never meet: the norms are per row and time)."""
        if self.chunked or len(mixtures) < 2:
            return super().forward_many(mixtures)
        outs: list[LevelOutputs | None] = [None] * len(mixtures)
        by_length: dict[int, list[int]] = {}
        for i, m in enumerate(mixtures):
            by_length.setdefault(int(m.shape[-1]), []).append(i)
        for idx in by_length.values():
            if len(idx) == 1:
                outs[idx[0]] = self.forward_all(mixtures[idx[0]])
                continue
            x = torch.stack([self._input(mixtures[i])[0] for i in idx])
            with torch.no_grad():
                out = self.module(x)
            for row, i in enumerate(idx):
                outs[i] = self._outputs(out["estimates"][row], out["alpha"][row], out["beta"][row], mixtures[i])
        return outs  # type: ignore[return-value]

    def start(self, mixture: torch.Tensor) -> "PressState":
        """An incremental pass (online execution): exit by exit, per block when chunked."""
        return PressState(self, mixture)

    def cost_parts(self) -> dict[str, float]:
        """MACs of each part: per frame ``front`` (encoder, bottleneck, split), ``group`` (one exit's trunk,
        all sources) and ``decoder`` (one exit, all sources); per block ``head`` (one exit's variance heads)."""
        c = self.config
        fc, h, p, k, S = c["enc_channels"], c["hidden"], c["block_hidden"], c["enc_kernel"], c["num_sources"]
        # channel norms take their statistics with two GEMVs of C MACs each (layers.ChannelNorm)
        block = h * p + 2 * (2 * p) + p * c["kernel_size"] + p * h
        return {"front": fc * k + 2 * fc + fc * h + h * S * h, "group": S * c["blocks_per_exit"] * block,
                "decoder": S * (h * fc + fc * k), "head": S * self.module.var_heads[0].macs_per_block()}

    def macs_per_sample(self, level: int | str) -> float:
        """Trunk to exit l + variance heads 0..l + decoder of exit l, per input sample (long-input limit)."""
        l = self.level_index(level)
        c, s = self.cost_parts(), self.config["enc_stride"]
        per_frame = c["front"] + (l + 1) * c["group"] + c["decoder"]
        return per_frame / s + (l + 1) * c["head"] / self.block_size

    def reach_samples(self, level: int | str) -> int:
        """How far (samples, each side) an input sample can move an output sample of ``level`` (whole pass)."""
        c = self.config
        frames = (c["kernel_size"] - 1) // 2 * sum(c["dilation_base"] ** i for i in range(c["blocks_per_exit"]))
        return (self.level_index(level) + 1) * frames * c["enc_stride"] + c["enc_kernel"]

    def num_parameters(self, level: int | str | None = None) -> int:
        """Parameters on the path to ``level`` (trunk, heads 0..l, decoder l); all when None."""
        if level is None:
            return super().num_parameters()
        l = self.level_index(level)
        net = self.module
        count = lambda mod: sum(q.numel() for q in mod.parameters())  # noqa: E731
        total = count(net.encoder) + count(net.bottleneck) + count(net.split)
        total += sum(count(net.groups[i]) + count(net.var_heads[i]) for i in range(l + 1))
        return total + count(net.decoders[l])


def build_press(config: dict[str, Any] | None = None) -> PressModel:
    """Registry factory: a freshly initialised PRESS-style model from a (partial) config."""
    return PressModel(config)


class PressState(ExitState):
    """Online execution of a PressModel: exit by exit; chunked, the exited blocks leave the batch."""

    def __init__(self, model: PressModel, mixture: torch.Tensor):
        self.model, self.net = model, model.module
        self.n = int(mixture.shape[0])
        self._blocks = model.num_blocks(self.n)
        with torch.no_grad():
            self.state = self.net.begin(model._input(mixture))
        self.running = np.ones(self._blocks, dtype=bool)
        self.parts = model.cost_parts()
        self.frames = self.state.z.shape[-1]  # per batch row
        self.macs = float(self.parts["front"] * self.frames * self.state.rows.numel())
        self.level, self._mean = -1, None  # recalibrated mean variance of the current level [S, B]
        cal = model.config["calibration"]  # on the device once, not copied there at every level
        dev = self.state.z.device
        self._cal = {k: torch.as_tensor(cal[k], dtype=torch.float32, device=dev) for k in cal} if cal else None
        self._power = model._block_power(mixture, self.state.z)  # [B], for a calibration with ``power``

    @property
    def num_blocks(self) -> int:
        return self._blocks

    def _rows_of(self, blocks: np.ndarray) -> torch.Tensor | None:
        """Chunked: positions among the running rows (one per block) of ``blocks``; None when that is every row."""
        if np.array_equal(blocks, self.running):
            return None  # decode them all as they are, without a gathered copy
        pos = np.cumsum(self.running) - 1
        return torch.as_tensor(pos[blocks & self.running], device=self.state.z.device)

    def forward_until(self, level: int) -> LevelStep:
        if level < self.level or level >= self.model.num_levels:
            raise ValueError(f"forward_until({level}) from level {self.level}")
        alpha = beta = None
        with torch.no_grad():
            while self.level < level:
                alpha, beta = self.net.step(self.state)
                rows = self.state.rows.numel()
                self.macs += self.parts["group"] * self.frames * rows + self.parts["head"] * self.state.num_blocks * rows
                self.level += 1
                # into [S, B] over every block (stopped blocks: NaN), then recalibrated like forward_all
                if self.model.chunked:
                    full = torch.full((2, self.model.num_sources, self._blocks), float("nan"), device=alpha.device)
                    idx = self.state.rows  # the running blocks (one batch row each)
                    full[0][:, idx] = alpha[..., 0].T
                    full[1][:, idx] = beta[..., 0].T
                    a, b = full[0], full[1]
                else:
                    a, b = alpha[0], beta[0]
                self._a, self._b, self._mean = recalibrate_step(self.level, a, b, self._cal, True, self._mean,
                                                                self._power)
        return LevelStep(alpha=self._a, beta=self._b)

    def estimate(self, blocks: np.ndarray | None = None) -> torch.Tensor:
        blocks = self.running if blocks is None else np.asarray(blocks, dtype=bool) & self.running
        S, t = self.model.num_sources, self.model.block_size
        with torch.no_grad():
            if self.model.chunked:
                y = self.net.decode(self.state, self._rows_of(blocks))  # [r, S, T]
                self.macs += self.parts["decoder"] * self.frames * y.shape[0]
                out = torch.zeros(self._blocks, S, t, device=y.device)
                out[torch.as_tensor(np.flatnonzero(blocks), device=y.device)] = y
                return out.permute(1, 0, 2).reshape(S, -1)[:, :self.n]
            y = self.net.decode(self.state)[0]  # the whole utterance
            self.macs += self.parts["decoder"] * self.frames
            mask = torch.as_tensor(np.repeat(blocks, t)[:self.n], device=y.device)
            return y * mask

    def stop(self, blocks: np.ndarray) -> None:
        blocks = np.asarray(blocks, dtype=bool) & self.running
        if self.model.chunked and blocks.any():
            keep = ~blocks[self.running]
            self.net.keep(self.state, torch.as_tensor(keep, device=self.state.z.device))
        self.running = self.running & ~blocks
