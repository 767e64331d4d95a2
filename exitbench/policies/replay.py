"""Replay: the exact per-block and per-utterance metrics of the output stitched from chosen levels."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from exitbench.metrics.composite import si_snr_from_sums, snr_from_sums
from exitbench.policies.arrays import LEVEL_STATS, BlockArrays
from exitbench.policies.base import PolicyError

METRICS = ("si_snr", "si_snri", "snr", "snri")


def check_chosen(arrays: BlockArrays, chosen: np.ndarray) -> np.ndarray:
    """``chosen`` as int64 [K] (one level per block) or [K, S] (per-source exits: static levels only),
    or PolicyError if its shape or a level is out of range."""
    chosen = np.asarray(chosen)
    if chosen.ndim == 2 and chosen.shape == (arrays.num_blocks, arrays.num_sources) \
            and np.issubdtype(chosen.dtype, np.integer):
        if chosen.size and (chosen.min() < 0 or chosen.max() >= arrays.num_levels):
            raise PolicyError(f"per-source levels must lie in 0..{arrays.num_levels - 1} (static levels only)")
        return chosen.astype(np.int64, copy=False)
    if chosen.shape != (arrays.num_blocks,) or not np.issubdtype(chosen.dtype, np.integer):
        raise PolicyError(f"chosen must be an integer array of shape ({arrays.num_blocks},) or"
                          f" ({arrays.num_blocks}, {arrays.num_sources}) (per source), got "
                          f"{chosen.dtype} {chosen.shape}")
    top = arrays.num_levels - (arrays.dynamic is None)
    if chosen.size and (chosen.min() < 0 or chosen.max() > top):
        what = "" if arrays.dynamic is not None else " (this recording has no dynamic output)"
        raise PolicyError(f"chosen levels must lie in 0..{top}{what}")
    return chosen.astype(np.int64, copy=False)


def gather(arrays: BlockArrays, chosen: np.ndarray, name: str) -> np.ndarray:
    """The chosen level's value of stat ``name`` (or 'macs', 'exit_snr') per block: [K, S] or [K]."""
    k = arrays._cache.get("arange")
    if k is None:
        k = arrays._cache["arange"] = np.arange(arrays.num_blocks)
    if chosen.ndim == 2:
        return _gather_per_source(arrays, chosen, name, k)
    if name in ("macs", "exit_snr"):
        table = arrays.macs if name == "macs" else arrays.exit_snr_db()
        if name == "macs" and arrays.dynamic is not None:
            out = np.empty(arrays.num_blocks)
            static = chosen < arrays.num_levels
            out[static] = table[k[static], chosen[static]]
            out[~static] = arrays.dynamic.macs[~static]
            return out
        return table[k, chosen]
    if name not in LEVEL_STATS:  # reference and mixture statistics are the same at every level
        return arrays.stats[name][:, 0]
    static = chosen < arrays.num_levels
    if arrays.dynamic is None or static.all():
        if chosen.size and chosen[0] == chosen[-1] and (chosen == chosen[0]).all():
            return arrays.stats[name][:, chosen[0]]  # one level everywhere (static): a view, no gather
        return _take_level(arrays.stats[name], chosen, k)
    out = np.empty((arrays.num_blocks, arrays.num_sources))
    out[static] = arrays.stats[name][k[static], chosen[static]]
    out[~static] = arrays.dynamic.stats[name][~static]
    return out


def _gather_per_source(arrays: BlockArrays, chosen: np.ndarray, name: str, k: np.ndarray) -> np.ndarray:
    """``gather`` for per-source exits [K, S]: each source's stats at its own level; a block's MACs are
    the mean over sources of each source's level's MACs (each source pays its share), its exit-SNR the
    worst source's own."""
    if name == "macs":
        return arrays.macs[k[:, None], chosen].mean(axis=1)
    s = np.arange(arrays.num_sources)[None, :]
    if name == "exit_snr":
        return arrays.source_exit_snr_db()[k[:, None], chosen, s].min(axis=1)
    if name not in LEVEL_STATS:
        return arrays.stats[name][:, 0]
    return arrays.stats[name][k[:, None], chosen, s]


def _take_level(stat: np.ndarray, chosen: np.ndarray, k: np.ndarray) -> np.ndarray:
    """stat[k, chosen[k], :] for [K, L, S]; a flat take where the array is contiguous (much faster)."""
    kk, lv, s = stat.shape
    if stat.flags.c_contiguous:
        return np.take(stat.reshape(kk * lv, s), k * lv + chosen, axis=0)
    return stat[k, chosen]


def utterance_sum(arrays: BlockArrays, per_block: np.ndarray) -> np.ndarray:
    """Sum per utterance of a per-block array (blocks are sorted by utterance)."""
    return np.add.reduceat(per_block, arrays.utt_starts, axis=0)


def mixture_metrics(arrays: BlockArrays) -> dict[str, np.ndarray]:
    """SI-SNR and SNR (dB) of the unprocessed mixture per utterance and source [U, S]."""
    if "mixture_metrics" not in arrays._cache:
        s = {name: utterance_sum(arrays, arrays.stats[name][:, 0])
             for name in ("sum_ref", "sum_mix", "e_ref", "e_mix", "dot_mix_ref")}
        n = arrays.utt_samples[:, None].astype(np.float64)
        arrays._cache["mixture_metrics"] = {
            "si_snr": si_snr_from_sums(n, s["sum_mix"], s["sum_ref"], s["e_mix"], s["e_ref"], s["dot_mix_ref"]),
            "snr": snr_from_sums(s["e_mix"], s["e_ref"], s["dot_mix_ref"]),
        }
    return arrays._cache["mixture_metrics"]


