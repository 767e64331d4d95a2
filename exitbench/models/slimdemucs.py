"""A slimmable DEMUCS speech enhancer (16 kHz) with a per-frame router choosing the utilization factor.

In the style of facebookresearch/denoiser ``demucs.py`` (no resampling, causal LSTM by default):

  encoder i   Conv1d(chin, v*h_i, K, S) + ReLU, Conv1d(v*h_i, 2*h_i, 1) + GLU          -> h_i channels
  bottleneck  LSTM(h_last, h_last, lstm_layers) (+ Linear when bidirectional), full width
  decoder i   (input + skip_i) Conv1d(h_i, 2*v*h_i, 1) + GLU, ConvTranspose1d(v*h_i, chout, K, S) (+ ReLU)

One weight set serves every utilization factor v in ``widths``: only the INNER width of each
conv block (v*h_i) is sliced, so block inputs/outputs, skips and the LSTM stay full width.
Levels are ``uf<v>`` cheapest first; each is a static pass at one width (``forward_level``).

Router: Conv1d(1, C, R, stride R) + ReLU, GRU(C, C), Conv1d(C, L, 1): logits per router frame
of R samples (F = ceil(N/R) frames, the last zero-padded).

Dynamic pass (``SlimDemucsNet.forward_dynamic``): ONE pass through the network in which each frame
of each conv block runs at the width of the level chosen for the router frame it belongs to.
Frames are mapped to router frames by the first input sample they start at: frame m at depth i
(the output of encoder i, which is also the input, GLU output h and transposed-conv input frame
of the decoder at depth i; i = 0 is the shallowest) starts at input sample s = m * S^(i+1), and
belongs to router frame f(m) = min(floor(s / R), F - 1) (frames in the padding past N join the
last router frame). Given per-router-frame level weights w[b, f, l] (one-hot at evaluation,
straight-through Gumbel one-hot in training) the inner activations of that block are multiplied by

  mask[b, c, m] = sum_l w[b, f(m), l] * [c < round(v_l * h_i)]

(encoder: after conv + bias + ReLU, before the 1x1 + GLU; decoder: the GLU output h, before the
transposed conv). A zeroed inner channel contributes nothing downstream, exactly as a sliced one,
so a constant choice of level l reproduces ``forward_level`` at v_l; a varying choice gives a
genuinely mixed pass: receptive fields straddle router frames and the LSTM state carries the
mixed history (it is not a stitching of the static outputs, which ``frame_select`` would be).

Realised MACs of the dynamic pass, per block of T samples: each frame m at depth i with inner
width c_m = sum_l w[f(m), l] * round(v_l * h_i) costs, for this N's actual frame counts (the
input is padded to ``valid_length``),

  encoder  c_m * chin_i * K + c_m * 2 * h_i        decoder  h_i * 2 * c_m + c_m * chout_i * K

plus the LSTM's MACs per step for each of its frames (depth D - 1) and the router's MACs per
router frame; each frame's MACs go to the block holding its first input sample (clamped to the
last block), so the blocks sum to the utterance's total. A constant choice costs exactly what
FlopCounterMode counts for ``forward_level`` (plus the analytic LSTM), plus the router.
``macs_per_sample`` stays the long-input limit per level.

Each level has an inverse-gamma head on its last decoder block's inner features pooled per block
of T samples: alpha = alpha_min + softplus(a), E[sigma^2] = P_mix(block) * exp(c), beta = E[sigma^2](alpha-1)
(levels are independent here, not accumulated). The dynamic pass has no head of its own.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from exitbench.errors import UsageError
from exitbench.models.base import DynamicOutput, ExitModel, LevelOutputs
from exitbench.models.layers import (set_config_block_size, merge_config, InvGammaHead, accumulate_inverse_gamma, block_mean, block_power, recalibrate,
                                     frame_block_index, num_blocks)

PRESETS: dict[str, dict[str, Any]] = {
    "S": {"hidden": 24, "depth": 4, "lstm_layers": 2, "router_channels": 32},
    "M": {"hidden": 48, "depth": 5, "lstm_layers": 2, "router_channels": 48},
    "tiny": {"hidden": 8, "depth": 3, "lstm_layers": 1, "router_channels": 8},  # CPU tests
}

DEFAULTS: dict[str, Any] = {
    "size": "S",
    "sample_rate": 16000,
    "block_size": 4000,
    "kernel_size": 8,
    "stride": 4,
    "growth": 2,
    "bidirectional": False,
    "widths": [0.125, 0.25, 0.5, 1.0],
    "router_hop": 400,
    "var_hidden": 32,
    "alpha_min": 2.0,
    "calibration": None,  # {"shape": [...], "scale": [...]} per level, fitted post hoc
    "normalize": True,
    "floor": 1e-3,
}


def resolve_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults, then the size preset, then the given keys; raises on unknown keys."""
    out = merge_config("slimdemucs", config, DEFAULTS, PRESETS)
    out["widths"] = [float(v) for v in out["widths"]]
    if out["widths"] != sorted(out["widths"]) or not all(0 < v <= 1 for v in out["widths"]):
        raise UsageError(f"widths must be increasing in (0, 1], got {out['widths']}")
    if out["block_size"] % out["router_hop"]:
        raise UsageError("block_size must be a multiple of router_hop (router frames never straddle blocks)")
    return out


