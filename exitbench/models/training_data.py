"""Dynamic mixing for training: speech (and noise) held in RAM, random pairs, gains, offsets, crops.

Corpus layout (built by the corpus helper): ``<root>/<rate>/speech/{train,valid}/<speaker>/*.{flac,opus,wav}``
and ``<root>/<rate>/noise/{train,valid}/*.{flac,opus,wav}`` with rate ``8k`` or ``16k``; ``<root>/corpus.json``
describes it when present. Without a corpus (``synthetic_fallback``) sources come from
:func:`exitbench.datasets.synthetic.speech_like` and noise is coloured Gaussian noise, so CPU tests run.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

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


def load_pool(corpus: str | Path, sample_rate: int, split: str, need_noise: bool,
              synthetic_fallback: bool = True, min_seconds: float = 0.5) -> Pool:
    """Load one split of the corpus into RAM; fall back to synthetic sources if it is missing."""
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
    return Pool(speech, noise, desc)


def _crop(rng: np.random.Generator, clip: np.ndarray, length: int) -> np.ndarray:
    """A random window of ``length``; a shorter clip is placed at a random offset in zeros."""
    if len(clip) >= length:
        start = rng.integers(0, len(clip) - length + 1)
        return clip[start:start + length]
    out = np.zeros(length, dtype=np.float32)
    start = rng.integers(0, length - len(clip) + 1)
    out[start:start + len(clip)] = clip
    return out


def _coloured_noise(rng: np.random.Generator, length: int) -> np.ndarray:
    """Gaussian noise with a 1/f^g spectrum, g in [0, 2): white to brown."""
    spec = np.fft.rfft(rng.standard_normal(length))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    return np.fft.irfft(spec * f ** (-rng.uniform(0.0, 2.0) / 2), n=length).astype(np.float32)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2) + 1e-12))


def make_example(rng: np.random.Generator, pool: Pool, task: str, length: int | None, sample_rate: int,
                 gain_db: float, snr_db: tuple[float, float], level_db: tuple[float, float]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One (mixture [N], sources [S, N]) example; ``length=None`` keeps a whole utterance."""
    num = 2 if task == "separation" else 1
    if pool.synthetic:
        n = length or int(rng.uniform(3, 6) * sample_rate)
        srcs = [speech_like(rng, n, sample_rate) for _ in range(num)]
    else:
        speakers = rng.choice(len(pool.speech), size=num, replace=False)
        names = list(pool.speech)
        clips = [pool.speech[names[i]][rng.integers(len(pool.speech[names[i]]))] for i in speakers]
        n = length or len(clips[0])
        srcs = [_crop(rng, c, n) for c in clips]
    srcs = [s / _rms(s) if _rms(s) > 1e-5 else s for s in srcs]
    if task == "separation":
        g = rng.uniform(-gain_db, gain_db)
        srcs[1] = srcs[1] * 10 ** (g / 20)
        sources = np.stack(srcs)
        mixture = sources.sum(0)
    elif task == "enhancement":
        noise = _coloured_noise(rng, n) if pool.synthetic else _crop(rng, pool.noise[rng.integers(len(pool.noise))], n)
        snr = rng.uniform(*snr_db)
        noise = noise / _rms(noise) * 10 ** (-snr / 20)
        sources = np.stack(srcs)
        mixture = sources[0] + noise
    else:
        raise UsageError(f"unknown task {task!r}; use 'separation' or 'enhancement'")
    # random overall level, then keep clear of clipping
    scale = 10 ** (rng.uniform(*level_db) / 20) / _rms(mixture)
    peak = np.abs(mixture).max() * scale
    if peak > 0.99:
        scale *= 0.99 / peak
    return (mixture * scale).astype(np.float32), (sources * scale).astype(np.float32)


class MixingStream(torch.utils.data.IterableDataset):
    """Endless dynamically mixed examples; each DataLoader worker draws from its own seed."""

    def __init__(self, pool: Pool, task: str, seconds: float | None, sample_rate: int, seed: int,
                 gain_db: float = 5.0, snr_db: tuple[float, float] = (-5.0, 15.0),
                 level_db: tuple[float, float] = (-30.0, -15.0)):
        super().__init__()
        self.pool, self.task, self.sample_rate, self.seed = pool, task, sample_rate, seed
        self.length = None if seconds is None else int(seconds * sample_rate)
        self.gain_db, self.snr_db, self.level_db = gain_db, tuple(snr_db), tuple(level_db)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        while True:
            mix, src = make_example(rng, self.pool, self.task, self.length, self.sample_rate,
                                    self.gain_db, self.snr_db, self.level_db)
            yield torch.from_numpy(mix), torch.from_numpy(src)


def fixed_set(pool: Pool, task: str, count: int, seconds: float, sample_rate: int, seed: int,
              **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A reproducible validation batch: mixtures ``[V, N]`` and sources ``[V, S, N]``."""
    rng = np.random.default_rng([seed, 12345])
    items = [make_example(rng, pool, task, int(seconds * sample_rate), sample_rate,
                          kwargs.get("gain_db", 5.0), tuple(kwargs.get("snr_db", (-5.0, 15.0))),
                          tuple(kwargs.get("level_db", (-30.0, -15.0)))) for _ in range(count)]
    return torch.from_numpy(np.stack([m for m, _ in items])), torch.from_numpy(np.stack([s for _, s in items]))
