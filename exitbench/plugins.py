"""Lazy plugin registries: names map to ``module:attr`` targets or entry points, imported on use."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, TypeVar

from exitbench.errors import UsageError


T = TypeVar("T")


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


class Registry(Generic[T]):
    """Name -> lazily imported plug-in; built-ins first, then the entry-point group, then ``module:attr``.

    One typed registry for every kind of plug-in: ``base`` is the class its entries are (``produces``
    False: a policy class must subclass it) or build (``produces`` True: a factory must return an
    instance of it). Every failure raises ``error`` (a PluginError unless the kind has its own), with
    the same wording for every kind; ``register`` refuses to replace a name silently.
    """

    def __init__(self, kind: str, group: str, builtins: dict[str, str], base: type[T] | None = None,
                 produces: bool = False, error: type[UsageError] = PluginError):
        self.kind = kind
        self.group = group
        self.base = base
        self.produces = produces
        self.error = error
        self._targets: dict[str, str] = dict(builtins)
        self._objects: dict[str, Any] = {}

    def register(self, name: str, obj_or_target: Any, replace: bool = False) -> None:
        """Register an object, or a ``module:attr`` string resolved on first use (``replace`` to overwrite)."""
        if not replace and name in self.names():
            raise self.error(f"{self.kind} {name!r} is already registered; pass replace=True to replace it")
        self._objects.pop(name, None)
        self._targets.pop(name, None)
        if isinstance(obj_or_target, str):
            self._targets[name] = obj_or_target
        else:
            self._objects[name] = self._checked(name, obj_or_target)

    def unregister(self, name: str) -> None:
        """Forget a registered name (built-ins and entry points come back on the next lookup)."""
        self._objects.pop(name, None)

    def _entry_points(self) -> dict[str, Any]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def names(self) -> list[str]:
        """Every known name: built-ins, registered objects and installed entry points."""
        return sorted(set(self._targets) | set(self._objects) | set(self._entry_points()))

    def _checked(self, name: str, obj: Any) -> Any:
        if self.base is None:
            return obj
        if self.produces:
            if not callable(obj):
                raise self.error(f"{self.kind} {name!r} resolves to {obj!r}, which is not callable (a factory"
                                 f" returning a {self.base.__name__} was expected)")
        elif not (isinstance(obj, type) and issubclass(obj, self.base)):
            raise self.error(f"{self.kind} {name!r} resolves to {obj!r}, which is not a {self.base.__name__}"
                             f" subclass")
        return obj

    def get(self, name: str) -> Any:
        """Resolve ``name`` (a registered name or a ``module:attr`` target) to its checked object."""
        if name in self._objects:
            return self._objects[name]
        try:
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
        except PluginError as exc:
            if self.error is PluginError:
                raise
            raise self.error(str(exc)) from None
        obj = self._checked(name, obj)
        self._objects[name] = obj
        return obj

    def instance(self, name: str, obj: Any) -> T:
        """``obj`` (what the factory ``name`` returned) if it is an instance of ``base``; else the error."""
        if self.base is not None and not isinstance(obj, self.base):
            raise self.error(f"{self.kind} {name!r} returned {type(obj).__name__}, not a {self.base.__name__}")
        return obj

    def build(self, name: str, **kwargs: Any) -> T:
        """Call the factory ``name`` with the keyword arguments it accepts and check what it returns."""
        return self.instance(name, call_factory(self.get(name), **kwargs))

    def __contains__(self, name: str) -> bool:
        return name in self.names()


def call_factory(factory: Callable[..., Any], **kwargs: Any) -> Any:
    """Call a factory with only the keyword arguments it accepts."""
    import inspect

    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return factory(**kwargs)
    return factory(**{k: v for k, v in kwargs.items() if k in params})
