"""Run specs: a frozen, serialisable description of a recording whose hash is the run id."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from exitbench.errors import UsageError
from exitbench import SCHEMA_VERSION

ALL_METRICS = ("sdr", "pesq", "stoi")  # SI-SNR and SNR are always computed: they are cheap
STOI_BACKENDS = ("torch", "pystoi")
#: settings added after the first wave, at the values that reproduce its recordings: they enter the
#: run id only when they differ, so a first-wave root still resumes under the same ids
LEGACY_SETTINGS = {"stoi_backend": "pystoi", "metric_levels": ()}


@dataclass(frozen=True)
class RecordSettings:
    """Settings that change what a recording contains (all of them enter the run id)."""

    metrics: tuple[str, ...] = ALL_METRICS
    sdr_backend: str = "fast_bss_eval"  # or "mir_eval"
    shard_size: int = 8  # utterances per shard; fixes shard membership, so it is part of the id
    resample: bool = False
    limit: int | None = None  # first N utterances only
    block_size: int | None = None  # samples per block; None: the model's own (the run id holds the one used)
    stoi_backend: str = "torch"  # exitbench.metrics.stoi_torch (checked against pystoi to 1e-4) or pystoi
    #: (metric, "level+level") pairs: the levels a metric is computed at (others: NaN); () = every level
    metric_levels: tuple[tuple[str, str], ...] = ()

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
        if self.stoi_backend not in STOI_BACKENDS:
            raise UsageError(f"--stoi-backend must be one of {list(STOI_BACKENDS)}, not {self.stoi_backend!r}")
        for metric, _levels in self.metric_levels:
            if metric not in ALL_METRICS:
                raise UsageError(f"--metric-levels names {metric!r}, which is not one of {list(ALL_METRICS)}"
                                 f" (SI-SNR and SNR are always computed at every level)")
            if metric not in self.metrics:
                raise UsageError(f"--metric-levels names {metric!r}, which --metrics leaves out")

    def levels_for(self, metric: str) -> frozenset[str] | None:
        """The level names ``metric`` is computed at (canonical once prepared); None: every level."""
        for m, levels in self.metric_levels:
            if m == metric:
                return frozenset(levels.split("+"))
        return None

    def id_fields(self) -> dict:
        """The settings as they enter the run id (post-first-wave fields only when not at their legacy value)."""
        d = asdict(self)
        for key, legacy in LEGACY_SETTINGS.items():
            if d[key] == legacy:
                del d[key]
        return d


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
        s["metric_levels"] = tuple(tuple(kv) for kv in s.get("metric_levels", ()))
        s.setdefault("stoi_backend", LEGACY_SETTINGS["stoi_backend"])  # a spec written before it existed
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
            "settings": settings.id_fields(),
            "schema": SCHEMA_VERSION,
        },
        sort_keys=True,
        default=list,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
