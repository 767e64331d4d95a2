"""The in-process executor: shards one after another in this process (unit tests, tiny runs)."""

from __future__ import annotations

from typing import Any, Callable

from exitbench.harness.devices import describe_device, full_float32, resolve_device
from exitbench.harness.record import check_batch, record_shards
from exitbench.models.contract import check_forward_many
from exitbench.harness.runner import PreparedRun
from exitbench.results.store import ResultStore


class LocalExecutor:
    """Run each shard with the already loaded model, publishing it as soon as it is done.

    ``device``: auto (cuda when this process sees a GPU), cpu, cuda or cuda:N; the model is moved there.
    ``batch``: utterances per model pass (``ExitModel.forward_many``), checked to change no output first.
    ``overlap``: run the host half of the work (block statistics, metrics, tables, writes) in a second thread
    beside the model's (``record_shards``); None, the default, overlaps on a GPU, where the model's thread
    mostly waits on kernel launches, and not on the CPU, where the model's own threads use the cores.
    """

    device: str = "cpu"  # for subclasses that do not call __init__
    batch: int = 1
    batch_difference: float | None = None  # what --batch changed of an output (relative; check_forward_many)
    overlap: bool | None = None

    def __init__(self, device: str = "auto", batch: int = 1, overlap: bool | None = None):
        self.device = resolve_device(device)
        self.batch = check_batch(batch)
        self.overlap = overlap

    def describe(self) -> dict[str, Any]:
        """Where the model ran, for the run's manifest."""
        out = {**describe_device("local", self.device), "batch": self.batch, "overlap": self._overlap()}
        if self.batch_difference is not None:
            out["batch_difference"] = self.batch_difference
        return out

    def run(self, prepared: PreparedRun, store: ResultStore, shards: dict[int, list[str]],
            on_utterance: Callable[[int], None]) -> None:
        full_float32(self.device)
        prepared.model.to(self.device)
        if self.batch > 1:
            self.batch_difference = check_forward_many(prepared.model, self.batch, prepared.spec.model)
        record_shards(prepared.model, prepared.testset, shards, prepared.spec.settings,
                      lambda index, tables: store.write_shard(prepared.run_id, index, tables),
                      on_utterance=lambda _id: on_utterance(1), device=self.device, batch=self.batch,
                      overlap=self._overlap())

    def _overlap(self) -> bool:
        return self.device.startswith("cuda") if self.overlap is None else bool(self.overlap)
