"""``exitbench replay`` and ``exitbench sweep-policies``: exit policies over a stored recording."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from exitbench.errors import UsageError
from exitbench.harness.cli.app import ReadResultsOpt, app, console, guarded, out


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"expected comma-separated numbers, got {text!r}") from None


@app.command()
def replay(
    run: str = typer.Argument(..., help="run id (or a unique prefix) in the results root"),
    policy: list[str] = typer.Option(..., "--policy", "-p",
                                     help="policy spec, e.g. probabilistic:t=20,p=0.9, static:l=2 or static:l=exit3,"
                                          " oracle:t=15 (the first level reaching t, PRESS's), oracle-best:t=15"
                                          " (least regret: a true bound), uniform:seed=1, router; the oracles and"
                                          " probabilistic take p_ref=mixture (default: each utterance's mixture"
                                          " power) or p_ref=<dBFS> (repeatable)"),
    target: Optional[float] = typer.Option(None, "--target", "-t",
                                           help="regret target t (dB) for policies without their own t"),
    results: Path = ReadResultsOpt,
    seed: int = typer.Option(0, help="seed for random policies"),
) -> None:
    """Replay exit policies over a recording: exact metrics of the stitched output, stored under the root."""
    from exitbench.results.replays import load_block_arrays, replay_run, resolve_run_id, store_replay

    def go() -> list[dict[str, Any]]:
        run_id = resolve_run_id(results, run)
        arrays = load_block_arrays(results, run_id)
        summaries = []
        for spec in policy:
            res = replay_run(results, run_id, spec, target, seed, arrays=arrays)
            folder = store_replay(results, res)
            summaries.append(res.summary() | {"folder": str(folder)})
        return summaries

    for s in guarded(go):
        t = Table(title=f"{s['policy']} on run {s['run']}", show_header=False)
        t.add_row("GMAC/s", f"{s['gmacs']:.4f}")
        t.add_row("mean SI-SNRi (dB)", f"{s['si_snri']:.3f}")
        t.add_row("mean SNRi (dB)", f"{s['snri']:.3f}")
        t.add_row(f"mean one-sided regret at t={s['t']:g} dB", f"{s['regret']:.3f}")
        total = sum(s["histogram"].values()) or 1
        for name, c in s["histogram"].items():
            t.add_row(f"blocks at {name}", f"{c} ({100 * c / total:.1f}%)")
        out.print(t)
        console.print(f"stored: {s['folder']}", highlight=False, soft_wrap=True)


@app.command("sweep-policies")
def sweep_policies(
    run: str = typer.Argument(..., help="run id (or a unique prefix)"),
    targets: str = typer.Option("10,15,20", help="exit-SNR targets t in dB, comma-separated"),
    policy: list[str] = typer.Option([], "--policy", "-p",
                                     help="only these policies (names or specs, e.g. budget, learned:router=FILE);"
                                          " default: every one the recording supports"),
    budgets: Optional[str] = typer.Option(None, help="mean compute budgets in GMAC/s for the budget policy,"
                                                     " comma-separated (default: 21 from the cheapest level's"
                                                     " compute to the deepest's)"),
    matched_draws: int = typer.Option(20, min=0, help="seeds of the cost-matched random baseline drawn for every"
                                                      " point of every dynamic curve (0: none)"),
    results: Path = ReadResultsOpt,
) -> None:
    """Run every policy over its whole range (all thresholds in one pass) and store the curves.

    Every point of a dynamic curve (probabilistic, budget, learned, threshold, the oracles) gets its
    cost-matched random baseline: the same levels permuted among blocks of equal cost, as columns
    matched_regret (expected), matched_regret_lo/hi (95 % of the draws) and matched_si_snri.
    """
    from exitbench.results.replays import resolve_run_id, sweep_run

    def go() -> Any:
        run_id = resolve_run_id(results, run)
        return run_id, sweep_run(results, run_id, _floats(targets), policy or None,
                                 budgets=_floats(budgets) if budgets else None, matched_draws=matched_draws)

    run_id, frame = guarded(go)
    for name, why in frame.attrs.get("skipped", {}).items():
        console.print(f"skipped {name}: {why}", highlight=False, soft_wrap=True)
    t = Table(title=f"policy sweep of run {run_id}: {len(frame)} configurations")
    for c in ("policy", "t", "configs", "GMAC/s range", "best SI-SNRi", "min regret", "gain over matched"):
        t.add_column(c, justify="right")
    for (name, tt), g in frame.groupby(["policy", "t"], sort=False):
        gain = (g["matched_regret"] - g["regret"]).mean() if "matched_regret" in g and g["matched_regret"].notna().any() \
            else float("nan")
        t.add_row(name, f"{tt:g}", str(len(g)), f"{g.gmacs.min():.3f}-{g.gmacs.max():.3f}",
                  f"{g.si_snri.max():.2f}", f"{g.regret.min():.3f}", "–" if gain != gain else f"{gain:.3f} dB")
    out.print(t)
    console.print(f"stored: {results}/sweeps/run={run_id}/sweep=<policy>/ (view `sweeps`)", highlight=False)


@app.command("fit-router")
def fit_router_cmd(
    run: str = typer.Argument(..., help="the VALIDATION recording (run id or unique prefix) to fit on"),
    target: float = typer.Option(15.0, "--target", "-t", help="exit-SNR target t (dB): the router learns the"
                                                              " cheapest level reaching it"),
    out_path: Optional[Path] = typer.Option(None, "--out", help="router file (default: ROOT/routers/<run>-t<t>.json)"),
    c: float = typer.Option(1.0, "--C", min=1e-6, help="inverse L2 regularisation strength of the logistic regression"),
    results: Path = ReadResultsOpt,
) -> None:
    """Fit a learned router on a validation recording, for models that have no router of their own.

    A multinomial logistic regression (scikit-learn) on per-block features the model emits (predicted
    probabilities and exit-SNR, ln α, ln β, estimate energies, exit scores, mixture energy) learns the
    cheapest level that reaches t. Apply it to another recording with
    `exitbench replay TEST -p learned:router=FILE,q=0.5` or sweep q with `sweep-policies -p learned:router=FILE`;
    it refuses the run it was fitted on.
    """
    from exitbench.policies.learned import fit_router
    from exitbench.results.replays import load_block_arrays, resolve_run_id

    def go() -> Any:
        run_id = resolve_run_id(results, run)
        arrays = load_block_arrays(results, run_id)
        from exitbench.results.analysis import manifest

        man = manifest(results, run_id)
        router = fit_router(arrays, target, run_id, c=c,
                            info={k: man.get(k) for k in ("model", "checkpoint_sha256", "dataset")})
        path = out_path or Path(results) / "routers" / f"{run_id}-t{target:g}.json"
        return router, router.save(path)

    router, path = guarded(go)
    info = router.info
    out.print(f"fitted on run {router.fitted_on} ({info['blocks']} blocks, {len(router.features)} features):"
              f" training accuracy {info['train_accuracy']:.3f}; target levels {info['target_histogram']}")
    console.print(f"stored: {path}  (apply: -p learned:router={path})", highlight=False, soft_wrap=True)
