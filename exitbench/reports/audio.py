"""The mixture audio of a recorded utterance, reopened through the run's dataset spec (for the exit map)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from exitbench.results.analysis import manifest


@dataclass
class MixtureAudio:
    """A mixture waveform, or why it could not be loaded (the exit map then draws blocks only)."""

    audio: np.ndarray | None
    sample_rate: int
    reason: str = ""


def load_mixture(root: str | os.PathLike, run_id: str, utt_id: str) -> MixtureAudio:
    """Open the run's test set as it was recorded (runs.spec) and load one utterance's mixture."""
    from exitbench.datasets.registry import open_testset

    man = manifest(root, run_id)
    sr = int(man["sample_rate"])
    spec = man.get("spec")
    if not isinstance(spec, dict) or "dataset" not in spec:
        return MixtureAudio(None, sr, "the run's manifest has no dataset spec")
    options = {str(k): v for k, v in spec.get("dataset_options", [])}
    options["sample_rate"] = sr
    options["resample"] = bool(spec.get("settings", {}).get("resample", False))
    try:
        utt = open_testset(spec["dataset"], **options).load(utt_id)
    except Exception as exc:  # noqa: BLE001 - any loader failure (moved data, missing plug-in) means: no audio
        return MixtureAudio(None, sr, f"mixture audio unavailable ({type(exc).__name__}: {exc})")
    return MixtureAudio(np.asarray(utt.mixture, dtype=np.float32), int(utt.sample_rate))
