"""PESQ scores of fixed pairs of committed audio, to check that a pesq build gives the same numbers.

The pesq package is compiled from its source at install time, and its licence forbids changing that
code. What a user may change is how it is compiled: ``scripts/build_fast_pesq.sh`` rebuilds it for the
local CPU with flags that keep IEEE float semantics (no fused multiply-add contraction, no fast-math),
which should give the same scores bit for bit. ``check`` is how that is known, not assumed: it scores
the pairs below with the installed build and compares each score with the stored one
(``tests/fixtures/pesq_reference.json``, written with the default build) for exact equality. It reads
committed audio and the stored scores from a source checkout.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "tests" / "fixtures" / "pesq_reference.json"
DEMO = ROOT / "exitbench" / "datasets" / "demo"
VOICEBANK = ROOT / "tests" / "fixtures" / "voicebank"


def _read(path: Path) -> np.ndarray:
    import soundfile as sf

    audio, _ = sf.read(str(path), dtype="float64")
    return audio


def pairs() -> Iterator[tuple[str, int, str, np.ndarray, np.ndarray]]:
    """(name, sample rate, mode, reference, degraded) for every pair checked, in a fixed order.

    Only element-wise arithmetic builds a degraded signal (a mixture at another gain), so the inputs
    are the same bits on every machine; what could differ is the pesq build alone.
    """
    sep = DEMO / "sep8k"
    for mix in sorted((sep / "mix").glob("*.flac")):
        m, s1, s2 = _read(mix), _read(sep / "s1" / mix.name), _read(sep / "s2" / mix.name)
        yield f"sep8k/{mix.stem}/s1-mix", 8000, "nb", s1, m
        yield f"sep8k/{mix.stem}/s2-mix", 8000, "nb", s2, m
        yield f"sep8k/{mix.stem}/s1-s1+0.1s2", 8000, "nb", s1, s1 + 0.1 * s2
    enh = DEMO / "enh16k"
    for noisy in sorted((enh / "noisy_testset_wav").glob("*.flac")):
        clean = _read(enh / "clean_testset_wav" / noisy.name)
        for mode in ("wb", "nb"):
            yield f"enh16k/{noisy.stem}/{mode}", 16000, mode, clean, _read(noisy)
    for noisy in sorted((VOICEBANK / "noisy_testset_wav").glob("*.wav")):
        clean = _read(VOICEBANK / "clean_testset_wav" / noisy.name)
        for mode in ("wb", "nb"):
            yield f"voicebank/{noisy.stem}/{mode}", 16000, mode, clean, _read(noisy)


def scores() -> tuple[dict[str, float], float]:
    """The installed build's score of every pair, and its mean seconds per call."""
    from pesq import pesq

    out, spent = {}, 0.0
    for name, rate, mode, ref, deg in pairs():
        t0 = time.perf_counter()
        out[name] = float(pesq(rate, ref, deg, mode))
        spent += time.perf_counter() - t0
    return out, spent / max(len(out), 1)


def write(path: Path = REFERENCE) -> int:
    """Store the installed build's scores as the reference (done once, with the default build)."""
    got, _ = scores()
    # repr of a float round-trips exactly, so the JSON holds the very bits
    path.write_text(json.dumps({"pesq": _version(), "scores": got}, indent=1) + "\n")
    return len(got)


def check(path: Path = REFERENCE) -> tuple[list[str], int, float]:
    """(names whose score differs from the stored one, pairs checked, seconds per call) for this build."""
    stored = json.loads(path.read_text())["scores"]
    got, per_call = scores()
    if set(got) != set(stored):
        raise ValueError(f"the pairs changed: {sorted(set(got) ^ set(stored))[:3]}; write the reference again")
    return [n for n in stored if got[n] != stored[n]], len(stored), per_call


def _version() -> str:
    from importlib.metadata import version

    return version("pesq")
