"""Fit post-hoc per-level recalibration of a checkpoint's inverse-gamma predictions on held-out data.

    python scripts/recalibrate.py exitbench/models/checkpoints/press-s.pt --task separation
    python scripts/recalibrate.py exitbench/models/checkpoints/slimdemucs-s.pt --task enhancement

Held-out data: mixtures made from the corpus's *valid* split (speakers disjoint from training and
from the demo sets), never the demo sets. For each level it grid-searches a shape factor k and a
variance scale c (alpha' = 1 + k(alpha - 1), E'[sigma^2] = c E[sigma^2]) that minimise the KS
distance of the PIT values u = Q(alpha', beta' n / ||x - x_hat||^2) from uniform, and writes them
into the checkpoint's config ("calibration") with the fit's figures in its metadata.

``--powers`` adds a third factor p per level: E'[sigma^2] = c P (E[sigma^2]/P)^p with P the block's mixture
power (exitbench.models.layers.recalibrate): p < 1 keeps the head's ranking of blocks but shrinks its
spread, for heads whose deep exits predict variances far too small or too spread (p = 1 is the plain fit).
The KS of the fit as the model applies it (the mean variance kept non-increasing over levels) is printed too.

``--objective crps`` minimises the mean CRPS of each block's log error power (losses.log_power_crps, the
term the models train with) instead of the KS distance: a proper score, so it rewards sharpness as well
as calibration. The KS alone is indifferent to sharpness: it may pick a power of 0 (a variance set by the
mixture's power alone, calibrated but ranking no block above another), which a policy cannot use.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from exitbench.metrics import apply_permutation, best_permutation
from exitbench.models.checkpoint import load_checkpoint, save_checkpoint
from exitbench.models.layers import block_power, power_recalibrated_mean, recalibrate
from exitbench.models.losses import log_power_crps
from exitbench.models.registry import build_from_checkpoint
from exitbench.models.training_data import fixed_set, load_pool
from exitbench.policies.calibration import invgamma_pit, ks_distance


def collect(model, mixes: torch.Tensor, srcs: torch.Tensor) -> tuple[np.ndarray, ...]:
    """Per (level, block, source) over all items: alpha, beta, n, error energy, the block's mixture power."""
    a_all, b_all, n_all, e_all, p_all = [], [], [], [], []
    T = model.block_size
    for mix, src in zip(mixes, srcs):
        out = model.forward_all(mix)
        est = out.estimates.double().numpy()
        ref = src.double().numpy()
        perm = list(best_permutation(est[-1], ref))
        est = apply_permutation(est, perm)
        alpha = apply_permutation(out.alpha.double().numpy(), perm)
        beta = apply_permutation(out.beta.double().numpy(), perm)
        n = ref.shape[-1]
        nb = alpha.shape[-1]
        err = ((est - ref[None]) ** 2)
        pad = nb * T - n
        err = np.pad(err, ((0, 0), (0, 0), (0, pad))).reshape(*err.shape[:2], nb, T).sum(-1)
        counts = np.minimum(T, n - np.arange(nb) * T).astype(float)
        a_all.append(alpha.reshape(alpha.shape[0], -1))
        b_all.append(beta.reshape(beta.shape[0], -1))
        e_all.append(err.reshape(err.shape[0], -1))
        n_all.append(np.broadcast_to(counts, alpha.shape).reshape(alpha.shape[0], -1))
        power = block_power(mix.double()[None], T)[0].numpy()  # as the model computes it, per block
        p_all.append(np.broadcast_to(power, alpha.shape).reshape(alpha.shape[0], -1))
    return tuple(np.concatenate(x, axis=1) for x in (a_all, b_all, n_all, e_all, p_all))


def recalibrated_mean(alpha, beta, c=1.0, p=1.0, ref=None, cap=None):
    """The mean variance under scale c and power p (relative to the mixture power ``ref``; the model's own
    formula, layers.power_recalibrated_mean), at most ``cap`` (the previous level's, where the model keeps
    the mean variance non-increasing)."""
    mean = beta / (alpha - 1.0)
    if p != 1.0:
        mean = power_recalibrated_mean(torch.from_numpy(mean), c, p, torch.from_numpy(ref)).numpy()
    else:
        mean = mean * c
    return mean if cap is None else np.minimum(cap, mean)


def pit(alpha, beta, n, err, k=1.0, c=1.0, p=1.0, ref=None, cap=None):
    """PIT values under shape factor k, variance scale c and power p (see recalibrated_mean)."""
    a2 = 1.0 + k * (alpha - 1.0)
    mean = recalibrated_mean(alpha, beta, c, p, ref, cap)
    return invgamma_pit(a2, mean * (a2 - 1.0), n, err)


