#!/usr/bin/env python3
"""Build the bundled demo test sets (sep8k, enh16k) deterministically from Debian speech packages.

    python scripts/build_demo_sets.py --out exitbench/datasets/demo

Needs the Debian packages in ``REQUIRED_PACKAGES`` (checked first, with the apt-get line to fix it).
The speaker catalogue, the sentence generator, the TTS wrappers and the noise generators live here
and are reused by ``scripts/build_corpus.py``, so that the demo speakers are declared in one place
and the training corpus can be checked to be disjoint from them.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

ASTERISK_ROOT = Path("/usr/share/asterisk/sounds")
#: Sub-folders of an asterisk voice that hold isolated letters/digits or silence; too short to be useful.
ASTERISK_SKIP_DIRS = {"silence", "letters", "digits", "phonetic"}

# --------------------------------------------------------------------------------------------
# Speaker catalogue
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Voice:
    """One voice an engine can produce; ``group`` names the underlying speaker (shared across engines)."""

    key: str  # unique, filesystem-safe voice id
    group: str  # the person (or synthesiser parameter set) behind the voice; splits are made on this
    engine: str  # "asterisk" | "flite" | "espeak-ng" | "festival"
    name: str  # engine voice name, or the asterisk sounds folder
    kind: str  # "real" | "tts"
    lang: str
    package: str  # Debian package that provides it
    gender: str = "?"


#: The demo set's speakers. The training corpus must not use any of these groups.
DEMO_VOICES: tuple[Voice, ...] = (
    Voice("allison", "allison_smith", "asterisk", "en_US_f_Allison", "real", "en-US",
          "asterisk-core-sounds-en-wav", "f"),
    Voice("june", "june_wallack", "asterisk", "fr_CA_f_June", "real", "fr-CA",
          "asterisk-core-sounds-fr-wav", "f"),
    Voice("flite_rms", "cmu_rms", "flite", "rms", "tts", "en-US", "flite", "m"),
    Voice("espeak_f4", "espeak_variant_f4", "espeak-ng", "en-us+f4", "tts", "en-US", "espeak-ng", "f"),
    Voice("espeak_m7", "espeak_variant_m7", "espeak-ng", "en-gb-scotland+m7", "tts", "en-GB", "espeak-ng", "m"),
)
DEMO_GROUPS: frozenset[str] = frozenset(v.group for v in DEMO_VOICES)

REQUIRED_PACKAGES = ("flite", "espeak-ng", "asterisk-core-sounds-en-wav", "asterisk-core-sounds-fr-wav")

LICENCES = {
    "asterisk-core-sounds-en-wav": "CC-BY-SA-3.0 (recorded by Allison Smith, theivrvoice.com; Digium)",
    "asterisk-core-sounds-es-wav": "CC-BY-SA-3.0 (recorded by Allison Smith)",
    "asterisk-core-sounds-fr-wav": "CC-BY-SA-3.0 (recorded by June Wallack, junewallack.com)",
    "asterisk-core-sounds-it-wav": "CC-BY-3.0 (recorded by Carlo Flora, carloflora.com)",
    "asterisk-core-sounds-ru-wav": "CC-BY-3.0 (provided by Maxim Topal, ivrvoice.ru)",
    "flite": "CMU Flite licence (BSD-like, free use incl. commercial); CMU ARCTIC voices",
    "espeak-ng": "GPL-3+ program; its generated audio is program output, not covered by the GPL",
    "festival": "Festival licence (BSD-like, CSTR University of Edinburgh)",
    "festvox-kallpc16k": "BSD-like (CSTR Edinburgh / OGI)",
    "festvox-kdlpc16k": "BSD-like (CSTR Edinburgh)",
    "festvox-us-slt-hts": "BSD-3-clause / EST-2000 (CMU ARCTIC slt, NITECH HTS)",
    "sox": "GPL-2+/LGPL (tool only)",
}


class MissingDependency(RuntimeError):
    """A Debian package (TTS engine or sound files) the builder needs is not installed."""


def check_packages(voices: Iterable[Voice], extra_binaries: Sequence[str] = ()) -> None:
    """Raise MissingDependency naming the apt packages to install if an engine or sound folder is absent."""
    missing: set[str] = set()
    binaries = {"flite": "flite", "espeak-ng": "espeak-ng", "festival": "text2wave", "sox": "sox"}
    for v in voices:
        if v.engine == "asterisk":
            if not (ASTERISK_ROOT / v.name).is_dir():
                missing.add(v.package)
        elif shutil.which(binaries[v.engine]) is None:
            missing.add(v.package if v.engine != "festival" else "festival")
        if v.engine == "festival" and not festival_voice_installed(v.name):
            missing.add(v.package)
    for b in extra_binaries:
        if shutil.which(b) is None:
            missing.add(b)
    if missing:
        pkgs = " ".join(sorted(missing))
        raise MissingDependency(
            f"missing Debian packages: {pkgs}\n  fix: sudo apt-get update && sudo apt-get install -y {pkgs}")


def festival_voice_installed(name: str) -> bool:
    """True if festival's voice folder ``name`` exists under /usr/share/festival/voices/*/."""
    return any(Path("/usr/share/festival/voices").glob(f"*/{name}"))


