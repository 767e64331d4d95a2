"""The pure unit of work: utterances in, Arrow tables out (called unchanged by Ray actors and tasks).

Two halves, so that a GPU actor never waits on CPU metrics:
``forward_utterance`` runs the model (every level), fixes the permutation and computes the exact
block statistics; ``utterance_metrics`` computes the per-utterance metrics (SDR, PESQ, STOI) from
the waveforms it returns.
"""

from __future__ import annotations

import json
import math
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import torch

from exitbench.datasets.base import TestSet, Utterance, UtteranceError
from exitbench.errors import UsageError
from exitbench.harness.spec import RecordSettings
from exitbench.metrics import (
    apply_permutation,
    best_permutation,
    block_starts,
    block_stats,
    pesq_score,
    sdr,
    si_snr,
    snr,
    stoi_score,
)
from exitbench.metrics.perceptual import PESQ_MIN_SECONDS, PESQ_MODES
from exitbench.metrics.warning_filters import WARNING_FILTERS
from exitbench.models.base import ExitModel, LevelOutputs
from exitbench.results.schema import BLOCKS, ERRORS, SCORE_PREFIX, STAT_COLUMNS, UTTERANCES


@dataclass
class LevelRecord:
    """What the model half hands to the metrics half for one utterance."""

    utt_id: str
    sample_rate: int
    mixture: np.ndarray  # [N]
    sources: np.ndarray  # [S, N]
    estimates: np.ndarray  # [L', S, N], permuted; L' = L static levels (+1 for dynamic)
    level_names: list[str]
    level_macs: list[float]  # MACs spent on the whole utterance per level
    permutation: list[int]
    blocks: pa.Table
    metadata: dict[str, Any] = field(default_factory=dict)
    #: ``tensor_metrics`` already computed next to the model (on its GPU), or None
    precomputed: tuple[dict[str, np.ndarray], list[list[str]]] | None = None


class ModelOutputError(RuntimeError):
    """The model raised, or returned NaN/Inf or wrong shapes, for one utterance."""


def check_compatible(model: ExitModel, utt: Utterance) -> None:
    """Raise UtteranceError when the utterance cannot go through this model."""
    utt.validate()
    if utt.sample_rate != model.sample_rate:
        raise UtteranceError(utt.id, f"sample rate {utt.sample_rate} Hz differs from the model's"
                                     f" {model.sample_rate} Hz (pass --resample to resample)")
    if utt.sources.shape[0] != model.num_sources:
        raise UtteranceError(utt.id, f"{utt.sources.shape[0]} reference source(s) but the model"
                                     f" separates {model.num_sources}")
    # a lone partial block would give per-block statistics (and exit decisions) of no meaning
    if utt.num_samples < model.block_size:
        raise UtteranceError(utt.id, f"{utt.num_samples} samples is shorter than one block"
                                     f" ({model.block_size} samples)")


#: pystoi's constants: 30 STFT frames of 256 samples, hop 128, at 10 kHz
STOI_RATE, STOI_FRAMES, STOI_HOP = 10000, 30, 128


def metric_min_samples(metric: str, sample_rate: int) -> int | None:
    """The fewest samples at ``sample_rate`` that ``metric`` can score (None: no minimum)."""
    if metric == "pesq" and sample_rate in PESQ_MODES:  # at other rates pesq_score notes why it is NaN
        # the pesq package raises BufferTooShortError below a quarter of a second
        return math.ceil(PESQ_MIN_SECONDS * sample_rate)
    if metric == "stoi":
        # pystoi frames as range(0, len - 256, 128) twice (silence removal, overlap-add, STFT), so 30
        # frames need more than 32 hops at 10 kHz even with no silent frame; shorter, it returns 1e-5
        return math.floor((STOI_FRAMES + 2) * STOI_HOP * sample_rate / STOI_RATE) + 1
    return None


