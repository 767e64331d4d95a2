"""The built-in policies: DESIGN §5's static, uniform, oracle, probabilistic and router, plus oracle-best
(the least-regret lower bound) and threshold (a recorded exit score)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from exitbench.policies.arrays import BlockArrays
from exitbench.policies.base import Param, Policy, PolicyError, Range, Requirement, level, nonempty, reference_power
from exitbench.policies.probability import CONDITION_CHOICES, level_probabilities

DEFAULT_TARGETS = (10.0, 15.0, 20.0)  # exit-SNR targets t (dB) a sweep visits
DEFAULT_P_GRID = tuple(float(x) for x in np.round(np.linspace(0.0, 1.0, 101), 10))

TARGET = Param("t", float, 15.0, sweep=DEFAULT_TARGETS, help="exit-SNR target t (dB, finite)")
#: SNR_ref's reference power, for the policies that decide on exit-SNR
P_REF = Param("p_ref", reference_power, "mixture", omit_default=True,
              help="reference power P_ref of the SNR_ref ratio: 'mixture' (the default: each utterance's"
                   " mixture mean power, the recording's own) or a fixed level in dBFS (10·log10 of the mean"
                   " square, full scale ±1), as PRESS uses; left out of the spec at its default")


#: what the policies that read a variance head require
NEEDS_VARIANCES = Requirement(("alpha", "sigma2"), "predicted variances (alpha, beta or sigma2)",
                              "this recording's model has no variance head")
#: per-source exits (PRESS's future work): each source exits on its own, paying its share 1/S of a block's MACs
PER_SOURCE = Param("per_source", int, 0, choices=(0, 1), omit_default=True,
                   help="1: each source exits on its own (choices [K, S], each source pays 1/S of a level's"
                        " MACs); 0, the default: one level per block, decided by the worst source")


def per_source_first(mask: np.ndarray) -> np.ndarray:
    """``first_true_or_last`` per source: [K, L, S] -> [K, S]."""
    return np.stack([first_true_or_last(mask[:, :, s]) for s in range(mask.shape[2])], axis=1)


def first_true_or_last(mask: np.ndarray) -> np.ndarray:
    """Per row the first column where mask is True, else the last column ([K, L] -> [K])."""
    out = np.full(mask.shape[0], mask.shape[1] - 1, dtype=np.int64)
    for lv in range(mask.shape[1] - 2, -1, -1):  # column passes: argmax along a short axis is slow
        out[mask[:, lv]] = lv
    return out


class Static(Policy):
    """Always level l: an index (``l=2``: the third level) or a level's name (``l=exit2``, from the run)."""

    name = "static"
    params = (Param("l", level, 0, range=Range(0),
                    help="level index (0 = the cheapest) or level name as in the run's levels table; digits"
                         " are always an index (every level in a sweep)"),)

    online = True

    def choose(self, arrays: BlockArrays, seed: int = 0) -> np.ndarray:
        return np.full(arrays.num_blocks, self.level_index("l", arrays), dtype=np.int64)

    def stops(self, step: BlockArrays, level: int, levels: Sequence[str]) -> np.ndarray:
        value = self.l  # type: ignore[attr-defined]
        if isinstance(value, str) and value not in levels:
            raise PolicyError(f"static: no level named {value!r}; the model's levels are {', '.join(levels)}")
        target = levels.index(value) if isinstance(value, str) else int(value)
        if not 0 <= target < len(levels):
            raise PolicyError(f"static: level {target} out of range 0..{len(levels) - 1}")
        return np.full(step.num_blocks, level >= target)

    def reads_estimate(self) -> bool:
        return False


