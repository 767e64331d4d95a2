"""Loaders for the standard layouts, on small trees built from real VoiceBank+DEMAND speech."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import fftconvolve, resample_poly

from exitbench.datasets.base import DatasetError, UtteranceError
from exitbench.datasets.registry import DATASETS, open_testset

FIXTURES = Path(__file__).parent / "fixtures" / "voicebank"
NAMES = ["sample_000", "sample_001", "sample_007"]
WSJ_NAMES = ["011a0101_0.061105_401c020r_-0.061105", "020c020x_1.2_22ha010f_-1.2", "40na010x_2.5_052c0111_-2.5"]


def _read(path: Path) -> np.ndarray:
    x, rate = sf.read(path, dtype="float32")
    assert rate == 16000
    return x


@pytest.fixture(scope="module")
def speech() -> dict[str, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """name -> rate -> (clean, noise) from the fixture pairs, at 16 kHz and resampled to 8 kHz."""
    out = {}
    for name in NAMES:
        clean = _read(FIXTURES / "clean_testset_wav" / f"{name}.wav")
        noise = _read(FIXTURES / "noisy_testset_wav" / f"{name}.wav") - clean  # the real DEMAND noise
        out[name] = {16000: (clean, noise),
                     8000: (resample_poly(clean, 1, 2).astype(np.float32),
                            resample_poly(noise, 1, 2).astype(np.float32))}
    return out


def _write(path: Path, x: np.ndarray, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, rate, subtype="FLOAT" if path.suffix == ".wav" else "PCM_24")


def _pair(speech, i: int, rate: int, n_src: int = 2) -> tuple[list[np.ndarray], np.ndarray]:
    """n_src speakers cut to a common length (the 'min' mode of the mixing scripts), and a noise."""
    picks = [speech[NAMES[(i + k) % len(NAMES)]][rate] for k in range(n_src)]
    n = min(len(p[0]) for p in picks)
    return [0.5 * p[0][:n] for p in picks], picks[0][1][:n]


def make_wsj(root: Path, speech, n_src: int = 2, ext: str = ".wav", rate: int = 8000) -> Path:
    """wsj0-{n}mix: root/wav8k/min/tt/{mix,s1..sn}; returns the split folder."""
    split = root / f"wav{rate // 1000}k" / "min" / "tt"
    for i, stem in enumerate(WSJ_NAMES):
        srcs, _ = _pair(speech, i, rate, n_src)
        for k, s in enumerate(srcs, 1):
            _write(split / f"s{k}" / (stem + ext), s, rate)
        _write(split / "mix" / (stem + ext), np.sum(srcs, 0), rate)
    return split


def _ids_and_errors(ts) -> tuple[dict, dict]:
    good, bad = {}, {}
    for utt_id in ts.ids():
        try:
            good[utt_id] = ts.load(utt_id)
        except UtteranceError as exc:
            assert exc.utt_id == utt_id
            bad[utt_id] = exc.reason
    return good, bad


# ----------------------------------------------------------------------------------- registration

def test_every_layout_is_registered():
    for name in ["wsj0-2mix", "wsj0-3mix", "wham", "whamr", "librimix", "voicebank", "dns", "manifest",
                 "demo", "demo-enhance", "synthetic"]:
        assert name in DATASETS
        assert callable(DATASETS.get(name))


# ----------------------------------------------------------------------------------------- wsj0-mix

@pytest.mark.parametrize("n_src", [2, 3])
def test_wsj0_mix_root_and_split_forms(tmp_path, speech, n_src):
    split = make_wsj(tmp_path / "data", speech, n_src)
    from_split = open_testset(f"wsj0-{n_src}mix:{split}", sample_rate=8000)
    from_root = open_testset(f"wsj0-{n_src}mix:{tmp_path / 'data'}", sample_rate=8000, split="tt",
                             rate="8k", mode="min")
    assert from_split.ids() == from_root.ids() == sorted(WSJ_NAMES)
    assert from_split.num_sources == n_src and from_split.sample_rate == 8000
    # the same data reached two ways is the same test set
    assert from_split.fingerprint() == from_root.fingerprint()
    utt = from_split.load(WSJ_NAMES[0])
    assert utt.sources.shape == (n_src, utt.num_samples) and utt.sample_rate == 8000
    np.testing.assert_allclose(utt.mixture, utt.sources.sum(0), atol=1e-6)
    assert utt.metadata["gains_db"] == "0.061105,-0.061105"
    assert utt.metadata["speakers"] == "011,401"
    assert open_testset(f"wsj0-{n_src}mix:{split}", limit=2).ids() == sorted(WSJ_NAMES)[:2]


def test_testsets_pickle_for_workers(tmp_path, speech):
    import pickle

    ts = open_testset(f"wsj0-2mix:{make_wsj(tmp_path, speech)}", sample_rate=8000)
    clone = pickle.loads(pickle.dumps(ts))  # Ray ships the test set to its workers
    assert clone.ids() == ts.ids() and clone.fingerprint() == ts.fingerprint()
    np.testing.assert_array_equal(clone.load(WSJ_NAMES[0]).mixture, ts.load(WSJ_NAMES[0]).mixture)


def test_wsj0_reads_flac(tmp_path, speech):
    split = make_wsj(tmp_path, speech, 2, ext=".flac")
    ts = open_testset(f"wsj0-2mix:{split}", sample_rate=8000)
    good, bad = _ids_and_errors(ts)
    assert not bad and len(good) == 3
    utt = good[WSJ_NAMES[1]]
    np.testing.assert_allclose(utt.mixture, utt.sources.sum(0), atol=1e-4)  # 24-bit rounding


def test_wrong_root_names_expected_and_found(tmp_path):
    (tmp_path / "foo").mkdir()
    (tmp_path / "bar.txt").write_text("x")
    with pytest.raises(DatasetError) as info:
        open_testset(f"wsj0-2mix:{tmp_path}")
    msg = str(info.value)
    assert "expected folders mix/, s1/, s2/" in msg and "found: bar.txt, foo/" in msg
    with pytest.raises(DatasetError, match="does not exist"):
        open_testset(f"voicebank:{tmp_path / 'nowhere'}")
    with pytest.raises(DatasetError, match="needs a PATH"):
        open_testset("wham")


def test_half_built_tree_points_at_missing_folder(tmp_path, speech):
    split = make_wsj(tmp_path, speech, 2)
    shutil.rmtree(split / "s2")
    with pytest.raises(DatasetError) as info:
        open_testset(f"wsj0-2mix:{tmp_path}")
    assert f"under {split}" in str(info.value) and "found: mix/, s1/" in str(info.value)


def test_empty_mixture_folder_fails_fast(tmp_path):
    for d in ("mix", "s1", "s2"):
        (tmp_path / d).mkdir()
    (tmp_path / "mix" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"no \.wav or \.flac mixtures .*found: notes\.txt"):
        open_testset(f"wsj0-2mix:{tmp_path}")


# ------------------------------------------------------------------------------------- bad inputs

@pytest.fixture
def bad_tree(tmp_path, speech) -> Path:
    """A wsj0-2mix split with three good utterances and one broken utterance per failure kind."""
    split = make_wsj(tmp_path, speech, 2)
    srcs, _ = _pair(speech, 0, 8000)
    mix = np.sum(srcs, 0)

    def utt(stem, mix_=mix, s1=srcs[0], s2=srcs[1], rate1=8000):
        _write(split / "mix" / f"{stem}.wav", mix_, 8000)
        _write(split / "s1" / f"{stem}.wav", s1, rate1)
        if s2 is not None:
            _write(split / "s2" / f"{stem}.wav", s2, 8000)

    utt("bad_missing", s2=None)
    utt("bad_rate", s1=resample_poly(srcs[0], 2, 1).astype(np.float32), rate1=16000)
    utt("bad_stereo", mix_=np.stack([mix, mix], 1))
    utt("bad_length", s2=srcs[1][:-100])
    utt("bad_silent", s2=np.zeros_like(srcs[1]))
    utt("bad_truncated")
    data = (split / "s1" / "bad_truncated.wav").read_bytes()
    (split / "s1" / "bad_truncated.wav").write_bytes(data[: len(data) // 2])
    utt("bad_garbage")
    (split / "mix" / "bad_garbage.wav").write_bytes(b"RIFF\x00\x00not audio at all" * 10)
    utt("bad_flac")
    _write(split / "s2" / "bad_flac.flac", srcs[1], 8000)
    (split / "s2" / "bad_flac.wav").unlink()
    data = (split / "s2" / "bad_flac.flac").read_bytes()
    (split / "s2" / "bad_flac.flac").write_bytes(data[: len(data) // 2])
    return split


def test_each_bad_input_gives_its_reason_and_the_rest_load(bad_tree):
    ts = open_testset(f"wsj0-2mix:{bad_tree}", sample_rate=8000)
    assert len(ts.ids()) == 11  # ids() lists broken files too: it decodes nothing
    good, bad = _ids_and_errors(ts)
    assert sorted(good) == sorted(WSJ_NAMES)
    assert bad["bad_missing"] == "missing s2 file s2/bad_missing.wav"
    assert bad["bad_rate"] == ("s1 file s1/bad_rate.wav is 16000 Hz but the model runs at 8000 Hz;"
                               " pass resample=true to resample it")
    assert bad["bad_stereo"] == "mixture file mix/bad_stereo.wav has 2 channels; expected mono"
    assert bad["bad_length"].startswith("length mismatch: mix/bad_length.wav has ")
    assert "s2/bad_length.wav has" in bad["bad_length"] and "s1/" not in bad["bad_length"]
    assert bad["bad_silent"] == "all-silent reference s2/bad_silent.wav"
    assert bad["bad_truncated"].startswith("s1 file s1/bad_truncated.wav: truncated WAV: data chunk declares")
    assert bad["bad_garbage"].startswith("unreadable or truncated mixture file mix/bad_garbage.wav")
    assert bad["bad_flac"].startswith("unreadable or truncated s2 file s2/bad_flac.flac")


def test_rate_mismatch_resamples_when_asked(bad_tree):
    ts = open_testset(f"wsj0-2mix:{bad_tree}", sample_rate=8000, resample="true", limit=None)
    utt = ts.load("bad_rate")
    assert utt.sample_rate == 8000 and utt.sources.shape == (2, utt.num_samples)
    reference = open_testset(f"wsj0-2mix:{bad_tree}", sample_rate=8000).load(WSJ_NAMES[0])
    err = utt.sources[0] - reference.sources[0]
    # 8k -> 16k -> 8k through resample_poly round-trips speech to well above 30 dB
    assert 10 * np.log10(np.sum(reference.sources[0] ** 2) / np.sum(err**2)) > 30


def test_unknown_id_is_an_utterance_error(tmp_path, speech):
    ts = open_testset(f"wsj0-2mix:{make_wsj(tmp_path, speech)}")
    with pytest.raises(UtteranceError, match="not an utterance of wsj0-2mix"):
        ts.load("nope")


def test_resample_matches_scipy_default():
    from exitbench.datasets.audio import resample

    x = np.random.default_rng(1).standard_normal(4801).astype(np.float32)
    for orig, target, up, down in ((48000, 16000, 1, 3), (16000, 8000, 1, 2), (8000, 16000, 2, 1),
                                   (44100, 16000, 160, 441)):
        y = resample(x, orig, target)
        assert y.dtype == np.float32
        np.testing.assert_array_equal(y, resample_poly(x, up, down))


# ------------------------------------------------------------------------------------ fingerprints

def test_fingerprint_stable_across_copies_and_changes_with_content(tmp_path, speech):
    a = make_wsj(tmp_path / "a", speech)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    b = tmp_path / "b" / a.relative_to(tmp_path / "a")
    fa = open_testset(f"wsj0-2mix:{a}").fingerprint()
    assert fa == open_testset(f"wsj0-2mix:{b}").fingerprint()
    assert fa == open_testset(f"wsj0-2mix:{a}").fingerprint()  # deterministic
    f = b / "s2" / f"{WSJ_NAMES[1]}.wav"
    data = bytearray(f.read_bytes())
    data[-1] ^= 1  # one bit of one sample, same size
    f.write_bytes(bytes(data))
    assert open_testset(f"wsj0-2mix:{b}").fingerprint() != fa
    # stat mode: cheap, follows size and mtime (copy2 keeps mtimes)
    sa = open_testset(f"wsj0-2mix:{a}", fingerprint_mode="stat").fingerprint()
    assert sa != fa and sa == open_testset(f"wsj0-2mix:{a}", fingerprint_mode="stat").fingerprint()
    assert open_testset(f"wsj0-2mix:{a}", limit=2).fingerprint() != fa
    with pytest.raises(DatasetError, match="fingerprint_mode"):
        open_testset(f"wsj0-2mix:{a}", fingerprint_mode="fast")


def test_fingerprint_follows_metadata(tmp_path, speech):
    split = make_wsj(tmp_path, speech)
    before = open_testset(f"wsj0-2mix:{split}").fingerprint()
    (split / "metadata.csv").write_text("id,snr\n" + "".join(f"{n},{i}\n" for i, n in enumerate(WSJ_NAMES)))
    ts = open_testset(f"wsj0-2mix:{split}")
    assert ts.fingerprint() != before
    assert ts.load(WSJ_NAMES[2]).metadata["snr"] == 2


# -------------------------------------------------------------------------------------- WHAM! / WHAMR!

def make_wham(root: Path, speech, reverb: bool) -> Path:
    split = root / "wav8k" / "min" / "tt"
    ir = np.exp(-np.arange(800) / 160.0) * np.random.default_rng(0).standard_normal(800) * 0.1
    ir[0] = 1.0
    for i, stem in enumerate(WSJ_NAMES):
        (s1, s2), noise = _pair(speech, i, 8000)
        n = len(s1)
        rev = [fftconvolve(s, ir)[:n].astype(np.float32) for s in (s1, s2)]
        if reverb:
            folders = {"s1_anechoic": s1, "s2_anechoic": s2, "s1_reverb": rev[0], "s2_reverb": rev[1], "noise": noise,
                       "mix_clean_anechoic": s1 + s2, "mix_both_anechoic": s1 + s2 + noise,
                       "mix_single_anechoic": s1 + noise, "mix_clean_reverb": rev[0] + rev[1],
                       "mix_both_reverb": rev[0] + rev[1] + noise, "mix_single_reverb": rev[0] + noise}
        else:
            folders = {"s1": s1, "s2": s2, "noise": noise, "mix_clean": s1 + s2, "mix_both": s1 + s2 + noise,
                       "mix_single": s1 + noise}
        for folder, x in folders.items():
            _write(split / folder / f"{stem}.wav", x, 8000)
    return split


def test_wham_variants(tmp_path, speech):
    make_wham(tmp_path, speech, reverb=False)
    both = open_testset(f"wham:{tmp_path}", sample_rate=8000)  # default: the noisy task
    utt = both.load(WSJ_NAMES[0])
    noise = sf.read(tmp_path / "wav8k/min/tt/noise" / f"{WSJ_NAMES[0]}.wav", dtype="float32")[0]
    np.testing.assert_allclose(utt.mixture, utt.sources.sum(0) + noise, atol=1e-5)
    clean = open_testset(f"wham:{tmp_path}", variant="mix_clean").load(WSJ_NAMES[0])
    np.testing.assert_allclose(clean.mixture, clean.sources.sum(0), atol=1e-5)
    single = open_testset(f"wham:{tmp_path}", variant="mix_single")
    assert single.num_sources == 1 and single.load(WSJ_NAMES[1]).sources.shape[0] == 1
    assert len({both.fingerprint(), single.fingerprint()}) == 2
    with pytest.raises(DatasetError, match="variant='mix_dirty'; expected one of mix_clean"):
        open_testset(f"wham:{tmp_path}", variant="mix_dirty")


def test_whamr_reverberant_mixture_anechoic_targets(tmp_path, speech):
    split = make_wham(tmp_path, speech, reverb=True)
    ts = open_testset(f"whamr:{split}")
    assert ts.describe()["mixture_dir"] == "mix_both_reverb"
    assert ts.describe()["source_dirs"] == ["s1_anechoic", "s2_anechoic"]
    utt = ts.load(WSJ_NAMES[0])
    s1 = sf.read(split / "s1_anechoic" / f"{WSJ_NAMES[0]}.wav", dtype="float32")[0]
    np.testing.assert_array_equal(utt.sources[0], s1)
    rev = open_testset(f"whamr:{split}", variant="mix_clean", targets="reverb").load(WSJ_NAMES[0])
    np.testing.assert_allclose(rev.mixture, rev.sources.sum(0), atol=1e-5)  # 'mix_clean' -> reverb mixture
    single = open_testset(f"whamr:{tmp_path}", variant="mix_single_anechoic")
    assert single.num_sources == 1
    with pytest.raises(DatasetError, match="expected folders mix_both_reverb/"):
        open_testset(f"whamr:{tmp_path / 'wav8k' / 'min'}", split="cv")


# ------------------------------------------------------------------------------------------ LibriMix

def make_librimix(root: Path, speech, relative: bool) -> Path:
    """Libri2Mix/wav8k/min/{test/..., metadata/mixture_test_mix_{clean,both,single}.csv}; returns wav8k/min."""
    base = root / "Libri2Mix" / "wav8k" / "min"
    rows = {v: [] for v in ("mix_clean", "mix_both", "mix_single")}
    stems = ["61-70968-0000_8455-210777-0012", "61-70968-0003_2830-3980-0043", "121-123-0000_237-134-0001"]
    for i, stem in enumerate(stems):
        (s1, s2), noise = _pair(speech, i, 8000)
        parts = {"s1": s1, "s2": s2, "noise": noise, "mix_clean": s1 + s2, "mix_both": s1 + s2 + noise,
                 "mix_single": s1 + noise}
        for folder, x in parts.items():
            _write(base / "test" / folder / f"{stem}.wav", x, 8000)

        def p(folder):
            path = base / "test" / folder / f"{stem}.wav"
            return str(path.relative_to(base)) if relative else str(path)
        rows["mix_clean"].append([stem, p("mix_clean"), p("s1"), p("s2"), len(s1)])
        rows["mix_both"].append([stem, p("mix_both"), p("s1"), p("s2"), p("noise"), len(s1)])
        rows["mix_single"].append([stem, p("mix_single"), p("s1"), p("noise"), len(s1)])
    heads = {"mix_clean": "mixture_ID,mixture_path,source_1_path,source_2_path,length",
             "mix_both": "mixture_ID,mixture_path,source_1_path,source_2_path,noise_path,length",
             "mix_single": "mixture_ID,mixture_path,source_1_path,noise_path,length"}
    (base / "metadata").mkdir(parents=True)
    for v, rs in rows.items():
        text = heads[v] + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rs)
        (base / "metadata" / f"mixture_test_{v}.csv").write_text(text)
    return base


def test_librimix_absolute_paths_variants_and_relocation(tmp_path, speech):
    make_librimix(tmp_path / "a", speech, relative=False)
    ts = open_testset(f"librimix:{tmp_path / 'a'}", sample_rate=8000)  # finds Libri2Mix/wav8k/min/metadata
    assert ts.ids() == ["61-70968-0000_8455-210777-0012", "61-70968-0003_2830-3980-0043",
                        "121-123-0000_237-134-0001"]  # the CSV's order
    utt = ts.load(ts.ids()[0])
    assert utt.metadata == {"length": utt.num_samples}  # noise_path and paths stay out of the metadata
    np.testing.assert_allclose(utt.mixture, utt.sources.sum(0), atol=1e-5)
    both = open_testset(f"librimix:{tmp_path / 'a'}", variant="mix_both")
    assert both.num_sources == 2 and "noise_path" not in both.load(ts.ids()[1]).metadata
    assert open_testset(f"librimix:{tmp_path / 'a'}", variant="mix_single").num_sources == 1
    # the whole tree moved: absolute paths in the CSVs are relocated onto the new root
    before = ts.fingerprint()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")
    moved = open_testset(f"librimix:{tmp_path / 'b' / 'Libri2Mix' / 'wav8k' / 'min'}")
    assert moved.describe()["relocated"] == {str(tmp_path / "a/Libri2Mix/wav8k/min"):
                                             str(tmp_path / "b/Libri2Mix/wav8k/min")}
    assert moved.fingerprint() == before
    assert moved.load(ts.ids()[2]).num_samples > 0


def test_librimix_relative_paths(tmp_path, speech):
    base = make_librimix(tmp_path, speech, relative=True)
    ts = open_testset(f"librimix:{base / 'metadata' / 'mixture_test_mix_both.csv'}")
    good, bad = _ids_and_errors(ts)
    assert not bad and len(good) == 3 and ts.root == base
    with pytest.raises(DatasetError, match="expected mixture_test_mix_clean.csv under"):
        open_testset(f"librimix:{tmp_path / 'Libri2Mix'}", rate="16k")


# ----------------------------------------------------------------------------------------- VoiceBank

def test_voicebank_native_16k(tmp_path):
    ts = open_testset(f"voicebank:{FIXTURES}", sample_rate=16000)
    assert ts.ids() == NAMES and ts.num_sources == 1
    good, bad = _ids_and_errors(ts)
    assert not bad
    utt = good["sample_001"]
    np.testing.assert_array_equal(utt.sources[0], _read(FIXTURES / "clean_testset_wav" / "sample_001.wav"))
    assert open_testset(f"voicebank:{FIXTURES}").sample_rate == 16000  # no model rate: the set's own


def test_voicebank_48k_originals_resample_or_refuse(tmp_path):
    for d in ("clean_testset_wav", "noisy_testset_wav"):
        for name in NAMES:
            x = _read(FIXTURES / d / f"{name}.wav")
            _write(tmp_path / d / f"{name}.wav", resample_poly(x, 3, 1).astype(np.float32), 48000)
    refuse = open_testset(f"voicebank:{tmp_path}", sample_rate=16000)
    with pytest.raises(UtteranceError, match="is 48000 Hz but the model runs at 16000 Hz; pass resample=true"):
        refuse.load("sample_000")
    ts = open_testset(f"voicebank:{tmp_path}", sample_rate=16000, resample=True)
    utt = ts.load("sample_000")
    original = _read(FIXTURES / "clean_testset_wav" / "sample_000.wav")
    assert utt.sample_rate == 16000 and utt.num_samples == len(original)
    err = utt.sources[0] - original
    assert 10 * np.log10(np.sum(original**2) / np.sum(err**2)) > 30


# ----------------------------------------------------------------------------------------------- DNS

def test_dns_fileid_pairing(tmp_path, speech):
    root = tmp_path / "test_set" / "synthetic" / "no_reverb"
    for k, name in zip([10, 2, 7], NAMES):
        clean, noise = speech[name][16000]
        noisy = f"clnsp{k}_AirConditioner_{k}_snr{k - 5}_tl-25_fileid_{k}.wav"
        _write(root / "noisy" / noisy, clean + noise, 16000)
        _write(root / "clean" / f"clean_fileid_{k}.wav", clean, 16000)
    ts = open_testset(f"dns:{tmp_path / 'test_set'}", sample_rate=16000)
    assert ts.ids() == ["fileid_2", "fileid_7", "fileid_10"]  # numeric order
    utt = ts.load("fileid_10")
    assert utt.metadata == {"snr_db": 5.0, "target_level_db": -25.0}
    np.testing.assert_allclose(utt.sources[0], speech[NAMES[0]][16000][0], atol=1e-6)
    (root / "clean" / "clean_fileid_7.wav").unlink()
    with pytest.raises(UtteranceError, match="missing clean file clean/clean_fileid_7.wav"):
        open_testset(f"dns:{root}").load("fileid_7")


# ------------------------------------------------------------------------------------------ manifest

def test_manifest_csv_and_jsonl(tmp_path, speech):
    split = make_wsj(tmp_path / "audio", speech)
    lines = ["id,mixture,source_1,source_2,snr_db,gender"]
    for i, stem in enumerate(WSJ_NAMES):
        rel = split.relative_to(tmp_path)
        lines.append(f"u{i},{rel}/mix/{stem}.wav,{rel}/s1/{stem}.wav,{split}/s2/{stem}.wav,{i * 1.5},{'mf'[i % 2]}")
    (tmp_path / "test.csv").write_text("\n".join(lines) + "\n")
    ts = open_testset(f"manifest:{tmp_path / 'test.csv'}", sample_rate=8000)
    assert ts.ids() == ["u0", "u1", "u2"] and ts.num_sources == 2
    utt = ts.load("u1")
    assert utt.metadata == {"snr_db": 1.5, "gender": "f"}
    np.testing.assert_allclose(utt.mixture, utt.sources.sum(0), atol=1e-6)

    with open(tmp_path / "test.jsonl", "w") as fh:
        for i, stem in enumerate(WSJ_NAMES):
            fh.write(json.dumps({"id": f"j{i}", "mixture": f"{split}/mix/{stem}.wav",
                                 "sources": [f"{split}/s1/{stem}.wav", f"{split}/s2/{stem}.wav"],
                                 "room": i}) + "\n")
    js = open_testset(f"manifest:{tmp_path / 'test.jsonl'}")
    assert js.load("j2").metadata == {"room": 2} and js.load("j2").sources.shape[0] == 2

    (tmp_path / "bad.csv").write_text("id,wav\nx,a.wav\n")
    with pytest.raises(DatasetError, match="needs a mixture column .* found columns: id, wav"):
        open_testset(f"manifest:{tmp_path / 'bad.csv'}")
    (tmp_path / "gone.csv").write_text("id,mixture,source_1\nx,nowhere/a.wav,nowhere/b.wav\n")
    with pytest.raises(DatasetError, match="manifest paths do not resolve"):
        open_testset(f"manifest:{tmp_path / 'gone.csv'}")


# ---------------------------------------------------------------------------------------------- demo

def test_demo_layouts_on_fixture_trees(tmp_path, speech):
    sep = make_wsj(tmp_path, speech, ext=".flac")
    (sep / "metadata.csv").write_text("id,speaker1,input_snr\n"
                                      + "".join(f"{n},spk{i},{i - 1.5}\n" for i, n in enumerate(WSJ_NAMES)))
    ts = open_testset(f"demo:{sep}")
    assert ts.name == "demo" and ts.sample_rate == 8000
    assert ts.load(WSJ_NAMES[1]).metadata["input_snr"] == -0.5
    enh = tmp_path / "enh16k"
    shutil.copytree(FIXTURES, enh)
    (enh / "metadata.csv").write_text("id,noise_type\nsample_000,cafe\nsample_001,bus\nsample_007,street\n")
    e = open_testset(f"demo-enhance:{enh}")
    assert e.name == "demo-enhance" and e.sample_rate == 16000
    assert e.load("sample_007").metadata == {"noise_type": "street"}


def test_bundled_demo_sets_load():
    from exitbench.datasets.folders import DEMO_ROOT

    if not (DEMO_ROOT / "sep8k").is_dir() or not (DEMO_ROOT / "enh16k").is_dir():
        pytest.skip("bundled demo audio not built")
    for name, rate, n_src in (("demo", 8000, 2), ("demo-enhance", 16000, 1)):
        ts = open_testset(name)
        assert ts.sample_rate == rate and ts.num_sources == n_src
        good, bad = _ids_and_errors(ts)
        assert not bad, bad
        assert all(u.metadata for u in good.values())  # metadata.csv joined to every utterance