def check_metric_lengths(rec: LevelRecord, settings: RecordSettings) -> None:
    """Raise UtteranceError when the utterance is shorter than an enabled metric needs."""
    n = rec.mixture.shape[0]
    for metric in settings.metrics:
        need = metric_min_samples(metric, rec.sample_rate)
        if need is not None and n < need:
            raise UtteranceError(rec.utt_id, f"{n} samples is shorter than {metric} needs ({need} samples,"
                                             f" {need / rec.sample_rate:.3f} s at {rec.sample_rate} Hz);"
                                             f" leave {metric} out of --metrics to record it")


def forward_utterance(model: ExitModel, utt: Utterance) -> LevelRecord:
    """Run every level on one utterance; permutation by SI-SNR on the deepest level, shared by all."""
    check_compatible(model, utt)
    out = model_outputs(model, [utt])[0]
    if isinstance(out, ModelOutputError):
        raise out
    return level_record(model, utt, out)


def model_outputs(model: ExitModel, utts: list[Utterance]) -> list[LevelOutputs | ModelOutputError]:
    """``forward_all`` of each utterance, several in one ``forward_many`` pass; per utterance its outputs or why
    they break the contract. A batch that raises runs again one by one: an utterance's failure is its own."""
    mixes = [torch.from_numpy(np.ascontiguousarray(u.mixture, dtype=np.float32)).to(model.device) for u in utts]
    try:
        with torch.inference_mode():
            outs = model.forward_many(mixes) if len(mixes) > 1 else [model.forward_all(mixes[0])]
    except Exception as exc:
        if len(utts) > 1:
            return [model_outputs(model, [u])[0] for u in utts]
        return [ModelOutputError(f"model raised {type(exc).__name__}: {exc}")]
    checked: list[LevelOutputs | ModelOutputError] = []
    for u, out in zip(utts, outs):
        try:
            out.validate(model.num_levels, model.num_sources, u.num_samples, model.num_blocks(u.num_samples))
            checked.append(out)
        except ValueError as exc:
            checked.append(ModelOutputError(str(exc)))
    return checked


def level_record(model: ExitModel, utt: Utterance, out: LevelOutputs) -> LevelRecord:
    """The record of one utterance from its model outputs: permuted estimates, the blocks table, the MACs."""
    n = utt.num_samples
    est = out.estimates.detach().float().cpu().numpy()
    perm = list(best_permutation(est[-1], utt.sources))
    est = apply_permutation(est, perm)
    names = list(model.levels)
    level_macs = [model.macs_per_sample(i) * n for i in range(model.num_levels)]
    macs_blocks = None
    if out.dynamic is not None:
        dyn = apply_permutation(out.dynamic.estimates.detach().float().cpu().numpy(), perm)
        est = np.concatenate([est, dyn[None]], axis=0)
        names.append("dynamic")
        macs_blocks = out.dynamic.macs.detach().double().cpu().numpy()
        level_macs.append(float(macs_blocks.sum()))

    stats = block_stats(est, utt.sources, utt.mixture, model.block_size)  # each [L', S, B]
    n_lv, n_src, n_blk = stats["n"].shape
    lv, src, blk = np.meshgrid(np.arange(n_lv), np.arange(n_src), np.arange(n_blk), indexing="ij")
    starts = block_starts(n, model.block_size)
    macs = np.empty((n_lv, n_src, n_blk))
    for level in range(model.num_levels):
        macs[level] = stats["n"][level] * model.macs_per_sample(level)
    if macs_blocks is not None:
        macs[-1] = macs_blocks[None, :]

    def per_level(t: torch.Tensor | None) -> np.ndarray | None:
        if t is None:
            return None
        a = apply_permutation(t.detach().double().cpu().numpy(), perm)  # [L, S, B]
        if n_lv > model.num_levels:  # the dynamic row has no prediction of its own
            a = np.concatenate([a, np.full((1,) + a.shape[1:], np.nan)], axis=0)
        return a

    alpha, beta, sigma2 = per_level(out.alpha), per_level(out.beta), per_level(out.sigma2)
    router = None
    if out.router_logits is not None:
        r = out.router_logits.detach().double().cpu().numpy().T  # [L, B]
        if n_lv > model.num_levels:
            r = np.concatenate([r, np.full((1, n_blk), np.nan)], axis=0)
        router = np.broadcast_to(r[:, None, :], (n_lv, n_src, n_blk))

    cols: dict[str, Any] = {
        "utt_id": pa.array([utt.id] * lv.size, pa.string()),
        "block": blk.ravel().astype(np.int32),
        "level": lv.ravel().astype(np.int16),
        "source": src.ravel().astype(np.int16),
        "start": np.broadcast_to(starts[None, None, :], lv.shape).ravel().astype(np.int64),
        "n": stats["n"].ravel().astype(np.int64),
    }
    for c in STAT_COLUMNS[1:]:
        cols[c] = stats[c].ravel()
    for name, arr in (("alpha", alpha), ("beta", beta), ("router_logit", router), ("sigma2", sigma2)):
        cols[name] = pa.nulls(lv.size, pa.float64()) if arr is None else \
            pa.array(arr.ravel(), pa.float64(), from_pandas=True)  # NaN -> null
    cols["macs"] = macs.ravel()
    blocks = pa.table({f.name: cols[f.name] for f in BLOCKS}, schema=BLOCKS)
    for name, t in sorted(out.scores.items()):  # per (block, level), the same for every source
        sc = t.detach().double().cpu().numpy()  # [L, B]
        if n_lv > model.num_levels:
            sc = np.concatenate([sc, np.full((1, n_blk), np.nan)], axis=0)
        blocks = blocks.append_column(SCORE_PREFIX + name, pa.array(
            np.broadcast_to(sc[:, None, :], (n_lv, n_src, n_blk)).ravel(), pa.float64(), from_pandas=True))
    return LevelRecord(utt.id, utt.sample_rate, utt.mixture.astype(np.float64),
                       utt.sources.astype(np.float64), est.astype(np.float64), names, level_macs, perm,
                       blocks, dict(utt.metadata))


