"""The result store: atomic Parquet writes, per-shard staging, compaction and run manifests.

Layout under a results root::

    <root>/<table>/run=<id>/part-0.parquet        compacted tables (what DuckDB reads)
    <root>/runs/run=<id>/manifest.parquet         one row; status running -> complete
    <root>/_staging/run=<id>/shard-00003/*.parquet  finished shards of a run in progress
    <root>/_staging/run=<id>/_publish/*.parquet   a run's compacted tables, about to be published
    <root>/_locks/run=<id>.lock                   the run's writer (results.locks)

A shard directory is filled under a temporary name and renamed into place in one step, so a
shard is either wholly there or not at all; a rerun skips the shards already there. A finished
run is published whole: its compacted tables are written under its staging folder, renamed into
the table folders, and only then is the manifest marked ``complete``. Readers (results.views) see
only the tables of complete runs, so a run is visible all at once or not at all.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from exitbench.errors import ResultsRootError
from exitbench.results.schema import BLOCKS, RUNS, SCORE_PREFIX, SHARD_TABLES, TABLES

ROW_GROUP_SIZE = 1_000_000  # large row groups: DuckDB slows down a lot on many small ones
#: bumped by every write through this module: an open results.views.Root scans the root again after it
GENERATION = 0


def note_write() -> None:
    """Count a write to a results root (an open ``views.Root`` scans again after one)."""
    global GENERATION
    GENERATION += 1


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (so a rename in it is durable); a file system that cannot is let be."""
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


#: errno values that mean the results root cannot take a write (never the data's fault)
_ROOT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _errno_of(exc: OSError) -> int | None:
    """The errno of an OSError; pyarrow's IO errors carry it only in the message ("[Errno 28] ...")."""
    if exc.errno is not None:
        return exc.errno
    text = str(exc)
    if "[Errno " in text:
        with contextlib.suppress(ValueError):
            return int(text.split("[Errno ", 1)[1].split("]", 1)[0])
    return None


@contextlib.contextmanager
def root_errors(path: Path, needed_bytes: int = 0) -> Iterator[None]:
    """Turn a full, read-only or forbidden file system under ``path`` into one ResultsRootError line."""
    try:
        yield
    except OSError as exc:
        code = _errno_of(exc)
        if code not in _ROOT_ERRNOS:
            raise
        if code in (errno.ENOSPC, errno.EDQUOT):
            free = "unknown"
            for p in (path, *path.parents):
                with contextlib.suppress(OSError):
                    free = _mb(shutil.disk_usage(p).free)
                    break
            raise ResultsRootError(
                f"no space left on the file system of {path}: writing it needs about"
                f" {_mb(max(needed_bytes, 1))}, {free} free; free some space and rerun the same command"
                f" (finished shards are kept)") from None
        raise ResultsRootError(f"cannot write {path}: {exc.strerror}") from None


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike) -> None:
    """Write a whole Parquet file under a temporary name in the same folder, then rename it."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with root_errors(path, table.nbytes):
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_table(table, tmp)
            os.replace(tmp, path)
            fsync_path(path.parent)
            note_write()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_table(table: pa.Table, path: Path) -> None:
    """Write and fsync one Parquet file (its bytes are on disk before any rename publishes it)."""
    pq.write_table(table, path, row_group_size=ROW_GROUP_SIZE, compression="zstd")
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast/reorder a table to ``schema``; missing nullable columns become nulls.

    The blocks table also keeps its exit-score columns (``score_<name>``, float64), which vary by model.
    """
    cols, fields = [], list(schema)
    for field in schema:
        if field.name in table.column_names:
            cols.append(table.column(field.name).cast(field.type))
        else:
            cols.append(pa.nulls(table.num_rows, field.type))
    if schema is BLOCKS:
        for name in sorted(c for c in table.column_names if c.startswith(SCORE_PREFIX)):
            cols.append(table.column(name).cast(pa.float64()))
            fields.append(pa.field(name, pa.float64()))
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))


