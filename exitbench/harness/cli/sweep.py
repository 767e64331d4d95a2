"""``exitbench sweep``, ``compare``, ``history`` and ``registry``: many runs at once, and regressions between them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from exitbench.errors import EXIT_BAD_INPUT, EXIT_UTTERANCES_FAILED

from exitbench.harness.cli.app import BatchOpt, DeviceOpt, app, console, fail, guarded, out, print_table, record

_VERDICT_STYLE = {"worse": "bold red", "better": "green", "same": "", "n/a": "dim"}


def _fmt(v: Any, p: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{p}f}"
    return str(v)


def _model_name(checkpoint_path: Any, model: Any) -> str:
    """A run's model as a short name: its checkpoint file's name, else what was asked for (module:factory)."""
    if isinstance(checkpoint_path, str) and checkpoint_path:
        return Path(checkpoint_path).name
    return str(model)


def _int(v: Any) -> str:
    """An integer-valued cell (NaN/None as '-')."""
    try:
        return "-" if v is None or v != v else str(int(v))
    except (TypeError, ValueError):
        return str(v)


# -- sweep ------------------------------------------------------------------------------------------
@app.command()
def sweep(
    spec: Path = typer.Argument(..., help="TOML sweep spec (see examples/sweep.toml)"),
    results: Optional[Path] = typer.Option(None, "--results", "-r",
                                           help="results root (default: the spec's `results`, else ./results)"),
    executor: Optional[str] = typer.Option(None, help="local or ray (default: the spec's settings.executor)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan (runs and policy configurations) only"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
    device: str = DeviceOpt,
    batch: int = BatchOpt,
) -> None:
    """Record every (checkpoint, test set) of a spec once, then replay every policy configuration.

    Recordings whose run id is complete in the results root are skipped, and so are replays already
    stored there, so a second invocation does nothing and an interrupted one resumes. Policies a
    model cannot run (e.g. router on a model without one) are skipped with the reason. Exit code 1
    when a recording had utterance errors, 2 on a bad spec or a recording that failed on bad input,
    3 when the results root is unavailable, 4 when the cluster lost its workers, 130 on Ctrl-C.
    """
    from exitbench.harness.sweep import load_sweep_spec, run_sweep

    sp = guarded(lambda: load_sweep_spec(spec))
    if executor is not None:
        if executor not in ("local", "ray"):
            fail(f"--executor must be 'local' or 'ray', not {executor!r}")
        sp.executor = executor
    root = results or sp.results or Path("results")
    pairs = sp.run_specs()
    console.print(f"sweep {sp.name}: {len(sp.checkpoints)} checkpoint(s) × {len(sp.testsets)} test set(s) ="
                  f" {len(pairs)} recording(s); {len(sp.policies)} policy grid(s); targets"
                  f" {', '.join(f'{t:g}' for t in sp.targets)} dB; results in {root}", highlight=False)
    if dry_run:
        t = Table(title="plan")
        for c in ("checkpoint", "step", "test set", "options", "policy configurations (for 4 levels)"):
            t.add_column(c)
        for ck, ts, _ in pairs:
            configs = [c for g in sp.policies for c in g.configurations(4, sp.targets)]
            t.add_row(ck.model, _int(ck.step), ts.dataset, ",".join(f"{k}={v}" for k, v in ts.options),
                      f"{len(configs)}: " + ", ".join(configs[:6]) + (" ..." if len(configs) > 6 else ""))
        out.print(t)
        return
    ex_kw = {**(sp.executor_options if sp.executor == "ray" else {}), "device": device, "batch": batch}

    def record_fn(run_spec: Any) -> Any:
        return record(run_spec, root, sp.executor, quiet=quiet, **ex_kw)

    def log(msg: str) -> None:
        console.print(f"[yellow]{msg}[/]" if "skipping" in msg or "failed" in msg else msg, highlight=False,
                      soft_wrap=True)

    report = guarded(lambda: run_sweep(sp, root, record_fn, log))
    t = Table(title=f"recordings in {root}")
    for c in ("checkpoint", "step", "test set", "run", "status", "errors"):
        t.add_column(c)
    for r in report.recordings.itertuples(index=False):
        style = "red" if r.status == "failed" or r.num_errors else ""
        t.add_row(Path(str(r.checkpoint)).name, _int(r.step), r.dataset, _fmt(r.run_id), r.status,
                  str(r.num_errors) if not r.detail else r.detail, style=style)
    out.print(t)
    if len(report.replays):
        t = Table(title="policy replays (mean over utterances; regret at the policy's t)")
        for c in ("run", "step", "policy", "status", "t", "GMAC/s", "SI-SNRi dB", "regret dB"):
            t.add_column(c, justify="right" if c in ("step", "t", "GMAC/s", "SI-SNRi dB", "regret dB") else "left")
        for r in report.replays.itertuples(index=False):
            t.add_row(str(r.run_id)[:10], _int(r.step), r.policy, r.status, _fmt(r.t, 0), _fmt(r.gmacs, 3),
                      _fmt(r.si_snri), _fmt(r.regret), style="dim" if r.status == "skipped" else "")
        out.print(t)
    counts = report.replays["status"].value_counts().to_dict() if len(report.replays) else {}
    rec_counts = report.recordings["status"].value_counts().to_dict()
    console.print("recordings: " + ", ".join(f"{v} {k}" for k, v in rec_counts.items())
                  + "; replays: " + (", ".join(f"{v} {k}" for k, v in counts.items()) or "none")
                  + "; curves: " + (", ".join(f"{k[:10]} {v}" for k, v in report.curves.items()) or "none"),
                  highlight=False, soft_wrap=True)
    if (report.recordings["status"] == "failed").any():
        raise typer.Exit(EXIT_BAD_INPUT)  # a checkpoint or test set of the spec could not be recorded
    if report.failed:
        raise typer.Exit(EXIT_UTTERANCES_FAILED)


# -- compare ----------------------------------------------------------------------------------------
@app.command()
def compare(
    base: str = typer.Argument(..., help="base run id (or unique prefix)"),
    candidate: str = typer.Argument(..., help="candidate run id (or unique prefix)"),
    results: Path = typer.Option(Path("results"), "--results", "-r", help="results root of the base run"),
    candidate_results: Optional[Path] = typer.Option(
        None, "--candidate-results", help="results root of the candidate (default: --results), e.g. a CI run"),
    metric: str = typer.Option("si_snri", "--metric", "-m",
                               help="comma list of si_snri, si_snr, snri, snr, sdri, sdr, pesq, stoi, estoi;"
                                    " each must be recorded in both runs"),
    tolerance: str = typer.Option("0.1", help="smallest drop that matters, in the metric's units: one number"
                                              " or metric=value pairs of compared metrics (si_snri=0.2,pesq=0.05)"),
    policy: list[str] = typer.Option([], "--policy", "-p",
                                     help="policy spec to replay and compare per utterance (repeatable); default:"
                                          " oracle:t=15, probabilistic:t=15,p=0.9 and router where supported"),
    alpha: float = typer.Option(0.05, help="family-wise error rate of the gate: the chance that any row is called"
                                           " worse when none truly dropped beyond tolerance"),
    confidence: Optional[float] = typer.Option(None, hidden=True, help="deprecated: use --alpha (= 1 − confidence)"),
    resamples: int = typer.Option(2000, help="bootstrap resamples (at least 10/alpha)"),
    seed: int = typer.Option(0, help="bootstrap seed"),
    targets: str = typer.Option("10,15,20", help="targets t (dB) of the curve-level regret comparison"),
    at_gmacs: Optional[float] = typer.Option(None, help="compute (GMAC/s) at which regret curves are compared;"
                                                        " default: midway between the base's cheapest and"
                                                        " dearest level"),
    no_curves: bool = typer.Option(False, "--no-curves", help="skip the curve-level comparison"),
) -> None:
    """Paired comparison of a candidate run against a base run on the same test set (a CI gate).

    One row per level and per policy configuration and metric: the mean of the per-utterance deltas
    (candidate − base, each utterance's metric averaged over sources), its simultaneous bounds and
    the minimum detectable drop (MDD, at 80 % power). All rows are tested together by a max-statistic
    paired bootstrap: when no row truly drops beyond its tolerance, the chance that any row is called
    'worse' is at most --alpha (default 0.05), however many rows there are. A row is 'worse' when its
    simultaneous upper bound lies below −tolerance, 'better' when its lower bound lies above
    +tolerance, else 'same'. Curve-level readouts (area under the Pareto front of mean SI-SNRi vs
    GMAC/s, regret at a fixed compute) are shown but not significance-tested and do not gate.
    Exit code 1 when any row is 'worse', 0 otherwise, 2 on bad input (different test sets, a metric
    one run did not record, an unknown --tolerance key).
    """
    from exitbench.results.compare import compare_runs

    notes = []
    if confidence is not None:
        alpha = 1.0 - confidence
        notes.append(f"--confidence is deprecated: the gate's family-wise error rate is --alpha (used {alpha:g})")

    def go() -> Any:
        ts = [float(x) for x in targets.split(",") if x.strip()]
        return compare_runs(results, base, candidate, candidate_root=candidate_results,
                            metrics=metric.split(","), tolerance=tolerance, policies=policy or None,
                            alpha=alpha, resamples=resamples, seed=seed, targets=ts,
                            at_gmacs=at_gmacs, curves=not no_curves)

    cmp = guarded(go)
    b, c = cmp.base, cmp.candidate
    console.print(f"base {b['run_id']} ({_model_name(b['checkpoint_path'], b['model'])}, step {_int(b['step'])})"
                  f" vs candidate {c['run_id']} ({_model_name(c['checkpoint_path'], c['model'])}, step"
                  f" {_int(c['step'])}) on {b['dataset']}", highlight=False, soft_wrap=True)
    family = f"{cmp.n_tested} row(s) tested at family-wise alpha {cmp.alpha:g}"
    t = Table(title=f"paired per-utterance deltas (candidate − base); bounds simultaneous over the {family}")
    for col in ("kind", "name", "metric", "n", "base", "candidate", "delta", "bounds", "MDD", "tol", "verdict"):
        t.add_column(col, justify="right" if col in ("n", "base", "candidate", "delta", "MDD", "tol") else "left")
    for r in cmp.rows.itertuples(index=False):
        t.add_row(r.kind, r.name, r.metric, str(r.n), _fmt(r.base), _fmt(r.candidate), _fmt(r.delta, 3),
                  f"[{_fmt(r.ci_low, 3)}, {_fmt(r.ci_high, 3)}]", _fmt(r.mdd, 3), _fmt(r.tolerance, 3), r.verdict,
                  style=_VERDICT_STYLE.get(r.verdict, ""))
    out.print(t)
    if len(cmp.curves):
        t = Table(title=f"curves (not significance-tested; regret at {_fmt(cmp.at_gmacs, 3)} GMAC/s)")
        for col in ("readout", "policy", "t", "base", "candidate", "delta", "better", "verdict"):
            t.add_column(col)
        for r in cmp.curves.itertuples(index=False):
            t.add_row(r.readout, r.policy, _fmt(r.t, 0), _fmt(r.base, 3), _fmt(r.candidate, 3), _fmt(r.delta, 3),
                      r.better, r.verdict)
        out.print(t)
    for note in notes + cmp.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    crit = (f"simultaneous critical value {cmp.critical:.2f} standard errors" if math.isfinite(cmp.critical)
            else "every row's deltas are constant, so its bounds are exact")
    console.print(f"{family} (one-sided; {crit}; MDD = the drop detected with {cmp.power:.0%} power)",
                  highlight=False, soft_wrap=True)
    n_bad = len(cmp.regressions)
    if n_bad:
        console.print(f"[bold red]REGRESSION:[/] {n_bad} of {cmp.n_tested} row(s) significantly worse beyond"
                      f" tolerance (family-wise alpha {cmp.alpha:g})", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"no significant regression beyond tolerance in {cmp.n_tested} row(s) (family-wise alpha"
                  f" {cmp.alpha:g})", highlight=False, soft_wrap=True)


# -- history ----------------------------------------------------------------------------------------
@app.command()
def history(
    results: Path = typer.Option(Path("results"), "--results", "-r", help="results root"),
    model_glob: Optional[str] = typer.Option(None, "--model-glob",
                                             help="only runs whose checkpoint path or name matches this glob"),
    group: Optional[str] = typer.Option(None, "--group", help="test set: dataset name or fingerprint prefix"
                                                              " (needed when runs cover several)"),
    metric: str = typer.Option("si_snri", "--metric", "-m", help="comma list of metrics (as in compare)"),
    policy: list[str] = typer.Option([], "--policy", "-p", help="also track these policy configurations"),
    tolerance: str = typer.Option("0.1", help="smallest drop that counts (as in compare)"),
    alpha: float = typer.Option(0.05, help="family-wise error rate of each step's comparison (as in compare)"),
    out_fig: Optional[Path] = typer.Option(None, "--out", "-o", help="write the figure here (PNG, PDF, SVG)"),
    fail_on_regression: bool = typer.Option(False, help="exit code 1 when any step regressed"),
) -> None:
    """Metrics against training step over the checkpoints of one training run, regressions marked.

    The group is the complete runs of one test set that carry a step in their checkpoint metadata,
    one per step. Each step is compared with the previous one by the gate of `exitbench compare`
    (a max-statistic paired bootstrap, family-wise error --alpha over the step's rows); a significant
    drop beyond tolerance is marked REGRESSION (red circles in the figure).
    """
    from exitbench.results.history import history as build, plot_history

    hist = guarded(lambda: build(results, model_glob, group, metric.split(","), tolerance, policy,
                                       alpha), results)
    t = Table(title=f"history on {hist.dataset} ({hist.fingerprint[:12]}): {len(hist.runs)} step(s)")
    for col in ("step", "run", "name", "metric", "mean", "Δ prev", "CI", "verdict"):
        t.add_column(col, justify="right" if col in ("step", "mean", "Δ prev") else "left")
    rows, styles = [], []
    for r in hist.table.itertuples(index=False):
        ci = "" if math.isnan(r.ci_low) else f"[{_fmt(r.ci_low, 3)}, {_fmt(r.ci_high, 3)}]"
        rows.append([str(r.step), r.run_id[:10], r.name, r.metric, _fmt(r.mean), _fmt(r.delta, 3), ci,
                     "REGRESSION" if r.regression else r.verdict])
        styles.append("bold red" if r.regression else "")
    print_table(t, rows, styles)
    for note in hist.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    if out_fig is not None:
        path = guarded(lambda: plot_history(hist, out_fig))
        console.print(f"figure: {path}", highlight=False)
    for r in hist.regressions.itertuples(index=False):
        console.print(f"[bold red]REGRESSION[/] at step {r.step} ({r.run_id}): {r.name} {r.metric}"
                      f" {_fmt(r.delta, 3)} vs the previous step, CI [{_fmt(r.ci_low, 3)}, {_fmt(r.ci_high, 3)}]",
                      highlight=False, soft_wrap=True)
    n_bad = len(hist.regressions)
    console.print(f"{n_bad} regression(s)" if n_bad else "no regression", highlight=False)
    if n_bad and fail_on_regression:
        raise typer.Exit(1)


# -- catalog ----------------------------------------------------------------------------------------
@app.command()
def catalog(
    results: Path = typer.Option(Path("results"), "--results", "-r", help="results root"),
    run: Optional[str] = typer.Option(None, help="run id prefix"),
    checkpoint: list[str] = typer.Option([], "--checkpoint", "-c",
                                         help="checkpoint path, glob or sha256 prefix (repeatable: any of them)"),
    step: Optional[str] = typer.Option(None, help="training step: N, A..B, A.. or ..B"),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="test-set name (glob allowed)"),
    fingerprint: Optional[str] = typer.Option(None, help="test-set fingerprint prefix"),
    since: Optional[str] = typer.Option(None, help="started on or after (ISO date or date-time, UTC)"),
    until: Optional[str] = typer.Option(None, help="started on or before (a bare date includes that day)"),
    harness_version: Optional[str] = typer.Option(None, help="exitbench version that recorded it (glob allowed)"),
    schema_version: Optional[int] = typer.Option(None, help="only runs of this schema version"),
    status: Optional[str] = typer.Option(None, help="running, complete or failed"),
    any_schema: bool = typer.Option(False, "--any-schema", help="list runs of other schema versions too"),
    csv: bool = typer.Option(False, help="print CSV (every manifest column) instead of a table"),
) -> None:
    """List and filter the runs of a results root: checkpoint, step, test set, date, version, status.

    Refuses (exit code 2) to mix runs written with another schema version than this exitbench's,
    unless --any-schema or --schema-version selects them.
    """
    _catalog(**locals())


@app.command(hidden=True, help="Deprecated: the old name of `exitbench catalog` (kept for one release).")
def registry(
    results: Path = typer.Option(Path("results"), "--results", "-r"), run: Optional[str] = None,
    checkpoint: list[str] = typer.Option([], "--checkpoint", "-c"), step: Optional[str] = None,
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d"), fingerprint: Optional[str] = None,
    since: Optional[str] = None, until: Optional[str] = None, harness_version: Optional[str] = None,
    schema_version: Optional[int] = None, status: Optional[str] = None,
    any_schema: bool = typer.Option(False, "--any-schema"), csv: bool = False,
) -> None:
    console.print("[yellow]`exitbench registry` is now `exitbench catalog` (\"registry\" means plug-ins);"
                  " the old name goes in the next release[/]", highlight=False)
    _catalog(**locals())


def _catalog(results: Path, run: Optional[str], checkpoint: list[str], step: Optional[str],
             dataset: Optional[str], fingerprint: Optional[str], since: Optional[str], until: Optional[str],
             harness_version: Optional[str], schema_version: Optional[int], status: Optional[str],
             any_schema: bool, csv: bool) -> None:
    import sys

    from exitbench.results.catalog import list_runs

    df = guarded(lambda: list_runs(results, run=run, checkpoint=checkpoint or None, step=step, dataset=dataset,
                                   fingerprint=fingerprint, since=since, until=until,
                                   harness_version=harness_version, schema_version=schema_version,
                                   status=status, any_schema=any_schema))
    if csv:
        sys.stdout.write(df.drop(columns=["started"]).to_csv(index=False))
        return
    t = Table(title=f"{len(df)} run(s) in {results}")
    for c in ("run", "status", "checkpoint", "sha256", "step", "test set", "utts", "errors", "version",
              "schema", "started"):
        t.add_column(c, no_wrap=c in ("run", "started", "sha256"))
    for r in df.itertuples(index=False):
        t.add_row(r.run_id, r.status, _model_name(r.checkpoint_path, r.model),
                  str(r.checkpoint_sha256 or "")[:12], _int(r.step), r.dataset,
                  _int(r.num_utterances), _int(r.num_errors),
                  _fmt(r.harness_version), _int(r.schema_version), _fmt(r.started_at))
    out.print(t)