def inner(channels: int, v: float) -> int:
    """Sliced inner width of a block of ``channels`` at utilization ``v``."""
    return max(1, int(round(v * channels)))


class SlimEncoderBlock(nn.Module):
    """Conv(K, S) to a sliceable inner width, ReLU, 1x1 to 2*out (full), GLU."""

    def __init__(self, chin: int, chout: int, k: int, s: int):
        super().__init__()
        self.conv = nn.Conv1d(chin, chout, k, s)
        self.point = nn.Conv1d(chout, 2 * chout, 1)
        self.chin, self.chout, self.k = chin, chout, k

    def forward(self, x: torch.Tensor, v: float) -> torch.Tensor:
        c = inner(self.chout, v)
        x = F.relu(F.conv1d(x, self.conv.weight[:c], self.conv.bias[:c], stride=self.conv.stride))
        return F.glu(F.conv1d(x, self.point.weight[:, :c], self.point.bias), dim=1)

    def forward_masked(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Full-width pass with the inner features ``[batch, chout, M]`` multiplied by ``mask`` (same shape)."""
        # masked after bias + ReLU: a zeroed channel feeds the 1x1 exactly what a sliced-off one does
        x = F.relu(self.conv(x)) * mask.to(x.dtype)
        return F.glu(self.point(x), dim=1)

    def macs_per_channel(self) -> int:
        """MACs of one frame per inner channel used (the conv's output and the 1x1's input)."""
        return self.chin * self.k + 2 * self.chout

    def macs_per_frame(self, v: float) -> int:
        return inner(self.chout, v) * self.macs_per_channel()

    def params(self, v: float) -> int:
        c = inner(self.chout, v)
        return c * self.chin * self.k + c + 2 * self.chout * c + 2 * self.chout


class SlimDecoderBlock(nn.Module):
    """1x1 to 2*inner (sliced, GLU), transposed conv(K, S) from the inner width to full ``chout``."""

    def __init__(self, chin: int, chout: int, k: int, s: int, last: bool):
        super().__init__()
        self.point = nn.Conv1d(chin, 2 * chin, 1)
        self.deconv = nn.ConvTranspose1d(chin, chout, k, s)
        self.chin, self.chout, self.k, self.last = chin, chout, k, last

    def forward(self, x: torch.Tensor, v: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the block output and its inner (post-GLU) features."""
        c = inner(self.chin, v)
        rows = torch.cat([torch.arange(c), torch.arange(self.chin, self.chin + c)]).to(x.device)
        h = F.glu(F.conv1d(x, self.point.weight[rows], self.point.bias[rows]), dim=1)
        y = F.conv_transpose1d(h, self.deconv.weight[:c], self.deconv.bias, stride=self.deconv.stride)
        return (y if self.last else F.relu(y)), h

    def forward_masked(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-width pass with the GLU output ``h [batch, chin, M]`` multiplied by ``mask``; returns output, h."""
        h = F.glu(self.point(x), dim=1) * mask.to(x.dtype)  # GLU of sliced rows == slice of the full GLU
        y = self.deconv(h)
        return (y if self.last else F.relu(y)), h

    def macs_per_channel(self) -> int:
        """MACs of one input frame per inner channel used (the 1x1's two GLU rows, the transposed conv's input)."""
        return 2 * self.chin + self.chout * self.k

    def macs_per_frame(self, v: float) -> int:
        return inner(self.chin, v) * self.macs_per_channel()

    def params(self, v: float) -> int:
        c = inner(self.chin, v)
        return 2 * c * self.chin + 2 * c + c * self.chout * self.k + self.chout


class Router(nn.Module):
    """Per-frame level logits: frame filterbank, GRU, pointwise classifier."""

    def __init__(self, hop: int, channels: int, num_levels: int):
        super().__init__()
        self.hop = hop
        self.frontend = nn.Conv1d(1, channels, hop, stride=hop)
        self.gru = nn.GRU(channels, channels, batch_first=True)
        self.out = nn.Conv1d(channels, num_levels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [batch, N]`` -> logits ``[batch, ceil(N/hop), L]``."""
        x = F.pad(x, (0, (-x.shape[-1]) % self.hop)).unsqueeze(1)
        f = F.relu(self.frontend(x)).transpose(1, 2)
        g, _ = self.gru(f)
        return self.out(g.transpose(1, 2)).transpose(1, 2)

    def macs_per_frame(self) -> int:
        """MACs of one router frame: filterbank, GRU step (3 gates, input and hidden), classifier."""
        c = self.frontend.out_channels
        return c * self.hop + 3 * (c * c + c * c) + c * self.out.out_channels

    def macs_per_sample(self) -> float:
        return self.macs_per_frame() / self.hop


class SlimDemucsNet(nn.Module):
    """The torch module: every utilization factor's enhancement plus router logits."""

    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        self.cfg = cfg
        k, s, h = cfg["kernel_size"], cfg["stride"], cfg["hidden"]
        chans = [int(h * cfg["growth"] ** i) for i in range(cfg["depth"])]
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        chin = 1
        for i, c in enumerate(chans):
            self.encoder.append(SlimEncoderBlock(chin, c, k, s))
            # decoder[0] is the deepest; built in reverse so decoder[-1] outputs the waveform
            self.decoder.insert(0, SlimDecoderBlock(c, chin, k, s, last=(i == 0)))
            chin = c
        self.lstm = nn.LSTM(chin, chin, cfg["lstm_layers"], batch_first=True,
                            bidirectional=cfg["bidirectional"])
        self.lstm_proj = nn.Linear(2 * chin, chin) if cfg["bidirectional"] else None
        self.var_heads = nn.ModuleList(InvGammaHead(inner(chans[0], v), cfg["var_hidden"])
                                       for v in cfg["widths"])
        self.router = Router(cfg["router_hop"], cfg["router_channels"], len(cfg["widths"]))

    def valid_length(self, n: int) -> int:
        """Smallest length >= n that the strided encoder/decoder maps back exactly (as in denoiser)."""
        k, s = self.cfg["kernel_size"], self.cfg["stride"]
        length = n
        for _ in range(self.cfg["depth"]):
            length = max(math.ceil((length - k) / s) + 1, 1)
        for _ in range(self.cfg["depth"]):
            length = (length - 1) * s + k
        return int(length)

    def frame_counts(self, n: int) -> list[int]:
        """Frames at each depth (encoder i's output, shallowest first) for an input of ``n`` samples."""
        k, s = self.cfg["kernel_size"], self.cfg["stride"]
        length, counts = self.valid_length(n), []
        for _ in range(self.cfg["depth"]):
            length = (length - k) // s + 1  # exact: the padded length maps back without remainder
            counts.append(length)
        return counts

    def input_scale(self, mixture: torch.Tensor) -> torch.Tensor:
        """Per-utterance std (population, so one sample works) the net normalises by, as denoiser does."""
        if not self.cfg["normalize"]:
            return torch.ones_like(mixture[:, :1])
        return mixture.std(-1, correction=0, keepdim=True)

    def _network_input(self, mixture: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised, padded ``[batch, 1, valid_length]`` input and the scale to undo."""
        n = mixture.shape[-1]
        std = self.input_scale(mixture)
        x = F.pad(mixture / (self.cfg["floor"] + std), (0, self.valid_length(n) - n)).unsqueeze(1)
        return x, std

    def _bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """The full-width LSTM (and projection when bidirectional) on ``[batch, C, M]``."""
        y, _ = self.lstm(x.transpose(1, 2))
        if self.lstm_proj is not None:
            y = self.lstm_proj(y)
        return y.transpose(1, 2)

    def forward_level(self, mixture: torch.Tensor, v: float, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One utilization factor: ``mixture [batch, N]`` -> estimate ``[batch, N]``, raw head ``[batch, 2, B]``."""
        cfg = self.cfg
        n = mixture.shape[-1]
        x, std = self._network_input(mixture)
        skips = []
        for enc in self.encoder:
            x = enc(x, v)
            skips.append(x)
        x = self._bottleneck(x)
        feats = None
        for dec in self.decoder:
            skip = skips.pop()
            x = x + skip[..., : x.shape[-1]]
            x, feats = dec(x, v)
        est = x[:, 0, :n] * std
        hop = cfg["stride"]  # the last decoder's input frames advance by one stride
        b = num_blocks(n, cfg["block_size"])
        index = frame_block_index(feats.shape[-1], hop, cfg["block_size"], n, device=mixture.device)
        raw = self.var_heads[level](block_mean(feats, index, b))
        return est, raw

    def level_widths(self, depth: int) -> list[int]:
        """Inner width of the blocks at ``depth`` (encoder ``depth`` and its decoder) at each level."""
        return [inner(self.encoder[depth].chout, v) for v in self.cfg["widths"]]

    def frame_weights(self, depth: int, num_frames: int, weights: torch.Tensor, n: int) -> torch.Tensor:
        """Level weights ``[batch, M, L]`` of the frames at ``depth`` from router-frame ``weights [batch, F, L]``."""
        # frame m starts at input sample m * S^(depth+1); router frame floor(start / R), the last one
        # for frames in the padding (frame_block_index with R-sample "blocks" is exactly that map)
        hop = self.cfg["stride"] ** (depth + 1)
        index = frame_block_index(num_frames, hop, self.cfg["router_hop"], n, device=weights.device)
        if not torch.compiler.is_compiling():
            return weights.index_select(1, index)
        # compiled (training crops): a product with the one-hot assignment [M, F], whose backward is a
        # matmul too, where the gather's scatter-add backward trips torch.compile's CPU code generation;
        # never in eager mode, where [M, F] grows with the square of the length (2.3 GB for 60 s)
        assign = (index[:, None] == torch.arange(weights.shape[1], device=weights.device)).to(weights.dtype)
        return torch.matmul(assign, weights)

    def forward_dynamic(self, mixture: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor | list]:
        """One pass at per-frame widths: ``mixture [batch, N]``, per-router-frame level ``weights [batch, F, L]``
        -> ``estimate [batch, N]``, ``widths`` (per depth, inner width per frame ``[batch, M_i]``), ``macs [batch, B]``."""
        cfg = self.cfg
        n = mixture.shape[-1]
        expect = (mixture.shape[0], math.ceil(n / cfg["router_hop"]), len(cfg["widths"]))
        if tuple(weights.shape) != expect:
            raise ValueError(f"weights have shape {tuple(weights.shape)}, expected {expect} (batch, router frames, levels)")
        x, std = self._network_input(mixture)
        masks, widths = [], []
        for depth, m in enumerate(self.frame_counts(n)):
            w = self.frame_weights(depth, m, weights, n)  # [batch, M, L]
            level_w = torch.tensor(self.level_widths(depth), device=w.device, dtype=w.dtype)
            # channel c is on at level l iff c < inner width_l: mask = table @ weights, linear in the weights
            # so a straight-through one-hot passes gradients to the router
            table = (torch.arange(self.encoder[depth].chout, device=w.device)[:, None] < level_w[None, :]).to(w.dtype)
            masks.append(torch.matmul(table, w.transpose(1, 2)))  # [batch, C, M]
            widths.append((w * level_w).sum(-1))
        skips = []
        for enc, mask in zip(self.encoder, masks):
            x = enc.forward_masked(x, mask)
            skips.append(x)
        x = self._bottleneck(x)
        for dec, mask in zip(self.decoder, reversed(masks)):
            skip = skips.pop()
            x = x + skip[..., : x.shape[-1]]
            x, _ = dec.forward_masked(x, mask)
        return {"estimate": x[:, 0, :n] * std, "widths": widths, "macs": self.dynamic_macs(n, weights)}

    def lstm_macs_per_step(self) -> int:
        """MACs of one LSTM frame (all layers and directions, and the projection when bidirectional)."""
        h, dirs = self.lstm.hidden_size, 2 if self.cfg["bidirectional"] else 1
        per_step = 0
        for layer in range(self.cfg["lstm_layers"]):
            din = h if layer == 0 else h * dirs
            per_step += dirs * 4 * (din * h + h * h)
        if self.cfg["bidirectional"]:
            per_step += 2 * h * h
        return per_step

    def dynamic_macs(self, n: int, weights: torch.Tensor) -> torch.Tensor:
        """Realised MACs per block ``[batch, B]`` (float64, differentiable in ``weights [batch, F, L]``)
        of the dynamic pass on ``n`` samples: convs at each frame's width, the LSTM and the router."""
        cfg = self.cfg
        t, depth, dev = cfg["block_size"], cfg["depth"], weights.device
        w = weights.double()
        out = w.new_zeros(w.shape[0], num_blocks(n, t))
        counts = self.frame_counts(n)
        for i, m in enumerate(counts):
            # elementwise, not a matmul: exact in float64 even under autocast
            level_w = torch.tensor(self.level_widths(i), dtype=w.dtype, device=dev)
            width = (self.frame_weights(i, m, w, n) * level_w).sum(-1)  # [batch, M]
            per_channel = self.encoder[i].macs_per_channel() + self.decoder[depth - 1 - i].macs_per_channel()
            block = frame_block_index(m, cfg["stride"] ** (i + 1), t, n, device=dev)
            out = out.index_add(1, block, width * per_channel)
        # fixed-cost frames: the LSTM's (one per deepest frame) and the router's (one per R samples)
        fixed = [(counts[-1], cfg["stride"] ** depth, self.lstm_macs_per_step()),
                 (math.ceil(n / cfg["router_hop"]), cfg["router_hop"], self.router.macs_per_frame())]
        for frames, hop, macs in fixed:
            block = frame_block_index(frames, hop, t, n, device=dev)
            out = out.index_add(1, block, w.new_full((w.shape[0], frames), float(macs)))
        return out

    def forward(self, mixture: torch.Tensor, levels: list[int] | None = None,
                router: bool = True) -> dict[str, torch.Tensor]:
        """``mixture [batch, N]`` -> ``estimates [batch, L', 1, N]``, ``alpha, beta [batch, L', 1, B]``
        and, with ``router``, ``router_logits [batch, ceil(N/R), L]``."""
        cfg = self.cfg
        levels = list(range(len(cfg["widths"]))) if levels is None else list(levels)
        ref = block_power(mixture, cfg["block_size"])
        ests, alphas, betas = [], [], []
        for level in levels:
            est, raw = self.forward_level(mixture, cfg["widths"][level], level)
            a, b = accumulate_inverse_gamma([raw], ref, cfg["alpha_min"])  # independent per level
            ests.append(est)
            alphas.append(a[:, 0])
            betas.append(b[:, 0])
        out = {
            "estimates": torch.stack(ests, 1).unsqueeze(2),
            "alpha": torch.stack(alphas, 1).unsqueeze(2),
            "beta": torch.stack(betas, 1).unsqueeze(2),
        }
        if router:
            out["router_logits"] = self.router(mixture / (cfg["floor"] + self.input_scale(mixture)))
        return out


def frame_select(estimates: torch.Tensor, weights: torch.Tensor, hop: int) -> torch.Tensor:
    """Mix level outputs frame-wise: ``estimates [..., L, N]``, ``weights [..., F, L]`` -> ``[..., N]``.

    A stitching of static outputs, not the dynamic pass (``SlimDemucsNet.forward_dynamic`` is that).
    """
    n = estimates.shape[-1]
    w = weights.transpose(-1, -2).repeat_interleave(hop, dim=-1)[..., :n]  # [..., L, N]
    return (w * estimates).sum(-2)


class SlimDemucsModel(ExitModel):
    """ExitModel wrapper: levels ``uf<v>``, a router-driven ``dynamic`` output with realised MACs."""

    def __init__(self, config: dict[str, Any] | None = None):
        self.config = resolve_config(config)
        self.module = SlimDemucsNet(self.config)
        self.levels = tuple(f"uf{v}" for v in self.config["widths"])
        self.sample_rate = int(self.config["sample_rate"])
        self.num_sources = 1
        self.block_size = int(self.config["block_size"])

    def set_block_size(self, block_size: int) -> None:
        """Blocks must be a whole number of the router hop (router_hop)."""
        set_config_block_size(self, block_size, "router_hop", "the router hop")

    def forward_all(self, mixture: torch.Tensor) -> LevelOutputs:
        """Every utilization factor, the router's per-block logits and its own dynamic pass (argmax per frame)."""
        if mixture.dim() != 1:
            raise ValueError(f"forward_all takes a mono mixture [N], got shape {tuple(mixture.shape)}")
        n = mixture.shape[0]
        hop, T = self.config["router_hop"], self.block_size
        x = mixture.to(self.device, torch.float32)[None]
        with torch.no_grad():
            out = self.module(x)
            logits = out["router_logits"][0]  # [F, L]
            choice = logits.argmax(-1)
            onehot = F.one_hot(choice, self.num_levels).to(logits.dtype)
            dyn = self.module.forward_dynamic(x, onehot[None])
        cal = self.config["calibration"]
        ref = block_power(x[0], self.block_size) if cal and "power" in cal else None
        alpha, beta = recalibrate(out["alpha"][0], out["beta"][0], cal, monotone=False, ref_power=ref)
        est = out["estimates"][0]  # [L, 1, N]
        # share of each block's samples per level, by router frame (frames never straddle blocks)
        b = self.num_blocks(n)
        frame_len = torch.clamp(n - torch.arange(len(choice), device=logits.device) * hop, max=hop).to(torch.float64)
        block_of_frame = torch.arange(len(choice), device=logits.device) * hop // T
        share = torch.zeros(b, self.num_levels, dtype=torch.float64, device=logits.device)
        share.index_add_(0, block_of_frame, onehot.to(torch.float64) * frame_len[:, None])
        block_len = share.sum(-1, keepdim=True)
        block_logits = block_mean(logits.transpose(0, 1), block_of_frame, b).transpose(0, 1)
        return LevelOutputs(
            estimates=est, alpha=alpha, beta=beta, router_logits=block_logits,
            dynamic=DynamicOutput(estimates=dyn["estimate"], macs=dyn["macs"][0], level_share=share / block_len),
        )

    def dynamic_macs(self, n: int, choice: torch.Tensor) -> torch.Tensor:
        """Realised MACs per block ``[B]`` (float64) of the dynamic pass on ``n`` samples with the level
        ``choice [F]`` (an index per router frame), router included."""
        onehot = F.one_hot(choice.long(), self.num_levels).to(torch.float64)
        return self.module.dynamic_macs(n, onehot[None])[0]

    def macs_per_sample(self, level: int | str) -> float:
        """Convs at the level's inner width plus the full-width LSTM, per input sample (long-input limit)."""
        v = self.config["widths"][self.level_index(level)]
        net, c = self.module, self.config
        total = 0.0
        for i, (enc, dec) in enumerate(zip(net.encoder, reversed(net.decoder))):
            rate = c["stride"] ** (i + 1)  # samples per frame at this depth
            total += (enc.macs_per_frame(v) + dec.macs_per_frame(v)) / rate
        return total + self.lstm_macs_per_sample()

    def lstm_macs_per_sample(self) -> float:
        """LSTM bottleneck MACs per sample, declared analytically (FlopCounterMode misses LSTM kernels)."""
        c = self.config
        return self.module.lstm_macs_per_step() / c["stride"] ** c["depth"]

    def router_macs_per_sample(self) -> float:
        """Router MACs per sample (paid only by the dynamic execution)."""
        return self.module.router.macs_per_sample()

    def num_parameters(self, level: int | str | None = None) -> int:
        """Parameters touched at ``level`` (sliced convs, LSTM, that level's head); all when None."""
        if level is None:
            return super().num_parameters()
        l = self.level_index(level)
        v = self.config["widths"][l]
        net = self.module
        total = sum(e.params(v) for e in net.encoder) + sum(d.params(v) for d in net.decoder)
        total += sum(p.numel() for p in net.lstm.parameters())
        if net.lstm_proj is not None:
            total += sum(p.numel() for p in net.lstm_proj.parameters())
        return total + sum(p.numel() for p in net.var_heads[l].parameters())


def build_slimdemucs(config: dict[str, Any] | None = None) -> SlimDemucsModel:
    """Registry factory: a freshly initialised slimmable DEMUCS from a (partial) config."""
    return SlimDemucsModel(config)