def package_version(package: str) -> str:
    """The installed Debian version of ``package`` (or 'unknown' off Debian)."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True,
                             text=True, check=True)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# --------------------------------------------------------------------------------------------
# Text: public-domain sentences composed from a small hand-written grammar (written for this project, CC0)
# --------------------------------------------------------------------------------------------

_WORDS = {
    "adj": "quiet bright heavy narrow ancient gentle rusty silver patient sudden hollow crowded frozen "
           "golden tired clever empty distant careful muddy tiny yellow brave simple noisy wooden "
           "bitter round sleepy warm polished broken curious shallow steady purple dusty".split(),
    "noun": "farmer lamp river engine garden window basket sailor kettle village ladder blanket "
            "teacher bridge rabbit candle market letter compass orchard violin wagon pilot harbor "
            "station mirror painter lantern meadow doctor bottle tower forest captain pencil "
            "kitchen baker hammer island cottage signal".split(),
    "plural": "lamps apples boxes stones letters coins feathers ropes bottles candles tickets maps "
              "shells buttons plates boots flowers nails shirts keys pebbles cups".split(),
    "verb_past": "carried painted found opened dropped noticed repaired followed counted lifted "
                 "pushed cleaned borrowed watched wrapped measured sold gathered mended checked".split(),
    "verb": "carry paint find open move repair follow count lift push clean borrow watch wrap "
            "measure gather mend check bring hide".split(),
    "prep": "across behind beneath beside near under over inside toward past".split(),
    "adverb": "slowly quickly quietly carefully twice again gladly early nearly suddenly".split(),
    "num": "two three four five six seven eight nine ten twelve twenty".split(),
    "name": "Anna Peter Maria Thomas Helen Oscar Laura Victor Nora Samuel Clara Felix Ruth Daniel".split(),
    "time": ["before noon", "after dinner", "at dawn", "on Monday", "every winter", "last night",
             "by the evening", "in the spring", "before the storm", "on a cold morning"],
}

_TEMPLATES = (
    "The {adj} {noun} {verb_past} {num} {adj2} {plural} {prep} the {noun2}.",
    "{name} {verb_past} the {adj} {noun} {adverb} {time}.",
    "Please {verb} the {adj} {noun} {prep} the {noun2} {time}.",
    "Why did the {noun} {verb} {num} {plural} {prep} the {adj} {noun2}?",
    "We {verb_past} {num} {adj} {plural} and a {adj2} {noun} {time}.",
    "{name} and {name2} {verb_past} the {noun} {prep} the {adj} {noun2}.",
    "A {adj} {noun} stood {prep} the {noun2} while the {noun3} {verb_past} the {plural}.",
    "Nobody {verb_past} the {adj} {plural} {prep} the {noun} until {name} came home {time}.",
)


def make_sentences(count: int, seed: int) -> list[str]:
    """``count`` distinct sentences drawn from the grammar with a fixed seed."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < count:
        tpl = _TEMPLATES[rng.integers(len(_TEMPLATES))]
        pick = {k: _WORDS[k][rng.integers(len(_WORDS[k]))] for k in _WORDS}
        pick.update(adj2=_WORDS["adj"][rng.integers(len(_WORDS["adj"]))],
                    noun2=_WORDS["noun"][rng.integers(len(_WORDS["noun"]))],
                    noun3=_WORDS["noun"][rng.integers(len(_WORDS["noun"]))],
                    name2=_WORDS["name"][rng.integers(len(_WORDS["name"]))])
        s = tpl.format(**pick)
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


