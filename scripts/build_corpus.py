#!/usr/bin/env python3
"""Build the (uncommitted) training corpus: TTS and real speech plus noise, at 8 and 16 kHz.

    python scripts/build_corpus.py --out .corpus

Layout (the trainer depends on it):

    <out>/<rate>/speech/{train,valid}/<speaker>/<voice>_<nnnn>.<ext>   rate in {8k, 16k}
    <out>/<rate>/noise/{train,valid}/<type>_<nnn>.<ext>
    <out>/corpus.json

``<speaker>`` is the underlying speaker group (one person may speak through several engines, e.g.
flite's 'kal' and festival's 'kal_diphone'); train and valid share no group, and no group of the
bundled demo set (scripts/build_demo_sets.py: DEMO_VOICES) appears at all. ``<ext>`` is ``opus``
(Ogg/Opus, default, so ~1.7 h fit in ~45 MiB) or ``flac`` (--format flac; ~4.5x larger). soundfile
reads both. Every file is derived from a seed fixed by (voice, index), so the output does not depend
on scheduling, files are written under a temporary name and renamed, and a rerun skips finished files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_demo_sets as demo  # noqa: E402  (sibling script: shared catalogue, TTS and noise helpers)
from build_demo_sets import Voice  # noqa: E402

RATES = {"8k": 8000, "16k": 16000}
GEN_SR = 16000  # speech and noise are made at 16 kHz; the 8 kHz variant is resample_poly of it
SPLITS = ("train", "valid")
FORMATS = {"opus": ("OGG", "OPUS", ".opus"), "flac": ("FLAC", "PCM_16", ".flac")}


def _ast(key: str, group: str, folder: str, lang: str, pkg: str, gender: str) -> Voice:
    return Voice(key, group, "asterisk", folder, "real", lang, pkg, gender)


def _esp(variant: str, lang: str, gender: str) -> Voice:
    # espeak-ng variants are parameter sets of one formant synthesiser; the variant (pitch range,
    # formant scaling) defines the voice, so the group is the variant whatever the accent.
    name = lang if variant == "default" else f"{lang}+{variant}"
    return Voice(f"espeak_{variant}", f"espeak_variant_{variant}", "espeak-ng", name, "tts", lang,
                 "espeak-ng", gender)


#: Every voice the corpus may use. Allison Smith also recorded the es-MX prompts
#: (asterisk-core-sounds-es-wav): she is a demo speaker, so that package is not used at all.
TRAIN_VOICES: tuple[Voice, ...] = (
    _ast("carlo", "carlo_flora", "it_IT_m_Carlo", "it-IT", "asterisk-core-sounds-it-wav", "m"),
    _ast("ivr_ru", "ivrvoice_ru", "ru_RU_f_IvrvoiceRU", "ru-RU", "asterisk-core-sounds-ru-wav", "f"),
    Voice("flite_kal", "kal", "flite", "kal", "tts", "en-US", "flite", "m"),
    Voice("flite_kal16", "kal", "flite", "kal16", "tts", "en-US", "flite", "m"),
    Voice("festival_kal", "kal", "festival", "kal_diphone", "tts", "en-US", "festvox-kallpc16k", "m"),
    Voice("flite_awb", "cmu_awb", "flite", "awb", "tts", "en-GB-scotland", "flite", "m"),
    Voice("flite_slt", "cmu_slt", "flite", "slt", "tts", "en-US", "flite", "f"),
    Voice("festival_slt", "cmu_slt", "festival", "cmu_us_slt_arctic_hts", "tts", "en-US",
          "festvox-us-slt-hts", "f"),
    Voice("festival_ked", "ked", "festival", "ked_diphone", "tts", "en-US", "festvox-kdlpc16k", "m"),
    _esp("default", "en-us", "m"),
    _esp("m1", "en-gb", "m"),
    _esp("m2", "en-us", "m"),
    _esp("m3", "en-gb-x-rp", "m"),
    _esp("m4", "en-us", "m"),
    _esp("m5", "en-029", "m"),
    _esp("m6", "en-gb-x-gbcwmd", "m"),
    _esp("f1", "en-gb", "f"),
    _esp("f2", "en-us", "f"),
    _esp("f3", "en-gb-x-rp", "f"),
    _esp("f5", "en-us", "f"),
    _esp("klatt", "en-us", "m"),
    _esp("klatt2", "en-gb", "m"),
    _esp("klatt3", "en-gb-x-gbclan", "m"),
    _esp("klatt4", "en-us", "f"),
    _esp("Andrea", "en-us", "f"),
    _esp("belinda", "en-gb", "f"),
)

#: Seconds of speech per voice before --minutes-scale; real speakers are capped by what the package holds.
#: With Opus (~6 kB/s for both rates together) this gives ~1.75 h and ~40 MiB in all.
SECONDS = {"real": 1000.0, "tts": 180.0}
NOISE_TYPES = ("white", "pink", "brown", "speech_shaped", "babble", "music", "hum")
NOISE_FILES = {"train": 8, "valid": 2}  # per type
NOISE_SECONDS = 10.0


def _family(v: Voice) -> str:
    return "real" if v.kind == "real" else ("espeak" if v.engine == "espeak-ng" else "cmu_cstr")


def _stable_hash(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:8], "big")


def split_speakers(voices: Sequence[Voice], valid_fraction: float = 0.2, seed: int = 0) -> dict[str, list[Voice]]:
    """Assign whole speaker groups to train/valid (stratified by family); refuses demo speakers."""
    leaked = sorted({v.group for v in voices} & demo.DEMO_GROUPS)
    if leaked:
        raise ValueError(f"speaker groups {leaked} belong to the demo set and must not be in the corpus")
    by_family: dict[str, list[str]] = {}
    for v in voices:
        groups = by_family.setdefault(_family(v), [])
        if v.group not in groups:
            groups.append(v.group)
    valid_groups: set[str] = set()
    for fam, groups in sorted(by_family.items()):
        # Families with fewer than 3 speakers stay in train: one speaker cannot stand for a family.
        k = int(round(valid_fraction * len(groups))) if len(groups) >= 3 else 0
        ranked = sorted(groups, key=lambda g: _stable_hash(str(seed), g))
        valid_groups.update(ranked[:k])
    return {"train": [v for v in voices if v.group not in valid_groups],
            "valid": [v for v in voices if v.group in valid_groups]}


# --------------------------------------------------------------------------------------------
# Workers (module-level so the process pool can pickle them)
# --------------------------------------------------------------------------------------------


def _write(path: Path, x: np.ndarray, sr: int, fmt: str) -> None:
    container, subtype, _ = FORMATS[fmt]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    sf.write(str(tmp), x, sr, format=container, subtype=subtype)
    os.replace(tmp, path)  # atomic: a reader never sees half a file, a killed run leaves only *.tmp


def _level(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scale to a random RMS in [-32, -20] dBFS, never above a 0.9 peak."""
    g = 10 ** (rng.uniform(-32.0, -20.0) / 20) / (demo.rms(x) + 1e-12)
    g = min(g, 0.9 / (np.abs(x).max() + 1e-12))
    return (x * g).astype(np.float32)


