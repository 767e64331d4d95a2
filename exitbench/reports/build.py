"""Assemble the figures of one or several runs: the self-contained HTML report, or vector figures for a paper.

The HTML report is one file that opens offline: a table of contents, a reading guide, a summary
of the runs, then per run its tables (units in every header), its figures (each with a numbered
caption saying what is plotted and how to read it), slices by input SNR and metadata, audio to
listen to (estimates re-computed by the run's model, embedded as compressed ``data:`` URIs), the
manifest folded and summarised, and the errors.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from exitbench.errors import UsageError
from exitbench.policies import PolicyError, RecordingError
from exitbench.reports import audio as AU
from exitbench.reports import figures as F
from exitbench.reports import queries as Q
from exitbench.reports import tables as T
from exitbench.reports.style import figure_style, save_figure
from exitbench.results import analysis as A
from exitbench.results.replays import load_block_arrays, run_shape

#: what can go wrong for one panel of a report without making the rest useless
PANEL_ERRORS = (A.AnalysisError, F.FigureError, PolicyError, RecordingError)


@dataclass
class Panel:
    """One figure of a run (or the reason it could not be drawn), with the caption under it."""

    key: str
    title: str
    figure: Any = None  # matplotlib Figure
    reason: str = ""
    caption: str = ""


@dataclass
class Clip:
    """One row of a listening table: a signal per source (data URIs) and what the recording says of it."""

    label: str
    kind: str  # mixture | reference | level | policy
    uris: list[str | None]
    si_snri: list[float] = field(default_factory=list)  # per source (dB), empty for mixture and references
    gmacs: float = float("nan")
    note: str = ""


@dataclass
class Listening:
    """The clips of one utterance."""

    role: str
    utt_id: str
    si_snri: float
    input_snr: float
    duration: float
    clips: list[Clip] = field(default_factory=list)
    max_deviation_db: float = float("nan")
    reason: str = ""


@dataclass
class RunFigures:
    """Every figure and table of one run."""

    run_id: str
    manifest: dict[str, Any]
    panels: list[Panel] = field(default_factory=list)
    level_table: pd.DataFrame | None = None
    policy_table: pd.DataFrame | None = None
    equal_compute_table: pd.DataFrame | None = None
    matched_table: pd.DataFrame | None = None
    condition_table: pd.DataFrame | None = None
    errors: pd.DataFrame | None = None
    label: str = ""
    slices: list[pd.DataFrame] = field(default_factory=list)
    slice_reasons: list[str] = field(default_factory=list)
    listening: list[Listening] = field(default_factory=list)
    audio_note: str = ""
    audio_reason: str = ""
    curves: pd.DataFrame | None = None  # regret_curves, shared with the Pareto fronts


def _panel(key: str, title: str, draw: Callable[[], Any], caption: Callable[[], str] | str = "") -> Panel:
    try:
        fig = draw()
    except PANEL_ERRORS as exc:
        return Panel(key, title, None, str(exc))
    try:
        text = caption() if callable(caption) else caption
    except PANEL_ERRORS as exc:  # the caption's own numbers failed: keep the figure
        text = f"({exc})"
    return Panel(key, title, fig, "", text)


def _as_list(utt_ids: str | Sequence[str] | None) -> list[str]:
    if utt_ids is None:
        return []
    return [utt_ids] if isinstance(utt_ids, str) else list(dict.fromkeys(utt_ids))


def check_inputs(root: str | os.PathLike, run_ids: Sequence[str], utt_id: str | Sequence[str] | None,
                 policy: str | None) -> None:
    """Fail early, with the reason, on an utterance or policy the user named that a run cannot show."""
    from exitbench.policies import parse_policy

    for run_id in run_ids:
        known = set(A.utterance_ids(root, run_id)) if utt_id else set()
        for u in _as_list(utt_id):
            if u not in known:
                raise A.AnalysisError(f"run {run_id} has no utterance {u!r}")
        if policy is not None:
            try:
                parse_policy(policy).check_requirements(load_block_arrays(root, run_id))
            except (PolicyError, RecordingError) as exc:
                raise A.AnalysisError(f"policy {policy!r} on run {run_id}: {exc}") from None


# -- captions ---------------------------------------------------------------------------------------------
def _regret_caption(curves: pd.DataFrame) -> str:
    ts = ", ".join(f"{t:g}" for t in sorted(curves["t"].unique()))
    have = set(curves["strategy"])
    parts = [f"One-sided exit-SNR regret, max(0, t − exit-SNR) in dB averaged over every block, against compute"
             f" (GMAC/s: 10⁹ multiply-accumulates per second of audio), one panel per target t = {ts} dB."]
    legend = []
    if "dynamic" in have:
        legend.append("dynamic: the probabilistic policy swept over its confidence p (one curve per t)")
    legend.append("static: always the same exit, one point per exit (cheapest on the left)")
    if "oracle" in have:
        legend.append("oracle: the cheapest exit whose true exit-SNR reaches t (it needs the reference,"
                      " so it is a bound, not a deployable policy)")
    if "uniform" in have:
        legend.append("uniform: an exit drawn at random per block")
    if "router" in have:
        legend.append("router: the model's own routing")
    if "budget" in have:
        legend.append("budget: per block the exit maximising the predicted exit-SNR minus λ·GMAC/s, λ solved for"
                      " each mean budget")
    if "learned router" in have:
        legend.append("learned router: a classifier fitted on a validation recording (never this one), swept over"
                      " its confidence q")
    parts.append("; ".join(legend) + ".")
    if "matched_regret" in curves and curves["matched_regret"].notna().any():
        parts.append("Dotted lines and shaded bands: each dynamic curve's cost-matched random baseline, the same"
                     " exits given to randomly chosen blocks of equal cost (expected regret, and 95 % of 20 seeded"
                     " draws); a curve below its band places the compute better than chance.")
    parts.append("Lower is better at equal compute: where the dynamic curve lies below the static line, the"
                 " policy spends the same compute for less regret.")
    return " ".join(parts)


def _calibration_caption(rel: pd.DataFrame, dec: pd.DataFrame | None, utts: int) -> str:
    n = int(rel["count"].iloc[0]) if "count" in rel else None
    text = ("Left: reliability of each exit's predicted error variance σ². For every block the probability"
            " integral transform (PIT) u = P(σ² ≤ the observed error power) is computed; the curve is the"
            " fraction of blocks with u ≤ q against q. A calibrated exit follows the dashed diagonal; above it"
            " the predicted variance is too large (pessimistic), below it too small (over-confident). KS: the"
            " largest vertical distance from the diagonal"
            + (f"; n: PIT values per exit (blocks × sources, {n})" if n is not None else "")
            + f". Shaded: 95% intervals when the {utts} utterances are resampled (bootstrap), which respects"
            " that blocks of one utterance are not independent.")
    if dec is not None and len(dec):
        t = float(dec["t"].iloc[0])
        text += (f" Right: the exit decision at t = {t:g} dB. Blocks are binned by the predicted probability"
                 " that an exit reaches t; each curve is the observed fraction that did (thin: one per exit;"
                 " black: all exits pooled, with 95% bootstrap intervals over utterances). Below the diagonal"
                 " the model promises more than it delivers. The bars below count the (block, exit) pairs in"
                 " each bin (log scale): a point resting on a handful of blocks says little.")
    return text


def _pareto_caption(frame: pd.DataFrame, several: bool = False) -> str:
    metric = T.header(str(frame["metric"].iloc[0]))
    text = (f"Mean {metric} over utterances against compute (GMAC/s). Grey markers: the static exits (area ∝"
            " the parameters each needs) and the staircase of the best static exit at or below each compute;"
            " blue curves: the probabilistic policy over p, one per target t (darker: higher t); green: the"
            " oracle over t; ×: uniform random exits; +: the model's router where it has one. Small open rings"
            " mark the non-dominated points (nothing else has more "
            f"{metric.split(' (')[0]} for less compute). Up and to the left is better.")
    g = frame["gmacs"].to_numpy(dtype=float)
    g = g[np.isfinite(g) & (g > 0)]
    if g.size and g.max() / g.min() > F.LOG_RATIO:
        text += " Compute is on a logarithmic axis (the points span more than a factor of ten)."
    if several:
        text += " Runs differ by line style and marker (legend); the rings mark the front over all runs together."
    if frame.attrs.get("note"):
        text += " " + frame.attrs["note"] + "."
    return text


def _exit_map_caption(blocks: pd.DataFrame, role: str, sr: int, mix_reason: str) -> str:
    utt = blocks["utt_id"].iloc[0]
    n = int(blocks["n"].iloc[0])
    text = (f"One utterance, {utt}" + (f" (the {role} by the deepest exit's SI-SNRi)" if role else "")
            + f", under the policy {blocks['policy'].iloc[0]}. ")
    if not mix_reason:
        text += (f"Top: the mixture's spectrogram (log power), white lines at the block edges ({n} samples ="
                 f" {1000 * n / sr:g} ms). ")
    else:
        text += f"(No spectrogram: {mix_reason}.) "
    text += ("Middle: the exit the policy chose for each block. Bottom: every exit's true exit-SNR per block"
             " (thin lines, one colour per exit), the chosen exit's (bars, in the chosen exit's colour) and the"
             f" target t = {float(blocks['t'].iloc[0]):g} dB (dashed); a bar below the dashed line is regret."
             f" Mean regret on this utterance: {blocks['regret'].mean():.2f} dB.")
    return text


def _utilization_caption(frame: pd.DataFrame, tr: Q.Trend, levels: pd.DataFrame) -> str:
    source = str(frame["source"].iloc[0])
    static = levels[levels["kind"] == "static"].sort_values("level")
    full = str(static["name"].iloc[-1]) if len(static) else "the deepest level"
    who = "the router's dynamic level" if source == "dynamic" else f"the policy {source}"
    text = (f"Per utterance ({len(frame)}): the utilization of {who} (MACs spent / MACs of the full model, {full})"
            " against the utterance's input SNR (dB; with several sources, the hardest source's), coloured by"
            " its SI-SNRi (dB), as in the slimming paper. Dashed: least-squares line")
    if np.isfinite(tr.slope):
        text += f" (slope {tr.slope:+.4f} per dB)"
    if np.isfinite(tr.rho):
        text += (f". Spearman rank correlation ρ = {tr.rho:.2f} (n = {tr.n}, p = {tr.p_value:.2g}): "
                 + ("negative, so the model spends more compute on noisier input." if tr.rho < 0 else
                    "positive, so the model spends more compute on cleaner input." if tr.rho > 0 else "none."))
    else:
        text += "; no rank correlation (fewer than three utterances, or no spread)."
    return text


def _distributions_caption(long: pd.DataFrame) -> str:
    n = long["utt_id"].nunique() if "utt_id" in long else 0
    return (f"Per exit, the spread over the {n} utterances of each metric (each utterance: the mean over its"
            " sources): boxes span the quartiles with the median inside, whiskers reach 1.5 × the interquartile"
            " range, dots are the utterances beyond them. Metrics that were not recorded are left out.")


# -- one run ------------------------------------------------------------------------------------------------
def run_figures(root: str | os.PathLike, run_id: str, targets: Sequence[float] = A.DEFAULT_TARGETS,
                utt_id: str | Sequence[str] | None = None, policy: str | None = None, paper: bool = False,
                tables: bool = True, run_labels: dict[str, str] | None = None, audio: bool = False,
                slices: bool | None = None) -> RunFigures:
    """Draw one run's figures (regret, calibration, Pareto, exit map, utilization, distributions).

    ``utt_id`` (one id or several): the utterances of the exit map (the first) and of the audio;
    default the median by the deepest exit's SI-SNRi (audio: best, median and worst). ``audio``
    re-computes and encodes the estimates; ``slices`` adds the slice tables (default: with tables)."""
    arrays = load_block_arrays(root, run_id)
    man = A.manifest(root, run_id)
    labels = run_labels or T.run_labels([man])
    out = RunFigures(run_id, man, label=labels.get(run_id, T.run_label(man)))
    t_mid = float(targets[len(targets) // 2]) if len(targets) else 15.0
    chosen = _as_list(utt_id)
    try:
        picks = Q.pick_utterances(root, run_id, chosen or None)
    except A.AnalysisError:
        picks = pd.DataFrame({"role": [""], "utt_id": [A.utterance_ids(root, run_id)[0]]})
    # the model's passes over the picked utterances (seconds on a CPU) run in a thread while the figures
    # are drawn: torch releases the GIL, and the thread makes no query of the root
    prefetched = _prefetch_audio(root, run_id, man, [str(u) for u in picks["utt_id"]]) if audio else None
    lead = picks[picks["role"].isin(["chosen", "median"])].iloc[0] if len(picks) else None
    utt = str(lead["utt_id"]) if lead is not None else A.utterance_ids(root, run_id)[0]
    role = "" if lead is None or lead["role"] == "chosen" else str(lead["role"])
    levels = run_shape(root, run_id)["levels"]
    def regret() -> Any:
        out.curves = A.regret_curves(root, run_id, targets, arrays)
        return F.regret_figure(out.curves, run_labels=labels)

    def calibration() -> Any:
        rel = Q.calibration_bands(root, run_id, arrays=arrays)
        dec = Q.decision_bands(root, run_id, t_mid, arrays=arrays)
        calib.extend([rel, dec])
        return F.calibration_figure(rel, dec)

    calib: list[pd.DataFrame] = []
    pareto: list[pd.DataFrame] = []
    exit_blocks: list[Any] = []
    util: list[Any] = []
    dist: list[pd.DataFrame] = []

    def pareto_fig() -> Any:
        pareto.append(A.pareto(root, [run_id], "si_snri", targets, curves={run_id: out.curves} if out.curves is not None else None))
        return F.pareto_figure(pareto[0], run_labels=labels)

    def exit_map() -> Any:
        blocks = A.exit_map(root, run_id, utt, policy, t_mid)
        mix = AU.load_mixture(root, run_id, utt)
        exit_blocks.extend([blocks, mix])
        return F.exit_map_figure(blocks, mix.audio, mix.sample_rate, note=mix.reason)

    def utilization() -> Any:
        frame, tr = Q.utilization_vs_input_snr(root, run_id, policy, t_mid)
        util.extend([frame, tr])
        return F.utilization_figure(frame, tr)

    def distributions() -> Any:
        dist.append(A.utterance_metrics(root, run_id))
        return F.distributions_figure(dist[0], run_labels=labels)

    with figure_style(paper):
        out.panels.append(_panel("regret", "Regret vs compute", regret, lambda: _regret_caption(out.curves)))
        out.panels.append(_panel("calibration", "Calibration of the predicted uncertainty", calibration,
                                 lambda: _calibration_caption(calib[0], calib[1], arrays.num_utts)))
        out.panels.append(_panel("pareto", "Pareto front (SI-SNRi vs compute)", pareto_fig,
                                 lambda: _pareto_caption(pareto[0])))
        out.panels.append(_panel("exit-map", f"Exit map of {utt}", exit_map,
                                 lambda: _exit_map_caption(exit_blocks[0], role, int(man["sample_rate"]),
                                                           exit_blocks[1].reason)))
        dyn = bool((levels["kind"] == "dynamic").any()) and policy is None
        out.panels.append(_panel("utilization", "Utilization vs input SNR" + (" (router)" if dyn else ""),
                                 utilization, lambda: _utilization_caption(util[0], util[1], levels)))
        out.panels.append(_panel("distributions", "Per-level distributions", distributions,
                                 lambda: _distributions_caption(dist[0])))
    if tables:
        out.level_table = A.level_summary(root, run_id)
        out.equal_compute_table = A.regret_at_equal_compute(out.curves) if out.curves is not None else None
        out.matched_table = A.gain_over_matched(out.curves) if out.curves is not None else None
        out.condition_table = A.deciding_condition(root, run_id, arrays)
        try:
            out.policy_table = A.policy_summary(root, run_id, targets=targets, arrays=arrays)
        except PANEL_ERRORS:
            out.policy_table = None
        out.errors = A.errors(root, run_id)
    if slices if slices is not None else tables:
        for by in ["input_snr", *Q.metadata_slice_keys(root, run_id)]:
            try:
                out.slices.append(A.slices(root, run_id, by, ("si_snri",)))
            except PANEL_ERRORS as exc:
                out.slice_reasons.append(f"{by}: {exc}")
    if audio:
        listen(root, run_id, out, picks, arrays, targets, policy, prefetched=prefetched)
    return out


def _prefetch_audio(root: str | os.PathLike, run_id: str, man: dict[str, Any], utt_ids: list[str]) -> Any:
    """A future of (the run's model or why not, each utterance's model output or why not), from a thread."""
    from concurrent.futures import ThreadPoolExecutor

    def work() -> tuple[Any, dict[str, Any]]:
        try:
            model = AU.open_run_model(root, run_id, man)
        except AU.AudioUnavailable as exc:
            return exc, {}
        outputs: dict[str, Any] = {}
        for utt_id in dict.fromkeys(utt_ids):
            try:
                outputs[utt_id] = AU.model_output(model, utt_id)
            except AU.AudioUnavailable as exc:
                outputs[utt_id] = exc
        return model, outputs

    pool = ThreadPoolExecutor(1, thread_name_prefix="exitbench-audio-model")
    future = pool.submit(work)
    pool.shutdown(wait=False)  # the future completes; nothing else is submitted
    return future


# -- listening ----------------------------------------------------------------------------------------------
def audio_policies(arrays: Any, t: float, policy: str | None = None) -> list[str]:
    """The policies whose stitched output the report plays: the named (or default) one, the oracle at the
    middle target, uniform and the router where recorded (canonical specs, no repeats)."""
    from exitbench.policies import parse_policy

    specs = [policy or A.default_policy(arrays, t), f"oracle:t={t:g}", "uniform"]
    if arrays.features() & {"router_logit", "dynamic"}:
        specs.append("router")
    out: list[str] = []
    for s in specs:
        try:
            p = parse_policy(s)
            p.check_requirements(arrays)
        except PolicyError:
            continue
        if p.spec() not in out:
            out.append(p.spec())
    return out


def listen(root: str | os.PathLike, run_id: str, rf: RunFigures, picks: pd.DataFrame, arrays: Any,
           targets: Sequence[float], policy: str | None = None, kbps: float = 16.0,
           max_seconds: float = 12.0, workers: int | None = None, prefetched: Any = None) -> None:
    """Re-compute the picked utterances with the run's model and fill ``rf.listening`` (or ``audio_reason``).

    Clips longer than ``max_seconds`` are cut to their first ``max_seconds`` (the metrics shown are
    still the whole utterance's), so that long test sets keep the report small. The clips are encoded by
    ``workers`` threads (default: up to 8, one per core; libsndfile and the resampler run outside the GIL).
    ``prefetched``: a future of the model and its outputs (``_prefetch_audio``), started here if not given."""
    from concurrent.futures import Future, ThreadPoolExecutor

    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1), thread_name_prefix="exitbench-audio") as pool:
        _listen(root, run_id, rf, picks, arrays, targets, policy, kbps, max_seconds, pool, prefetched)
    for item in rf.listening:  # each clip's encoding, in the order the table shows them
        for clip in item.clips:
            clip.uris = [u.result() if isinstance(u, Future) else u for u in clip.uris]


def _listen(root: str | os.PathLike, run_id: str, rf: RunFigures, picks: pd.DataFrame, arrays: Any,
            targets: Sequence[float], policy: str | None, kbps: float, max_seconds: float, pool: Any,
            prefetched: Any = None) -> None:
    """``listen``'s work, each clip's encoding handed to ``pool`` (its future stands in the clip until then)."""
    from exitbench.policies import parse_policy
    from exitbench.policies.replay import replay

    t_mid = float(targets[len(targets) // 2]) if len(targets) else 15.0
    if prefetched is None:
        prefetched = _prefetch_audio(root, run_id, rf.manifest, [str(u) for u in picks["utt_id"]])
    model, outputs = prefetched.result()
    if isinstance(model, AU.AudioUnavailable):
        rf.audio_reason = str(model)
        return
    codec = AU.choose_codec(model.sample_rate, kbps)
    specs = audio_policies(arrays, t_mid, policy)
    replays = {}
    for spec in specs:
        p = parse_policy(spec)
        chosen = p(arrays, 0)
        per_block, per_utt = replay(arrays, chosen, float(p.values.get("t", t_mid)))
        replays[spec] = (chosen, per_utt.set_index("utt_id"))
    per_level = Q.df(root, """SELECT u.level, any_value(l.name) AS name, u.source, avg(u.si_snri) AS si_snri,
                                      any_value(u.input_snr) AS input_snr,
                                      any_value(u.macs / u.num_samples * ? / 1e9) AS gmacs, u.utt_id
                               FROM utterances u JOIN levels l ON l.run = u.run AND l.level = u.level
                               WHERE u.run = ? GROUP BY u.utt_id, u.level, u.source""",
                      [int(rf.manifest["sample_rate"]), run_id])
    deviations = []
    cut = False
    for pick in picks.itertuples(index=False):
        item = Listening(str(pick.role), str(pick.utt_id), float(pick.si_snri), float(pick.input_snr),
                         float(pick.duration))
        rf.listening.append(item)
        try:
            output = outputs.get(item.utt_id)
            if isinstance(output, AU.AudioUnavailable):
                raise output
            rec = AU.recompute(root, run_id, item.utt_id, model, output)
        except AU.AudioUnavailable as exc:
            item.reason = str(exc)
            continue
        item.max_deviation_db = rec.max_deviation_db
        deviations.append(rec.max_deviation_db)
        sr = rec.sample_rate
        k = arrays.utt_ids.index(item.utt_id)
        mask = arrays.utt == k
        stitched = {spec: AU.stitch(rec.estimates, arrays.start[mask], arrays.n[mask], chosen[mask])
                    for spec, (chosen, _) in replays.items()}
        gain = AU.common_gain([rec.mixture, rec.sources, rec.estimates, *stitched.values()])
        cap = int(max_seconds * sr)
        if rec.mixture.size > cap:
            cut = True
        enc = lambda x: pool.submit(AU.encode, x[..., :cap], sr, codec, gain)  # noqa: E731  (arguments bound now)
        S = rec.sources.shape[0]
        lv = per_level[per_level["utt_id"] == item.utt_id]
        snrs = lv[lv["level"] == 0].sort_values("source")["input_snr"].tolist()
        item.clips.append(Clip("mixture", "mixture", [enc(rec.mixture)],
                               note=("input SNR " + " / ".join(f"{v:.1f}" for v in snrs) + " dB") if snrs else ""))
        item.clips.append(Clip("reference", "reference", [enc(rec.sources[s]) for s in range(S)]))
        for i, name in enumerate(rec.level_names):
            rows = lv[lv["level"] == i].sort_values("source")
            item.clips.append(Clip(f"{name} estimate", "level", [enc(rec.estimates[i, s]) for s in range(S)],
                                   rows["si_snri"].tolist(), float(rows["gmacs"].iloc[0]) if len(rows) else np.nan))
        for spec, (chosen, per_utt) in replays.items():
            ch = chosen[mask]
            row = per_utt.loc[item.utt_id]
            sis = [float(row[f"si_snri_s{s}"]) for s in range(S)]
            if ch.size and (ch == ch[0]).all():
                name = rec.level_names[int(ch[0])] if int(ch[0]) < len(rec.level_names) else str(ch[0])
                item.clips.append(Clip(f"{spec} output", "policy", [None] * S, sis, float(row["gmacs"]),
                                       f"chooses {name} on every block: the same audio as {name}'s estimate"))
                continue
            counts = np.bincount(ch, minlength=len(rec.level_names))
            mix_text = ", ".join(f"{rec.level_names[i]} ×{c}" for i, c in enumerate(counts) if c)
            item.clips.append(Clip(f"{spec} output", "policy", [enc(stitched[spec][s]) for s in range(S)], sis,
                                   float(row["gmacs"]), f"stitched from {mix_text} (blocks)"))
    dev = max((d for d in deviations if np.isfinite(d)), default=np.nan)
    rf.audio_note = (f"The waveforms are not stored in the recording: the run's model ({rf.manifest.get('model')},"
                     f" checkpoint {str(rf.manifest.get('checkpoint_sha256') or '')[:12]}…) was run again on the CPU"
                     " for these utterances, with the source order the recording chose"
                     + (("; the re-computed estimates reproduce the recorded SI-SNR exactly" if dev == 0 else
                         f"; the re-computed estimates match the recorded SI-SNR to within {dev:.1g} dB")
                        if np.isfinite(dev) else "")
                     + ". A policy's output is stitched block by block from the exits it chose (the same choices"
                     " as in the policy table). Every clip of an utterance has one gain (its loudest sample at 0.9),"
                     f" so loudness differences are real. Encoded as {codec.description} at {codec.sample_rate} Hz"
                     + (f"; clips are cut to their first {max_seconds:g} s (the SI-SNRi shown is the whole"
                        " utterance's)." if cut else "."))
    if np.isfinite(dev) and dev > 0.05:
        rf.audio_note += (f" Warning: the re-computed estimates differ from the recording by up to {dev:.2f} dB"
                          " (another torch version or device?); the clips are close to, not exactly, the recording.")


# -- HTML ------------------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:1.5em;color:#222;
background:#fff;font-size:14px;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;
margin-top:1.6em}h3{font-size:1.05em;margin:1.3em 0 .3em}h4{font-size:.95em;margin:1em 0 .3em}
.runs{display:grid;gap:1.5em;grid-template-columns:repeat(var(--n),minmax(0,1fr))}
.run{min-width:0}
img{max-width:100%;height:auto;border:1px solid #eee}
figure{margin:.4em 0 1.2em}figcaption{font-size:12.5px;color:#333;max-width:62em;margin-top:.3em}
table{border-collapse:collapse;font-size:12px;margin:.4em 0;max-width:100%}
th,td{border:1px solid #ddd;padding:2px 6px;text-align:right;vertical-align:top}
th{background:#f3f3f3}td.l,th.l{text-align:left}td:not(.l){white-space:nowrap}
.note{color:#666;font-style:italic}.err{color:#b00}.tnote{font-size:12px;color:#555;margin:.2em 0 .8em;max-width:62em}
.scroll{overflow-x:auto}
nav.toc{background:#f8f8f8;border:1px solid #e4e4e4;padding:.4em 1.2em;display:inline-block;min-width:22em}
nav.toc ol{margin:.3em 0;padding-left:1.4em}nav.toc li{margin:.1em 0}
dl.guide dt{font-weight:600;margin-top:.4em}dl.guide dd{margin-left:1.5em;max-width:60em}
details{margin:.4em 0}summary{cursor:pointer}
table.audio td{vertical-align:middle}audio{height:30px;width:210px;max-width:100%}
.si{font-size:11px;color:#444;display:block}
"""


def _png_data_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def level_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Wide per-level table: 'mean [lo, hi]' per metric header (with units), over ``level_summary``."""
    t = T.level_table(summary)
    return pd.DataFrame([[t.cell(v) if i >= 3 else v for i, v in enumerate(row)] for row in t.rows],
                        columns=t.columns)


def policy_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Wide per-policy table: 'mean [lo, hi]' per metric header (with units), over ``policy_summary``."""
    t = T.policy_table(summary)
    return pd.DataFrame([[t.cell(v) for v in row] for row in t.rows], columns=t.columns)


MANIFEST_KEYS = ("run_id", "status", "model", "model_args", "architecture", "checkpoint_path", "checkpoint_sha256",
                 "step", "dataset", "dataset_path", "dataset_fingerprint", "sample_rate", "num_sources",
                 "block_size", "num_levels", "num_utterances", "num_errors", "harness_version", "schema_version",
                 "git_commit", "host", "started_at", "finished_at")


def _execution(m: dict[str, Any]) -> dict[str, Any]:
    ex = m.get("execution")
    if isinstance(ex, str):
        try:
            ex = json.loads(ex)
        except json.JSONDecodeError:
            ex = None
    return ex if isinstance(ex, dict) else {}


def manifest_summary(m: dict[str, Any]) -> str:
    """One line: model, step, test set, utterances, device."""
    ex = _execution(m)
    device = ex.get("device") or "unknown device"
    if ex.get("gpu"):
        device += f" ({ex['gpu']})"
    if ex.get("executor"):
        device += f", {ex['executor']} executor"
    step = m.get("step")
    return (f"{m.get('model')} ({m.get('architecture')})" + (f", step {step}" if step is not None else "")
            + f"; test set {m.get('dataset')}" + (f" at {m['dataset_path']}" if m.get("dataset_path") else "")
            + f", {T.fmt_value(m.get('num_utterances'))} utterances ({T.fmt_value(m.get('num_errors'))} failed),"
            f" {m.get('sample_rate')} Hz, {m.get('num_sources')} source(s); recorded on {device}")


def _flatten(value: Any, prefix: str = "", depth: int = 0, max_depth: int = 3) -> list[tuple[str, str]]:
    if isinstance(value, dict) and depth < max_depth and value:
        rows: list[tuple[str, str]] = []
        for k, v in value.items():
            rows += _flatten(v, f"{prefix}.{k}" if prefix else str(k), depth + 1, max_depth)
        return rows
    if isinstance(value, (list, tuple)) and all(not isinstance(v, (dict, list)) for v in value):
        text = ", ".join(str(v) for v in value) if value else "(none)"
    elif isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, default=str, separators=(", ", ": "))
    else:
        text = "–" if value is None else str(value)
    return [(prefix, text if len(text) <= 160 else text[:157] + "…")]


