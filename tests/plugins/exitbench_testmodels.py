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


class DiesOnce(Faulty):
    """Kills its own worker process with SIGKILL on the first forward after ``marker`` is armed."""

    def __init__(self, marker: str):
        super().__init__("ok", 10**12)
        self.marker = marker

    def forward_all(self, mixture: torch.Tensor) -> LevelOutputs:
        import os
        import signal
        from pathlib import Path

        armed = Path(self.marker)
        if armed.exists():
            armed.unlink()  # only once: the restarted actor's retry must succeed
            os.kill(os.getpid(), signal.SIGKILL)
        return super().forward_all(mixture)


def dies_once() -> ExitModel:
    """SIGKILLs its worker once, when the file named by EXITBENCH_TEST_KILL_MARKER exists."""
    import os

    return DiesOnce(os.environ.get("EXITBENCH_TEST_KILL_MARKER", "/nonexistent"))


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


def dies_n() -> ExitModel:
    """SIGKILLs its worker as many times as the file named by EXITBENCH_TEST_KILL_COUNT says."""
    import os

    return DiesN(os.environ.get("EXITBENCH_TEST_KILL_COUNT", "/nonexistent"))


def buggy() -> ExitModel:
    """A factory with a bug in it: exitbench must call it an internal error, not the user's mistake."""
    return None + 1  # type: ignore[operator]
