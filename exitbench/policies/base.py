"""The Policy contract, its parameters and requirements, the registry and ``name:k=v,...`` parsing."""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from exitbench.errors import UsageError
from exitbench.plugins import Registry
from exitbench.policies.arrays import BlockArrays


class PolicyError(UsageError):
    """A policy that cannot be built or cannot run on a recording; the message says why."""


class ParamValueError(ValueError):
    """Raised by a parameter type for a value it cannot take; the message says what it expects."""


@dataclass(frozen=True)
class Range:
    """The numbers a parameter may take: an interval, either end open, closed or absent."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, x: object) -> bool:
        if not isinstance(x, (int, float, np.integer, np.floating)) or isinstance(x, bool):
            return True  # a non-number (a level name) is checked elsewhere
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        return not (self.high is not None and (x >= self.high if self.high_open else x > self.high))

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '≥'} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '≤'} {self.high:g}"
        return "any number"


def level(value: Any) -> int | str:
    """A level parameter's value: an index (an int, or digits in a spec) or a level's name (resolved per run)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[+-]?[0-9]+", text):
            return int(text)
        if text:
            return text
    raise ParamValueError("a level index (0, 1, ...) or a level name")


def reference_power(value: Any) -> str | float:
    """SNR_ref's reference power: ``mixture`` (each utterance's mixture power) or a fixed level in dBFS."""
    if isinstance(value, str) and value.strip().lower() == "mixture":
        return "mixture"
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ParamValueError("'mixture' or a reference power in dBFS (a number)") from None
    if not np.isfinite(out):
        raise ParamValueError("'mixture' or a finite reference power in dBFS")
    return out


def nonempty(value: Any) -> str:
    """A non-empty name (surrounding space removed)."""
    text = str(value).strip()
    if not text:
        raise ParamValueError("a non-empty name")
    return text


@dataclass(frozen=True)
class Param:
    """One policy parameter: its type, default, the values a sweep visits, allowed choices and range."""

    name: str
    type: Callable[[Any], Any]  # int, float, str, or a parser such as ``level`` (may raise ParamValueError)
    default: Any
    sweep: tuple[Any, ...] | None = None  # None: the default only (or policy-specific, e.g. every level)
    choices: tuple[Any, ...] | None = None
    help: str = ""
    range: Range | None = None  # numbers outside it are refused when the policy is built
    omit_default: bool = False  # left out of the spec at its default (so older specs keep their meaning and name)

    def coerce(self, value: Any, policy: str) -> Any:
        """Convert a value (possibly a string from a spec) to the parameter's type, or raise PolicyError."""
        try:
            out = self.type(value)
        except ParamValueError as exc:
            raise PolicyError(f"{policy}: parameter {self.name}={value!r} is not {exc}") from None
        except (TypeError, ValueError):
            what = getattr(self.type, "__name__", "valid value")
            raise PolicyError(f"{policy}: parameter {self.name}={value!r} is not a {what}") from None
        if self.type is float and not np.isfinite(out):
            raise PolicyError(f"{policy}: parameter {self.name}={value!r} must be finite")
        if self.choices is not None and out not in self.choices:
            raise PolicyError(f"{policy}: parameter {self.name}={value!r} must be one of {list(self.choices)}")
        if self.range is not None and out not in self.range:
            raise PolicyError(f"{policy}: parameter {self.name}={value!r} is out of range: {self.name} must be"
                              f" {self.range}")
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

    def level_index(self, name: str, arrays: BlockArrays) -> int:
        """Level parameter ``name`` (an index or a level's name) as an index of the arrays' static levels.

        A name is looked up in ``arrays.level_names`` (the run's levels table); digits always mean an
        index. Raises PolicyError, in one line, for an unknown name or an index out of range.
        """
        value, top = self.values[name], arrays.num_levels - 1
        if isinstance(value, str):
            names = arrays.level_names
            if names is None:
                raise PolicyError(f"{self.name}: {name}={value!r} is a level name, but these block arrays do not"
                                  f" carry the run's level names; give its index (0..{top}) or replay through the"
                                  f" run (exitbench.open(root).replay)")
            if value not in names:
                raise PolicyError(f"{self.name}: no level named {value!r}; this run's levels are"
                                  f" {', '.join(names)} (or their indices 0..{top})")
            return names.index(value)
        if not 0 <= value <= top:
            raise PolicyError(f"{self.name}: level {value} out of range 0..{top}")
        return int(value)

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

    # -- online execution (harness.online): the policy inside the model, between exits ----------------
    #: whether the policy can decide between exits: its decision at level l reads only the model's outputs
    #: at level l (never the reference, never a deeper level), so stopping there gives ``choose``'s choice
    online: bool = False

    def stops(self, step: BlockArrays, level: int, levels: Sequence[str]) -> np.ndarray:
        """Online: whether each running block of ``step`` (one level: ``level`` of the model's ``levels``) exits now.

        For every block, the first level where this is True must be ``choose``'s level on the whole
        recording; the last level always stops (the runner sees to it).
        """
        raise PolicyError(f"{self.name} cannot run online: its choice reads more than the current level's"
                          f" outputs (online policies: {', '.join(online_policy_names())})")

    def reads_estimate(self) -> bool:
        """Online: whether ``stops`` reads the current level's waveform (else it is decoded only where a block exits)."""
        return True

    def __call__(self, arrays: BlockArrays, seed: int = 0) -> np.ndarray:
        """Check requirements, choose, and check the result's shape and range."""
        self.check_requirements(arrays)
        chosen = np.asarray(self.choose(arrays, seed), dtype=np.int64)
        top = arrays.num_levels + (arrays.dynamic is not None) - 1
        expected = (arrays.num_blocks, arrays.num_sources) if self.values.get("per_source") else (arrays.num_blocks,)
        if chosen.shape != expected:
            raise PolicyError(f"{self.name} chose shape {chosen.shape}, expected {expected}")
        if chosen.size and (chosen.min() < 0 or chosen.max() > top):
            raise PolicyError(f"{self.name} chose levels outside 0..{top}")
        return chosen

    def param_string(self) -> str:
        """``k=v,...`` of every parameter in declaration order (those with ``omit_default`` only off their default)."""
        return ",".join(f"{p.name}={_fmt(self.values[p.name])}" for p in self.params
                        if not (p.omit_default and self.values[p.name] == p.default))

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
        "oracle-best": "exitbench.policies.builtin:OracleBest",
        "probabilistic": "exitbench.policies.builtin:Probabilistic",
        "router": "exitbench.policies.builtin:Router",
        "threshold": "exitbench.policies.builtin:Threshold",
        "budget": "exitbench.policies.builtin:Budget",
        "learned": "exitbench.policies.builtin:Learned",
    },
    base=Policy, error=PolicyError,
)
#: the built-ins a sweep visits when none are named (``oracle-best`` is swept only when named)
BUILTIN_POLICIES = ("static", "uniform", "oracle", "probabilistic", "router", "threshold", "budget")


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


def online_policy_names() -> list[str]:
    """The built-in policies that can run online (``Policy.online``)."""
    return [n for n in BUILTIN_POLICIES if get_policy_class(n).online]


def policy_names() -> Sequence[str]:
    """Every registered policy name."""
    return POLICIES.names()
