"""The staircase sweep equals choose() + replay at every threshold, for every policy (exitbench.policies.sweep)."""

from __future__ import annotations

import numpy as np
import pytest

from exitbench.policies import BlockArrays, PolicyError, parse_policy
from exitbench.policies.base import POLICIES, Param, Policy
from exitbench.policies.builtin import Oracle, Probabilistic, Router, Static
from exitbench.policies.probability import level_probabilities
from exitbench.policies.replay import replay
from exitbench.policies.sweep import COLUMNS, grid_index, staircase_curve, sweep
from exitbench.policies.synthetic import random_block_table

TARGETS = [8.0, 14.0]


@pytest.fixture(scope="module")
def arrays() -> BlockArrays:
    return BlockArrays.from_arrow(random_block_table(40, 9, 4, 2, seed=7, router=True), 4, 8000, False)


def _loop(arrays: BlockArrays, chosen: np.ndarray, t: float) -> dict[str, float]:
    per_block, per_utt = replay(arrays, chosen, t=t)
    return {"gmacs": per_utt.gmacs.mean(), "regret": per_block.regret.mean(),
            "si_snri": per_utt.si_snri.mean(), "snri": per_utt.snri.mean()}


def _close(row, ref):
    assert row["gmacs"] == pytest.approx(ref["gmacs"], rel=1e-12, abs=0)
    assert row["regret"] == pytest.approx(ref["regret"], abs=1e-10)
    assert row["si_snri"] == pytest.approx(ref["si_snri"], abs=1e-9)
    assert row["snri"] == pytest.approx(ref["snri"], abs=1e-9)


@pytest.mark.parametrize("condition", ["all", "snr_ref"])
def test_probabilistic_staircase_equals_loop(arrays, condition):
    t = TARGETS[1]
    probs = level_probabilities(arrays, t, condition)
    # a grid with ties: thresholds exactly equal to recorded probabilities, plus 0 and 1; unsorted on purpose
    ties = np.random.default_rng(0).choice(probs[:, :-1].ravel(), 15, replace=False)
    grid = np.concatenate([np.linspace(1, 0, 41), ties])
    frame = sweep(arrays, [f"probabilistic:condition={condition},t={t}"], p_grid=grid)
    assert list(frame.columns) == list(COLUMNS) and len(frame) == len(grid)
    levels_seen = set()
    for (_, row), p in zip(frame.iterrows(), grid):
        chosen = Probabilistic(t=t, p=p, condition=condition)(arrays)
        levels_seen |= set(np.unique(chosen).tolist())
        assert row.p == p and row.t == t
        _close(row, _loop(arrays, chosen, t))
    assert levels_seen == {0, 1, 2, 3}  # the grid really walks the staircase


def test_staircase_curve_on_arbitrary_scores(arrays):
    """Any scores (here random, not monotone in level) follow the 'first level with score ≥ p' rule."""
    scores = np.random.default_rng(1).uniform(size=(arrays.num_blocks, arrays.num_levels - 1))
    grid = np.linspace(0, 1, 23)
    curve = staircase_curve(arrays, scores, grid, 10.0)
    for j, p in enumerate(grid):
        ok = np.concatenate([scores >= p, np.ones((arrays.num_blocks, 1), bool)], axis=1)
        _close({k: v[j] for k, v in curve.items()}, _loop(arrays, np.argmax(ok, axis=1), 10.0))


