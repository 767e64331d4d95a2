"""The checkpoint file format: one torch file holding architecture, config, weights and metadata."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from exitbench.errors import UsageError

FORMAT = "exitbench-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(UsageError):
    """A checkpoint that cannot be read or does not follow the format."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``architecture`` names a registered factory that takes ``config``."""

    architecture: str
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    path: str = ""

    @property
    def step(self) -> int | None:
        """Training step if the metadata records one."""
        step = self.metadata.get("step")
        return int(step) if step is not None else None


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, as hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, architecture: str, config: dict[str, Any],
                    state_dict: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None,
                    storage_dtype: torch.dtype | None = None) -> str:
    """Write a checkpoint atomically (temporary file, then rename); returns its sha256.

    ``storage_dtype`` (e.g. torch.float16) stores the floating-point tensors at that precision, half
    the bytes of a shipped float32 model; ``load_state_dict`` casts them back to the module's dtype, so
    the model computes with the rounded weights (figures must be measured on the file as stored)."""
    if storage_dtype is not None:
        state_dict = {k: v.to(storage_dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
        metadata = {**(metadata or {}), "storage_dtype": str(storage_dtype).removeprefix("torch.")}

    def plain(obj: dict[str, Any]) -> dict[str, Any]:
        # plain JSON types only: checkpoints are read back with torch.load(weights_only=True),
        # which refuses numpy scalars and other objects
        return json.loads(json.dumps(obj, default=lambda v: v.item() if hasattr(v, "item") else str(v)))

    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "config": plain(dict(config)),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()},
        "metadata": plain(dict(metadata or {})),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; checkpoints are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint and compute its sha256; raise CheckpointError with a reason if it is bad."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    data = path.read_bytes()
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {first}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an exitbench checkpoint (no format={FORMAT!r} key)")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{str(path)!r} has format version {payload['format_version']},"
                              f" newer than this exitbench reads ({FORMAT_VERSION})")
    return Checkpoint(
        architecture=payload["architecture"],
        config=payload.get("config", {}),
        state_dict=payload["state_dict"],
        metadata=payload.get("metadata", {}),
        sha256=hashlib.sha256(data).hexdigest(),
        path=str(path),
    )
