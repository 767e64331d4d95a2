"""``exitbench pack``: merge published runs' small files into large ones, atomically, without changing any answer.

A results root holds one file per table per run (``<table>/run=<id>/part-0.parquet``): one row group
each, a few thousand rows. Packing writes the recording tables (blocks, utterances, levels, errors)
of every complete run not yet packed into one file per table (``<table>/_pack/<gen>.parquet``, the
``run`` column stored, rows in run order, row groups of ``ROW_GROUP_SIZE`` rows), then switches
readers over, then removes the runs' own files. The steps, each safe to interrupt:

1. write each pack file under a temporary name, fsync it, rename it into ``_pack/`` (readers ignore
   pack files the pack manifest does not list);
2. write ``_packs/packs.json`` (temporary name, fsync, rename): from here on readers take these runs'
   rows from the pack (``views.scan``: a run is read from a pack whose entry names the same recording,
   ``run_identity`` of its manifest);
3. remove the runs' own files (each under the run's lock; a run recorded again meanwhile is left alone).

An interruption before 2 leaves unlisted pack files (removed by the next pack); after 2, leftover
per-run files of packed runs (removed by the next pack). Either way every query answers as before.
Manifests are not packed: they stay the per-run record of publication. Replays and sweeps stay
per run (they are rewritten by ``exitbench replay`` and ``sweep-policies``).

**Automatic packing** (``auto_pack``): after a recording publishes its run, a root holding
``AUTO_PACK_RUNS`` (64) or more complete runs not yet packed packs them into a new generation, so a
root that grows run by run (a checkpoint per training step, a sweep) never holds more than 63 runs'
small files beside a few large ones. ``EXITBENCH_AUTO_PACK=<runs>`` changes the threshold, ``0`` turns it
off. It is best effort: a pack already running elsewhere, or one that fails, leaves the root as it was
(packing is atomic) and the recorded run complete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from exitbench.errors import ResultsRootError, RunLockedError
from exitbench.results import store as _store
from exitbench.results.locks import RunLock, is_locked
from exitbench.results.views import (DATA_TABLES, PACK_DIR, PACKS_FILE, Pack, _sql_list, _sql_str, check_root,
                                     read_packs, run_identity, scan)

#: rows per row group of a pack file (DuckDB's own row-group size; its guidance is 100k-1M)
ROW_GROUP_SIZE = 122_880
_PACK_LOCK = "_pack"  # the pack's own lock (a RunLock under a name no run id takes)
#: unpacked complete runs that make a recording pack them (``auto_pack``; EXITBENCH_AUTO_PACK overrides, 0: never)
AUTO_PACK_RUNS = 64


class PackInterrupted(RuntimeError):
    """Raised by the fault injection of the tests (``fail_at``) between two steps."""


@dataclass
class PackOutcome:
    """What one ``pack`` did."""

    packed_runs: int = 0
    files_removed: int = 0
    pack_files: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    cleaned: list[str] = field(default_factory=list)  # leftovers of an interrupted pack, removed


def _write_packs(root: Path, packs: list[Pack]) -> None:
    """Replace the pack manifest atomically (temporary name, fsync, rename, fsync of the folder)."""
    path = root / PACKS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    doc = {"version": 1, "packs": [{"gen": p.gen, "files": p.files, "runs": p.runs} for p in packs]}
    try:
        with open(tmp, "w") as f:
            json.dump(doc, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _store.fsync_path(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _finish_previous(root: Path, outcome: PackOutcome) -> None:
    """Complete an interrupted pack: unlisted pack files go, per-run files of packed runs go."""
    listed = {str(root / rel) for p in read_packs(root) for rel in p.files.values()}
    for table in DATA_TABLES:
        folder = root / table / PACK_DIR
        if folder.is_dir():
            for f in folder.iterdir():
                if str(f) not in listed:
                    f.unlink(missing_ok=True)
                    outcome.cleaned.append(str(f))
    found = scan(root)
    for run_id in sorted(found.packed):
        _remove_run_files(root, run_id, found.packed[run_id], outcome, cleaned=True)


def _remove_run_files(root: Path, run_id: str, pack: Pack, outcome: PackOutcome, cleaned: bool = False) -> None:
    """Remove a packed run's own files, under its lock, if its manifest still names the packed recording."""
    dirs = [root / t / f"run={run_id}" for t in DATA_TABLES if t in pack.files and (root / t / f"run={run_id}").exists()]
    if not dirs:
        return
    try:
        with RunLock(root, run_id):
            manifest = _store.ResultStore(root).read_manifest(run_id) or {}
            if run_identity(manifest.get("started_at"), manifest.get("finished_at")) != pack.runs.get(run_id):
                return  # recorded again meanwhile: its own files are the live ones
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)
                if cleaned:
                    outcome.cleaned.append(str(d))
                outcome.files_removed += 1
    except RunLockedError:
        return  # being recorded: the next pack removes them if they are still packed


