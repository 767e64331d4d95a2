"""Loaders for 'folder of mixtures + folders of sources matched by file name' layouts.

wsj0-2mix / wsj0-3mix, WHAM!, WHAMR!, VoiceBank+DEMAND, DNS-challenge test sets and the bundled
demo sets all store one folder of mixtures and one folder per reference, with partner files found
by name. They differ only in folder names, in how a mixture name maps to its partner, and in where
the split folder sits under the root the user gives.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

from exitbench.datasets.audio import AUDIO_SUFFIXES
from exitbench.datasets.base import DatasetError
from exitbench.datasets.filesets import FileTestSet, UttFiles, natural_key, rate_folder, read_metadata_csv
from exitbench.datasets.options import as_int, parse_rate

METADATA_FILE = "metadata.csv"


def list_found(path: Path, most: int = 20) -> str:
    """What a folder holds, for error messages: 'foo/, bar.txt' (folders marked with '/')."""
    if not path.exists():
        return "nothing (the path does not exist)"
    if not path.is_dir():
        return "a file, not a folder"
    names = sorted((e.name + "/" if e.is_dir() else e.name) for e in os.scandir(path))
    if not names:
        return "an empty folder"
    more = f", ... and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def resolve_split_dir(name: str, path: str | os.PathLike | None, required: list[str], candidates: list[str],
                      example: str) -> Path:
    """The first of ``path/candidate`` that holds every required folder; DatasetError saying what was found."""
    if path is None or str(path) == "":
        raise DatasetError(f"{name} needs a PATH, e.g. --dataset {name}:{example}")
    base = Path(path).expanduser().resolve()
    tried = []
    for rel in dict.fromkeys(candidates):  # keeps order, drops repeats
        here = base / rel if rel else base
        if all((here / r).is_dir() for r in required):
            return here
        tried.append(here)
    expected = ", ".join(r + "/" for r in required)
    # point at the closest match, so a half-built tree names the folder that is missing
    best = max(tried, key=lambda d: sum((d / r).is_dir() for r in required))
    present = sum((best / r).is_dir() for r in required)
    where = best if present else base
    others = [str(t) for t in tried if t != where]
    also = f" (also looked under {', '.join(others)})" if others else ""
    raise DatasetError(f"{name}: expected folders {expected} under {where}{also}; found: {list_found(where)}")


def audio_files(folder: Path, name: str) -> dict[str, Path]:
    """stem -> path for the audio files of one folder; DatasetError if a stem has two files (x.wav, x.flac)."""
    out: dict[str, Path] = {}
    for entry in os.scandir(folder):
        p = Path(entry.path)
        if p.suffix.lower() in AUDIO_SUFFIXES and entry.is_file():
            if p.stem in out:
                raise DatasetError(f"{name}: ambiguous files {out[p.stem].name} and {p.name} in {folder}")
            out[p.stem] = p
    return out


class PairedFolderSet(FileTestSet):
    """Mixtures in one folder, each reference in its own folder, partners matched by file name."""

    def __init__(self, name: str, split_dir: Path, mixture_dir: str, source_dirs: list[str], *,
                 roles: list[str] | None = None, partner: Callable[[str], str] = lambda stem: stem,
                 utt_id: Callable[[str], str] = lambda stem: stem,
                 name_metadata: Callable[[str], dict[str, Any]] = lambda stem: {},
                 metadata: str | None = None, settings: dict[str, Any] | None = None, **options: Any):
        mixtures = audio_files(split_dir / mixture_dir, name)
        if not mixtures:
            raise DatasetError(f"{name}: no .wav or .flac mixtures in {split_dir / mixture_dir};"
                               f" found: {list_found(split_dir / mixture_dir)}")
        sources = [audio_files(split_dir / d, name) for d in source_dirs]
        items = []
        for stem in sorted(mixtures, key=natural_key):
            mix = mixtures[stem]
            # a missing partner keeps its expected path, so load() names the file it looked for
            srcs = tuple(found.get(partner(stem), split_dir / d / (partner(stem) + mix.suffix))
                         for found, d in zip(sources, source_dirs))
            items.append(UttFiles(utt_id(stem), mix, srcs, tuple(roles or source_dirs), name_metadata(stem)))
        matched = {partner(stem) for stem in mixtures}
        self.orphan_sources = sum(len(set(found) - matched) for found in sources)
        meta_path = Path(metadata) if metadata else split_dir / METADATA_FILE
        if metadata and not meta_path.is_file():
            raise DatasetError(f"{name}: metadata file {meta_path} does not exist")
        if meta_path.is_file():
            rows = read_metadata_csv(meta_path, [it.id for it in items])
            items = [UttFiles(it.id, it.mixture, it.sources, it.roles, {**it.metadata, **rows.get(it.id, {})})
                     for it in items]
        settings = {"mixture_dir": mixture_dir, "source_dirs": list(source_dirs), **(settings or {})}
        super().__init__(name, split_dir, items, num_sources=len(source_dirs), settings=settings, **options)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["orphan_sources"] = self.orphan_sources  # references with no mixture: reported, not loaded
        return out


def _common(options: dict[str, Any]) -> dict[str, Any]:
    """The options every FileTestSet takes (the rest are layout options or ignored)."""
    keys = ("sample_rate", "resample", "limit", "fingerprint_mode", "metadata")
    return {k: options[k] for k in keys if k in options and options[k] is not None}


def _rate_candidates(rate: Any, sample_rate: Any) -> list[int]:
    """Rate folders to try: the one asked for, else the model's rate first, then 8k and 16k."""
    if rate is not None:
        return [parse_rate(rate)]
    first = as_int(sample_rate, "sample_rate", minimum=1)
    return list(dict.fromkeys(([first] if first is not None else []) + [8000, 16000]))