def _kv_table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f'<tr><td class="l">{html.escape(k)}</td><td class="l">{html.escape(v)}</td></tr>'
                   for k, v in rows)
    return (f'<div class="scroll"><table><thead><tr><th class="l">field</th><th class="l">value</th></tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _manifest_html(m: dict[str, Any], anchor: str) -> str:
    ex = _execution(m)
    fields = [(k, "–" if m.get(k) is None else str(m[k])) for k in MANIFEST_KEYS if k in m]
    fields += [(f"execution.{k}", "–" if v is None else str(v)) for k, v in ex.items()]
    parts = [f'<details id="{anchor}-manifest-details"><summary><b>Manifest</b>: {html.escape(manifest_summary(m))}'
             "</summary>", _kv_table(fields)]
    for key, title in (("settings", "Recording settings"), ("spec", "Run spec (what `exitbench repair` re-runs)"),
                       ("model_metadata", "Model metadata (from the checkpoint)")):
        value = m.get(key)
        if value in (None, {}, ""):
            continue
        rows = _flatten(value)
        more = ""
        if len(rows) > 40:
            more = (f'<p class="note">… {len(rows) - 40} more fields: exitbench query "SELECT {key} FROM runs'
                    f" WHERE run_id = '{m.get('run_id')}'\"</p>")
            rows = rows[:40]
        parts.append(f"<details><summary>{html.escape(title)} ({len(_flatten(value))} fields)</summary>"
                     f"{_kv_table(rows)}{more}</details>")
    parts.append("</details>")
    return "".join(parts)


def _figure_html(p: Panel, anchor: str, number: int) -> str:
    if p.figure is None:
        return f'<p class="note">not available: {html.escape(p.reason)}</p>'
    return (f'<figure id="{anchor}-{p.key}-figure"><img alt="{html.escape(p.title)}" src="{_png_data_uri(p.figure)}">'
            f"<figcaption><b>Figure {number}.</b> {html.escape(p.caption)}</figcaption></figure>")


def _listening_html(rf: RunFigures, anchor: str) -> str:
    if rf.audio_reason:
        return f'<p class="note">no audio: {html.escape(rf.audio_reason)}</p>'
    S = int(rf.manifest.get("num_sources") or 1)
    parts = [f'<p class="tnote">{html.escape(rf.audio_note)}</p>']
    for item in rf.listening:
        what = {"best": "the best", "median": "the median", "worst": "the worst"}.get(item.role, "")
        head = (f"{item.utt_id}: " + (f"{what} utterance by the deepest exit's SI-SNRi, " if what else "")
                + f"{item.si_snri:.2f} dB SI-SNRi at the deepest exit; input SNR {item.input_snr:.1f} dB;"
                f" {item.duration:.1f} s")
        parts.append(f'<h4 id="{anchor}-listen-{html.escape(item.utt_id)}">{html.escape(head)}</h4>')
        if item.reason:
            parts.append(f'<p class="note">no audio: {html.escape(item.reason)}</p>')
            continue
        src_heads = "".join(f"<th>{'output' if S == 1 else f'source {s + 1}'} (SI-SNRi in dB)</th>"
                            for s in range(S))
        rows = []
        for c in item.clips:
            cells = []
            if c.kind == "mixture":
                cells.append(f'<td colspan="{S}" class="l"><audio controls preload="metadata" src="{c.uris[0]}">'
                             "</audio></td>")
            else:
                for s in range(S):
                    uri = c.uris[s] if s < len(c.uris) else None
                    si = c.si_snri[s] if s < len(c.si_snri) else np.nan
                    player = (f'<audio controls preload="metadata" src="{uri}"></audio>' if uri else "")
                    val = f'<span class="si">{T.fmt_value(si, 2)} dB</span>' if np.isfinite(si) else ""
                    cells.append(f'<td class="l">{player}{val}</td>')
            note = f'<span class="si">{html.escape(c.note)}</span>' if c.note else ""
            rows.append(f'<tr><td class="l">{html.escape(c.label)}{note}</td><td>{T.fmt_value(c.gmacs)}</td>'
                        + "".join(cells) + "</tr>")
        parts.append(f'<div class="scroll"><table class="audio"><thead><tr><th class="l">signal</th><th>GMAC/s</th>'
                     f"{src_heads}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")
    return "\n".join(parts)


def _errors_html(rf: RunFigures, anchor: str) -> str:
    errs = rf.errors if rf.errors is not None else pd.DataFrame()
    if not len(errs):
        return '<p class="note">no utterance failed</p>'
    t = T.Table(f"{anchor}-errors-table", "Errors", ["utterance", "stage", "reason"],
                [[r.utt_id, r.stage, r.reason] for r in errs.head(200).itertuples(index=False)], {0, 1, 2})
    more = f'<p class="note">… and {len(errs) - 200} more (query the errors table)</p>' if len(errs) > 200 else ""
    return t.to_html() + more


class _Doc:
    """The report's body and its table of contents, written together so that every entry has its anchor."""

    def __init__(self) -> None:
        self.toc: list[tuple[int, str, str]] = []
        self.figures = 0

    def heading(self, level: int, anchor: str, text: str, toc: int | None = None) -> str:
        if toc is not None:
            self.toc.append((toc, anchor, text))
        return f'<h{level} id="{html.escape(anchor)}">{html.escape(text)}</h{level}>'

    def toc_html(self) -> str:
        """Nested ordered lists: the top-level sections, each run's sections inside it."""
        groups: list[tuple[str, str, list[tuple[str, str]]]] = []
        for level, anchor, text in self.toc:
            if level == 0 or not groups:
                groups.append((anchor, text, []))
            else:
                groups[-1][2].append((anchor, text))
        items = []
        for anchor, text, children in groups:
            inner = "".join(f'<li><a href="#{html.escape(a)}">{html.escape(t)}</a></li>' for a, t in children)
            items.append(f'<li><a href="#{html.escape(anchor)}">{html.escape(text)}</a>'
                         + (f"<ol>{inner}</ol>" if inner else "") + "</li>")
        return f'<nav class="toc" id="contents"><h2>Contents</h2><ol>{"".join(items)}</ol></nav>'


def _run_section(rf: RunFigures, doc: _Doc) -> str:
    a = f"run-{rf.run_id[:12]}"
    m = rf.manifest
    parts = ['<section class="run">', doc.heading(2, a, rf.label, toc=0),
             f'<p>{html.escape(manifest_summary(m))}. Run id <code>{html.escape(rf.run_id)}</code>.</p>']
    if rf.level_table is not None and len(rf.level_table):
        parts += [doc.heading(3, f"{a}-levels", "Per-level results", toc=1), T.level_table(rf.level_table, key=f"{a}-levels-table").to_html()]
    if rf.policy_table is not None and len(rf.policy_table):
        parts += [doc.heading(3, f"{a}-policies", "Policies (exact replays)", toc=1),
                  T.policy_table(rf.policy_table, key=f"{a}-policies-table").to_html()]
    if rf.equal_compute_table is not None and len(rf.equal_compute_table):
        parts += [doc.heading(3, f"{a}-equal-compute", "Probabilistic policy vs static exits at equal compute",
                              toc=1), T.equal_compute_table(rf.equal_compute_table, key=f"{a}-equal-compute-table").to_html()]
    if rf.matched_table is not None and len(rf.matched_table):
        parts += [doc.heading(3, f"{a}-matched", "Dynamic policies vs cost-matched random at equal compute", toc=1),
                  T.matched_gain_table(rf.matched_table, key=f"{a}-matched-table").to_html()]
    if rf.condition_table is not None and len(rf.condition_table):
        parts += [doc.heading(3, f"{a}-condition", "Which condition decides the exit-SNR", toc=1),
                  T.deciding_condition_table(rf.condition_table, key=f"{a}-condition-table").to_html()]
    for p in rf.panels:
        if p.figure is not None:
            doc.figures += 1
        parts.append(doc.heading(3, f"{a}-{p.key}", p.title, toc=1))
        parts.append(_figure_html(p, a, doc.figures))
    if rf.slices or rf.slice_reasons:
        parts.append(doc.heading(3, f"{a}-slices", "Slices: SI-SNRi by input SNR and metadata", toc=1))
        for i, frame in enumerate(rf.slices):
            t = T.slices_table(frame, key=f"{a}-slices-{i}")
            parts.append(f"<h4>{html.escape(t.title)}</h4>" + t.to_html())
        for why in rf.slice_reasons:
            parts.append(f'<p class="note">no slice by {html.escape(why)}</p>')
    if rf.listening or rf.audio_reason:
        parts += [doc.heading(3, f"{a}-listen", "Listen: mixtures, references, estimates, policy outputs", toc=1),
                  _listening_html(rf, a)]
    parts += [doc.heading(3, f"{a}-manifest", "Manifest", toc=1), _manifest_html(m, a)]
    n_err = len(rf.errors) if rf.errors is not None else 0
    parts += [doc.heading(3, f"{a}-errors", f"Errors ({n_err})", toc=1), _errors_html(rf, a), "</section>"]
    return "\n".join(parts)


GUIDE = (
    ("exit, level", "one output of the model, cheapest first: exit1, exit2, … (the early exits of a separator)"
                    " or uf0.125 … uf1.0 (a slimmable network at that width factor); dynamic: the model's own"
                    " router choosing a width per frame."),
    ("GMAC/s", "compute: 10⁹ multiply-accumulates spent per second of audio (a static exit's is fixed; a policy's"
               " or the router's is what it spent)."),
    ("SI-SNRi (dB)", "how much the estimate's scale-invariant signal-to-noise ratio improves on the mixture's:"
                     " higher is better, 0 dB is no better than the input. SNRi and SDRi likewise; PESQ (MOS-LQO,"
                     " about 1–4.5) and STOI/ESTOI (0–1) rate quality and intelligibility."),
    ("exit-SNR (dB)", "per block of audio: how well an exit did on that block, the minimum over sources of the"
                      " best of its SNR, SNR improvement and SNR against the mixture's power (docs/DESIGN.md §5)."),
    ("target t (dB), regret", "a policy aims for an exit-SNR of at least t on every block; its one-sided regret"
                              " on a block is max(0, t − exit-SNR), 0 where it reached t."),
    ("policies", "static:l=L always takes exit L; uniform draws an exit at random per block; oracle:t=T takes"
                 " the cheapest exit whose true exit-SNR reaches T (it needs the reference: a bound);"
                 " probabilistic:t=T,p=P (PRESS) the first exit whose predicted P(exit-SNR ≥ T) reaches P;"
                 " router follows the model's own routing. Policies without a target show '–' for t."),
    ("intervals", "'mean [lo, hi]' is a 95% percentile-bootstrap interval over utterances; a single number has"
                  " no interval (a fixed quantity, or one value)."),
)


def _guide_html(doc: _Doc) -> str:
    items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in GUIDE)
    return doc.heading(2, "reading", "How to read this report", toc=0) + f'<dl class="guide">{items}</dl>'


