"""Dynamic mixing for training: the corpus resident on the device, batched pairs, gains, offsets, crops.

Corpus layout (built by the corpus helper): ``<root>/<rate>/speech/{train,valid}/<speaker>/*.{flac,opus,wav}``
and ``<root>/<rate>/noise/{train,valid}/*.{flac,opus,wav}`` with rate ``8k`` or ``16k``; ``<root>/corpus.json``
describes it when present. Without a corpus (``synthetic_fallback``) sources come from
:func:`exitbench.datasets.synthetic.speech_like` and noise is coloured Gaussian noise, so CPU tests run.
"""

from __future__ import annotations

import functools
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exitbench.errors import UsageError
from exitbench.datasets.synthetic import speech_like


@dataclass
class Pool:
    """Audio held in RAM: speech by speaker, and noise clips."""

    speech: dict[str, list[np.ndarray]]
    noise: list[np.ndarray]
    description: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)  # speaker group -> relative draw weight (1 if absent)

    @property
    def synthetic(self) -> bool:
        return not self.speech


def rate_dir(sample_rate: int) -> str:
    """Corpus folder name of a rate: 8000 -> '8k'."""
    if sample_rate % 1000:
        raise UsageError(f"no corpus folder for rate {sample_rate}")
    return f"{sample_rate // 1000}k"


AUDIO_SUFFIXES = (".flac", ".opus", ".ogg", ".wav")


def _audio_files(folder: Path) -> list[Path]:
    """Audio files of a folder (not temporary files of a corpus still being written), sorted."""
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)


def _read(path: Path, sample_rate: int) -> np.ndarray:
    """Mono float32 audio; soundfile if installed, else torchaudio (GPU images often ship only torch*)."""
    try:
        import soundfile as sf
    except ImportError:
        try:
            import torchaudio
        except ImportError:
            raise ImportError("reading the corpus needs soundfile or torchaudio") from None
        wav, rate = torchaudio.load(str(path))
        audio = wav.numpy().T
    else:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    if rate != sample_rate:
        raise UsageError(f"{path} has rate {rate}, expected {sample_rate}")
    return np.ascontiguousarray(audio.mean(1))


#: what a ``data.group_weights`` key may select on: ``FIELD:VALUE`` with FIELD one of these
GROUP_FIELDS = ("lang", "kind", "family", "engine", "gender")


def group_weights(groups: dict[str, Any], rules: dict[str, float]) -> dict[str, float]:
    """Draw weight of each speaker group from ``rules`` (``{"lang:en": 4, "kind:real": 4}``) and the groups'
    entries in corpus.json (``speaker_groups``): the product of the weights of the rules a group matches (a
    rule matches when any of its voices does; ``lang`` matches a language prefix, ``en`` for ``en-GB``)."""
    parsed = []
    for key, weight in rules.items():
        name, sep, value = str(key).partition(":")
        if not sep or name not in GROUP_FIELDS or not value:
            raise UsageError(f"data.group_weights key {key!r} is not FIELD:VALUE with FIELD one of {GROUP_FIELDS}")
        if not isinstance(weight, (int, float)) or not weight > 0:
            raise UsageError(f"data.group_weights[{key!r}] must be a positive number, got {weight!r}")
        parsed.append((name, value.lower(), float(weight)))

    def matches(info: dict[str, Any], name: str, value: str) -> bool:
        if name in ("family", "gender"):
            return str(info.get(name, "")).lower() == value
        field_ = "language" if name == "lang" else name
        got = [str(v.get(field_, "")).lower() for v in info.get("voices", [])]
        if name == "lang":
            return any(g == value or g.startswith(value + "-") for g in got)
        return value in got

    out = {}
    for group, info in groups.items():
        w = 1.0
        for name, value, weight in parsed:
            if matches(info, name, value):
                w *= weight
        out[group] = w
    return out


