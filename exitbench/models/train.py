"""Training recipes for the reference architectures, stopped by step count or wall clock.

``train(config, out_dir)`` reads a TOML config (see ``exitbench/models/configs/``), trains with
dynamic mixing, validates every epoch on a fixed set (SI-SNRi per level), and writes
``<out_dir>/<name>.pt`` (checkpoint format of :mod:`exitbench.models.checkpoint`, rewritten each
epoch so a killed run still leaves one), ``<out_dir>/<name>.opt.pt`` (the optimiser's state, which
``train.init`` of that checkpoint picks up) and ``<out_dir>/<name>.log.json``.

Command line: ``python -m exitbench.models.train CONFIG OUT_DIR [--device cuda] [--max-minutes 8.5]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from exitbench.errors import UsageError
from exitbench.models.checkpoint import save_checkpoint
from exitbench.models.losses import (block_sums, difficulty_targets, level_losses, multi_resolution_stft_loss, pit_level_losses, router_regularisers,
                                     si_snr_db, snr_db)
from exitbench.models.registry import ARCHITECTURES
from exitbench.models.training_data import DeviceCorpus, fixed_set, generator, load_pool
from exitbench.policies.calibration import invgamma_pit, ks_distance

try:
    import tomllib
except ImportError:  # Python 3.10 on some GPU images: the TOML reader pip vendors is the same code
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ImportError:
        from pip._vendor import tomli as tomllib  # type: ignore[no-redef]

CONFIG_DIR = Path(__file__).parent / "configs"

TRAIN_DEFAULTS: dict[str, Any] = {
    "batch_size": 8, "lr": 1e-3, "warmup_steps": 100, "max_steps": 1_000_000, "max_minutes": None,
    "steps_per_epoch": 500, "amp": "bf16", "grad_clip": 5.0, "seed": 0, "init": None,
    "finetune_fraction": 0.0, "log_every": 25, "valid_batch": 16, "compile": "auto", "cuda_graphs": False,
    # torch.compile's artefacts (torch.compiler.save_cache_artifacts) read from and written to this file, so
    # that a later run of the same config on the same kind of GPU skips most of its compile time
    "compile_cache": None,
}
DATA_DEFAULTS: dict[str, Any] = {
    "corpus": ".corpus", "segment_seconds": 4.0, "gain_db": 5.0, "snr_db": [-5.0, 15.0],
    "level_db": [-30.0, -15.0], "valid_items": 64, "valid_seconds": 4.0, "synthetic_fallback": True,
    "finetune_max_seconds": 12.0,
    # fine-tune on fixed crops of this many seconds (compiled: one more shape) instead of whole clips of
    # varying length (eager: a compile per length would cost more than it saves)
    "finetune_seconds": None,
    "group_weights": {},  # e.g. {"lang:en" = 4.0, "kind:real" = 4.0}: how often speaker groups are drawn
}
LOSS_DEFAULTS: dict[str, Any] = {
    "nll_weight": 1.0, "snr_weight": 1.0, "router_weight": 1.0, "efficiency_weight": 50.0,
    "target_utilization": 0.5, "balance_weight": 1.0, "gumbel_tau": 1.0, "difficulty_spread": "auto",
    "stft_weight": 0.0,  # enhancement: multi-resolution STFT loss per level and on the dynamic output
    "crps_weight": 0.0,  # CRPS of each block's log error power (losses.log_power_crps): keeps the variance level honest
}


def load_config(config: str | os.PathLike | dict[str, Any]) -> dict[str, Any]:
    """A training config from a dict, a TOML path, or a name in ``configs/``; defaults filled in."""
    if not isinstance(config, dict):
        path = Path(config)
        if not path.is_file() and (CONFIG_DIR / f"{config}.toml").is_file():
            path = CONFIG_DIR / f"{config}.toml"
        if not path.is_file():
            raise UsageError(f"training config {str(config)!r} not found (nor in {CONFIG_DIR})")
        with open(path, "rb") as f:
            config = tomllib.load(f)
        config.setdefault("name", path.stem)
    config = dict(config)
    for key in ("name", "architecture", "task", "model"):
        if key not in config:
            raise UsageError(f"training config lacks {key!r}")
    if config["task"] not in ("separation", "enhancement"):
        raise UsageError(f"task must be 'separation' or 'enhancement', got {config['task']!r}")
    for section, defaults in (("train", TRAIN_DEFAULTS), ("data", DATA_DEFAULTS), ("loss", LOSS_DEFAULTS)):
        given = dict(config.get(section, {}))
        unknown = set(given) - set(defaults)
        if unknown:
            raise UsageError(f"unknown keys in [{section}]: {sorted(unknown)}")
        config[section] = {**defaults, **given}
    return config


def optimizer_path(checkpoint: Path) -> Path:
    """Where the optimiser state of a training checkpoint is kept: ``<name>.opt.pt`` beside it."""
    return checkpoint.with_name(checkpoint.name.removesuffix(".pt") + ".opt.pt")


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (average ranks for ties)."""
    from scipy.stats import spearmanr

    x, y = a.double().cpu().numpy(), b.double().cpu().numpy()
    if x.min() == x.max() or y.min() == y.max():  # undefined for a constant input: no association
        return 0.0
    return float(spearmanr(x, y).statistic)


