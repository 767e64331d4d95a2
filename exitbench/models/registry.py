"""Architecture registry and model resolution: a checkpoint path, a bundled name, or ``module:factory``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from exitbench.models.base import ExitModel
from exitbench.models.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from exitbench.plugins import PluginError, Registry, call_factory

#: architecture name -> factory(config) returning an ExitModel with freshly initialised weights
ARCHITECTURES = Registry(
    "architecture",
    "exitbench.models",
    {
        "press": "exitbench.models.press:build_press",
        "slimdemucs": "exitbench.models.slimdemucs:build_slimdemucs",
    },
)

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"

#: short names for the checkpoints shipped with the package
BUNDLED = {
    "press-s": "press-s.pt",
    "slimdemucs-s": "slimdemucs-s.pt",
}
DEFAULT_MODEL = "press-s"


@dataclass
class ResolvedModel:
    """A model ready to run, with what identifies it in a run id and a manifest."""

    model: ExitModel
    identity: str  # sha256 of the checkpoint bytes, or of the factory target for code-only models
    checkpoint: Checkpoint | None
    source: str  # what the user asked for


def build_from_checkpoint(ckpt: Checkpoint) -> ExitModel:
    """Instantiate the checkpoint's architecture and load its weights."""
    factory: Callable[..., ExitModel] = ARCHITECTURES.get(ckpt.architecture)
    model = call_factory(factory, config=ckpt.config)
    missing, unexpected = model.module.load_state_dict(ckpt.state_dict, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {ckpt.path!r} does not fit architecture {ckpt.architecture!r}:"
            f" missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
        )
    return model.eval()


def resolve_checkpoint_path(name_or_path: str) -> Path | None:
    """The file a model argument names: a bundled short name or an existing path; None otherwise."""
    if name_or_path in BUNDLED:
        return CHECKPOINT_DIR / BUNDLED[name_or_path]
    p = Path(name_or_path)
    return p if p.exists() else None


def resolve_model(name_or_path: str, **factory_kwargs: Any) -> ResolvedModel:
    """Turn ``--model`` into an ExitModel: checkpoint file, bundled name, or ``module:factory``."""
    path = resolve_checkpoint_path(name_or_path)
    if path is not None:
        ckpt = load_checkpoint(path)
        return ResolvedModel(build_from_checkpoint(ckpt), ckpt.sha256, ckpt, name_or_path)
    if ":" in name_or_path:
        try:
            factory = ARCHITECTURES.get(name_or_path)
        except PluginError as exc:
            raise CheckpointError(str(exc)) from exc
        model = call_factory(factory, **factory_kwargs)
        if not isinstance(model, ExitModel):
            raise CheckpointError(f"{name_or_path!r} returned {type(model).__name__}, not an ExitModel")
        ident = hashlib.sha256(
            json.dumps({"factory": name_or_path, "kwargs": factory_kwargs}, sort_keys=True,
                       default=str).encode()
        ).hexdigest()
        return ResolvedModel(model.eval(), ident, None, name_or_path)
    raise CheckpointError(
        f"model {name_or_path!r} is neither a checkpoint file, a bundled model"
        f" ({', '.join(BUNDLED)}), nor a 'module:factory' target"
    )
