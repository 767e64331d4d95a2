"""The Python API: a results root as pandas DataFrames (``exitbench.open(root)``), on the library the CLI uses.

Every method takes run ids or unique prefixes and reads only: replays and sweeps are stored under
the root only when asked (``store=True``, what ``exitbench replay`` and ``sweep-policies`` always do).
Nothing here imports torch, ray or matplotlib; policy code (scipy) is imported on first use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import pandas as pd

if TYPE_CHECKING:
    from exitbench.policies.arrays import BlockArrays

__all__ = ["Results"]

Per = Literal["summary", "utterance", "block"]


class Results:
    """A results root opened for reading: runs, levels, utterances, blocks, policy replays, sweeps, comparisons."""

    def __init__(self, root: str | os.PathLike) -> None:
        """Open ``root`` (it must exist; ResultsRootError otherwise)."""
        from exitbench.results.views import check_root

        self.root: Path = check_root(root)
        self._arrays: dict[tuple[str, Any], BlockArrays] = {}

    def __repr__(self) -> str:
        return f"exitbench.Results({str(self.root)!r})"

    # -- runs and their tables ------------------------------------------------------------------
    def run_id(self, run: str) -> str:
        """The full id of the one complete run whose id starts with ``run`` (RunNotFound otherwise)."""
        from exitbench.results.replays import resolve_run_id

        return resolve_run_id(self.root, run)

    def runs(self, *, run: str | None = None, checkpoint: str | Sequence[str] | None = None,
             step: str | int | None = None, dataset: str | None = None, fingerprint: str | None = None,
             since: str | None = None, until: str | None = None, harness_version: str | None = None,
             schema_version: int | None = None, status: str | None = None, any_schema: bool = False) -> pd.DataFrame:
        """The runs (oldest first) as ``exitbench catalog`` lists them, with its filters (see ``list_runs``)."""
        from exitbench.results.catalog import list_runs

        return list_runs(self.root, run=run, checkpoint=checkpoint, step=step, dataset=dataset,
                         fingerprint=fingerprint, since=since, until=until, harness_version=harness_version,
                         schema_version=schema_version, status=status, any_schema=any_schema)

    def levels(self, run: str) -> pd.DataFrame:
        """The run's levels table: level, name, kind, macs_per_sample, gmacs, params (cheapest first)."""
        return self._table("SELECT * EXCLUDE (run) FROM levels WHERE run = ? ORDER BY level", [self.run_id(run)])

    def utterances(self, run: str) -> pd.DataFrame:
        """The run's utterances table: one row per utterance, level and source (every recorded metric)."""
        return self._table("SELECT * EXCLUDE (run) FROM utterances WHERE run = ? ORDER BY utt_id, level, source",
                           [self.run_id(run)])

    def blocks(self, run: str, utt_id: str | Sequence[str] | None = None) -> pd.DataFrame:
        """The run's block table (one row per utterance, block, level, source), optionally of some utterances."""
        ids = [utt_id] if isinstance(utt_id, str) else list(utt_id) if utt_id is not None else None
        where = " AND list_contains(?, utt_id)" if ids is not None else ""
        return self._table(f"SELECT * EXCLUDE (run) FROM blocks WHERE run = ?{where}"
                           " ORDER BY utt_id, block, level, source",
                           [self.run_id(run)] + ([ids] if ids is not None else []))

    def arrays(self, run: str) -> BlockArrays:
        """The run's blocks as the dense BlockArrays every policy works on (carrying the level names)."""
        from exitbench.results.replays import load_block_arrays, run_shape
        from exitbench.results.store import ResultStore

        run_id = self.run_id(run)
        manifest = ResultStore(self.root).read_manifest(run_id) or {}
        key = (run_id, manifest.get("finished_at"))  # a run recorded again (--force) is read again
        if key not in self._arrays:
            levels = run_shape(self.root, run_id)["levels"]
            names = levels.loc[levels["kind"] == "static", "name"].tolist()
            self._arrays = {key: load_block_arrays(self.root, run_id).with_level_names(names)}
        return self._arrays[key]

    # -- policies ----------------------------------------------------------------------------------
    def replay(self, run: str, policy: str | Sequence[str], *, t: float | None = None, seed: int = 0,
               per: Per = "summary", store: bool = False) -> pd.DataFrame:
        """Replay policy specs exactly (``exitbench replay``): a row per policy (per='summary'), utterance or block."""
        from exitbench.results.replays import replay_run, store_replay

        if per not in ("summary", "utterance", "block"):
            raise ValueError(f"per must be 'summary', 'utterance' or 'block', not {per!r}")
        run_id = self.run_id(run)
        arrays = self.arrays(run_id)
        frames = []
        for spec in [policy] if isinstance(policy, str) else list(policy):
            res = replay_run(self.root, run_id, spec, t, seed, arrays=arrays)
            if store:
                store_replay(self.root, res)
            if per == "summary":
                s = res.summary()
                hist = s.pop("histogram")
                frames.append(pd.DataFrame([s | {f"blocks_{name}": n for name, n in hist.items()}]))
            else:
                table = res.per_utt if per == "utterance" else res.per_block
                frames.append(table.assign(policy=res.policy, t=res.target))
        return pd.concat(frames, ignore_index=True)

    def sweep(self, run: str, policies: Sequence[str] | None = None, targets: Sequence[float] | None = None,
              *, store: bool = False, budgets: Sequence[float] | None = None, matched_draws: int = 0) -> pd.DataFrame:
        """Every policy over its range (as ``exitbench sweep-policies``): policy, params, t, p, gmacs, regret, ...;
        ``budgets`` for the budget policy, ``matched_draws`` > 0 adds the cost-matched random baseline columns."""
        from exitbench.results.replays import sweep_run

        run_id = self.run_id(run)
        return sweep_run(self.root, run_id, targets, policies, store=store, arrays=self.arrays(run_id),
                         budgets=budgets, matched_draws=matched_draws)

    def fit_router(self, run: str, t: float, path: str | os.PathLike | None = None, c: float = 1.0) -> Path:
        """Fit a learned router on a validation run (as ``exitbench fit-router``); returns the router file."""
        from exitbench.policies.learned import fit_router

        run_id = self.run_id(run)
        man = self.runs().set_index("run_id").loc[run_id]
        router = fit_router(self.arrays(run_id), t, run_id, c=c,
                            info={k: man.get(k) for k in ("model", "checkpoint_sha256", "dataset")})
        return router.save(path or Path(self.root) / "routers" / f"{run_id}-t{t:g}.json")

    def online(self, run: str, policy: str, *, device: str | None = None, limit: int | None = None,
               repeats: int = 1) -> Any:
        """Execute ``policy`` inside the run's model (as ``exitbench online``, not stored): an OnlineSummary
        whose ``table`` has a row per utterance and ``figures()`` the savings against the replay's."""
        from exitbench.harness.online import run_online

        return run_online(self, run, policy, device=device, limit=limit, repeats=repeats)

    # -- comparisons -------------------------------------------------------------------------------
    def compare(self, base: str, candidate: str, *, candidate_root: str | os.PathLike | Results | None = None,
                metrics: str | Sequence[str] = ("si_snri",), tolerance: float | str | dict[str, float] = 0.1,
                policies: Sequence[str] | None = None, alpha: float = 0.05, resamples: int = 2000,
                seed: int = 0) -> pd.DataFrame:
        """Paired per-utterance deltas with the family-wise gate of ``exitbench compare`` (``alpha`` over all rows;
        no curves); attrs: base, candidate, regressed, notes."""
        cmp = self._compare(base, candidate, candidate_root, metrics, tolerance, policies, alpha, resamples,
                            seed, curves=False)
        rows = cmp.rows.reset_index(drop=True)
        rows.attrs = {"base": cmp.base["run_id"], "candidate": cmp.candidate["run_id"], "regressed": cmp.regressed,
                      "notes": list(cmp.notes)}
        return rows

    def compare_curves(self, base: str, candidate: str, *, candidate_root: str | os.PathLike | Results | None = None,
                       targets: Sequence[float] = (10.0, 15.0, 20.0), at_gmacs: float | None = None,
                       tolerance: float = 0.1) -> pd.DataFrame:
        """Curve readouts of ``exitbench compare``: front area, regret at a fixed GMAC/s (not significance-tested)."""
        cmp = self._compare(base, candidate, candidate_root, ("si_snri",), tolerance, (), 0.05, 2000, 0,
                            curves=True, targets=targets, at_gmacs=at_gmacs)
        curves = cmp.curves.reset_index(drop=True)
        curves.attrs = {"base": cmp.base["run_id"], "candidate": cmp.candidate["run_id"], "at_gmacs": cmp.at_gmacs}
        return curves

    # -- helpers -----------------------------------------------------------------------------------
    def _compare(self, base: str, candidate: str, candidate_root: str | os.PathLike | Results | None,
                 metrics: str | Sequence[str], tolerance: float | str | dict[str, float],
                 policies: Sequence[str] | None, alpha: float, resamples: int, seed: int, **kw: Any) -> Any:
        from exitbench.results.compare import compare_runs

        croot = candidate_root.root if isinstance(candidate_root, Results) else candidate_root
        return compare_runs(self.root, base, candidate, candidate_root=croot, metrics=metrics, tolerance=tolerance,
                            policies=policies, alpha=alpha, resamples=resamples, seed=seed, **kw)

    def _table(self, sql: str, params: list) -> pd.DataFrame:
        from exitbench.results.views import connect, fetch_arrow, runs_of_params

        con = connect(self.root, runs=runs_of_params(params))
        try:
            return fetch_arrow(con, sql, params).to_pandas()
        finally:
            con.close()