def _utt_paths(job: dict, index: int) -> dict[str, Path]:
    stem = f"{job['voice']['key']}_{index:04d}{FORMATS[job['format']][2]}"
    return {r: Path(job["dirs"][r]) / stem for r in RATES}


def make_voice(job: dict) -> list[dict]:
    """Make utterances 0, 1, ... of one voice until its quota of seconds is reached; drop stale extras."""
    out, total, i = [], 0.0, 0
    while total < job["quota_s"]:
        paths = _utt_paths(job, i)
        if all(p.exists() for p in paths.values()):  # resume: utterance i is a pure function of (voice, i, seed)
            res = {"index": i, "seconds": sf.info(str(paths["8k"])).duration, "skipped": True}
        else:
            res = make_utterance(job, i, paths)
        out.append(res)
        total += res["seconds"]
        i += 1
    while any(p.exists() for p in _utt_paths(job, i).values()):  # left by an earlier, larger build
        for p in _utt_paths(job, i).values():
            p.unlink(missing_ok=True)
        i += 1
    return out


def make_utterance(job: dict, index: int, paths: dict[str, Path]) -> dict:
    """Make one corpus utterance (several sentences/prompts, perturbed) and write it at every rate."""
    voice = Voice(**job["voice"])
    rng = np.random.default_rng(_stable_hash("utt", voice.key, str(index), str(job["seed"])))
    rate = float(rng.uniform(0.88, 1.12))
    pitch = float(rng.uniform(-2.5, 2.5))  # semitones
    target = rng.uniform(4.0, 8.0)
    parts: list[np.ndarray] = []
    total = 0
    prompts = job.get("prompts")
    while total < target * GEN_SR:
        if parts:
            parts.append(np.zeros(int(rng.uniform(0.08, 0.35) * GEN_SR), np.float32))
        if voice.engine == "asterisk":
            x = demo.load_prompt(Path(prompts[rng.integers(len(prompts))]), GEN_SR, rate, pitch)
        else:
            sentences = job["sentences"]
            x = demo.synthesize(voice, sentences[rng.integers(len(sentences))], GEN_SR, rate, pitch)
        parts.append(x)
        total = sum(len(p) for p in parts)
    y = _level(np.concatenate(parts), rng)
    for r, p in paths.items():
        _write(p, demo.resample(y, GEN_SR, RATES[r]), RATES[r], job["format"])
    return {"index": index, "seconds": len(y) / GEN_SR, "rate": rate, "pitch": pitch, "skipped": False}


