"""Audio for the report: a recorded utterance's mixture, and its estimates re-computed by the run's model.

A recording keeps per-block sums, not waveforms, so to let a reader listen the report runs the
run's model again (as the manifest's spec names it, on the CPU) on the few utterances it plays,
applies the permutation the recording stored, stitches each policy's output from the levels it
chose per block, and checks the re-computed estimates against the recorded SI-SNR. Clips are
embedded as compressed ``data:`` URIs (Ogg/Opus where libsndfile can write it, else Ogg/Vorbis,
MP3, or a low-rate 16-bit WAV).
"""

from __future__ import annotations

import base64
import io
import json
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from exitbench.results.analysis import manifest

#: sample rates libsndfile's Opus encoder accepts
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


@dataclass
class MixtureAudio:
    """A mixture waveform, or why it could not be loaded (the exit map then draws blocks only)."""

    audio: np.ndarray | None
    sample_rate: int
    reason: str = ""


def _spec(man: dict[str, Any]) -> dict[str, Any] | None:
    spec = man.get("spec")
    return spec if isinstance(spec, dict) and "dataset" in spec else None


def _open_testset(man: dict[str, Any]) -> Any:
    from exitbench.datasets.registry import open_testset

    spec = _spec(man)
    options = {str(k): v for k, v in spec.get("dataset_options", [])}
    options["sample_rate"] = int(man["sample_rate"])
    options["resample"] = bool(spec.get("settings", {}).get("resample", False))
    return open_testset(spec["dataset"], **options)


def load_mixture(root: str | os.PathLike, run_id: str, utt_id: str) -> MixtureAudio:
    """Open the run's test set as it was recorded (runs.spec) and load one utterance's mixture."""
    man = manifest(root, run_id)
    sr = int(man["sample_rate"])
    if _spec(man) is None:
        return MixtureAudio(None, sr, "the run's manifest has no dataset spec")
    try:
        utt = _open_testset(man).load(utt_id)
    except Exception as exc:  # noqa: BLE001 - any loader failure (moved data, missing plug-in) means: no audio
        return MixtureAudio(None, sr, f"mixture audio unavailable ({type(exc).__name__}: {exc})")
    return MixtureAudio(np.asarray(utt.mixture, dtype=np.float32), int(utt.sample_rate))


# -- re-computing estimates --------------------------------------------------------------------------
@dataclass
class Recomputed:
    """One utterance run through the run's model again: every level's estimate, permuted as recorded."""

    utt_id: str
    sample_rate: int
    mixture: np.ndarray  # [N]
    sources: np.ndarray  # [S, N]
    estimates: np.ndarray  # [L', S, N]: the static levels, then the dynamic output if recorded
    level_names: list[str]
    #: the largest |re-computed − recorded| SI-SNR over levels and sources (dB)
    max_deviation_db: float = float("nan")


class AudioUnavailable(Exception):
    """Why the report cannot play a run's estimates (the model or the data cannot be reopened)."""


@dataclass
class RunModel:
    """The run's model and test set, reopened once for all the utterances a report plays."""

    model: Any
    testset: Any
    sample_rate: int
    checkpoint_note: str = ""


def open_run_model(root: str | os.PathLike, run_id: str, man: dict[str, Any] | None = None) -> RunModel:
    """Resolve the run's model (checkpoint or factory and arguments, the recorded block size) and test set.

    ``man``: the run's manifest when the caller has it (then no query is made, so that this can run in
    a thread beside others that query the root). Raises AudioUnavailable when either cannot be reopened
    or when the checkpoint's bytes are no longer the ones recorded (its sha256 differs): its estimates
    would not be the run's."""
    from exitbench.models.registry import resolve_model

    man = manifest(root, run_id) if man is None else man
    spec = _spec(man)
    if spec is None:
        raise AudioUnavailable("the run's manifest has no spec to reopen its model and test set")
    try:
        resolved = resolve_model(spec["model"], {str(k): v for k, v in spec.get("model_args", [])}, check=False,
                                 block_size=int(man["block_size"]) if man.get("block_size") else None)
    except Exception as exc:  # noqa: BLE001 - a moved checkpoint, a plug-in not importable here
        raise AudioUnavailable(f"the run's model {spec['model']!r} cannot be reopened"
                               f" ({type(exc).__name__}: {exc})") from None
    recorded = man.get("checkpoint_sha256")
    if recorded and resolved.identity != recorded:
        raise AudioUnavailable(f"the model {spec['model']!r} is no longer the one recorded (its identity"
                               f" {resolved.identity[:12]}… differs from the run's {str(recorded)[:12]}…)")
    try:
        testset = _open_testset(man)
    except Exception as exc:  # noqa: BLE001
        raise AudioUnavailable(f"the run's test set cannot be reopened ({type(exc).__name__}: {exc})") from None
    model = resolved.model.to("cpu").eval()
    return RunModel(model, testset, int(man["sample_rate"]))


