"""Results roots at scale: one connection per command, views over the runs read, and ``exitbench pack``."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pandas as pd
import pytest
from conftest import record_local

from exitbench.errors import ResultsRootError
from exitbench.harness.local import LocalExecutor
from exitbench.harness.runner import execute, prepare
from exitbench.harness.spec import RecordSettings, RunSpec
from exitbench.results import views
from exitbench.results.pack import PackInterrupted, pack
from exitbench.results.replays import load_block_arrays, replay_run, store_replay
from exitbench.results.store import ResultStore

VIEWS = ("runs", "blocks", "utterances", "levels", "errors", "replays", "replay_blocks")


def dump(root) -> dict[str, pd.DataFrame]:
    """Every view's rows, sorted (an order-insensitive comparison), columns in name order."""
    con = views.connect(root)
    have = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    out = {}
    for name in VIEWS:
        if name not in have:
            continue
        df = con.execute(f"SELECT * FROM {name}").df()
        cols = sorted(df.columns)
        out[name] = df[cols].astype(str).sort_values(cols).reset_index(drop=True)
    con.close()
    return out


def assert_same(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], obj=name)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    a = record_local(root, options=(("num_utterances", "3"),), metrics=())
    b = record_local(root, options=(("num_utterances", "2"), ("seed", "7")), metrics=())
    store_replay(root, replay_run(root, a.run_id, "oracle:t=10"))
    return root, a.run_id, b.run_id


def copy_of(src, tmp_path):
    dst = tmp_path / "root"
    shutil.copytree(src, dst)
    return dst


def test_packing_changes_no_view(two_runs, tmp_path):
    root = copy_of(two_runs[0], tmp_path)
    before = dump(root)
    outcome = pack(root)
    assert outcome.packed_runs == 2 and outcome.rows["blocks"] == len(before["blocks"])
    assert not list((root / "blocks").glob("run=*")), "the runs' own files are gone"
    assert_same(before, dump(root))
    assert pack(root).packed_runs == 0  # nothing left to pack
    assert_same(before, dump(root))


@pytest.mark.parametrize("step", ["written", "switched"])
def test_an_interrupted_pack_changes_nothing_and_a_rerun_completes_it(two_runs, tmp_path, step):
    root = copy_of(two_runs[0], tmp_path)
    before = dump(root)
    with pytest.raises(PackInterrupted):
        pack(root, fail_at=step)
    assert_same(before, dump(root))
    outcome = pack(root)
    assert outcome.cleaned, "the rerun removes what the interrupted one left"
    assert not list((root / "blocks").glob("run=*"))
    assert len(list((root / "blocks" / "_pack").iterdir())) == 1
    assert_same(before, dump(root))


def test_a_pack_killed_midway_changes_nothing(two_runs, tmp_path):
    root = copy_of(two_runs[0], tmp_path)
    before = dump(root)
    code = ("import sys, exitbench.results.pack as p; orig = p._write_packs\n"
            "def die(*a):\n    import os; os._exit(9)\n"
            "p._write_packs = die; p.pack(sys.argv[1])")
    killed = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=120)
    assert killed.returncode == 9
    assert list((root / "blocks" / "_pack").iterdir()), "it died with its pack files written, not listed"
    assert_same(before, dump(root))
    pack(root)
    assert_same(before, dump(root))