def load_pool(corpus: str | Path, sample_rate: int, split: str, need_noise: bool,
              synthetic_fallback: bool = True, min_seconds: float = 0.5,
              weights: dict[str, float] | None = None) -> Pool:
    """Load one split of the corpus into RAM; fall back to synthetic sources if it is missing.

    ``weights`` (``data.group_weights`` rules, :func:`group_weights`) sets how often each speaker group is
    drawn; they need the corpus's corpus.json."""
    root = Path(corpus) / rate_dir(sample_rate)
    speech_root = root / "speech" / split
    if not speech_root.is_dir():
        if synthetic_fallback:
            return Pool({}, [], {"source": "synthetic speech_like (corpus not found)", "corpus": str(root)})
        raise UsageError(f"no speech corpus at {speech_root}")
    speakers = sorted(p for p in speech_root.iterdir() if p.is_dir())
    files = {spk.name: _audio_files(spk) for spk in speakers}
    flat = [f for fs in files.values() for f in fs]
    # decoding (Opus especially) dominates start-up; libsndfile releases the GIL, so threads help
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        audio = dict(zip(flat, pool.map(lambda f: _read(f, sample_rate), flat)))
    speech: dict[str, list[np.ndarray]] = {}
    for name, fs in files.items():
        clips = [audio[f] for f in fs if len(audio[f]) >= min_seconds * sample_rate]
        if clips:
            speech[name] = clips
    if len(speech) < 2:
        raise UsageError(f"{speech_root} holds {len(speech)} speakers with usable audio; need at least 2")
    noise: list[np.ndarray] = []
    if need_noise:
        noise_root = root / "noise" / split
        noise = [_read(f, sample_rate) for f in _audio_files(noise_root)] if noise_root.is_dir() else []
        if not noise:
            raise UsageError(f"enhancement needs noise clips under {noise_root}")
    desc: dict[str, Any] = {"source": "corpus", "root": str(root), "split": split,
                            "speakers": len(speech), "speech_clips": sum(map(len, speech.values())),
                            "speech_hours": round(sum(len(c) for v in speech.values() for c in v)
                                                  / sample_rate / 3600, 3),
                            "noise_clips": len(noise)}
    meta = Path(corpus) / "corpus.json"
    if meta.is_file():
        try:
            desc["corpus_json"] = json.loads(meta.read_text())
        except json.JSONDecodeError as exc:
            raise UsageError(f"{meta} is not valid JSON: {exc}") from exc
    draw: dict[str, float] = {}
    if weights:
        groups = desc.get("corpus_json", {}).get("speaker_groups")
        if not groups:
            raise UsageError(f"data.group_weights needs the speaker groups of {meta}")
        draw = {name: w for name, w in group_weights(groups, weights).items() if name in speech}
        total = sum(draw.get(name, 1.0) for name in speech)
        desc["group_weights"] = dict(weights)
        desc["draw_share"] = {"matched_by_a_rule": round(sum(w for w in draw.values() if w != 1.0) / total, 4)}
    return Pool(speech, noise, desc, draw)


