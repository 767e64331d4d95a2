"""Test-only model factories, reached through the ``module:factory`` plug-in path like a user's own."""

from __future__ import annotations

import torch

from exitbench.models.base import ExitModel, LevelOutputs
from exitbench.models.registry import resolve_model


class Faulty(ExitModel):
    """Wraps the shipped separator; misbehaves on mixtures longer than ``threshold`` samples."""

    def __init__(self, mode: str, threshold: int):
        self.inner = resolve_model("press-s").model
        self.module = self.inner.module
        self.levels, self.sample_rate = self.inner.levels, self.inner.sample_rate
        self.num_sources, self.block_size = self.inner.num_sources, self.inner.block_size
        self.mode, self.threshold = mode, threshold

    def macs_per_sample(self, level: int | str) -> float:
        return self.inner.macs_per_sample(level)

    def forward_all(self, mixture: torch.Tensor) -> LevelOutputs:
        out = self.inner.forward_all(mixture)
        if mixture.shape[-1] > self.threshold:
            if self.mode == "raise":
                raise RuntimeError("CUDA-like failure inside the model")
            out.estimates[1, 0, 100] = float("nan")
        return out


def nan_on_long() -> ExitModel:
    """Emits NaN at exit 2 for mixtures longer than 2 s at 8 kHz."""
    return Faulty("nan", 16000)


def raise_on_long() -> ExitModel:
    """Raises for mixtures longer than 2 s at 8 kHz."""
    return Faulty("raise", 16000)


class DiesN(Faulty):
    """SIGKILLs its worker while the number in ``marker`` is positive, counting it down each time."""

    def __init__(self, marker: str):
        super().__init__("ok", 10**12)
        self.marker = marker

    def forward_all(self, mixture: torch.Tensor) -> LevelOutputs:
        import os
        import signal
        from pathlib import Path

        path = Path(self.marker)
        left = int(path.read_text() or 0) if path.exists() else 0
        if left > 0:
            path.write_text(str(left - 1))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().forward_all(mixture)


def dies_once() -> ExitModel:
    """SIGKILLs its worker once, when the file named by EXITBENCH_TEST_KILL_MARKER holds "1"."""
    import os

    return DiesN(os.environ.get("EXITBENCH_TEST_KILL_MARKER", "/nonexistent"))


def dies_n() -> ExitModel:
    """SIGKILLs its worker as many times as the file named by EXITBENCH_TEST_KILL_COUNT says."""
    import os

    return DiesN(os.environ.get("EXITBENCH_TEST_KILL_COUNT", "/nonexistent"))


def buggy() -> ExitModel:
    """A factory with a bug in it: exitbench must call it an internal error, not the user's mistake."""
    return None + 1  # type: ignore[operator]


