"""exitbench: an evaluation harness for dynamic-compute (early-exit, slimmable) speech models."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
SCHEMA_VERSION = 1  # bump when a Parquet table's columns change meaning; enters the run id

if TYPE_CHECKING:
    from exitbench.api import Results

# ``open`` is left out of ``from exitbench import *`` so that it never shadows the builtin
__all__ = ["SCHEMA_VERSION", "__version__"]


def open(root: str | os.PathLike) -> Results:  # noqa: A001  (exitbench.open, like io.open)
    """Open a results root for reading: ``exitbench.open("results").runs()`` (see exitbench.api.Results)."""
    from exitbench.api import Results

    return Results(root)


def __getattr__(name: str) -> Any:
    """``exitbench.Results`` imported on first use (``import exitbench`` stays light)."""
    if name == "Results":
        from exitbench.api import Results

        return Results
    raise AttributeError(f"module 'exitbench' has no attribute {name!r}")
