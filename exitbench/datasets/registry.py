"""Test-set registry: ``--dataset NAME[:PATH]`` resolves to a TestSet factory."""

from __future__ import annotations

from typing import Any

from exitbench.datasets.base import DatasetError, TestSet
from exitbench.plugins import Registry

#: name -> factory(path: str | None, **options) -> TestSet. Options every factory may receive:
#: ``sample_rate`` (the model's rate), ``resample`` (bool), ``split``, ``variant``, ``limit``,
#: and any ``--dataset-opt key=value`` given by the user; a factory ignores what it does not take.
DATASETS: Registry[TestSet] = Registry(
    "dataset",
    "exitbench.datasets",
    {
        "synthetic": "exitbench.datasets.synthetic:SyntheticMixtures",
        "wsj0-2mix": "exitbench.datasets.folders:wsj0_2mix",
        "wsj0-3mix": "exitbench.datasets.folders:wsj0_3mix",
        "wham": "exitbench.datasets.folders:Wham",
        "whamr": "exitbench.datasets.folders:Whamr",
        "voicebank": "exitbench.datasets.folders:VoiceBank",
        "dns": "exitbench.datasets.folders:Dns",
        "librimix": "exitbench.datasets.manifest:librimix",
        "manifest": "exitbench.datasets.manifest:manifest",
        "demo": "exitbench.datasets.folders:demo",
        "demo-enhance": "exitbench.datasets.folders:demo_enhance",
    },
    base=TestSet, produces=True, error=DatasetError,
)


def parse_dataset_arg(arg: str) -> tuple[str, str | None]:
    """Split ``NAME[:PATH]`` (a PATH may itself contain ':' only after the first one)."""
    name, sep, path = arg.partition(":")
    if not name:
        raise DatasetError(f"--dataset {arg!r}: expected NAME or NAME:PATH")
    return name, (path if sep else None)


def open_testset(arg: str, **options: Any) -> TestSet:
    """Open a test set from ``NAME[:PATH]`` and options; DatasetError with a clear reason otherwise."""
    name, path = parse_dataset_arg(arg)
    return DATASETS.build(name, path=path, **options)
