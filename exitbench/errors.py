"""One error hierarchy for exitbench; each class carries the command line's exit code.

Exit codes mean one thing each:

==== ==========================================================================================
0    success
1    what was evaluated failed: some utterances failed (each has a row in the run's ``errors``
     table: the data's fault), or ``compare``/``history`` found a regression (the candidate's)
2    bad input: an option, a file, a test set, a model or a policy that cannot be used
3    the results root is unavailable: the run is locked by another process, the root is not a
     directory, does not exist (read commands), is not writable, or has no space left
4    workers lost: the cluster lost every model worker for longer than the wait, or a shard kept
     losing its worker; finished shards are kept and the same command resumes
5    internal error: a bug in exitbench or a plug-in (the only case with a traceback, which also
     goes to ``<results root>/_logs/``)
130  interrupted (Ctrl-C); finished shards are kept
==== ==========================================================================================

This module imports nothing of exitbench's, so every layer may raise these.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_UTTERANCES_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_RESULTS_ROOT = 3
EXIT_WORKERS_LOST = 4
EXIT_INTERNAL = 5
EXIT_INTERRUPTED = 130

#: the table above as (code, meaning) pairs, for --help texts and the README check
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success"),
    (EXIT_UTTERANCES_FAILED, "what was evaluated failed: some utterances failed (rows of the errors table),"
                             " or compare/history found a regression"),
    (EXIT_BAD_INPUT, "bad input"),
    (EXIT_RESULTS_ROOT, "results root unavailable (locked, not a directory, missing, not writable, no space)"),
    (EXIT_WORKERS_LOST, "the cluster lost its workers (finished shards kept; rerun resumes)"),
    (EXIT_INTERNAL, "internal error (traceback, also in <root>/_logs/)"),
    (EXIT_INTERRUPTED, "interrupted (finished shards kept; rerun resumes)"),
)


class ExitbenchError(Exception):
    """Base of every error exitbench reports as one line; ``exit_code`` is the process's exit status."""

    exit_code = EXIT_INTERNAL


class UsageError(ExitbenchError, ValueError):
    """Bad input from the user: the message says what is wrong and what was expected (exit 2).

    It is also a ``ValueError`` so that library callers catching that keep working.
    """

    exit_code = EXIT_BAD_INPUT


class ResultsRootError(ExitbenchError):
    """The results root cannot be used: missing, not a directory, not writable, full (exit 3)."""

    exit_code = EXIT_RESULTS_ROOT


class RunLockedError(ResultsRootError):
    """Another live process holds the run's lock (exit 3)."""


class WorkersLostError(ExitbenchError):
    """Execution lost its workers; what finished is kept and a rerun resumes (exit 4)."""

    exit_code = EXIT_WORKERS_LOST


def exit_codes_help() -> str:
    """The exit codes as one paragraph for a command's --help."""
    return "Exit codes: " + "; ".join(f"{c} {m}" for c, m in EXIT_CODES) + "."
