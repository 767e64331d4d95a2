"""Dense per-block arrays of a recording: the one input every policy, replay and sweep works on."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from exitbench.errors import UsageError
from exitbench.metrics.composite import true_exit_snr_db

#: the summed statistics of DESIGN §4, each [K, L, S] float64
STAT_COLUMNS = ("sum_ref", "sum_est", "sum_mix", "e_ref", "e_est", "e_mix",
                "dot_est_ref", "dot_mix_ref", "dot_est_mix")
#: statistics that depend on the level (the rest describe reference and mixture only)
LEVEL_STATS = ("sum_est", "e_est", "dot_est_ref", "dot_est_mix")
KEY_COLUMNS = ("utt_id", "block", "level", "source", "start", "n")
OPTIONAL_COLUMNS = ("alpha", "beta", "router_logit")


def dbfs_to_power(db: float) -> float:
    """Mean power (mean square, full scale ±1) of a level in dBFS: 10^(db/10)."""
    return float(10.0 ** (db / 10.0))


class RecordingError(UsageError):
    """A block table that does not fit the contract (missing, duplicated or inconsistent rows)."""


@dataclass
class DynamicArrays:
    """The model's own input-adaptive output (pseudo-level L): stats [K, S] and realised MACs [K]."""

    stats: dict[str, np.ndarray]
    macs: np.ndarray


