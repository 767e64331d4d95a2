"""Batched torch STOI / ESTOI that reproduces ``pystoi.stoi`` (pystoi 0.4.x) step by step.

The point is to score a whole batch of estimates on the device where a model produced them (GPU in a
model worker) instead of copying every utterance to the CPU for pystoi. The algorithm is pystoi's,
operation for operation, in float64:

1. resampling to 10 kHz with pystoi's Octave-compatible Kaiser-windowed FIR (``resample_oct``) and
   scipy's ``resample_poly`` alignment, done here as a polyphase matmul on strided windows;
2. silent-frame removal (256-sample frames, hop 128, 40 dB below the loudest reference frame) with
   overlap-add of the kept frames, per item through a stable gather, so items keep their own counts;
3. STFT (frame 256, FFT 512, hop 128), 15 one-third-octave bands from 150 Hz, 30-frame segments;
4. STOI: per-segment normalisation and clipping at BETA = -15 dB, mean correlation; ESTOI
   (``extended=True``): row then column mean/variance normalisation, mean inner product.

An item with fewer than 30 STFT frames left after silent-frame removal scores 1e-5 with a
RuntimeWarning, as in pystoi. ``tests/test_stoi_torch.py`` checks the scores against pystoi on the
bundled demo sets and on real VoiceBank+DEMAND pairs.

Known deliberate differences, all outside pystoi's normal operation:
- pystoi's ESTOI adds ``eps * randn`` (eps = 2.2e-16) before each normalisation; that changes scores
  by ~1e-16 and makes them non-deterministic, so it is left out. A band or frame that is exactly
  zero inside a segment (where pystoi would normalise pure random noise) contributes 0 here.
- a signal too short to hold one energy frame (<= 256 samples at 10 kHz) makes pystoi raise; here it
  scores 1e-5 like any other too-short item.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["stoi_torch", "StoiTooShort", "FS", "N_FRAME", "NFFT", "NUMBAND", "MINFREQ", "N", "BETA", "DYN_RANGE"]

# pystoi's constants (pystoi/stoi.py)
FS = 10000  # internal sampling rate (Hz)
N_FRAME = 256  # window support (samples)
NFFT = 512  # FFT size
NUMBAND = 15  # number of one-third-octave bands
MINFREQ = 150  # centre frequency of the first band (Hz)
N = 30  # frames per segment for the intermediate intelligibility
BETA = -15.0  # lower signal-to-distortion bound (dB)
DYN_RANGE = 40  # speech dynamic range for silent-frame removal (dB)
HOP = N_FRAME // 2  # pystoi's overlap=2
EPS = float(np.finfo("float").eps)  # pystoi.utils.EPS
TOO_SHORT_SCORE = 1e-5  # what pystoi returns when fewer than N frames are left
_RESAMPLE_CHUNK = 1 << 25  # float64 elements of resampling windows held at once (256 MB)

# the overlap-add below splits each frame into a first and a second half
assert N_FRAME == 2 * HOP


class StoiTooShort(ValueError):
    """Raised by ``stoi_torch(..., too_short="raise")`` in place of pystoi's warning and 1e-5 score: ``items``
    are the flattened batch indices with fewer than N frames after silence removal (the reference decides)."""

    def __init__(self, items: list[int]):
        self.items = items
        super().__init__(f"{len(items)} item(s) have fewer than {N} STOI frames after silence removal")


def resample_window_oct(p: int, q: int) -> np.ndarray:
    """pystoi's Octave-compatible Kaiser-windowed sinc for resampling by p/q (unnormalised), in numpy."""
    # a literal port of pystoi.utils._resample_window_oct, so that the taps agree bit for bit
    gcd = np.gcd(p, q)
    if gcd > 1:
        p /= gcd
        q /= gcd
    log10_rejection = -3.0
    stopband_cutoff_f = 1.0 / (2 * max(p, q))
    roll_off_width = stopband_cutoff_f / 10
    rejection_db = -20 * log10_rejection
    half = np.ceil((rejection_db - 8) / (28.714 * roll_off_width))
    t = np.arange(-half, half + 1)
    ideal_filter = 2 * p * stopband_cutoff_f * np.sinc(2 * stopband_cutoff_f * t)
    if 21 <= rejection_db <= 50:
        beta = 0.5842 * (rejection_db - 21) ** 0.4 + 0.07886 * (rejection_db - 21)
    elif rejection_db > 50:
        beta = 0.1102 * (rejection_db - 8.7)
    else:
        beta = 0.0
    return np.kaiser(2 * half + 1, beta) * ideal_filter