def _lr_at(step: int, frac: float, cfg: dict[str, Any]) -> float:
    """Linear warm-up, then cosine decay over the run's progress ``frac`` (time or steps) to 5%."""
    base = cfg["lr"]
    if step < cfg["warmup_steps"]:
        return base * (step + 1) / cfg["warmup_steps"]
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


class Trainer:
    """Holds model, optimiser, data and the step function of one training run."""

    def __init__(self, config: dict[str, Any], out_dir: Path, device: str | None, max_minutes: float | None):
        self.start = time.monotonic()  # the wall-clock budget includes model set-up and corpus loading
        self.cfg = config
        self.tcfg, self.dcfg, self.lcfg = config["train"], config["data"], config["loss"]
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if max_minutes is not None:  # the budget applied is the one the log and checkpoint record
            self.tcfg["max_minutes"] = max_minutes
        minutes = self.tcfg["max_minutes"]
        self.budget_s = None if minutes is None else float(minutes) * 60
        torch.manual_seed(self.tcfg["seed"])
        self.model = ARCHITECTURES.build(config["architecture"], config=config["model"])
        self.net = self.model.module.to(self.device)
        self.sr = self.model.sample_rate
        self.is_slim = config["architecture"] == "slimdemucs"
        cuda = self.device.type == "cuda"
        # fused Adam: one kernel for all parameters instead of a few per tensor (same update)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=self.tcfg["lr"], fused=cuda or None)
        self.amp = cuda and self.tcfg["amp"] == "bf16"
        compile_ = self.tcfg["compile"]
        if compile_ not in ("auto", True, False):
            raise UsageError(f"train.compile must be true, false or \"auto\", got {compile_!r}")
        # torch.compile fuses the elementwise chains (norms, PReLUs, gates, heads, the loss) of the
        # step; on the CPU compiling costs more than it saves in a short run
        self.compiled = compile_ is True or (compile_ == "auto" and cuda)
        graphs = self.tcfg["cuda_graphs"]
        if graphs not in (True, False):
            raise UsageError(f"train.cuda_graphs must be true or false, got {graphs!r}")
        # CUDA graphs replay the compiled forward and backward as a few launches instead of ~1,500 kernels;
        # off by default: on an H100 (2026-12-07) the step is bound by GPU time, not launches, and the
        # graph variant had not finished compiling and 50 steps after 200 s (bench_train_step.py)
        self.graphs = self.compiled and cuda and graphs
        # dynamic=False: the fine-tune's second shape gets a graph of its own; with automatic dynamic
        # shapes, torch 2.11's inductor raised an AssertionError in its tiling analysis on that shape (H100,
        # press-s, 8-s crops after 4-s ones)
        self.loss_fn = (torch.compile(self.losses, mode="reduce-overhead" if self.graphs else None, dynamic=False)
                        if self.compiled else self.losses)
        self.compile_cache = Path(self.tcfg["compile_cache"]) if self.compiled and self.tcfg["compile_cache"] else None
        self.compile_cache_loaded = self._load_compile_cache()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        need_noise = config["task"] == "enhancement"
        self.train_pool = load_pool(self.dcfg["corpus"], self.sr, "train", need_noise, self.dcfg["synthetic_fallback"],
                                    weights=self.dcfg["group_weights"] or None)
        valid_pool = load_pool(self.dcfg["corpus"], self.sr, "valid", need_noise, self.dcfg["synthetic_fallback"])
        mix_kw = {k: self.dcfg[k] for k in ("gain_db", "snr_db", "level_db")}
        self.valid = fixed_set(valid_pool, config["task"], self.dcfg["valid_items"], self.dcfg["valid_seconds"],
                               self.sr, self.tcfg["seed"], **mix_kw)
        self.data_desc = {"task": config["task"], "sample_rate": self.sr, "train": self.train_pool.description,
                          "valid": valid_pool.description, "valid_items": self.dcfg["valid_items"],
                          "valid_seconds": self.dcfg["valid_seconds"], "mixing": mix_kw,
                          "segment_seconds": self.dcfg["segment_seconds"]}
        self.mix_kw = mix_kw
        self.train_corpus = DeviceCorpus(self.train_pool, config["task"], self.sr, self.device, self.tcfg["seed"])
        self.clip_seconds = self.train_corpus.lengths.cpu().numpy() / self.sr
        self.step = 0
        self.epoch = 0
        self.initial_step = 0
        if self.tcfg["init"]:  # continue from a checkpoint: its weights, and its step count in the metadata
            from exitbench.models.checkpoint import load_checkpoint

            ckpt = load_checkpoint(self.tcfg["init"])
            try:
                self.net.load_state_dict(ckpt.state_dict)
            except RuntimeError as exc:  # another architecture or size than this config's
                raise UsageError(f"train.init {self.tcfg['init']}: its weights do not fit this config"
                                 f" ({str(exc).splitlines()[0]})") from None
            self.initial_step = int(ckpt.metadata.get("step") or 0)
            self.data_desc["init"] = {"checkpoint": str(self.tcfg["init"]), "sha256": ckpt.sha256,
                                      "step": self.initial_step, "optimizer": self._load_optimizer(ckpt.sha256)}
        self.log: list[dict[str, Any]] = []
        self.valid_log: list[dict[str, Any]] = []
        self.finetune_compiled = False  # set once the fixed-crop fine-tune's first compiled step ran

    def _load_compile_cache(self) -> bool:
        """Hand an earlier run's compile artefacts to torch.compile; False when there are none or they do not load."""
        if self.compile_cache is None or not self.compile_cache.is_file():
            return False
        try:  # artefacts of another torch or GPU are cache misses; a file that does not load costs only time
            return torch.compiler.load_cache_artifacts(self.compile_cache.read_bytes()) is not None
        except Exception as exc:  # noqa: BLE001
            print(f"compile cache {self.compile_cache} not loaded ({type(exc).__name__}: {exc})", flush=True)
            return False

    def _save_compile_cache(self) -> None:
        """Write the compile artefacts of this process so far (atomically), if there are any."""
        if self.compile_cache is None:
            return
        try:
            saved = torch.compiler.save_cache_artifacts()
            if saved is not None and saved[0]:
                tmp = self.compile_cache.with_name(self.compile_cache.name + ".tmp")
                tmp.write_bytes(saved[0])
                os.replace(tmp, self.compile_cache)
        except Exception as exc:  # noqa: BLE001 - the cache saves start-up time, never the checkpoint's place
            print(f"compile cache not saved ({type(exc).__name__}: {exc})", flush=True)

    def _load_optimizer(self, sha256: str) -> bool:
        """Load the optimiser state saved beside the init checkpoint, if it belongs to that checkpoint."""
        path = optimizer_path(Path(self.tcfg["init"]))
        if not path.is_file():
            return False
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state.get("checkpoint_sha256") != sha256:  # saved with other weights: start it afresh
            return False
        self.opt.load_state_dict(state["optimizer"])
        return True

    # -- data ---------------------------------------------------------------------------------
    def loader(self, seconds: float | None, batch_size: int, seed_offset: int) -> Any:
        """An endless iterator of (mixture [b, N], sources [b, S, N], input SNR dB [b]) made on the device.

        ``seconds=None`` (the fine-tune phase) gives whole utterances: each batch takes the length of
        a random corpus clip (at most ``data.finetune_max_seconds``), every item a random clip at that
        length, and as many items as keep the batch's samples near ``batch_size`` crops of
        ``data.segment_seconds``.
        """
        gen = generator(self.device, self.tcfg["seed"] * 7919 + seed_offset)
        lengths = np.random.default_rng([self.tcfg["seed"], seed_offset])
        while True:
            if seconds is None:
                sec = min(float(lengths.choice(self.clip_seconds)), self.dcfg["finetune_max_seconds"])
                n = max(self.model.block_size, int(sec * self.sr))
                b = max(1, round(batch_size * self.dcfg["segment_seconds"] * self.sr / n))
            else:
                n, b = int(seconds * self.sr), batch_size
            yield self.train_corpus.draw(gen, b, n, **self.mix_kw)

    # -- one step -----------------------------------------------------------------------------
    def losses(self, mix: torch.Tensor, src: torch.Tensor, input_snr: torch.Tensor) -> dict[str, torch.Tensor]:
        """Total training loss and its parts for one batch."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            out = self.net(mix)
        T, lc = self.model.block_size, self.lcfg
        if not self.is_slim:
            parts, _ = pit_level_losses(out["estimates"], src, out["alpha"], out["beta"], T,
                                        lc["nll_weight"], lc["snr_weight"], lc["crps_weight"])
            return parts
        per = level_losses(out["estimates"], src, out["alpha"], out["beta"], T, lc["nll_weight"], lc["snr_weight"],
                           lc["crps_weight"])
        parts = {k: v.mean() for k, v in per.items()}
        logits = out["router_logits"].float()
        weights = F.gumbel_softmax(logits, tau=lc["gumbel_tau"], hard=True)
        # the dynamic output is one pass at the widths the router chose per frame; the straight-through
        # weights carry its gradient to the router
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            dyn = self.net.forward_dynamic(mix, weights)["estimate"].float()
        widths = self.model.config["widths"]
        targets = difficulty_targets(input_snr, self.dcfg["snr_db"], lc["target_utilization"], widths,
                                     lc["difficulty_spread"])
        reg = router_regularisers(logits, torch.tensor(widths, device=logits.device), targets)
        parts["dyn_neg_snr"] = -snr_db(dyn, src[:, 0].float()).mean()
        parts["efficiency"], parts["balance"], parts["utilization"] = reg["efficiency"], reg["balance"], reg["utilization"]
        dyn_term = parts["dyn_neg_snr"]
        if lc["stft_weight"]:
            ref = src.float()  # [b, S, N]
            parts["stft"] = multi_resolution_stft_loss(out["estimates"], ref[:, None].expand_as(
                out["estimates"])).mean((0, 2)).sum()  # summed over levels, as the SNR term
            parts["dyn_stft"] = multi_resolution_stft_loss(dyn, ref[:, 0]).mean()
            parts["total"] = parts["total"] + lc["stft_weight"] * parts["stft"]
            dyn_term = dyn_term + lc["stft_weight"] * parts["dyn_stft"]
        parts["total"] = (parts["total"] + lc["router_weight"] * dyn_term
                          + lc["efficiency_weight"] * reg["efficiency"] + lc["balance_weight"] * reg["balance"])
        return parts

    def train_step(self, mix: torch.Tensor, src: torch.Tensor, input_snr: torch.Tensor,
                   lr: float, eager: bool = False) -> dict[str, torch.Tensor]:
        """One optimiser step; returns the loss parts as detached device tensors (no host sync).

        ``eager`` skips the compiled step (the fine-tune phase: every batch has another length, and
        recompiling for each would cost more than fusing saves)."""
        for g in self.opt.param_groups:
            g["lr"] = lr
        if self.graphs and not eager:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are no longer read
        parts = (self.losses if eager else self.loss_fn)(mix, src, input_snr)
        self.opt.zero_grad(set_to_none=True)
        parts["total"].backward()
        norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.tcfg["grad_clip"])
        self.opt.step()
        self.step += 1
        return {**{k: v.detach() for k, v in parts.items()}, "grad_norm": norm.detach()}

    # -- validation ---------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """SI-SNRi per level (PIT on the deepest level, shared), NLL per sample, router use for slim."""
        self.net.eval()
        mixes, srcs = self.valid
        si, nll, crps, pit, dyn_si, util, in_snr = [], [], [], [], [], [], []
        for i in range(0, len(mixes), self.tcfg["valid_batch"]):
            mix = mixes[i:i + self.tcfg["valid_batch"]].to(self.device)
            src = srcs[i:i + self.tcfg["valid_batch"]].to(self.device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
                out = self.net(mix)
            est = out["estimates"].float()  # [b, L, S, N]
            if src.shape[1] > 1:
                _, perm_idx = pit_level_losses(est[:, -1:], src, out["alpha"][:, -1:], out["beta"][:, -1:],
                                               self.model.block_size, 0.0, 1.0)
                perms = torch.tensor([[0, 1], [1, 0]], device=src.device)[perm_idx]
                src = src.gather(1, perms[..., None].expand_as(src))
            base = si_snr_db(mix[:, None].expand_as(src), src)  # [b, S]
            si.append((si_snr_db(est, src[:, None]) - base[:, None]).mean(2))  # [b, L]
            per = level_losses(est, src, out["alpha"], out["beta"], self.model.block_size, 1.0, 0.0, 1.0)
            nll.append(per["nll"])
            crps.append(per["crps"])
            # the raw heads' PIT per (block, source) and level: u = Q(α, β·n/‖e‖²), uniform when calibrated
            energy, counts = block_sums(est - src[:, None].float(), self.model.block_size)
            u = invgamma_pit(*(t.double().cpu().numpy() for t in (out["alpha"], out["beta"], counts, energy)))
            pit.append(u.swapaxes(0, 1).reshape(u.shape[1], -1))
            if self.is_slim:
                logits = out["router_logits"].float()
                onehot = F.one_hot(logits.argmax(-1), logits.shape[-1]).float()
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
                    dyn = self.net.forward_dynamic(mix, onehot)["estimate"].float()
                dyn_si.append(si_snr_db(dyn, src[:, 0]) - base[:, 0])
                util.append((onehot * torch.tensor(self.model.config["widths"], device=onehot.device)).sum(-1).mean(-1))
                in_snr.append(snr_db(mix, src[:, 0]))
        self.net.train()
        si_all = torch.cat(si).mean(0).tolist()
        result: dict[str, Any] = {
            "step": self.step, "epoch": self.epoch, "elapsed_s": round(time.monotonic() - self.start, 1),
            "si_snri": {name: round(v, 3) for name, v in zip(self.model.levels, si_all)},
            "nll_per_sample": round(float(torch.cat(nll).mean()), 4),
            "log_power_crps": round(float(torch.cat(crps).mean()), 4),  # summed over levels, nats
            "pit_ks": {name: round(ks_distance(u), 4) for name, u in zip(self.model.levels, np.concatenate(pit, 1))},
        }
        if self.is_slim:
            result["dynamic_si_snri"] = round(float(torch.cat(dyn_si).mean()), 3)
            result["dynamic_utilization"] = round(float(torch.cat(util).mean()), 4)
            # the router should spend more on harder (lower-SNR) inputs: a negative rank correlation
            result["utilization_snr_spearman"] = round(spearman(torch.cat(util), torch.cat(in_snr)), 4)
        return result

    # -- output -------------------------------------------------------------------------------
    def save(self, final: bool) -> Path:
        """Write the checkpoint and the JSON log (atomically replaced)."""
        name = self.cfg["name"]
        path = self.out_dir / f"{name}.pt"
        dev = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else platform.processor() or "cpu"
        metadata = {
            "step": self.initial_step + self.step, "epoch": self.epoch, "final": final,
            "wall_time_s": round(time.monotonic() - self.start, 1), "device": dev, "host": socket.gethostname(),
            "torch": torch.__version__, "data": self.data_desc,
            "train_config": {k: v for k, v in self.cfg.items()},
            "validation": self.valid_log[-1] if self.valid_log else None,
            "trained": self.step > 0,
            "compile_cache_loaded": self.compile_cache_loaded,
        }
        # plain JSON types only: the checkpoint is read back with torch.load(weights_only=True)
        metadata = json.loads(json.dumps(metadata, default=str))
        sha = save_checkpoint(path, self.cfg["architecture"], self.model.config, self.net.state_dict(), metadata)
        # the optimiser's moments beside it (not part of the checkpoint: twice its size, never shipped),
        # so that train.init of this checkpoint continues the optimisation, not only the weights
        opt_tmp = optimizer_path(path).with_suffix(".tmp")
        torch.save({"checkpoint_sha256": sha, "optimizer": self.opt.state_dict()}, opt_tmp)
        os.replace(opt_tmp, optimizer_path(path))
        log_path = self.out_dir / f"{name}.log.json"
        tmp = log_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"name": name, "metadata": {k: v for k, v in metadata.items()},
                                   "train": self.log, "validation": self.valid_log},
                                  separators=(",", ":"), default=str))  # compact: logs ship with the checkpoints
        os.replace(tmp, log_path)
        if final:  # once: the artefacts run to ~150 MB on a GPU, too much to rewrite at every epoch
            self._save_compile_cache()
        return path

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def run(self) -> Path:
        """Main phase on crops, optional fine-tune on whole utterances, final validation and save."""
        t, reserve = self.tcfg, 0.0
        main_budget = None if self.budget_s is None else self.budget_s * (1 - t["finetune_fraction"])
        main_steps = int(t["max_steps"] * (1 - t["finetune_fraction"]))
        data = self.loader(self.dcfg["segment_seconds"], t["batch_size"], 0)
        # a step-0 validation gives the baseline and how long the final validation will take
        t0 = time.monotonic()
        self.valid_log.append(self.validate())
        reserve = 1.5 * (time.monotonic() - t0) + 2.0
        self.net.train()
        while self.step < main_steps:
            if main_budget is not None and self.elapsed() + reserve >= main_budget:
                break
            frac = self.step / main_steps if main_budget is None else self.elapsed() / main_budget
            frac = max(frac, self.step / main_steps)
            self._step_and_log(next(data), _lr_at(self.step, frac, t), "main")
            if self.step % t["steps_per_epoch"] == 0:
                reserve = self._end_epoch()
        if t["finetune_fraction"] > 0:
            # the main phase's weights on disk first: a fine-tune that fails (a new shape to compile)
            # must not take them with it
            self.save(final=False)
            fixed = self.dcfg["finetune_seconds"]
            batch = t["batch_size"] if fixed is None else \
                max(1, round(t["batch_size"] * self.dcfg["segment_seconds"] / float(fixed)))
            data = self.loader(None if fixed is None else float(fixed), batch, 1)
            phase = "finetune" if fixed is None else "finetune-fixed"
            while self.step < t["max_steps"]:
                if self.budget_s is not None and self.elapsed() + reserve >= self.budget_s:
                    break
                phase = self._finetune_step(next(data), t["lr"] * 0.05, phase)
        if not self.valid_log or self.valid_log[-1]["step"] != self.step:
            self.epoch += 1
            self.valid_log.append(self.validate())
        return self.save(final=True)

    def _finetune_step(self, batch: tuple[torch.Tensor, ...], lr: float, phase: str) -> str:
        """One fine-tune step; returns the phase to go on with (eager once compiling the new shape failed)."""
        if phase != "finetune-fixed" or self.finetune_compiled:
            self._step_and_log(batch, lr, phase)
            return phase
        try:  # the first step on the fixed crops compiles their shape
            self._step_and_log(batch, lr, phase)
        except FloatingPointError:
            raise
        except Exception as exc:  # noqa: BLE001 - a compiler failure costs speed, not the fine-tune
            # the failed step raised before the optimiser stepped: its batch runs again eagerly
            self.log.append({"step": self.step, "phase": "finetune-fixed", "event": "compile failed, eager from here",
                             "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]})
            print(f"fine-tune: compiling the {self.dcfg['finetune_seconds']}-s shape failed ({type(exc).__name__});"
                  " going on eagerly", flush=True)
            self.opt.zero_grad(set_to_none=True)
            self._step_and_log(batch, lr, "finetune-eager")
            return "finetune-eager"
        self.finetune_compiled = True
        return phase

    def _step_and_log(self, batch: tuple[torch.Tensor, ...], lr: float, phase: str) -> None:
        parts = self.train_step(*batch, lr, eager=phase in ("finetune", "finetune-eager"))
        if self.step % self.tcfg["log_every"] == 0 or self.step == 1:
            # the one host sync of a logging step; between logs the GPU runs ahead of Python
            values = dict(zip(parts, torch.stack([v.float() for v in parts.values()]).tolist()))
            if not all(math.isfinite(v) for v in values.values()):
                raise FloatingPointError(f"non-finite loss or gradient by step {self.step}: {values}")
            self.log.append({"step": self.step, "phase": phase, "lr": lr, "elapsed_s": round(self.elapsed(), 2),
                             "samples": int(batch[0].numel()), **{k: round(v, 5) for k, v in values.items()}})

    def _end_epoch(self) -> float:
        """Validate and save; returns the time to keep in reserve for the final validation and save."""
        t0 = time.monotonic()
        self.epoch += 1
        self.valid_log.append(self.validate())
        self.save(final=False)
        return 1.5 * (time.monotonic() - t0) + 2.0


def train(config_path_or_dict: str | os.PathLike | dict[str, Any], out_dir: str | os.PathLike,
          device: str | None = None, max_minutes: float | None = None) -> Path:
    """Train one model from a config; returns the final checkpoint path."""
    config = load_config(config_path_or_dict)
    return Trainer(config, Path(out_dir), device, max_minutes).run()


def main(argv: list[str] | None = None) -> None:
    """Command line entry: train one config."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", help="TOML path or a name in exitbench/models/configs")
    p.add_argument("out_dir")
    p.add_argument("--device", default=None)
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for this process")
    p.add_argument("--corpus", default=None, help="corpus root, overriding the config's [data] corpus")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (VALUE read as JSON, else as a string); repeatable")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config)
    if args.corpus:
        config["data"]["corpus"] = args.corpus
    for item in args.set:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not (sep and dot):
            p.error(f"--set wants SECTION.KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        config.setdefault(section, {})[name] = value
    config = load_config(config)  # re-check the overridden keys
    path = train(config, args.out_dir, args.device, args.max_minutes)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
