"""The shared part of the command line: the Typer app, consoles, options and error handling.

Command modules import this module; it imports none of them. Every failure leaves a command as one
line and the exit code of its :mod:`exitbench.errors` class; only an internal error (a bug) prints a
traceback, which is also written under the results root's ``_logs/``.
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn
from rich.table import Table

from exitbench.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_RESULTS_ROOT,
    ExitbenchError,
    UsageError,
    exit_codes_help,
)
from exitbench.harness.spec import ALL_METRICS, RunSpec
from exitbench.results.store import ResultStore
from exitbench.results.views import check_root as readable_root  # noqa: F401  (for command modules)

app = typer.Typer(
    help="exitbench: record dynamic-compute speech models once, then replay exit policies exactly.\n\n"
         "Start with `exitbench demo`; see `exitbench COMMAND --help` for each command.\n\n"
         + exit_codes_help(),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 160)  # tables stay readable when piped

ResultsOpt = typer.Option(Path("results"), "--results", "-r", help="results root (created if missing)")
ReadResultsOpt = typer.Option(Path("results"), "--results", "-r", help="results root to read (must exist)")


#: tables longer than this are drawn by ``print_table``'s own renderer (rich takes ~2 ms a row)
LONG_TABLE = 100


def print_table(table: Table, rows: list[list[str]], styles: list[str] | None = None) -> None:
    """Print ``table`` (its title and columns) with ``rows``: through rich when short, else drawn directly.

    A long table (a history of 1,000 steps, the runs of a big root) is drawn in rich's own box style
    line by line, which costs microseconds a row instead of milliseconds.
    """
    styles = styles or [""] * len(rows)
    if len(rows) <= LONG_TABLE:
        for r, st in zip(rows, styles):
            table.add_row(*r, style=st)
        out.print(table)
        return
    cols = table.columns
    heads = [str(c.header) for c in cols]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(heads)]

    def line(cells: list[str], sep: str = "│") -> str:
        parts = [(c.rjust(w) if col.justify == "right" else c.ljust(w)) for c, w, col in zip(cells, widths, cols)]
        return sep + sep.join(f" {p} " for p in parts) + sep

    inner = sum(widths) + 3 * len(widths) - 1
    lines = [str(table.title or "").center(inner + 2).rstrip(),
             "┏" + "┳".join("━" * (w + 2) for w in widths) + "┓", line(heads, "┃"),
             "┡" + "╇".join("━" * (w + 2) for w in widths) + "┩"]
    color = out.is_terminal
    for r, st in zip(rows, styles):
        text = line(r)
        lines.append(f"\x1b[1;31m{text}\x1b[0m" if color and st else text)
    lines.append("└" + "┴".join("─" * (w + 2) for w in widths) + "┘")
    out.file.write("\n".join(lines) + "\n")
    out.file.flush()


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one error line and exit with ``code``."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _log_internal(text: str, root: Path | None) -> Path | None:
    """Write a traceback under ``<root>/_logs/`` (or the temp dir); return the file, or None."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for folder in ([root / "_logs"] if root is not None and root.is_dir() else []) + [Path(tempfile.gettempdir())]:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"exitbench-error-{stamp}-{os.getpid()}.log"
            path.write_text(text)
            return path
        except OSError:
            continue
    return None


def guarded(fn: Callable[[], Any], root: Path | None = None) -> Any:
    """Run ``fn``; every failure becomes one line and its exit code (internal errors add a traceback)."""
    try:
        return fn()
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        fail("interrupted; finished shards are kept, rerun the same command to resume", EXIT_INTERRUPTED)
    except ExitbenchError as exc:
        fail(str(exc), exc.exit_code)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # a full disk is never the user's input
            fail(f"no space left writing {exc.filename or root}: {exc.strerror}", EXIT_RESULTS_ROOT)
        _internal(exc, root)
    except Exception as exc:  # a bug: say so, with the traceback, never as the user's mistake
        _internal(exc, root)


def _internal(exc: BaseException, root: Path | None) -> NoReturn:
    text = traceback.format_exc()
    sys.stderr.write(text)
    log = _log_internal(text, root)
    fail(f"internal error ({type(exc).__name__}: {exc}); this is a bug in exitbench or a plug-in,"
         f" please report it{f' with {log}' if log else ''}", EXIT_INTERNAL)