def _rows_wanted(rec: LevelRecord, settings: RecordSettings, metric: str) -> np.ndarray:
    """Which rows (0 = the mixture, then each level) ``metric`` is computed for (--metric-levels)."""
    levels = settings.levels_for(metric)  # canonical level names (runner.resolve_metric_levels)
    return np.array([True] + [levels is None or name in levels for name in rec.level_names])


def _signals(rec: LevelRecord) -> np.ndarray:
    """The mixture (row 0) and every level's estimate as one [1 + L', S, N] array."""
    mix_s = np.broadcast_to(rec.mixture, rec.sources.shape)
    return np.concatenate([mix_s[None], rec.estimates], axis=0)


def _stoi_too_short(rec: LevelRecord, s: int | None) -> UtteranceError:
    # pystoi keeps only the reference's loud frames; too few of them and it warns and returns 1e-5,
    # which would pass for a real score. The frames depend on the reference alone, so no level of
    # this utterance gets a made-up score.
    return UtteranceError(rec.utt_id, f"stoi needs {STOI_FRAMES} frames of 256 samples at 10 kHz after"
                                      f" silence removal; {'a reference' if s is None else f'reference {s}'}"
                                      f" has fewer (too little non-silent speech)")


def tensor_metrics(rec: LevelRecord, settings: RecordSettings, device: str = "cpu"
                   ) -> tuple[dict[str, np.ndarray], list[list[str]]]:
    """The metrics with a torch implementation, all rows at once on ``device``: SDR (fast-bss-eval) and
    STOI/ESTOI (torch backend). Arrays [1 + L', S] (row 0: the mixture; NaN where --metric-levels skips)."""
    from exitbench.metrics.stoi_torch import StoiTooShort, stoi_torch

    sig, ref = _signals(rec), rec.sources
    rows, n_src = sig.shape[0], ref.shape[0]
    out: dict[str, np.ndarray] = {}
    notes: list[list[str]] = [[] for _ in range(rows)]
    if "sdr" in settings.metrics and settings.sdr_backend == "fast_bss_eval":
        keep = _rows_wanted(rec, settings, "sdr")
        vals = np.full((rows, n_src), np.nan)
        try:  # every row and source in one batched solve
            flat = sdr(sig[keep].reshape(-1, sig.shape[-1]), np.tile(ref, (int(keep.sum()), 1)), device=device)
            vals[keep] = flat.reshape(-1, n_src)
        except Exception as exc:  # BSS-eval can fail on degenerate signals; keep the rows
            for r in np.flatnonzero(keep):
                notes[r].append(f"sdr: {type(exc).__name__}: {exc}")
        out["sdr"] = vals
    if "stoi" in settings.metrics and settings.stoi_backend == "torch":
        ref_t = torch.from_numpy(np.ascontiguousarray(ref)).to(device)
        keep = _rows_wanted(rec, settings, "stoi")
        est_t = torch.from_numpy(np.ascontiguousarray(sig[keep])).to(device)
        ref_b = ref_t.expand_as(est_t)
        for key, extended in (("stoi", False), ("estoi", True)):
            vals = np.full((rows, n_src), np.nan)
            try:  # too few frames: a property of the references alone (items are [row, source] flattened)
                vals[keep] = stoi_torch(est_t, ref_b, rec.sample_rate, extended=extended,
                                        too_short="raise").cpu().numpy()
            except StoiTooShort as exc:
                raise _stoi_too_short(rec, exc.items[0] % n_src) from None
            out[key] = vals
    return out, notes


