"""Replays and sweeps of exit policies over a stored recording, read with DuckDB, stored as Parquet.

Layout: ``replays/run=<id>/policy=<slug>/part-0.parquet`` (per utterance),
``replay_blocks/run=<id>/policy=<slug>/part-0.parquet`` (chosen level per block) and
``sweeps/run=<id>/sweep=<policy>/part-0.parquet`` (tidy curves of each policy over its parameters; one
file per policy, so sweeping one policy never overwrites another's curves).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from exitbench.errors import UsageError
from exitbench.policies import BlockArrays, parse_policy
from exitbench.policies.replay import replay
from exitbench.policies.sweep import sweep
from exitbench.results.store import write_parquet_atomic
from exitbench.results.views import check_root, connect, fetch_arrow

DEFAULT_TARGET = 15.0  # dB: regret target for policies that have none of their own


class RunNotFound(UsageError):
    """A run id or prefix that matches no complete run (or several)."""


def resolve_run_id(root: str | os.PathLike, prefix: str) -> str:
    """The one complete run whose id starts with ``prefix``."""
    check_root(root)
    con = connect(root, tables=())  # the catalogue only
    rows = con.execute("SELECT run_id, status FROM runs WHERE starts_with(run_id, ?)", [prefix]).fetchall()
    if not rows:
        raise RunNotFound(f"no run {prefix!r} in {root} (see `exitbench runs -r {root}`)")
    if len(rows) > 1:
        raise RunNotFound(f"run prefix {prefix!r} is ambiguous: {', '.join(r[0] for r in rows)}")
    run_id, status = rows[0]
    if status != "complete":
        raise RunNotFound(f"run {run_id} is {status}, not complete: rerun its recording to finish it")
    return run_id


def run_shape(root: str | os.PathLike, run_id: str) -> dict[str, Any]:
    """Levels, sample rate and whether a dynamic level was recorded, from the runs and levels tables."""
    con = connect(root, runs=[run_id], tables=("levels",))  # the run's files only
    sr, n_levels = con.execute("SELECT sample_rate, num_levels FROM runs WHERE run_id = ?", [run_id]).fetchone()
    levels = con.execute("SELECT level, name, kind, gmacs, params FROM levels WHERE run = ? ORDER BY level",
                         [run_id]).df()
    return {"sample_rate": int(sr), "num_levels": int(n_levels),
            "has_dynamic": bool((levels["kind"] == "dynamic").any()), "levels": levels}


def load_block_arrays(root: str | os.PathLike, run_id: str, p_ref: float | None = None) -> BlockArrays:
    """The run's block table as dense arrays for the policies (P_ref: per-utterance mixture power unless set)."""
    shape = run_shape(root, run_id)
    table = fetch_arrow(connect(root, runs=[run_id], tables=("blocks",)), "SELECT * EXCLUDE (run) FROM blocks"
                        " WHERE run = ?", [run_id])
    arrays = BlockArrays.from_arrow(table, shape["num_levels"], shape["sample_rate"], shape["has_dynamic"])
    levels = shape["levels"]
    # the static levels' names, so that a policy's level parameter takes them (static:l=exit2)
    arrays = arrays.with_level_names(list(levels.loc[levels["kind"] == "static"].sort_values("level")["name"]))
    arrays = arrays.with_run_id(run_id)
    return arrays.with_p_ref(p_ref) if p_ref is not None else arrays