def _overview_html(runs: Sequence[RunFigures], doc: _Doc) -> str:
    cols = ["run", "model", "step", "test set", "utterances", "failed", "exits", "GMAC/s (cheapest – deepest)",
            "deepest exit SI-SNRi (dB)", "recorded on"]
    rows = []
    for rf in runs:
        m = rf.manifest
        lv = rf.level_table
        gm, si, exits = "–", "–", "–"
        if lv is not None and len(lv):
            st = lv[lv["kind"] == "static"]
            g = st[st["metric"] == "gmacs"].sort_values("level")
            s = st[st["metric"] == "si_snri"].sort_values("level")
            if len(g):
                gm = f"{T.fmt_value(g['mean'].iloc[0])} – {T.fmt_value(g['mean'].iloc[-1])}"
            if len(s):
                si = T.fmt_interval(s["mean"].iloc[-1], s["ci_lo"].iloc[-1], s["ci_hi"].iloc[-1])
            exits = ", ".join(dict.fromkeys(lv["level_name"]))
        rows.append([f'<a href="#run-{rf.run_id[:12]}">{html.escape(rf.label)}</a>', html.escape(str(m.get("model"))),
                     T.fmt_value(m.get("step")), html.escape(str(m.get("dataset"))), T.fmt_value(m.get("num_utterances")),
                     T.fmt_value(m.get("num_errors")), html.escape(exits), gm, si,
                     html.escape(_execution(m).get("device") or "–")])
    head = "".join(f'<th class="{"l" if i in (0, 1, 3, 6, 9) else ""}">{html.escape(c)}</th>' for i, c in enumerate(cols))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i in (0, 1, 3, 6, 9) else ""}">{v}</td>'
                                    for i, v in enumerate(r)) + "</tr>" for r in rows)
    return (doc.heading(2, "runs", "Runs", toc=0)
            + f'<div class="scroll"><table id="runs-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
            + '<p class="tnote">Each run is labelled by its model and training step, with the first 8 characters of'
              " its run id (a hash of the checkpoint, the test set and the settings).</p>")


