"""``exitbench table`` and ``exitbench slices``: a run's results as Markdown, CSV or LaTeX tables."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from exitbench.errors import UsageError
from exitbench.harness.cli.app import ReadResultsOpt, app, console, guarded

FORMAT_HELP = "markdown (pipe tables), csv (tidy, unrounded: one row per run, level or policy, and metric) or latex"


def _format(fmt: str) -> str:
    from exitbench.reports.tables import FORMATS

    fmt = fmt.strip().lower()
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return fmt


def _names(text: str, flag: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    if not names:
        raise UsageError(f"{flag} needs at least one name")
    return names


def _targets(text: str, results: Path, run_ids: list[str]) -> list[float]:
    from exitbench.results.analysis import auto_targets

    if text.strip().lower() == "auto":
        return auto_targets(results, run_ids)
    try:
        ts = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--targets: expected comma-separated numbers or 'auto', got {text!r}") from None
    if not ts:
        raise UsageError("--targets needs at least one number")
    return ts


def _emit(text: str, out_file: Path | None) -> None:
    if out_file is None:
        sys.stdout.write(text)
        return
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(text, encoding="utf-8")
    console.print(f"wrote {out_file}", highlight=False, soft_wrap=True)


OutOpt = typer.Option(None, "--out", "-o", help="write the table to this file instead of standard output")


@app.command()
def table(
    runs: list[str] = typer.Argument(..., help="run ids (or unique prefixes); several runs share one table"),
    results: Path = ReadResultsOpt,
    fmt: str = typer.Option("markdown", "--format", "-f", help=FORMAT_HELP),
    what: str = typer.Option("both", help="levels (per-level metrics), policies (replayed policies) or both"),
    metrics: str = typer.Option("si_snri,sdri,pesq,stoi,estoi,gmacs",
                                help="per-level metrics, comma-separated (si_snri, sdri, pesq, stoi, estoi,"
                                     " si_snr, snri, sdr, gmacs)"),
    targets: str = typer.Option("auto", help="exit-SNR targets t (dB) of the policy rows, comma-separated; 'auto':"
                                             " the quartiles of the first run's deepest-level block exit-SNR"),
    policy: list[str] = typer.Option([], "--policy", "-p",
                                     help="policy configurations to tabulate (repeatable); default: uniform, the"
                                          " oracle and the probabilistic policy at each target, the router"),
    digits: int = typer.Option(3, help="decimals in markdown and latex (csv is unrounded)"),
    out_file: Optional[Path] = OutOpt,
) -> None:
    """Per-level and per-policy results with 95% bootstrap intervals, as in the report's tables.

    Markdown and LaTeX show 'mean \\[lo, hi]' cells with the unit in every header; CSV holds the
    numbers of the queries (`level_summary`, `policy_summary`) unrounded, one row per metric.
    """
    from exitbench.reports import tables as T
    from exitbench.results import analysis as A
    from exitbench.results.replays import resolve_run_id

    def go() -> str:
        form = _format(fmt)
        if what not in ("levels", "policies", "both"):
            raise UsageError(f"--what must be levels, policies or both, not {what!r}")
        if digits < 0 or digits > 10:
            raise UsageError(f"--digits must lie in 0..10, got {digits}")
        ids = list(dict.fromkeys(resolve_run_id(results, r) for r in runs))
        labels = T.run_labels([A.manifest(results, r) for r in ids])
        import pandas as pd

        levels = policies = None
        if what in ("levels", "both"):
            levels = pd.concat([A.level_summary(results, r, _names(metrics, "--metrics")) for r in ids],
                               ignore_index=True)
        if what in ("policies", "both"):
            ts = _targets(targets, results, ids)
            policies = pd.concat([A.policy_summary(results, r, policy or None, targets=ts) for r in ids],
                                 ignore_index=True)
        if form == "csv":
            return T.tidy_results(levels, policies, labels).to_csv(index=False)
        made = []
        if levels is not None:
            made.append(T.level_table(levels, labels))
        if policies is not None:
            made.append(T.policy_table(policies, labels))
        return T.render(made, form, digits)

    _emit(guarded(go, results), out_file)


@app.command()
def slices(
    runs: list[str] = typer.Argument(..., help="run ids (or unique prefixes)"),
    results: Path = ReadResultsOpt,
    by: str = typer.Option("input_snr", "--by",
                           help="input_snr, duration, or a key of the utterances' metadata (e.g. noise_type)"),
    metrics: str = typer.Option("si_snri", help="metrics, comma-separated (si_snri, sdri, pesq, stoi, estoi,"
                                                " si_snr, snri, sdr)"),
    bins: int = typer.Option(4, help="quantile buckets of a numeric column or key"),
    fmt: str = typer.Option("markdown", "--format", "-f", help=FORMAT_HELP.replace("level or policy", "bucket, level")),
    digits: int = typer.Option(3, help="decimals in markdown and latex (csv is unrounded)"),
    out_file: Optional[Path] = OutOpt,
) -> None:
    """Per-level means by input-SNR bucket, duration bucket or metadata value (the `slices` query)."""
    from exitbench.reports import tables as T
    from exitbench.results import analysis as A
    from exitbench.results.replays import resolve_run_id

    def go() -> Any:
        form = _format(fmt)
        ids = list(dict.fromkeys(resolve_run_id(results, r) for r in runs))
        labels = T.run_labels([A.manifest(results, r) for r in ids])
        import pandas as pd

        frame = pd.concat([A.slices(results, r, by, _names(metrics, "--metrics"), bins) for r in ids],
                          ignore_index=True)
        if form == "csv":
            return T.slices_tidy(frame, labels).to_csv(index=False)
        return T.render([T.slices_table(frame, labels)], form, digits)

    _emit(guarded(go, results), out_file)
