"""Pieces shared by the reference architectures: block pooling, channel norm, inverse-gamma heads."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from exitbench.errors import UsageError


def num_blocks(num_samples: int, block_size: int) -> int:
    """Blocks of ``block_size`` samples covering ``num_samples`` (the last may be shorter)."""
    return max(1, math.ceil(num_samples / block_size))


def frame_block_index(num_frames: int, hop: int, block_size: int, num_samples: int,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """Block index of each frame whose first new sample is ``m * hop``; frames past the end join the last block."""
    b = num_blocks(num_samples, block_size)
    idx = torch.arange(num_frames, device=device) * hop // block_size
    return idx.clamp(max=b - 1)


def block_mean(x: torch.Tensor, index: torch.Tensor, num_blocks_: int) -> torch.Tensor:
    """Mean of ``x [..., M]`` over the frames of each block given by ``index [M]`` -> ``[..., B]``.

    Uses index_add (not a matmul) so that pooling adds no MACs to FlopCounterMode's count.
    """
    if gpu_form(x):
        # on the GPU a product with the one-hot frame-to-block matrix [M, B]: one small GEMM, where
        # index_add on bf16 activations runs a slow atomic kernel (forward and backward)
        assign = (index[:, None] == torch.arange(num_blocks_, device=index.device)).to(x.dtype)
        counts = assign.sum(0, dtype=torch.float32).clamp_(min=1).to(x.dtype)
        return torch.matmul(x, assign) / counts
    out = x.new_zeros(*x.shape[:-1], num_blocks_)
    out.index_add_(x.dim() - 1, index, x)
    # counts by comparison, not bincount: bincount's output size depends on the data (a host sync
    # on CUDA), and a scatter of constants trips torch.compile's CPU code generation
    blocks = torch.arange(num_blocks_, device=index.device)
    counts = (index[None, :] == blocks[:, None]).sum(1).clamp_(min=1).to(x.dtype)
    return out / counts


def block_power(signal: torch.Tensor, block_size: int) -> torch.Tensor:
    """Mean power of ``signal [..., N]`` in each block -> ``[..., B]`` (the last block by its own length)."""
    n = signal.shape[-1]
    b = num_blocks(n, block_size)
    padded = F.pad(signal, (0, b * block_size - n))
    energy = padded.pow(2).reshape(*signal.shape[:-1], b, block_size).sum(-1)
    lengths = torch.full((b,), float(block_size), device=signal.device, dtype=signal.dtype)
    lengths[-1] = n - (b - 1) * block_size
    return energy / lengths


class ChannelNorm(nn.Module):
    """Layer norm over channels of each frame (cLN): frame-local, so a block's output does not
    depend on the rest of the utterance beyond the receptive field."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if gpu_form(x):
            # on the GPU plain reductions: torch.compile fuses them with the centring and the affine
            # map into one kernel (the GEMV form below costs a batched GEMV and four passes)
            mean = x.mean(1, keepdim=True)
            centred = x - mean
            var = centred.square().mean(1, keepdim=True)
        else:
            # on the CPU channel statistics as a matrix product: LayerNorm on a transposed view copies
            # the activations twice and strided reductions over dim 1 are slow on CPU; GEMM is not
            avg = x.new_full((1, x.shape[1]), 1.0 / x.shape[1])
            mean = torch.matmul(avg, x)
            centred = x - mean
            squares = centred * centred
            var = torch.matmul(avg, squares)
            if not torch.is_grad_enabled():
                # the same kernels writing into the squares' buffer: a fresh activation-sized buffer per
                # op costs page faults on the CPU (15 % of an inference pass); bit-identical (tested)
                y = torch.mul(centred, torch.rsqrt(var + self.norm.eps), out=squares)
                return torch.addcmul(self.norm.bias[:, None], y, self.norm.weight[:, None], out=y)
        y = centred * torch.rsqrt(var + self.norm.eps)
        if gpu_form(x):
            return channel_affine(y, self.norm.weight, self.norm.bias)
        return torch.addcmul(self.norm.bias[:, None], y, self.norm.weight[:, None])


