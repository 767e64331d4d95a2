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
