"""The run registry: list, filter and resolve the runs of a results root (over the DuckDB ``runs`` view).

Runs written by another schema version hold tables whose columns may mean something else; every
function here refuses to mix them with the current version unless told to list them anyway.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import os
import re
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from exitbench.errors import UsageError
import exitbench
from exitbench.results.views import check_root, connect

#: the columns ``list_runs`` returns, in order (a subset of the runs table plus the parsed start time)
COLUMNS = ("run_id", "status", "model", "architecture", "checkpoint_path", "checkpoint_sha256", "step",
           "dataset", "dataset_path", "dataset_fingerprint", "num_levels", "num_utterances", "num_errors",
           "settings", "harness_version", "schema_version", "git_commit", "host", "started_at", "finished_at")

_HEX = re.compile(r"^[0-9a-fA-F]{4,64}$")


class SchemaMismatch(UsageError):
    """Runs written by a schema version other than this exitbench's."""


class RunLookupError(UsageError):
    """A run reference that matches no run, several runs, or a run that is not complete."""


def all_runs(root: str | os.PathLike) -> pd.DataFrame:
    """Every run manifest under ``root`` (any status, any schema version), oldest first."""
    check_root(root)
    con = connect(root, tables=())  # the catalogue only: no table views
    try:
        have = {r[0] for r in con.execute("SELECT column_name FROM (DESCRIBE runs)").fetchall()}
        cols = ", ".join(f'"{c}"' for c in COLUMNS if c in have)  # not the large JSON columns nobody lists
        df = con.execute(f"SELECT {cols} FROM runs ORDER BY started_at, run_id").df()
    finally:
        con.close()
    for c in COLUMNS:
        if c not in df.columns:  # a root written by an older schema may lack newer manifest columns
            df[c] = None
    df = df[list(COLUMNS)].copy()
    df["started"] = pd.to_datetime(df["started_at"], utc=True, errors="coerce", format="ISO8601")
    return df.reset_index(drop=True)


def parse_when(text: str, end: bool = False) -> pd.Timestamp:
    """An ISO date or date-time (UTC unless it says otherwise); a bare date as ``end`` means its last instant."""
    try:
        ts = pd.Timestamp(_dt.datetime.fromisoformat(text.strip()))
    except ValueError:
        raise UsageError(f"{text!r} is not an ISO date (YYYY-MM-DD) or date-time (YYYY-MM-DDTHH:MM)") from None
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    if end and re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
        ts = ts + pd.Timedelta(days=1) - pd.Timedelta(microseconds=1)
    return ts


def parse_steps(text: str) -> tuple[int | None, int | None]:
    """``N`` (exactly), ``A..B``, ``A..`` or ``..B`` (inclusive) as (low, high)."""
    text = text.strip()
    lo, sep, hi = text.partition("..")
    try:
        if not sep:
            return int(text), int(text)
        return (int(lo) if lo.strip() else None), (int(hi) if hi.strip() else None)
    except ValueError:
        raise UsageError(f"step {text!r}: expected N, A..B, A.. or ..B (integers)") from None


def _matches_checkpoint(row: pd.Series, pattern: str) -> bool:
    """A checkpoint given as a sha256 prefix, a path (exact after resolution) or a glob over paths/names."""
    sha = row["checkpoint_sha256"] or ""
    if _HEX.match(pattern) and sha.lower().startswith(pattern.lower()):
        return True
    candidates = [str(row["checkpoint_path"] or ""), str(row["model"] or "")]
    if any(ch in pattern for ch in "*?["):
        return any(fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(Path(c).name, pattern) for c in candidates)
    resolved = str(Path(pattern).resolve()) if Path(pattern).exists() else None
    return pattern in candidates or (resolved is not None and resolved in candidates)