def gpu_metrics_used(settings: RecordSettings) -> bool:
    """Whether a GPU actor computes any metric there (``tensor_metrics``) for these settings."""
    return (("sdr" in settings.metrics and settings.sdr_backend == "fast_bss_eval")
            or ("stoi" in settings.metrics and settings.stoi_backend == "torch"))


def warm_gpu_metrics(device: str, sample_rate: int = 8000) -> None:
    """Run ``tensor_metrics``' two computations once on noise, results discarded: their first call on a GPU
    loads cuFFT and cuSOLVER (about a second on an H100 host), which a model actor can do in a thread while
    it loads the model, instead of in its first utterance's call."""
    try:  # no warnings.catch_warnings here: its filters are process-wide, and real calls run meanwhile
        from exitbench.metrics.stoi_torch import stoi_torch

        rng = np.random.default_rng(0)
        ref = rng.standard_normal((2, sample_rate))
        est = ref + 0.3 * rng.standard_normal(ref.shape)
        sdr(est, ref, device=device)
        x, y = torch.from_numpy(est).to(device), torch.from_numpy(ref).to(device)
        stoi_torch(x, y, sample_rate, too_short="raise")
        stoi_torch(x, y, sample_rate, extended=True, too_short="raise")
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
    except Exception:  # a warm-up only: a real call reports its own failure
        pass


