"""Shared audio reading and per-utterance checks used by every file-based loader.

Every check raises UtteranceError with a reason that names the offending file, so a run records an
errors row for that utterance and goes on with the others.
"""

from __future__ import annotations

import math
import os
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

from exitbench.datasets.base import Utterance, UtteranceError

#: file suffixes the loaders accept as audio (libsndfile reads both; FLAC keeps bundled sets small)
AUDIO_SUFFIXES = (".wav", ".flac")


def display_path(path: Path, root: Path | None) -> str:
    """``path`` relative to ``root`` when it lies under it (short, machine-independent messages)."""
    if root is not None:
        try:
            return Path(os.path.relpath(path, root)).as_posix() if path.is_relative_to(root) else str(path)
        except ValueError:  # different drives on Windows
            pass
    return str(path)


class _LazyPath:
    """A path shown relative to a root, formatted only when a message needs it (the common path never does)."""

    def __init__(self, path: Path, root: Path | None):
        self.path, self.root = path, root

    def __str__(self) -> str:
        return display_path(self.path, self.root)


def wav_truncation(path: Path) -> str | None:
    """For a RIFF/WAVE file, a reason when its data chunk declares more bytes than the file holds.

    libsndfile silently clamps such files to the bytes present, so a truncated copy would otherwise
    load as a shorter utterance (and then fail later as a puzzling length mismatch).
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None  # RF64 or not a WAV: leave it to libsndfile
        offset = 12
        while offset + 8 <= size:
            fh.seek(offset)
            chunk_id, chunk_size = struct.unpack("<4sI", fh.read(8))
            if chunk_id == b"data":
                # 0 and 0xFFFFFFFF are what streaming writers leave when the length was unknown
                if chunk_size in (0, 0xFFFFFFFF):
                    return None
                present = size - (offset + 8)
                if chunk_size > present:
                    return f"truncated WAV: data chunk declares {chunk_size} bytes, file holds {present}"
                return None
            offset += 8 + chunk_size + (chunk_size & 1)  # chunks are word-aligned
    return "truncated WAV: no data chunk"


@lru_cache(maxsize=16)
def _lowpass(up: int, down: int) -> np.ndarray:
    """resample_poly's default anti-alias filter, designed once per rate pair instead of per file."""
    max_rate = max(up, down)
    from scipy.signal import firwin  # scipy.signal takes about 1 s to import: only where audio is resampled

    return firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0)).astype(np.float32)


def resample(x: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling (scipy.signal.resample_poly, default filter) from ``orig_rate`` to ``target_rate``."""
    if orig_rate == target_rate:
        return x
    g = math.gcd(orig_rate, target_rate)
    up, down = target_rate // g, orig_rate // g
    from scipy.signal import resample_poly

    return resample_poly(x.astype(np.float32, copy=False), up, down, window=_lowpass(up, down))


def read_mono(path: Path, utt_id: str, role: str, expected_rate: int | None = None, resample_ok: bool = False,
              root: Path | None = None) -> tuple[np.ndarray, int]:
    """Read one mono file as float32 ``[N]``; return it with its (possibly resampled) rate.

    Raises UtteranceError for a missing, empty, unreadable, truncated or multi-channel file, for NaN or
    Inf samples, and for a sample rate other than ``expected_rate`` unless ``resample_ok``.
    """
    shown = _LazyPath(path, root)
    if not path.is_file():
        raise UtteranceError(utt_id, f"missing {role} file {shown}")
    if path.stat().st_size == 0:
        raise UtteranceError(utt_id, f"empty {role} file {shown} (0 bytes)")
    try:
        if path.suffix.lower() == ".wav":
            truncated = wav_truncation(path)
            if truncated:
                raise UtteranceError(utt_id, f"{role} file {shown}: {truncated}")
        with sf.SoundFile(str(path)) as fh:
            rate, channels, frames = fh.samplerate, fh.channels, fh.frames
            if channels != 1:
                raise UtteranceError(utt_id, f"{role} file {shown} has {channels} channels; expected mono")
            data = fh.read(dtype="float32", always_2d=True)
    except UtteranceError:
        raise
    except (sf.LibsndfileError, RuntimeError, OSError, struct.error) as exc:
        raise UtteranceError(utt_id, f"unreadable or truncated {role} file {shown}: {exc}") from None
    if data.shape[0] != frames:
        raise UtteranceError(utt_id, f"truncated {role} file {shown}: header says {frames} frames,"
                                     f" read {data.shape[0]}")
    x = data[:, 0]
    # caught here, where the file and its role are known; later checks could only say "the utterance"
    if x.shape[0] == 0:
        raise UtteranceError(utt_id, f"empty {role} file {shown} (no samples)")
    if not np.isfinite(x).all():
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise UtteranceError(utt_id, f"{role} file {shown} contains NaN or Inf ({bad} of {x.shape[0]} samples)")
    if expected_rate is not None and rate != expected_rate:
        if not resample_ok:
            raise UtteranceError(utt_id, f"{role} file {shown} is {rate} Hz but the model runs at"
                                         f" {expected_rate} Hz; pass resample=true to resample it")
        x, rate = resample(x, rate, expected_rate), expected_rate
    return x, rate


def check_lengths(utt_id: str, mixture: np.ndarray, sources: list[np.ndarray], mixture_name: str,
                  source_names: list[str]) -> None:
    """Raise UtteranceError naming each source whose length differs from the mixture's."""
    bad = [f"{name} has {len(s)}" for name, s in zip(source_names, sources) if len(s) != len(mixture)]
    if bad:
        raise UtteranceError(utt_id, f"length mismatch: {mixture_name} has {len(mixture)} samples, "
                                     + ", ".join(bad))


def check_not_silent(utt_id: str, sources: list[np.ndarray], source_names: list[str]) -> None:
    """Raise UtteranceError naming every all-zero reference (its SNR metrics would be undefined)."""
    silent = [name for name, s in zip(source_names, sources) if not np.any(s)]
    if silent:
        raise UtteranceError(utt_id, "all-silent reference " + ", ".join(silent))


def load_utterance(utt_id: str, mixture_path: Path, source_paths: list[Path], source_roles: list[str],
                   expected_rate: int | None, resample_ok: bool, root: Path | None = None,
                   metadata: dict | None = None) -> Utterance:
    """Read a mixture and its references, run every check, and return a validated Utterance.

    With ``expected_rate`` None the mixture's own rate is used and every reference must match it
    (or is resampled to it when ``resample_ok``).
    """
    mixture, rate = read_mono(mixture_path, utt_id, "mixture", expected_rate, resample_ok, root)
    sources = [read_mono(p, utt_id, role, rate, resample_ok, root)[0] for p, role in zip(source_paths, source_roles)]
    # messages name files relative to the root; build those names only for an utterance that fails
    if any(len(s) != len(mixture) for s in sources) or not all(np.any(s) for s in sources):
        names = [display_path(p, root) for p in source_paths]
        check_lengths(utt_id, mixture, sources, display_path(mixture_path, root), names)
        check_not_silent(utt_id, sources, names)
    utt = Utterance(utt_id, mixture, np.stack(sources).astype(np.float32, copy=False), rate, dict(metadata or {}))
    utt.validate()  # the contract's own shape/finiteness checks
    return utt