def test_other_policies_rows_equal_replay(arrays):
    frame = sweep(arrays, targets=TARGETS, p_grid=[0.5])
    assert frame.attrs["skipped"] == {}
    assert set(frame.policy) == {"static", "uniform", "oracle", "probabilistic", "router", "budget"}
    for t in TARGETS:
        for _, row in frame[(frame.policy == "budget") & (frame.t == t)].iloc[::5].iterrows():
            _close(row, _loop(arrays, parse_policy(f"budget:{row['params']}")(arrays), t))
        for lv in range(arrays.num_levels):
            row = frame[(frame.policy == "static") & (frame.params == f"l={lv}") & (frame.t == t)].iloc[0]
            _close(row, _loop(arrays, Static(l=lv)(arrays), t))
        _close(frame[(frame.policy == "oracle") & (frame.t == t)].iloc[0], _loop(arrays, Oracle(t=t)(arrays), t))
        _close(frame[(frame.policy == "router") & (frame.t == t)].iloc[0], _loop(arrays, Router()(arrays), t))
        uni = frame[(frame.policy == "uniform") & (frame.t == t)].iloc[0]
        static = frame[(frame.policy == "static") & (frame.t == t)]
        assert uni.gmacs == pytest.approx(static.gmacs.mean(), rel=1e-12)  # exact expectation
        assert uni.regret == pytest.approx(static.regret.mean(), rel=1e-12)
        assert static.si_snri.min() < uni.si_snri < static.si_snri.max()
    assert frame[frame.policy == "oracle"].regret.lt(frame[frame.policy == "static"].regret.max()).all()


def test_sweep_skips_or_raises_on_missing_features():
    bare = BlockArrays.from_arrow(random_block_table(4, 3, 3, 1, seed=2, variances=False), 3, 8000, False)
    frame = sweep(bare, targets=[10.0], p_grid=[0.5])
    assert set(frame.policy) == {"static", "uniform", "oracle"}
    assert "no variance head" in frame.attrs["skipped"]["probabilistic"]
    assert "no variance head" in frame.attrs["skipped"]["budget"]
    assert "router" in frame.attrs["skipped"]
    with pytest.raises(PolicyError, match="probabilistic needs predicted variances"):
        sweep(bare, ["probabilistic"])


class Deepest(Policy):
    """A plugin policy: level min(k, deepest)."""

    name = "deepest"
    params = (Param("k", int, 1, sweep=(0, 2)),)

    def choose(self, arrays, seed=0):
        return np.full(arrays.num_blocks, min(self.k, arrays.num_levels - 1))


def test_plugin_policy_goes_through_the_generic_sweep(arrays):
    POLICIES.register("deepest", Deepest)
    try:
        frame = sweep(arrays, ["deepest", "static:l=2"], targets=[9.0])
    finally:
        POLICIES.unregister("deepest")  # keep the shared registry as other tests expect it
    deep = frame[frame.policy == Deepest.qualified_name()]  # a plug-in is stored under its module:Class
    assert Deepest.qualified_name().endswith(":Deepest")
    assert deep.params.tolist() == ["k=0", "k=2"]
    _close(deep.iloc[1], frame[frame.policy == "static"].iloc[0])


def test_grid_index_equals_searchsorted_on_edges():
    for grid in (np.linspace(0, 1, 101), np.round(np.linspace(0, 1, 101), 10), np.linspace(-3, 40, 7),
                 np.array([0.0, 0.1, 0.5, 0.9])):
        rng = np.random.default_rng(0)
        values = np.concatenate([grid, np.nextafter(grid, -np.inf), np.nextafter(grid, np.inf),
                                 rng.uniform(grid[0] - 1, grid[-1] + 1, 1000), [np.nan, -np.inf, np.inf]])
        assert np.array_equal(grid_index(grid, values), np.searchsorted(grid, values, side="right"))


def test_sweeping_one_policy_keeps_the_curves_of_the_others(synthetic_run):
    from exitbench.results.replays import stored_sweep_files, sweep_run
    from exitbench.results.views import connect

    root, run = synthetic_run.root, synthetic_run.run_id
    sweep_run(root, run, (10.0,), ["oracle", "static"])
    sweep_run(root, run, (10.0,), ["probabilistic"])  # a later sweep of another policy
    con = connect(root)
    have = {p for (p,) in con.execute("SELECT DISTINCT policy FROM sweeps WHERE run = ?", [run]).fetchall()}
    assert {"oracle", "static", "probabilistic"} <= have
    assert len(stored_sweep_files(root, run)) >= 3
