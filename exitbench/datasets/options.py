"""Parsing of loader options, which arrive as ``--dataset-opt key=value`` strings or as Python values.

Every parser raises DatasetError with one line naming the option, the value and what was expected,
so a typo stops the run with exit code 2 instead of a traceback deep inside a loader.
"""

from __future__ import annotations

import math
from typing import Any, overload

from exitbench.datasets.base import DatasetError

_TRUE = ("1", "true", "yes", "on", "y")
_FALSE = ("0", "false", "no", "off", "n", "")


def as_bool(value: Any, option: str = "resample") -> bool:
    """Parse a bool option that may arrive as a ``key=value`` string."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise DatasetError(f"option {option}={value!r}: expected true or false")


@overload
def as_int(value: Any, option: str, minimum: int | None = ..., *, default: int) -> int: ...


@overload
def as_int(value: Any, option: str, minimum: int | None = ..., default: None = ...) -> int | None: ...


def as_int(value: Any, option: str, minimum: int | None = None, default: int | None = None) -> int | None:
    """Parse an int option; None or '' gives ``default``, and a value below ``minimum`` is refused."""
    if value is None or value == "":
        return default
    # bool is an int subclass and 2.5 would silently truncate: neither is what the user meant
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise DatasetError(f"option {option}={value!r}: expected an integer")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise DatasetError(f"option {option}={value!r}: expected an integer") from None
    if minimum is not None and number < minimum:
        raise DatasetError(f"option {option}={value!r}: must be at least {minimum}")
    return number


def as_float(value: Any, option: str, default: float, above: float | None = None) -> float:
    """Parse a finite float option; None or '' gives ``default``, and a value not above ``above`` is refused."""
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"option {option}={value!r}: expected a number") from None
    if not math.isfinite(number):
        raise DatasetError(f"option {option}={value!r}: expected a finite number")
    if above is not None and number <= above:
        raise DatasetError(f"option {option}={value!r}: must be greater than {above:g}")
    return number


def parse_rate(value: Any, option: str = "rate") -> int:
    """'8k' -> 8000, '16000' -> 16000 (the folder names of the mixing scripts use the 'k' form)."""
    text = str(value).strip().lower()
    try:
        rate = int(float(text[:-1]) * 1000) if text.endswith("k") else int(text)
    except ValueError:
        raise DatasetError(f"option {option}={value!r}: expected e.g. 8k or 16000") from None
    if rate < 1:
        raise DatasetError(f"option {option}={value!r}: must be at least 1 Hz")
    return rate