def make_noise(job: dict) -> dict:
    """Make one noise file of a given type for a split and write it at every rate."""
    paths = {r: Path(p) for r, p in job["paths"].items()}
    if all(p.exists() for p in paths.values()):
        return {"type": job["type"], "seconds": NOISE_SECONDS, "skipped": True}
    rng = np.random.default_rng(_stable_hash("noise", job["split"], job["type"], str(job["index"]),
                                             str(job["seed"])))
    n = int(NOISE_SECONDS * GEN_SR)
    kind = job["type"]
    if kind in ("babble", "speech_shaped"):
        # Speech of the same split only, so valid noise never carries train speakers (and vice versa).
        files = job["speech_files"]
        k = int(rng.integers(3, 7)) if kind == "babble" else 6
        picks = [files[i] for i in rng.choice(len(files), size=min(k, len(files)), replace=False)]
        streams = [sf.read(f, dtype="float32")[0] for f in picks]
        if kind == "babble":
            x = demo.babble_noise(streams, n, rng)
        else:
            x = demo.shaped_noise(n, rng, np.concatenate(streams))
    elif kind == "music":
        x = demo.music_noise(n, GEN_SR, rng)
    elif kind == "hum":
        x = demo.hum_noise(n, GEN_SR, rng)
    else:
        x = demo.coloured_noise(n, rng, {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind])
    y = _level(x, rng)
    for r, p in paths.items():
        _write(p, demo.resample(y, GEN_SR, RATES[r]), RATES[r], job["format"])
    return {"type": kind, "seconds": NOISE_SECONDS, "skipped": False}


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def corpus_sentences(count: int, seed: int) -> list[str]:
    """Grammar sentences for the corpus, minus every sentence the demo builder can draw."""
    banned = set(demo.make_sentences(200, 20261)) | set(demo.make_sentences(200, 21261))
    return [s for s in demo.make_sentences(count + len(banned), seed) if s not in banned][:count]


def plan_speech(split: dict[str, list[Voice]], out: Path, fmt: str, scale: float, seed: int) -> list[dict]:
    """One job per voice with its quota of seconds, largest first so the pool stays busy."""
    sentences = corpus_sentences(3000, seed)
    jobs = []
    for name, voices in split.items():
        for v in voices:
            prompts = [str(p) for p in demo.asterisk_files(v, 0.5)] if v.engine == "asterisk" else None
            quota = SECONDS[v.kind] * scale
            if prompts is not None:
                available = sum(sf.info(p).duration for p in prompts)
                quota = min(quota, 0.9 * available)  # prompts get reused little
            jobs.append({"voice": asdict(v), "seed": seed, "format": fmt, "split": name, "quota_s": quota,
                         "prompts": prompts, "sentences": sentences,
                         "dirs": {r: str(out / r / "speech" / name / v.group) for r in RATES}})
    return sorted(jobs, key=lambda j: -j["quota_s"])