def test_a_growing_root_packs_itself_and_a_held_pack_lock_only_defers_it(tmp_path, monkeypatch):
    """EXITBENCH_AUTO_PACK=3: the third published run packs the three; the fourth and fifth stay as files while a
    live pack elsewhere holds the lock (their runs complete all the same), and the sixth packs those three."""
    from exitbench.results.locks import RunLock
    from exitbench.results.pack import _PACK_LOCK, auto_pack

    monkeypatch.setenv("EXITBENCH_AUTO_PACK", "3")
    root = tmp_path / "grow"
    ids = []
    for seed in range(3):
        ids.append(record_local(root, options=(("num_utterances", "2"), ("seed", str(seed))), metrics=()).run_id)
    assert len(list((root / "blocks" / "_pack").iterdir())) == 1 and not list((root / "blocks").glob("run=*"))
    assert set(views.scan(root).packed) == set(ids)
    with RunLock(root, _PACK_LOCK):  # another process packing: a recording does not wait for it nor fail
        for seed in (3, 4):
            out = record_local(root, options=(("num_utterances", "2"), ("seed", str(seed))), metrics=())
            assert ResultStore(root).is_complete(out.run_id)
            ids.append(out.run_id)
        assert len(list((root / "blocks").glob("run=*"))) == 2
    before = dump(root)
    ids.append(record_local(root, options=(("num_utterances", "2"), ("seed", "5")), metrics=()).run_id)
    assert len(list((root / "blocks" / "_pack").iterdir())) == 2 and not list((root / "blocks").glob("run=*"))
    after = dump(root)
    for name, frame in before.items():  # the five earlier runs read as before; the sixth is there too
        old = after[name][after[name]["run"] != ids[-1]] if "run" in frame else after[name]
        if name == "runs":
            old = after[name][after[name]["run_id"] != ids[-1]]
        pd.testing.assert_frame_equal(frame, old.reset_index(drop=True), obj=name)
    assert set(views.scan(root).packed) == set(ids)
    monkeypatch.setenv("EXITBENCH_AUTO_PACK", "0")
    assert auto_pack(root) is None
    monkeypatch.setenv("EXITBENCH_AUTO_PACK", "many")
    with pytest.raises(ResultsRootError, match="EXITBENCH_AUTO_PACK"):
        auto_pack(root)


def test_a_run_recorded_again_into_a_packed_root_replaces_its_packed_rows(two_runs, tmp_path):
    root, a, _ = two_runs
    root = copy_of(root, tmp_path)
    before = dump(root)
    pack(root)
    spec = RunSpec("press-s", "synthetic", (("num_utterances", "3"),), RecordSettings(metrics=()))
    again = execute(prepare(spec), root, LocalExecutor(), force=True)
    assert again.run_id == a
    after = dump(root)
    for name in ("blocks", "utterances", "levels"):
        assert len(after[name]) == len(before[name]), name  # the packed rows of the old recording are not read
    assert (root / "blocks" / f"run={a}" / "part-0.parquet").exists()
    assert ResultStore(root).read_published(a, "errors") is not None
    pack(root)
    assert_same(after, dump(root))
    assert len(list((root / "blocks" / "_pack").iterdir())) == 2


def test_a_corrupt_pack_marks_its_runs_corrupt(two_runs, tmp_path):
    root = copy_of(two_runs[0], tmp_path)
    pack(root)
    (f,) = (root / "utterances" / "_pack").iterdir()
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    con = views.connect(root)
    assert {s for (s,) in con.execute("SELECT status FROM runs").fetchall()} == {"corrupt"}
    assert str(f) in con.execute("SELECT any_value(problem) FROM runs").fetchone()[0]


def test_one_connection_per_command_and_views_over_the_runs_read(two_runs):
    root, a, b = two_runs
    with views.sessions() as opened:
        arrays = load_block_arrays(root, a)
        replay_run(root, a, "oracle:t=10", arrays=arrays)
        views.connect(root, runs=[a]).execute("SELECT count(*) FROM utterances WHERE run = ?", [a]).fetchone()
        (shared,) = opened.values()
        assert shared.connections == 1
        con = views.connect(root, runs=[a])
        sql = " ".join(r[0] for r in con.execute("SELECT sql FROM duckdb_views() WHERE view_name IN"
                                                  " ('blocks', 'utterances')").fetchall())
        assert f"run={b}" not in sql, "a query of one run reads only that run's files"
    con = views.connect(root, runs=[b], tables=("utterances",))
    assert con.execute("SELECT DISTINCT run FROM utterances").fetchall() == [(b,)]