@dataclass
class BlockArrays:
    """K blocks (sorted by utterance, block) × L static levels × S sources, as float64 arrays."""

    utt: np.ndarray  # [K] int64, index into utt_ids; non-decreasing
    utt_ids: list[str]
    block: np.ndarray  # [K] int32
    start: np.ndarray  # [K] int64, first sample of the block
    n: np.ndarray  # [K] int64, samples in the block
    stats: dict[str, np.ndarray]  # name -> [K, L, S]
    macs: np.ndarray  # [K, L]
    sample_rate: int
    alpha: np.ndarray | None = None  # [K, L, S]
    beta: np.ndarray | None = None  # [K, L, S]
    router_logit: np.ndarray | None = None  # [K, L]
    dynamic: DynamicArrays | None = None
    sigma2: np.ndarray | None = None  # [K, L, S] Gaussian error variance per sample (the other family)
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [K, L] the model's exit scores
    p_ref: np.ndarray | None = None  # [K]; default: the utterance's mixture mean power
    level_names: tuple[str, ...] | None = None  # [L] static level names (the run's levels table), if known
    run_id: str | None = None  # the run these arrays were read from, if any (a learned router refuses its own)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.utt = np.asarray(self.utt, dtype=np.int64)
        self.n = np.asarray(self.n, dtype=np.int64)
        self.validate()
        if self.p_ref is None:
            self.p_ref = self.utterance_mixture_power()
        if self.level_names is not None:
            self.level_names = tuple(str(name) for name in self.level_names)
            if len(self.level_names) != self.num_levels:
                raise RecordingError(f"level_names has {len(self.level_names)} names for {self.num_levels} levels")

    # -- shape ----------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return int(self.utt.shape[0])

    @property
    def num_levels(self) -> int:
        return int(self.macs.shape[1])

    @property
    def num_sources(self) -> int:
        return int(self.stats["e_ref"].shape[2])

    @property
    def num_utts(self) -> int:
        return len(self.utt_ids)

    @property
    def utt_starts(self) -> np.ndarray:
        """Index of each utterance's first block [U] (blocks are sorted by utterance)."""
        if "utt_starts" not in self._cache:
            edge = np.empty(self.num_blocks, dtype=bool)
            edge[:1] = True
            np.not_equal(self.utt[1:], self.utt[:-1], out=edge[1:])
            self._cache["utt_starts"] = np.flatnonzero(edge)
        return self._cache["utt_starts"]

    @property
    def utt_samples(self) -> np.ndarray:
        """Samples per utterance [U] (each block counted once, not per source)."""
        if "utt_samples" not in self._cache:
            self._cache["utt_samples"] = np.add.reduceat(self.n, self.utt_starts)
        return self._cache["utt_samples"]

    def features(self) -> set[str]:
        """Optional recorded features present: alpha, beta, router_logit, sigma2, dynamic, score:<name>."""
        have = {name for name in (*OPTIONAL_COLUMNS, "sigma2") if getattr(self, name) is not None}
        have |= {f"score:{name}" for name in self.scores}
        return have | ({"dynamic"} if self.dynamic is not None else set())

    def validate(self) -> None:
        """Raise RecordingError naming the first array whose shape breaks the contract."""
        k = self.num_blocks
        if self.macs.ndim != 2 or self.macs.shape[0] != k:
            raise RecordingError(f"macs has shape {self.macs.shape}, expected [K={k}, L]")
        lv = self.macs.shape[1]
        missing = [s for s in STAT_COLUMNS if s not in self.stats]
        if missing:
            raise RecordingError(f"stats lack {missing}")
        s = self.stats["e_ref"].shape[-1] if self.stats["e_ref"].ndim == 3 else -1
        for name in STAT_COLUMNS:
            if self.stats[name].shape != (k, lv, s):
                raise RecordingError(f"stats[{name!r}] has shape {self.stats[name].shape}, expected {(k, lv, s)}")
        for name, shape in (("block", (k,)), ("start", (k,)), ("n", (k,)), ("alpha", (k, lv, s)),
                            ("beta", (k, lv, s)), ("router_logit", (k, lv)), ("p_ref", (k,))):
            arr = getattr(self, name)
            if arr is not None and arr.shape != shape:
                raise RecordingError(f"{name} has shape {arr.shape}, expected {shape}")
        if (self.alpha is None) != (self.beta is None):
            raise RecordingError("alpha and beta must be given together")
        if k and np.any(self.utt[1:] < self.utt[:-1]):
            raise RecordingError("blocks must be sorted by utterance")
        if k and (self.utt[0] < 0 or self.utt[-1] >= len(self.utt_ids)):
            raise RecordingError("utt indices out of range of utt_ids")
        if self.dynamic is not None:
            if self.dynamic.macs.shape != (k,):
                raise RecordingError(f"dynamic.macs has shape {self.dynamic.macs.shape}, expected {(k,)}")
            for name in STAT_COLUMNS:
                if self.dynamic.stats[name].shape != (k, s):
                    raise RecordingError(f"dynamic.stats[{name!r}] has shape "
                                         f"{self.dynamic.stats[name].shape}, expected {(k, s)}")

    # -- derived quantities ------------------------------------------------------------------
    def utterance_mixture_power(self) -> np.ndarray:
        """Per block [K]: its utterance's mixture mean power Σe_mix / Σn (the default P_ref)."""
        e_mix = np.add.reduceat(self.stats["e_mix"][:, 0, 0], self.utt_starts)
        power = e_mix / np.maximum(self.utt_samples, 1)
        return np.repeat(power, np.diff(np.append(self.utt_starts, self.num_blocks)))

    def with_p_ref(self, p_ref: np.ndarray | float) -> "BlockArrays":
        """A copy sharing the arrays, with another reference power P_ref (scalar or [K])."""
        p = np.broadcast_to(np.asarray(p_ref, dtype=np.float64), (self.num_blocks,)).copy()
        return dataclasses.replace(self, p_ref=p, _cache={})

    def with_level_names(self, names: Sequence[str]) -> "BlockArrays":
        """A copy sharing the arrays, carrying the static levels' names (so policies take ``l=<name>``)."""
        return dataclasses.replace(self, level_names=tuple(names), _cache={})

    def with_run_id(self, run_id: str) -> "BlockArrays":
        """A copy sharing the arrays (and their cache), labelled with the run it was read from."""
        return dataclasses.replace(self, run_id=run_id)

    def at_reference(self, p_ref: str | float) -> "BlockArrays":
        """These arrays with SNR_ref's reference power set by a policy's ``p_ref``.

        ``"mixture"``: unchanged (the recording's reference, each utterance's mixture mean power unless
        these arrays were built with another); a number: a fixed mean power of that many dBFS
        (10·log10 of the mean square, digital full scale ±1), as PRESS uses. Fixed references are
        cached, so a sweep over t computes their exit-SNR once.
        """
        if isinstance(p_ref, str):
            if p_ref != "mixture":
                raise UsageError(f"p_ref must be 'mixture' or a number (dBFS), not {p_ref!r}")
            return self
        key = ("at_reference", float(p_ref))
        if key not in self._cache:
            self._cache[key] = self.with_p_ref(dbfs_to_power(float(p_ref)))
        return self._cache[key]

    def exit_snr_db(self) -> np.ndarray:
        """True exit-SNR (dB) per block and level [K, L], plus column L for the dynamic output."""
        if "exit_snr" not in self._cache:
            n = self.n[:, None, None].astype(np.float64)
            p = self.p_ref[:, None, None]
            st = self.stats
            out = true_exit_snr_db(n, st["e_ref"], st["e_est"], st["e_mix"], st["dot_est_ref"],
                                   st["dot_mix_ref"], p, source_axis=-1)
            if self.dynamic is not None:
                d = self.dynamic.stats
                dyn = true_exit_snr_db(n[:, 0], d["e_ref"], d["e_est"], d["e_mix"], d["dot_est_ref"],
                                       d["dot_mix_ref"], p[:, 0], source_axis=-1)
                out = np.concatenate([out, dyn[:, None]], axis=1)
            self._cache["exit_snr"] = out
        return self._cache["exit_snr"]

    def source_exit_snr_db(self) -> np.ndarray:
        """True exit-SNR (dB) per block, static level and source [K, L, S]: each source's max(SNR, SNRi, SNR_ref)
        (``exit_snr_db`` is its min over sources), for per-source exits."""
        if "source_exit_snr" not in self._cache:
            n = self.n[:, None, None, None].astype(np.float64)
            p = self.p_ref[:, None, None, None]
            st = {k: v[..., None] for k, v in self.stats.items()}  # a singleton 'source' axis per source
            self._cache["source_exit_snr"] = true_exit_snr_db(
                n, st["e_ref"], st["e_est"], st["e_mix"], st["dot_est_ref"], st["dot_mix_ref"], p, source_axis=-1)
        return self._cache["source_exit_snr"]

    # -- conversion from the long block table ---------------------------------------------------
    @classmethod
    def from_arrow(cls, table: pa.Table, num_levels: int, sample_rate: int, has_dynamic: bool) -> "BlockArrays":
        """Dense arrays from the long block table (one row per utt, block, level, source)."""
        return _from_arrow(table, num_levels, sample_rate, has_dynamic)


