"""The five built-in policies of DESIGN §5: static, uniform, oracle, probabilistic, router."""

from __future__ import annotations

import numpy as np

from exitbench.policies.arrays import BlockArrays
from exitbench.policies.base import Param, Policy, PolicyError, Requirement
from exitbench.policies.probability import CONDITION_CHOICES, level_probabilities

DEFAULT_TARGETS = (10.0, 15.0, 20.0)  # exit-SNR targets t (dB) a sweep visits
DEFAULT_P_GRID = tuple(float(x) for x in np.round(np.linspace(0.0, 1.0, 101), 10))

TARGET = Param("t", float, 15.0, sweep=DEFAULT_TARGETS, help="exit-SNR target t (dB)")


def first_true_or_last(mask: np.ndarray) -> np.ndarray:
    """Per row the first column where mask is True, else the last column ([K, L] -> [K])."""
    out = np.full(mask.shape[0], mask.shape[1] - 1, dtype=np.int64)
    for lv in range(mask.shape[1] - 2, -1, -1):  # column passes: argmax along a short axis is slow
        out[mask[:, lv]] = lv
    return out


class Static(Policy):
    """Always level l."""

    name = "static"
    params = (Param("l", int, 0, help="level index (every level in a sweep)"),)

    def choose(self, arrays: BlockArrays, seed: int = 0) -> np.ndarray:
        if not 0 <= self.l < arrays.num_levels:  # type: ignore[attr-defined]
            raise PolicyError(f"static: level {self.l} out of range 0..{arrays.num_levels - 1}")  # type: ignore[attr-defined]
        return np.full(arrays.num_blocks, self.l, dtype=np.int64)  # type: ignore[attr-defined]


class Uniform(Policy):
    """A static level drawn uniformly at random per block; seeded by (seed parameter, call seed)."""

    name = "uniform"
    params = (Param("seed", int, 0, help="mixed with the seed given to choose()"),)

    def choose(self, arrays: BlockArrays, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng([int(self.seed), int(seed)])  # type: ignore[attr-defined]
        return rng.integers(0, arrays.num_levels, size=arrays.num_blocks, dtype=np.int64)


class Oracle(Policy):
    """The first level whose true exit-SNR ≥ t dB, else the deepest."""

    name = "oracle"
    params = (TARGET,)

    def choose(self, arrays: BlockArrays, seed: int = 0) -> np.ndarray:
        snr = arrays.exit_snr_db()[:, : arrays.num_levels]
        return first_true_or_last(snr >= self.t)  # type: ignore[attr-defined]


class Probabilistic(Policy):
    """The first level whose predicted P(exit-SNR ≥ t) ≥ p, else the deepest (PRESS)."""

    name = "probabilistic"
    params = (
        TARGET,
        Param("p", float, 0.9, sweep=DEFAULT_P_GRID, help="confidence threshold on P(exit-SNR ≥ t)"),
        Param("condition", str, "all", choices=CONDITION_CHOICES,
              help="which ratio counts as reaching t: any of the three ('all'), or only one"),
    )
    requires = (
        Requirement(("alpha", "sigma2"), "predicted variances (alpha, beta or sigma2)",
                    "this recording's model has no variance head"),
    )

    def probabilities(self, arrays: BlockArrays, levels: slice | None = None) -> np.ndarray:
        """Predicted P(exit-SNR ≥ t) per block and level [K, L]."""
        self.check_requirements(arrays)
        return level_probabilities(arrays, self.t, self.condition, levels)  # type: ignore[attr-defined]

    def choose(self, arrays: BlockArrays, seed: int = 0) -> np.ndarray:
        return first_true_or_last(self.probabilities(arrays) >= self.p)  # type: ignore[attr-defined]


class Router(Policy):
    """The model's own routing: its dynamic output where recorded, else argmax of the router logits."""

    name = "router"
    requires = (
        Requirement(("dynamic", "router_logit"), "router logits or the model's dynamic output",
                    "this recording has neither (the model has no router)"),
    )

    def choose(self, arrays: BlockArrays, seed: int = 0) -> np.ndarray:
        if arrays.dynamic is not None:
            return np.full(arrays.num_blocks, arrays.num_levels, dtype=np.int64)
        self.check_requirements(arrays)
        return np.argmax(arrays.router_logit, axis=1).astype(np.int64)


class Threshold(Policy):
    """The first level whose exit score (a model's own per-block confidence) reaches tau, else the deepest.

    Confidence-based early exit (DeeBERT, PABEE and kin) without writing a policy: the score is one
    the model recorded (``LevelOutputs.scores``, column ``score_<name>``), e.g. the adapter's
    ``agreement`` (dB) between an exit and the one before it.
    """

    name = "threshold"
    params = (
        Param("score", str, "agreement", help="the exit score to threshold (a score_<name> column)"),
        Param("tau", float, 0.0, help="exit once the score is at least tau"),
    )

    def check_requirements(self, arrays: BlockArrays) -> None:
        if self.score not in arrays.scores:  # type: ignore[attr-defined]
            have = ", ".join(sorted(arrays.scores)) or "none"
            raise PolicyError(f"threshold needs the exit score {self.score!r}, but this recording's scores"  # type: ignore[attr-defined]
                              f" are: {have}")

    def choose(self, arrays: BlockArrays, seed: int = 0) -> np.ndarray:
        return first_true_or_last(arrays.scores[self.score] >= self.tau)  # type: ignore[attr-defined]