@dataclass
class ModelOutput:
    """One utterance and the model's estimates of it, [L', S, N] (static levels, then any dynamic one)."""

    utt: Any
    estimates: np.ndarray
    level_names: list[str]


def model_output(run_model: RunModel, utt_id: str) -> ModelOutput:
    """Load one utterance and run the model on it (no query of the root: this may run in a thread)."""
    import torch

    try:
        utt = run_model.testset.load(utt_id)
    except Exception as exc:  # noqa: BLE001
        raise AudioUnavailable(f"utterance {utt_id!r} cannot be loaded ({type(exc).__name__}: {exc})") from None
    model = run_model.model
    n = int(utt.num_samples)
    mix = torch.from_numpy(np.ascontiguousarray(utt.mixture, dtype=np.float32))
    try:
        with torch.inference_mode():
            out = model.forward_all(mix)
    except Exception as exc:  # noqa: BLE001
        raise AudioUnavailable(f"the model failed on {utt_id!r} ({type(exc).__name__}: {exc})") from None

    def fit(a: np.ndarray) -> np.ndarray:  # a few samples too many or too few: trimmed or padded
        a = a[..., :n]
        return np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, n - a.shape[-1])]) if a.shape[-1] < n else a

    est = fit(out.estimates.detach().float().cpu().numpy())
    names = list(model.levels)
    if out.dynamic is not None:
        est = np.concatenate([est, fit(out.dynamic.estimates.detach().float().cpu().numpy())[None]], axis=0)
        names.append("dynamic")
    return ModelOutput(utt, est, names)


def recompute(root: str | os.PathLike, run_id: str, utt_id: str, run_model: RunModel,
              output: ModelOutput | None = None) -> Recomputed:
    """Run the model on one utterance (or take ``output``, its ``model_output``); estimates [L', S, N] in
    the recorded source order, checked against the recorded SI-SNR (``max_deviation_db``)."""
    from exitbench.metrics import apply_permutation, best_permutation, si_snr
    from exitbench.reports.queries import df as _df

    output = model_output(run_model, utt_id) if output is None else output
    utt, est, names = output.utt, output.estimates, output.level_names
    model = run_model.model
    recorded = _df(root, """SELECT level, source, si_snr, permutation FROM utterances
                            WHERE run = ? AND utt_id = ? ORDER BY level, source""", [run_id, utt_id])
    perm = None
    if len(recorded) and isinstance(recorded["permutation"].iloc[0], str):
        try:
            perm = [int(p) for p in json.loads(recorded["permutation"].iloc[0])]
        except (ValueError, TypeError, json.JSONDecodeError):
            perm = None
    if perm is None or sorted(perm) != list(range(est.shape[1])):
        perm = list(best_permutation(est[len(model.levels) - 1], utt.sources))
    est = apply_permutation(est, perm)
    sources = np.asarray(utt.sources, dtype=np.float64)
    dev = np.nan
    if len(recorded):
        diffs = []
        for r in recorded.itertuples(index=False):
            if int(r.level) < est.shape[0] and np.isfinite(r.si_snr):
                mine = float(si_snr(est[int(r.level), int(r.source)].astype(np.float64), sources[int(r.source)]))
                diffs.append(abs(mine - float(r.si_snr)))
        dev = max(diffs) if diffs else np.nan
    return Recomputed(utt_id, int(utt.sample_rate), np.asarray(utt.mixture, dtype=np.float64), sources,
                      est.astype(np.float64), names, dev)


