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


def _modules_after(argv: list[str]) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -m exitbench ARGV`` in a fresh interpreter; which of the heavy modules it imported."""
    code = ("import runpy, sys\n"
            f"sys.argv = ['exitbench', *{argv!r}]\n"
            "try:\n    runpy.run_module('exitbench', run_name='__main__')\n"
            "finally:\n    sys.stderr.write('\\nMODULES ' + ','.join(m for m in ('pandas', 'pydantic', 'scipy',"
            " 'torch') if m in sys.modules) + '\\n')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    line = [x for x in proc.stderr.splitlines() if x.startswith("MODULES ")][-1]
    return proc, set(filter(None, line.removeprefix("MODULES ").split(",")))


def test_runs_and_query_import_no_pandas_pydantic_or_scipy(synthetic_run):
    """The fast path of `runs` and `query` (no Typer app built, hence no pydantic; rows as tuples, the
    catalogue read from its cache without building Arrow arrays, hence no pandas)."""
    root = str(synthetic_run.root)
    _modules_after(["runs", "-r", root])  # the first read of a root may write its catalogue cache
    for argv in (["runs", "-r", root], ["runs", "--status", "complete", f"--results={root}"],
                 ["query", "SELECT count(*) AS n FROM utterances", "-r", root, "--csv"],
                 ["query", "SELECT level, avg(si_snri) FROM utterances GROUP BY level", "-r", root]):
        proc, heavy = _modules_after(argv)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert heavy == set(), f"{argv[0]} imported {heavy}"
    proc, _ = _modules_after(["query", "SELECT nope", "-r", root])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "nope" in proc.stderr


def test_the_fast_path_takes_the_options_the_typer_commands_declare_and_answers_alike(synthetic_run):
    import typer
    from typer.testing import CliRunner

    from exitbench.harness.cli import app
    from exitbench.harness.cli.results import FAST_COMMANDS, fast_command

    group = typer.main.get_command(app)
    for name, (options, positional) in FAST_COMMANDS.items():
        params = group.commands[name].params
        declared = {o for p in params for o in (*p.opts, *p.secondary_opts) if o.startswith("-") and p.name != "help"}
        assert set(options) == declared, name
        assert {param for param, _ in options.values()} | set(positional) == {p.name for p in params}, name
        assert tuple(p.name for p in params if p.param_type_name == "argument") == positional, name
    assert fast_command(["runs", "--help"]) is None and fast_command(["runs", "-r"]) is None
    assert fast_command(["query", "-r", "x"]) is None and fast_command(["replay", "x"]) is None
    root = str(synthetic_run.root)
    for argv in (["runs", "-r", root], ["query", "SELECT level, name, gmacs FROM levels ORDER BY level", "-r", root],
                 ["query", "SELECT level, min(si_snri), NULL AS x FROM utterances GROUP BY level ORDER BY level",
                  "--csv", "-r", root]):
        typer_out = CliRunner().invoke(app, argv, terminal_width=160)
        fast = subprocess.run([sys.executable, "-m", "exitbench", *argv], capture_output=True, text=True)
        assert typer_out.exit_code == 0 == fast.returncode, fast.stderr
        assert typer_out.stdout == fast.stdout, argv


def test_the_gate_imports_scipy_only_for_a_heavy_tailed_row():
    """scipy.special (0.3-0.4 s to import) gives Student's quantile that scales a heavy-tailed row of the gate;
    equal deltas have exact bounds and ordinary rows stay below twice the normal quantile, so neither needs it
    (a history's whole bootstrap costs less than that import). The bounds are those of scipy's quantile."""
    code = ("import sys, numpy as np; from exitbench.results.compare import simultaneous_bounds as sb;"
            " b = sb(np.full((3, 5), 0.5), 0.1); assert 'scipy.special' not in sys.modules;"
            " assert (b.mdd == 0.1).all() and (b.high == 0.5).all();"
            " rng = np.random.default_rng(0); d = rng.normal(0, 1, (4, 30));"
            " v = sb(d, 0.1); assert 'scipy.special' not in sys.modules; assert np.isfinite(v.mdd).all();"
            " heavy = np.vstack([d, np.r_[np.zeros(28), 3.0, -2.5]]); h = sb(heavy, 0.1);"
            " assert 'scipy.special' in sys.modules; assert h.high[4] - h.mean[4] > 5 * h.se[4];"
            " assert np.allclose(h.high[:4], v.high[:4], rtol=0, atol=0.02) and np.isfinite(h.critical)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_local_ray_cluster_starts_without_ray_printing_on_the_console():
    """Ray's own line about token authentication used to come before exitbench's first line of output; and
    a caller that imported ray first still gets a cluster it can connect to (Ray's default, with its line)."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    for first in ("", "import ray\n"):
        code = (f"{first}from exitbench.harness.ray_executor import ensure_ray\n"
                "import os\nassert ensure_ray()\nimport ray\n"
                "print('MODE', os.environ['RAY_AUTH_MODE'], ray.get(ray.put(7)))\nray.shutdown()")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "MODE token 7" in proc.stdout  # authentication is kept on, as Ray would have it
        assert ("Token authentication" in proc.stdout + proc.stderr) == bool(first)


def test_demo_draws_its_report_and_leaves_no_ray_process(tmp_path):
    """`exitbench demo` on a Ray cluster of its own: the report is drawn while the cluster stops in a thread,
    and the command ends only once every process of that cluster is gone."""
    import os
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="ebdemo", dir="/tmp")  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": ray_tmp}
    proc = subprocess.run([sys.executable, "-m", "exitbench", "demo", "--metrics", "none", "--results",
                           str(tmp_path / "r"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    assert len(list((tmp_path / "o").glob("report-*.html"))) == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    assert os.listdir(os.path.join(ray_tmp, "ray"))  # the cluster lived there
    left = subprocess.run(["pgrep", "-f", ray_tmp], capture_output=True, text=True).stdout.split()
    assert not left, subprocess.run(["ps", "-o", "pid,args", "-p", ",".join(left)], capture_output=True,
                                    text=True).stdout