def _wsj_candidates(split: str, mode: str, rates: list[int], prefixes: list[str]) -> list[str]:
    """Where a split folder sits under a root, as the mixing scripts lay it out."""
    out = ["", split, f"{mode}/{split}"]
    for prefix in prefixes:
        out += [f"{prefix}{rate_folder(r)}/{mode}/{split}" for r in rates]
    return out


# ---------------------------------------------------------------------------------------- wsj0-mix

_WSJ_NAME = re.compile(r"^(?P<u1>[0-9a-z]{8})_(?P<g1>-?[0-9.]+)_(?P<u2>[0-9a-z]{8})_(?P<g2>-?[0-9.]+)"
                       r"(?:_(?P<u3>[0-9a-z]{8})_(?P<g3>-?[0-9.]+))?$")


def wsj_name_metadata(stem: str) -> dict[str, Any]:
    """Speakers and gains encoded in a wsj0-mix file name ('011a0101_0.06_401c020r_-0.06')."""
    m = _WSJ_NAME.match(stem)
    if not m:
        return {}
    utts = [u for u in (m["u1"], m["u2"], m["u3"]) if u]
    gains = [float(g) for g in (m["g1"], m["g2"], m["g3"]) if g]
    # wsj0 utterance ids start with the 3-character speaker id
    return {"speakers": ",".join(u[:3] for u in utts), "gains_db": ",".join(f"{g:g}" for g in gains)}


class Wsj0Mix(PairedFolderSet):
    """wsj0-{2,3}mix: ``wav8k|wav16k/min|max/{tr,cv,tt}/{mix,s1,s2[,s3]}`` (WAV or FLAC)."""

    def __init__(self, path: str | None = None, num_speakers: int | str = 2, split: str | None = None,
                 rate: Any = None, mode: str = "min", name: str | None = None, **options: Any):
        n = as_int(num_speakers, "num_speakers", minimum=1, default=2)
        name = name or f"wsj0-{n}mix"
        split = split or "tt"
        sources = [f"s{i}" for i in range(1, n + 1)]
        candidates = _wsj_candidates(split, mode, _rate_candidates(rate, options.get("sample_rate")),
                                     ["", f"{n}speakers/"])
        split_dir = resolve_split_dir(name, path, ["mix", *sources], candidates,
                                      f"/data/wsj0-mix/{n}speakers/wav8k/min/tt")
        super().__init__(name, split_dir, "mix", sources, name_metadata=wsj_name_metadata,
                         settings={"split": split, "mode": mode}, **_common(options))