def test_a_run_resolved_through_the_catalogue_is_read_alone(two_runs):
    """replay and compare name their runs by id prefix, so they read the catalogue (every run) first: that read
    must not widen the views to every run, or a replay of one run in a root of 1,000 reads 1,000 runs' files."""
    from exitbench.results.catalog import resolve_run
    from exitbench.results.compare import level_values
    from exitbench.results.replays import resolve_run_id

    root, a, b = two_runs

    def view_sql(con):
        return " ".join(r[0] for r in con.execute("SELECT sql FROM duckdb_views() WHERE view_name IN"
                                                  " ('blocks', 'utterances', 'levels')").fetchall())

    with views.sessions() as opened:
        assert resolve_run_id(root, a[:6]) == a and resolve_run(root, a[:6])["run_id"] == a
        replay_run(root, a, "oracle:t=10", arrays=load_block_arrays(root, a))
        assert len(level_values(root, a, ["si_snri"]))
        (shared,) = opened.values()
        assert shared.connections == 1
        con = views.connect(root, runs=[a], tables=())
        assert f"run={a}" in view_sql(con) and f"run={b}" not in view_sql(con), \
            "the catalogue read widened the views to every run"
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 2, "the catalogue still lists every run"
        # a reader of every run still gets every run, on the same connection
        got = views.connect(root).execute("SELECT DISTINCT run FROM utterances ORDER BY run").fetchall()
        assert got == sorted([(a,), (b,)]) and shared.connections == 1


def test_many_runs_values_come_in_the_order_asked(two_runs):
    """level_values_long (history's one query) orders runs as given, per run the rows of level_values."""
    from exitbench.results.compare import level_values, level_values_long

    root, a, b = two_runs
    for metrics in (["si_snri"], ["si_snri", "snri"]):
        for order in ([a, b], [b, a], [b, a, b]):
            got = level_values_long(root, order, metrics)
            runs = list(dict.fromkeys(reversed(order)))[::-1]  # a repeated run: at its last position
            want = pd.concat([level_values(root, r, metrics).assign(run=r) for r in runs], ignore_index=True)
            pd.testing.assert_frame_equal(got[want.columns], want)


def test_pack_from_the_command_line(two_runs, tmp_path):
    root = copy_of(two_runs[0], tmp_path)
    done = subprocess.run([sys.executable, "-m", "exitbench", "pack", "-r", str(root)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "packed 2 run(s)" in done.stderr, done.stderr
    missing = subprocess.run([sys.executable, "-m", "exitbench", "pack", "-r", str(tmp_path / "nope")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 3 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr


def test_the_catalogue_keeps_the_large_manifest_columns_out_of_memory(two_runs, tmp_path, monkeypatch):
    """Warm, a scan holds no manifest row in memory: the runs view reads the cache file, model metadata
    included, only when a query names it; where the cache cannot be written every view answers the same."""
    root = copy_of(two_runs[0], tmp_path)
    before = dump(root)  # the first scan writes _catalog/runs.parquet
    found = views.scan(root)
    assert found.catalog.extra is None and found.catalog.cache is not None, "warm: nothing but the cache file"
    meta = {r["run_id"]: r["model_metadata"] for r in
            (ResultStore(root).read_manifest(r) for r in (two_runs[1], two_runs[2]))}
    got = dict(views.connect(root).execute("SELECT run_id, model_metadata FROM runs").fetchall())
    assert got == meta and all(meta.values())
    # a new run read while the cache cannot be written (a read-only root): rows in memory, same answers
    monkeypatch.setattr(views, "_rewrite_cache", lambda *a, **k: False)
    (root / views.CATALOG_DIR / "runs.parquet").unlink()
    cold = views.scan(root)
    assert cold.catalog.cache is None and cold.catalog.extra.num_rows == 2
    assert_same(before, dump(root))
    monkeypatch.undo()
    # a corrupt manifest beside a cached catalogue: its row comes from memory, the rest from the file
    dump(root)
    m = root / "runs" / f"run={two_runs[2]}" / "manifest.parquet"
    m.write_bytes(b"not parquet")
    con = views.connect(root)
    assert dict(con.execute("SELECT run_id, status FROM runs").fetchall()) == {two_runs[1]: "complete",
                                                                            two_runs[2]: "corrupt"}
