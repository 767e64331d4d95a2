"""exitbench.metrics: SI-SNR, SNR, BSS-eval SDR, PESQ, STOI, permutation search, block statistics and the
composite (replay) maths. Pure functions on numpy arrays, float64 inside; no other exitbench imports."""

from exitbench.metrics.blockstats import STAT_KEYS, block_starts, block_stats, num_blocks
from exitbench.metrics.bss import sdr
from exitbench.metrics.composite import (
    composite_metrics,
    exit_snr_ratios,
    si_snr_from_sums,
    snr_from_sums,
    true_exit_snr_db,
)
from exitbench.metrics.perceptual import pesq_score, stoi_score
from exitbench.metrics.permutation import apply_permutation, best_permutation, pairwise_si_snr
from exitbench.metrics.snr import DEFAULT_EPS, energy_ratio_db, si_snr, snr

__all__ = [
    "DEFAULT_EPS", "STAT_KEYS", "apply_permutation", "best_permutation", "block_starts", "block_stats",
    "composite_metrics", "energy_ratio_db", "exit_snr_ratios", "num_blocks", "pairwise_si_snr", "pesq_score",
    "sdr", "si_snr", "si_snr_from_sums", "snr", "snr_from_sums", "stoi_score", "true_exit_snr_db",
]
