"""Overlapped recording (issue 15): the host half of the work runs beside the next model pass, the tables unchanged.

On a GPU the model's thread mostly launches kernels, so the permutation, block statistics, metrics, tables and
writes of one group of utterances run in a second thread while the next group goes through the model
(``record.record_shards(overlap=True)``; Ray GPU actors take two calls at once). Overlap is off on the CPU by
default; these tests turn it on there, where the same functions must give the same tables, bit for bit.
"""

from __future__ import annotations

import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exitbench.harness.local import LocalExecutor
from exitbench.harness.record import record_shards
from exitbench.harness.runner import execute, prepare
from exitbench.harness.spec import RecordSettings, RunSpec
from exitbench.models.registry import resolve_model
from exitbench.datasets.synthetic import SyntheticMixtures


def _tables(root, run_id) -> dict[str, pa.Table]:
    out = {}
    for name, keys in (("blocks", ["utt_id", "level", "source", "block"]), ("utterances", ["utt_id", "level", "source"]),
                       ("errors", ["utt_id"])):
        t = pq.read_table(root / name / f"run={run_id}" / "part-0.parquet")
        out[name] = t.sort_by([(k, "ascending") for k in keys])
    return out


def _assert_same(a: dict[str, pa.Table], b: dict[str, pa.Table]) -> None:
    """Bit for bit (NaN equal to NaN: pandas' equals)."""
    for name in a:
        x, y = a[name].to_pandas(), b[name].to_pandas()
        assert x.shape == y.shape and list(x.columns) == list(y.columns), name
        for col in x.columns:
            assert x[col].equals(y[col]), f"{name}.{col}"


@pytest.mark.parametrize("model,batch", [("press-s", 1), ("exitbench_testmodels:raise_on_long_pass", 3)])
def test_overlapped_local_recording_writes_the_tables_of_the_plain_one(tmp_path, model, batch):
    """press-s with SDR and STOI; and a chunk-safe model that raises on long passes (errors rows, a failing
    batch run again one by one) with --batch 3, shards of 4: groups that end mid-shard and at its end."""
    spec = RunSpec(model, "synthetic", (("num_utterances", "7"), ("seconds", "2.2")),
                   RecordSettings(metrics=("sdr", "stoi"), shard_size=4))
    plain = execute(prepare(spec), tmp_path / "plain", LocalExecutor("cpu", batch=batch, overlap=False))
    over = LocalExecutor("cpu", batch=batch, overlap=True)
    got = execute(prepare(spec), tmp_path / "over", over)
    assert got.run_id == plain.run_id and got.num_errors == plain.num_errors
    assert (got.num_errors > 0) == (model != "press-s")
    assert over.describe()["overlap"] is True and LocalExecutor("cpu").describe()["overlap"] is False
    _assert_same(_tables(tmp_path / "plain", plain.run_id), _tables(tmp_path / "over", got.run_id))


class _Timed:
    """press-s whose every model pass notes when it started (the real model, timed)."""

    def __new__(cls, starts: list[float]):
        model = resolve_model("press-s").model
        plain = model.forward_all

        def forward_all(mixture):
            starts.append(time.monotonic())
            return plain(mixture)

        model.forward_all = forward_all
        return model


@pytest.mark.parametrize("overlap", [True, False])
def test_the_next_model_pass_runs_while_a_shard_is_written_only_when_overlapped(overlap):
    """A writer that takes 0.6 s for the first shard: overlapped, the model's next pass starts before that write
    returns (in this thread, while the write runs in the host thread); plain, only after it."""
    starts: list[float] = []
    model = _Timed(starts)
    ts = SyntheticMixtures(num_utterances=3, seconds=1.0)
    ids = list(ts.ids())
    window: dict[str, float] = {}
    threads: set[str] = set()

    def write(index: int, tables: dict[str, pa.Table]) -> None:
        threads.add(threading.current_thread().name)
        if index == 0:
            window["start"] = time.monotonic()
            time.sleep(0.6)
            window["end"] = time.monotonic()

    record_shards(model, ts, {0: ids[:1], 1: ids[1:]}, RecordSettings(metrics=()), write, overlap=overlap)
    assert len(starts) == 3
    assert (starts[1] < window["end"]) == overlap
    assert (threading.current_thread().name not in threads) == overlap


def test_overlapped_ray_actors_record_the_tables_of_the_plain_local_run(ray_session, tmp_path):
    """A Ray actor taking two calls at once (as a GPU actor does), one model pass at a time: the same tables."""
    from exitbench.harness.ray_executor import RayExecutor

    spec = RunSpec("exitbench_testmodels:raise_on_long_pass", "synthetic", (("num_utterances", "5"), ("seconds", "2.2")),
                   RecordSettings(metrics=("stoi",), shard_size=5))
    ref = execute(prepare(spec), tmp_path / "local", LocalExecutor("cpu"))
    ex = RayExecutor(workers=1, max_metric_tasks=2, device="cpu", overlap=True)
    got = execute(prepare(spec), tmp_path / "ray", ex)
    assert got.run_id == ref.run_id and got.num_errors == ref.num_errors > 0
    assert ex.describe()["overlap"] is True and RayExecutor(device="cpu").describe()["overlap"] is False
    _assert_same(_tables(tmp_path / "local", ref.run_id), _tables(tmp_path / "ray", got.run_id))