def thirdoct(fs: int, nfft: int, num_bands: int, min_freq: float) -> np.ndarray:
    """pystoi's one-third-octave band matrix [num_bands, nfft/2+1] (ones from the low to the high edge bin)."""
    # a literal port of pystoi.utils.thirdoct (centre frequencies not needed)
    f = np.linspace(0, fs, nfft + 1)[: nfft // 2 + 1]
    k = np.arange(num_bands).astype(float)
    freq_low = min_freq * np.power(2.0, (2 * k - 1) / 6)
    freq_high = min_freq * np.power(2.0, (2 * k + 1) / 6)
    obm = np.zeros((num_bands, len(f)))
    for i in range(num_bands):
        fl_ii = np.argmin(np.square(f - freq_low[i]))
        fh_ii = np.argmin(np.square(f - freq_high[i]))
        obm[i, fl_ii:fh_ii] = 1
    return obm


def polyphase_kernels(sample_rate: int) -> tuple[np.ndarray, int, int, int]:
    """(kernels [up, K], up, down, s_min) so that out[up*a + r] = sum_k kernels[r, k] x[a*down + s_min + k].

    This is exactly ``scipy.signal.resample_poly(x, FS, sample_rate, window=h / h.sum())`` with pystoi's
    h: scipy pads the filter so that its output is centred, out[m] = up * sum_i h[i] xu[m*down + L - i]
    with xu the zero-stuffed input and L the filter's half length; keeping only the taps that meet
    non-zero input samples splits that into ``up`` phases that each read x with stride ``down``.
    """
    g = math.gcd(FS, sample_rate)
    up, down = FS // g, sample_rate // g
    h = resample_window_oct(FS, sample_rate)
    h = h / np.sum(h) * up  # pystoi normalises to unit DC gain, resample_poly scales by up
    half = (len(h) - 1) // 2
    s_min = -(half // up)  # ceil(-half / up): the earliest input offset any phase reads
    s_max = ((up - 1) * down + half) // up  # the latest one
    kernels = np.zeros((up, s_max - s_min + 1))
    for r in range(up):
        for k in range(s_max - s_min + 1):
            i = r * down + half - up * (s_min + k)
            if 0 <= i < len(h):
                kernels[r, k] = h[i]
    return kernels, up, down, s_min


@dataclass(frozen=True)
class _Constants:
    kernels_t: torch.Tensor | None  # [K, up] phase kernels as matmul columns; None at 10 kHz
    up: int
    down: int
    s_min: int
    window: torch.Tensor  # [N_FRAME]
    obm_t: torch.Tensor  # [NFFT/2+1, NUMBAND], transposed for a right matmul


@functools.lru_cache(maxsize=16)
def _constants(sample_rate: int, device: torch.device, dtype: torch.dtype) -> _Constants:
    """Filter taps, window and band matrix for one (rate, device, dtype), designed once in numpy."""
    window = np.hanning(N_FRAME + 2)[1:-1]  # = matlab hanning(N_FRAME), as pystoi
    obm = thirdoct(FS, NFFT, NUMBAND, MINFREQ)
    kernels, up, down, s_min = None, 1, 1, 0
    if sample_rate != FS:
        taps, up, down, s_min = polyphase_kernels(sample_rate)
        kernels = torch.as_tensor(taps.T.copy(), dtype=dtype, device=device)
    return _Constants(
        kernels_t=kernels, up=up, down=down, s_min=s_min,
        window=torch.as_tensor(window, dtype=dtype, device=device),
        obm_t=torch.as_tensor(obm.T.copy(), dtype=dtype, device=device),
    )


def _resample(x: torch.Tensor, c: _Constants) -> torch.Tensor:
    """[B, n] at the input rate -> [B, ceil(n*up/down)] at 10 kHz, as pystoi.utils.resample_oct."""
    n_in = x.shape[-1]
    n_out = -(-n_in * c.up // c.down)
    per_phase = -(-n_out // c.up)  # outputs each phase must deliver
    klen = c.kernels_t.shape[0]
    left = -c.s_min
    right = max(0, (per_phase - 1) * c.down + klen - (n_in + left))
    xp = F.pad(x, (left, right))  # zeros outside, as resample_poly's padtype='constant'
    # strided windows times the phase kernels is one matmul; float64 conv1d on the CPU has no fast
    # kernel and is several times slower. Chunk the batch so the windows stay within ~256 MB.
    rows = max(1, _RESAMPLE_CHUNK // (per_phase * klen))
    parts = [chunk.unfold(-1, klen, c.down)[:, :per_phase] @ c.kernels_t for chunk in xp.split(rows)]
    phases = torch.cat(parts) if len(parts) > 1 else parts[0]  # [B, per_phase, up]
    # interleave the phases: output m = up*a + r comes from phase r, position a
    return phases.reshape(x.shape[0], -1)[:, :n_out]


def _remove_silent_frames(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """pystoi.utils.remove_silent_frames for a batch: zero-padded signals [B, (Kmax+1)*HOP], kept counts [B], Kmin."""
    n = x.shape[-1]
    num_frames = max(0, -(-(n - N_FRAME) // HOP))  # len(range(0, n - N_FRAME, HOP)): pystoi skips the last
    xf = x.unfold(-1, N_FRAME, HOP)[:, :num_frames] * window
    yf = y.unfold(-1, N_FRAME, HOP)[:, :num_frames] * window
    energies = 20 * torch.log10(torch.linalg.vector_norm(xf, dim=-1) + EPS)
    mask = (energies.amax(-1, keepdim=True) - DYN_RANGE - energies) < 0  # [B, F], only the reference decides
    kept = mask.sum(-1)
    # the one host sync: the padded length of the batch, and whether any item is too short
    k_min, k_max = (int(v) for v in torch.aminmax(kept))
    # stable sort puts each item's kept frames first, in their original order
    order = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True)[:, :k_max]
    valid = (torch.arange(k_max, device=x.device) < kept.unsqueeze(-1)).unsqueeze(-1)
    index = order.unsqueeze(-1).expand(-1, -1, N_FRAME)
    xk = torch.where(valid, xf.gather(1, index), 0.0)
    yk = torch.where(valid, yf.gather(1, index), 0.0)

    def overlap_add(frames: torch.Tensor) -> torch.Tensor:
        # hop = half a frame: hop-block j is the first half of frame j plus the second half of frame j-1
        out = F.pad(frames[..., :HOP], (0, 0, 0, 1)) + F.pad(frames[..., HOP:], (0, 0, 1, 0))
        return out.reshape(frames.shape[0], -1)  # [B, (k_max+1)*HOP]; item b is valid up to (kept_b+1)*HOP

    return overlap_add(xk), overlap_add(yk), kept, k_min


def _third_octave(sig: torch.Tensor, num_frames: int, c: _Constants) -> torch.Tensor:
    """Third-octave band magnitudes [B, NUMBAND, num_frames] of the first num_frames STFT frames."""
    frames = sig.unfold(-1, N_FRAME, HOP)[:, :num_frames] * c.window
    spec = torch.fft.rfft(frames, n=NFFT, dim=-1)
    power = spec.real.square() + spec.imag.square()
    return torch.sqrt(power @ c.obm_t).transpose(1, 2)


def _safe_unit(v: torch.Tensor, dim: int) -> torch.Tensor:
    """v divided by its 2-norm along dim, times 1/norm as pystoi's diagonal matmul does; all-zero stays zero."""
    inv = 1.0 / torch.sqrt(v.square().sum(dim, keepdim=True))
    return torch.where(torch.isfinite(inv), v * inv, 0.0)


def _segment_scores(xs: torch.Tensor, ys: torch.Tensor, extended: bool) -> torch.Tensor:
    """Per-segment sums [B, J] of pystoi's correlation terms, from segments [B, J, NUMBAND, N]."""
    if extended:
        # row (band over time) then column (frame over bands) mean and variance normalisation
        xn = _safe_unit(xs - xs.mean(-1, keepdim=True), -1)
        yn = _safe_unit(ys - ys.mean(-1, keepdim=True), -1)
        xn = _safe_unit(xn - xn.mean(-2, keepdim=True), -2)
        yn = _safe_unit(yn - yn.mean(-2, keepdim=True), -2)
        return (xn * yn / N).sum((-1, -2))
    # scale y to x's energy per band and segment, then clip at BETA below x (eq. 3 of Taal et al.)
    scale = torch.linalg.vector_norm(xs, dim=-1, keepdim=True) / (
        torch.linalg.vector_norm(ys, dim=-1, keepdim=True) + EPS)
    clip_value = 10 ** (-BETA / 20)
    yp = torch.minimum(ys * scale, xs * (1 + clip_value))
    yp = yp - yp.mean(-1, keepdim=True)
    xc = xs - xs.mean(-1, keepdim=True)
    yp = yp / (torch.linalg.vector_norm(yp, dim=-1, keepdim=True) + EPS)
    xc = xc / (torch.linalg.vector_norm(xc, dim=-1, keepdim=True) + EPS)
    return (yp * xc).sum((-1, -2))


def stoi_torch(est: torch.Tensor, ref: torch.Tensor, sample_rate: int, extended: bool = False,
               too_short: str = "warn") -> torch.Tensor:
    """STOI (ESTOI if extended) of est against ref, [..., N] -> [...] float64, equal to pystoi.stoi(ref, est, fs).

    ``too_short``: "warn" scores an item with too few frames 1e-5 with pystoi's RuntimeWarning; "raise" raises
    StoiTooShort instead, with no use of the warnings machinery (whose filters are process-wide: a caller that
    turned the warning into an error with ``catch_warnings`` raced any other thread doing the same)."""
    if too_short not in ("warn", "raise"):
        raise ValueError(f"too_short must be 'warn' or 'raise', not {too_short!r}")
    if est.shape != ref.shape:
        raise ValueError(f"est and ref should have the same shape, got {tuple(est.shape)} and {tuple(ref.shape)}")
    if est.ndim == 0:
        raise ValueError("est and ref need a time axis [..., N]")
    sample_rate = int(sample_rate)
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    lead = ref.shape[:-1]
    device = ref.device
    dtype = torch.float64  # pystoi works in float64 throughout (its window and filter are float64)
    x = ref.reshape(-1, ref.shape[-1]).to(dtype)
    y = est.reshape(-1, est.shape[-1]).to(device=device, dtype=dtype)
    batch = x.shape[0]
    if batch == 0:
        return torch.empty(lead, dtype=dtype, device=device)
    c = _constants(sample_rate, device, dtype)

    if c.kernels_t is not None:
        both = _resample(torch.cat([x, y]), c)  # one matmul for reference and estimate
        x, y = both[:batch], both[batch:]

    too_short_all = torch.full((batch,), TOO_SHORT_SCORE, dtype=dtype, device=device)
    if x.shape[-1] <= N_FRAME:  # not one energy frame: pystoi raises, we score it as too short
        if too_short == "raise":
            raise StoiTooShort(list(range(batch)))
        warnings.warn("Signal shorter than one STOI frame. Returning 1e-5.", RuntimeWarning, stacklevel=2)
        return too_short_all.reshape(lead)

    x, y, kept, k_min = _remove_silent_frames(x, y, c.window)
    # pystoi's STFT also skips the last full frame: kept_b + 1 hops of signal give kept_b - 1 frames
    num_frames = kept - 1
    t_max = x.shape[-1] // HOP - 2  # = max(kept) - 1
    short = num_frames < N
    if k_min - 1 < N:
        if too_short == "raise":
            raise StoiTooShort(torch.nonzero(short).flatten().tolist())
        warnings.warn("Not enough STFT frames to compute intermediate intelligibility measure after "
                      "removing silent frames. Returning 1e-5. Please check you wav files",
                      RuntimeWarning, stacklevel=2)
    if t_max < N:
        return too_short_all.reshape(lead)

    x_tob = _third_octave(x, t_max, c)  # [B, NUMBAND, T]
    y_tob = _third_octave(y, t_max, c)
    # all N-frame windows as a view [B, J, NUMBAND, N]; item b owns the first num_frames_b - N + 1
    xs = x_tob.unfold(-1, N, 1).transpose(1, 2)
    ys = y_tob.unfold(-1, N, 1).transpose(1, 2)
    per_segment = _segment_scores(xs, ys, extended)  # [B, J]
    num_segments = (num_frames - N + 1).clamp(min=1)
    seg_valid = torch.arange(per_segment.shape[1], device=device) < num_segments.unsqueeze(-1)
    total = torch.where(seg_valid, per_segment, 0.0).sum(-1)  # where, not *, so NaN in padding cannot leak
    # STOI averages over segments and bands; ESTOI's terms already carry 1/N and average over segments
    denom = num_segments.to(dtype) if extended else num_segments.to(dtype) * NUMBAND
    scores = torch.where(short, TOO_SHORT_SCORE, total / denom)
    return scores.reshape(lead)