class Uniform(Policy):
    """A static level drawn uniformly at random per block; seeded by (seed parameter, call seed)."""

    name = "uniform"
    params = (Param("seed", int, 0, range=Range(0), help="mixed with the seed given to choose() (≥ 0)"),)

    def choose(self, arrays: BlockArrays, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng([int(self.seed), int(seed)])  # type: ignore[attr-defined]
        return rng.integers(0, arrays.num_levels, size=arrays.num_blocks, dtype=np.int64)


class Oracle(Policy):
    """PRESS's oracle: per block the first static level (cheapest first) whose true exit-SNR ≥ t dB, else the deepest.

    This is the convention of the PRESS paper, not the least-regret choice: where no level reaches t
    it takes the deepest level, which need not have the highest exit-SNR, and where MACs do not grow
    with the level the first level reaching t need not be the cheapest. ``oracle-best`` is the lower
    bound. Exit-SNR uses the reference power ``p_ref`` (default: each utterance's mixture power).
    """

    name = "oracle"
    params = (TARGET, P_REF, PER_SOURCE)

    def choose(self, arrays: BlockArrays, seed: int = 0) -> np.ndarray:
        ref = arrays.at_reference(self.p_ref)  # type: ignore[attr-defined]
        if self.per_source:  # type: ignore[attr-defined]
            return per_source_first(ref.source_exit_snr_db() >= self.t)  # type: ignore[attr-defined]
        snr = ref.exit_snr_db()[:, : arrays.num_levels]
        return first_true_or_last(snr >= self.t)  # type: ignore[attr-defined]


class OracleBest(Policy):
    """Per block the static level of least regret max(0, t − exit-SNR), ties broken by least MACs, then index.

    Regret is per block, so this is the least mean regret any choice of static levels can have (a true
    lower bound for the replay's regret at t, when ``p_ref`` is the recording's own), and among those
    choices the cheapest: where t is reachable, the cheapest level reaching it; where it is not, the
    level of highest exit-SNR. The dynamic output is not a candidate (as for ``oracle``).
    """

    name = "oracle-best"
    params = (TARGET, P_REF, PER_SOURCE)

    def choose(self, arrays: BlockArrays, seed: int = 0) -> np.ndarray:
        lv = arrays.num_levels
        ref = arrays.at_reference(self.p_ref)  # type: ignore[attr-defined]
        if self.per_source:  # type: ignore[attr-defined]
            per = ref.source_exit_snr_db()
            return np.stack([self._least(per[:, :, s], arrays.macs) for s in range(per.shape[2])], axis=1)
        return self._least(ref.exit_snr_db()[:, :lv], arrays.macs)

    def _least(self, snr: np.ndarray, macs: np.ndarray) -> np.ndarray:
        regret = np.maximum(0.0, self.t - snr)  # type: ignore[attr-defined]
        least = regret == regret.min(axis=1, keepdims=True)
        return np.argmin(np.where(least, macs, np.inf), axis=1).astype(np.int64)  # first index on ties


class Probabilistic(Policy):
    """The first level whose predicted P(exit-SNR ≥ t) ≥ p, else the deepest (PRESS); SNR_ref uses ``p_ref``."""

    name = "probabilistic"
    params = (
        TARGET,
        Param("p", float, 0.9, sweep=DEFAULT_P_GRID, range=Range(0.0, 1.0),
              help="confidence threshold on P(exit-SNR ≥ t), in [0, 1]"),
        Param("condition", str, "all", choices=CONDITION_CHOICES,
              help="which ratio counts as reaching t: any of the three ('all'), or only one"),
        P_REF,
        PER_SOURCE,
    )
    requires = (NEEDS_VARIANCES,)

    def probabilities(self, arrays: BlockArrays, levels: slice | None = None) -> np.ndarray:
        """Predicted P(exit-SNR ≥ t) per block and level [K, L]."""
        self.check_requirements(arrays)
        ref = arrays.at_reference(self.p_ref)  # type: ignore[attr-defined]
        return level_probabilities(ref, self.t, self.condition, levels)  # type: ignore[attr-defined]

    def choose(self, arrays: BlockArrays, seed: int = 0) -> np.ndarray:
        if self.per_source:  # type: ignore[attr-defined]
            self.check_requirements(arrays)
            ref = arrays.at_reference(self.p_ref)  # type: ignore[attr-defined]
            probs = level_probabilities(ref, self.t, self.condition, per_source=True)  # type: ignore[attr-defined]
            return per_source_first(probs >= self.p)  # type: ignore[attr-defined]
        return first_true_or_last(self.probabilities(arrays) >= self.p)  # type: ignore[attr-defined]

    @property
    def online(self) -> bool:  # type: ignore[override]
        return not self.per_source  # type: ignore[attr-defined]

    def stops(self, step: BlockArrays, level: int, levels: Sequence[str]) -> np.ndarray:
        if self.per_source:  # type: ignore[attr-defined]
            raise PolicyError("probabilistic: per_source=1 cannot run online yet (sources share one pass)")
        return self.probabilities(step)[:, 0] >= self.p  # type: ignore[attr-defined]

    def reads_estimate(self) -> bool:
        return self.condition != "snr_ref"  # type: ignore[attr-defined]  # SNR_ref reads β and P_ref only


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
        Param("score", nonempty, "agreement", help="the exit score to threshold (a score_<name> column)"),
        Param("tau", float, 0.0, help="exit once the score is at least tau (finite)"),
    )

    def check_requirements(self, arrays: BlockArrays) -> None:
        if self.score not in arrays.scores:  # type: ignore[attr-defined]
            have = ", ".join(sorted(arrays.scores)) or "none"
            raise PolicyError(f"threshold needs the exit score {self.score!r}, but this recording's scores"  # type: ignore[attr-defined]
                              f" are: {have}")

    def choose(self, arrays: BlockArrays, seed: int = 0) -> np.ndarray:
        return first_true_or_last(arrays.scores[self.score] >= self.tau)  # type: ignore[attr-defined]


