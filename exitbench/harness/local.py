"""The in-process executor: shards one after another in this process (unit tests, tiny runs)."""

from __future__ import annotations

from typing import Any, Callable

from exitbench.harness.devices import describe_device, resolve_device
from exitbench.harness.record import record_shard
from exitbench.harness.runner import PreparedRun
from exitbench.results.store import ResultStore


class LocalExecutor:
    """Run each shard with the already loaded model, publishing it as soon as it is done.

    ``device``: auto (cuda when this process sees a GPU), cpu, cuda or cuda:N; the model is moved there.
    """

    device: str = "cpu"  # for subclasses that do not call __init__

    def __init__(self, device: str = "auto"):
        self.device = resolve_device(device)

    def describe(self) -> dict[str, Any]:
        """Where the model ran, for the run's manifest."""
        return describe_device("local", self.device)

    def run(self, prepared: PreparedRun, store: ResultStore, shards: dict[int, list[str]],
            on_utterance: Callable[[int], None]) -> None:
        prepared.model.to(self.device)
        for index, ids in shards.items():
            tables = record_shard(prepared.model, prepared.testset, ids, prepared.spec.settings,
                                  on_utterance=lambda _id: on_utterance(1), device=self.device)
            store.write_shard(prepared.run_id, index, tables)