# -- a user's own architecture, wrapped with the adapter toolkit ----------------------------------
class TinyTasNet(torch.nn.Module):
    """A small Conv-TasNet-like separator: encoder, three repeats of dilated convs, a mask decoder."""

    def __init__(self, hidden: int = 16, repeats: int = 3, sources: int = 2):
        super().__init__()
        self.sources, self.hidden = sources, hidden
        self.encoder = torch.nn.Conv1d(1, hidden, 16, stride=8, padding=8)
        self.repeats = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Conv1d(hidden, hidden, 3, padding=2 ** r, dilation=2 ** r), torch.nn.PReLU())
            for r in range(repeats))
        self.mask = torch.nn.Conv1d(hidden, hidden * sources, 1)
        self.decoder = torch.nn.ConvTranspose1d(hidden, 1, 16, stride=8, padding=8)

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:  # [1, N] -> features of the last repeat
        h = torch.relu(self.encoder(mixture[:, None]))
        for block in self.repeats:
            h = h + block(h)
        return h

    def decode(self, feats: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
        """The exit head shared by every repeat: masks on the encoder output, decoded per source."""
        w = torch.relu(self.encoder(mixture[:, None]))
        m = torch.sigmoid(self.mask(feats)).view(feats.shape[0], self.sources, self.hidden, -1)
        return self.decoder((m * w[:, None]).flatten(0, 1)).view(feats.shape[0], self.sources, -1)


def tiny_exits(seed: int = 0, hidden: int = 16, block_size: int = 2000) -> ExitModel:
    """TinyTasNet with an exit after each repeat, weights drawn from ``seed``."""
    from exitbench.models.adapters import MultiExitAdapter

    torch.manual_seed(seed)
    net = TinyTasNet(hidden)
    return MultiExitAdapter(net, taps=[f"repeats.{i}" for i in range(3)],
                            head=lambda level, feats, mixture: net.decode(feats, mixture),
                            sample_rate=8000, num_sources=2, block_size=block_size)


def env_seeded() -> ExitModel:
    """tiny_exits with weights from EXITBENCH_TEST_SEED (a user's environment-dependent factory)."""
    import os

    return tiny_exits(seed=int(os.environ.get("EXITBENCH_TEST_SEED", "0")))


class _Broken(ExitModel):
    """The shipped separator with one thing wrong, as a user's adapter might have it."""

    def __init__(self, what: str):
        self.inner = resolve_model("press-s").model
        self.what = what
        if what != "no_module":
            self.module = self.inner.module
        self.levels = ("a", "a", "b", "c") if what == "dup_levels" else self.inner.levels
        self.sample_rate, self.num_sources, self.block_size = 8000, 2, 2000

    def macs_per_sample(self, level: int | str) -> float:
        if self.what == "zero_macs":
            return 0.0
        if self.what == "falling_macs":
            return 10.0 - self.level_index(level)
        return self.inner.macs_per_sample(level)

    def forward_all(self, mixture: torch.Tensor) -> LevelOutputs:
        out = self.inner.forward_all(mixture)
        if self.what == "bad_shape":
            out.estimates = out.estimates[:, :1]
        elif self.what == "int_dtype":
            out.estimates = out.estimates.to(torch.int32)
        elif self.what == "nan":
            out.estimates[0, 0, 0] = float("nan")
        return out


def broken(what: str) -> ExitModel:
    """A contract mistake by name: no_module, dup_levels, zero_macs, falling_macs, bad_shape, int_dtype, nan."""
    return _Broken(what)


class _NoMacs(ExitModel):
    levels = ("exit1",)

    def forward_all(self, mixture: torch.Tensor) -> LevelOutputs:  # pragma: no cover - never built
        raise AssertionError


def no_macs() -> ExitModel:
    """An adapter that forgot to implement macs_per_sample."""
    return _NoMacs()


def tiny_gaussian(seed: int = 0) -> ExitModel:
    """TinyTasNet whose exits also predict a Gaussian error variance per frame and report agreement."""
    from exitbench.models.adapters import MultiExitAdapter

    torch.manual_seed(seed)
    net = TinyTasNet(16)
    net.var_head = torch.nn.Conv1d(16, 2, 1)  # one log-variance per source and frame

    def head(level: int, feats: torch.Tensor, mixture: torch.Tensor) -> dict:
        sigma2 = torch.nn.functional.softplus(net.var_head(feats))[0] * 1e-3 + 1e-6  # [S, frames]
        return {"estimate": net.decode(feats, mixture), "sigma2": sigma2,
                "scores": {"confidence": -sigma2.mean().log10()}}  # one number per exit: every block

    return MultiExitAdapter(net, taps=[f"repeats.{i}" for i in range(3)], head=head, sample_rate=8000,
                            num_sources=2, block_size=2000, uncertainty="gaussian", variance_hop=8,
                            scores=("agreement",))


class _SilentExit(Faulty):
    """The shipped separator with exit ``level``'s estimate of source 0 all zeros (a dead exit head)."""

    def __init__(self, level: int):
        super().__init__("ok", 10**12)
        self.silent_level = level

    def forward_all(self, mixture: torch.Tensor) -> LevelOutputs:
        out = self.inner.forward_all(mixture)
        out.estimates[self.silent_level, :] = 0.0
        return out


def silent_exit(level: int = 0) -> ExitModel:
    """press-s whose exit ``level`` outputs silence for both sources."""
    return _SilentExit(level)


class _RaisesOnLongPass(Faulty):
    """press-s separating each block on its own (chunk-safe); raises on any pass over more than 2.5 s at 8 kHz."""

    chunk_safe = True

    def __init__(self) -> None:
        super().__init__("raise", 20000)
        self.inner = resolve_model("press-s", {"chunked": "true"}).model
        self.module = self.inner.module


def raise_on_long_pass() -> ExitModel:
    """Chunk-safe; a --batch row of short utterances fails as a whole, so only its long utterances may fail alone."""
    return _RaisesOnLongPass()
