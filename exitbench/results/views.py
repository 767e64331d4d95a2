"""DuckDB over a results root: one view per table, over the published (complete) runs only.

A run is published when its manifest says ``complete`` (written last by ``ResultStore.publish``),
so the views show a run's tables all at once or not at all. A run whose files cannot be read is
one run's problem: its tables leave every view and ``runs`` shows it as ``corrupt``, with the file
and the fix in the ``problem`` column.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from exitbench.errors import ResultsRootError
from exitbench.results.schema import RUNS, TABLES

#: tables a results root may hold beyond the recording's own (replays are written by the policies)
EXTRA_TABLES = ("replays", "replay_blocks", "sweeps")
#: every table with a view over its files (``runs`` is built from the manifests)
FILE_TABLES = tuple(t for t in TABLES if t != "runs") + EXTRA_TABLES


def check_root(root: str | os.PathLike) -> Path:
    """A results root to read: it must exist and be a directory (ResultsRootError otherwise)."""
    root = Path(root)
    if not root.exists():
        raise ResultsRootError(f"no results root at {root} (record a run there first, or pass -r ROOT)")
    if not root.is_dir():
        raise ResultsRootError(f"results root {root} is a file, not a directory")
    return root


def _run_of(path: Path, root: Path, table: str) -> str:
    """The run id of a file under ``<root>/<table>/run=<id>/...``."""
    return path.relative_to(root / table).parts[0].removeprefix("run=")


def _fix(run_id: str) -> str:
    return f"re-record it with `exitbench repair {run_id}` (or the original `exitbench run ... --force`)"


@dataclass
class RootScan:
    """What a results root holds: every manifest (as the runs table) and the readable files of complete runs."""

    runs: pa.Table
    files: dict[str, list[str]] = field(default_factory=dict)  # table -> files of complete, sound runs
    corrupt: dict[str, str] = field(default_factory=dict)  # run id -> problem


def _read_manifests(root: Path) -> tuple[pa.Table, dict[str, str]]:
    files = sorted((root / "runs").glob("run=*/manifest.parquet")) if (root / "runs").is_dir() else []
    corrupt: dict[str, str] = {}
    parts: list[pa.Table] = []
    if files:
        try:  # one C++ scan in the common case
            con = duckdb.connect()
            parts = [_fetch(con.sql(f"SELECT * FROM read_parquet({_sql_list(files)}, union_by_name = true,"
                                    f" filename = true)"))]
            con.close()
        except duckdb.Error:
            parts = []
            for f in files:
                try:
                    t = pq.read_table(f)
                    parts.append(t.append_column("filename", pa.array([str(f)] * t.num_rows, pa.string())))
                except Exception as exc:  # any unreadable manifest: that run only
                    run_id = f.parent.name.removeprefix("run=")
                    corrupt[run_id] = f"unreadable manifest {f}: {_first_line(exc)}; {_fix(run_id)}"
                    parts.append(pa.table({"run_id": [run_id], "status": ["corrupt"], "filename": [str(f)]}))
    rows = []
    for t in parts:
        rows.extend(t.to_pylist())
    fields = list(RUNS) + [pa.field("problem", pa.string()), pa.field("run", pa.string())]
    cols: dict[str, list] = {f.name: [] for f in fields}
    for r in rows:
        run = Path(r.pop("filename")).parent.name.removeprefix("run=")  # the partition, whatever the file says
        for f in RUNS:
            cols[f.name].append(r.get(f.name))
        cols["problem"].append(corrupt.get(run))
        cols["run"].append(run)
    table = pa.Table.from_pydict(cols, schema=pa.schema(fields))
    return table, corrupt


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _sql_list(files: list[Path] | list[str]) -> str:
    return "[" + ", ".join("'" + str(f).replace("'", "''") + "'" for f in files) + "]"


def _fetch(rel: duckdb.DuckDBPyRelation) -> pa.Table:
    fetch = getattr(rel, "to_arrow_table", None) or rel.arrow
    return fetch()


def scan(root: str | os.PathLike) -> RootScan:
    """Read the manifests and list the files of every complete run, table by table."""
    root = Path(root)
    runs, corrupt = _read_manifests(root)
    complete = {r for r, s in zip(runs.column("run").to_pylist(), runs.column("status").to_pylist())
                if s == "complete"}
    files: dict[str, list[str]] = {}
    for name in FILE_TABLES:
        folder = root / name
        if not folder.is_dir():
            continue
        found = sorted(p for p in folder.glob("run=*/**/*.parquet") if not p.name.startswith("."))
        files[name] = [str(p) for p in found if _run_of(p, root, name) in complete]
    return RootScan(runs, files, corrupt)


def _find_corrupt(root: Path, files: dict[str, list[str]]) -> dict[str, str]:
    """Runs with a file whose footer cannot be read (checked only when a view failed to build)."""
    bad: dict[str, str] = {}
    for name, paths in files.items():
        for f in paths:
            run_id = _run_of(Path(f), root, name)
            if run_id in bad:
                continue
            try:
                pq.read_metadata(f)
            except Exception as exc:
                bad[run_id] = f"unreadable {name} file {f}: {_first_line(exc)}; {_fix(run_id)}"
    return bad


def _mark_corrupt(runs: pa.Table, corrupt: dict[str, str]) -> pa.Table:
    run_col = runs.column("run").to_pylist()
    status = [("corrupt" if r in corrupt else s) for r, s in zip(run_col, runs.column("status").to_pylist())]
    problem = [corrupt.get(r, p) for r, p in zip(run_col, runs.column("problem").to_pylist())]
    runs = runs.set_column(runs.schema.get_field_index("status"), "status", pa.array(status, pa.string()))
    return runs.set_column(runs.schema.get_field_index("problem"), "problem", pa.array(problem, pa.string()))


def _create_views(con: duckdb.DuckDBPyConnection, files: dict[str, list[str]]) -> None:
    for name in FILE_TABLES:
        paths = files.get(name) or []
        if paths:
            con.execute(
                f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet({_sql_list(paths)},"
                f" hive_partitioning = true, union_by_name = true, hive_types = {{'run': VARCHAR}})"
            )
        elif name in TABLES:
            # an empty view with the right columns keeps queries valid on an empty root
            empty = TABLES[name].empty_table().append_column("run", pa.array([], pa.string()))
            con.register(f"_empty_{name}", empty)
            con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM _empty_{name}")


def connect(root: str | os.PathLike, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with views ``blocks``, ``utterances``, ``levels``, ``runs``, ``errors`` (and replays)."""
    root = Path(root)
    found = scan(root)
    con = duckdb.connect(database)
    try:
        _create_views(con, found.files)
    except duckdb.Error:  # a file of some run cannot be read: find it, and leave that run out
        bad = _find_corrupt(root, found.files)
        if not bad:
            raise
        found.corrupt.update(bad)
        found.files = {name: [f for f in paths if _run_of(Path(f), root, name) not in bad]
                       for name, paths in found.files.items()}
        _create_views(con, found.files)
    con.register("_runs", _mark_corrupt(found.runs, found.corrupt))
    con.execute("CREATE OR REPLACE VIEW runs AS SELECT * FROM _runs")
    return con


def fetch_arrow(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pa.Table:
    """Run SQL and return an Arrow table (DuckDB 1.x and 2.x name the call differently)."""
    return _fetch(con.sql(sql, params=params or None))


def query(root: str | os.PathLike, sql: str) -> pa.Table:
    """Run one SQL statement over a results root and return an Arrow table."""
    con = connect(root)
    try:
        return fetch_arrow(con, sql)
    finally:
        con.close()
