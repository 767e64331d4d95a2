"""``exitbench online``: a policy executed inside the model between exits, against its replay."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from exitbench.harness.cli.app import DeviceOpt, ReadResultsOpt, app, console, guarded, out, positive_limit


_HELP = ("Execute a policy online: each forward pass stopped at the policy's exit, timed, its MACs counted. "
         "Per block for a chunk-safe model (press-s with --model-arg chunked=true), else per utterance (the pass "
         "goes on while any block runs). Every block's choice is checked against the replay of the same policy on "
         "the run; savings are against the static deepest exit executed the same way, deciding included. "
         "Stored under ROOT/online/run=<id>/.")


@app.command(help=_HELP)
def online(
    run: str = typer.Argument(..., help="recorded run id (or a unique prefix): its model and test set are"
                                        " rebuilt from its spec, its blocks give the replay to compare with"),
    policy: str = typer.Option(..., "--policy", "-p",
                               help="an online policy: probabilistic:t=..,p=..[,condition=..,p_ref=..] or"
                                    " static:l=.. (policies that read the reference or deeper levels cannot"
                                    " run online)"),
    results: Path = ReadResultsOpt,
    device: str = DeviceOpt,
    repeats: int = typer.Option(3, min=1, help="times each utterance runs (policy and static deepest"
                                               " alternately); the fastest of each is kept"),
    limit: Optional[int] = typer.Option(None, help="only the first N utterances"),
    batch: int = typer.Option(1, min=1, help="utterances per pass (chunk-safe models only: their blocks in one"
                                             " batch, as a GPU wants; time and MACs shared by blocks)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """Execute a policy online: each forward pass stopped at the policy's exit, timed, its MACs counted."""
    from exitbench.harness.online import run_online
    from exitbench.results.store import write_parquet_atomic
    import exitbench

    def go() -> tuple[Any, Path]:
        res = exitbench.open(results)
        prog = Progress(TextColumn("online"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, disable=quiet)
        task: list[Any] = []

        def tick(k: int, n: int) -> None:  # the bar appears once the checks passed and utterances run
            if not task:
                prog.start()
                task.append(prog.add_task("online", total=n))
            prog.update(task[0], completed=k)

        try:
            summary = run_online(res, run, policy, device=device, limit=positive_limit(limit), repeats=repeats,
                                 batch=batch, progress=tick)
        finally:
            prog.stop()
        meta = {"policy": summary.policy, "device": summary.device, "chunk_safe": str(summary.chunk_safe),
                "figures": json.dumps(summary.figures()), "info": json.dumps(summary.info)}
        table = summary.table.replace_schema_metadata(meta)
        slug = hashlib.sha256(f"{summary.policy}|{summary.device}".encode()).hexdigest()[:12]
        path = Path(results) / "online" / f"run={summary.run_id}" / f"policy={slug}.parquet"
        write_parquet_atomic(table, path)
        return summary, path

    summary, path = guarded(go, results)
    f = summary.figures()
    t = Table(title=f"{summary.policy} online on run {summary.run_id} ({summary.device},"
                    f" {'per block: chunk-safe' if summary.chunk_safe else 'per utterance'})", show_header=False)
    t.add_row("utterances / blocks", f"{f['utterances']} / {f['blocks']}")
    t.add_row("choices equal to the replay's", f"{f['choices_equal']} of {f['blocks']}")
    t.add_row("MAC saving, replay's prediction", f"{100 * f['mac_saving_replay']:.1f} %")
    t.add_row("MAC saving, executed", f"{100 * f['mac_saving_executed']:.1f} %")
    t.add_row("wall-clock saving (deciding included)", f"{100 * f['wall_saving']:.1f} %")
    t.add_row("wall-clock, policy / static deepest", f"{f['wall_s']:.3f} s / {f['baseline_wall_s']:.3f} s")
    out.print(t)
    console.print(f"stored: {path}", highlight=False, soft_wrap=True)