def policy_slug(spec: str) -> str:
    """A file-system-safe, readable partition value for a policy configuration."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", spec.replace(":", "__").replace("=", "-").replace(",", "_"))


@dataclass
class ReplayResult:
    """One policy configuration replayed over one run."""

    run_id: str
    policy: str  # canonical spec
    target: float
    per_utt: pd.DataFrame
    per_block: pd.DataFrame
    level_names: list[str]

    def summary(self) -> dict[str, Any]:
        """Mean GMAC/s, SI-SNRi, SNRi over utterances; mean one-sided regret over blocks; level histogram."""
        counts = np.bincount(self.per_block["level"].to_numpy(), minlength=len(self.level_names))
        return {
            "run": self.run_id, "policy": self.policy, "t": self.target,
            "gmacs": float(self.per_utt["gmacs"].mean()), "si_snri": float(self.per_utt["si_snri"].mean()),
            "snri": float(self.per_utt["snri"].mean()), "regret": float(self.per_block["regret"].mean()),
            "histogram": {name: int(c) for name, c in zip(self.level_names, counts)},
        }


def replay_run(root: str | os.PathLike, run_id: str, policy_spec: str, t: float | None = None, seed: int = 0,
               arrays: BlockArrays | None = None) -> ReplayResult:
    """Apply one policy configuration to a recorded run; exact composite metrics per utterance."""
    policy = parse_policy(policy_spec)
    arrays = arrays if arrays is not None else load_block_arrays(root, run_id)
    policy.check_requirements(arrays)
    chosen = policy(arrays, seed)
    target = float(policy.values.get("t", t if t is not None else DEFAULT_TARGET))
    per_block, per_utt = replay(arrays, chosen, target)
    names = run_shape(root, run_id)["levels"]["name"].tolist()
    return ReplayResult(run_id, policy.spec(), target, per_utt, per_block, names)


def store_replay(root: str | os.PathLike, result: ReplayResult) -> Path:
    """Write a replay's per-utterance and per-block tables under the results root; returns the folder."""
    root = Path(root)
    part = Path(f"run={result.run_id}") / f"policy={policy_slug(result.policy)}"
    utt = result.per_utt.assign(policy_spec=result.policy, t=result.target)
    blk = result.per_block.assign(utt_id=result.per_block["utt_id"].astype(str), policy_spec=result.policy)
    write_parquet_atomic(pa.Table.from_pandas(utt, preserve_index=False), root / "replays" / part / "part-0.parquet")
    write_parquet_atomic(pa.Table.from_pandas(blk, preserve_index=False),
                         root / "replay_blocks" / part / "part-0.parquet")
    return root / "replays" / part


def sweep_run(root: str | os.PathLike, run_id: str, targets: Sequence[float] | None = None,
              policies: Sequence[str] | None = None, store: bool = True,
              arrays: BlockArrays | None = None, **options: Any) -> pd.DataFrame:
    """Every policy over its whole range (all thresholds in one pass each) as tidy curves; stored if asked.

    ``options`` go to ``policies.sweep.sweep`` (budgets, matched_draws, p_grid, ...)."""
    from exitbench.policies.builtin import DEFAULT_TARGETS

    arrays = arrays if arrays is not None else load_block_arrays(root, run_id)
    frame = sweep(arrays, policies, targets=tuple(targets) if targets else DEFAULT_TARGETS, **options)
    if store:
        _split_legacy_sweep(Path(root), run_id)
        out = frame.assign(run_id=run_id)
        for name, part in out.groupby("policy", sort=False):
            write_parquet_atomic(pa.Table.from_pandas(part, preserve_index=False),
                                 sweep_path(root, run_id, str(name)))
    return frame


def sweep_path(root: str | os.PathLike, run_id: str, policy: str) -> Path:
    """Where one policy's stored curves of a run live (the partition key is ``sweep``: the files
    hold a ``policy`` column, which a hive key of the same name would overwrite)."""
    return Path(root) / "sweeps" / f"run={run_id}" / f"sweep={policy_slug(policy)}" / "part-0.parquet"


def stored_sweep_files(root: str | os.PathLike, run_id: str) -> list[Path]:
    """Every stored curve file of a run."""
    return sorted((Path(root) / "sweeps" / f"run={run_id}").glob("sweep=*/part-0.parquet"))


def _split_legacy_sweep(root: Path, run_id: str) -> None:
    """exitbench 0.1 kept every policy's curves of a run in one file: split it into per-policy files."""
    import pyarrow.parquet as pq

    legacy = root / "sweeps" / f"run={run_id}" / "part-0.parquet"
    if not legacy.exists():
        return
    old = pq.read_table(legacy).to_pandas()
    for name, part in old.groupby("policy", sort=False):
        path = sweep_path(root, run_id, str(name))
        if not path.exists():
            write_parquet_atomic(pa.Table.from_pandas(part, preserve_index=False), path)
    legacy.unlink()
