"""Lazy plugin registries: names map to ``module:attr`` targets or entry points, imported on use."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Callable

from exitbench.errors import UsageError


class PluginError(UsageError):
    """A plugin name or target that cannot be resolved; the message says what is known."""


def import_target(target: str) -> Any:
    """Import ``package.module:attr`` (attr may be dotted) and return the attribute."""
    if ":" not in target:
        raise PluginError(f"{target!r} is not a 'module:attr' target")
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(f"cannot import module {module_name!r} for {target!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise PluginError(f"module {module_name!r} has no attribute {attr!r}") from exc
    return obj


class Registry:
    """Name -> lazily imported object; built-ins first, then the entry-point group, then ``module:attr``."""

    def __init__(self, kind: str, group: str, builtins: dict[str, str]):
        self.kind = kind
        self.group = group
        self._targets: dict[str, str] = dict(builtins)
        self._objects: dict[str, Any] = {}

    def register(self, name: str, obj_or_target: Any) -> None:
        """Register an object, or a ``module:attr`` string resolved on first use."""
        if isinstance(obj_or_target, str):
            self._targets[name] = obj_or_target
            self._objects.pop(name, None)
        else:
            self._objects[name] = obj_or_target

    def _entry_points(self) -> dict[str, Any]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def names(self) -> list[str]:
        """Every known name: built-ins, registered objects and installed entry points."""
        return sorted(set(self._targets) | set(self._objects) | set(self._entry_points()))

    def get(self, name: str) -> Any:
        """Resolve ``name`` (a registered name or a ``module:attr`` target) to its object."""
        if name in self._objects:
            return self._objects[name]
        if name in self._targets:
            obj = import_target(self._targets[name])
        else:
            eps = self._entry_points()
            if name in eps:
                obj = eps[name].load()
            elif ":" in name:
                obj = import_target(name)
            else:
                raise PluginError(
                    f"unknown {self.kind} {name!r}; known: {', '.join(self.names()) or 'none'}"
                    f" (or give a 'module:attr' target, or install a package with a"
                    f" '{self.group}' entry point)"
                )
        self._objects[name] = obj
        return obj

    def __contains__(self, name: str) -> bool:
        return name in self.names()


def call_factory(factory: Callable[..., Any], **kwargs: Any) -> Any:
    """Call a factory with only the keyword arguments it accepts."""
    import inspect

    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return factory(**kwargs)
    return factory(**{k: v for k, v in kwargs.items() if k in params})
