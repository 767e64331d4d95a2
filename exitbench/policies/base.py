"""The Policy contract, its parameters and requirements, the registry and ``name:k=v,...`` parsing."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from exitbench.errors import UsageError
from exitbench.plugins import Registry
from exitbench.policies.arrays import BlockArrays


class PolicyError(UsageError):
    """A policy that cannot be built or cannot run on a recording; the message says why."""


@dataclass(frozen=True)
class Param:
    """One policy parameter: its type, default, the values a sweep visits, and allowed choices."""

    name: str
    type: type
    default: Any
    sweep: tuple[Any, ...] | None = None  # None: the default only (or policy-specific, e.g. every level)
    choices: tuple[Any, ...] | None = None
    help: str = ""

    def coerce(self, value: Any, policy: str) -> Any:
        """Convert a value (possibly a string from a spec) to the parameter's type, or raise PolicyError."""
        try:
            out = self.type(value)
        except (TypeError, ValueError):
            raise PolicyError(f"{policy}: parameter {self.name}={value!r} is not a {self.type.__name__}") from None
        if self.type is float and not np.isfinite(out):
            raise PolicyError(f"{policy}: parameter {self.name}={value!r} must be finite")
        if self.choices is not None and out not in self.choices:
            raise PolicyError(f"{policy}: parameter {self.name}={value!r} must be one of {list(self.choices)}")
        return out


@dataclass(frozen=True)
class Requirement:
    """Recorded features a policy needs: any one of ``any_of`` (each of alpha, beta, router_logit, dynamic)."""

    any_of: tuple[str, ...]
    what: str  # e.g. "predicted variances (alpha, beta)"
    lacking: str  # e.g. "this recording's model has no variance head"


class Policy(abc.ABC):
    """A pure, seeded map from a recording's BlockArrays to one chosen level per block.

    Subclasses set ``name``, ``params`` and ``requires`` and implement ``choose``; the chosen level
    ``L`` (== num_levels) means the model's dynamic output.
    """

    name: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    requires: ClassVar[tuple[Requirement, ...]] = ()

    def __init__(self, **values: Any):
        known = {p.name: p for p in self.params}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise PolicyError(f"policy {self.name!r} has no parameter {', '.join(unknown)}; "
                              f"its parameters: {', '.join(known) or 'none'}")
        self.values: dict[str, Any] = {}
        for p in self.params:
            self.values[p.name] = p.coerce(values[p.name], self.name) if p.name in values else p.default
            setattr(self, p.name, self.values[p.name])

    @classmethod
    def param(cls, name: str) -> Param:
        """The declared parameter ``name``."""
        for p in cls.params:
            if p.name == name:
                return p
        raise PolicyError(f"policy {cls.name!r} has no parameter {name!r}")

    def check_requirements(self, arrays: BlockArrays) -> None:
        """Raise PolicyError naming what this policy needs and the recording lacks."""
        have = arrays.features()
        for req in self.requires:
            if not have.intersection(req.any_of):
                raise PolicyError(f"{self.name} needs {req.what}, but {req.lacking}")

    def supports(self, arrays: BlockArrays) -> bool:
        """Whether ``check_requirements`` passes."""
        try:
            self.check_requirements(arrays)
        except PolicyError:
            return False
        return True

    @abc.abstractmethod
    def choose(self, arrays: BlockArrays, seed: int = 0) -> np.ndarray:
        """Chosen level per block [K] (int64, 0..L-1, or L for the dynamic output)."""

    def __call__(self, arrays: BlockArrays, seed: int = 0) -> np.ndarray:
        """Check requirements, choose, and check the result's shape and range."""
        self.check_requirements(arrays)
        chosen = np.asarray(self.choose(arrays, seed), dtype=np.int64)
        top = arrays.num_levels + (arrays.dynamic is not None) - 1
        if chosen.shape != (arrays.num_blocks,):
            raise PolicyError(f"{self.name} chose shape {chosen.shape}, expected ({arrays.num_blocks},)")
        if chosen.size and (chosen.min() < 0 or chosen.max() > top):
            raise PolicyError(f"{self.name} chose levels outside 0..{top}")
        return chosen

    def param_string(self) -> str:
        """``k=v,...`` of every parameter, in declaration order."""
        return ",".join(f"{k}={_fmt(v)}" for k, v in self.values.items())

    @classmethod
    def qualified_name(cls) -> str:
        """The name stored with replays and sweeps: a built-in's own, a plug-in's ``module:Class``.

        Two packages may each ship a policy called ``greedy``; their results never mix, and the
        stored name resolves back to the class whether or not the plug-in is registered.
        """
        if cls.__module__ == "exitbench.policies.builtin":
            return cls.name
        return f"{cls.__module__}:{cls.__qualname__}"

    def spec(self) -> str:
        """The string ``parse_policy`` turns back into this policy."""
        params = self.param_string()
        name = self.qualified_name()
        return f"{name}:{params}" if params else name

    def __repr__(self) -> str:
        return f"<policy {self.spec()}>"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.values == self.values  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), tuple(self.values.items())))


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


#: policy name -> Policy subclass; plugins register through the ``exitbench.policies`` entry-point group
POLICIES: Registry[Policy] = Registry(
    "policy",
    "exitbench.policies",
    {
        "static": "exitbench.policies.builtin:Static",
        "uniform": "exitbench.policies.builtin:Uniform",
        "oracle": "exitbench.policies.builtin:Oracle",
        "probabilistic": "exitbench.policies.builtin:Probabilistic",
        "router": "exitbench.policies.builtin:Router",
        "threshold": "exitbench.policies.builtin:Threshold",
    },
    base=Policy, error=PolicyError,
)
BUILTIN_POLICIES = ("static", "uniform", "oracle", "probabilistic", "router", "threshold")


def get_policy_class(name: str) -> type[Policy]:
    """The Policy subclass registered as ``name`` (or a ``module:attr`` target)."""
    return POLICIES.get(name)


def split_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``name[:k=v,...]`` -> (name, {k: v}); the name may itself be a ``module:attr`` target."""
    spec = spec.strip()
    name, params = spec, ""
    head, sep, tail = spec.rpartition(":")
    if sep and ("=" in tail or tail == "" or head in POLICIES.names()):
        name, params = head, tail  # the last ':'-segment is parameters; earlier ones belong to a module:attr
    if not name:
        raise PolicyError(f"policy spec {spec!r} has no name")
    values: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in params.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise PolicyError(f"policy spec {spec!r}: {item!r} is not key=value")
        if key.strip() in values:
            raise PolicyError(f"policy spec {spec!r}: parameter {key.strip()!r} given twice")
        values[key.strip()] = value.strip()
    return name, values


def parse_policy(spec: str) -> Policy:
    """Build a policy from ``name[:k=v,...]``, e.g. ``probabilistic:t=20,p=0.9`` or ``pkg.mod:Cls:t=3``."""
    name, values = split_spec(spec)
    return get_policy_class(name)(**values)


def policy_names() -> Sequence[str]:
    """Every registered policy name."""
    return POLICIES.names()
