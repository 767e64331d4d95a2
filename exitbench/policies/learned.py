"""A learned router for models that have none: features per block, a multinomial logistic regression
fitted on a validation recording, stored as a JSON file, applied to other recordings in numpy.

Target (per block of the validation recording): the level ``oracle-best`` chooses at t — the cheapest
static level whose true exit-SNR reaches t, else the one of highest exit-SNR. Features per block,
from what the model itself emits (never the reference): per static level the predicted P(exit-SNR ≥ t)
and predicted exit-SNR (dB, ``policies.budget``) where the model has a variance head, ln α and ln β
(source means), the estimate's energy (dB) and its change from the level before (a proxy for the
previous level's agreement, which needs sums the recording does not hold), every recorded exit score
(e.g. ``agreement``); and the block's mixture energy (dB). Standardised, then scikit-learn's
``LogisticRegression``. The stored file holds the scaler, the coefficients and the validation run id,
so applying it needs no pickle and no scikit-learn; a test checks the numpy application against
scikit-learn's ``predict_proba``. The policy reads P(target ≤ l) = Σ_{m ≤ l} P(m) and exits at the
first level where it reaches q.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exitbench.policies.arrays import BlockArrays
from exitbench.policies.base import PolicyError

FORMAT = "exitbench-router/1"
_EPS = 1e-30


def _db(x: np.ndarray) -> np.ndarray:
    return 10.0 * np.log10(np.maximum(x, _EPS))


def block_features(arrays: BlockArrays, t: float) -> tuple[np.ndarray, list[str]]:
    """The feature matrix [K, F] of a recording and the features' names (see the module docstring);
    cached on the arrays, since a policy call checks them and then applies them."""
    key = ("router_features", float(t))
    if key not in arrays._cache:
        arrays._cache[key] = _block_features(arrays, t)
    return arrays._cache[key]


def _block_features(arrays: BlockArrays, t: float) -> tuple[np.ndarray, list[str]]:
    from exitbench.policies.budget import predicted_exit_snr_db
    from exitbench.policies.probability import level_probabilities

    cols: list[np.ndarray] = []
    names: list[str] = []
    lv = arrays.num_levels
    e_est = _db(arrays.stats["e_est"].mean(axis=2))  # [K, L]
    has_var = arrays.alpha is not None or arrays.sigma2 is not None
    if has_var:
        prob = level_probabilities(arrays, float(t))
        pred = np.clip(predicted_exit_snr_db(arrays), -100.0, 100.0)
    for lvl in range(lv):
        if has_var:
            cols += [prob[:, lvl], pred[:, lvl]]
            names += [f"p_reach_l{lvl}", f"pred_exit_snr_l{lvl}"]
        if arrays.alpha is not None:
            cols += [np.log(arrays.alpha[:, lvl].mean(axis=1)), np.log(np.maximum(arrays.beta[:, lvl].mean(axis=1), _EPS))]
            names += [f"log_alpha_l{lvl}", f"log_beta_l{lvl}"]
        cols.append(e_est[:, lvl])
        names.append(f"est_energy_db_l{lvl}")
        if lvl:
            cols.append(e_est[:, lvl] - e_est[:, lvl - 1])
            names.append(f"est_energy_change_l{lvl}")
        for score in sorted(arrays.scores):
            cols.append(np.nan_to_num(arrays.scores[score][:, lvl], nan=0.0, posinf=100.0, neginf=-100.0))
            names.append(f"score_{score}_l{lvl}")
    cols.append(_db(arrays.stats["e_mix"][:, 0, 0] / np.maximum(arrays.n, 1)))
    names.append("mixture_power_db")
    return np.column_stack(cols).astype(np.float64), names


@dataclass(frozen=True)
class LearnedRouter:
    """A fitted router: standardisation, multinomial logistic coefficients, and where it was fitted."""

    fitted_on: str  # the validation run id
    t: float
    num_levels: int
    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    classes: tuple[int, ...]  # the levels that occurred as a target (others get probability 0)
    coef: tuple[tuple[float, ...], ...]  # [C, F] (one row for two classes, as scikit-learn stores it)
    intercept: tuple[float, ...]
    info: dict[str, Any]

    def check(self, arrays: BlockArrays) -> None:
        """PolicyError when the recording is the one fitted on, or its levels or features differ."""
        if arrays.run_id is not None and arrays.run_id == self.fitted_on:
            raise PolicyError(f"learned: this router was fitted on run {self.fitted_on}; apply it to another"
                              f" recording (a test set), never to its own validation run")
        if arrays.num_levels != self.num_levels:
            raise PolicyError(f"learned: the router was fitted on {self.num_levels} levels, this recording has"
                              f" {arrays.num_levels}")
        have = block_features(arrays, self.t)[1]
        if tuple(have) != self.features:
            missing = sorted(set(self.features) - set(have)) or sorted(set(have) - set(self.features))
            raise PolicyError(f"learned: this recording's features differ from the router's ({', '.join(missing[:4])})")

    def probabilities(self, arrays: BlockArrays) -> np.ndarray:
        """P(target level = l) per block [K, L] (levels never seen as a target get 0)."""
        x, _ = block_features(arrays, self.t)
        return self.probabilities_of(x)

    def probabilities_of(self, x: np.ndarray) -> np.ndarray:
        """P(target level = l) [K, L] from a feature matrix, as scikit-learn's predict_proba computes it."""
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        logits = z @ np.asarray(self.coef).T + np.asarray(self.intercept)
        if len(self.classes) == 2:  # binary: one logit for the second class
            p1 = 1.0 / (1.0 + np.exp(-logits[:, 0]))
            p = np.column_stack([1.0 - p1, p1])
        elif len(self.classes) == 1:
            p = np.ones((x.shape[0], 1))
        else:
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
        out = np.zeros((x.shape[0], self.num_levels))
        out[:, list(self.classes)] = p
        return out

    def cumulative(self, arrays: BlockArrays) -> np.ndarray:
        """P(target level ≤ l) per block and level [K, L]; the last column is 1."""
        self.check(arrays)
        out = np.cumsum(self.probabilities(arrays), axis=1)
        out[:, -1] = 1.0
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write the router as JSON, atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"format": FORMAT, **asdict(self)}, indent=1))
        os.replace(tmp, path)
        load_router.cache_clear()
        return path


