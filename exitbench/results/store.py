"""The result store: atomic Parquet writes, per-shard staging, compaction and run manifests.

Layout under a results root::

    <root>/<table>/run=<id>/part-0.parquet        compacted tables (what DuckDB reads)
    <root>/runs/run=<id>/manifest.parquet         one row; status running -> complete
    <root>/_staging/run=<id>/shard-00003/*.parquet  finished shards of a run in progress

A shard directory is filled under a temporary name and renamed into place in one step, so a
shard is either wholly there or not at all; a rerun skips the shards already there. Nothing under
``_staging`` or named ``.*.tmp`` matches the table globs, so readers never see partial files.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from exitbench.results.schema import RUNS, SHARD_TABLES, TABLES

ROW_GROUP_SIZE = 1_000_000  # large row groups: DuckDB slows down a lot on many small ones


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike) -> None:
    """Write a whole Parquet file under a temporary name in the same folder, then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_SIZE, compression="zstd")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast/reorder a table to ``schema``; missing nullable columns become nulls."""
    cols = []
    for field in schema:
        if field.name in table.column_names:
            cols.append(table.column(field.name).cast(field.type))
        else:
            cols.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(cols, schema=schema)


class ResultStore:
    """A results root on a local or shared file system."""

    def __init__(self, root: str | os.PathLike, on_shard_written: Callable[[int], None] | None = None):
        self.root = Path(root)
        self.on_shard_written = on_shard_written  # progress displays count published shards

    # -- paths ---------------------------------------------------------------------------
    def table_dir(self, table: str, run_id: str) -> Path:
        """The hive partition folder of one run's table."""
        return self.root / table / f"run={run_id}"

    def staging_dir(self, run_id: str) -> Path:
        """Where finished shards of an unfinished run wait for compaction."""
        return self.root / "_staging" / f"run={run_id}"

    def shard_dir(self, run_id: str, shard: int) -> Path:
        return self.staging_dir(run_id) / f"shard-{shard:05d}"

    # -- manifests -----------------------------------------------------------------------
    def write_manifest(self, manifest: dict) -> None:
        """Write a run's one-row manifest (replacing the previous one atomically)."""
        table = conform(pa.Table.from_pylist([manifest]), RUNS)
        write_parquet_atomic(table, self.table_dir("runs", manifest["run_id"]) / "manifest.parquet")

    def read_manifest(self, run_id: str) -> dict | None:
        """The run's manifest, or None if the run was never started here."""
        path = self.table_dir("runs", run_id) / "manifest.parquet"
        if not path.exists():
            return None
        rows = pq.read_table(path).to_pylist()
        return rows[0] if rows else None

    def is_complete(self, run_id: str) -> bool:
        """True when the run finished and its tables were compacted."""
        m = self.read_manifest(run_id)
        return bool(m) and m.get("status") == "complete"

    def run_ids(self) -> list[str]:
        """Every run with a manifest under this root."""
        runs = self.root / "runs"
        if not runs.is_dir():
            return []
        return sorted(p.name.removeprefix("run=") for p in runs.iterdir() if p.name.startswith("run="))

    # -- shards --------------------------------------------------------------------------
    def finished_shards(self, run_id: str) -> set[int]:
        """Indices of the shards already written for this run."""
        d = self.staging_dir(run_id)
        if not d.is_dir():
            return set()
        return {int(p.name.split("-")[1]) for p in d.iterdir()
                if p.name.startswith("shard-") and p.is_dir() and (p / "_SUCCESS").exists()}

    def write_shard(self, run_id: str, shard: int, tables: dict[str, pa.Table]) -> bool:
        """Publish one shard's tables in a single rename; False if that shard was already there."""
        final = self.shard_dir(run_id, shard)
        if final.exists():
            return False
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
        try:
            for name in SHARD_TABLES:
                table = conform(tables.get(name, TABLES[name].empty_table()), TABLES[name])
                pq.write_table(table, tmp / f"{name}.parquet", compression="zstd")
            (tmp / "_SUCCESS").write_text("")
            try:
                os.rename(tmp, final)  # atomic; fails if another writer published it first
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
                return False
            _fsync_dir(final.parent)
            if self.on_shard_written is not None:
                self.on_shard_written(shard)
            return True
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def read_shards(self, run_id: str, table: str) -> pa.Table:
        """All finished shards of a table, concatenated in shard order."""
        parts = [pq.read_table(self.shard_dir(run_id, s) / f"{table}.parquet")
                 for s in sorted(self.finished_shards(run_id))]
        if not parts:
            return TABLES[table].empty_table()
        return pa.concat_tables([conform(p, TABLES[table]) for p in parts])

    def compact(self, run_id: str, extra: dict[str, pa.Table] | None = None) -> dict[str, int]:
        """Merge the run's shards into one file per table (plus ``extra`` tables); returns row counts."""
        counts = {}
        for name in SHARD_TABLES:
            table = self.read_shards(run_id, name)
            if name == "blocks":
                table = table.sort_by([("utt_id", "ascending"), ("block", "ascending"),
                                       ("level", "ascending"), ("source", "ascending")])
            elif name == "utterances":
                table = table.sort_by([("utt_id", "ascending"), ("level", "ascending"),
                                       ("source", "ascending")])
            self._replace_partition(name, run_id, table)
            counts[name] = table.num_rows
        for name, table in (extra or {}).items():
            self._replace_partition(name, run_id, conform(table, TABLES[name]))
            counts[name] = table.num_rows
        return counts

    def _replace_partition(self, name: str, run_id: str, table: pa.Table) -> None:
        d = self.table_dir(name, run_id)
        write_parquet_atomic(table, d / "part-0.parquet")
        # stale files from an older layout of the same run would double rows: remove them
        for p in d.glob("*.parquet"):
            if p.name != "part-0.parquet":
                p.unlink(missing_ok=True)

    def drop_staging(self, run_id: str) -> None:
        """Remove a run's shards once compacted (and the staging folder once empty)."""
        shutil.rmtree(self.staging_dir(run_id), ignore_errors=True)
        try:
            self.staging_dir(run_id).parent.rmdir()
        except OSError:
            pass  # other runs are still staging here

    def delete_run(self, run_id: str) -> None:
        """Remove every table partition of a run (used by --force)."""
        for name in list(TABLES) + ["_staging"]:
            shutil.rmtree(self.root / name / f"run={run_id}", ignore_errors=True)


def json_dumps(obj: object) -> str:
    """Stable JSON for manifests and metadata columns."""
    return json.dumps(obj, sort_keys=True, default=str)

