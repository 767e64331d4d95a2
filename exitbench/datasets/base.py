"""The test-set contract: an Utterance, and a TestSet that lists ids cheaply and loads one on demand."""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from exitbench.errors import UsageError


class UtteranceError(Exception):
    """One utterance cannot be used (missing partner, bad rate, silent reference...); the run goes on."""

    def __init__(self, utt_id: str, reason: str):
        super().__init__(f"{utt_id}: {reason}")
        self.utt_id = utt_id
        self.reason = reason


class DatasetError(UsageError):
    """The test set as a whole cannot be opened (wrong root, wrong layout); the run stops at once."""


@dataclass
class Utterance:
    """One test item: a mono mixture ``[N]`` and its reference sources ``[S, N]`` (float32, same rate)."""

    id: str
    mixture: np.ndarray
    sources: np.ndarray
    sample_rate: int
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return int(self.mixture.shape[-1])

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate

    def validate(self) -> None:
        """Raise UtteranceError unless shapes, lengths and values are usable."""
        if self.mixture.ndim != 1:
            raise UtteranceError(self.id, f"mixture must be mono [N], got shape {self.mixture.shape}")
        if self.sources.ndim != 2:
            raise UtteranceError(self.id, f"sources must be [S, N], got shape {self.sources.shape}")
        if self.sources.shape[1] != self.mixture.shape[0]:
            raise UtteranceError(
                self.id,
                f"length mismatch: mixture has {self.mixture.shape[0]} samples,"
                f" sources have {self.sources.shape[1]}",
            )
        if self.num_samples == 0:
            raise UtteranceError(self.id, "empty audio")
        if not (np.isfinite(self.mixture).all() and np.isfinite(self.sources).all()):
            raise UtteranceError(self.id, "audio contains NaN or Inf")
        silent = [i for i, s in enumerate(self.sources) if not np.any(s)]
        if silent:
            raise UtteranceError(self.id, f"all-silent reference source(s) {silent}")


class TestSet(abc.ABC):
    """A named, fingerprinted collection of utterances; ``ids()`` must be cheap and deterministic."""

    __test__ = False  # not a pytest class

    name: str = "testset"
    sample_rate: int | None = None
    num_sources: int | None = None

    @abc.abstractmethod
    def ids(self) -> list[str]:
        """Every utterance id, in a fixed order (shard membership is derived from it)."""

    @abc.abstractmethod
    def load(self, utt_id: str) -> Utterance:
        """Load one utterance; raise UtteranceError with a reason when it cannot be used."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """A stable hash of the content (files, sizes, hashes or generator settings); enters the run id."""

    def __len__(self) -> int:
        return len(self.ids())

    def __iter__(self) -> Iterator[Utterance]:
        for utt_id in self.ids():
            yield self.load(utt_id)

    def describe(self) -> dict[str, Any]:
        """A small JSON-able description for the run manifest."""
        return {"name": self.name, "sample_rate": self.sample_rate, "num_sources": self.num_sources,
                "size": len(self)}


def hash_strings(parts: list[str] | tuple[str, ...]) -> str:
    """sha256 over a list of strings, as hex."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()