@functools.lru_cache(maxsize=16)
def load_router(path: str) -> LearnedRouter:
    """A router file written by ``fit_router`` (PolicyError, one line, when it is missing or not one)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PolicyError(f"learned: no router file {path} (write one with `exitbench fit-router`)") from None
    except (OSError, ValueError) as exc:
        raise PolicyError(f"learned: cannot read router file {path}: {exc}") from None
    if not isinstance(data, dict) or data.pop("format", None) != FORMAT:
        raise PolicyError(f"learned: {path} is not a router file ({FORMAT})")
    try:
        return LearnedRouter(fitted_on=str(data["fitted_on"]), t=float(data["t"]), num_levels=int(data["num_levels"]),
                             features=tuple(data["features"]), mean=tuple(data["mean"]), scale=tuple(data["scale"]),
                             classes=tuple(int(c) for c in data["classes"]),
                             coef=tuple(tuple(r) for r in data["coef"]), intercept=tuple(data["intercept"]),
                             info=dict(data.get("info", {})))
    except (KeyError, TypeError, ValueError) as exc:
        raise PolicyError(f"learned: router file {path} is incomplete ({exc})") from None


def target_levels(arrays: BlockArrays, t: float) -> np.ndarray:
    """The fitting target per block: ``oracle-best``'s choice at t [K]."""
    from exitbench.policies.builtin import OracleBest

    return OracleBest(t=t)(arrays)


def fit_router(arrays: BlockArrays, t: float, run_id: str, c: float = 1.0, seed: int = 0,
               info: dict[str, Any] | None = None) -> LearnedRouter:
    """Fit a router on a validation recording (scikit-learn's LogisticRegression on standardised features).

    ``info`` (e.g. the run's model and checkpoint_sha256) is stored with the router; a report applies a
    router only to runs of the checkpoint it records."""
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise PolicyError("fitting a router needs scikit-learn: pip install scikit-learn") from None
    import sklearn

    x, names = block_features(arrays, t)
    y = target_levels(arrays, t)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    classes = np.unique(y)
    if classes.size == 1:
        coef, intercept = np.zeros((1, x.shape[1])), np.zeros(1)
        accuracy = 1.0
    else:
        model = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        model.fit((x - mean) / scale, y)
        coef, intercept = model.coef_, model.intercept_
        accuracy = float(model.score((x - mean) / scale, y))
    counts = {int(k): int(v) for k, v in zip(*np.unique(y, return_counts=True))}
    info = {"blocks": int(arrays.num_blocks), "utterances": int(arrays.num_utts), "train_accuracy": accuracy,
            "target_histogram": counts, "C": c, "sklearn": sklearn.__version__, "level_names": list(arrays.level_names or ()),
            **(info or {})}
    return LearnedRouter(fitted_on=run_id, t=float(t), num_levels=arrays.num_levels, features=tuple(names),
                         mean=tuple(map(float, mean)), scale=tuple(map(float, scale)),
                         classes=tuple(int(k) for k in classes), coef=tuple(tuple(map(float, r)) for r in coef),
                         intercept=tuple(map(float, intercept)), info=info)