def wsj0_2mix(path: str | None = None, **options: Any) -> Wsj0Mix:
    """``--dataset wsj0-2mix:PATH`` (the split folder, or a root plus split=/rate=/mode=)."""
    # the name fixes the speaker count; a num_speakers option passed as well would clash as a keyword
    return Wsj0Mix(path, **{**options, "num_speakers": 2})


def wsj0_3mix(path: str | None = None, **options: Any) -> Wsj0Mix:
    """``--dataset wsj0-3mix:PATH``."""
    return Wsj0Mix(path, **{**options, "num_speakers": 3})


# -------------------------------------------------------------------------------------------- WHAM!

WHAM_TARGETS = {"mix_clean": ["s1", "s2"], "mix_both": ["s1", "s2"], "mix_single": ["s1"]}


def _choose(name: str, option: str, value: str, choices: list[str]) -> str:
    if value not in choices:
        raise DatasetError(f"{name}: option {option}={value!r}; expected one of {', '.join(choices)}")
    return value


class Wham(PairedFolderSet):
    """WHAM!: ``wav8k/min/tt/{mix_clean,mix_both,mix_single,s1,s2,noise}``; variant picks the mixture."""

    def __init__(self, path: str | None = None, variant: str | None = None, split: str | None = None,
                 rate: Any = None, mode: str = "min", **options: Any):
        variant = _choose("wham", "variant", variant or "mix_both", list(WHAM_TARGETS))
        split = split or "tt"
        sources = WHAM_TARGETS[variant]
        candidates = _wsj_candidates(split, mode, _rate_candidates(rate, options.get("sample_rate")), [""])
        split_dir = resolve_split_dir("wham", path, [variant, *sources], candidates,
                                      "/data/wham/wav8k/min/tt")
        super().__init__("wham", split_dir, variant, sources,
                         settings={"variant": variant, "split": split, "mode": mode}, **_common(options))


WHAMR_VARIANTS = [f"mix_{kind}_{room}" for kind in ("both", "clean", "single") for room in ("reverb", "anechoic")]


class Whamr(PairedFolderSet):
    """WHAMR!: ``wav8k/min/tt/{mix_*_reverb, mix_*_anechoic, s{1,2}_anechoic, s{1,2}_reverb, noise}``.

    The references default to the anechoic sources (the standard separate-and-dereverberate task);
    ``targets=reverb`` scores against the reverberant sources instead.
    """

    def __init__(self, path: str | None = None, variant: str | None = None, targets: str = "anechoic",
                 split: str | None = None, rate: Any = None, mode: str = "min", **options: Any):
        variant = variant or "mix_both_reverb"
        if variant in WHAM_TARGETS:  # 'mix_both' means the reverberant mixture, as in the WHAMR! paper
            variant += "_reverb"
        variant = _choose("whamr", "variant", variant, WHAMR_VARIANTS)
        targets = _choose("whamr", "targets", targets, ["anechoic", "reverb"])
        split = split or "tt"
        speakers = WHAM_TARGETS[variant.rsplit("_", 1)[0]]
        sources = [f"{s}_{targets}" for s in speakers]
        candidates = _wsj_candidates(split, mode, _rate_candidates(rate, options.get("sample_rate")), [""])
        split_dir = resolve_split_dir("whamr", path, [variant, *sources], candidates,
                                      "/data/whamr/wav8k/min/tt")
        super().__init__("whamr", split_dir, variant, sources, roles=speakers,
                         settings={"variant": variant, "targets": targets, "split": split, "mode": mode},
                         **_common(options))


# -------------------------------------------------------------------------------- VoiceBank+DEMAND

VOICEBANK_SPLITS = {"test": "testset", "train28": "trainset_28spk", "train56": "trainset_56spk"}