def reference_sums(arrays: BlockArrays) -> dict[str, np.ndarray]:
    """Σsum_ref and Σe_ref per utterance and source [U, S] (level-independent)."""
    if "reference_sums" not in arrays._cache:
        arrays._cache["reference_sums"] = {name: utterance_sum(arrays, arrays.stats[name][:, 0])
                                           for name in ("sum_ref", "e_ref")}
    return arrays._cache["reference_sums"]


def composite_from_sums(arrays: BlockArrays, sum_est: np.ndarray, e_est: np.ndarray, dot_est_ref: np.ndarray,
                        rows: slice = slice(None)) -> dict[str, np.ndarray]:
    """si_snr, si_snri, snr, snri (dB) per utterance and source from the estimate's sums.

    Inputs are [U', S] or [U', S, G] for the utterances ``rows`` (all by default).
    """
    ref = reference_sums(arrays)
    mix = mixture_metrics(arrays)
    extra = (slice(None), slice(None)) + (None,) * (sum_est.ndim - 2)
    n = arrays.utt_samples[rows].astype(np.float64)[(slice(None), None) + (None,) * (sum_est.ndim - 2)]
    sum_ref, e_ref = ref["sum_ref"][rows][extra], ref["e_ref"][rows][extra]
    si = si_snr_from_sums(n, sum_est, sum_ref, e_est, e_ref, dot_est_ref)
    snr = snr_from_sums(e_est, e_ref, dot_est_ref, n=n, sum_est=sum_est)
    return {"si_snr": si, "si_snri": si - mix["si_snr"][rows][extra], "snr": snr,
            "snri": snr - mix["snr"][rows][extra]}


def utterance_gmacs(arrays: BlockArrays, macs_per_block: np.ndarray) -> np.ndarray:
    """GMAC per second of audio per utterance: Σmacs / Σn · sample_rate / 1e9 (n once per block); trailing axes
    of ``macs_per_block`` [K, ...] are kept."""
    samples = arrays.utt_samples.reshape((-1,) + (1,) * (np.ndim(macs_per_block) - 1))
    return utterance_sum(arrays, macs_per_block) / samples * arrays.sample_rate / 1e9


def replay(arrays: BlockArrays, chosen: np.ndarray, t: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-block and per-utterance results of stitching the chosen levels.

    ``chosen`` is [K] or, for per-source exits, [K, S] (then ``level`` is the deepest source's and
    ``level_s<k>`` each source's). per_block: utt_id, block, level, macs, exit_snr (dB of the chosen level) and, if t is given,
    regret = max(0, t − exit_snr). per_utt: utt_id, num_samples, gmacs, the source means of
    si_snr, si_snri, snr, snri and each per source as ``<metric>_s<k>``.
    """
    chosen = check_chosen(arrays, chosen)
    macs = gather(arrays, chosen, "macs")
    exit_snr = gather(arrays, chosen, "exit_snr")
    utt_cat = pd.Categorical.from_codes(arrays.utt, categories=pd.Index(arrays.utt_ids, dtype=object))
    per_block = pd.DataFrame({"utt_id": utt_cat, "block": arrays.block,
                              "level": chosen if chosen.ndim == 1 else chosen.max(axis=1),
                              "macs": macs, "exit_snr": exit_snr})
    if chosen.ndim == 2:  # per-source exits: ``level`` is the deepest any source reached, each source's beside it
        for s in range(arrays.num_sources):
            per_block[f"level_s{s}"] = chosen[:, s]
    if t is not None:
        per_block["regret"] = np.maximum(0.0, t - exit_snr)
    sums = {name: utterance_sum(arrays, gather(arrays, chosen, name)) for name in ("sum_est", "e_est", "dot_est_ref")}
    metrics = composite_from_sums(arrays, sums["sum_est"], sums["e_est"], sums["dot_est_ref"])
    per_utt = pd.DataFrame({"utt_id": arrays.utt_ids, "num_samples": arrays.utt_samples,
                            "gmacs": utterance_gmacs(arrays, macs)})
    for m in METRICS:
        per_utt[m] = metrics[m].mean(axis=1)
    for m in METRICS:
        for s in range(arrays.num_sources):
            per_utt[f"{m}_s{s}"] = metrics[m][:, s]
    return per_block, per_utt


def summarize(arrays: BlockArrays, chosen: np.ndarray, targets: Sequence[float]) -> list[dict[str, float]]:
    """One summary per target t: mean GMAC/s and SI-SNRi/SNRi over utterances, mean regret over blocks."""
    chosen = check_chosen(arrays, chosen)
    gm = utterance_gmacs(arrays, gather(arrays, chosen, "macs")).mean()
    sums = {name: utterance_sum(arrays, gather(arrays, chosen, name)) for name in ("sum_est", "e_est", "dot_est_ref")}
    metrics = composite_from_sums(arrays, sums["sum_est"], sums["e_est"], sums["dot_est_ref"])
    exit_snr = gather(arrays, chosen, "exit_snr")
    return [{"t": float(t), "gmacs": float(gm), "regret": float(np.maximum(0.0, t - exit_snr).mean()),
             "si_snri": float(metrics["si_snri"].mean()), "snri": float(metrics["snri"].mean())}
            for t in targets]