def check_schema(runs: pd.DataFrame, what: str = "these runs") -> None:
    """Raise SchemaMismatch if any run was written by another schema version than this exitbench's."""
    current = exitbench.SCHEMA_VERSION
    versions = pd.to_numeric(runs["schema_version"], errors="coerce")
    bad = runs[versions != current]
    if len(bad):
        found = sorted({"unknown" if pd.isna(v) else str(int(v)) for v in pd.to_numeric(bad["schema_version"],
                                                                                        errors="coerce")})
        ids = ", ".join(bad["run_id"].head(5)) + (" ..." if len(bad) > 5 else "")
        raise SchemaMismatch(
            f"{what} mix schema versions: {len(bad)} run(s) ({ids}) were written with schema version"
            f" {'/'.join(found)}, this exitbench reads version {current}; their tables may not mean the same"
            f" thing. Record them again with this version, or filter them out (--schema-version {current}),"
            f" or list them with --any-schema")


def list_runs(root: str | os.PathLike, *, run: str | None = None, checkpoint: str | Iterable[str] | None = None,
              step: str | int | None = None, dataset: str | None = None, fingerprint: str | None = None,
              since: str | None = None, until: str | None = None, harness_version: str | None = None,
              schema_version: int | None = None, status: str | None = None,
              any_schema: bool = False) -> pd.DataFrame:
    """The runs of a results root matching every given filter (oldest first).

    ``run``: run-id prefix. ``checkpoint``: sha256 prefix, path or glob (several: any of them).
    ``step``: N, A..B, A.. or ..B. ``dataset``: test-set name or fnmatch glob. ``fingerprint``: prefix.
    ``since``/``until``: ISO dates or date-times bounding the start time. ``harness_version``: exact or
    glob. Raises SchemaMismatch when the selection mixes schema versions with this one (unless
    ``any_schema``); filter with ``schema_version`` to keep only some.
    """
    df = all_runs(root)
    keep = pd.Series(True, index=df.index)
    if run:
        keep &= df["run_id"].str.startswith(run)
    if checkpoint:
        pats = [checkpoint] if isinstance(checkpoint, str) else list(checkpoint)
        keep &= df.apply(lambda r: any(_matches_checkpoint(r, p) for p in pats), axis=1).astype(bool)
    if step is not None:
        lo, hi = parse_steps(str(step))
        steps = pd.to_numeric(df["step"], errors="coerce")
        keep &= steps.notna()
        if lo is not None:
            keep &= steps >= lo
        if hi is not None:
            keep &= steps <= hi
    if dataset:
        keep &= df["dataset"].fillna("").map(lambda d: fnmatch.fnmatch(d, dataset))
    if fingerprint:
        keep &= df["dataset_fingerprint"].fillna("").str.startswith(fingerprint)
    if since:
        keep &= df["started"] >= parse_when(since)
    if until:
        keep &= df["started"] <= parse_when(until, end=True)
    if harness_version:
        keep &= df["harness_version"].fillna("").map(lambda v: fnmatch.fnmatch(v, harness_version))
    if schema_version is not None:
        keep &= pd.to_numeric(df["schema_version"], errors="coerce") == int(schema_version)
    if status:
        keep &= df["status"] == status
    out = df[keep].reset_index(drop=True)
    if not any_schema:
        check_schema(out, "the selected runs")
    return out


def resolve_run(root: str | os.PathLike, ref: str, require_complete: bool = True) -> dict[str, Any]:
    """The manifest of the one run whose id starts with ``ref`` (clear errors otherwise)."""
    df = all_runs(root)
    hits = df[df["run_id"].str.startswith(ref.strip())]
    if hits.empty:
        raise RunLookupError(f"no run {ref!r} in {root} (see `exitbench registry -r {root}`)")
    if len(hits) > 1:
        raise RunLookupError(f"run prefix {ref!r} is ambiguous in {root}: {', '.join(hits['run_id'].head(8))}")
    row = hits.iloc[0].to_dict()
    if require_complete and row["status"] != "complete":
        raise RunLookupError(f"run {row['run_id']} is {row['status']}, not complete: rerun its recording to"
                             " finish it")
    check_schema(hits, f"run {row['run_id']}")
    return row
