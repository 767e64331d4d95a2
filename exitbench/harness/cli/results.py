"""``exitbench runs``, ``query`` and ``repair``: what a results root holds, SQL over it, and mending it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from exitbench.errors import UsageError, exit_codes_help
from exitbench.harness.cli.app import (ReadResultsOpt, app, console, guarded, out, print_table, readable_root, record,
                                      report_outcome)


@app.command()
def runs(results: Path = ReadResultsOpt,
         status: Optional[str] = typer.Option(None, help="only runs with this status (running, complete,"
                                                         " failed, corrupt)")) -> None:
    """List the runs in a results root with their ids, models, test sets and status.

    A run whose files cannot be read is shown as `corrupt`, with the file and the fix; its tables
    are left out of every view, so the rest of the root stays usable.
    """
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
    """Run SQL with DuckDB over a results root (each view has a `run` column; complete runs only)."""
    import duckdb

    from exitbench.results.views import connect, tables_named

    def go() -> Any:
        con = connect(readable_root(results), tables=tables_named(sql))  # only the views the SQL names
        try:
            return con.execute(sql).df()
        except duckdb.Error as exc:
            raise UsageError(str(exc).splitlines()[0]) from None

    df = guarded(go, results)
    if csv:
        sys.stdout.write(df.to_csv(index=False))
        return
    t = Table()
    for c in df.columns:
        t.add_column(str(c))
    for row in df.itertuples(index=False):
        t.add_row(*[str(v) for v in row])
    out.print(t)


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
