"""Nothing lost, nothing lied about: one writer per run, whole-run publication, corrupt files, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import PLUGINS, record_local
from typer.testing import CliRunner

from exitbench.errors import EXIT_CODES, RunLockedError
from exitbench.harness.cli import app
from exitbench.harness.local import LocalExecutor
from exitbench.harness.runner import execute, prepare
from exitbench.harness.spec import RecordSettings, RunSpec
from exitbench.results.locks import RunLock
from exitbench.results.store import ResultStore
from exitbench.results.views import connect

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([PLUGINS, os.environ.get("PYTHONPATH", "")]))
SMALL = (("num_utterances", "3"),)


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m exitbench ...` in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "exitbench", *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def counts(root: Path) -> dict[str, int]:
    con = connect(root)
    return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("blocks", "utterances", "levels")}


# -- one writer per run id --------------------------------------------------------------------------
def test_a_second_process_of_the_same_run_id_exits_3_and_leaves_the_run_alone(tmp_path):
    args = ["run", "--executor", "local", "--dataset", "synthetic", "--dataset-opt", "num_utterances=24",
            "--shard-size", "2", "--metrics", "stoi", "-r", str(tmp_path), "-q"]
    first = subprocess.Popen([sys.executable, "-m", "exitbench", *args], env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any((tmp_path / "_staging").glob("*/shard-*/_SUCCESS")):
        time.sleep(0.1)
    assert first.poll() is None, "the first run finished before the second started: make it longer"
    second = cli(*args)
    assert second.returncode == 3, second.stdout + second.stderr
    assert "is being recorded by pid" in second.stderr and "Traceback" not in second.stderr
    assert str(first.pid) in second.stderr
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 0, output
    con = connect(tmp_path)
    assert con.execute("SELECT status FROM runs").fetchall() == [("complete",)]
    assert con.execute("SELECT count(DISTINCT utt_id), count(*) FROM utterances WHERE level = 0").fetchone() \
        == (24, 48)
    assert not (tmp_path / "_locks" / next(iter(os.listdir(tmp_path / "_locks")), "x")).exists()


def test_a_lock_held_by_a_dead_process_is_broken(tmp_path):
    p = prepare(RunSpec("press-s", "synthetic", SMALL, RecordSettings(metrics=())))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    lock = RunLock(tmp_path, p.run_id)
    lock.path.parent.mkdir(parents=True)
    lock.path.write_text(json.dumps({"pid": int(dead), "host": socket.gethostname(), "token": "old"}))
    outcome = execute(p, tmp_path, LocalExecutor())
    assert not outcome.already_complete and outcome.num_errors == 0 and not lock.path.exists()


def test_a_lock_of_another_host_counts_until_its_lease_runs_out(tmp_path):
    lock = RunLock(tmp_path, "abc", lease_s=30)
    lock.path.parent.mkdir(parents=True)
    lock.path.write_text(json.dumps({"pid": 1, "host": "node-17", "token": "theirs", "since": "then"}))
    with pytest.raises(RunLockedError, match="pid 1 on host node-17"):
        RunLock(tmp_path, "abc", lease_s=30).acquire()
    old = time.time() - 31
    os.utime(lock.path, (old, old))  # its owner stopped renewing the lease
    taker = RunLock(tmp_path, "abc", lease_s=30)
    taker.acquire()
    assert taker.held()
    taker.release()
    assert not lock.path.exists()


def test_a_live_lock_is_renewed_while_its_owner_works(tmp_path):
    lock = RunLock(tmp_path, "abc", lease_s=0.4)
    with lock:
        time.sleep(1.0)  # 2.5 leases: without the heartbeat another process would break it
        with pytest.raises(RunLockedError):
            RunLock(tmp_path, "abc", lease_s=0.4).acquire()
    assert not lock.path.exists()


# -- whole-run publication --------------------------------------------------------------------------
KILL_SCRIPT = textwrap.dedent("""
    import os, shutil, signal, sys
    import exitbench.results.store as store
    from exitbench.harness.local import LocalExecutor
    from exitbench.harness.runner import execute, prepare
    from exitbench.harness.spec import RecordSettings, RunSpec

    step, root = sys.argv[1], sys.argv[2]
    calls = {"n": 0}
    real_replace, real_rmtree = os.replace, shutil.rmtree

    def publish_started():
        import traceback
        return any(f.name == "publish" for f in traceback.extract_stack())

    def replace(src, dst):
        if publish_started():
            calls["n"] += 1
            if step == str(calls["n"]):
                os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst)

    def rmtree(path, *a, **k):
        if step == "cleanup" and publish_started() and "_publish" not in str(path):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_rmtree(path, *a, **k)

    store.os.replace, store.shutil.rmtree = replace, rmtree
    spec = RunSpec("press-s", "synthetic", (("num_utterances", "3"),), RecordSettings(metrics=(), shard_size=2))
    execute(prepare(spec), root, LocalExecutor())
    print("finished without being killed", calls["n"])