def pointwise_conv1d(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """``conv`` (a 1x1 Conv1d) applied to ``x [batch, C, M]``; on the GPU as a batched GEMM.

    Same arithmetic as the convolution; cuBLAS takes the channels-first layout as it is, where
    cuDNN's 1x1 kernels transpose every activation to channels-last and back (forward and backward).
    """
    if not gpu_form(x):
        return conv(x)
    w = conv.weight[:, :, 0]
    if not torch.is_autocast_enabled(x.device.type):  # under autocast matmul casts both itself
        w = w.to(x.dtype)
    y = torch.matmul(w, x)
    return y if conv.bias is None else channel_affine(y, None, conv.bias.to(y.dtype))


def depthwise_conv1d(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """``conv`` (a depthwise Conv1d, odd kernel, "same" padding) applied to ``x [batch, C, M]``.

    On the GPU as a sum of K shifted, per-channel scaled copies: the same arithmetic as the
    convolution, but elementwise, so torch.compile fuses it (forward and backward) with its
    neighbours, where cuDNN's depthwise kernels for 1-D bf16 input are slow, above all backward.
    """
    if not gpu_form(x):
        return conv(x)
    bias = None if conv.bias is None else conv.bias.to(x.dtype)
    return _Depthwise.apply(x, conv.weight[:, 0].to(x.dtype), bias, conv.dilation[0], conv.padding[0])


def _channel_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t [R, C, M]`` per channel in two stages: over time per row (R*C reductions run in parallel),
    then over rows; accumulated in float32 at least. torch.compile, left to reduce a broadcast parameter's
    gradient over (R, M) at once, fuses it into one reduction of C programs, which leaves most of the GPU idle."""
    acc = torch.promote_types(t.dtype, torch.float32)
    return t.sum(-1, dtype=acc).sum(0)


class _ChannelAffine(torch.autograd.Function):
    """``x * weight[c] + bias[c]`` on ``x [R, C, M]`` (either may be None), dtypes promoted as torch does;
    the parameter gradients summed by :func:`_channel_sum`."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
        y = x if weight is None else x * weight[:, None]
        y = y if bias is None else y + bias[:, None]
        ctx.save_for_backward(x if weight is not None else None, weight)
        ctx.dtypes = (x.dtype, None if bias is None else bias.dtype)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        x_dtype, bias_dtype = ctx.dtypes
        grad_x = grad if weight is None else grad * weight[:, None]
        grad_w = None if weight is None else _channel_sum(grad * x).to(weight.dtype)
        grad_b = None if bias_dtype is None else _channel_sum(grad).to(bias_dtype)
        return grad_x.to(x_dtype), grad_w, grad_b


def channel_affine(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """``x [R, C, M] * weight[c] + bias[c]`` with GPU-friendly parameter gradients (see _channel_sum)."""
    return _ChannelAffine.apply(x, weight, bias)


class _Depthwise(torch.autograd.Function):
    """Depthwise convolution (odd kernel, "same" padding) of ``x [R, C, M]`` as K shifted, per-channel scaled
    copies; its backward is the same shifts in the other direction, the weight gradients by _channel_sum."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int,
                pad: int) -> torch.Tensor:
        m = x.shape[-1]
        xp = F.pad(x, (pad, pad))
        y = xp[..., :m] * weight[:, 0:1]
        for j in range(1, weight.shape[1]):
            y = y + xp[..., j * dilation:j * dilation + m] * weight[:, j:j + 1]
        if bias is not None:
            y = y + bias[:, None]
        ctx.save_for_backward(x, weight)
        ctx.conf = (dilation, pad, bias is not None)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        d, pad, has_bias = ctx.conf
        m = x.shape[-1]
        xp = F.pad(x, (pad, pad))
        grad_x = None
        taps = []
        for j in range(weight.shape[1]):
            # tap j read xp[m + j*d] = x[m + j*d - pad]: its gradient lands there
            shifted = F.pad(grad * weight[:, j:j + 1], (j * d, 2 * pad - j * d))[..., pad:pad + m]
            grad_x = shifted if grad_x is None else grad_x + shifted
            taps.append(_channel_sum(grad * xp[..., j * d:j * d + m]))
        grad_w = torch.stack(taps, 1).to(weight.dtype)
        grad_b = _channel_sum(grad).to(weight.dtype) if has_bias else None
        return grad_x, grad_w, grad_b, None, None


class _PReLUPartials(torch.autograd.Function):
    """Single-parameter PReLU whose weight gradient is summed in two stages: one partial sum per
    channel row, then their total. Left to torch.compile, the scalar gradient is one full reduction
    fused into the backward kernel of the activation, which then runs with little parallelism."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return torch.where(x > 0, x, weight.to(x.dtype) * x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, weight = ctx.saved_tensors
        grad_x = torch.where(x > 0, grad, weight.to(grad.dtype) * grad)
        rows = x.shape[0] * x.shape[1] if x.dim() > 2 else x.shape[0]
        acc = torch.promote_types(x.dtype, torch.float32)  # bf16 activations summed in float32
        partial = (torch.clamp(x, max=0) * grad).reshape(rows, -1).sum(1, dtype=acc)
        return grad_x, partial.sum().reshape(weight.shape).to(weight.dtype)


#: how the GPU forms take a single-parameter PReLU: "partials" (_PReLUPartials) or "native" (torch.prelu,
#: its weight gradient left to torch.compile)
PRELU_FORM = "partials"


def prelu(act: nn.PReLU, x: torch.Tensor) -> torch.Tensor:
    """``act(x)``; in the GPU forms with a single weight, :class:`_PReLUPartials` (same values and gradients)."""
    if gpu_form(x) and PRELU_FORM == "partials" and act.weight.numel() == 1:
        return _PReLUPartials.apply(x, act.weight)
    return act(x)


#: the GPU forms of channel norm, 1x1 and depthwise convolution and block pooling (same maths):
#: "auto" uses them on CUDA tensors inside torch.compile, where they fuse; in eager mode cuDNN's
#: single kernels are faster than the unfused chains (measured on an H200: forward_all of 10 s,
#: 25 ms eager with cuDNN, 39 ms eager with these forms, 5.6 ms compiled with them). True forces
#: them (the tests check them on the CPU), False switches them off.
GPU_REWRITES: bool | str = "auto"


def gpu_form(x: torch.Tensor) -> bool:
    """Whether the GPU forms apply to ``x`` (see GPU_REWRITES)."""
    if GPU_REWRITES == "auto":
        return x.is_cuda and torch.compiler.is_compiling()
    return bool(GPU_REWRITES)


class InvGammaHead(nn.Module):
    """Per-block raw inverse-gamma increments from pooled features: ``[batch, C, B] -> [batch, 2, B]``."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(channels, hidden, 1), nn.PReLU(), nn.Conv1d(hidden, 2, 1))
        # start from a moderately confident, mixture-sized variance
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net(pooled)

    def macs_per_block(self) -> int:
        """MACs of one block's head (two pointwise convs)."""
        return self.net[0].in_channels * self.net[0].out_channels + self.net[2].in_channels * 2


def accumulate_inverse_gamma(raw: list[torch.Tensor], ref_power: torch.Tensor, alpha_min: float,
                             eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn per-exit raw head outputs into accumulated (alpha, beta), as PRESS does.

    ``raw[l]`` is ``[..., 2, B]`` (channels a_l, c_l); ``ref_power [..., B]`` the block's mixture power.
    The rule (every exit l >= 1 refines exit l-1):

      alpha_0 = alpha_min + softplus(a_0),          alpha_l = alpha_{l-1} + softplus(a_l)
      m_0     = (ref_power + eps) * exp(c_0),       m_l     = m_{l-1} * exp(-softplus(c_l))
      beta_l  = m_l * (alpha_l - 1)

    so alpha is non-decreasing (confidence grows with depth), alpha > alpha_min > 1 keeps the mean
    finite, and the predicted mean error variance E[sigma^2] = beta/(alpha-1) = m is non-increasing
    across exits. Scaling m_0 by the mixture power makes the prediction scale-equivariant.
    Returns ``alpha, beta`` of shape ``[..., L, B]``.
    """
    alphas, betas = [], []
    prev = None
    for level, r in enumerate(raw):
        alpha, log_mean, beta = inverse_gamma_step(level, r, ref_power, alpha_min, prev, eps)
        prev = (alpha, log_mean)
        alphas.append(alpha)
        betas.append(beta)
    return torch.stack(alphas, -2), torch.stack(betas, -2)


def inverse_gamma_step(level: int, raw: torch.Tensor, ref_power: torch.Tensor, alpha_min: float,
                       prev: tuple[torch.Tensor, torch.Tensor] | None, eps: float = 1e-8
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One exit of ``accumulate_inverse_gamma``: ``(alpha, log_mean, beta)`` of exit ``level`` from its raw
    head output ``[..., 2, B]`` and the previous exit's ``(alpha, log_mean)`` (None at exit 0).

    The same arithmetic in the same order as the whole-pass form, so an incremental (online) pass
    gives bit-identical variances.
    """
    a, c = raw.float().unbind(-2)
    if level == 0:
        alpha = alpha_min + F.softplus(a)
        log_mean = torch.log(ref_power.float() + eps) + c.clamp(-30.0, 30.0)
    else:
        alpha = prev[0] + F.softplus(a)
        log_mean = prev[1] - F.softplus(c)
    # floor keeps beta a normal float32 in silent blocks; the sequence stays non-increasing
    mean = torch.exp(log_mean.clamp(min=-80.0))
    return alpha, log_mean, mean * (alpha - 1.0)


def power_recalibrated_mean(mean: torch.Tensor, scale: Any, power: Any, ref_power: torch.Tensor) -> torch.Tensor:
    """``scale·P·(E[σ²]/P)^power``, P = ``ref_power`` the block's mixture power: the variance relative to the
    mixture, shrunk towards a constant share of it when power < 1 (scripts/recalibrate.py fits it with this)."""
    ref = ref_power.to(mean.dtype) + 1e-12
    return scale * ref * (mean / ref) ** power


def _recalibrated_mean(mean: torch.Tensor, calibration: dict[str, Any], level: int | slice,
                       ref_power: torch.Tensor | None) -> torch.Tensor:
    """``scale·E[σ²]``, or with ``power`` :func:`power_recalibrated_mean`, of one level or all (``slice``)."""
    def param(key: str) -> torch.Tensor:
        values = torch.as_tensor(calibration[key], dtype=mean.dtype, device=mean.device)[level]
        return values if isinstance(level, int) else values[:, None, None]

    if "power" not in calibration:
        return mean * param("scale")  # the arithmetic of checkpoints recalibrated before ``power`` existed
    if ref_power is None:
        raise ValueError("a calibration with 'power' needs the blocks' mixture power")
    return power_recalibrated_mean(mean, param("scale"), param("power"), ref_power)


def recalibrate_step(level: int, alpha: torch.Tensor, beta: torch.Tensor, calibration: dict[str, Any] | None,
                     monotone: bool, prev_mean: torch.Tensor | None, ref_power: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``recalibrate`` for one level ``[S, B]`` given the previous level's recalibrated mean variance
    (None at level 0): ``(alpha', beta', mean')``, bit-identical to the whole-pass form."""
    if not calibration:
        return alpha, beta, beta / (alpha - 1.0)
    shape = torch.as_tensor(calibration["shape"], dtype=alpha.dtype, device=alpha.device)[level]
    mean = _recalibrated_mean(beta / (alpha - 1.0), calibration, level, ref_power)
    if monotone and prev_mean is not None:
        mean = torch.minimum(prev_mean, mean)
    alpha = 1.0 + shape * (alpha - 1.0)
    return alpha, mean * (alpha - 1.0), mean


def recalibrate(alpha: torch.Tensor, beta: torch.Tensor, calibration: dict[str, Any] | None,
                monotone: bool, ref_power: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Post-hoc per-level recalibration of inverse-gamma predictions ``[L, S, B]``.

    With ``shape[l]``, ``scale[l]`` and optionally ``power[l]`` fitted on held-out data (scripts/recalibrate.py):
    alpha' = 1 + shape[l]·(alpha − 1) (confidence) and E'[σ²] = scale[l]·E[σ²] (level), or with ``power``
    E'[σ²] = scale[l]·P·(E[σ²]/P)^power[l] with P = ``ref_power [B]``, each block's mixture power: a
    power below 1 keeps the head's ranking but shrinks how far it may stray from the mixture's level.
    ``monotone`` keeps the predicted mean variance non-increasing across levels (PRESS's property).
    """
    if not calibration:
        return alpha, beta
    shape = torch.as_tensor(calibration["shape"], dtype=alpha.dtype, device=alpha.device)[:, None, None]
    mean = _recalibrated_mean(beta / (alpha - 1.0), calibration, slice(None), ref_power)
    if monotone:
        mean = torch.cummin(mean, dim=0).values
    alpha = 1.0 + shape * (alpha - 1.0)
    return alpha, mean * (alpha - 1.0)


def merge_config(kind: str, config: dict[str, Any] | None, defaults: dict[str, Any],
                 presets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Defaults, then the size preset, then the given keys; raises on an unknown size or key."""
    config = dict(config or {})
    size = config.get("size", defaults["size"])
    if size not in presets:
        raise UsageError(f"unknown {kind} size {size!r}; known: {', '.join(presets)}")
    out = {**defaults, **presets[size], **config}
    known = set(defaults) | set(presets[size])
    unknown = set(out) - known
    if unknown:
        raise UsageError(f"unknown {kind} config keys {sorted(unknown)}; known: {sorted(known)}")
    return out


def set_config_block_size(model: Any, block_size: int, step_key: str, what: str) -> None:
    """Set a config-driven model's block size; it must be a whole number of ``config[step_key]`` samples
    (frames of that hop never straddle blocks, so per-block heads stay exact)."""
    from exitbench.errors import UsageError

    step = int(model.config[step_key])
    if int(block_size) < 1 or int(block_size) % step:
        raise UsageError(f"block size {block_size} is not a positive multiple of {what} ({step} samples)")
    model.block_size = int(block_size)
    model.config["block_size"] = model.module.cfg["block_size"] = int(block_size)