def utterance_metrics(rec: LevelRecord, settings: RecordSettings) -> pa.Table:
    """Every per-utterance metric for every level and source, and for the unprocessed mixture.

    Metrics already in ``rec.precomputed`` (computed by ``tensor_metrics`` next to the model, on its
    GPU) are taken from there; the rest run here, on the CPU.
    """
    check_metric_lengths(rec, settings)
    ref = rec.sources
    sig = _signals(rec)
    rows, n_src = sig.shape[0], ref.shape[0]
    if rec.precomputed is not None:
        vals, notes = dict(rec.precomputed[0]), [list(n) for n in rec.precomputed[1]]
    else:
        vals, notes = tensor_metrics(rec, settings, "cpu")
    nan = np.full((rows, n_src), np.nan)
    if "sdr" in settings.metrics and "sdr" not in vals:  # mir_eval, the reference implementation
        keep = _rows_wanted(rec, settings, "sdr")
        vals["sdr"] = nan.copy()
        for r in np.flatnonzero(keep):
            try:
                vals["sdr"][r] = sdr(sig[r], ref, backend=settings.sdr_backend)
            except Exception as exc:
                notes[r].append(f"sdr: {type(exc).__name__}: {exc}")
    if "stoi" in settings.metrics and "stoi" not in vals:  # pystoi
        keep = _rows_wanted(rec, settings, "stoi")
        vals["stoi"], vals["estoi"] = nan.copy(), nan.copy()
        for r in np.flatnonzero(keep):
            for s in range(n_src):
                # pystoi only warns: the warning becomes an error under a lock, since warning filters are
                # process-wide and a GPU actor runs two calls at once
                with WARNING_FILTERS, warnings.catch_warnings():
                    warnings.filterwarnings("error", message="Not enough STFT frames", category=RuntimeWarning)
                    try:
                        vals["stoi"][r, s] = stoi_score(sig[r, s], ref[s], rec.sample_rate, extended=False)
                        vals["estoi"][r, s] = stoi_score(sig[r, s], ref[s], rec.sample_rate, extended=True)
                    except RuntimeWarning:
                        raise _stoi_too_short(rec, s) from None
    if "pesq" in settings.metrics:
        keep = _rows_wanted(rec, settings, "pesq")
        vals["pesq"] = nan.copy()
        for r in np.flatnonzero(keep):
            for s in range(n_src):
                vals["pesq"][r, s], why = pesq_score(sig[r, s], ref[s], rec.sample_rate)
                if why:
                    notes[r].append(f"pesq[{s}]: {why}")
    for key in ("sdr", "pesq", "stoi", "estoi"):
        vals.setdefault(key, nan)
    vals["si_snr"] = np.stack([si_snr(sig[r], ref) for r in range(rows)])
    vals["snr"] = np.stack([snr(sig[r], ref) for r in range(rows)])
    # one rule for a constant (silent) estimate, whatever the metric: NaN, flagged, never a clamped value
    silent = np.ptp(sig, axis=-1) == 0  # [rows, S]
    silent[0] = False  # the mixture is the baseline, not an estimate (a silent mixture fails validation)
    for key in ("si_snr", "snr", "sdr", "pesq", "stoi", "estoi"):
        vals[key] = np.where(silent, np.nan, vals[key])
    for r, s in zip(*np.nonzero(silent)):
        notes[r] = [n for n in notes[r] if not n.startswith(f"pesq[{s}]")]  # the rule says it all
        notes[r].append(f"silent estimate[{s}]: every metric NaN")

    mix = rec.mixture
    out: dict[str, list] = {f.name: [] for f in UTTERANCES}
    for level, name in enumerate(rec.level_names):
        r = level + 1
        note = "; ".join(notes[0] + notes[r]) or None  # the mixture's notes concern every level
        for s in range(n_src):
            v = {
                "utt_id": rec.utt_id, "level": level, "level_name": name, "source": s,
                "si_snr": vals["si_snr"][r, s], "si_snri": vals["si_snr"][r, s] - vals["si_snr"][0, s],
                "snr": vals["snr"][r, s], "snri": vals["snr"][r, s] - vals["snr"][0, s],
                "sdr": vals["sdr"][r, s], "sdri": vals["sdr"][r, s] - vals["sdr"][0, s],
                "pesq": vals["pesq"][r, s], "stoi": vals["stoi"][r, s], "estoi": vals["estoi"][r, s],
                "mix_si_snr": vals["si_snr"][0, s], "mix_snr": vals["snr"][0, s], "mix_sdr": vals["sdr"][0, s],
                "mix_pesq": vals["pesq"][0, s], "mix_stoi": vals["stoi"][0, s], "mix_estoi": vals["estoi"][0, s],
                "input_snr": vals["snr"][0, s],  # SNR of each source in the mixture, dB
                "duration": mix.shape[0] / rec.sample_rate,
                "num_samples": mix.shape[0], "macs": rec.level_macs[level],
                "permutation": json.dumps(rec.permutation), "metric_notes": note,
                "metadata": json.dumps(rec.metadata, sort_keys=True, default=str),
                "silent_estimate": bool(silent[r, s]),
            }
            for k, x in v.items():
                out[k].append(float(x) if isinstance(x, np.floating) else x)
    return pa.Table.from_pydict(out, schema=UTTERANCES)


