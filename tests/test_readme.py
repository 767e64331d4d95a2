"""The README's commands are real: every `exitbench CMD ... --option` it shows names a command and options
that `exitbench CMD --help` lists (a docs check; the commands' behaviour is tested elsewhere)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from exitbench.harness.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_commands() -> list[list[str]]:
    """`exitbench ...` command lines inside the README's shell code blocks (comments cut, continuations joined)."""
    out, lang, block = [], None, []
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, block = line[3:].strip(), []
                continue
            if lang in ("bash", "sh", ""):
                for cmd in "\n".join(block).replace("\\\n", " ").splitlines():
                    cmd = re.split(r"\s#", cmd)[0].strip()
                    m = re.match(r"(?:python -m )?exitbench\s+(.*)", cmd)
                    if m and "|" not in m.group(1):  # a usage listing line ("a | b") is not a command
                        out.append(shlex.split(m.group(1).split("&&")[0]))
            lang = None
            continue
        if lang is not None:
            block.append(line)
    return out


COMMANDS = _readme_commands()


def test_the_readme_shows_commands():
    assert len(COMMANDS) >= 15


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_every_readme_command_and_option_exists(argv):
    cmd = argv[0]
    result = CliRunner().invoke(app, [cmd, "--help"], terminal_width=200)
    assert result.exit_code == 0, f"`exitbench {cmd}` is not a command: {result.output[-500:]}"
    listed = set(re.findall(r"--[a-z][a-z0-9-]*", result.output)) | set(re.findall(r"(?<![\w-])-[a-zA-Z]\b",
                                                                                   result.output))
    for tok in argv[1:]:
        opt = tok.split("=")[0]
        if re.fullmatch(r"--?[a-zA-Z][a-zA-Z0-9-]*", opt):
            assert opt in listed, f"`exitbench {cmd}` has no option {opt} (README: exitbench {' '.join(argv)})"


def test_every_repository_path_the_readme_names_exists():
    """The README once cited "DESIGN §4" that was not in the repo: every docs/, examples/, scripts/,
    benchmarks/ and tests/ path it names, and every image it shows, must be there."""
    text = README.read_text()
    names = set(re.findall(r"(?<![\w/.-])((?:docs|examples|scripts|benchmarks|tests)/[\w./-]+\.\w+)", text))
    names |= set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text))
    missing = sorted(n for n in names if not (README.parent / n).exists())
    assert names and not missing, f"the README names files that are not in the repository: {missing}"
    assert "docs/DESIGN.md" in text


def test_query_help_lists_every_view():
    """`exitbench query` once listed 5 of its 8 views."""
    from exitbench.results.views import FILE_TABLES, TABLES

    out = CliRunner().invoke(app, ["query", "--help"], terminal_width=200).output
    for view in set(TABLES) | set(FILE_TABLES):
        assert view in out, f"query --help does not name the view {view}"


def test_paper_figures_are_named_as_the_readme_says(synthetic_run, tmp_path):
    """`report --paper` writes <run-id:8>-<figure>.pdf/.svg, as the README states (it once showed other names)."""
    from exitbench.reports.build import write_paper_figures

    assert "<run-id:8>-<figure>.pdf/.svg" in README.read_text()
    write_paper_figures(synthetic_run.root, [synthetic_run.run_id], tmp_path, targets=[15.0])
    assert (tmp_path / f"{synthetic_run.run_id[:8]}-regret.svg").exists()
    assert (tmp_path / f"{synthetic_run.run_id[:8]}-regret.pdf").exists()
