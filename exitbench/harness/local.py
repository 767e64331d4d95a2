"""The in-process executor: shards one after another in this process (unit tests, tiny runs)."""

from __future__ import annotations

from typing import Callable

from exitbench.harness.record import record_shard
from exitbench.harness.runner import PreparedRun
from exitbench.results.store import ResultStore


class LocalExecutor:
    """Run each shard with the already loaded model, publishing it as soon as it is done."""

    def run(self, prepared: PreparedRun, store: ResultStore, shards: dict[int, list[str]],
            on_utterance: Callable[[int], None]) -> None:
        for index, ids in shards.items():
            tables = record_shard(prepared.model, prepared.testset, ids, prepared.spec.settings,
                                  on_utterance=lambda _id: on_utterance(1))
            store.write_shard(prepared.run_id, index, tables)
