"""``exitbench run``, ``demo`` and ``train``: recording and training."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from exitbench.errors import EXIT_UTTERANCES_FAILED, UsageError, exit_codes_help
from exitbench.harness.cli.app import (
    BatchOpt,
    DeviceOpt,
    MetricLevelsOpt,
    ResultsOpt,
    StoiBackendOpt,
    app,
    console,
    guarded,
    import_in_background,
    out,
    parse_metric_levels,
    parse_metrics,
    parse_options,
    positive_limit,
    record,
    report_outcome,
)
from exitbench.harness.spec import RecordSettings, RunSpec
from exitbench.models import BUNDLED, DEFAULT_MODEL

BUNDLED_NAMES = ", ".join(BUNDLED)


ModelOpt = typer.Option(DEFAULT_MODEL, "--model", "-m",
                        help=f"checkpoint file, bundled model name ({BUNDLED_NAMES}) or module:factory")


RUN_HELP = """Record a model on a test set: every level, block statistics and metrics, into Parquet.

The run id hashes the checkpoint bytes, the test set's fingerprint and these settings: the same
command twice does the work once, and an interrupted run resumes from its finished shards. One
process records a run id at a time. When a worker or a node dies its shards run again elsewhere;
the run is complete only when every utterance has rows or an errors row caused by itself.

