"""The Ray driver is off the data path: waveforms go from model actors to metric tasks by reference."""

from __future__ import annotations

import threading
import time

from exitbench.harness.ray_executor import RayExecutor
from exitbench.harness.runner import execute, prepare
from exitbench.harness.spec import RecordSettings, RunSpec

PAGE = 4096


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class _PeakRss:
    """The driver's peak resident memory above its level at the start, sampled every few milliseconds."""

    def __enter__(self) -> "_PeakRss":
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.003)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.base


def test_driver_memory_does_not_grow_with_utterance_length(ray_session, tmp_path):
    """60-s utterances through metric tasks: the driver's peak RSS grows by less than one utterance's waveforms.

    Before, each shard's records (every level's estimate, float64) came to the driver and went back out
    with ray.put: two utterances per shard, two shards in flight, so several times one utterance."""
    utts, levels, sources = 4, 3, 2

    def prepared(seconds: float):
        return prepare(RunSpec("exitbench_testmodels:tiny_exits", "synthetic",
                               (("num_utterances", str(utts)), ("seconds", str(seconds))),
                               RecordSettings(metrics=("stoi",), shard_size=2)))

    # the same run on 5-s utterances first: what the driver allocates once (DuckDB, Ray's client, the
    # writers) is then in place, and what the 60-s run adds is what grows with the data
    execute(prepared(5.0), tmp_path, RayExecutor(workers=1, max_metric_tasks=2))
    seconds = 60.0
    n_max = int(seconds * 1.25 * 8000)  # synthetic lengths vary by +-25 %
    one_utterance = n_max * 8 * (levels * sources + sources + 1)  # float64 estimates, references, mixture
    run = prepared(seconds)
    with _PeakRss() as mem:
        outcome = execute(run, tmp_path, RayExecutor(workers=1, max_metric_tasks=2))
    assert outcome.num_errors == 0 and outcome.num_utterances == utts
    assert mem.growth < one_utterance, f"driver grew {mem.growth / 2**20:.0f} MiB (one utterance:" \
                                       f" {one_utterance / 2**20:.0f} MiB)"