def stitch(estimates: np.ndarray, start: Sequence[int], n: Sequence[int], level: Sequence[int]) -> np.ndarray:
    """The output a policy produces: per block, the chosen level's estimate ([L', S, N] -> [S, N])."""
    out = np.zeros(estimates.shape[1:], dtype=estimates.dtype)
    for s0, k, lv in zip(start, n, level):
        out[:, int(s0):int(s0) + int(k)] = estimates[int(lv), :, int(s0):int(s0) + int(k)]
    return out


# -- encoding ---------------------------------------------------------------------------------------
@dataclass
class Codec:
    """How clips are encoded: libsndfile format and subtype, MIME type, the rate written, a description."""

    format: str
    subtype: str
    mime: str
    sample_rate: int
    description: str
    options: dict[str, Any] = field(default_factory=dict)


def choose_codec(sample_rate: int, kbps: float = 16.0) -> Codec:
    """The most compact format this soundfile/libsndfile writes: Opus, else Vorbis, else MP3, else WAV."""
    import soundfile as sf

    formats = sf.available_formats()
    ogg = sf.available_subtypes("OGG") if "OGG" in formats else {}
    # libsndfile maps compression level 0..1 to the bit rate: roughly 8 + 256·(1 − level) kbps for Opus
    opus_level = float(np.clip(1.0 - (kbps - 8.0) / 256.0, 0.0, 1.0))
    if "OPUS" in ogg:
        rate = sample_rate if sample_rate in OPUS_RATES else min(OPUS_RATES, key=lambda r: (r < sample_rate, r))
        if _can_write("OGG", "OPUS", rate, opus_level):
            return Codec("OGG", "OPUS", "audio/ogg; codecs=opus", rate, f"Ogg/Opus, about {kbps:g} kbit/s",
                         {"compression_level": opus_level})
    if "VORBIS" in ogg and _can_write("OGG", "VORBIS", sample_rate, 0.9):
        return Codec("OGG", "VORBIS", "audio/ogg; codecs=vorbis", sample_rate, "Ogg/Vorbis (quality 0.1)",
                     {"compression_level": 0.9})
    if "MP3" in formats and _can_write("MP3", "MPEG_LAYER_III", sample_rate, 0.9):
        return Codec("MP3", "MPEG_LAYER_III", "audio/mpeg", sample_rate, "MP3", {"compression_level": 0.9})
    rate = min(sample_rate, 8000)
    return Codec("WAV", "PCM_16", "audio/wav", rate, f"16-bit WAV at {rate} Hz (no compressed codec available)")


def _can_write(fmt: str, subtype: str, rate: int, level: float) -> bool:
    import soundfile as sf

    try:
        buf = io.BytesIO()
        sf.write(buf, np.zeros(rate // 10, dtype=np.float32), rate, format=fmt, subtype=subtype,
                 compression_level=level)
        return len(buf.getvalue()) > 0
    except Exception:  # noqa: BLE001 - libsndfile says no in several ways
        return False


def _resample(x: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    if sr_from == sr_to:
        return x
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(sr_from, sr_to)
    return resample_poly(x, sr_to // g, sr_from // g).astype(np.float32)


def encode(audio: np.ndarray, sample_rate: int, codec: Codec, gain: float = 1.0) -> str:
    """One mono clip as a ``data:`` URI (scaled by ``gain``, clipped to ±1)."""
    import soundfile as sf

    x = np.clip(np.asarray(audio, dtype=np.float64) * gain, -1.0, 1.0).astype(np.float32)
    x = _resample(x, sample_rate, codec.sample_rate)
    buf = io.BytesIO()
    sf.write(buf, x, codec.sample_rate, format=codec.format, subtype=codec.subtype, **codec.options)
    mime = codec.mime.replace(" ", "")
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def common_gain(signals: Sequence[np.ndarray], peak: float = 0.9) -> float:
    """One gain for every clip of an utterance (its loudest sample at ``peak``), so loudness compares."""
    top = max((float(np.max(np.abs(s))) for s in signals if np.size(s)), default=0.0)
    return peak / top if top > 0 else 1.0
