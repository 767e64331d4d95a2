"""DuckDB over a results root: one view per table, hive-partitioned by run."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pyarrow as pa

from exitbench.results.schema import TABLES

#: tables a results root may hold beyond the recording's own (replays are written by the policies)
EXTRA_TABLES = ("replays", "replay_blocks", "sweeps")


def _has_parquet(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("**/*.parquet"))


def connect(root: str | os.PathLike, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with views ``blocks``, ``utterances``, ``levels``, ``runs``, ``errors`` (and replays)."""
    root = Path(root)
    con = duckdb.connect(database)
    for name in list(TABLES) + list(EXTRA_TABLES):
        folder = root / name
        if _has_parquet(folder):
            glob = (folder / "**" / "*.parquet").as_posix().replace("'", "''")
            con.execute(
                f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet('{glob}',"
                f" hive_partitioning = true, union_by_name = true, hive_types = {{'run': VARCHAR}})"
            )
        elif name in TABLES:
            # an empty view with the right columns keeps queries valid on an empty root
            empty = TABLES[name].empty_table().append_column("run", pa.array([], pa.string()))
            con.register(f"_empty_{name}", empty)
            con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM _empty_{name}")
    return con


def fetch_arrow(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pa.Table:
    """Run SQL and return an Arrow table (DuckDB 1.x and 2.x name the call differently)."""
    rel = con.sql(sql, params=params or None)
    fetch = getattr(rel, "to_arrow_table", None) or rel.arrow
    return fetch()


def query(root: str | os.PathLike, sql: str) -> pa.Table:
    """Run one SQL statement over a results root and return an Arrow table."""
    con = connect(root)
    try:
        return fetch_arrow(con, sql)
    finally:
        con.close()
