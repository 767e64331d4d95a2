"""DuckDB over a results root: one view per table, over the published (complete) runs only.

A run is published when its manifest says ``complete`` (written last by ``ResultStore.publish``),
so the views show a run's tables all at once or not at all. A run whose files cannot be read is
one run's problem: its tables leave every view and ``runs`` shows it as ``corrupt``, with the file
and the fix in the ``problem`` column.

Reading at scale (DESIGN §4.3):

- The catalogue is the runs table (one manifest per run), read through a stat-validated cache
  (``_catalog/runs.parquet``: a manifest is read again only when its file changed), so listing a
  root costs one ``stat`` per run, not one Parquet footer per run.
- Files are never globbed across the root: a run's recording tables are ``<table>/run=<id>/part-0.parquet``
  or rows of a pack (``exitbench pack``: ``<table>/_pack/<gen>.parquet``, listed in ``_packs/packs.json``);
  a file's footer is checked once and remembered by its stat (``_catalog/files.parquet``).
- A :class:`Root` holds one DuckDB connection for a whole command; ``connect(root, runs=[...])``
  builds the views over those runs' files only (a pack is read with ``run IN (...)``, which its
  row-group statistics prune), so a query of one run reads that run's files whatever the root holds.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from exitbench.errors import ResultsRootError
from exitbench.results.schema import RUNS, TABLES

#: tables a results root may hold beyond the recording's own (replays are written by the policies)
EXTRA_TABLES = ("replays", "replay_blocks", "sweeps")
#: every table with a view over its files (``runs`` is built from the manifests)
FILE_TABLES = tuple(t for t in TABLES if t != "runs") + EXTRA_TABLES
#: the tables a run's publication writes (one file each; what ``exitbench pack`` merges)
DATA_TABLES = tuple(t for t in TABLES if t != "runs")
PACK_DIR = "_pack"  # <root>/<table>/_pack/<generation>.parquet
PACKS_FILE = Path("_packs") / "packs.json"
CATALOG_DIR = "_catalog"
_RUNS_INDEX = "runs.parquet"
_FILES_INDEX = "files.parquet"


def check_root(root: str | os.PathLike) -> Path:
    """A results root to read: it must exist and be a directory (ResultsRootError otherwise)."""
    root = Path(root)
    if not root.exists():
        raise ResultsRootError(f"no results root at {root} (record a run there first, or pass -r ROOT)")
    if not root.is_dir():
        raise ResultsRootError(f"results root {root} is a file, not a directory")
    return root


def _fix(run_id: str) -> str:
    return f"re-record it with `exitbench repair {run_id}` (or the original `exitbench run ... --force`)"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _sql_list(files: Iterable[Path | str]) -> str:
    return "[" + ", ".join(_sql_str(f) for f in files) + "]"


def _sql_str(value: object) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _fetch(rel: duckdb.DuckDBPyRelation) -> pa.Table:
    fetch = getattr(rel, "to_arrow_table", None) or rel.arrow
    return fetch()


def _stat_key(path: str | os.PathLike) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _write_cache(table: pa.Table, path: Path) -> None:
    """Best effort: a cache that cannot be written (a read-only root) is simply not kept."""
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _read_cache(path: Path) -> pa.Table | None:
    try:
        return pq.ParquetFile(path).read()  # not pq.read_table, which imports pyarrow.dataset (0.6 s)
    except Exception:  # missing, half-written by an older version, garbage: rebuilt from the files
        return None


# -- the catalogue of runs --------------------------------------------------------------------------
def run_identity(started_at: object, finished_at: object) -> str:
    """What tells one recording of a run id from another (a pack holds the rows of one of them)."""
    return f"{started_at}|{finished_at}"


def _read_manifest_files(files: list[Path]) -> tuple[list[dict], dict[str, str]]:
    """Rows of the given manifests (one C++ scan in the common case) and the unreadable ones."""
    corrupt: dict[str, str] = {}
    rows: list[dict] = []
    if not files:
        return rows, corrupt
    try:
        con = duckdb.connect()
        table = _fetch(con.sql(f"SELECT * FROM read_parquet({_sql_list(files)}, union_by_name = true,"
                               f" filename = true)"))
        con.close()
        rows = table.to_pylist()
    except duckdb.Error:
        rows = []
        for f in files:
            try:
                t = pq.read_table(f)
                rows.extend(dict(r, filename=str(f)) for r in t.to_pylist())
            except Exception as exc:  # any unreadable manifest: that run only
                run_id = f.parent.name.removeprefix("run=")
                corrupt[run_id] = f"unreadable manifest {f}: {_first_line(exc)}; {_fix(run_id)}"
                rows.append({"run_id": run_id, "status": "corrupt", "filename": str(f)})
    return rows, corrupt


#: the manifests' columns, in order (the ``runs`` view adds ``problem`` and ``run``)
RUN_COLUMNS = tuple(f.name for f in RUNS)
#: what the Python side of a scan reads of the catalogue (the rest, e.g. 19 KB of model metadata a run, only
#: DuckDB reads, from the cache file, when a query names it)
_SCAN_COLUMNS = ("run", "status", "started_at", "finished_at", "_ino", "_size", "_mtime_ns")
_CACHE_COLUMNS = RUN_COLUMNS + ("problem", "run", "_ino", "_size", "_mtime_ns")
_DUCK_TYPES = {pa.string(): "VARCHAR", pa.int16(): "SMALLINT", pa.int32(): "INTEGER", pa.int64(): "BIGINT",
               pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN"}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _ddl(schema: pa.Schema) -> str:
    """The columns of ``schema`` as DuckDB DDL (no Arrow array is built: pyarrow would import pandas)."""
    return ", ".join(f"{_quote(f.name)} {_DUCK_TYPES[f.type]}" for f in schema)


_RUNS_VIEW_SCHEMA = pa.schema(list(RUNS) + [pa.field("problem", pa.string()), pa.field("run", pa.string())])
_RUNS_SELECT = ", ".join(map(_quote, [f.name for f in _RUNS_VIEW_SCHEMA]))


@dataclass
class Catalog:
    """The runs of a root as the scan sees them, and where the ``runs`` view reads its rows.

    Every readable manifest is a row of the cache file ``_catalog/runs.parquet`` (``cache``), which the
    view reads directly (DuckDB reads only the columns a query names); rows the cache does not hold
    (unreadable manifests; every new one when the cache cannot be written) are ``extra`` (in memory).
    """

    status: dict[str, str | None]  # run -> manifest status, sorted by run
    identity: dict[str, str]  # run -> run_identity
    corrupt: dict[str, str]  # run -> problem (unreadable manifests)
    cache: str | None = None  # the cache file the view reads
    cache_runs: list[str] | None = None  # only these runs of it (None: all of its rows)
    extra: pa.Table | None = None

    def sql(self) -> str:
        """The SELECT of the rows (columns of the runs view), from the cache file and the extra rows."""
        parts = []
        if self.cache is not None:
            where = "" if self.cache_runs is None else f" WHERE run IN ({', '.join(map(_sql_str, self.cache_runs))})"
            parts.append(f"SELECT {_RUNS_SELECT} FROM read_parquet({_sql_str(self.cache)}){where}")
        if self.extra is not None and self.extra.num_rows:
            parts.append(f"SELECT {_RUNS_SELECT} FROM _runs_extra")
        if not parts:
            parts.append(f"SELECT {_RUNS_SELECT} FROM _runs_empty")
        return " UNION ALL ".join(parts)


def _read_scan_columns(path: Path) -> dict[str, list] | None:
    """The scan's columns of the cache file (None when it is missing, of another layout or unreadable)."""
    try:
        pf = pq.ParquetFile(path)
        if not set(_CACHE_COLUMNS) <= set(pf.schema_arrow.names):
            return None
        t = pf.read(columns=list(_SCAN_COLUMNS))
        return {c: t.column(c).to_pylist() for c in _SCAN_COLUMNS}
    except Exception:  # missing, half-written by an older version, garbage: rebuilt from the manifests
        return None