class DeviceCorpus:
    """One split's clips as one tensor on the training device, and dynamic mixing as batched tensor ops.

    Speech clips are concatenated into ``audio`` with per-clip start/length and per-speaker clip
    ranges; noise clips likewise. :meth:`draw` makes a whole batch at once with a ``torch.Generator``
    on the device: distinct speakers, a random clip of each, a random window (a shorter clip placed at
    a random offset in zeros), unit-RMS sources, the second source at a random gain (separation) or
    noise at a drawn SNR (enhancement), a random overall level, and a peak kept below 0.99. Nothing
    leaves the device and nothing synchronises with the host.
    """

    def __init__(self, pool: Pool, task: str, sample_rate: int, device: torch.device | str = "cpu",
                 seed: int = 0):
        if task not in ("separation", "enhancement"):
            raise UsageError(f"unknown task {task!r}; use 'separation' or 'enhancement'")
        self.task, self.sample_rate, self.device = task, sample_rate, torch.device(device)
        self.num_sources = 2 if task == "separation" else 1
        speech = pool.speech or _synthetic_speakers(sample_rate, seed)
        clips = [c for name in speech for c in speech[name]]
        counts = [len(speech[name]) for name in speech]
        self.audio, self.starts, self.lengths = _pack(clips, self.device)
        self.spk_first = torch.tensor(np.cumsum([0] + counts[:-1]), device=self.device)
        self.spk_count = torch.tensor(counts, device=self.device)
        self.num_speakers = len(counts)
        weights = [float(pool.weights.get(name, 1.0)) for name in speech] if pool.speech else []
        # uniform draws keep the plain index arithmetic (and the streams of earlier runs); weighted ones
        # sample each speaker from its share, the second without the first
        self.spk_weight = (torch.tensor(weights, device=self.device, dtype=torch.float64)
                           if weights and len(set(weights)) > 1 else None)
        self.synthetic_noise = not pool.noise
        if task == "enhancement" and pool.noise:
            self.noise, self.noise_starts, self.noise_lengths = _pack(pool.noise, self.device)
        if self.num_speakers < self.num_sources:
            raise UsageError(f"{self.num_speakers} speaker(s) cannot make {self.num_sources}-speaker mixtures")

    def _uniform(self, gen: torch.Generator, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, device=self.device)

    def _windows(self, gen: torch.Generator, audio: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor,
                 length: int) -> torch.Tensor:
        """A random ``length``-sample window of each clip ``[...]`` (zeros around a shorter clip)."""
        slack = lengths - length  # >= 0: window start inside the clip; < 0: clip offset inside the window
        shift = torch.floor(self._uniform(gen, *lengths.shape) * (slack.abs() + 1)).long() * slack.sign()
        pos = shift[..., None] + torch.arange(length, device=self.device)
        inside = (pos >= 0) & (pos < lengths[..., None])
        idx = starts[..., None] + torch.minimum(pos.clamp(min=0), lengths[..., None] - 1)
        return audio[idx] * inside

    def draw(self, gen: torch.Generator, batch: int, length: int, gain_db: float = 5.0,
             snr_db: tuple[float, float] = (-5.0, 15.0), level_db: tuple[float, float] = (-30.0, -15.0)
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``batch`` examples of ``length`` samples: mixture ``[b, N]``, sources ``[b, S, N]`` and each
        example's input SNR in dB ``[b]`` (source power over the rest of the mixture, i.e. the other
        speaker or the noise)."""
        u = lambda *shape: self._uniform(gen, *shape)  # noqa: E731
        if self.spk_weight is None:
            first = torch.floor(u(batch) * self.num_speakers).long()
            speakers = [first]
            if self.num_sources == 2:  # a second, different speaker
                speakers.append((first + 1 + torch.floor(u(batch) * (self.num_speakers - 1)).long()) % self.num_speakers)
        else:
            w = self.spk_weight.expand(batch, -1)
            first = _sample(w, u(batch))
            speakers = [first]
            if self.num_sources == 2:
                speakers.append(_sample(w.scatter(1, first[:, None], 0.0), u(batch)))
        spk = torch.stack(speakers, 1)  # [b, S]
        clip = self.spk_first[spk] + torch.floor(u(batch, self.num_sources) * self.spk_count[spk]).long()
        src = self._windows(gen, self.audio, self.starts[clip], self.lengths[clip], length)  # [b, S, N]
        rms = _rms(src)
        src = torch.where(rms > 1e-5, src / rms, src)
        if self.task == "separation":
            gain = 10 ** ((u(batch) * 2 - 1) * gain_db / 20)
            src = torch.cat([src[:, :1], src[:, 1:] * gain[:, None, None]], 1)
            mixture = src.sum(1)
            interference = src[:, 1]  # the other speaker
        else:
            if self.synthetic_noise:
                noise = coloured_noise(gen, batch, length, self.device)
            else:
                pick = torch.floor(u(batch) * len(self.noise_starts)).long()
                noise = self._windows(gen, self.noise, self.noise_starts[pick], self.noise_lengths[pick], length)
            snr = snr_db[0] + u(batch) * (snr_db[1] - snr_db[0])
            noise = noise / _rms(noise) * 10 ** (-snr[:, None] / 20)
            mixture = src[:, 0] + noise
            interference = noise
        input_snr = 10 * torch.log10((src[:, 0].pow(2).sum(-1) + 1e-12) / (interference.pow(2).sum(-1) + 1e-12))
        level = level_db[0] + u(batch) * (level_db[1] - level_db[0])
        scale = 10 ** (level / 20) / _rms(mixture)[:, 0]
        peak = mixture.abs().amax(-1) * scale
        scale = scale * torch.clamp(0.99 / peak.clamp_min(1e-12), max=1.0)
        return mixture * scale[:, None], src * scale[:, None, None], input_snr


def _pack(clips: list[np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate clips into one float32 tensor on ``device`` with their starts and lengths."""
    lengths = np.array([len(c) for c in clips], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    audio = torch.from_numpy(np.concatenate(clips).astype(np.float32, copy=False)).to(device)
    return audio, torch.from_numpy(starts).to(device), torch.from_numpy(lengths).to(device)


def _sample(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One index per row of ``weights [b, n]`` with probability proportional to it, from uniforms ``u [b]``."""
    cdf = weights.cumsum(1)
    pick = torch.searchsorted(cdf, (u.double() * cdf[:, -1])[:, None], right=True)[:, 0]
    return pick.clamp(max=weights.shape[1] - 1)


def _rms(x: torch.Tensor) -> torch.Tensor:
    """Root mean square over the last axis, kept as a trailing axis of size 1."""
    return torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-12)


def coloured_noise(gen: torch.Generator, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """Gaussian noise ``[batch, length]`` with a 1/f^g spectrum, g drawn in [0, 2) per item: white to brown."""
    white = torch.randn(batch, length, generator=gen, device=device)
    spec = torch.fft.rfft(white)
    f = torch.arange(spec.shape[-1], device=device, dtype=torch.float32).clamp_(min=1.0)
    g = torch.rand(batch, 1, generator=gen, device=device) * 2.0
    return torch.fft.irfft(spec * f ** (-g / 2), n=length)


@functools.lru_cache(maxsize=4)
def _synthetic_speakers(sample_rate: int, seed: int, speakers: int = 6, clips: int = 4
                        ) -> dict[str, list[np.ndarray]]:
    """Stand-in speakers of :func:`speech_like` clips (2-4 s) for runs without a corpus (CPU tests)."""
    rng = np.random.default_rng([seed, 777])
    return {f"synthetic_{k}": [speech_like(rng, int(rng.uniform(2, 4) * sample_rate), sample_rate)
                               for _ in range(clips)] for k in range(speakers)}


def generator(device: torch.device | str, seed: int) -> torch.Generator:
    """A seeded ``torch.Generator`` on ``device``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def fixed_set(pool: Pool, task: str, count: int, seconds: float, sample_rate: int, seed: int,
              **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A reproducible validation batch on the CPU: mixtures ``[V, N]`` and sources ``[V, S, N]``."""
    corpus = DeviceCorpus(pool, task, sample_rate, "cpu", seed)
    mix, src, _ = corpus.draw(generator("cpu", seed * 1000 + 12345), count, int(seconds * sample_rate),
                              float(kwargs.get("gain_db", 5.0)), tuple(kwargs.get("snr_db", (-5.0, 15.0))),
                              tuple(kwargs.get("level_db", (-30.0, -15.0))))
    return mix, src
