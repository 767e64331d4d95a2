"""A small PRESS-style probabilistic early-exit separator (8 kHz, Conv-TasNet-like trunk).

Layout, for a mixture of N samples and hop s (``enc_stride``):

  encoder   Conv1d(1, F, K, stride s, no bias) + ReLU               -> w  [F, M] (M = ceil(N/s) + 1 frames)
  bottleneck cLN + Conv1d(F, H, 1)
  split     Conv1d(H, S*H, 1) -> S source streams [S, H, M] (later layers share weights across streams)
  trunk     num_exits groups of blocks_per_exit TCN blocks (1x1 -> PReLU/cLN -> dilated depthwise ->
            PReLU/cLN -> 1x1, residual; dilations 1, 2, 4, ... restart in each group)
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

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from exitbench.errors import UsageError
from exitbench.models.base import ExitModel, LevelOutputs
from exitbench.models.layers import (set_config_block_size, merge_config, ChannelNorm, depthwise_conv1d, pointwise_conv1d, recalibrate, InvGammaHead, accumulate_inverse_gamma, block_mean,
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
}


def resolve_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults, then the size preset, then the given keys; raises on unknown keys."""
    out = merge_config("press", config, DEFAULTS, PRESETS)
    if out["enc_kernel"] % out["enc_stride"] or out["block_size"] % out["enc_stride"]:
        raise UsageError("enc_kernel and block_size must be multiples of enc_stride")
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
        h = norm1(act1(pointwise_conv1d(x, up)))
        h = norm2(act2(depthwise_conv1d(h, depthwise)))
        return x + pointwise_conv1d(h, down)


class ExitDecoder(nn.Module):
    """Mask from the stream features, applied to the encoder output, back to a waveform."""

    def __init__(self, hidden: int, enc_channels: int, kernel: int, stride: int):
        super().__init__()
        self.act = nn.PReLU()
        self.mask = nn.Conv1d(hidden, enc_channels, 1)
        self.decoder = nn.ConvTranspose1d(enc_channels, 1, kernel, stride=stride, bias=False)

    def forward(self, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``h [batch*S, H, M]``, ``w [batch*S, F, M]`` -> padded waveform ``[batch*S, (M-1)s+K]``."""
        return self.decoder(F.relu(pointwise_conv1d(self.act(h), self.mask)) * w).squeeze(1)


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
            nn.Sequential(*[TCNBlock(h, p, cfg["kernel_size"], 2**i) for i in range(cfg["blocks_per_exit"])])
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
        z = z.reshape(batch * S, -1, m)
        w_s = w.repeat_interleave(S, dim=0)

        b = num_blocks(n, T)
        index = frame_block_index(m, s, T, n, device=mixture.device)
        last = cfg["num_exits"] - 1 if upto is None else int(upto)
        if not 0 <= last < cfg["num_exits"]:
            raise ValueError(f"upto={upto} out of range 0..{cfg['num_exits'] - 1}")
        raw, estimates = [], []
        for level in range(last + 1):
            z = self.groups[level](z)
            raw.append(self.var_heads[level](block_mean(z, index, b)).reshape(batch, S, 2, b))
            if upto is None or level == last:
                y = self.decoders[level](z, w_s)[:, lead:lead + n]
                estimates.append(y.reshape(batch, S, n))
        ref = block_power(mixture, T)[:, None, :].expand(batch, S, b)
        alpha, beta = accumulate_inverse_gamma(raw, ref, cfg["alpha_min"])  # [batch, S, L', B]
        return {
            "estimates": torch.stack(estimates, 1),
            "alpha": alpha.transpose(1, 2),
            "beta": beta.transpose(1, 2),
        }


class PressModel(ExitModel):
    """ExitModel wrapper: levels ``exit1..exitL``, cumulative MACs, per-level parameter counts."""

    def __init__(self, config: dict[str, Any] | None = None):
        self.config = resolve_config(config)
        self.module = PressNet(self.config)
        self.levels = tuple(f"exit{i + 1}" for i in range(self.config["num_exits"]))
        self.sample_rate = int(self.config["sample_rate"])
        self.num_sources = int(self.config["num_sources"])
        self.block_size = int(self.config["block_size"])

    def set_block_size(self, block_size: int) -> None:
        """Blocks must be a whole number of the encoder stride (enc_stride)."""
        set_config_block_size(self, block_size, "enc_stride", "the encoder stride")

    def forward_all(self, mixture: torch.Tensor) -> LevelOutputs:
        """Every exit on a mono mixture ``[N]``."""
        if mixture.dim() != 1:
            raise ValueError(f"forward_all takes a mono mixture [N], got shape {tuple(mixture.shape)}")
        with torch.no_grad():
            out = self.module(mixture.to(self.device, torch.float32)[None])
        alpha, beta = recalibrate(out["alpha"][0], out["beta"][0], self.config["calibration"], monotone=True)
        return LevelOutputs(estimates=out["estimates"][0], alpha=alpha, beta=beta)

    def macs_per_sample(self, level: int | str) -> float:
        """Trunk to exit l + variance heads 0..l + decoder of exit l, per input sample (long-input limit)."""
        l = self.level_index(level)
        c = self.config
        fc, h, p, k, s, S = (c["enc_channels"], c["hidden"], c["block_hidden"], c["enc_kernel"],
                             c["enc_stride"], c["num_sources"])
        # channel norms take their statistics with two GEMVs of C MACs each (layers.ChannelNorm)
        per_frame = fc * k + 2 * fc + fc * h + h * S * h  # encoder, bottleneck (norm + 1x1), split
        block = h * p + 2 * (2 * p) + p * c["kernel_size"] + p * h
        per_frame += S * (l + 1) * c["blocks_per_exit"] * block
        per_frame += S * (h * fc + fc * k)  # mask and transposed-conv decoder of exit l
        per_block = S * (l + 1) * self.module.var_heads[0].macs_per_block()
        return per_frame / s + per_block / self.block_size

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