def _rewrite_cache(path: Path, old: Path | None, keep: list[str], fresh: pa.Table | None, expect: int) -> bool:
    """Write the cache file anew: ``keep``'s rows of the old file (copied by DuckDB, never held in Python) and
    the ``fresh`` rows, sorted by run; False when it cannot be written (a read-only root)."""
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    cols = ", ".join(map(_quote, _CACHE_COLUMNS))
    con = duckdb.connect()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        parts, params = [], []
        if old is not None and keep:
            parts.append(f"SELECT {cols} FROM read_parquet({_sql_str(old)}) WHERE run IN (SELECT unnest(?))")
            params.append(keep)
        if fresh is not None and fresh.num_rows:
            con.register("_fresh", fresh)
            parts.append(f"SELECT {cols} FROM _fresh")
        if not parts:
            return False
        con.execute(f"COPY (SELECT * FROM ({' UNION ALL '.join(parts)}) ORDER BY run) TO {_sql_str(tmp)}"
                    f" (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 1024)", params or None)
        got = con.execute(f"SELECT count(*) FROM read_parquet({_sql_str(tmp)})").fetchone()[0]
        if got != expect:  # the old file changed under us: keep nothing half-right
            raise OSError(f"catalogue cache: wrote {got} rows, expected {expect}")
        os.replace(tmp, path)
        return True
    except (OSError, duckdb.Error):
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
    finally:
        con.close()


