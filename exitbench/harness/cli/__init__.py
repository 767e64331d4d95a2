"""The ``exitbench`` command line: a thin layer over the library.

``app`` (the shared Typer app, consoles and error handling) is imported by every command module;
importing this package registers the commands.
"""

from __future__ import annotations

from exitbench.harness.cli.app import app
from exitbench.harness.cli import online, policies, report, results, run, sweep, tables  # noqa: F401  (register commands)

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point: every results root a command reads is one DuckDB connection (views.sessions)."""
    import sys

    from exitbench.results.views import sessions

    with sessions():
        if not results.run_fast(sys.argv[1:]):  # a plain `runs` or `query`: without building the Typer app
            app()
