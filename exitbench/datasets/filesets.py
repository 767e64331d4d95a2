"""A TestSet over audio files on disk: an ordered list of (mixture, sources) file groups.

Folder layouts and manifests only differ in how they find the files; loading, checking and
fingerprinting are shared here (the audio itself is read and checked by ``audio.py``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import soundfile as sf

from exitbench.datasets.audio import display_path, load_utterance
from exitbench.datasets.base import DatasetError, TestSet, Utterance, UtteranceError, hash_strings
from exitbench.datasets.options import as_bool, as_int

if TYPE_CHECKING:
    import pandas as pd

FINGERPRINT_MODES = ("content", "stat")
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class UttFiles:
    """The files of one utterance; a source path is None where a manifest row names none."""

    id: str
    mixture: Path
    sources: tuple[Path | None, ...]
    roles: tuple[str, ...]
    metadata: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------- options

def rate_folder(rate: int) -> str:
    """8000 -> 'wav8k' (the mixing scripts' folder name)."""
    return f"wav{rate // 1000}k" if rate % 1000 == 0 else f"wav{rate}"


def natural_key(text: str) -> list[Any]:
    """Sort key that orders 'fileid_2' before 'fileid_10'."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def python_scalar(value: Any) -> Any:
    """A JSON-able Python value for a metadata cell (NaN -> None, numpy scalars -> Python)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# ------------------------------------------------------------------------------------ fingerprint

def file_digest(path: Path, mode: str) -> str:
    """sha256 of the bytes ('content'), or size+mtime ('stat', cheap for huge sets, not copy-stable)."""
    st = path.stat()
    if mode == "stat":
        return f"{st.st_size}:{st.st_mtime_ns}"
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
    return f"{st.st_size}:{h.hexdigest()}"


# --------------------------------------------------------------------------------------- metadata

ID_COLUMNS = ("id", "utt_id", "utterance_id", "mixture_ID", "mixture_id", "name", "file", "filename")


def read_csv_text(path: Path, what: str) -> pd.DataFrame:
    """A CSV as a DataFrame of the text written in each cell ('NA', 'nan', 'null' and '' stay themselves)."""
    import pandas as pd

    try:
        # pandas' default NA parsing would turn ids such as 'NA' or 'nan' into NaN, so nothing is parsed here
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except Exception as exc:  # pandas raises many types for a broken CSV
        raise DatasetError(f"cannot read {what} {path}: {exc}") from exc


_BOOLS = {"True": True, "TRUE": True, "true": True, "False": False, "FALSE": False, "false": False}


def typed_column(cells: list[str]) -> list[Any]:
    """A metadata column read as text, typed as pandas infers it (numbers, bools, else the text); '' -> None."""
    import pandas as pd

    present = [c for c in cells if c != ""]
    values: list[Any] = present
    if present and all(c in _BOOLS for c in present):
        values = [_BOOLS[c] for c in present]
    else:
        try:
            values = pd.to_numeric(pd.Series(present, dtype=object)).tolist()
        except (ValueError, TypeError):
            pass  # a column with any non-number stays text, as pandas would keep it
    it = iter(values)
    return [python_scalar(next(it)) if c != "" else None for c in cells]


def read_metadata_csv(path: Path, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Rows of a metadata CSV keyed by utterance id; the key column is the one whose values match the ids.

    A value matches as given or as a file name (its stem), so 'mix/x.wav' and 'x' both join to id 'x'.
    """
    table = read_csv_text(path, "metadata")
    wanted = set(ids)

    def keys(column: str) -> list[str]:
        return [v if v in wanted else Path(v).stem for v in table[column]]

    named = [c for c in ID_COLUMNS if c in table.columns]
    candidates = named + [c for c in table.columns if c not in named]
    best, best_hits = None, 0
    for column in candidates:
        hits = len(wanted.intersection(keys(column)))
        if hits > best_hits:
            best, best_hits = column, hits
    if best is None:
        raise DatasetError(f"metadata {path}: no column matches the utterance ids (e.g. {ids[:2]});"
                           f" columns: {', '.join(map(str, table.columns))}")
    columns = {str(c): typed_column(table[c].tolist()) for c in table.columns if c != best}
    return {key: {c: values[i] for c, values in columns.items()} for i, key in enumerate(keys(best))}


# ---------------------------------------------------------------------------------------- testset

class FileTestSet(TestSet):
    """Utterances given as files: cheap ``ids()``, checked ``load()``, a root-independent fingerprint."""

    def __init__(self, name: str, root: Path, items: list[UttFiles], *, num_sources: int,
                 sample_rate: Any = None, resample: Any = False, limit: Any = None,
                 fingerprint_mode: str = "content", settings: dict[str, Any] | None = None, **_: Any):
        self.name = name
        self.root = Path(root)
        self.num_sources = num_sources
        self.resample = as_bool(resample)
        self.fingerprint_mode = str(fingerprint_mode)
        if self.fingerprint_mode not in FINGERPRINT_MODES:
            raise DatasetError(f"option fingerprint_mode={fingerprint_mode!r}: expected one of"
                               f" {', '.join(FINGERPRINT_MODES)}")
        self.settings = dict(settings or {})
        if not items:
            raise DatasetError(f"{name}: no utterances found under {self.root}")
        seen: set[str] = set()
        dupes = sorted({it.id for it in items if it.id in seen or seen.add(it.id)})
        if dupes:
            raise DatasetError(f"{name}: duplicate utterance ids {dupes[:5]} under {self.root}")
        n = as_int(limit, "limit", minimum=1)
        self._items = items[:n] if n is not None else items
        self._by_id = {it.id: it for it in self._items}
        rate = as_int(sample_rate, "sample_rate", minimum=1)
        # without a model rate, the set runs at its own rate (read from one header, no decoding)
        self.sample_rate = rate if rate is not None else self._native_rate()
        self._fingerprint: str | None = None

    def _native_rate(self) -> int:
        for item in self._items:
            try:
                return int(sf.info(str(item.mixture)).samplerate)
            except (sf.LibsndfileError, RuntimeError, OSError):
                continue
        raise DatasetError(f"{self.name}: no readable mixture under {self.root} to take the sample rate from")

    def ids(self) -> list[str]:
        return [it.id for it in self._items]

    def files(self, utt_id: str) -> UttFiles:
        """The files behind one id (UtteranceError for an unknown id)."""
        try:
            return self._by_id[utt_id]
        except KeyError:
            raise UtteranceError(utt_id, f"not an utterance of {self.name} at {self.root}") from None

    def load(self, utt_id: str) -> Utterance:
        item = self.files(utt_id)
        missing = [role for role, p in zip(item.roles, item.sources) if p is None]
        if missing:
            raise UtteranceError(utt_id, f"no path given for {', '.join(missing)}")
        return load_utterance(utt_id, item.mixture, list(item.sources), list(item.roles),  # type: ignore[arg-type]
                              self.sample_rate, self.resample, self.root, item.metadata)

    def _entries(self) -> list[tuple[str, Path | None, str]]:
        """(key, path, role) for every file; the key is root-relative, or id/role outside the root."""
        out = []
        for item in self._items:
            for role, path in (("mixture", item.mixture), *zip(item.roles, item.sources)):
                if path is not None and path.is_relative_to(self.root):
                    key = Path(os.path.relpath(path, self.root)).as_posix()
                else:
                    key = f"{item.id}/{role}"
                out.append((key, path, role))
        return sorted(out, key=lambda e: (e[0], e[2]))

    def fingerprint(self) -> str:
        """sha256 over the sorted relative file list with sizes and content hashes (or mtimes), roles and metadata."""
        if self._fingerprint is None:
            entries = self._entries()

            def digest(path: Path | None) -> str:
                return file_digest(path, self.fingerprint_mode) if path is not None and path.is_file() else "missing"

            # hashlib releases the GIL on large buffers, so a few threads overlap IO and hashing
            with ThreadPoolExecutor(max_workers=4) as pool:
                digests = list(pool.map(digest, [e[1] for e in entries]))
            meta = [json.dumps([it.id, it.metadata], sort_keys=True, default=str) for it in self._items]
            self._fingerprint = hash_strings(
                [f"exitbench-files-v1:{self.fingerprint_mode}"]
                + [f"{key}\t{role}\t{d}" for (key, _, role), d in zip(entries, digests)] + sorted(meta))
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(root=str(self.root), resample=self.resample, fingerprint_mode=self.fingerprint_mode,
                   **self.settings)
        return out

    def shown(self, path: Path) -> str:
        """A path as messages show it (relative to the set's root when under it)."""
        return display_path(path, self.root)