def _read_manifests(root: Path) -> Catalog:
    """Every manifest of the root, through the stat-validated cache ``_catalog/runs.parquet``.

    Warm (every manifest's stat matches its cached row), the scan reads only the cache's small columns
    and the view reads the file itself; otherwise the changed and new manifests are read and the cache
    is written again (DuckDB copies the kept rows), and where it cannot be written they stay in memory.
    """
    runs_dir = root / "runs"
    found: dict[str, tuple[str, tuple[int, int, int]]] = {}
    if runs_dir.is_dir():
        with os.scandir(runs_dir) as it:
            for e in it:
                if e.name.startswith("run="):
                    p = e.path + "/manifest.parquet"  # a string, not a Path: 1,000 runs, 10 ms of pathlib
                    key = _stat_key(p)
                    if key is not None:
                        found[e.name.removeprefix("run=")] = (p, key)
    cache_path = root / CATALOG_DIR / _RUNS_INDEX
    cached = _read_scan_columns(cache_path) if found else None
    info: dict[str, tuple[str | None, str]] = {}  # run -> (status, identity)
    keep: list[str] = []
    rows_in_cache = 0
    if cached is not None:
        rows_in_cache = len(cached["run"])
        for run, st, a, b, i, s, m in zip(*(cached[c] for c in _SCAN_COLUMNS)):
            if run in found and found[run][1] == (i, s, m) and run not in info:
                info[run] = (st, run_identity(a, b))
                keep.append(run)
    todo = sorted(r for r in found if r not in info)
    if not todo and cached is not None and len(keep) == rows_in_cache:  # warm: nothing read but the cache
        return Catalog({r: info[r][0] for r in sorted(info)}, {r: info[r][1] for r in info}, {}, str(cache_path))
    rows, corrupt = _read_manifest_files([Path(found[r][0]) for r in todo])
    cols: dict[str, list] = {c: [] for c in _CACHE_COLUMNS}
    for r in rows:
        run = Path(r.pop("filename")).parent.name.removeprefix("run=")  # the partition, whatever the file says
        for c in RUN_COLUMNS:
            cols[c].append(r.get(c))
        cols["problem"].append(corrupt.get(run))
        cols["run"].append(run)
        for name, v in zip(("_ino", "_size", "_mtime_ns"), found[run][1]):
            cols[name].append(v)
        info[run] = (r.get("status"), run_identity(r.get("started_at"), r.get("finished_at")))
    fresh = pa.Table.from_pydict(cols, schema=_RUNS_VIEW_SCHEMA.append(pa.field("_ino", pa.int64()))
                                 .append(pa.field("_size", pa.int64())).append(pa.field("_mtime_ns", pa.int64())))
    bad = [p is not None for p in cols["problem"]]
    good = fresh.filter(pa.array([not b for b in bad], pa.bool_()))
    unreadable = fresh.filter(pa.array(bad, pa.bool_()))
    status = {r: info[r][0] for r in sorted(info)}
    identity = {r: info[r][1] for r in info}
    old = cache_path if cached is not None else None
    if _rewrite_cache(cache_path, old, keep, good, len(keep) + good.num_rows):  # corrupt manifests: never cached
        return Catalog(status, identity, corrupt, str(cache_path), None, unreadable)
    # the cache cannot be written: the kept rows from the old file (filtered), the rest in memory
    return Catalog(status, identity, corrupt, str(old) if old is not None and keep else None,
                   keep if old is not None and keep else None, pa.concat_tables([good, unreadable]))