class Budget(Policy):
    """Per block the static level maximising predicted exit-SNR − λ·GMAC/s (ties to the cheaper level).

    The predicted exit-SNR comes from the variance head and the block sums (``policies.budget``), so
    the policy never sees the reference. ``gmacs=B`` solves λ on the recording being replayed so that
    its mean GMAC/s is the largest the budget B allows (exact, by bisection over the breakpoints);
    otherwise ``lam`` is used as given (dB per GMAC/s; 0: the level of highest predicted exit-SNR).
    """

    name = "budget"
    params = (
        Param("gmacs", float, 0.0, range=Range(0.0), omit_default=True,
              help="mean compute budget in GMAC/s, solved for λ on the recording (0, the default: use lam)"),
        Param("lam", float, 0.0, range=Range(0.0), omit_default=True,
              help="λ, the exit-SNR (dB) one GMAC/s must buy (≥ 0); ignored when gmacs is set"),
        P_REF,
        PER_SOURCE,
    )
    requires = (NEEDS_VARIANCES,)

    def lam_for(self, arrays: BlockArrays) -> float:
        """The λ this policy applies to ``arrays`` (solved from the budget when one is set)."""
        from exitbench.policies.budget import lambda_for_budget

        decide = arrays.at_reference(self.p_ref)  # type: ignore[attr-defined]
        if self.gmacs > 0:  # type: ignore[attr-defined]
            return lambda_for_budget(decide, self.gmacs, bool(self.per_source))  # type: ignore[attr-defined]
        return float(self.lam)  # type: ignore[attr-defined]

    def choose(self, arrays: BlockArrays, seed: int = 0) -> np.ndarray:
        from exitbench.policies.budget import choose_budget

        decide = arrays.at_reference(self.p_ref)  # type: ignore[attr-defined]
        return choose_budget(decide, self.lam_for(arrays), bool(self.per_source))  # type: ignore[attr-defined]


class Learned(Policy):
    """A router fitted on a validation recording (``exitbench fit-router``): the first level whose predicted
    P(the cheapest level reaching t is ≤ l) ≥ q; refused on the run it was fitted on."""

    name = "learned"
    params = (
        Param("router", nonempty, "", help="path of the router file written by `exitbench fit-router`"),
        Param("q", float, 0.5, sweep=tuple(float(x) for x in np.round(np.linspace(0.0, 1.0, 41), 10)),
              range=Range(0.0, 1.0), help="confidence on the predicted cumulative level distribution, in [0, 1]"),
    )

    def check_requirements(self, arrays: BlockArrays) -> None:
        from exitbench.policies.learned import load_router

        load_router(self.router).check(arrays)  # type: ignore[attr-defined]

    def cumulative(self, arrays: BlockArrays) -> np.ndarray:
        """Predicted P(target level ≤ l) per block and static level [K, L]."""
        from exitbench.policies.learned import load_router

        return load_router(self.router).cumulative(arrays)  # type: ignore[attr-defined]

    def choose(self, arrays: BlockArrays, seed: int = 0) -> np.ndarray:
        return first_true_or_last(self.cumulative(arrays) >= self.q)  # type: ignore[attr-defined]