def plan_noise(out: Path, fmt: str, seed: int) -> list[dict]:
    """One job per noise file; babble/speech-shaped draw on the split's 16 kHz speech files."""
    ext = FORMATS[fmt][2]
    jobs = []
    for name in SPLITS:
        speech = sorted(str(p) for p in (out / "16k" / "speech" / name).rglob(f"*{ext}"))
        if not speech:
            raise RuntimeError(f"no {name} speech under {out}/16k/speech/{name}: speech must be built first")
        for kind in NOISE_TYPES:
            for i in range(NOISE_FILES[name]):
                jobs.append({"type": kind, "index": i, "split": name, "seed": seed, "format": fmt,
                             "speech_files": speech,
                             "paths": {r: str(out / r / "noise" / name / f"{kind}_{i:03d}{ext}") for r in RATES}})
    return jobs


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / ".corpus")
    ap.add_argument("--format", choices=sorted(FORMATS), default="opus")
    ap.add_argument("--minutes-scale", type=float, default=1.0, help="scale every voice's quota of minutes")
    ap.add_argument("--valid-fraction", type=float, default=0.2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    try:
        demo.check_packages(TRAIN_VOICES, extra_binaries=("sox",))
    except demo.MissingDependency as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.time()
    split = split_speakers(TRAIN_VOICES, args.valid_fraction)
    speech_jobs = plan_speech(split, args.out, args.format, args.minutes_scale, args.seed)
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        speech = list(pool.map(make_voice, speech_jobs))
        noise_jobs = plan_noise(args.out, args.format, args.seed)
        noise = list(pool.map(make_noise, noise_jobs))
    seconds: dict[str, dict[str, float]] = {s: {} for s in SPLITS}
    counts: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    for job, results in zip(speech_jobs, speech):
        g, s = job["voice"]["group"], job["split"]
        seconds[s][g] = seconds[s].get(g, 0.0) + sum(r["seconds"] for r in results)
        counts[s][g] = counts[s].get(g, 0) + len(results)
    packages = sorted({v.package for v in TRAIN_VOICES} | {"sox"})
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file() and not f.name.endswith(".tmp"))
    info = {
        "layout": "<rate>/speech/<split>/<speaker group>/<voice>_<nnnn><ext>; <rate>/noise/<split>/<type>_<nnn><ext>",
        "format": args.format, "audio_ext": FORMATS[args.format][2], "rates": RATES,
        "generated_at_hz": GEN_SR,
        "splits": {
            s: {"speakers": {g: sorted({v.key for v in split[s] if v.group == g})
                             for g in sorted({v.group for v in split[s]})},
                "utterances": sum(counts[s].values()),
                "seconds": round(sum(seconds[s].values()), 1),
                "seconds_per_speaker": {g: round(x, 1) for g, x in sorted(seconds[s].items())},
                "noise_files": {k: NOISE_FILES[s] for k in NOISE_TYPES},
                "noise_seconds": NOISE_FILES[s] * NOISE_SECONDS * len(NOISE_TYPES)}
            for s in SPLITS},
        "total_speech_hours": round(sum(sum(d.values()) for d in seconds.values()) / 3600, 3),
        "voices": [asdict(v) for v in TRAIN_VOICES],
        "excluded_demo_groups": sorted(demo.DEMO_GROUPS),
        "excluded_packages": {"asterisk-core-sounds-es-wav": "recorded by Allison Smith, a demo speaker"},
        "perturbations": {"rate": "uniform 0.88..1.12 (espeak-ng -s, flite duration_stretch, sox tempo)",
                          "pitch_semitones": "uniform -2.5..2.5 (espeak-ng -p, flite int_f0_target_mean, sox pitch)",
                          "level_dbfs": "uniform -32..-20 RMS, peak <= 0.9",
                          "utterance": "4-8 s: sentences/prompts joined by 80-350 ms pauses"},
        "text": "sentences from a hand-written grammar (scripts/build_demo_sets.py, CC0); none used by the demo set",
        "noise": {"types": list(NOISE_TYPES), "seconds_per_file": NOISE_SECONDS,
                  "babble_speech_shaped": "built from speech of the same split"},
        "sources": {p: {"version": demo.package_version(p), "licence": demo.LICENCES.get(p, "?")}
                    for p in packages},
        "note": "mbrola/RHVoice/pico are not used (non-commercial output). Do not redistribute without "
                "the CC-BY(-SA) attributions of the asterisk recordings.",
        "seed": args.seed, "minutes_scale": args.minutes_scale,
        "total_bytes": size,
        "build_seconds": round(time.time() - t0, 1),
        "skipped_existing": sum(r["skipped"] for rs in speech for r in rs) + sum(r["skipped"] for r in noise),
    }
    (args.out / "corpus.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"corpus: {info['total_speech_hours']:.2f} h speech, {size / 2**20:.1f} MiB, "
          f"train {len(info['splits']['train']['speakers'])} / valid {len(info['splits']['valid']['speakers'])}"
          f" speakers, {info['build_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