# -- packs -------------------------------------------------------------------------------------------
@dataclass
class Pack:
    """One generation of ``exitbench pack``: a file per recording table holding many runs' rows."""

    gen: str
    files: dict[str, str]  # table -> path relative to the root
    runs: dict[str, str]  # run id -> identity (run_identity) of the recording it holds


def read_packs(root: str | os.PathLike) -> list[Pack]:
    """The packs the root's pack manifest lists (none when it has no ``_packs/packs.json``)."""
    path = Path(root) / PACKS_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise ResultsRootError(f"unreadable pack manifest {path}: {_first_line(exc)}; restore it from a backup"
                               " or delete it and record the packed runs again") from None
    return [Pack(p["gen"], dict(p["files"]), dict(p["runs"])) for p in doc.get("packs", [])]


# -- what a root holds ---------------------------------------------------------------------------------
@dataclass
class RootScan:
    """What a results root holds: every manifest (the catalogue) and the readable files of complete runs."""

    catalog: Catalog
    files: dict[str, list[str]] = field(default_factory=dict)  # table -> per-run files of complete, sound runs
    corrupt: dict[str, str] = field(default_factory=dict)  # run id -> problem
    packs: list[Pack] = field(default_factory=list)
    packed: dict[str, Pack] = field(default_factory=dict)  # run id -> the pack holding its live recording
    run_files: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # run -> table -> files
    schema_of: dict[str, str] = field(default_factory=dict)  # file -> schema fingerprint

    def complete(self) -> list[str]:
        """Complete, sound runs (sorted)."""
        return [r for r, s in self.catalog.status.items() if s == "complete" and r not in self.corrupt]

    def identity(self) -> dict[str, str]:
        """Run -> the identity of its manifest's recording (``run_identity``)."""
        return self.catalog.identity

    def runs_sql(self) -> str:
        """The SELECT of the ``runs`` view: the catalogue's rows, runs with unreadable files marked corrupt."""
        base = self.catalog.sql()
        marks = {r: p for r, p in self.corrupt.items() if r not in self.catalog.corrupt}
        if marks:
            values = ", ".join(f"({_sql_str(r)}, {_sql_str(p)})" for r, p in sorted(marks.items()))
            base = (f"SELECT c.* REPLACE (CASE WHEN m.run IS NULL THEN c.status ELSE 'corrupt' END AS status,"
                    f" coalesce(m.problem, c.problem) AS problem) FROM ({base}) c"
                    f" LEFT JOIN (VALUES {values}) m(run, problem) ON c.run = m.run")
        return f"SELECT {_RUNS_SELECT} FROM ({base}) ORDER BY run"


def _verify(root: Path, checks: list[tuple[str, str, str, tuple[int, int, int] | None]]
            ) -> tuple[dict[str, str], dict[str, str]]:
    """Read the footer of every (run, table, file, stat) not verified before with the same stat; the bad runs.

    Returns (run -> problem, file -> schema fingerprint).
    """
    cache_path = root / CATALOG_DIR / _FILES_INDEX
    cached: dict[str, tuple[tuple[int, int, int], str]] = {}
    if checks:
        t = _read_cache(cache_path)
        if t is not None and set(t.column_names) >= {"path", "_ino", "_size", "_mtime_ns", "schema"}:
            for p, i, s, m, fp in zip(*(t.column(c).to_pylist() for c in ("path", "_ino", "_size", "_mtime_ns",
                                                                          "schema"))):
                cached[p] = ((i, s, m), fp)
    bad: dict[str, str] = {}
    schema_of: dict[str, str] = {}
    changed = False
    prefix = len(str(root)) + 1
    for run, table, f, key in checks:
        rel = f[prefix:]
        hit = cached.get(rel)
        if key is not None and hit is not None and hit[0] == key:
            schema_of[f] = hit[1]
            continue
        try:
            if key is None:
                raise FileNotFoundError("missing file")
            schema = pq.read_metadata(f).schema.to_arrow_schema()
        except Exception as exc:
            if run not in bad:
                bad[run] = f"unreadable {table} file {f}: {_first_line(exc)}; {_fix(run)}"
            cached.pop(rel, None)
            changed = True
            continue
        fp = hashlib.sha1(str(schema.remove_metadata()).encode()).hexdigest()[:16]
        schema_of[f] = fp
        cached[rel] = (key, fp)
        changed = True
    if changed:
        items = sorted(cached.items())
        _write_cache(pa.table({"path": [p for p, _ in items], "_ino": [k[0] for _, (k, _f) in items],
                               "_size": [k[1] for _, (k, _f) in items], "_mtime_ns": [k[2] for _, (k, _f) in items],
                               "schema": [fp for _, (_k, fp) in items]}), cache_path)
    return bad, schema_of