# --------------------------------------------------------------------------------------------
# Audio sources
# --------------------------------------------------------------------------------------------


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Polyphase resampling (scipy.signal.resample_poly) between integer rates, float32 out."""
    if sr_in == sr_out:
        return x.astype(np.float32)
    f = Fraction(sr_out, sr_in)
    return resample_poly(x.astype(np.float64), f.numerator, f.denominator).astype(np.float32)


def trim_silence(x: np.ndarray, sr: int, floor_db: float = -45.0, margin_s: float = 0.05) -> np.ndarray:
    """Cut leading/trailing audio quieter than ``floor_db`` re the loudest 10 ms frame, keeping a margin."""
    hop = max(1, sr // 100)
    n = len(x) // hop
    if n == 0:
        return x
    e = (x[: n * hop].reshape(n, hop).astype(np.float64) ** 2).mean(axis=1)
    active = np.flatnonzero(e > e.max() * 10 ** (floor_db / 10))
    if active.size == 0:
        return x
    m = int(margin_s * sr)
    return x[max(0, active[0] * hop - m): min(len(x), (active[-1] + 1) * hop + m)]


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")


def synthesize(voice: Voice, text: str, sr: int, rate: float = 1.0, pitch: float = 0.0) -> np.ndarray:
    """Speak ``text`` with a TTS voice; ``rate`` > 1 is faster, ``pitch`` in semitones; float32 at ``sr``."""
    with tempfile.TemporaryDirectory(prefix="exitbench_tts_") as tmp:
        wav = Path(tmp) / "out.wav"
        if voice.engine == "flite":
            # flite's own prosody knobs: duration stretch and the intonation model's mean F0.
            f0 = {"kal": 105, "kal16": 105, "awb": 120, "rms": 105, "slt": 180}.get(voice.name, 120)
            _run(["flite", "-voice", voice.name, "-t", text, "-o", str(wav),
                  "--setf", f"duration_stretch={1.0 / rate:.4f}",
                  "--setf", f"int_f0_target_mean={f0 * 2 ** (pitch / 12):.2f}"])
        elif voice.engine == "espeak-ng":
            # espeak-ng: -s words per minute (default 175), -p pitch 0..99 (default 50).
            p = int(np.clip(round(50 + pitch * 6), 0, 99))
            _run(["espeak-ng", "-v", voice.name, "-s", str(int(round(165 * rate))), "-p", str(p),
                  "-w", str(wav), text])
        elif voice.engine == "festival":
            txt = Path(tmp) / "in.txt"
            txt.write_text(text + "\n")
            raw = Path(tmp) / "raw.wav"
            _run(["text2wave", "-eval", f"(voice_{voice.name})", "-o", str(raw), str(txt)])
            sox_perturb(raw, wav, rate, pitch)
        else:
            raise ValueError(f"{voice.key}: engine {voice.engine!r} is not a TTS engine")
        x, sr_in = sf.read(str(wav), dtype="float32", always_2d=False)
    return resample(trim_silence(x, sr_in), sr_in, sr)


def sox_perturb(src: Path, dst: Path, rate: float, pitch: float) -> None:
    """Copy ``src`` to ``dst`` with sox tempo (rate, pitch kept) and pitch (semitones) changes."""
    cmd = ["sox", str(src), str(dst)]
    if abs(pitch) > 1e-6:
        cmd += ["pitch", f"{pitch * 100:.1f}"]
    if abs(rate - 1.0) > 1e-6:
        cmd += ["tempo", "-s", f"{rate:.4f}"]
    if len(cmd) == 3:
        shutil.copyfile(src, dst)
    else:
        _run(cmd)


def asterisk_files(voice: Voice, min_seconds: float = 1.0) -> list[Path]:
    """The voice's prompt files (sorted, deterministic), skipping letters/digits/silence and very short ones."""
    root = ASTERISK_ROOT / voice.name
    files = []
    for f in sorted(root.rglob("*.wav")):
        if set(f.relative_to(root).parts[:-1]) & ASTERISK_SKIP_DIRS:
            continue
        if sf.info(str(f)).duration >= min_seconds:
            files.append(f)
    if not files:
        raise MissingDependency(f"no prompts found under {root}; install {voice.package}")
    return files