def error_table(errors: list[tuple[str, str, str]]) -> pa.Table:
    """Rows of (utt_id, stage, reason) as the errors table."""
    return pa.table({"utt_id": [e[0] for e in errors], "stage": [e[1] for e in errors],
                     "reason": [e[2] for e in errors]}, schema=ERRORS)


def one_line(exc: BaseException) -> str:
    """An exception as one readable line (no traceback)."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}" if not isinstance(exc, (UtteranceError, ModelOutputError)) \
        else (exc.reason if isinstance(exc, UtteranceError) else msg)


@dataclass
class Staged:
    """One utterance after the model's half of the work: the loaded utterance and its outputs on the host, or
    the error that stopped it (utt_id, stage, reason)."""

    utt_id: str
    utt: Utterance | None = None
    out: LevelOutputs | None = None
    error: tuple[str, str, str] | None = None


def forward_stage(model: ExitModel, testset: TestSet, utt_ids: list[str]) -> list[Staged]:
    """Load, check and run the utterances (one ``model_outputs`` pass) and copy the outputs to the host: all
    that needs the model or its device. The rest (``record_stage``) can run in another thread meanwhile."""
    staged = [Staged(utt_id) for utt_id in utt_ids]
    ready: list[Staged] = []
    for st in staged:
        try:
            st.utt = testset.load(st.utt_id)
        except UtteranceError as exc:
            st.error = (st.utt_id, "load", exc.reason)
            continue
        except Exception as exc:
            st.error = (st.utt_id, "load", one_line(exc))
            continue
        try:
            check_compatible(model, st.utt)
        except UtteranceError as exc:
            st.error = (st.utt_id, "validate", exc.reason)
            continue
        ready.append(st)
    if not ready:
        return staged
    try:
        outs = model_outputs(model, [st.utt for st in ready])
    except Exception as exc:  # a bug in the harness must not kill the run; keep a trace
        tb = traceback.format_exc(limit=3).strip().splitlines()[-1]
        outs = [ModelOutputError(f"{one_line(exc)} [{tb}]")] * len(ready)
    for st, out in zip(ready, outs):
        if isinstance(out, ModelOutputError):
            st.error = (st.utt_id, "model", one_line(out))
        else:
            st.out = out.cpu()  # the one wait for the device; nothing after this needs the model's
    return staged


def record_stage(model: ExitModel, staged: list[Staged]
                 ) -> list[tuple[LevelRecord | None, tuple[str, str, str] | None]]:
    """Each staged utterance's record (``level_record``: permutation, block statistics, tables) or its error."""
    results: list[tuple[LevelRecord | None, tuple[str, str, str] | None]] = []
    for st in staged:
        if st.out is None:
            results.append((None, st.error))
            continue
        try:
            results.append((level_record(model, st.utt, st.out), None))
        except UtteranceError as exc:
            results.append((None, (st.utt_id, "validate", exc.reason)))
        except Exception as exc:  # a bug in the harness or model must not kill the run; keep a trace
            tb = traceback.format_exc(limit=3).strip().splitlines()[-1]
            results.append((None, (st.utt_id, "model", f"{one_line(exc)} [{tb}]")))
    return results


def metrics_or_error(rec: LevelRecord, settings: RecordSettings
                     ) -> tuple[pa.Table | None, tuple[str, str, str] | None]:
    """Per-utterance metrics; an unexpected failure becomes an error triple."""
    try:
        return utterance_metrics(rec, settings), None
    except Exception as exc:
        return None, (rec.utt_id, "metrics", one_line(exc))


def precompute_or_error(rec: LevelRecord, settings: RecordSettings, device: str) -> tuple[str, str, str] | None:
    """Attach ``tensor_metrics`` computed on ``device`` to ``rec``; a failure becomes an error triple."""
    try:
        rec.precomputed = tensor_metrics(rec, settings, device)
        return None
    except Exception as exc:
        return (rec.utt_id, "metrics", one_line(exc))