def _extra_files(root: Path, table: str, runs: set[str]) -> dict[str, list[str]]:
    """Files of a replay/sweep table, per run (these tables have sub-partitions under each run)."""
    folder = root / table
    out: dict[str, list[str]] = {}
    if not folder.is_dir():
        return out
    with os.scandir(folder) as it:
        for e in it:
            run = e.name.removeprefix("run=")
            if e.name.startswith("run=") and run in runs:
                found = sorted(str(p) for p in Path(e.path).glob("**/*.parquet") if not p.name.startswith("."))
                if found:
                    out[run] = found
    return out


def scan(root: str | os.PathLike) -> RootScan:
    """Read the catalogue and locate (and check, once per file version) the files of every complete run."""
    root = Path(root)
    catalog = _read_manifests(root)
    corrupt = dict(catalog.corrupt)
    packs = read_packs(root)
    complete = {r for r, s in catalog.status.items() if s == "complete"}
    ident = catalog.identity
    packed: dict[str, Pack] = {}
    for p in packs:  # a later pack of the same recording wins (never happens: a packed run is not packed again)
        for r, i in p.runs.items():
            if r in complete and ident.get(r) == i:
                packed[r] = p
    run_files: dict[str, dict[str, list[str]]] = {r: {} for r in complete}
    checks: list[tuple[str, str, str, tuple[int, int, int] | None]] = []
    base = str(root)
    for p in {id(p): p for p in packed.values()}.values():
        for table, rel in p.files.items():
            f = f"{base}/{rel}"
            key = _stat_key(f)
            checks.extend((r, table, f, key) for r in p.runs if packed.get(r) is p)
    unpacked = sorted(r for r in complete if r not in packed)
    for table in DATA_TABLES:
        for r in unpacked:
            f = f"{base}/{table}/run={r}/part-0.parquet"
            key = _stat_key(f)
            if key is not None:  # a table a run never wrote (an older layout) is no problem
                run_files[r][table] = [f]
                checks.append((r, table, f, key))
    for table in EXTRA_TABLES:
        for r, fs in _extra_files(root, table, complete).items():
            run_files[r][table] = fs
            checks.extend((r, table, f, _stat_key(f)) for f in fs)
    bad, schema_of = _verify(root, checks)
    corrupt.update(bad)
    files = {t: [f for r in sorted(run_files) if r not in corrupt for f in run_files[r].get(t, [])]
             for t in FILE_TABLES}
    return RootScan(catalog, files, corrupt, packs, packed, run_files, schema_of)


