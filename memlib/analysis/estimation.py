"""Memorization and influence estimates: masked averages over runs, with standard errors.

For a run t let m_t[i] say whether train example i was in its subset and v_t[j] a per-example outcome
(correctness, or the true-label probability). Then

    estimate[i, j] = mean(v_t[j] : m_t[i]) - mean(v_t[j] : not m_t[i])

with the standard error of a difference of two independent means,
sqrt(s_in^2 / n_in + s_out^2 / n_out), where s^2 are sample variances (ddof=1). Memorization is the
diagonal (v = train outcome, j = i); influence uses test outcomes. Every array is in the dataset's
original order; index arrays beside it map positions to original indices.

The sums over runs are exact for 0/1 outcomes (correctness), whatever the scale: then v * v == v, so the sums
of squares are the sums, and the sums of products are integer counts: int8 x int8 -> int32 matrix products
(torch._int_mm) where the CPU has int8 dot-product instructions (VNNI or AMX), float32 products elsewhere
(exact for counts below 2**24), where torch._int_mm has no fast kernel (`count_dtype`; how fast each is:
benchmarks/README.md, estimation at paper scale). Other outcomes (probabilities)
take float32 products.
Influence is computed a chunk of train rows at a time, so memory stays O(chunk x test examples) whatever the
number of rows; export_influence writes the whole train x test matrix to disk that way.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import torch
from numpy.typing import DTypeLike
from tqdm import tqdm

from ..files import write_atomic
from ..machine import cpu_flags


class Labelled(Protocol):
    """What the estimates need of a dataset (memlib.data.dataset.Dataset has it): labels and original indices."""

    y_train: np.ndarray
    y_test: np.ndarray
    train_index: np.ndarray
    test_index: np.ndarray


@dataclass
class MaskedDiff:
    """Estimate, its standard error, and the numbers of runs in and out, per example (or pair)."""

    value: np.ndarray
    se: np.ndarray
    n_in: np.ndarray
    n_out: np.ndarray


def _finish(s_in, q_in, s_all, q_all, n_in, n_all) -> tuple[np.ndarray, np.ndarray]:
    """Difference of the means in and out, and its standard error, from sums, sums of squares and counts."""
    with np.errstate(divide="ignore", invalid="ignore"):
        n_out = n_all - n_in
        mean_in = s_in / n_in
        mean_out = (s_all - s_in) / n_out
        value = mean_in - mean_out
        var_in = q_in - n_in * mean_in**2
        var_out = (q_all - q_in) - n_out * mean_out**2
        np.maximum(var_in, 0, out=var_in)
        np.maximum(var_out, 0, out=var_out)
        var_in /= n_in - 1
        var_out /= n_out - 1
        var_in /= n_in
        var_out /= n_out
        var_in += var_out
        se = np.sqrt(var_in, out=var_in)
    return value, se


def is_binary(outcomes: np.ndarray) -> bool:
    """Whether every outcome is 0 or 1 (correctness), so that sums of products are exact integer counts."""
    v = np.asarray(outcomes)
    return v.dtype == bool or bool(np.all((v == 0) | (v == 1)))


def memorization(masks: np.ndarray, outcomes: np.ndarray, chunk: int = 4096) -> MaskedDiff:
    """Self-influence of each train example: mean outcome when trained on it minus when not (T x n inputs).

    Examples are taken `chunk` at a time, so memory beyond the inputs stays O(T x chunk).
    """
    masks, outcomes = np.asarray(masks), np.asarray(outcomes)
    if masks.shape != outcomes.shape:
        raise ValueError(f"masks {masks.shape} and outcomes {outcomes.shape} must both be runs x train examples")
    runs, n = masks.shape
    parts = [_memorization_columns(masks[:, c : c + chunk], outcomes[:, c : c + chunk]) for c in range(0, n, chunk)]
    value, se, n_in = (np.concatenate(p) for p in zip(*parts)) if parts else (np.zeros(0),) * 3
    return MaskedDiff(value, se, n_in, runs - n_in)


def _memorization_columns(masks: np.ndarray, outcomes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Value, standard error and runs in, for a block of columns (counts for 0/1 outcomes, else float64 sums)."""
    m = np.asarray(masks, dtype=bool)
    n_in = np.count_nonzero(m, axis=0).astype(np.float64)
    if is_binary(outcomes):
        v = np.asarray(outcomes, dtype=bool)
        s_in = np.count_nonzero(m & v, axis=0).astype(np.float64)
        s_all = np.count_nonzero(v, axis=0).astype(np.float64)
        q_in, q_all = s_in, s_all
    else:
        v = np.asarray(outcomes, dtype=np.float64)
        s_in, q_in = (v * m).sum(0), (v * v * m).sum(0)
        s_all, q_all = v.sum(0), (v * v).sum(0)
    value, se = _finish(s_in, q_in, s_all, q_all, n_in, m.shape[0])
    return value, se, n_in


INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})  # int8 dot products: torch._int_mm runs fast
FP32_EXACT_COUNTS = 2**24  # float32 holds every integer up to this exactly, so counts over fewer runs are exact


def count_dtype(runs: int, flags: frozenset[str] | None = None) -> torch.dtype:
    """The operand type of the exact 0/1 counts over `runs` runs on this CPU: int8 (torch._int_mm, int32 sums)
    where it has int8 dot-product instructions or the counts could exceed float32's exact integers, else float32
    (without those instructions torch._int_mm has no fast kernel; the figures: benchmarks/README.md)."""
    flags = cpu_flags() if flags is None else flags
    return torch.int8 if flags & INT8_FLAGS or runs >= FP32_EXACT_COUNTS else torch.float32


def count_operand(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A 0/1 array as a `count_dtype` tensor; int8 shares its memory (no copy of a store's memory-mapped,
    read-only arrays).

    torch warns that a read-only array gives a writable tensor; these tensors are only read (the count products'
    operands), so the warning, which would show in every executed notebook, is silenced here and nowhere else.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        int8 = torch.from_numpy(np.ascontiguousarray(a, dtype=bool).view(np.int8))
    return int8 if dtype == torch.int8 else int8.to(dtype)


def count_product(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """a @ b of two `count_operand`s of one dtype, as exact int32 counts."""
    if a.dtype == torch.int8:
        return torch._int_mm(a, b).numpy()
    return torch.mm(a, b).numpy().astype(np.int32)


class _Targets:
    """Outcomes (runs x examples) made ready once for many chunks of train rows: operands and totals over runs."""

    def __init__(self, outcomes: np.ndarray):
        v = np.asarray(outcomes)
        self.runs, self.binary = v.shape[0], is_binary(v)
        if self.binary:
            self.dtype = count_dtype(self.runs)
            self.counts = count_operand(v, self.dtype)
            self.s_all = np.count_nonzero(v, axis=0).astype(np.float64)[None]
            self.q_all = self.s_all
        else:
            self.v = np.asarray(v, dtype=np.float32)
            self.v2 = self.v * self.v
            self.s_all = self.v.sum(0, dtype=np.float64)[None]
            self.q_all = self.v2.sum(0, dtype=np.float64)[None]

    def sums(self, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Sums of outcomes and of their squares over the runs each mask column (T x r) was in: (r x m) each.

        For 0/1 outcomes the sums are int32 counts and the squares are the outcomes themselves (None).
        """
        if self.binary:
            return count_product(count_operand(masks, self.dtype).T, self.counts), None
        m = np.asarray(masks, dtype=np.float32)
        return m.T @ self.v, m.T @ self.v2


def influence_chunks(
    masks: np.ndarray, outcomes: np.ndarray, rows: np.ndarray | slice = slice(None), chunk: int = 1024
) -> Iterator[tuple[np.ndarray, MaskedDiff]]:
    """Influence of train examples `rows` on every example of `outcomes` (T x m), `chunk` rows at a time.

    Yields (row indices, their (r x m) MaskedDiff) with r <= chunk; memory stays O(chunk x m) whatever the rows.
    """
    masks, outcomes = np.asarray(masks), np.asarray(outcomes)
    if masks.shape[0] != outcomes.shape[0]:
        raise ValueError(f"masks have {masks.shape[0]} runs but outcomes have {outcomes.shape[0]}")
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, not {chunk}")
    targets = _Targets(outcomes)
    index = np.arange(masks.shape[1])[rows]
    for start in range(0, len(index), chunk):
        r = index[start : start + chunk]
        m = masks[:, r]
        yield r, _influence_block(targets, m)


def influence_counts(
    masks: np.ndarray, outcomes: np.ndarray, rows: np.ndarray, chunk: int = 1024
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """For 0/1 outcomes (T x m): per chunk of train `rows`, (rows, x_in, n_in, x_all), exact integer counts.

    x_in (r x m): runs that trained on the row and got the example right; n_in (r x 1): runs that trained on the
    row; x_all (1 x m): runs that got the example right. Out of the row: x_all - x_in of T - n_in runs.
    """
    masks, outcomes = np.asarray(masks), np.asarray(outcomes)
    if not is_binary(outcomes):
        raise ValueError("influence_counts takes 0/1 outcomes (correctness), not probabilities")
    targets = _Targets(outcomes)
    x_all = targets.s_all.astype(np.int64)
    for start in range(0, len(rows), chunk):
        r = np.asarray(rows[start : start + chunk])
        m = masks[:, r]
        x_in, _ = targets.sums(m)
        n_in = np.count_nonzero(np.asarray(m, dtype=bool), axis=0).astype(np.int64)[:, None]
        yield r, x_in.astype(np.int64), n_in, x_all


def _influence_block(targets: _Targets, masks: np.ndarray, block: int = 16) -> MaskedDiff:
    """Influence of the train examples whose mask columns (T x r) are given, finished `block` rows at a time.

    Small blocks keep the float64 arithmetic in cache (the timing that chose 16: benchmarks/README.md).
    """
    s_in, q_in = targets.sums(masks)
    n_in = np.count_nonzero(np.asarray(masks, dtype=bool), axis=0).astype(np.float64)[:, None]
    value = np.empty(s_in.shape)
    se = np.empty(s_in.shape)
    for a in range(0, len(s_in), block):
        b = slice(a, a + block)
        s = s_in[b].astype(np.float64)
        q = s if q_in is None else q_in[b].astype(np.float64)
        value[b], se[b] = _finish(s, q, targets.s_all, targets.q_all, n_in[b], targets.runs)
    n_out = targets.runs - n_in
    return MaskedDiff(value, se, np.broadcast_to(n_in, value.shape), np.broadcast_to(n_out, value.shape))


def influence(masks: np.ndarray, outcomes: np.ndarray, rows: np.ndarray | slice = slice(None)) -> MaskedDiff:
    """Influence of train examples `rows` on every example of `outcomes` (T x m): a (len(rows) x m) MaskedDiff.

    Memory is the result's; for every train row at scale, see export_influence.
    """
    masks, outcomes = np.asarray(masks), np.asarray(outcomes)
    index = np.arange(masks.shape[1])[rows]
    value = np.empty((len(index), outcomes.shape[1]))
    se = np.empty_like(value)
    n_in = np.empty((len(index), 1))
    start = 0
    for r, d in influence_chunks(masks, outcomes, index):
        done = slice(start, start + len(r))
        value[done], se[done], n_in[done] = d.value, d.se, d.n_in[:, :1]
        start += len(r)
    n_out = masks.shape[0] - n_in
    return MaskedDiff(value, se, np.broadcast_to(n_in, value.shape), np.broadcast_to(n_out, value.shape))


def export_influence(
    masks: np.ndarray,
    outcomes: np.ndarray,
    path: str | Path,
    se_path: str | Path | None = None,
    dtype: DTypeLike = np.float32,
    chunk: int = 1024,
    progress: bool = True,
) -> None:
    """Write the full (train x test) influence matrix to a .npy at `path` (and its standard errors to `se_path`).

    Rows are computed and written a chunk at a time, so memory stays O(chunk x m) however large the matrix;
    the files are written through plain writes, not a memory map, so written pages do not count as the process's.
    """
    masks, outcomes = np.asarray(masks), np.asarray(outcomes)
    shape = (masks.shape[1], outcomes.shape[1])
    files = [(Path(path), "value")] + ([(Path(se_path), "se")] if se_path is not None else [])
    offsets = []
    for file, _ in files:
        file.parent.mkdir(parents=True, exist_ok=True)
        header = np.lib.format.open_memmap(file, mode="w+", dtype=dtype, shape=shape)  # header, full size (sparse)
        offsets.append(header.offset)
        del header
    row_bytes = shape[1] * np.dtype(dtype).itemsize
    handles = [open(file, "r+b") for file, _ in files]
    try:
        with tqdm(total=shape[0], desc="influence", unit="row", file=sys.stderr, disable=not progress) as bar:
            for rows, d in influence_chunks(masks, outcomes, chunk=chunk):
                for f, offset, (_, key) in zip(handles, offsets, files):
                    f.seek(offset + int(rows[0]) * row_bytes)
                    np.ascontiguousarray(getattr(d, key), dtype=dtype).tofile(f)
                bar.update(len(rows))
    finally:
        for f in handles:
            f.close()


@dataclass
class Pairs:
    """High-influence pairs, by position in the train and test arrays."""

    tr_pos: np.ndarray
    tt_pos: np.ndarray
    infl: np.ndarray
    infl_se: np.ndarray
    mem: np.ndarray

    def __len__(self) -> int:
        return len(self.tr_pos)

    def keys(self) -> set[tuple[int, int]]:
        return set(zip(self.tr_pos.tolist(), self.tt_pos.tolist()))


def high_influence_pairs(
    masks: np.ndarray,
    test_outcomes: np.ndarray,
    mem: np.ndarray,
    tr_labels: np.ndarray,
    tt_labels: np.ndarray,
    infl_threshold: float = 0.15,
    mem_threshold: float = 0.25,
    chunk: int = 1024,
) -> Pairs:
    """Pairs (i, j) with infl >= infl_threshold, mem[i] >= mem_threshold and the same label.

    Only train examples that pass the mem threshold are scored, in chunks, so memory stays bounded.
    """
    cand = np.flatnonzero(mem >= mem_threshold)
    chunks = influence_chunks(masks, test_outcomes, cand, chunk=chunk)
    return select_pairs(chunks, mem, tr_labels, tt_labels, infl_threshold)


def select_pairs(
    chunks: Iterable[tuple[np.ndarray, MaskedDiff]],
    mem: np.ndarray,
    tr_labels: np.ndarray,
    tt_labels: np.ndarray,
    infl_threshold: float,
) -> Pairs:
    """The pairs with infl >= infl_threshold and the same label, from chunks of influence rows (influence_chunks)."""
    parts = []
    for rows, d in chunks:
        hit = (d.value >= infl_threshold) & (tr_labels[rows][:, None] == tt_labels[None, :])
        r, j = np.nonzero(hit)
        parts.append((rows[r], j, d.value[r, j], d.se[r, j]))
    if not parts:
        empty = np.zeros(0)
        return Pairs(empty.astype(np.int64), empty.astype(np.int64), empty, empty, empty)
    tr, tt, infl, se = (np.concatenate(p) for p in zip(*parts))
    order = np.lexsort((tt, tr))
    return Pairs(tr[order], tt[order], infl[order], se[order], mem[tr[order]])


# ---------------------------------------------------------------------------------------------------
# The study's estimates
# ---------------------------------------------------------------------------------------------------


@dataclass
class Estimates:
    """Per-example memorization and high-influence pairs, in original order, with their uncertainty."""

    mem: MaskedDiff
    pairs: Pairs
    tr_labels: np.ndarray
    tt_labels: np.ndarray
    tr_index: np.ndarray
    tt_index: np.ndarray
    num_models: int
    thresholds: dict = field(default_factory=dict)
    # the pairs selected with their false discovery rate controlled (memlib.analysis.validation.fdr_pairs), their
    # p-values, the rate, and how many candidate pairs were tested; None before a stage selects them
    controlled: Pairs | None = None
    controlled_p: np.ndarray | None = None
    pair_fdr: float | None = None
    pairs_tested: int = 0

    def replicating_pairs(self) -> Pairs:
        """The pairs the study stands behind: the controlled set where there is one, else the fixed cut-offs'."""
        return self.controlled if self.controlled is not None else self.pairs

    def arrays(self) -> dict[str, np.ndarray]:
        """The npz's arrays, with the authors' published key names (indices in the dataset's original order)."""
        return dict(
            tr_mem=self.mem.value,
            tr_mem_se=self.mem.se,
            tr_n_in=self.mem.n_in.astype(np.int32),
            tr_n_out=self.mem.n_out.astype(np.int32),
            tr_labels=self.tr_labels,
            tt_labels=self.tt_labels,
            tr_index=self.tr_index,
            tt_index=self.tt_index,
            tr_idx=self.tr_index[self.pairs.tr_pos],
            tt_idx=self.tt_index[self.pairs.tt_pos],
            infl=self.pairs.infl,
            infl_se=self.pairs.infl_se,
            mem=self.pairs.mem,
            num_models=np.int64(self.num_models),
            infl_threshold=np.float64(self.thresholds.get("infl", np.nan)),
            mem_threshold=np.float64(self.thresholds.get("mem", np.nan)),
            **self._controlled_arrays(),
        )

    def write(self, f: BinaryIO) -> None:
        """The npz of `arrays` to an open binary file."""
        np.savez_compressed(f, **self.arrays())

    def save(self, path: Path) -> Path:
        """Write the npz to `path` atomically (a fault leaves the previous complete file)."""
        return write_atomic(Path(path), self.write)

    def _controlled_arrays(self) -> dict[str, np.ndarray]:
        """The controlled pairs as estimates.npz keeps them (`fdr_*`, indices in the original order), if selected."""
        c = self.controlled
        if c is None:
            return {}
        return {
            "fdr_tr_idx": self.tr_index[c.tr_pos],
            "fdr_tt_idx": self.tt_index[c.tt_pos],
            "fdr_infl": c.infl,
            "fdr_infl_se": c.infl_se,
            "fdr_p": np.asarray(self.controlled_p, dtype=np.float64),
            "fdr_mem": c.mem,
            "pair_fdr": np.float64(self.pair_fdr),
            "pairs_tested": np.int64(self.pairs_tested),
        }

    @classmethod
    def load(cls, path: Path) -> Estimates:
        """Read an npz written by `save`."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: run the estimation stage (02_estimate) first")
        with np.load(path) as f:
            d = {k: f[k] for k in f.files}
        tr_pos = np.searchsorted(d["tr_index"], d["tr_idx"])
        tt_pos = np.searchsorted(d["tt_index"], d["tt_idx"])
        controlled = {}
        if "pair_fdr" in d:
            c_tr, c_tt = (
                np.searchsorted(d["tr_index"], d["fdr_tr_idx"]),
                np.searchsorted(d["tt_index"], d["fdr_tt_idx"]),
            )
            controlled = {
                "controlled": Pairs(c_tr, c_tt, d["fdr_infl"], d["fdr_infl_se"], d["fdr_mem"]),
                "controlled_p": d["fdr_p"],
                "pair_fdr": float(d["pair_fdr"]),
                "pairs_tested": int(d["pairs_tested"]),
            }
        return cls(
            mem=MaskedDiff(d["tr_mem"], d["tr_mem_se"], d["tr_n_in"], d["tr_n_out"]),
            pairs=Pairs(tr_pos, tt_pos, d["infl"], d["infl_se"], d["mem"]),
            tr_labels=d["tr_labels"],
            tt_labels=d["tt_labels"],
            tr_index=d["tr_index"],
            tt_index=d["tt_index"],
            num_models=int(d["num_models"]),
            thresholds={"infl": float(d["infl_threshold"]), "mem": float(d["mem_threshold"])},
            **controlled,
        )

    def top_memorized(self, k: int) -> np.ndarray:
        """Positions of the k training examples with the highest mem."""
        return np.argsort(-self.mem.value, kind="stable")[:k]


def estimate_from_arrays(
    masks: np.ndarray,
    train_outcomes: np.ndarray,
    test_outcomes: np.ndarray,
    data: Labelled,
    infl_threshold: float,
    mem_threshold: float,
) -> Estimates:
    """Memorization and high-influence pairs from runs' masks and outcomes."""
    mem = memorization(masks, train_outcomes)
    pairs = high_influence_pairs(
        masks, test_outcomes, mem.value, data.y_train, data.y_test, infl_threshold, mem_threshold
    )
    return Estimates(
        mem=mem,
        pairs=pairs,
        tr_labels=data.y_train,
        tt_labels=data.y_test,
        tr_index=data.train_index,
        tt_index=data.test_index,
        num_models=len(masks),
        thresholds={"infl": infl_threshold, "mem": mem_threshold},
    )


# ---------------------------------------------------------------------------------------------------
# Comparison with the authors' published estimates
# ---------------------------------------------------------------------------------------------------