def _column(table: pa.Table, name: str, perm: np.ndarray | None) -> np.ndarray:
    """A column as numpy (zero-copy where arrow allows), nulls as NaN, reordered by perm."""
    arr = table.column(name).to_numpy()
    return arr if perm is None else arr[perm]


def _utt_codes(table: pa.Table) -> tuple[np.ndarray, list[str]]:
    """Per row the rank of its utt_id among the sorted distinct ids, and those ids."""
    col = table.column("utt_id")
    if col.null_count:
        raise RecordingError(f"utt_id has {col.null_count} null rows")
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col)  # one dictionary shared by all chunks
    else:
        col = table.select(["utt_id"]).unify_dictionaries().column("utt_id")
    if col.num_chunks == 0:
        return np.zeros(0, dtype=np.int64), []
    dictionary = col.chunk(0).dictionary.to_pylist()
    codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in col.chunks]).astype(np.int64)
    order = np.argsort(np.asarray(dictionary, dtype=object))
    rank = np.empty(len(dictionary), dtype=np.int64)
    rank[order] = np.arange(len(dictionary))
    used = np.zeros(len(dictionary), dtype=bool)
    used[codes] = True
    if not used.all():  # a dictionary can hold ids no row uses; drop them so utt indices stay dense
        rank = np.cumsum(used[order])[rank] - 1
        order = order[used[order]]
    return rank[codes], [dictionary[i] for i in order]