def _table_sql(root: Path, found: RootScan, table: str, focus: set[str] | None) -> str | None:
    """The SELECT behind one view: the focused runs' own files (one read per schema) and their packs' rows."""
    runs = [r for r in found.complete() if focus is None or r in focus]
    groups: dict[str, list[str]] = {}
    packs: dict[str, tuple[Pack, list[str]]] = {}
    for r in runs:
        p = found.packed.get(r)
        if p is not None and table in p.files:
            packs.setdefault(p.gen, (p, []))[1].append(r)
        for f in found.run_files.get(r, {}).get(table, []):
            groups.setdefault(found.schema_of.get(f, ""), []).append(f)
    parts = [f"SELECT * FROM read_parquet({_sql_list(fs)}, hive_partitioning = true,"
             f" hive_types = {{'run': VARCHAR}})" for fs in sorted(groups.values(), key=lambda fs: min(fs))]
    for p, live in packs.values():
        where = "" if len(live) == len(p.runs) else f" WHERE run IN ({', '.join(map(_sql_str, live))})"
        parts.append(f"SELECT * FROM read_parquet({_sql_str(root / p.files[table])}, hive_partitioning = false)"
                     f"{where}")
    return " UNION ALL BY NAME ".join(parts) if parts else None


def _create_views(con: duckdb.DuckDBPyConnection, root: Path, found: RootScan, focus: set[str] | None,
                  tables: Iterable[str]) -> None:
    for name in tables:
        sql = _table_sql(root, found, name, focus)
        if sql:
            con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")
        elif name in TABLES:
            # an empty view with the right columns keeps queries valid on an empty root
            schema = TABLES[name].append(pa.field("run", pa.string()))
            con.execute(f"CREATE OR REPLACE TABLE _empty_{name} ({_ddl(schema)})")
            con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM _empty_{name}")
        else:
            con.execute(f"DROP VIEW IF EXISTS {name}")


# -- one connection per command ---------------------------------------------------------------------------
def _generation() -> int:
    from exitbench.results import store

    return store.GENERATION


class Root(os.PathLike):
    """A results root opened for one command: one DuckDB connection, its views built for the runs it reads.

    ``connection(runs, tables)`` widens the views to cover those runs and tables (never narrows them),
    so every reader of a command shares one connection and one scan of the catalogue; a write through
    the store (``results.store``) makes the next call scan again. It is a path (``os.fspath``), so it
    can be passed wherever a results root is.
    """

    def __init__(self, path: str | os.PathLike, database: str = ":memory:") -> None:
        """Open ``path`` (nothing is read until the first connection)."""
        self.path = Path(path)
        self._database = database
        self._con: duckdb.DuckDBPyConnection | None = None
        self._scan: RootScan | None = None
        self._gen = -1
        self._focus: set[str] | None = set()  # None: every run
        self._tables: set[str] = set()
        self.connections = 0  # how many connections were opened (instrumentation: one per command)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"Root({str(self.path)!r})"

    def scan(self) -> RootScan:
        """The catalogue and the located files (scanned again after a write through the store)."""
        if self._scan is None or self._gen != _generation():
            self._gen = _generation()
            self._scan = scan(self.path)
            if self._con is not None:
                self._build(self._focus, self._tables)
        return self._scan

    def _build(self, focus: set[str] | None, tables: set[str]) -> None:
        found = self._scan
        assert found is not None and self._con is not None
        con = self._con
        _create_views(con, self.path, found, focus, sorted(tables, key=list(FILE_TABLES).index))
        extra = found.catalog.extra
        if extra is not None and extra.num_rows:  # rows the cache file does not hold (rare: see Catalog)
            con.register("_runs_arrow", extra)
            con.execute("CREATE OR REPLACE TABLE _runs_extra AS SELECT * FROM _runs_arrow")
            con.unregister("_runs_arrow")
        con.execute(f"CREATE TABLE IF NOT EXISTS _runs_empty ({_ddl(_RUNS_VIEW_SCHEMA)})")
        con.execute(f"CREATE OR REPLACE VIEW runs AS {found.runs_sql()}")

    def connection(self, runs: Sequence[str] | None = None,
                   tables: Sequence[str] | None = None) -> duckdb.DuckDBPyConnection:
        """The shared connection, its views covering at least ``runs`` (None: all) and ``tables`` (None: all)."""
        found = self.scan()
        want_tables = set(FILE_TABLES if tables is None else tables)
        # the runs matter only for the file views: a catalogue-only call (tables=()) widens no focus, so the
        # catalogue read that resolves a run id does not make the next query of that run read every run's files
        want_focus = (None if runs is None else set(runs)) if want_tables else set()
        cover = self._focus is None or (want_focus is not None and want_focus <= self._focus)
        if self._con is None:
            self._con = duckdb.connect(self._database)
            self._con.execute("SET enable_progress_bar = false")
            self.connections += 1
            self._focus, self._tables = want_focus, want_tables
            self._build(self._focus, self._tables)
        elif not cover or not want_tables <= self._tables:
            self._focus = None if (self._focus is None or want_focus is None) else self._focus | want_focus
            self._tables |= want_tables
            self._build(self._focus, self._tables)
        del found
        return self._con

    def cursor(self, runs: Sequence[str] | None = None, tables: Sequence[str] | None = None
               ) -> duckdb.DuckDBPyConnection:
        """A cursor of the shared connection (closing it leaves the connection open)."""
        return self.connection(runs, tables).cursor()

    def close(self) -> None:
        """Close the connection."""
        if self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self) -> "Root":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_ACTIVE: contextvars.ContextVar[dict[str, Root]] = contextvars.ContextVar("exitbench_roots", default={})