def pack(root: str | os.PathLike, row_group_size: int = ROW_GROUP_SIZE, fail_at: str | None = None) -> PackOutcome:
    """Pack every complete, sound, unpacked run of ``root`` (see the module docstring); safe to interrupt.

    ``fail_at`` ('written' or 'switched') raises PackInterrupted after that step (tests only).
    """
    root = check_root(root)
    if row_group_size < 1:
        raise ResultsRootError(f"row group size must be at least 1, not {row_group_size}")
    outcome = PackOutcome()
    with RunLock(root, _PACK_LOCK):
        _finish_previous(root, outcome)
        found = scan(root)
        todo = [r for r in found.complete() if r not in found.packed and not is_locked(root, r)
                and any(t in found.run_files.get(r, {}) for t in DATA_TABLES)]
        if not todo:
            _store.note_write()
            return outcome
        ident = found.identity()
        gen = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        files: dict[str, str] = {}
        con = duckdb.connect()
        con.execute("SET preserve_insertion_order = true")
        try:
            for table in DATA_TABLES:
                sources = [f for r in todo for f in found.run_files[r].get(table, [])]
                if not sources:
                    continue
                rel = f"{table}/{PACK_DIR}/{gen}.parquet"
                final = root / rel
                final.parent.mkdir(parents=True, exist_ok=True)
                tmp = final.parent / f".{final.name}.tmp"
                with _store.root_errors(final.parent):
                    con.execute(f"COPY (SELECT * FROM read_parquet({_sql_list(sources)}, hive_partitioning = true,"
                                f" union_by_name = true, hive_types = {{'run': VARCHAR}})) TO {_sql_str(tmp)}"
                                f" (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {int(row_group_size)})")
                    want = con.execute(f"SELECT sum(num_rows) FROM parquet_file_metadata({_sql_list(sources)})"
                                       ).fetchone()[0] or 0
                    got = con.execute(f"SELECT count(*) FROM read_parquet({_sql_str(tmp)})").fetchone()[0]
                    if got != want:
                        tmp.unlink(missing_ok=True)
                        raise ResultsRootError(f"pack of {table}: wrote {got} rows, expected {want}; nothing changed")
                    _store.fsync_path(tmp)
                    os.replace(tmp, final)
                    _store.fsync_path(final.parent)
                files[table] = rel
                outcome.rows[table] = int(got)
                outcome.pack_files.append(str(final))
        finally:
            con.close()
        if fail_at == "written":
            raise PackInterrupted("after writing the pack files")
        new = Pack(gen, files, {r: ident[r] for r in todo})
        with _store.root_errors(root / PACKS_FILE):
            _write_packs(root, read_packs(root) + [new])
        _store.note_write()
        if fail_at == "switched":
            raise PackInterrupted("after switching the pack manifest")
        outcome.packed_runs = len(todo)
        for r in todo:
            _remove_run_files(root, r, new, outcome)
        _store.note_write()
    return outcome


def auto_pack_threshold() -> int:
    """``AUTO_PACK_RUNS``, or EXITBENCH_AUTO_PACK when set (0: never pack automatically)."""
    raw = os.environ.get("EXITBENCH_AUTO_PACK", "").strip()
    if not raw:
        return AUTO_PACK_RUNS
    try:
        value = int(raw)
    except ValueError:
        raise ResultsRootError(f"EXITBENCH_AUTO_PACK={raw!r}: expected a number of runs (0: never)") from None
    if value < 0:
        raise ResultsRootError(f"EXITBENCH_AUTO_PACK={raw!r}: expected a number of runs (0: never)")
    return value


def auto_pack(root: str | os.PathLike, threshold: int | None = None) -> PackOutcome | None:
    """Pack the root's unpacked complete runs when they are ``threshold`` or more; None when it did not pack.

    A pack already running (its lock held) is left to finish the job; the caller's run is published either way.
    """
    threshold = auto_pack_threshold() if threshold is None else int(threshold)
    if threshold <= 0:
        return None
    found = scan(root)
    unpacked = [r for r in found.complete() if r not in found.packed
                and any(t in found.run_files.get(r, {}) for t in DATA_TABLES)]
    if len(unpacked) < threshold:
        return None
    try:
        return pack(root)
    except RunLockedError:
        return None
