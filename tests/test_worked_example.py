"""The README's worked sweep, comparison and history run as written, with the exit codes it states."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _block() -> list[str]:
    text = (REPO / "README.md").read_text()
    body = text.split("<!-- worked-example:start -->")[1].split("<!-- worked-example:end -->")[0]
    return [ln for ln in body.splitlines() if ln.strip() and not ln.startswith("```")]


def test_the_worked_example_runs_as_written(tmp_path):
    (tmp_path / "examples").mkdir()
    shutil.copy(REPO / "examples" / "sweep-worked.toml", tmp_path / "examples")
    script = [f'exitbench() {{ "{sys.executable}" -m exitbench "$@"; }}']  # this checkout, whatever is installed
    for i, line in enumerate(_block()):
        command, _, comment = line.partition("  #")
        m = re.search(r"exit (\d)", comment)
        want = int(m.group(1)) if m else 0
        script.append(f"{command.strip()} > out-{i}.txt 2>&1; rc=$?")
        script.append(f'[ $rc -eq {want} ] || {{ echo "line {i} exited $rc, the README says {want}: {command.strip()}";'
                      f' tail -n 30 out-{i}.txt; exit 1; }}')
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "REGRESSION" in (tmp_path / "out-8.txt").read_text()
    assert "skipped" in (tmp_path / "out-3.txt").read_text()  # the second sweep redoes nothing
    assert (tmp_path / "history.png").stat().st_size > 5000