_AUTO: contextvars.ContextVar[dict[str, Root] | None] = contextvars.ContextVar("exitbench_auto", default=None)


def _key(path: str | os.PathLike) -> str:
    return os.path.realpath(os.fspath(path))


@contextlib.contextmanager
def session(path: str | os.PathLike) -> Iterator[Root]:
    """Within the block, ``connect(path)`` anywhere returns a cursor of one shared :class:`Root`."""
    current = _ACTIVE.get()
    key = _key(path)
    if key in current:
        yield current[key]
        return
    root = Root(path)
    token = _ACTIVE.set({**current, key: root})
    try:
        yield root
    finally:
        _ACTIVE.reset(token)
        root.close()


@contextlib.contextmanager
def sessions() -> Iterator[dict[str, Root]]:
    """Within the block, every root connected to gets one shared :class:`Root` (the command line's mode)."""
    if _AUTO.get() is not None:
        yield _AUTO.get()  # type: ignore[misc]
        return
    opened: dict[str, Root] = {}
    token = _AUTO.set(opened)
    try:
        yield opened
    finally:
        _AUTO.reset(token)
        for root in opened.values():
            root.close()


def active_root(path: str | os.PathLike) -> Root | None:
    """The Root of a session open on ``path`` (None outside one)."""
    if isinstance(path, Root):
        return path
    current = _ACTIVE.get()
    key = _key(path)
    if current and key in current:
        return current[key]
    auto = _AUTO.get()
    if auto is None:
        return None
    if key not in auto:
        auto[key] = Root(path)
    return auto[key]


def connect(root: str | os.PathLike, database: str = ":memory:", *, runs: Sequence[str] | None = None,
            tables: Sequence[str] | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with views ``blocks``, ``utterances``, ``levels``, ``runs``, ``errors`` (and replays).

    ``runs``: the runs the caller reads (None: every run); ``tables``: the views it needs (None: all).
    Inside a :func:`session` on the same root (or given a :class:`Root`), a cursor of its one
    connection; otherwise a connection of its own.
    """
    shared = active_root(root) if database == ":memory:" else None
    if shared is not None:
        return shared.cursor(runs, tables)
    return Root(root, database).connection(runs, tables)


def fetch_arrow(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pa.Table:
    """Run SQL and return an Arrow table (DuckDB 1.x and 2.x name the call differently)."""
    return _fetch(con.sql(sql, params=params or None))


def runs_of_params(params: Sequence[object] | None) -> list[str] | None:
    """The runs a per-run query reads: the strings among its parameters (None, i.e. every run, if none).

    Every per-run query of the library passes its run id as a parameter; a string that is not a run
    id (an utterance id) only widens the focus by nothing.
    """
    found = [p for p in (params or []) if isinstance(p, str)]
    return found or None


def tables_named(sql: str) -> list[str]:
    """The views a SQL text may read (every view name it mentions as a word)."""
    import re

    words = set(re.findall(r"[A-Za-z_]+", sql.lower()))
    return [t for t in FILE_TABLES if t in words]


def query(root: str | os.PathLike, sql: str) -> pa.Table:
    """Run one SQL statement over a results root and return an Arrow table."""
    con = connect(root, tables=tables_named(sql))
    try:
        return fetch_arrow(con, sql)
    finally:
        con.close()