def build_report(root: str | os.PathLike, run_ids: Sequence[str], out_dir: str | os.PathLike = "reports",
                 targets: Sequence[float] | None = None, utt_id: str | Sequence[str] | None = None,
                 policy: str | None = None, audio: bool = True) -> Path:
    """Write one static, self-contained HTML report of the runs (side by side) and return its path.

    ``targets=None`` picks them inside the first run's own exit-SNR range (:func:`auto_targets`).
    ``utt_id`` (one id or several) names the utterances of the exit map and the audio (default: the
    best, median and worst by the deepest exit's SI-SNRi); ``audio=False`` leaves the audio out."""
    if not run_ids:
        raise UsageError("no run to report")
    check_inputs(root, run_ids, utt_id, policy)
    chosen = "given"
    if targets is None:
        targets, chosen = A.auto_targets(root, run_ids), "auto: the quartiles of the deepest level's exit-SNR"
    labels = T.run_labels([A.manifest(root, r) for r in run_ids])
    runs = [run_figures(root, r, targets, utt_id, policy, run_labels=labels, audio=audio) for r in run_ids]
    doc = _Doc()
    body = [_guide_html(doc), _overview_html(runs, doc)]
    if len(run_ids) > 1:
        with figure_style():
            frame: list[pd.DataFrame] = []

            def both_fig() -> Any:
                frame.append(A.pareto(root, run_ids, "si_snri", targets,
                                      curves={r.run_id: r.curves for r in runs if r.curves is not None}))
                return F.pareto_figure(frame[0], width=F.COLUMN_WIDTH * 2.2, run_labels=labels)

            both = _panel("pareto-all", "Pareto front of all runs (SI-SNRi vs compute)", both_fig,
                          lambda: _pareto_caption(frame[0], several=True))
        body.append(doc.heading(2, "pareto-all", both.title, toc=0))
        if both.figure is not None:
            doc.figures += 1
        body.append(_figure_html(both, "all", doc.figures))
    sections = [_run_section(r, doc) for r in runs]
    body.append(f'<div class="runs" style="--n:{len(runs)}">' + "\n".join(sections) + "</div>")
    title = "exitbench report: " + ", ".join(labels[r] for r in run_ids)
    doc_html = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
                f"<h1>{html.escape(title)}</h1>"
                f'<p class="note">results root {html.escape(str(Path(root).resolve()))}; targets t = '
                f"{', '.join(f'{t:g}' for t in targets)} dB ({chosen}). Every number is drawn from the recorded"
                " tables; policy metrics are exact replays.</p>"
                + doc.toc_html() + "\n".join(body) + "</body></html>\n")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"report-{'-'.join(r[:8] for r in run_ids)}.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(doc_html, encoding="utf-8")
    tmp.replace(path)
    return path


