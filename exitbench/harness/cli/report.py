"""``exitbench report``: one self-contained HTML report of runs, or their figures alone for a paper."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from exitbench.errors import UsageError
from exitbench.harness.cli.app import ReadResultsOpt, app, console, guarded, out


@app.command()
def report(
    runs: list[str] = typer.Argument(..., help="run ids (or unique prefixes); several are shown side by side"),
    results: Path = ReadResultsOpt,
    out_dir: Path = typer.Option(Path("reports"), "--out", "-o", help="folder for the report or figures"),
    paper: bool = typer.Option(False, help="write the figures alone as PDF + SVG in the paper style"),
    targets: str = typer.Option("auto", help="exit-SNR targets t in dB, comma-separated; 'auto': the quartiles"
                                             " of the first run's deepest-level block exit-SNR (its own range)"),
    utt: list[str] = typer.Option([], "--utt", help="utterance to listen to and of the exit map (repeatable;"
                                                    " default: the best, median and worst by the deepest exit's"
                                                    " SI-SNRi; the exit map shows the first, or the median)"),
    policy: Optional[str] = typer.Option(None, "--policy", "-p",
                                         help="policy of the exit map and utilization (default: probabilistic"
                                              " at the middle target, else router, else oracle)"),
) -> None:
    """Draw regret curves, calibration, Pareto fronts, exit maps, utilization and metric distributions.

    Without --paper: one static HTML file that opens offline (figures embedded), with per-level and
    per-policy tables (95% bootstrap CIs), the run manifests and errors.
    """
    from exitbench.reports.build import build_report, write_paper_figures
    from exitbench.results.replays import resolve_run_id

    def go() -> Any:
        ids = list(dict.fromkeys(resolve_run_id(results, r) for r in runs))
        ts = None  # auto
        if targets.strip().lower() != "auto":
            try:
                ts = [float(x) for x in targets.split(",") if x.strip()]
            except ValueError:
                raise UsageError(f"--targets: expected comma-separated numbers or 'auto', got {targets!r}") from None
            if not ts:
                raise UsageError("--targets needs at least one number")
        with console.status(f"drawing {len(ids)} run(s)..."):
            if paper:
                return write_paper_figures(results, ids, out_dir, ts, utt or None, policy)
            return build_report(results, ids, out_dir, ts, utt or None, policy)

    made = guarded(go)
    if paper:
        for why in made.skipped:
            console.print(f"skipped {why}", highlight=False, soft_wrap=True)
        out.print(f"wrote {len(made.paths)} files to {out_dir}/", highlight=False)
        for p in made.paths:
            out.print(f"  {p}", highlight=False, soft_wrap=True)
    else:
        out.print(f"wrote {made}", highlight=False, soft_wrap=True)