def finish_stage(model: ExitModel, staged: list[Staged], settings: RecordSettings, device: str = "cpu"
                 ) -> list[tuple[LevelRecord | None, tuple[str, str, str] | None]]:
    """``record_stage``, then on a GPU ``device`` the torch metrics there (safe beside another thread's
    ``forward_stage``: it touches no model state)."""
    out = []
    for rec, err in record_stage(model, staged):
        if rec is not None and device != "cpu":
            err = precompute_or_error(rec, settings, device)
            rec = None if err else rec
        out.append((rec, err))
    return out


def host_metrics_needed(settings: RecordSettings) -> bool:
    """True when a metric has no torch implementation here (PESQ, pystoi's STOI, mir_eval's SDR)."""
    m = settings.metrics
    return ("pesq" in m or ("stoi" in m and settings.stoi_backend == "pystoi")
            or ("sdr" in m and settings.sdr_backend == "mir_eval"))


def check_batch(batch: int) -> int:
    """``--batch`` as an int of at least 1 (UsageError otherwise)."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise UsageError(f"--batch must be a whole number of utterances, at least 1, not {batch!r}")
    return batch


def _finished_group(model: ExitModel, staged: list[Staged], settings: RecordSettings, device: str
                    ) -> list[tuple[str, pa.Table | None, pa.Table | None, tuple[str, str, str] | None]]:
    """(utt_id, blocks, utterances, error) of each staged utterance: the host half of the unit of work."""
    out = []
    for st, (rec, err) in zip(staged, finish_stage(model, staged, settings, device)):
        table = None
        if rec is not None:
            table, err = metrics_or_error(rec, settings)
        out.append((st.utt_id, rec.blocks if table is not None else None, table, err))
    return out


def record_shards(model: ExitModel, testset: TestSet, shards: dict[int, list[str]], settings: RecordSettings,
                  write: Callable[[int, dict[str, pa.Table]], None],
                  on_utterance: Callable[[str], None] | None = None, device: str = "cpu", batch: int = 1,
                  overlap: bool = False) -> None:
    """Record ``shards`` in-process, handing each one's tables to ``write(index, tables)`` when it is done.

    With ``overlap`` the host half of each group of utterances (permutation, block statistics, metrics,
    tables, the shard's write) runs in a second thread while this one runs the model on the next group: on
    a GPU the model's thread then does little but launch kernels. The same functions run either way, so
    the tables are the same; only their work overlaps."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    step = max(1, int(batch))
    parts: dict[int, tuple[list, list, list]] = {}

    def finish(index: int, staged: list[Staged], last: bool) -> None:
        blocks, utts, errors = parts.setdefault(index, ([], [], []))
        for utt_id, b, u, err in _finished_group(model, staged, settings, device):
            if u is not None:
                blocks.append(b)
                utts.append(u)
            if err is not None:
                errors.append(err)
            if on_utterance is not None:
                on_utterance(utt_id)
        if last:
            write(index, assemble_shard(*parts.pop(index)))

    groups = [(index, ids[g:g + step], g + step >= len(ids)) for index, ids in shards.items()
              for g in range(0, max(len(ids), 1), step)]
    if not overlap:
        for index, group, last in groups:
            finish(index, forward_stage(model, testset, group), last)
        return
    pending: deque = deque()
    with ThreadPoolExecutor(1, thread_name_prefix="exitbench-host") as host:
        try:
            for index, group, last in groups:
                staged = forward_stage(model, testset, group)
                pending.append(host.submit(finish, index, staged, last))
                while len(pending) > 1:  # one group's host half behind the model: memory stays flat
                    pending.popleft().result()
            while pending:
                pending.popleft().result()
        except BaseException:
            for f in pending:
                f.cancel()
            raise


def assemble_shard(blocks: list[pa.Table], utts: list[pa.Table], errors: list[tuple[str, str, str]]
                   ) -> dict[str, pa.Table]:
    """Concatenate per-utterance pieces into a shard's tables."""
    return {
        "blocks": pa.concat_tables(blocks) if blocks else BLOCKS.empty_table(),
        "utterances": pa.concat_tables(utts) if utts else UTTERANCES.empty_table(),
        "errors": error_table(errors),
    }