""")

# publish() renames 4 tables into staging, 4 into place, then the manifest: 9 replaces, then cleanup
PUBLISH_STEPS = [str(k) for k in range(1, 10)] + ["cleanup"]


@pytest.fixture(scope="module")
def expected_counts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    record_local(root, options=SMALL, metrics=(), shard_size=2)
    return counts(root)


@pytest.mark.parametrize("step", PUBLISH_STEPS)
def test_a_kill_at_any_step_of_publication_shows_all_or_nothing_and_the_rerun_completes(
        step, tmp_path, expected_counts):
    killed = subprocess.run([sys.executable, "-c", KILL_SCRIPT, step, str(tmp_path)], env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    seen = counts(tmp_path)
    status = connect(tmp_path).execute("SELECT status FROM runs").fetchone()[0]
    if step == "cleanup":  # the manifest was written: the whole run is visible
        assert status == "complete" and seen == expected_counts
    else:
        assert status == "running" and seen == {"blocks": 0, "utterances": 0, "levels": 0}
    outcome = record_local(tmp_path, options=SMALL, metrics=(), shard_size=2)
    assert counts(tmp_path) == expected_counts
    assert outcome.already_complete == (step == "cleanup")
    assert not (tmp_path / "_staging").exists(), "a rerun must clean what the killed one left"


# -- corrupt files -----------------------------------------------------------------------------------
def test_a_truncated_parquet_file_is_one_runs_problem_and_repair_mends_it(tmp_path):
    a = record_local(tmp_path, options=SMALL, metrics=())
    b = record_local(tmp_path, options=(("num_utterances", "2"), ("seed", "7")), metrics=())
    good = counts(tmp_path)
    path = tmp_path / "blocks" / f"run={a.run_id}" / "part-0.parquet"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    con = connect(tmp_path)
    assert con.execute("SELECT DISTINCT run FROM blocks").fetchall() == [(b.run_id,)]
    status, problem = con.execute("SELECT status, problem FROM runs WHERE run_id = ?", [a.run_id]).fetchone()
    assert status == "corrupt" and str(path) in problem and f"exitbench repair {a.run_id}" in problem
    listed = cli("runs", "-r", str(tmp_path))
    assert listed.returncode == 0 and "corrupt" in listed.stdout + listed.stderr
    assert "Traceback" not in listed.stdout + listed.stderr
    q = cli("query", "SELECT count(*) AS n FROM utterances", "-r", str(tmp_path), "--csv")
    assert q.returncode == 0 and q.stdout.split() == ["n", str(b.num_utterances * 4 * 2)]
    replayed = cli("replay", a.run_id, "-p", "oracle:t=10", "-r", str(tmp_path))
    assert replayed.returncode == 2 and "corrupt" in replayed.stderr

    mended = cli("repair", a.run_id[:8], "-r", str(tmp_path), "--executor", "local", "-q")
    assert mended.returncode == 0, mended.stderr
    assert counts(tmp_path) == good
    assert connect(tmp_path).execute("SELECT count(*) FROM runs WHERE status = 'complete'").fetchone()[0] == 2


def test_a_corrupt_manifest_is_listed_and_the_rest_stays_usable(tmp_path):
    a = record_local(tmp_path, options=SMALL, metrics=())
    b = record_local(tmp_path, options=(("num_utterances", "2"), ("seed", "7")), metrics=())
    (tmp_path / "runs" / f"run={a.run_id}" / "manifest.parquet").write_bytes(b"PAR1 not really")
    con = connect(tmp_path)
    assert dict(con.execute("SELECT run_id, status FROM runs").fetchall()) == {a.run_id: "corrupt",
                                                                                 b.run_id: "complete"}
    assert con.execute("SELECT run FROM runs WHERE run_id = ?", [a.run_id]).fetchone()[0] == a.run_id
    assert con.execute("SELECT DISTINCT run FROM utterances").fetchall() == [(b.run_id,)]


# -- older versions' infrastructure errors ----------------------------------------------------------
def test_a_complete_run_holding_worker_failure_rows_redoes_only_those_shards(tmp_path, expected_counts):
    p = prepare(RunSpec("press-s", "synthetic", SMALL, RecordSettings(metrics=(), shard_size=2)))
    execute(p, tmp_path, LocalExecutor())
    store = ResultStore(tmp_path)
    victims = p.shards()[1]  # what exitbench 0.1 published after a worker died: error rows, no data
    for name in ("blocks", "utterances"):
        f = store.table_dir(name, p.run_id) / "part-0.parquet"
        t = pq.read_table(f)
        pq.write_table(t.filter(pa.compute.invert(pa.compute.is_in(t["utt_id"], pa.array(victims)))), f)
    pq.write_table(pa.table({"utt_id": victims, "stage": ["worker"] * len(victims),
                             "reason": ["worker failed: ActorUnavailableError"] * len(victims)}),
                   store.table_dir("errors", p.run_id) / "part-0.parquet")
    m = store.read_manifest(p.run_id)
    store.write_manifest(m | {"num_errors": len(victims)})

    outcome = execute(p, tmp_path, LocalExecutor())
    assert not outcome.already_complete and outcome.shards_done == 1 and outcome.num_errors == 0
    assert counts(tmp_path) == expected_counts


# -- the results root, and exit codes ----------------------------------------------------------------
def test_a_results_root_that_is_a_file_or_missing_is_exit_3(tmp_path):
    f = tmp_path / "file"
    f.write_text("not a folder")
    runner = CliRunner()
    for args in (["run", "--executor", "local", "--dataset-opt", "num_utterances=1", "-r", str(f), "-q"],
                 ["runs", "-r", str(f)], ["query", "SELECT 1", "-r", str(f)],
                 ["runs", "-r", str(tmp_path / "typo")], ["query", "SELECT 1", "-r", str(tmp_path / "typo")],
                 ["replay", "abc", "-p", "oracle:t=1", "-r", str(tmp_path / "typo")],
                 ["run", "--executor", "local", "-r", "/proc/exitbench-cannot-be-here", "-q"]):  # mkdir fails
        result = runner.invoke(app, args)
        assert result.exit_code == 3, (args, result.output)
        assert "results root" in result.output and "Traceback" not in result.output


def test_a_bug_is_exit_5_with_a_traceback_and_a_log_never_bad_input(tmp_path):
    result = cli("run", "--executor", "local", "-m", "exitbench_testmodels:buggy", "-r", str(tmp_path), "-q")
    assert result.returncode == 5, result.stderr
    assert "Traceback" in result.stderr and "internal error (TypeError" in result.stderr
    logs = list((tmp_path / "_logs").glob("exitbench-error-*.log"))
    assert len(logs) == 1 and "TypeError" in logs[0].read_text()


def test_bad_options_are_exit_2_in_one_line(tmp_path):
    runner = CliRunner()
    for args, why in ((["--limit", "0"], "--limit must be at least 1"), (["--limit", "-1"], "at least 1"),
                      (["--workers", "0"], "--workers must be at least 1"),
                      (["--dataset-opt", "nokey"], "expected key=value")):
        result = runner.invoke(app, ["run", "--executor", "local", "-r", str(tmp_path), "-q", *args])
        assert result.exit_code == 2 and why in result.output, (args, result.output)
    assert not (tmp_path / "runs").exists(), "a refused run must create nothing"


def test_every_exit_code_is_in_the_help_and_the_readme():
    help_text = CliRunner().invoke(app, ["run", "--help"], terminal_width=200).output
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for code, _ in EXIT_CODES:
        assert f"{code} " in " ".join(help_text.split()), code
        assert f"| {code} |" in readme, code


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounting a tmpfs needs root")
def test_a_full_disk_is_exit_3_naming_the_path_and_the_space(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        result = cli("run", "--executor", "local", "--dataset-opt", "num_utterances=40", "--metrics", "none",
                     "-r", str(mnt), "-q")
        assert result.returncode == 3, result.stdout + result.stderr
        assert "no space left" in result.stderr and str(mnt) in result.stderr and "MB free" in result.stderr
        assert "Traceback" not in result.stderr
        con = connect(mnt)  # what was written before the disk filled up is intact and readable
        assert con.execute("SELECT status FROM runs").fetchone()[0] == "running"
    finally:
        subprocess.run(["umount", "-l", str(mnt)])
