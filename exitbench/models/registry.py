"""Architecture registry and model resolution: a checkpoint path, a bundled name, or ``module:factory``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from exitbench.models.base import ExitModel
from exitbench.models.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from exitbench.plugins import Registry

#: architecture name -> factory(config) returning an ExitModel with freshly initialised weights
ARCHITECTURES: Registry[ExitModel] = Registry(
    "architecture",
    "exitbench.models",
    {
        "press": "exitbench.models.press:build_press",
        "slimdemucs": "exitbench.models.slimdemucs:build_slimdemucs",
    },
    base=ExitModel, produces=True, error=CheckpointError,
)

from exitbench.models import BUNDLED, CHECKPOINT_DIR, DEFAULT_MODEL  # noqa: E402,F401  (light: no torch)


@dataclass
class ResolvedModel:
    """A model ready to run, with what identifies it in a run id and a manifest."""

    model: ExitModel
    identity: str  # sha256 of the checkpoint bytes, or of target + arguments + content for code-only models
    checkpoint: Checkpoint | None
    source: str  # what the user asked for


def build_from_checkpoint(ckpt: Checkpoint) -> ExitModel:
    """Instantiate the checkpoint's architecture and load its weights."""
    model = ARCHITECTURES.build(ckpt.architecture, config=ckpt.config)
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


def _typed(text: str, annotation: Any, default: Any) -> Any:
    """A ``--model-arg`` value typed by the factory's annotation or default (else the literal's own type)."""
    kind = annotation if annotation in (bool, int, float, str) else (
        type(default) if isinstance(default, (bool, int, float, str)) else None)
    if isinstance(annotation, str):  # postponed annotations ("int", "float | None", ...)
        kind = next((t for t in (bool, int, float, str) if annotation.split("|")[0].strip() == t.__name__), kind)
    low = text.strip().lower()
    if kind is bool or (kind is None and low in ("true", "false")):
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if kind is str:
        return text
    for cast in ((int,) if kind is int else (float,) if kind is float else (int, float)):
        try:
            return cast(text)
        except ValueError:
            continue
    if kind in (int, float):
        raise ValueError(f"expected {'an integer' if kind is int else 'a number'}")
    return text


def coerce_model_args(factory: Callable[..., Any], target: str, args: Mapping[str, str]) -> dict[str, Any]:
    """``--model-arg key=value`` strings as the factory's typed keyword arguments (UsageError otherwise)."""
    import inspect

    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    out: dict[str, Any] = {}
    for key, text in args.items():
        p = params.get(key)
        if p is None and not takes_any:
            known = [n for n, q in params.items() if q.kind in (q.POSITIONAL_OR_KEYWORD, q.KEYWORD_ONLY)]
            raise CheckpointError(f"--model-arg {key}={text}: {target} takes no argument {key!r};"
                                  f" its arguments: {', '.join(known) or 'none'}")
        try:
            out[key] = _typed(text, p.annotation if p else None, p.default if p else None)
        except ValueError as exc:
            raise CheckpointError(f"--model-arg {key}={text}: {exc}") from None
    return out


def _effective_args(factory: Callable[..., Any], args: Mapping[str, str]) -> list[tuple[str, str]]:
    """The factory's arguments as called, defaults included: giving a default explicitly is the same model."""
    import inspect

    try:
        sig = inspect.signature(factory)
        bound = sig.bind_partial(**coerce_model_args(factory, "", args))
    except (TypeError, ValueError):
        return sorted(args.items())
    bound.apply_defaults()
    return sorted((k, repr(v)) for k, v in bound.arguments.items()
                  if sig.parameters[k].kind not in (inspect.Parameter.VAR_POSITIONAL,))


def _call(factory: Callable[..., Any], target: str, kwargs: dict[str, Any]) -> Any:
    """Call a model factory; missing arguments and unimplemented abstract methods are the user's to fix."""
    import inspect

    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        raise CheckpointError(f"{target}: {exc} (pass it with --model-arg key=value)") from None
    except ValueError:
        pass  # no signature to check (a builtin): let the call say
    try:
        return factory(**kwargs)
    except TypeError as exc:
        if "abstract" in str(exc):  # an ExitModel subclass that lacks forward_all or macs_per_sample
            raise CheckpointError(f"{target}: {exc}; an ExitModel implements forward_all(mixture) and"
                                  f" macs_per_sample(level)") from None
        raise


def apply_execution_options(model: ExitModel, source: str, args: Mapping[str, str]) -> dict[str, Any]:
    """Set a checkpoint model's ``execution_options`` from ``--model-arg`` text; returns them typed."""
    allowed = getattr(model, "execution_options", {}) or {}
    out: dict[str, Any] = {}
    for key, text in args.items():
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise CheckpointError(f"--model-arg applies to module:factory models and to a checkpoint's execution"
                                  f" options; {source!r} is a checkpoint (its config is stored in it) and {key!r}"
                                  f" is not one of its execution options ({known})")
        try:
            out[key] = _typed(str(text), allowed[key], None)
        except ValueError as exc:
            raise CheckpointError(f"--model-arg {key}={text}: {exc}") from None
        model.set_execution_option(key, out[key])
    return out


def resolve_model(name_or_path: str, model_args: Mapping[str, str] | None = None, check: bool = True,
                  block_size: int | None = None) -> ResolvedModel:
    """Turn ``--model`` into an ExitModel: checkpoint file, bundled name, or ``module:factory``.

    ``model_args`` reach a factory as typed keyword arguments; ``block_size`` overrides the
    model's; ``check`` runs the contract check (models.contract) before anything else uses it.
    The identity is the checkpoint's bytes, or for code-only models a hash of the target, its
    arguments and the model's own ``identity()`` (weights, buffers, declared description).
    """
    from exitbench.models.contract import check_model

    args = dict(model_args or {})
    path = resolve_checkpoint_path(name_or_path)
    if path is not None:
        ckpt = load_checkpoint(path)
        model = build_from_checkpoint(ckpt)
        options = apply_execution_options(model, name_or_path, args)
        if block_size is not None:
            model.set_block_size(block_size)
        if check:
            check_model(model, name_or_path)
        # options change what the model computes, so they enter the identity (and the run id)
        ident = ckpt.sha256 if not options else hashlib.sha256(json.dumps(
            {"checkpoint": ckpt.sha256, "options": options}, sort_keys=True).encode()).hexdigest()
        return ResolvedModel(model, ident, ckpt, name_or_path)
    if ":" in name_or_path:
        factory = ARCHITECTURES.get(name_or_path)
        model = ARCHITECTURES.instance(name_or_path,
                                       _call(factory, name_or_path, coerce_model_args(factory, name_or_path, args)))
        if block_size is not None:
            model.set_block_size(block_size)
        if check:
            check_model(model, name_or_path)
        model.eval()
        ident = hashlib.sha256(json.dumps({"factory": name_or_path, "args": _effective_args(factory, args),
                                           "content": model.identity()}, sort_keys=True,
                                          default=str).encode()).hexdigest()
        return ResolvedModel(model, ident, None, name_or_path)
    raise CheckpointError(
        f"model {name_or_path!r} is neither a checkpoint file, a bundled model"
        f" ({', '.join(BUNDLED)}), nor a 'module:factory' target"
    )