def crps_over_shapes(alpha, beta, n, err, k_grid, c=1.0, p=1.0, ref=None, cap=None) -> np.ndarray:
    """Mean log-power CRPS (nats) for every shape factor in ``k_grid`` at one scale c and power p."""
    mean = torch.from_numpy(recalibrated_mean(alpha, beta, c, p, ref, cap))
    a = 1.0 + torch.from_numpy(np.asarray(k_grid, dtype=float))[:, None] * (torch.from_numpy(alpha)[None] - 1.0)
    score = log_power_crps(torch.from_numpy(err)[None], torch.from_numpy(n)[None], a, mean[None] * (a - 1.0))
    return score.double().mean(1).numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--task", choices=["separation", "enhancement"], required=True)
    p.add_argument("--corpus", default=".corpus")
    p.add_argument("--items", type=int, default=96)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--out", default=None, help="output checkpoint (default: overwrite)")
    p.add_argument("--powers", default="1", help="comma list of powers to try per level (1: scale and shape only)")
    p.add_argument("--group-weights", default=None, metavar="JSON",
                   help='draw the held-out speaker groups as training does, e.g. \'{"lang:en": 4, "kind:real": 4}\'')
    p.add_argument("--objective", choices=["ks", "crps"], default="ks",
                   help="what the fit minimises per level: the PIT's KS distance, or the mean CRPS of the log error power")
    args = p.parse_args()
    powers = sorted({float(x) for x in args.powers.split(",")}, reverse=True)

    ckpt = load_checkpoint(args.checkpoint)
    ckpt.config["calibration"] = None
    model = build_from_checkpoint(ckpt)
    weights = json.loads(args.group_weights) if args.group_weights else None
    pool = load_pool(args.corpus, model.sample_rate, "valid", args.task == "enhancement", False, weights=weights)
    mixes, srcs = fixed_set(pool, args.task, args.items, args.seconds, model.sample_rate, seed=2026)
    alpha, beta, n, err, ref = collect(model, mixes, srcs)
    shapes, scales, exps, report = [], [], [], []
    ks_grid = np.geomspace(0.005, 50.0, 60)
    c_grid = np.geomspace(1e-3, 1e5, 120)
    monotone = args.task == "separation"  # press keeps the mean variance non-increasing over exits
    cap = None
    for level in range(alpha.shape[0]):
        a, b, nn_, e, r = alpha[level], beta[level], n[level], err[level], ref[level]
        before = ks_distance(pit(a, b, nn_, e))
        # fitted level by level as the model applies it: capped by the previous level's recalibrated mean
        if args.objective == "ks":
            best = min((ks_distance(pit(a, b, nn_, e, k, c, q, r, cap)), k, c, q)
                       for q in powers for k in ks_grid for c in c_grid)
        else:  # one vectorised pass over the shapes per (power, scale)
            best = min((float(score), k, c, q) for q in powers for c in c_grid
                       for k, score in zip(ks_grid, crps_over_shapes(a, b, nn_, e, ks_grid, c, q, r, cap)))
            best = (ks_distance(pit(a, b, nn_, e, best[1], best[2], best[3], r, cap)), *best[1:], best[0])
        if monotone:
            cap = recalibrated_mean(a, b, best[2], best[3], r, cap)
        shapes.append(float(best[1]))
        scales.append(float(best[2]))
        exps.append(float(best[3]))
        report.append({"level": model.levels[level], "ks_before": round(float(before), 4),
                       "ks_fit": round(float(best[0]), 4), "shape": round(best[1], 4), "scale": round(best[2], 4),
                       "power": best[3]})
        if args.objective == "crps":
            report[-1]["crps_before"] = round(float(crps_over_shapes(a, b, nn_, e, [1.0])[0]), 4)
            report[-1]["crps_fit"] = round(best[4], 4)
        print(report[-1])
    cal = {"shape": shapes, "scale": scales}
    if any(q != 1.0 for q in exps):
        cal["power"] = exps
    # as the model applies it: the mean variance kept non-increasing over levels (press) or not (slimdemucs)
    a2, b2 = recalibrate(torch.from_numpy(alpha[:, None]), torch.from_numpy(beta[:, None]), cal,
                         monotone=monotone, ref_power=torch.from_numpy(ref[0]))
    for level, row in enumerate(report):
        u = invgamma_pit(a2[level, 0].numpy(), b2[level, 0].numpy(), n[level], err[level])
        row["ks_applied"] = round(ks_distance(u), 4)
        print(row["level"], "KS as applied", row["ks_applied"])
    ckpt.config["calibration"] = cal
    meta = dict(ckpt.metadata)
    objective = "PIT KS" if args.objective == "ks" else "the mean CRPS of the log error power"
    meta["calibration"] = {"method": f"per-level shape, variance scale (and power) minimising {objective}",
                           "data": f"{args.items} mixtures of {args.seconds:g} s from {args.corpus} valid split",
                           "group_weights": weights,
                           "levels": report}
    save_checkpoint(args.out or args.checkpoint, ckpt.architecture, ckpt.config, ckpt.state_dict, meta)
    print("wrote", args.out or args.checkpoint)


if __name__ == "__main__":
    main()
