"""The bundled demo sets (exitbench/datasets/demo) and the corpus builder's speaker split."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "exitbench" / "datasets" / "demo"
SEP = DEMO / "sep8k"
ENH = DEMO / "enh16k"
AUDIO_EXT = (".wav", ".flac")


def _load_script(name: str):
    """Import scripts/<name>.py as a module (scripts/ is not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    path = ROOT / "scripts" / f"{name}.py"
    sys.path.insert(0, str(path.parent))  # build_corpus imports build_demo_sets
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses look their module up in sys.modules
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        sys.path.remove(str(path.parent))
    return mod


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _ids(folder: Path) -> set[str]:
    return {p.stem for p in folder.iterdir() if p.suffix in AUDIO_EXT}


def _read(folder: Path, utt: str) -> tuple[np.ndarray, int]:
    (path,) = [folder / f"{utt}{ext}" for ext in AUDIO_EXT if (folder / f"{utt}{ext}").exists()]
    x, sr = sf.read(str(path), dtype="float64", always_2d=True)
    assert x.shape[1] == 1, f"{path} is not mono"
    return x[:, 0], sr


def test_demo_total_size_under_budget():
    total = sum(f.stat().st_size for f in DEMO.rglob("*") if f.is_file())
    assert 0 < total <= 4.5e6, f"demo folder is {total / 1e6:.2f} MB"


def test_sep8k_files_rates_lengths_and_sum():
    rows = _rows(SEP / "metadata.csv")
    ids = {r["id"] for r in rows}
    assert len(rows) == len(ids) >= 20
    for sub in ("mix", "s1", "s2"):
        assert _ids(SEP / sub) == ids, f"{sub}/ does not match metadata.csv"
    for r in rows:
        mix, sr = _read(SEP / "mix", r["id"])
        s1, sr1 = _read(SEP / "s1", r["id"])
        s2, sr2 = _read(SEP / "s2", r["id"])
        assert sr == sr1 == sr2 == 8000
        assert len(mix) == len(s1) == len(s2)
        assert len(mix) / sr == pytest.approx(float(r["duration"]), abs=1e-3)
        assert 3.0 <= len(mix) / sr <= 5.0
        # The mixture was written as the integer sum of the int16 sources: exact up to float rounding.
        np.testing.assert_allclose(s1 + s2, mix, rtol=0, atol=1e-9)
        assert np.abs(mix).max() < 0.99, "mixture clips"
        snr = 10 * np.log10(np.sum(s1**2) / np.sum(s2**2))
        assert snr == pytest.approx(float(r["input_snr"]), abs=0.01)
        assert -5.0 <= float(r["gain_db"]) <= 5.0
        assert r["speaker1"] != r["speaker2"]


def test_enh16k_files_rates_and_snr():
    rows = _rows(ENH / "metadata.csv")
    ids = {r["id"] for r in rows}
    assert len(rows) == len(ids) >= 12
    assert _ids(ENH / "clean_testset_wav") == ids == _ids(ENH / "noisy_testset_wav")
    snrs = []
    for r in rows:
        clean, sr = _read(ENH / "clean_testset_wav", r["id"])
        noisy, sr2 = _read(ENH / "noisy_testset_wav", r["id"])
        assert sr == sr2 == 16000
        assert len(clean) == len(noisy)
        assert len(clean) / sr == pytest.approx(float(r["duration"]), abs=1e-3)
        measured = 10 * np.log10(np.sum(clean**2) / np.sum((noisy - clean) ** 2))
        assert measured == pytest.approx(float(r["snr_db"]), abs=0.2), r["id"]
        assert np.abs(noisy).max() < 0.99
        snrs.append(float(r["snr_db"]))
    assert min(snrs) <= -4 and max(snrs) >= 14, "SNRs should span -5..15 dB"
    assert len({r["noise_type"] for r in rows}) >= 5


def test_demo_speakers_in_metadata_are_the_declared_ones():
    demo = _load_script("build_demo_sets")
    keys = {v.key for v in demo.DEMO_VOICES}
    sep = _rows(SEP / "metadata.csv")
    assert {r["speaker1"] for r in sep} | {r["speaker2"] for r in sep} == keys
    assert {r["speaker"] for r in _rows(ENH / "metadata.csv")} <= keys


def test_corpus_split_is_speaker_disjoint_and_excludes_demo():
    corpus = _load_script("build_corpus")
    demo = _load_script("build_demo_sets")
    split = corpus.split_speakers(corpus.TRAIN_VOICES, valid_per_family=1)
    train_groups = {v.group for v in split["train"]}
    valid_groups = {v.group for v in split["valid"]}
    assert train_groups and valid_groups
    assert not train_groups & valid_groups
    assert not (train_groups | valid_groups) & demo.DEMO_GROUPS
    # Voices of one underlying speaker (e.g. flite 'kal' and festival 'kal_diphone') stay together.
    assert {v.key for v in split["train"]} | {v.key for v in split["valid"]} == {v.key for v in corpus.TRAIN_VOICES}
    assert split == corpus.split_speakers(corpus.TRAIN_VOICES, valid_per_family=1), "not deterministic"
    # the larger corpus: at least 40 speaker groups, real recorded voices among them, one of them held out
    assert len(train_groups | valid_groups) >= 40
    real = {v.group for v in corpus.TRAIN_VOICES if v.kind == "real"}
    assert len(real) >= 4 and real & valid_groups and real & train_groups


def test_corpus_split_rejects_demo_speaker():
    corpus = _load_script("build_corpus")
    demo = _load_script("build_demo_sets")
    with pytest.raises(ValueError, match="demo"):
        corpus.split_speakers(list(corpus.TRAIN_VOICES) + [demo.DEMO_VOICES[0]], valid_per_family=1)
