"""Run specs: a frozen, serialisable description of a recording whose hash is the run id."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from exitbench.errors import UsageError
from exitbench import SCHEMA_VERSION

ALL_METRICS = ("sdr", "pesq", "stoi")  # SI-SNR and SNR are always computed: they are cheap


@dataclass(frozen=True)
class RecordSettings:
    """Settings that change what a recording contains (all of them enter the run id)."""

    metrics: tuple[str, ...] = ALL_METRICS
    sdr_backend: str = "fast_bss_eval"  # or "mir_eval"
    shard_size: int = 8  # utterances per shard; fixes shard membership, so it is part of the id
    resample: bool = False
    limit: int | None = None  # first N utterances only
    block_size: int | None = None  # samples per block; None: the model's own (the run id holds the one used)

    def __post_init__(self) -> None:
        unknown = set(self.metrics) - set(ALL_METRICS)
        if unknown:
            raise UsageError(f"unknown metrics {sorted(unknown)}; choose from {list(ALL_METRICS)} or 'none'")
        if self.sdr_backend not in ("fast_bss_eval", "mir_eval"):
            raise UsageError(f"sdr backend must be fast_bss_eval or mir_eval, not {self.sdr_backend!r}")
        if self.shard_size < 1:
            raise UsageError("shard size must be at least 1")
        if self.block_size is not None and self.block_size < 1:
            raise UsageError(f"--block-size must be at least 1, got {self.block_size}")


@dataclass(frozen=True)
class RunSpec:
    """What to record: a model, a test set and settings. ``run_id`` hashes their content."""

    model: str  # checkpoint path, bundled name, or module:factory
    dataset: str  # NAME[:PATH]
    dataset_options: tuple[tuple[str, str], ...] = ()
    settings: RecordSettings = field(default_factory=RecordSettings)
    model_args: tuple[tuple[str, str], ...] = ()  # --model-arg key=value, for module:factory models

    def to_json(self) -> str:
        """Stable JSON of the spec."""
        d = asdict(self)
        return json.dumps(d, sort_keys=True, default=list)

    @classmethod
    def from_json(cls, text: str) -> "RunSpec":
        """Inverse of ``to_json``."""
        d = json.loads(text)
        s = d["settings"]
        s["metrics"] = tuple(s["metrics"])
        return cls(d["model"], d["dataset"], tuple(tuple(kv) for kv in d["dataset_options"]),
                   RecordSettings(**s), tuple(tuple(kv) for kv in d.get("model_args", ())))


def compute_run_id(model_identity: str, dataset_name: str, dataset_fingerprint: str,
                   dataset_options: tuple[tuple[str, str], ...], settings: RecordSettings) -> str:
    """Content hash of (model bytes, test-set fingerprint, settings, schema version)."""
    payload = json.dumps(
        {
            "model": model_identity,
            "dataset": dataset_name,
            "fingerprint": dataset_fingerprint,
            "dataset_options": sorted(dataset_options),
            "settings": asdict(settings),
            "schema": SCHEMA_VERSION,
        },
        sort_keys=True,
        default=list,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
