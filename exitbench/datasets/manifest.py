"""Manifest loaders: a CSV or JSONL table of (id, mixture path, source paths, extra columns).

``manifest`` reads a generic table; ``librimix`` reads the metadata CSVs that the LibriMix scripts
write (mixture_ID, mixture_path, source_1_path, source_2_path[, noise_path], length). Relative
paths resolve against the root; absolute paths that no longer exist (a data set moved since it was
generated) are relocated once, by the longest common tail, onto the root.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from exitbench.datasets.base import DatasetError
from exitbench.datasets.filesets import FileTestSet, UttFiles, rate_folder, read_csv_text, typed_column
from exitbench.datasets.folders import list_found
from exitbench.datasets.options import as_int, parse_rate

ID_COLUMNS = ("id", "utt_id", "utterance_id", "mixture_ID", "mixture_id")
MIXTURE_COLUMNS = ("mixture", "mixture_path", "mix", "mix_path")
_SOURCE_COLUMN = re.compile(r"^(?:source|src|s)_?(\d+)(?:_path)?$")
#: columns that name other files (not references); kept out of the metadata
PATH_COLUMNS = ("noise_path", "noise")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL manifest as parsed, or of a CSV one with every cell as its text, as plain dicts."""
    if path.suffix.lower() in JSONL_SUFFIXES:
        rows = []
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}:{lineno}: not a JSON object per line: {exc}") from None
                if not isinstance(row, dict):
                    raise DatasetError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
        return rows
    return [{str(k): v for k, v in row.items()} for row in read_csv_text(path, "manifest").to_dict("records")]


def _source_list(value: Any) -> list[Any]:
    """A 'sources' cell: a list (JSONL), or a JSON list / ';'-separated paths (CSV)."""
    if isinstance(value, list):
        return value
    text = str(value).strip()
    if text.startswith("["):
        return list(json.loads(text))
    return [p.strip() for p in text.split(";")]


class ManifestSet(FileTestSet):
    """A test set listed by a manifest table; extra columns go into ``Utterance.metadata``."""

    def __init__(self, path: str | None = None, root: str | None = None, name: str = "manifest",
                 id_column: str | None = None, mixture_column: str | None = None,
                 source_columns: str | list[str] | None = None, exclude_columns: tuple[str, ...] = PATH_COLUMNS,
                 settings: dict[str, Any] | None = None, **options: Any):
        if not path:
            raise DatasetError(f"{name} needs a PATH to a .csv or .jsonl manifest,"
                               f" e.g. --dataset {name}:/data/test.csv")
        table_path = Path(path).expanduser().resolve()
        if not table_path.is_file():
            raise DatasetError(f"{name}: expected a .csv or .jsonl manifest at {table_path};"
                               f" found: {list_found(table_path)}")
        rows = read_table(table_path)
        if not rows:
            raise DatasetError(f"{name}: manifest {table_path} has no rows: the test set is empty")
        columns = list(rows[0])
        id_col = id_column or next((c for c in ID_COLUMNS if c in columns), None)
        mix_col = mixture_column or next((c for c in MIXTURE_COLUMNS if c in columns), None)
        src_cols = self._source_columns(source_columns, columns)
        if mix_col is None or mix_col not in columns or not src_cols:
            raise DatasetError(
                f"{name}: manifest {table_path} needs a mixture column ({' or '.join(MIXTURE_COLUMNS)}) and"
                f" source columns (source_1, source_2, ... or a 'sources' list); found columns: {', '.join(columns)}")
        if id_col is not None and id_col not in columns:
            raise DatasetError(f"{name}: id column {id_col!r} not in manifest columns {', '.join(columns)}")
        bases = self._bases(root, table_path)
        resolver = _Resolver(name, bases, [r[mix_col] for r in rows[:5] if r.get(mix_col)])
        skip = {id_col, mix_col, *src_cols, *exclude_columns}
        if table_path.suffix.lower() not in JSONL_SUFFIXES:
            # ids and paths stay the text written; the metadata columns get the types pandas would infer
            for column in [c for c in columns if c not in skip and c not in ID_COLUMNS]:
                for row, value in zip(rows, typed_column([r[column] for r in rows])):
                    row[column] = value
        items = []
        for i, row in enumerate(rows):
            if not row.get(mix_col):
                raise DatasetError(f"{name}: manifest row {i + 1} has no mixture path")
            mixture = resolver(row[mix_col])
            raw_id = row.get(id_col) if id_col is not None else None
            # an empty id cell (or a JSON null) means no id was given, as an absent id column does
            utt_id = mixture.stem if raw_id is None or raw_id == "" else str(raw_id)
            if src_cols == ["sources"]:
                srcs = [resolver(p) if p else None for p in _source_list(row["sources"])]
                roles = [f"source_{k}" for k in range(1, len(srcs) + 1)]
            else:
                srcs = [resolver(row[c]) if row.get(c) else None for c in src_cols]
                roles = list(src_cols)
            meta = {k: v for k, v in row.items() if k not in skip}
            items.append(UttFiles(utt_id, mixture, tuple(srcs), tuple(roles), meta))
        num_sources = max(len(it.sources) for it in items)
        settings = {"manifest": table_path.name, **(settings or {})}
        if resolver.relocated:
            settings["relocated"] = resolver.relocated
        super().__init__(name, resolver.base, items, num_sources=num_sources, settings=settings, **options)

    @staticmethod
    def _source_columns(given: str | list[str] | None, columns: list[str]) -> list[str]:
        if given:
            return given.split(",") if isinstance(given, str) else list(given)
        if "sources" in columns:
            return ["sources"]
        numbered = [c for c in columns if _SOURCE_COLUMN.match(c)]
        return sorted(numbered, key=lambda c: int(_SOURCE_COLUMN.match(c).group(1)))  # type: ignore[union-attr]

    @staticmethod
    def _bases(root: str | None, table_path: Path) -> list[Path]:
        """Folders a relative path may be relative to: the root given, else the manifest's folder and its parents."""
        if root:
            return [Path(root).expanduser().resolve()]
        return list(dict.fromkeys([table_path.parent, *list(table_path.parents)[1:4]]))


