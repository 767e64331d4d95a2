"""Which device a run's model runs on, and how a run records it."""

from __future__ import annotations

from typing import Any

from exitbench.errors import UsageError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when this process sees a GPU, else ``cpu``; ``cuda``/``cuda:N`` need one."""
    import torch

    device = (device or "auto").strip().lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: this machine has no CUDA device visible to torch")
        if ":" in device and int(device[5:]) >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
        return device
    raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")


def full_float32(device: str) -> None:
    """On a CUDA ``device``: convolutions and matrix products in float32, not TF32 (cuDNN's default is TF32 for
    convolutions: a 10-bit mantissa, about 1e-3 of an output's scale, and a different error for each algorithm
    a batch size picks). A recording's numbers are the model's float32 outputs, whatever the batch."""
    import torch

    if device.startswith("cuda"):
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def describe_device(executor: str, device: str) -> dict[str, Any]:
    """What the manifest records of where a run's model ran."""
    import torch

    out: dict[str, Any] = {"executor": executor, "device": device, "torch": torch.__version__,
                           "cuda": torch.version.cuda, "gpu": None}
    if device.startswith("cuda") and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
        out["tf32"] = bool(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)
    return out