""" + exit_codes_help()


@app.command(help=RUN_HELP)
def run(
    model: str = ModelOpt,
    dataset: str = typer.Option("synthetic", "--dataset", "-d",
                                help="NAME or NAME:PATH, e.g. wsj0-2mix:/data/wsj0-mix/2speakers/wav8k/min/tt"),
    model_arg: list[str] = typer.Option([], "--model-arg", help="module:factory argument key=value, typed by the"
                                                               " factory's signature (repeatable; part of the run id)"),
    dataset_opt: list[str] = typer.Option([], "--dataset-opt", help="loader option key=value (repeatable)"),
    split: Optional[str] = typer.Option(None, help="split for loaders that take a root (tt, cv, tr)"),
    variant: Optional[str] = typer.Option(None, help="variant for WHAM!/LibriMix (mix_clean, mix_both...)"),
    results: Path = ResultsOpt,
    metrics: str = typer.Option("all", help="all, none, or a comma list of sdr,pesq,stoi (SI-SNR always)"),
    sdr_backend: str = typer.Option("fast_bss_eval", help="fast_bss_eval (default; on the model's GPU when it"
                                                          " has one) or mir_eval"),
    stoi_backend: str = StoiBackendOpt,
    metric_levels: list[str] = MetricLevelsOpt,
    resample: bool = typer.Option(False, help="resample audio whose rate differs from the model's"),
    limit: Optional[int] = typer.Option(None, help="record only the first N utterances"),
    block_size: Optional[int] = typer.Option(None, help="samples per block (default: the model's own; part of"
                                                        " the run id)"),
    shard_size: int = typer.Option(8, help="utterances per shard (the unit of resumption)"),
    executor: str = typer.Option("ray", help="ray (local cluster, or --address) or local (in-process)"),
    workers: Optional[int] = typer.Option(None, help="ray: model actors (default: one per GPU, else CPUs/4: metric tasks get the rest)"),
    gpus_per_worker: Optional[float] = typer.Option(None, help="ray: GPUs per model actor (fractions allowed; default 0.25, four actors per GPU, with 16 or more CPUs per GPU, 0.5 with 8 or more, else 1)"),
    cpus_per_metric_task: float = typer.Option(1.0, help="ray: CPUs per metric task"),
    address: Optional[str] = typer.Option(None, help="ray: cluster address (default: RAY_ADDRESS or local)"),
    worker_wait: float = typer.Option(60.0, help="ray: seconds without any live model worker before the run"
                                                 " stops (exit 4; finished shards are kept); at start-up, at"
                                                 " least 60 s for the first worker to load"),
    device: str = DeviceOpt,
    batch: int = BatchOpt,
    force: bool = typer.Option(False, help="record again even if the run id is complete"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar or table"),
) -> None:
    def go() -> Any:
        opts = list(parse_options(dataset_opt))
        opts += [("split", split)] if split else []
        opts += [("variant", variant)] if variant else []
        if workers is not None and workers < 1:
            raise UsageError(f"--workers must be at least 1, got {workers}")
        spec = RunSpec(model, dataset, tuple(sorted(opts)),
                       RecordSettings(parse_metrics(metrics), sdr_backend, shard_size, resample,
                                      positive_limit(limit), block_size, stoi_backend,
                                      parse_metric_levels(metric_levels)),
                       parse_options(model_arg, "--model-arg"))
        kw: dict[str, Any] = {"device": device, "batch": batch}
        if executor == "ray":
            kw.update(workers=workers, gpus_per_worker=gpus_per_worker,
                      cpus_per_metric_task=cpus_per_metric_task, address=address, worker_wait_s=worker_wait)
        return record(spec, results, executor, force, quiet, **kw)

    outcome = guarded(go, results)
    report_outcome(outcome, quiet)
    if outcome.num_errors:
        raise typer.Exit(EXIT_UTTERANCES_FAILED)


@app.command("check-model", help="Check a model against the ExitModel contract without recording anything:"
                                  " module, levels, MACs, and one dry forward_all on a synthetic input.\n\n"
                                  "run and sweep do the same check before any shard. Exit code 0 when the"
                                  " model fits, 2 with one line naming what is wrong and what was expected.")
def check_model_cmd(
    model: str = ModelOpt,
    model_arg: list[str] = typer.Option([], "--model-arg", help="module:factory argument key=value (repeatable)"),
    block_size: Optional[int] = typer.Option(None, help="samples per block (default: the model's own)"),
) -> None:
    from exitbench.models.registry import resolve_model

    def go() -> Any:
        return resolve_model(model, dict(parse_options(model_arg, "--model-arg")), block_size=block_size)

    resolved = guarded(go)
    m = resolved.model
    out.print(f"{model}: fits the ExitModel contract: levels {', '.join(m.levels)}; {m.sample_rate} Hz,"
              f" {m.num_sources} source(s), blocks of {m.block_size} samples; GMAC/s per level"
              f" {', '.join(f'{m.gmacs_per_second(i):.4g}' for i in range(m.num_levels))};"
              f" identity {resolved.identity[:16]}", highlight=False, soft_wrap=True)


@app.command()
def demo(
    model: str = ModelOpt,
    results: Path = ResultsOpt,
    out: Path = typer.Option(Path("reports"), "--out", "-o", help="where the HTML report is written"),
    executor: str = typer.Option("ray", help="ray (a local cluster, default) or local (in-process)"),
    metrics: str = typer.Option("all", help="all, none, or a comma list of sdr,pesq,stoi"),
    stoi_backend: str = StoiBackendOpt,
    metric_levels: list[str] = MetricLevelsOpt,
    report: bool = typer.Option(True, help="write the HTML report after recording"),
    device: str = DeviceOpt,
    batch: int = BatchOpt,
) -> None:
    """Record the shipped model on the bundled real-speech demo set, print a table per level, write a report.

    The separator (press-s, default) runs on `demo` (8 kHz two-speaker mixtures); the enhancer
    (--model slimdemucs-s) on `demo-enhance` (16 kHz noisy speech).
    """
    dataset = "demo-enhance" if Path(model).name.startswith("slimdemucs") else "demo"  # a name or a path

    def go() -> Any:
        spec = RunSpec(model, dataset, (), RecordSettings(parse_metrics(metrics), stoi_backend=stoi_backend,
                                                          metric_levels=parse_metric_levels(metric_levels)))
        # the report's imports (matplotlib, seaborn: seconds) load while the workers record, and the Ray
        # cluster stops while the report is drawn
        return record(spec, results, executor, device=device, batch=batch, stop_in_background=report,
                      while_recording=(lambda: import_in_background("exitbench.reports.build")) if report else None)

    outcome = guarded(go, results)
    report_outcome(outcome)
    if report:
        from exitbench.reports.build import build_report

        with console.status("drawing the report..."):
            path = guarded(lambda: build_report(results, [outcome.run_id], out), results)
        console.print(f"report: {path}", highlight=False, soft_wrap=True)
    if outcome.num_errors:
        raise typer.Exit(EXIT_UTTERANCES_FAILED)


@app.command()
def train(
    config: str = typer.Argument(..., help="TOML path, or a shipped config: press-s, press-m, slimdemucs-s,"
                                           " tiny-press, tiny-slimdemucs"),
    out: Path = typer.Option(Path("checkpoints"), "--out", "-o", help="folder for <name>.pt and <name>.log.json"),
    device: Optional[str] = typer.Option(None, help="cuda or cpu (default: cuda when available)"),
    max_minutes: Optional[float] = typer.Option(None, help="wall-clock budget (overrides the config)"),
    corpus: Optional[str] = typer.Option(None, help="corpus root (default: the config's, .corpus)"),
    set_: list[str] = typer.Option([], "--set", help="override a config value, SECTION.KEY=VALUE (repeatable)"),
    init: Optional[str] = typer.Option(None, "--init", help="continue from this checkpoint (a path or a bundled"
                                                            f" name: {BUNDLED_NAMES}): its weights and step"),
) -> None:
    """Train a reference model with dynamic mixing from a speech corpus (scripts/build_corpus.py).

    Validates every epoch (SI-SNRi per level) and writes a checkpoint in exitbench's format each
    epoch, with the steps, data, config and validation metrics in its metadata. With --init the
    run picks up where that checkpoint stopped (its step count goes on).
    """
    from exitbench.models.checkpoint import CheckpointError
    from exitbench.models.registry import resolve_checkpoint_path
    from exitbench.models.train import main as train_main

    argv = [config, str(out)]
    if init is not None:
        def init_path() -> str:
            path = resolve_checkpoint_path(init)
            if path is None:
                raise CheckpointError(f"--init {init!r} is neither a checkpoint file nor a bundled model")
            return str(path)

        argv += ["--set", f"train.init={guarded(init_path)}"]
    argv += ["--device", device] if device else []
    argv += ["--max-minutes", str(max_minutes)] if max_minutes is not None else []
    argv += ["--corpus", corpus] if corpus else []
    for item in set_:
        argv += ["--set", item]
    guarded(lambda: train_main(argv))



