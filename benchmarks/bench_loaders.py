"""Read-and-resample throughput of the file loaders against plain soundfile reads of the same files.

Three cases: VoiceBank-style 48 kHz originals read for a 16 kHz model, and a wsj0-2mix split at
16 kHz read for an 8 kHz model, and the same split read at its own rate (the cost of the checks
alone). For each, three timings over the same files (best of --repeats):
  plain      soundfile.read of every mixture and reference (no checks, no resampling)
  plain+rs   the same plus scipy.signal.resample_poly: the least work the task needs
  loader     TestSet.load for every id (all checks, resampling, Utterance.validate)
and the ratios loader/plain and loader/(plain+rs). Run: python benchmarks/bench_loaders.py
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from exitbench.datasets.registry import open_testset

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "voicebank"


def _speech() -> list[tuple[np.ndarray, np.ndarray]]:
    """(clean, noisy) 16 kHz pairs from the test fixtures (real VoiceBank+DEMAND audio)."""
    pairs = []
    for clean in sorted((FIXTURES / "clean_testset_wav").glob("*.wav")):
        c, _ = sf.read(clean, dtype="float32")
        n, _ = sf.read(FIXTURES / "noisy_testset_wav" / clean.name, dtype="float32")
        pairs.append((c, n))
    return pairs


def build_voicebank48(root: Path, count: int) -> None:
    """noisy_testset_wav/ + clean_testset_wav/ at 48 kHz, 16-bit, as the originals are."""
    pairs = _speech()
    for i in range(count):
        clean, noisy = pairs[i % len(pairs)]
        for folder, x in (("clean_testset_wav", clean), ("noisy_testset_wav", noisy)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            sf.write(root / folder / f"p{i:04d}.wav", resample_poly(x, 3, 1), 48000, subtype="PCM_16")


def build_wsj16(root: Path, count: int) -> None:
    """mix/ s1/ s2/ at 16 kHz (the wav16k/min layout), 16-bit."""
    pairs = _speech()
    for i in range(count):
        a, b = pairs[i % len(pairs)][0], pairs[(i + 1) % len(pairs)][0]
        n = min(len(a), len(b))
        for folder, x in (("s1", a[:n]), ("s2", b[:n]), ("mix", 0.5 * (a[:n] + b[:n]))):
            (root / folder).mkdir(parents=True, exist_ok=True)
            sf.write(root / folder / f"m{i:04d}.wav", x, 16000, subtype="PCM_16")


def best_of(fn, repeats: int) -> float:
    """Fastest wall time of ``repeats`` calls (the least disturbed by other load on the machine)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench(label: str, dataset: str, target_rate: int, repeats: int) -> None:
    ts = open_testset(dataset, sample_rate=target_rate, resample=True)
    files = [(it.mixture, *it.sources) for it in (ts.files(i) for i in ts.ids())]
    native = sf.info(str(files[0][0])).samplerate
    g = math.gcd(native, target_rate)
    up, down = target_rate // g, native // g
    seconds = sum(sf.info(str(f[0])).duration for f in files)

    def plain() -> None:
        for group in files:
            for f in group:
                sf.read(f, dtype="float32")

    def plain_resample() -> None:
        for group in files:
            for f in group:
                resample_poly(sf.read(f, dtype="float32")[0], up, down)

    def loader() -> None:
        for utt_id in ts.ids():
            ts.load(utt_id)

    loader()  # warm the page cache and imports for every contender alike
    t_plain, t_rs, t_loader = (best_of(fn, repeats) for fn in (plain, plain_resample, loader))
    print(f"\n{label}: {len(files)} utterances x {len(files[0])} files, {seconds:.1f} s of audio,"
          f" {native} -> {target_rate} Hz")
    for name, t in (("plain soundfile.read", t_plain), ("plain read + resample_poly", t_rs),
                    ("loader (checks + resample)", t_loader)):
        print(f"  {name:28s} {t * 1e3:8.1f} ms   {seconds / t:8.0f} s audio / s")
    print(f"  ratio loader / plain read           {t_loader / t_plain:6.2f}")
    print(f"  ratio loader / plain read+resample  {t_loader / t_rs:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=24, help="utterances per case")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        vb, wsj = Path(tmp) / "vb48", Path(tmp) / "wsj16"
        build_voicebank48(vb, args.count)
        build_wsj16(wsj, args.count)
        bench("VoiceBank-style 48k -> 16k", f"voicebank:{vb}", 16000, args.repeats)
        bench("wsj0-2mix-style 16k -> 8k", f"wsj0-2mix:{wsj}", 8000, args.repeats)
        # no resampling: what the checks themselves cost over bare reads
        bench("wsj0-2mix-style 16k at 16k (no resampling)", f"wsj0-2mix:{wsj}", 16000, args.repeats)


if __name__ == "__main__":
    main()