class _Resolver:
    """Turns manifest paths into files: picks the base of relative paths and the relocation of absolute ones."""

    def __init__(self, name: str, bases: list[Path], probes: list[Any]):
        self.base = bases[0]
        self.relocated: dict[str, str] = {}
        self._old_prefix: Path | None = None
        probes = [str(p) for p in probes]
        relative = [p for p in probes if not Path(p).is_absolute()]
        if relative:
            # the first base under which a probe exists serves the whole table
            self.base = next((b for b in bases for p in relative if (b / p).exists()), bases[0])
        absolute = [Path(p) for p in probes if Path(p).is_absolute()]
        if absolute and not any(p.exists() for p in absolute):
            self._relocate(absolute, bases)
        elif absolute and not relative:
            # the closest folder holding the files keys the fingerprint, as a relocated or relative table would
            self.base = next((b for b in bases for p in absolute if p.exists() and p.is_relative_to(b)), bases[0])
        if not any(self(p).exists() for p in probes):
            shown = ", ".join(str(b) for b in bases)
            raise DatasetError(f"{name}: manifest paths do not resolve: e.g. {probes[0]!r} is not a file"
                               f" (relative paths are tried under {shown}; give root=FOLDER)")

    def _relocate(self, paths: list[Path], bases: list[Path]) -> None:
        for path in paths:
            parts = path.parts
            for k in range(1, len(parts)):  # shortest tail first: the closest folder that still holds it
                tail = Path(*parts[-k:])
                for base in bases:
                    if (base / tail).exists():
                        self._old_prefix, self.base = Path(*parts[:-k]), base
                        self.relocated = {str(self._old_prefix): str(base)}
                        return

    def __call__(self, value: Any) -> Path:
        p = Path(str(value)).expanduser()
        if not p.is_absolute():
            return (self.base / p).resolve()
        if self._old_prefix is not None and p.is_relative_to(self._old_prefix):
            return self.base / p.relative_to(self._old_prefix)
        return p


def manifest(path: str | None = None, **options: Any) -> ManifestSet:
    """``--dataset manifest:FILE.csv|FILE.jsonl`` (options: root, id_column, mixture_column, source_columns)."""
    return ManifestSet(path, **options)


LIBRIMIX_VARIANTS = ("mix_clean", "mix_both", "mix_single")


def _find_librimix_csv(path: str | None, split: str, variant: str, rate: Any, mode: str,
                       sample_rate: Any) -> Path:
    if not path:
        raise DatasetError("librimix needs a PATH, e.g. --dataset librimix:/data/Libri2Mix/wav8k/min")
    base = Path(path).expanduser().resolve()
    if base.is_file():
        return base
    csv = f"mixture_{split}_{variant}.csv"
    model_rate = as_int(sample_rate, "sample_rate", minimum=1)
    rates = [parse_rate(rate)] if rate is not None else list(
        dict.fromkeys(([model_rate] if model_rate is not None else []) + [8000, 16000]))
    rels = ["", "metadata"] + [f"{rate_folder(r)}/{mode}/metadata" for r in rates]
    rels += [f"Libri{n}Mix/{rate_folder(r)}/{mode}/metadata" for n in (2, 3) for r in rates]
    for rel in rels:
        if (base / rel / csv).is_file():
            return base / rel / csv
    raise DatasetError(f"librimix: expected {csv} under {base} or {base}/metadata (or"
                       f" wav8k|wav16k/{mode}/metadata below it); found: {list_found(base)}")


def librimix(path: str | None = None, variant: str | None = None, split: str | None = None, rate: Any = None,
             mode: str = "min", **options: Any) -> ManifestSet:
    """``--dataset librimix:PATH``: LibriMix metadata CSVs; variant mix_clean|mix_both|mix_single, split test."""
    variant = variant or "mix_clean"
    if variant not in LIBRIMIX_VARIANTS:
        raise DatasetError(f"librimix: option variant={variant!r}; expected one of {', '.join(LIBRIMIX_VARIANTS)}")
    split = split or "test"
    csv = _find_librimix_csv(path, split, variant, rate, mode, options.get("sample_rate"))
    # relative paths resolve under metadata/ or its parents (Libri2Mix/wav8k/min holds test/ next to metadata/)
    for k in ("id_column", "mixture_column", "source_columns", "name"):
        options.pop(k, None)
    return ManifestSet(str(csv), name="librimix", id_column="mixture_ID", mixture_column="mixture_path",
                       settings={"variant": variant, "split": split}, **options)