def load_prompt(path: Path, sr: int, rate: float = 1.0, pitch: float = 0.0) -> np.ndarray:
    """Read one asterisk prompt (8 kHz), optionally perturbed with sox, trimmed, resampled to ``sr``."""
    if abs(rate - 1.0) > 1e-6 or abs(pitch) > 1e-6:
        with tempfile.TemporaryDirectory(prefix="exitbench_sox_") as tmp:
            out = Path(tmp) / "p.wav"
            sox_perturb(path, out, rate, pitch)
            x, sr_in = sf.read(str(out), dtype="float32", always_2d=False)
    else:
        x, sr_in = sf.read(str(path), dtype="float32", always_2d=False)
    return resample(trim_silence(x, sr_in), sr_in, sr)


def speech_stream(voice: Voice, sr: int, min_seconds: float, rng: np.random.Generator,
                  sentences: Sequence[str], prompts: Sequence[Path] | None = None) -> np.ndarray:
    """Concatenate utterances of one voice (short random pauses between) until ``min_seconds`` is reached."""
    parts: list[np.ndarray] = []
    total = 0
    while total < min_seconds * sr:
        if parts:
            gap = np.zeros(int(rng.uniform(0.08, 0.3) * sr), np.float32)
            parts.append(gap)
            total += len(gap)
        if voice.engine == "asterisk":
            assert prompts is not None, "asterisk voices need their prompt list"
            x = load_prompt(prompts[rng.integers(len(prompts))], sr)
        else:
            x = synthesize(voice, sentences[rng.integers(len(sentences))], sr)
        parts.append(x)
        total += len(x)
    return np.concatenate(parts)


# --------------------------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------------------------