def parse_options(items: list[str], flag: str = "--dataset-opt") -> tuple[tuple[str, str], ...]:
    """``key=value`` strings as sorted pairs."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} {item!r}: expected key=value")
        pairs.append((key.strip(), value.strip()))
    return tuple(sorted(pairs))


def positive_limit(limit: int | None) -> int | None:
    """``--limit`` must be at least 1 when given."""
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    return limit


# -- recording, shared by run, demo, repair and sweep --------------------------------------------
def parse_metrics(text: str) -> tuple[str, ...]:
    """'all', 'none' or a comma list of sdr,pesq,stoi."""
    if text == "all":
        return ALL_METRICS
    if text in ("none", ""):
        return ()
    return tuple(m.strip() for m in text.split(",") if m.strip())


def parse_metric_levels(items: list[str]) -> tuple[tuple[str, str], ...]:
    """--metric-levels METRIC=LEVEL[+LEVEL...] items as sorted (metric, levels) pairs."""
    out: dict[str, str] = {}
    for item in items:
        for part in (p.strip() for p in item.split(",") if p.strip()):
            metric, sep, levels = part.partition("=")
            if not sep or not metric.strip() or not levels.strip():
                raise UsageError(f"--metric-levels takes METRIC=LEVEL[+LEVEL...], e.g. pesq=last, not {part!r}")
            out[metric.strip()] = levels.strip()
    return tuple(sorted(out.items()))


StoiBackendOpt = typer.Option("torch", help="torch (exitbench's batched STOI/ESTOI, on the model's GPU when it"
                                            " has one; equal to pystoi within 1e-4) or pystoi (the reference)")
MetricLevelsOpt = typer.Option([], "--metric-levels", help="compute a metric at some levels only, METRIC=LEVEL"
                                                       "[+LEVEL...] (names, indices, last, dynamic), e.g."
                                                       " pesq=last; others get NaN (repeatable; part of the"
                                                       " run id)")

BatchOpt = typer.Option(1, "--batch", help="utterances per model pass: a chunk-safe model runs them as one row of"
                                            " blocks, press stacks equal lengths; first checked, on the device, to"
                                            " give bit for bit the outputs of one pass each (else exit 2); not part"
                                            " of the run id")
DeviceOpt = typer.Option("auto", help="where the model runs: auto (cuda when a GPU is visible, else cpu), cpu,"
                                      " cuda (local: also cuda:N; ray: the actors take GPUs); the run's"
                                      " manifest records it (column execution)")


def make_executor(kind: str, **kwargs: Any) -> Any:
    """The shard executor named on the command line."""
    if kind == "local":
        from exitbench.harness.local import LocalExecutor

        return LocalExecutor(kwargs.get("device", "auto"), kwargs.get("batch", 1))
    if kind == "ray":
        from exitbench.harness.ray_executor import RayExecutor

        return RayExecutor(**kwargs)
    raise UsageError(f"--executor must be 'local' or 'ray', not {kind!r}")


def record(spec: RunSpec, results: Path, executor: str = "local", force: bool = False, quiet: bool = False,
           expect_run_id: str | None = None, stop_in_background: bool = False,
           while_recording: Callable[[], None] | None = None, **executor_kwargs: Any) -> Any:
    """Prepare and execute one recording with a progress bar; returns the RunOutcome.

    ``stop_in_background``: a Ray cluster this call started stops in a thread (the process waits for it
    before exiting) while the caller goes on, e.g. to draw the report, instead of before returning.
    ``while_recording`` is called once the recording has started (this thread then mostly waits)."""
    ResultStore(results).check_writable()  # before loading anything: a bad root is a one-line answer
    for pending in _STOPPING:  # a cluster an earlier call of this process is still stopping
        pending.join()
    _STOPPING.clear()
    started: list[bool] = []  # set when this call starts a local Ray cluster
    recorded = False
    try:
        outcome = _record(spec, results, executor, force, quiet, expect_run_id, executor_kwargs, started,
                          while_recording)
        recorded = True
        return outcome
    finally:
        if started:
            import ray

            # a cluster this call started ends with it, as RayExecutor's own would (about a second of
            # waiting on its processes: a non-daemon thread can do that while the report is drawn). Not
            # after a failure: the error's traceback still holds Ray's objects, released in this thread
            if stop_in_background and recorded:
                _STOPPING.append(threading.Thread(target=_quiet_shutdown, name="exitbench-ray-stop"))
                _STOPPING[-1].start()
            else:
                ray.shutdown()


_STOPPING: list[threading.Thread] = []  # clusters stopping in the background (stop_in_background)


def _quiet_shutdown() -> None:
    import ray

    try:
        ray.shutdown()
    except Exception:  # the recording is written; a cluster that stops badly is Ray's to log, not ours
        pass


def import_in_background(module: str) -> None:
    """Start importing ``module`` in a daemon thread (seconds of matplotlib for the report) while this one
    waits on other work; a later import of it waits for that one, and raises its error if it failed."""
    import importlib

    def load() -> None:
        try:
            importlib.import_module(module)
        except Exception:
            pass

    threading.Thread(target=load, name="exitbench-import", daemon=True).start()


def _record(spec: RunSpec, results: Path, executor: str, force: bool, quiet: bool, expect_run_id: str | None,
            executor_kwargs: dict[str, Any], started: list[bool], while_recording: Callable[[], None] | None) -> Any:
    from exitbench.harness.runner import execute, prepare

    with console.status("resolving model and test set..."):
        if executor == "ray":
            # Ray's start (seconds) overlaps resolving the model and test set; ray.init stays on the
            # main thread, which its signal handling needs
            from concurrent.futures import ThreadPoolExecutor

            from exitbench.harness.ray_executor import ensure_ray

            with ThreadPoolExecutor(1) as pool:
                future = pool.submit(prepare, spec)
                try:
                    if ensure_ray(executor_kwargs.get("address")):
                        started.append(True)
                finally:
                    prepared = future.result()
        else:
            prepared = prepare(spec)
    if expect_run_id is not None and prepared.run_id != expect_run_id:
        raise UsageError(f"the spec of run {expect_run_id} now gives run id {prepared.run_id}: its checkpoint"
                         f" or test set changed since it was recorded; record it with `exitbench run` instead")
    if not quiet:
        console.print(f"run [bold]{prepared.run_id}[/]: {spec.model} on {spec.dataset}"
                      f" ({len(prepared.utt_ids)} utterances, {len(prepared.shards())} shards,"
                      f" levels {', '.join(prepared.model.levels)})", highlight=False)
    ex = make_executor(executor, **executor_kwargs)
    if hasattr(ex, "on_note"):
        ex.on_note = lambda msg: console.print(f"[yellow]{msg}[/]", highlight=False, soft_wrap=True)
    progress = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                        TextColumn("eta"), TimeRemainingColumn(), console=console, disable=quiet,
                        transient=False)
    state: dict[str, Any] = {}

    def on_start(todo: int, skipped: int) -> None:
        if skipped:
            console.print(f"resuming: {skipped} utterances already recorded in finished shards")
        state["task"] = progress.add_task("utterances", total=todo, rate="")
        done = len(ResultStore(results).finished_shards(prepared.run_id))  # after any --force deletion
        state["shards"] = progress.add_task("shards", total=len(prepared.shards()) - done, rate="")
        state["t0"] = time.perf_counter()
        state["done"] = 0
        if while_recording is not None:
            while_recording()

    def on_utt(k: int) -> None:
        state["done"] += k
        rate = state["done"] / max(time.perf_counter() - state["t0"], 1e-9)
        progress.update(state["task"], advance=k, rate=f"{rate:.2f} utt/s")

    def on_shard(_index: int) -> None:
        progress.update(state["shards"], advance=1)

    with progress:
        outcome = execute(prepared, results, ex, force=force, on_start=on_start, on_utterance=on_utt,
                          on_shard=on_shard, on_note=lambda msg: console.print(msg, highlight=False,
                                                                                soft_wrap=True))
    return outcome


def report_outcome(outcome: Any, quiet: bool = False) -> None:
    """The short summary after a run, and the errors."""
    from exitbench.results.views import connect

    if outcome.already_complete:
        console.print(f"run {outcome.run_id} is already complete in {outcome.root}: nothing to do"
                      " (use --force to record it again)", highlight=False, soft_wrap=True)
    con = connect(outcome.root, runs=[outcome.run_id], tables=("utterances", "levels"))
    rows = con.execute(
        """
        SELECT u.level, u.level_name, any_value(l.gmacs) AS gmacs,
               avg(u.si_snri) FILTER (WHERE isfinite(u.si_snri)) AS si_snri,
               avg(u.sdri) FILTER (WHERE isfinite(u.sdri)) AS sdri,
               avg(u.pesq) FILTER (WHERE isfinite(u.pesq)) AS pesq,
               avg(u.stoi) FILTER (WHERE isfinite(u.stoi)) AS stoi,
               count(*) FILTER (WHERE NOT isfinite(u.si_snri) OR NOT isfinite(u.sdri) OR NOT isfinite(u.pesq)
                                OR NOT isfinite(u.stoi)) AS nan_rows,
               count(DISTINCT u.utt_id) AS n
        FROM utterances u JOIN levels l ON u.run = l.run AND u.level = l.level
        WHERE u.run = ? GROUP BY ALL ORDER BY u.level
        """, [outcome.run_id]).fetchall()
    if not quiet:
        t = Table(title=f"run {outcome.run_id}: per-level means over {rows[0][-1] if rows else 0} utterances")
        with_nan = any(r[7] for r in rows)  # means over the finite values; say how many rows had none
        for c in ("level", "name", "GMAC/s", "SI-SNRi dB", "SDRi dB", "PESQ", "STOI") + (("NaN rows",) if with_nan else ()):
            t.add_column(c, justify="right")
        fmt = lambda v, p=2: "-" if v is None or v != v else f"{v:.{p}f}"  # noqa: E731
        for level, name, gmacs, si, sd, pq, st, nan_rows, _ in rows:
            t.add_row(str(level), name, fmt(gmacs, 3), fmt(si), fmt(sd), fmt(pq), fmt(st, 3),
                      *((str(nan_rows),) if with_nan else ()))
        out.print(t)
        out.print(f"tables: {outcome.root}/{{blocks,utterances,levels,runs,errors}}/run={outcome.run_id}/")
    if outcome.num_errors:
        console.print(f"[bold red]{outcome.num_errors} utterance(s) failed[/] (see the errors table):",
                      highlight=False)
        for e in outcome.errors[:10]:
            console.print(f"  {e['utt_id']} [{e['stage']}]: {e['reason']}", highlight=False, soft_wrap=True,
                          markup=False)
        if len(outcome.errors) > 10:
            console.print(f"  ... and {len(outcome.errors) - 10} more")
