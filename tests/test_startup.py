"""Commands start fast: the command line imports no torch, ray or matplotlib until a command needs them."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_cli_imports_no_torch_ray_or_matplotlib():
    code = ("import sys, exitbench.harness.cli; "
            "print(','.join(m for m in ('torch', 'ray', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "", f"imported at start-up: {out.strip()}"


def test_runs_needs_no_torch(synthetic_run):
    """`exitbench runs` end to end on a real root, with torch made unimportable: it must not need it."""
    tmp_path = synthetic_run.root
    code = ("import runpy, sys; sys.modules['torch'] = None; "
            f"sys.argv = ['exitbench', 'runs', '-r', {str(tmp_path)!r}]; "
            "runpy.run_module('exitbench', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "torch" not in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-2000:]
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    assert synthetic_run.run_id[:8] in proc.stdout
