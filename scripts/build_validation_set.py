#!/usr/bin/env python3
"""A validation set of two-speaker 8 kHz mixtures from the training corpus's held-out speakers.

    python scripts/build_validation_set.py --corpus .corpus-gpu --out .valid8k --count 60

A learned router (``exitbench fit-router``) must be fitted on a recording other than the test set it
is judged on; this builds one in the wsj0-2mix layout of the demo set (``mix/s1/s2``, 'min' mode,
s1 vs s2 level in ±5 dB, the demo's mixture level), from ``<corpus>/8k/speech/valid/`` (see
scripts/build_corpus.py): speaker groups disjoint from the corpus's train split and from every demo
speaker. Record it with ``exitbench run -d wsj0-2mix:.valid8k``. Not committed: the corpus holds
non-commercial voices (MBROLA, RHVoice).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_demo_sets as demo  # noqa: E402  (the demo's mixing constants and writers)


def build(corpus: Path, out: Path, count: int, seed: int) -> list[dict]:
    """Write ``count`` mixtures of two different held-out speakers; returns the metadata rows."""
    root = corpus / "8k" / "speech" / "valid"
    speakers = {d.name: sorted(p for p in d.iterdir() if p.is_file()) for d in sorted(root.iterdir()) if d.is_dir()}
    speakers = {k: v for k, v in speakers.items() if v}
    if len(speakers) < 2:
        raise SystemExit(f"{root} holds fewer than two speaker groups: build the corpus first")
    names = sorted(speakers)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        a, b = rng.choice(len(names), size=2, replace=False)
        fa, fb = (speakers[names[a]][rng.integers(len(speakers[names[a]]))],
                  speakers[names[b]][rng.integers(len(speakers[names[b]]))])
        s1, sr1 = sf.read(fa, dtype="float64")
        s2, sr2 = sf.read(fb, dtype="float64")
        assert sr1 == sr2 == demo.SEP_SR, (fa, sr1, fb, sr2)
        n = min(len(s1), len(s2), int(4.5 * demo.SEP_SR))
        s1, s2 = s1[:n] / demo.rms(s1[:n]), s2[:n] / demo.rms(s2[:n])
        gain = float(rng.uniform(-5.0, 5.0))
        s1, s2 = s1 * 10 ** (gain / 40), s2 * 10 ** (-gain / 40)
        mix = s1 + s2
        scale = min(10 ** (demo.MIX_LEVEL_DBFS / 20) / demo.rms(mix), demo.PEAK_LIMIT / np.abs(mix).max())
        q1, q2 = demo.to_int16(s1 * scale), demo.to_int16(s2 * scale)
        qm = q1.astype(np.int32) + q2.astype(np.int32)
        if np.abs(qm).max() > 32767:
            continue
        utt = f"v{i:03d}_{names[a]}_{names[b]}"
        demo.write_audio(out / "mix" / f"{utt}.flac", qm.astype(np.int16), demo.SEP_SR)
        demo.write_audio(out / "s1" / f"{utt}.flac", q1, demo.SEP_SR)
        demo.write_audio(out / "s2" / f"{utt}.flac", q2, demo.SEP_SR)
        rows.append({"id": utt, "speaker1": names[a], "speaker2": names[b], "gain_db": round(gain, 3),
                     "duration": round(n / demo.SEP_SR, 4), "input_snr": round(demo.snr_db(q1, q2), 3)})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=Path(".corpus-gpu"))
    ap.add_argument("--out", type=Path, default=Path(".valid8k"))
    ap.add_argument("--count", type=int, default=60)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    rows = build(args.corpus, args.out, args.count, args.seed)
    demo.write_csv(args.out / "metadata.csv", rows)
    print(f"{len(rows)} mixtures in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