class VoiceBank(PairedFolderSet):
    """VoiceBank+DEMAND: ``noisy_testset_wav/NAME.wav`` with ``clean_testset_wav/NAME.wav`` (S = 1).

    The originals are 48 kHz: give resample=true to run them through a 16 kHz model.
    """

    def __init__(self, path: str | None = None, split: str | None = None, name: str = "voicebank",
                 **options: Any):
        split = _choose(name, "split", split or "test", list(VOICEBANK_SPLITS))
        noisy, clean = f"noisy_{VOICEBANK_SPLITS[split]}_wav", f"clean_{VOICEBANK_SPLITS[split]}_wav"
        split_dir = resolve_split_dir(name, path, [noisy, clean], [""], "/data/voicebank-demand")
        super().__init__(name, split_dir, noisy, [clean], roles=["clean"], settings={"split": split},
                         **_common(options))


# ------------------------------------------------------------------------------------ DNS challenge

_DNS_FILEID = re.compile(r"fileid_(\d+)$")
_DNS_FIELDS = re.compile(r"_snr(?P<snr>-?\d+(?:\.\d+)?)_tl(?P<tl>-?\d+(?:\.\d+)?)_fileid_\d+$")


def dns_partner(stem: str) -> str:
    """'..._snr5_tl-30_fileid_12' -> 'clean_fileid_12' (names without a file id pair by equal name)."""
    m = _DNS_FILEID.search(stem)
    return f"clean_fileid_{m.group(1)}" if m else stem


def dns_id(stem: str) -> str:
    """The id of a DNS mixture: 'fileid_N' (stable even if the noisy file is renamed)."""
    m = _DNS_FILEID.search(stem)
    return f"fileid_{m.group(1)}" if m else stem


def dns_name_metadata(stem: str) -> dict[str, Any]:
    """SNR and target level that the DNS synthesizer writes into the noisy file name."""
    m = _DNS_FIELDS.search(stem)
    return {"snr_db": float(m["snr"]), "target_level_db": float(m["tl"])} if m else {}


class Dns(PairedFolderSet):
    """DNS-challenge synthetic test set: ``noisy/*_fileid_N.wav`` with ``clean/clean_fileid_N.wav``."""

    def __init__(self, path: str | None = None, variant: str | None = None, **options: Any):
        variant = variant or "no_reverb"
        candidates = ["", variant, f"synthetic/{variant}", f"test_set/synthetic/{variant}"]
        split_dir = resolve_split_dir("dns", path, ["noisy", "clean"], candidates,
                                      "/data/DNS-Challenge/datasets/test_set/synthetic/no_reverb")
        super().__init__("dns", split_dir, "noisy", ["clean"], partner=dns_partner, utt_id=dns_id,
                         name_metadata=dns_name_metadata, settings={"variant": variant}, **_common(options))


# -------------------------------------------------------------------------------------- demo sets

DEMO_ROOT = Path(__file__).resolve().parent / "demo"


def _demo_dir(path: str | None, folder: str, name: str) -> Path:
    where = Path(path) if path else DEMO_ROOT / folder
    if not where.is_dir():
        raise DatasetError(f"{name}: the bundled demo set is missing: expected a folder at {where}"
                           f" (reinstall exitbench, or give --dataset {name}:PATH)")
    return where


def demo(path: str | None = None, **options: Any) -> Wsj0Mix:
    """``--dataset demo``: the bundled two-speaker set (wsj0-2mix split layout, 8 kHz, metadata.csv)."""
    return Wsj0Mix(_demo_dir(path, "sep8k", "demo"), **{**options, "num_speakers": 2, "name": "demo"})


def demo_enhance(path: str | None = None, **options: Any) -> VoiceBank:
    """``--dataset demo-enhance``: the bundled enhancement set (VoiceBank layout, 16 kHz, metadata.csv)."""
    options.pop("name", None)
    options.pop("split", None)  # the demo holds the test split only
    return VoiceBank(_demo_dir(path, "enh16k", "demo-enhance"), name="demo-enhance", **options)