# -- paper figures ---------------------------------------------------------------------------------------
@dataclass
class PaperFigures:
    """The vector files written, and the figures a run could not have (with the reason)."""

    paths: list[Path]
    skipped: list[str]


def write_paper_figures(root: str | os.PathLike, run_ids: Sequence[str], out_dir: str | os.PathLike = "reports",
                        targets: Sequence[float] | None = None, utt_id: str | Sequence[str] | None = None,
                        policy: str | None = None, formats: Sequence[str] = ("pdf", "svg")) -> PaperFigures:
    """Write every figure alone as vector files (PDF + SVG) in the paper style (``targets=None``: auto)."""
    check_inputs(root, run_ids, utt_id, policy)
    if targets is None:
        targets = A.auto_targets(root, run_ids)
    labels = T.run_labels([A.manifest(root, r) for r in run_ids])
    out = Path(out_dir)
    paths: list[Path] = []
    skipped: list[str] = []
    curves: dict[str, pd.DataFrame] = {}  # each run's regret curves, for the Pareto front of all
    for run_id in run_ids:
        rf = run_figures(root, run_id, targets, utt_id, policy, paper=True, tables=False, run_labels=labels)
        if rf.curves is not None:
            curves[run_id] = rf.curves
        with figure_style(paper=True):
            for p in rf.panels:
                if p.figure is None:
                    skipped.append(f"{run_id[:8]} {p.key}: {p.reason}")
                    continue
                paths += save_figure(p.figure, out / f"{run_id[:8]}-{p.key}", formats)
    if len(run_ids) > 1:
        with figure_style(paper=True):
            both = _panel("pareto", "", lambda: F.pareto_figure(A.pareto(root, run_ids, "si_snri", targets, curves),
                                                                run_labels=labels))
            if both.figure is not None:
                paths += save_figure(both.figure, out / "pareto-all-runs", formats)
    return PaperFigures(paths, skipped)