def _from_arrow(table: pa.Table, num_levels: int, sample_rate: int, has_dynamic: bool) -> BlockArrays:
    missing = [c for c in (*KEY_COLUMNS, *STAT_COLUMNS, "macs", *OPTIONAL_COLUMNS) if c not in table.column_names]
    if missing:
        raise RecordingError(f"block table lacks columns {missing}")
    lp = num_levels + int(has_dynamic)
    utt, utt_ids = _utt_codes(table)
    keys = {}
    for name in ("block", "level", "source", "n", "start"):
        col = table.column(name)
        if col.null_count:
            raise RecordingError(f"{name} has {col.null_count} null rows")
        if name in ("block", "level", "source"):
            keys[name] = col.to_numpy().astype(np.int64)
    block, level, source = keys["block"], keys["level"], keys["source"]
    rows = len(utt)
    if rows == 0:
        raise RecordingError("block table is empty")
    if block.min() < 0 or source.min() < 0:
        raise RecordingError("block and source must be non-negative")
    if level.min() != 0 or level.max() != lp - 1:
        raise RecordingError(f"level values span {level.min()}..{level.max()}, expected 0..{lp - 1}"
                             f" ({num_levels} static levels{' + dynamic' if has_dynamic else ''})")
    s = int(source.max()) + 1
    nb = int(block.max()) + 1
    key = ((utt * nb + block) * lp + level) * s + source
    step = np.diff(key)
    perm = None
    if not (step > 0).all():  # the recorder writes sorted tables; anything else costs one argsort
        perm = np.argsort(key, kind="stable")
        key = key[perm]
        step = np.diff(key)
        dup = np.flatnonzero(step == 0)
        if dup.size:
            i = perm[dup[0]]
            raise RecordingError(f"duplicated rows: (utt {utt_ids[utt[i]]!r}, block {block[i]}, level {level[i]},"
                                 f" source {source[i]}) appears more than once ({dup.size} duplicates in all)")
    del step
    per = lp * s
    group = key // per
    # keys strictly increase and (level, source) has per cells, so a run of per rows in one group is complete
    if rows % per or not np.array_equal(group[::per], group[per - 1::per]):
        _raise_missing(group, key % per, lp, s, utt_ids, nb)
    k = rows // per

    def dense(name: str) -> np.ndarray:
        return _column(table, name, perm).reshape(k, lp, s)

    first = slice(None, None, per)
    ut = (utt if perm is None else utt[perm])[first]
    blk = (block if perm is None else block[perm])[first].astype(np.int32)
    b_starts = np.flatnonzero(np.r_[True, ut[1:] != ut[:-1]])
    expected = np.arange(k) - np.repeat(b_starts, np.diff(np.append(b_starts, k)))
    if not np.array_equal(blk, expected):
        i = int(np.flatnonzero(blk != expected)[0])
        raise RecordingError(f"missing blocks: utterance {utt_ids[ut[i]]!r} has block {blk[i]} where block"
                             f" {expected[i]} was expected (blocks of an utterance must be 0, 1, 2, ...)")
    n_full = dense("n")
    if not (n_full == n_full[:, :1, :1]).all():
        raise RecordingError("n differs between the levels or sources of one block")
    start = dense("start")[:, 0, 0].astype(np.int64)
    st_full = {name: dense(name) for name in STAT_COLUMNS}
    for name, arr in st_full.items():
        if np.isnan(arr).any():
            raise RecordingError(f"{name} has null or NaN rows")
    macs_full = dense("macs")
    if np.isnan(macs_full).any() or not (macs_full == macs_full[:, :, :1]).all():
        raise RecordingError("macs must be set and equal across the sources of a (block, level)")

    def optional(name: str) -> np.ndarray | None:
        arr = dense(name)[:, :num_levels]
        nan = np.isnan(arr)
        if nan.all():
            return None
        if nan.any():
            raise RecordingError(f"{name} is null on {int(nan.sum())} of {nan.size} static-level rows;"
                                 " it must be set on all or none")
        return arr

    alpha, beta = optional("alpha"), optional("beta")
    router = optional("router_logit")
    # newer columns: absent from older recordings, so optional as columns too
    sigma2 = optional("sigma2") if "sigma2" in table.column_names else None
    scores = {}
    for col in (c for c in table.column_names if c.startswith("score_")):
        sc = optional(col)
        if sc is not None:
            if not (sc == sc[:, :, :1]).all():
                raise RecordingError(f"{col} must be equal across the sources of a (block, level)")
            scores[col.removeprefix("score_")] = sc[:, :, 0]
    if router is not None:
        if not (router == router[:, :, :1]).all():
            raise RecordingError("router_logit must be equal across the sources of a (block, level)")
        router = router[:, :, 0]
    dynamic = None
    if has_dynamic:
        dynamic = DynamicArrays(stats={name: arr[:, num_levels] for name, arr in st_full.items()},
                                macs=macs_full[:, num_levels, 0])
    return BlockArrays(
        utt=ut, utt_ids=utt_ids, block=blk, start=start, n=n_full[:, 0, 0],
        stats={name: arr[:, :num_levels] for name, arr in st_full.items()},
        macs=macs_full[:, :num_levels, 0], sample_rate=int(sample_rate),
        alpha=alpha, beta=beta, router_logit=router, dynamic=dynamic, sigma2=sigma2, scores=scores,
    )


def _raise_missing(group: np.ndarray, cell: np.ndarray, lp: int, s: int, utt_ids: list[str], nb: int) -> None:
    """Name the first (utt, block) whose rows are not exactly one per (level, source)."""
    edges = np.flatnonzero(np.r_[True, group[1:] != group[:-1], True])
    counts = np.diff(edges)
    bad = int(np.flatnonzero(counts != lp * s)[0])
    g = int(group[edges[bad]])
    have = set(cell[edges[bad]:edges[bad + 1]].tolist())
    lacking = [(c // s, c % s) for c in range(lp * s) if c not in have][:5]
    raise RecordingError(
        f"missing rows: (utt {utt_ids[g // nb]!r}, block {g % nb}) has {counts[bad]} of {lp * s} rows "
        f"(one per level and source); missing (level, source) {lacking}; "
        f"{int((counts != lp * s).sum())} blocks are incomplete")
