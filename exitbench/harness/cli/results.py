"""``exitbench runs``, ``query`` and ``repair``: what a results root holds, SQL over it, and mending it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.table import Table

from exitbench.errors import UsageError, exit_codes_help
from exitbench.harness.cli.app import (ReadResultsOpt, app, console, guarded, print_table, readable_root, record,
                                      report_outcome)


@app.command()
def runs(results: Path = ReadResultsOpt,
         status: Optional[str] = typer.Option(None, help="only runs with this status (running, complete,"
                                                         " failed, corrupt)")) -> None:
    """List the runs in a results root with their ids, models, test sets and status.

    A run whose files cannot be read is shown as `corrupt`, with the file and the fix; its tables
    are left out of every view, so the rest of the root stays usable.
    """
    list_runs(results, status)


def list_runs(results: Path, status: str | None) -> None:
    """``exitbench runs``: also run by ``fast_command`` without the Typer app (it imports no pandas)."""
    from exitbench.results.views import connect

    def go() -> list:
        con = connect(readable_root(results), tables=())  # the catalogue (every file checked), no table views
        where = "WHERE status = ?" if status else ""
        return con.execute(
            f"SELECT run_id, status, model || coalesce(' ' || model_args, ''), step, dataset, num_utterances,"
            f" num_errors, started_at, problem"
            f" FROM runs {where} ORDER BY started_at NULLS LAST, run_id", [status] if status else []).fetchall()

    rows = guarded(go, results)
    t = Table(title=f"runs in {results}")
    for c in ("run", "status", "model", "step", "dataset", "utts", "errors", "started"):
        t.add_column(c, no_wrap=c in ("run", "started"))
    print_table(t, [["" if v is None else str(v) for v in r[:-1]] for r in rows],
                ["red" if r[1] == "corrupt" else "" for r in rows])
    for r in rows:
        if r[-1]:
            console.print(f"[red]corrupt[/] {r[0]}: {r[-1]}", highlight=False, soft_wrap=True)


@app.command()
def query(sql: str = typer.Argument(..., help="SQL over views blocks, utterances, levels, runs, errors,"
                                              " replays, replay_blocks, sweeps"),
          results: Path = ReadResultsOpt,
          csv: bool = typer.Option(False, help="print CSV instead of a table")) -> None:
    """Run SQL with DuckDB over a results root (each view has a `run` column; complete runs only).

    NULL prints as `NULL` in the table and as an empty field in CSV.
    """
    run_query(sql, results, csv)


def _cell(value: Any, kind: str, csv: bool) -> str:
    """One value as text: floats shortest round-trip (a FLOAT as float32), NULL empty in CSV and NaN too."""
    if value is None:
        return "" if csv else "NULL"
    if isinstance(value, float):
        if value != value:
            return "" if csv else "nan"
        if kind == "FLOAT":
            return _float32(value)
        return repr(value)
    return str(value)


def _float32(value: float) -> str:
    import struct

    if value in (float("inf"), float("-inf")):
        return repr(value)
    for digits in range(6, 10):
        text = f"{value:.{digits}g}"
        if struct.unpack("f", struct.pack("f", float(text)))[0] == value:
            break
    return text if any(ch in text for ch in ".en") else text + ".0"


def run_query(sql: str, results: Path, csv: bool) -> None:
    """``exitbench query``: also run by ``fast_command`` (rows fetched as tuples: no pandas)."""
    import duckdb

    from exitbench.results.views import connect, tables_named

    def go() -> tuple[list[str], list[str], list[tuple]]:
        con = connect(readable_root(results), tables=tables_named(sql))  # only the views the SQL names
        try:
            cur = con.execute(sql)
            desc = cur.description or []
            return [str(d[0]) for d in desc], [str(d[1]) for d in desc], cur.fetchall() if desc else []
        except duckdb.Error as exc:
            raise UsageError(str(exc).splitlines()[0]) from None

    names, kinds, rows = guarded(go, results)
    if csv:
        import csv as _csv

        writer = _csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(names)
        writer.writerows([_cell(v, k, True) for v, k in zip(r, kinds)] for r in rows)
        return
    t = Table()
    for c in names:
        t.add_column(c)
    print_table(t, [[_cell(v, k, False) for v, k in zip(r, kinds)] for r in rows])


# -- the fast path: `runs` and `query` without the Typer app ----------------------------------------------
#: per fast command: option -> (parameter, takes a value), and its positional parameters, as the Typer
#: commands above declare them (tests/test_startup.py checks the two agree)
FAST_COMMANDS: dict[str, tuple[dict[str, tuple[str, bool]], tuple[str, ...]]] = {
    "runs": ({"-r": ("results", True), "--results": ("results", True), "--status": ("status", True)}, ()),
    "query": ({"-r": ("results", True), "--results": ("results", True), "--csv": ("csv", False),
               "--no-csv": ("csv", False)}, ("sql",)),
}


def fast_command(argv: list[str]) -> Callable[[], None] | None:
    """A plain `runs` or `query` command line as a call, or None: then the Typer app parses it (help, errors).

    Building the Typer app's commands and its parameter coercion (which imports pydantic) costs more than
    either command's work; these two are what scripts call in loops.
    """
    if not argv or argv[0] not in FAST_COMMANDS:
        return None
    options, positional = FAST_COMMANDS[argv[0]]
    values: dict[str, Any] = {"results": Path("results"), "status": None, "csv": False}
    given: list[str] = []
    args = iter(argv[1:])
    for arg in args:
        if arg.startswith("-"):
            name, eq, value = arg.partition("=")
            if name not in options:
                return None  # --help, a typo, -rPATH, "--": Typer's own answer
            param, takes = options[name]
            if not takes:
                if eq:
                    return None
                values[param] = name == "--csv"
                continue
            if not eq:
                value = next(args, None)
                if value is None or value.startswith("-"):
                    return None
            values[param] = Path(value) if param == "results" else value
        else:
            given.append(arg)
    if len(given) != len(positional):
        return None
    values.update(zip(positional, given))
    if argv[0] == "runs":
        return lambda: list_runs(values["results"], values["status"])
    return lambda: run_query(values["sql"], values["results"], values["csv"])


def run_fast(argv: list[str]) -> bool:
    """Run ``argv`` by the fast path if it is a plain `runs` or `query`; False when it is not (nothing run)."""
    call = fast_command(argv)
    if call is None:
        return False
    try:
        call()
    except typer.Exit as exc:
        if exc.exit_code:
            raise SystemExit(exc.exit_code) from None
    return True


@app.command(help="Record a damaged run again from its manifest's spec (same run id), e.g. after"
                  " `exitbench runs` shows it as corrupt.\n\n" + exit_codes_help())
def repair(run: str = typer.Argument(..., help="run id (or a unique prefix) in the results root"),
           results: Path = ReadResultsOpt,
           executor: str = typer.Option("ray", help="ray or local"),
           quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar or table")) -> None:
    from exitbench.harness.spec import RunSpec
    from exitbench.results.views import connect

    def go() -> Any:
        con = connect(readable_root(results), tables=())
        rows = con.execute("SELECT run_id, status, spec FROM runs WHERE starts_with(run_id, ?)", [run]).fetchall()
        if not rows:
            raise UsageError(f"no run {run!r} in {results}")
        if len(rows) > 1:
            raise UsageError(f"{run!r} matches {len(rows)} runs: {', '.join(r[0] for r in rows[:5])}")
        run_id, status, spec_json = rows[0]
        if not spec_json:
            raise UsageError(f"run {run_id}'s manifest is unreadable, so its spec is unknown: run the original"
                             f" `exitbench run ...` command again with --force")
        spec = RunSpec.from_json(spec_json)
        outcome = record(spec, results, executor, force=True, quiet=quiet, expect_run_id=run_id)
        console.print(f"run {run_id} ({status}) recorded again", highlight=False)
        return outcome

    outcome = guarded(go, results)
    report_outcome(outcome, quiet)
    if outcome.num_errors:
        raise typer.Exit(1)


@app.command(help="Merge the published runs' small files into large ones (one file per table, row groups of"
                  " about 123k rows), so that a root of thousands of runs reads fast. Every query answers"
                  " exactly as before.\n\n"
                  "Each run's blocks, utterances, levels and errors files are copied into"
                  " <table>/_pack/<gen>.parquet (fsynced, renamed into place), then _packs/packs.json switches"
                  " readers over, then the runs' own files are removed. An interrupted pack changes no answer;"
                  " run it again to finish. Manifests, replays and sweeps stay per run; a run recorded again"
                  " later (--force, repair) is read from its new files, and the next pack packs it again.\n\n"
                  "Recordings do this by themselves: after publishing a run, a root with 64 or more unpacked"
                  " runs is packed (EXITBENCH_AUTO_PACK=N sets the number, 0 turns it off).\n\n"
                  + exit_codes_help())
def pack(results: Path = ReadResultsOpt,
         quiet: bool = typer.Option(False, "--quiet", "-q", help="print nothing on success")) -> None:
    from exitbench.results.pack import pack as run_pack

    outcome = guarded(lambda: run_pack(readable_root(results)), results)
    if outcome.cleaned:
        console.print(f"finished an interrupted pack: {len(outcome.cleaned)} leftover(s) removed", highlight=False)
    if quiet:
        return
    if not outcome.packed_runs:
        console.print(f"nothing to pack in {results}: every complete run is packed already", highlight=False)
        return
    rows = ", ".join(f"{t} {n:,}" for t, n in outcome.rows.items())
    console.print(f"packed {outcome.packed_runs} run(s) into {len(outcome.pack_files)} file(s) ({rows} rows);"
                  f" removed {outcome.files_removed} per-run folder(s)", highlight=False, soft_wrap=True)
