"""The ``exitbench`` command line."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn
from rich.table import Table

from exitbench.datasets.base import DatasetError, UtteranceError
from exitbench.harness.spec import ALL_METRICS, RecordSettings, RunSpec
from exitbench.models.checkpoint import CheckpointError
from exitbench.models.registry import DEFAULT_MODEL
from exitbench.plugins import PluginError
from exitbench.results.store import ResultStore

app = typer.Typer(
    help="exitbench: record dynamic-compute speech models once, then replay exit policies exactly.\n\n"
         "Start with `exitbench demo`; see `exitbench COMMAND --help` for each command.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 160)  # tables stay readable when piped

#: errors that mean 'bad input': one red line, exit code 2, no traceback
USER_ERRORS: tuple[type[BaseException], ...] = (DatasetError, CheckpointError, PluginError, UtteranceError,
                                                 ValueError, FileNotFoundError, KeyError)


def fail(message: str, code: int = 2) -> None:
    """Print one error line and exit."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def guarded(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; turn user errors into one line and exit code 2."""
    try:
        return fn()
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        fail("interrupted; finished shards are kept, rerun the same command to resume", 130)
    except USER_ERRORS as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        fail(str(msg))


def parse_metrics(text: str) -> tuple[str, ...]:
    """'all', 'none' or a comma list of sdr,pesq,stoi."""
    if text == "all":
        return ALL_METRICS
    if text in ("none", ""):
        return ()
    return tuple(m.strip() for m in text.split(",") if m.strip())