class ResultStore:
    """A results root on a local or shared file system."""

    def __init__(self, root: str | os.PathLike, on_shard_written: Callable[[int], None] | None = None):
        self.root = Path(root)
        self.on_shard_written = on_shard_written  # progress displays count published shards
        # a check of each shard's tables before it is published (it may raise to stop the run)
        self.before_shard: Callable[[dict[str, pa.Table]], None] | None = None

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

    def read_published(self, run_id: str, table: str) -> pa.Table | None:
        """A published run's table: its own file, or its rows of a pack (``exitbench pack``); None if neither."""
        path = self.table_dir(table, run_id) / "part-0.parquet"
        from exitbench.results.views import read_packs, run_identity

        m = self.read_manifest(run_id) or {}
        ident = run_identity(m.get("started_at"), m.get("finished_at"))
        for p in read_packs(self.root):
            if p.runs.get(run_id) == ident and table in p.files:
                # only the row groups whose statistics can hold the run: not the whole pack
                t = pq.read_table(self.root / p.files[table], filters=[("run", "==", run_id)])
                return t.drop_columns(["run"])
        if path.exists():
            return pq.read_table(path)
        return None

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
        if self.before_shard is not None:
            self.before_shard(tables)
        tmp = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with root_errors(final.parent, sum(t.nbytes for t in tables.values())):
                final.parent.mkdir(parents=True, exist_ok=True)
                tmp.mkdir()
                for name in SHARD_TABLES:
                    table = conform(tables.get(name, TABLES[name].empty_table()), TABLES[name])
                    pq.write_table(table, tmp / f"{name}.parquet", compression="zstd")
                (tmp / "_SUCCESS").write_text("")
                try:
                    os.rename(tmp, final)  # atomic; fails if another writer published it first
                except OSError:
                    shutil.rmtree(tmp, ignore_errors=True)
                    return False
                fsync_path(final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if self.on_shard_written is not None:
            self.on_shard_written(shard)
        return True

    def read_shards(self, run_id: str, table: str) -> pa.Table:
        """All finished shards of a table, concatenated in shard order."""
        parts = [pq.read_table(self.shard_dir(run_id, s) / f"{table}.parquet")
                 for s in sorted(self.finished_shards(run_id))]
        if not parts:
            return TABLES[table].empty_table()
        return pa.concat_tables([conform(p, TABLES[table]) for p in parts])

    def compacted_tables(self, run_id: str) -> dict[str, pa.Table]:
        """The run's shards merged into one sorted table each (blocks, utterances, errors)."""
        tables = {}
        for name in SHARD_TABLES:
            table = self.read_shards(run_id, name)
            if name == "blocks":
                table = table.sort_by([("utt_id", "ascending"), ("block", "ascending"),
                                       ("level", "ascending"), ("source", "ascending")])
            elif name == "utterances":
                table = table.sort_by([("utt_id", "ascending"), ("level", "ascending"),
                                       ("source", "ascending")])
            tables[name] = table
        return tables

    def publish(self, manifest: dict, tables: dict[str, pa.Table]) -> dict[str, int]:
        """Publish a finished run whole: tables staged, renamed into place, then the manifest, then cleanup.

        Readers see a run only once its manifest says ``complete`` (written last, atomically), so a
        kill at any step leaves either the old state or the new one visible, never a mix; the staged
        shards stay until the end, so a rerun after a kill publishes again from them.
        """
        run_id = manifest["run_id"]
        pub = self.staging_dir(run_id) / "_publish"
        shutil.rmtree(pub, ignore_errors=True)  # from an interrupted publication
        for name, table in tables.items():
            write_parquet_atomic(conform(table, TABLES[name]), pub / f"{name}.parquet")
        for name in tables:
            d = self.table_dir(name, run_id)
            with root_errors(d):
                d.mkdir(parents=True, exist_ok=True)
                os.replace(pub / f"{name}.parquet", d / "part-0.parquet")
                fsync_path(d)
            # stale files from an older layout of the same run would double rows: remove them
            for p in d.glob("*.parquet"):
                if p.name != "part-0.parquet":
                    p.unlink(missing_ok=True)
        self.write_manifest(manifest)
        self.drop_staging(run_id)
        note_write()
        return {name: t.num_rows for name, t in tables.items()}

    def drop_staging(self, run_id: str) -> None:
        """Remove a run's shards once published (and the staging folder once empty)."""
        shutil.rmtree(self.staging_dir(run_id), ignore_errors=True)
        with contextlib.suppress(OSError):
            self.staging_dir(run_id).parent.rmdir()  # fails while other runs are still staging here

    def delete_run(self, run_id: str) -> None:
        """Remove every table partition of a run (used by --force)."""
        for name in list(TABLES) + ["_staging"]:
            shutil.rmtree(self.root / name / f"run={run_id}", ignore_errors=True)
        note_write()

    def restage(self, run_id: str, shards: list[list[str]], redo: set[int]) -> None:
        """Put a published run's rows back into staging as shards, all but ``redo`` (which run again).

        Used when a complete run holds rows that must be recorded again (infrastructure failures
        an older version recorded as errors): the good shards are kept, only ``redo`` is re-run.
        """
        import pyarrow.compute as pc

        published = {name: self.read_published(run_id, name) for name in SHARD_TABLES}
        published = {name: (t if t is not None else TABLES[name].empty_table()) for name, t in published.items()}
        for index, ids in enumerate(shards):
            if index in redo:
                continue
            keep = pa.array(ids, pa.string())
            self.write_shard(run_id, index, {name: t.filter(pc.is_in(t.column("utt_id"), value_set=keep))
                                             for name, t in published.items()})

    # -- housekeeping ----------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Create the root if needed; raise ResultsRootError when it is a file or cannot be written."""
        if self.root.exists() and not self.root.is_dir():
            raise ResultsRootError(f"results root {self.root} is a file, not a directory")
        with root_errors(self.root):
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise ResultsRootError(f"results root {self.root} cannot be created: a parent is a file") from None
            except OSError as exc:
                if exc.errno in _ROOT_ERRNOS:
                    raise  # root_errors says it in its words (no space, read-only, forbidden)
                raise ResultsRootError(f"results root {self.root} cannot be created: {exc.strerror}") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise ResultsRootError(f"results root {self.root} is not writable")

    def clean_orphans(self, is_locked: Callable[[str], bool], min_age_s: float = 60.0) -> list[str]:
        """Remove what killed writers left behind; returns what was removed (as paths).

        Staging of a run whose manifest is already complete (a kill during cleanup), and temporary
        files and shard folders older than ``min_age_s`` of runs that no live process holds.
        Staged shards of unfinished runs are kept: they are what a rerun resumes from.
        """
        removed: list[str] = []
        staging = self.root / "_staging"
        if not staging.is_dir():
            return removed
        now = time.time()
        for d in staging.iterdir():
            if not d.name.startswith("run="):
                continue
            run_id = d.name.removeprefix("run=")
            if is_locked(run_id):
                continue
            m = None
            with contextlib.suppress(Exception):
                m = self.read_manifest(run_id)
            if m and m.get("status") == "complete":
                shutil.rmtree(d, ignore_errors=True)
                removed.append(str(d))
                continue
            for p in d.iterdir():
                with contextlib.suppress(OSError):
                    if p.name.endswith(".tmp") and now - p.stat().st_mtime > min_age_s:
                        shutil.rmtree(p) if p.is_dir() else p.unlink()
                        removed.append(str(p))
        for p in self.root.glob("*/run=*/.*.tmp"):
            run_id = p.parent.name.removeprefix("run=")
            with contextlib.suppress(OSError):
                if not is_locked(run_id) and now - p.stat().st_mtime > min_age_s:
                    p.unlink()
                    removed.append(str(p))
        with contextlib.suppress(OSError):
            staging.rmdir()
        return removed


def json_dumps(obj: object) -> str:
    """Stable JSON for manifests and metadata columns."""
    return json.dumps(obj, sort_keys=True, default=str)