def coloured_noise(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = f[1] if len(f) > 1 else 1.0
    spec *= f ** (-exponent / 2)
    x = np.fft.irfft(spec, n)
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


def shaped_noise(n: int, rng: np.random.Generator, speech: np.ndarray) -> np.ndarray:
    """Stationary noise with the long-term average spectrum of ``speech`` (speech-shaped noise), unit RMS."""
    nfft = 512
    frames = speech[: len(speech) // nfft * nfft].reshape(-1, nfft)
    ltas = np.sqrt(np.mean(np.abs(np.fft.rfft(frames * np.hanning(nfft), axis=1)) ** 2, axis=0))
    spec = np.fft.rfft(rng.standard_normal(n))
    shape = np.interp(np.linspace(0, 1, len(spec)), np.linspace(0, 1, len(ltas)), ltas)
    x = np.fft.irfft(spec * shape, n)
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


def music_noise(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Music-like noise: random triads of harmonic tones with decaying envelopes, unit RMS."""
    x = np.zeros(n, np.float64)
    t0 = 0
    while t0 < n:
        dur = int(rng.uniform(0.25, 0.9) * sr)
        root = 110.0 * 2 ** (rng.integers(0, 24) / 12)
        chord = [root * 2 ** (s / 12) for s in (0, rng.choice([3, 4]), 7)]
        t = np.arange(min(dur, n - t0)) / sr
        env = np.exp(-t * rng.uniform(2.0, 6.0)) * (1 - np.exp(-t * 200))
        note = np.zeros_like(t)
        for f in chord:
            for h in range(1, 5):
                if f * h < sr / 2:
                    note += np.sin(2 * np.pi * f * h * t + rng.uniform(0, 2 * np.pi)) / h
        x[t0: t0 + len(t)] += env * note
        t0 += dur
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


def hum_noise(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Mains hum and buzz: 50 or 60 Hz with odd-heavy harmonics plus a little pink noise, unit RMS."""
    f0 = float(rng.choice([50.0, 60.0]))
    t = np.arange(n) / sr
    x = np.zeros(n, np.float64)
    for h in range(1, 40):
        if f0 * h >= sr / 2:
            break
        x += (1.0 if h % 2 else 0.4) / h * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi))
    x /= np.sqrt(np.mean(x**2))
    x += 0.1 * coloured_noise(n, rng, 1.0)
    return (x / np.sqrt(np.mean(x**2))).astype(np.float32)


def babble_noise(streams: Sequence[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """Sum of several speech streams at random offsets and equal levels, unit RMS."""
    x = np.zeros(n, np.float64)
    for s in streams:
        s = np.resize(s, len(s) + n)  # wrap around so any offset covers n samples
        off = int(rng.integers(0, max(1, len(s) - n)))
        seg = s[off: off + n].astype(np.float64)
        x += seg / (np.sqrt(np.mean(seg**2)) + 1e-12)
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def rms(x: np.ndarray) -> float:
    """Root mean square of a signal (float64)."""
    return float(np.sqrt(np.mean(np.asarray(x, np.float64) ** 2)))


def to_int16(x: np.ndarray) -> np.ndarray:
    """Quantise float audio in [-1, 1) to int16 (the values soundfile reads back as x / 32768)."""
    q = np.round(np.asarray(x, np.float64) * 32768.0)
    if np.abs(q).max() > 32767:
        raise ValueError(f"audio would clip (peak {np.abs(x).max():.3f})")
    return q.astype(np.int16)


def write_audio(path: Path, x_int16: np.ndarray, sr: int) -> None:
    """Write int16 mono audio as FLAC PCM_16 (lossless, so re-reading gives the same samples)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x_int16, sr, format="FLAC", subtype="PCM_16")


def snr_db(signal: np.ndarray, noise: np.ndarray) -> float:
    """10 log10 of the energy ratio of ``signal`` to ``noise``."""
    s = np.asarray(signal, np.float64)
    e = np.asarray(noise, np.float64)
    return float(10 * np.log10(np.sum(s**2) / np.sum(e**2)))


# --------------------------------------------------------------------------------------------
# The two demo sets
# --------------------------------------------------------------------------------------------

SEP_SR = 8000
ENH_SR = 16000
MIX_LEVEL_DBFS = -26.0  # mixture / clean speech RMS, like ITU-T P.56's usual -26 dBov
PEAK_LIMIT = 0.9


def build_sep8k(out: Path, count: int, seed: int) -> list[dict]:
    """Two-speaker 8 kHz mixtures in the wsj0-2mix layout (mix/s1/s2), 'min' mode; returns metadata rows."""
    rng = np.random.default_rng(seed)
    sentences = make_sentences(200, seed + 1)
    prompts = {v.key: asterisk_files(v) for v in DEMO_VOICES if v.engine == "asterisk"}
    pairs = [(a, b) for i, a in enumerate(DEMO_VOICES) for b in DEMO_VOICES[i + 1:]]
    rows = []
    for i in range(count):
        a, b = pairs[i % len(pairs)]
        if rng.random() < 0.5:  # which speaker is s1 should not follow the catalogue order
            a, b = b, a
        s1 = speech_stream(a, SEP_SR, rng.uniform(3.0, 4.2), rng, sentences, prompts.get(a.key))
        s2 = speech_stream(b, SEP_SR, rng.uniform(3.0, 4.2), rng, sentences, prompts.get(b.key))
        n = min(len(s1), len(s2), int(4.5 * SEP_SR))  # wsj0-2mix 'min' mode: cut to the shorter source
        s1, s2 = s1[:n] / rms(s1[:n]), s2[:n] / rms(s2[:n])
        gain = float(rng.uniform(-5.0, 5.0))  # level of s1 relative to s2, split evenly between them
        s1 = s1 * 10 ** (gain / 40)
        s2 = s2 * 10 ** (-gain / 40)
        mix = s1 + s2
        scale = 10 ** (MIX_LEVEL_DBFS / 20) / rms(mix)
        scale = min(scale, PEAK_LIMIT / np.abs(mix).max())
        q1, q2 = to_int16(s1 * scale), to_int16(s2 * scale)
        qm = q1.astype(np.int32) + q2.astype(np.int32)  # the mixture is exactly s1 + s2 in the files
        if np.abs(qm).max() > 32767:
            raise ValueError("mixture would clip")
        utt = f"{i:03d}_{a.key}_{b.key}"
        write_audio(out / "mix" / f"{utt}.flac", qm.astype(np.int16), SEP_SR)
        write_audio(out / "s1" / f"{utt}.flac", q1, SEP_SR)
        write_audio(out / "s2" / f"{utt}.flac", q2, SEP_SR)
        rows.append({"id": utt, "speaker1": a.key, "speaker2": b.key, "engine1": a.engine,
                     "engine2": b.engine, "gain_db": round(gain, 3), "duration": round(n / SEP_SR, 4),
                     "input_snr": round(snr_db(q1, q2), 3)})
    return rows


ENH_NOISES = ("pink", "brown", "speech_shaped", "babble", "music", "hum", "white")


def build_enh16k(out: Path, count: int, seed: int) -> list[dict]:
    """16 kHz noisy/clean pairs in the VoiceBank+DEMAND layout; returns metadata rows."""
    rng = np.random.default_rng(seed)
    sentences = make_sentences(200, seed + 1)
    prompts = {v.key: asterisk_files(v) for v in DEMO_VOICES if v.engine == "asterisk"}
    snrs = np.round(np.linspace(-5.0, 15.0, count), 1)
    rng.shuffle(snrs)
    tts = [v for v in DEMO_VOICES if v.kind == "tts"]
    rows = []
    for i in range(count):
        voice = DEMO_VOICES[i % len(DEMO_VOICES)]
        noise_type = ENH_NOISES[i % len(ENH_NOISES)]
        clean = speech_stream(voice, ENH_SR, 2.6, rng, sentences, prompts.get(voice.key))
        n = min(len(clean), int(3.4 * ENH_SR))
        clean = clean[:n] / rms(clean[:n])
        if noise_type == "babble":
            others = [v for v in tts if v.key != voice.key]
            noise = babble_noise([speech_stream(v, ENH_SR, 4.0, rng, sentences) for v in others], n, rng)
        elif noise_type == "speech_shaped":
            noise = shaped_noise(n, rng, speech_stream(tts[i % len(tts)], ENH_SR, 4.0, rng, sentences))
        elif noise_type == "music":
            noise = music_noise(n, ENH_SR, rng)
        elif noise_type == "hum":
            noise = hum_noise(n, ENH_SR, rng)
        else:
            noise = coloured_noise(n, rng, {"white": 0.0, "pink": 1.0, "brown": 2.0}[noise_type])
        snr = float(snrs[i])
        noise = noise * 10 ** (-snr / 20)  # both unit RMS, so this sets the SNR
        scale = 10 ** (MIX_LEVEL_DBFS / 20)
        scale = min(scale, PEAK_LIMIT / np.abs(clean + noise).max())
        qc, qn = to_int16(clean * scale), to_int16(noise * scale)
        qy = qc.astype(np.int32) + qn.astype(np.int32)
        if np.abs(qy).max() > 32767:
            raise ValueError("noisy mixture would clip")
        utt = f"{voice.key}_{i:03d}"
        write_audio(out / "clean_testset_wav" / f"{utt}.flac", qc, ENH_SR)
        write_audio(out / "noisy_testset_wav" / f"{utt}.flac", qy.astype(np.int16), ENH_SR)
        measured = snr_db(qc, qn)
        if abs(measured - snr) > 0.05:
            raise ValueError(f"{utt}: measured SNR {measured:.3f} dB drifted from target {snr} dB")
        rows.append({"id": utt, "speaker": voice.key, "noise_type": noise_type, "snr_db": snr,
                     "duration": round(n / ENH_SR, 4)})
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    """Write metadata rows (all with the same keys) as CSV."""
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "exitbench/datasets/demo")
    ap.add_argument("--sep-count", type=int, default=20)
    ap.add_argument("--enh-count", type=int, default=14)
    ap.add_argument("--seed", type=int, default=20260)
    args = ap.parse_args(argv)
    try:
        check_packages(DEMO_VOICES)
    except MissingDependency as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for sub in ("sep8k", "enh16k"):
        shutil.rmtree(args.out / sub, ignore_errors=True)  # no stale files from an earlier build
    sep_rows = build_sep8k(args.out / "sep8k", args.sep_count, args.seed)
    write_csv(args.out / "sep8k" / "metadata.csv", sep_rows)
    enh_rows = build_enh16k(args.out / "enh16k", args.enh_count, args.seed + 1000)
    write_csv(args.out / "enh16k" / "metadata.csv", enh_rows)
    packages = sorted({v.package for v in DEMO_VOICES})
    info = {
        "seed": args.seed,
        "speakers": [v.__dict__ for v in DEMO_VOICES],
        "packages": {p: {"version": package_version(p), "licence": LICENCES.get(p, "?")} for p in packages},
        "soundfile_libsndfile": sf.__libsndfile_version__,
        "sep8k": {"count": len(sep_rows), "seconds": round(sum(r["duration"] for r in sep_rows), 2)},
        "enh16k": {"count": len(enh_rows), "seconds": round(sum(r["duration"] for r in enh_rows), 2)},
    }
    (args.out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"wrote {len(sep_rows)} sep8k mixtures, {len(enh_rows)} enh16k pairs to {args.out}"
          f" ({size / 1e6:.2f} MB in the folder)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