def parse_options(items: list[str]) -> tuple[tuple[str, str], ...]:
    """``key=value`` strings as sorted pairs."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--dataset-opt {item!r}: expected key=value")
        pairs.append((key.strip(), value.strip()))
    return tuple(sorted(pairs))


def make_executor(kind: str, **kwargs: Any) -> Any:
    """The shard executor named on the command line."""
    if kind == "local":
        from exitbench.harness.local import LocalExecutor

        return LocalExecutor()
    if kind == "ray":
        from exitbench.harness.ray_executor import RayExecutor

        return RayExecutor(**kwargs)
    raise ValueError(f"--executor must be 'local' or 'ray', not {kind!r}")


def record(spec: RunSpec, results: Path, executor: str = "local", force: bool = False, quiet: bool = False,
           **executor_kwargs: Any) -> Any:
    """Prepare and execute one recording with a progress bar; returns the RunOutcome."""
    from exitbench.harness.runner import execute, prepare

    with console.status("resolving model and test set..."):
        prepared = prepare(spec)
    if not quiet:
        console.print(f"run [bold]{prepared.run_id}[/]: {spec.model} on {spec.dataset}"
                      f" ({len(prepared.utt_ids)} utterances, {len(prepared.shards())} shards,"
                      f" levels {', '.join(prepared.model.levels)})", highlight=False)
    ex = make_executor(executor, **executor_kwargs)
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

    def on_utt(k: int) -> None:
        state["done"] += k
        rate = state["done"] / max(time.perf_counter() - state["t0"], 1e-9)
        progress.update(state["task"], advance=k, rate=f"{rate:.2f} utt/s")

    def on_shard(_index: int) -> None:
        progress.update(state["shards"], advance=1)

    with progress:
        outcome = execute(prepared, results, ex, force=force, on_start=on_start, on_utterance=on_utt,
                          on_shard=on_shard)
    return outcome


def report_outcome(outcome: Any, quiet: bool = False) -> None:
    """The short summary after a run, and the errors."""
    from exitbench.results.views import connect

    if outcome.already_complete:
        console.print(f"run {outcome.run_id} is already complete in {outcome.root}: nothing to do"
                      " (use --force to record it again)", highlight=False, soft_wrap=True)
    con = connect(outcome.root)
    rows = con.execute(
        """
        SELECT u.level, u.level_name, any_value(l.gmacs) AS gmacs, avg(u.si_snri) AS si_snri,
               avg(u.sdri) AS sdri, avg(u.pesq) AS pesq, avg(u.stoi) AS stoi, count(DISTINCT u.utt_id) AS n
        FROM utterances u JOIN levels l ON u.run = l.run AND u.level = l.level
        WHERE u.run = ? GROUP BY ALL ORDER BY u.level
        """, [outcome.run_id]).fetchall()
    if not quiet:
        t = Table(title=f"run {outcome.run_id}: per-level means over {rows[0][-1] if rows else 0} utterances")
        for c in ("level", "name", "GMAC/s", "SI-SNRi dB", "SDRi dB", "PESQ", "STOI"):
            t.add_column(c, justify="right")
        fmt = lambda v, p=2: "-" if v is None or v != v else f"{v:.{p}f}"  # noqa: E731
        for level, name, gmacs, si, sd, pq, st, _ in rows:
            t.add_row(str(level), name, fmt(gmacs, 3), fmt(si), fmt(sd), fmt(pq), fmt(st, 3))
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


ModelOpt = typer.Option(DEFAULT_MODEL, "--model", "-m",
                        help="checkpoint file, bundled model name (press-s, slimdemucs-s) or module:factory")
ResultsOpt = typer.Option(Path("results"), "--results", "-r", help="results root (created if missing)")


@app.command()
def run(
    model: str = ModelOpt,
    dataset: str = typer.Option("synthetic", "--dataset", "-d",
                                help="NAME or NAME:PATH, e.g. wsj0-2mix:/data/wsj0-mix/2speakers/wav8k/min/tt"),
    dataset_opt: list[str] = typer.Option([], "--dataset-opt", help="loader option key=value (repeatable)"),
    split: Optional[str] = typer.Option(None, help="split for loaders that take a root (tt, cv, tr)"),
    variant: Optional[str] = typer.Option(None, help="variant for WHAM!/LibriMix (mix_clean, mix_both...)"),
    results: Path = ResultsOpt,
    metrics: str = typer.Option("all", help="all, none, or a comma list of sdr,pesq,stoi (SI-SNR always)"),
    sdr_backend: str = typer.Option("fast_bss_eval", help="fast_bss_eval (default) or mir_eval"),
    resample: bool = typer.Option(False, help="resample audio whose rate differs from the model's"),
    limit: Optional[int] = typer.Option(None, help="record only the first N utterances"),
    shard_size: int = typer.Option(8, help="utterances per shard (the unit of resumption)"),
    executor: str = typer.Option("ray", help="ray (local cluster, or --address) or local (in-process)"),
    workers: Optional[int] = typer.Option(None, help="ray: model actors (default: one per GPU, else CPUs/4: metric tasks get the rest)"),
    gpus_per_worker: Optional[float] = typer.Option(None, help="ray: GPUs per model actor (fractions allowed)"),
    cpus_per_metric_task: float = typer.Option(1.0, help="ray: CPUs per metric task"),
    address: Optional[str] = typer.Option(None, help="ray: cluster address (default: RAY_ADDRESS or local)"),
    force: bool = typer.Option(False, help="record again even if the run id is complete"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar or table"),
) -> None:
    """Record a model on a test set: every level, block statistics and metrics, into Parquet.

    The run id hashes the checkpoint bytes, the test set's fingerprint and these settings: the same
    command twice does the work once, and an interrupted run resumes from its finished shards.
    Exit code 1 when any utterance failed (each is a row of the errors table), 2 on bad input.
    """
    opts = list(parse_options(dataset_opt))
    opts += [("split", split)] if split else []
    opts += [("variant", variant)] if variant else []

    def go() -> Any:
        spec = RunSpec(model, dataset, tuple(sorted(opts)),
                       RecordSettings(parse_metrics(metrics), sdr_backend, shard_size, resample, limit))
        kw = {}
        if executor == "ray":
            kw = dict(workers=workers, gpus_per_worker=gpus_per_worker,
                      cpus_per_metric_task=cpus_per_metric_task, address=address)
        return record(spec, results, executor, force, quiet, **kw)

    outcome = guarded(go)
    report_outcome(outcome, quiet)
    if outcome.num_errors:
        raise typer.Exit(1)


@app.command()
def demo(
    model: str = ModelOpt,
    results: Path = ResultsOpt,
    out: Path = typer.Option(Path("reports"), "--out", "-o", help="where the HTML report is written"),
    executor: str = typer.Option("ray", help="ray (a local cluster, default) or local (in-process)"),
    metrics: str = typer.Option("all", help="all, none, or a comma list of sdr,pesq,stoi"),
    report: bool = typer.Option(True, help="write the HTML report after recording"),
) -> None:
    """Record the shipped model on the bundled real-speech demo set, print a table per level, write a report.

    The separator (press-s, default) runs on `demo` (8 kHz two-speaker mixtures); the enhancer
    (--model slimdemucs-s) on `demo-enhance` (16 kHz noisy speech).
    """
    dataset = "demo-enhance" if model.startswith("slimdemucs") else "demo"

    def go() -> Any:
        spec = RunSpec(model, dataset, (), RecordSettings(parse_metrics(metrics)))
        return record(spec, results, executor)

    outcome = guarded(go)
    report_outcome(outcome)
    if report:
        from exitbench.reports.build import build_report

        with console.status("drawing the report..."):
            path = guarded(lambda: build_report(results, [outcome.run_id], out))
        console.print(f"report: {path}", highlight=False, soft_wrap=True)
    if outcome.num_errors:
        raise typer.Exit(1)


@app.command()
def runs(results: Path = ResultsOpt,
         status: Optional[str] = typer.Option(None, help="only runs with this status")) -> None:
    """List the runs in a results root with their ids, models, test sets and status."""
    from exitbench.results.views import connect

    def go() -> list:
        con = connect(results)
        where = "WHERE status = ?" if status else ""
        return con.execute(
            f"SELECT run_id, status, model, step, dataset, num_utterances, num_errors, started_at"
            f" FROM runs {where} ORDER BY started_at", [status] if status else []).fetchall()

    rows = guarded(go)
    t = Table(title=f"runs in {results}")
    for c in ("run", "status", "model", "step", "dataset", "utts", "errors", "started"):
        t.add_column(c, no_wrap=c in ("run", "started"))
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    out.print(t)


@app.command()
def query(sql: str = typer.Argument(..., help="SQL over views blocks, utterances, levels, runs, errors"),
          results: Path = ResultsOpt,
          csv: bool = typer.Option(False, help="print CSV instead of a table")) -> None:
    """Run SQL with DuckDB over a results root (each view has a `run` column)."""
    import duckdb

    from exitbench.results.views import connect

    def go() -> Any:
        try:
            return connect(results).execute(sql).df()
        except duckdb.Error as exc:
            raise ValueError(str(exc).splitlines()[0]) from None

    df = guarded(go)
    if csv:
        sys.stdout.write(df.to_csv(index=False))
        return
    t = Table()
    for c in df.columns:
        t.add_column(str(c))
    for row in df.itertuples(index=False):
        t.add_row(*[str(v) for v in row])
    out.print(t)




@app.command()
def train(
    config: str = typer.Argument(..., help="TOML path, or a shipped config: press-s, press-m, slimdemucs-s,"
                                           " tiny-press, tiny-slimdemucs"),
    out: Path = typer.Option(Path("checkpoints"), "--out", "-o", help="folder for <name>.pt and <name>.log.json"),
    device: Optional[str] = typer.Option(None, help="cuda or cpu (default: cuda when available)"),
    max_minutes: Optional[float] = typer.Option(None, help="wall-clock budget (overrides the config)"),
    corpus: Optional[str] = typer.Option(None, help="corpus root (default: the config's, .corpus)"),
    set_: list[str] = typer.Option([], "--set", help="override a config value, SECTION.KEY=VALUE (repeatable)"),
) -> None:
    """Train a reference model with dynamic mixing from a speech corpus (scripts/build_corpus.py).

    Validates every epoch (SI-SNRi per level) and writes a checkpoint in exitbench's format each
    epoch, with the steps, data, config and validation metrics in its metadata.
    """
    from exitbench.models.train import main as train_main

    argv = [config, str(out)]
    argv += ["--device", device] if device else []
    argv += ["--max-minutes", str(max_minutes)] if max_minutes is not None else []
    argv += ["--corpus", corpus] if corpus else []
    for item in set_:
        argv += ["--set", item]
    guarded(lambda: train_main(argv))


# command modules register themselves on ``app``
from exitbench.harness import cli_policies, cli_report, cli_sweep  # noqa: E402,F401


def main() -> None:
    """Console-script entry point."""
    app()

