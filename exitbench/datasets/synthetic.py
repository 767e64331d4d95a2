"""A deterministic, procedurally generated two-speaker set: harmonic 'voices' with syllabic envelopes."""

from __future__ import annotations

import json

import numpy as np

from exitbench.datasets.base import DatasetError, TestSet, UtteranceError, Utterance, hash_strings
from exitbench.datasets.options import as_float, as_int


def speech_like(rng: np.random.Generator, num_samples: int, sample_rate: int) -> np.ndarray:
    """A harmonic source with a gliding pitch, formant-like tilt and 3-6 Hz syllabic envelope."""
    t = np.arange(num_samples) / sample_rate
    f0 = rng.uniform(90, 260) * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t
                                                    + rng.uniform(0, 2 * np.pi)))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    sig = np.zeros(num_samples)
    tilt = rng.uniform(0.6, 0.9)
    for k in range(1, int(0.45 * sample_rate / f0.max())):
        sig += tilt**k * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    rate = rng.uniform(3.0, 6.0)  # syllables per second
    env = np.clip(np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)), 0, None) ** 1.5
    # pauses between words
    gate = (np.sin(2 * np.pi * rng.uniform(0.3, 0.7) * t + rng.uniform(0, 2 * np.pi)) > -0.6)
    sig = sig * env * gate
    sig += 0.01 * rng.standard_normal(num_samples) * env  # breath noise keeps it from being pure tones
    return (sig / (np.abs(sig).max() + 1e-9)).astype(np.float32)


class SyntheticMixtures(TestSet):
    """``--dataset synthetic``: N two-source mixtures at a chosen rate, reproducible from a seed."""

    def __init__(self, path: str | None = None, num_utterances: int | str = 8, seconds: float | str = 2.0,
                 sample_rate: int | str = 8000, seed: int | str = 0, num_sources: int | str = 2,
                 limit: int | str | None = None, **_: object):
        n = as_int(num_utterances, "num_utterances", minimum=1, default=8)
        cap = as_int(limit, "limit", minimum=1)
        self.num_utterances = n if cap is None else min(n, cap)
        self.seconds = as_float(seconds, "seconds", default=2.0, above=0.0)
        self.sample_rate = as_int(sample_rate, "sample_rate", minimum=1, default=8000)
        self.seed = as_int(seed, "seed", minimum=0, default=0)  # numpy seeds must be non-negative
        self.num_sources = as_int(num_sources, "num_sources", minimum=1, default=2)
        if int(self.seconds * self.sample_rate * 0.75) < 1:  # the shortest of the +-25% lengths
            raise DatasetError(f"synthetic: seconds={self.seconds:g} at {self.sample_rate} Hz gives"
                               f" utterances of no samples")
        self.name = "synthetic"

    def ids(self) -> list[str]:
        return [f"syn{i:05d}" for i in range(self.num_utterances)]

    def load(self, utt_id: str) -> Utterance:
        try:
            index = int(utt_id.removeprefix("syn"))
        except ValueError:
            raise UtteranceError(utt_id, "not an id of this synthetic set") from None
        rng = np.random.default_rng([self.seed, index])
        # lengths vary by +-25% so that the last block is usually partial
        n = int(self.seconds * self.sample_rate * rng.uniform(0.75, 1.25))
        sources = np.stack([speech_like(rng, n, self.sample_rate) for _ in range(self.num_sources)])
        gains_db = rng.uniform(-2.5, 2.5, size=self.num_sources)
        sources *= (10 ** (gains_db / 20))[:, None].astype(np.float32)
        sources *= 0.3
        mixture = sources.sum(0)
        return Utterance(utt_id, mixture.astype(np.float32), sources.astype(np.float32), self.sample_rate,
                         {"gains_db": json.dumps([round(float(g), 3) for g in gains_db])})

    def fingerprint(self) -> str:
        return hash_strings(["synthetic-v1", str(self.num_utterances), str(self.seconds),
                             str(self.sample_rate), str(self.seed), str(self.num_sources)])
