"""A group of runs: claimed, trained together by a learner, and written to the store as finished rows.

Groups are the design's (rows [g K, (g + 1) K) for K = group_size), so every executor (local or SLURM) trains
exactly the same groups; a group's rows are written, flushed and marked complete together.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from ..train.design import Job, group_rows
from ..train.engine import Outcome
from .claims import Lease, claim, wait_claim
from .store import CLAIMS_DIR, Store, describe_rows


def _row_values(job: Job, out: Outcome, seconds: float, columns: Sequence[str]) -> dict[str, np.ndarray]:
    values = {
        "masks": job.mask,
        "train_correct": out.train_correct,
        "test_correct": out.test_correct,
        "train_prob": out.train_prob.astype(np.float16),
        "test_prob": out.test_prob.astype(np.float16),
        "seconds": np.float32(seconds),
    }
    if out.signals is not None:
        values.update({f"signal_{name}": v for name, v in out.signals.items()})
    if out.train_topk_prob is not None:
        values.update(train_topk_prob=out.train_topk_prob, train_topk_class=out.train_topk_class)
    return {k: v for k, v in values.items() if k in columns}


def run_group(store: Store, learner, jobs: list[Job], group_size: int, wait: bool = True) -> int | None:
    """Claim the group, train and evaluate its unfinished jobs together and write their rows; returns how many.

    The claim is on the design's group (row // group_size), so workers with overlapping row ranges never
    train a row twice. Returns None, without waiting, if a live worker holds the claim and `wait` is False.
    """
    if all(store.completed[j.row] for j in jobs):
        return 0
    group = jobs[0].row // group_size
    if any(j.row // group_size != group for j in jobs):
        raise ValueError(f"rows {[j.row for j in jobs]} span several groups of {group_size}")
    folder = store.path / CLAIMS_DIR
    lease: Lease | None = wait_claim(folder, group) if wait else claim(folder, group)
    if lease is None:
        return None
    with lease:
        todo = [j for j in jobs if not store.completed[j.row]]  # another worker may have finished some
        if not todo:
            return 0
        start = time.perf_counter()
        runs = [(np.flatnonzero(j.mask), j.seed) for j in todo]
        if hasattr(learner, "fit_eval_group"):
            outs = learner.fit_eval_group(runs)
        else:
            outs = [learner.fit_eval(idx, seed) for idx, seed in runs]
        seconds = (time.perf_counter() - start) / len(todo)  # per model, in this worker
        check_finite(todo, outs)
        store.write_rows({j.row: _row_values(j, out, seconds, store.arrays) for j, out in zip(todo, outs)})
    return len(todo)


class DivergedError(RuntimeError):
    """Trained models whose outputs are NaN or inf: their results would be meaningless, so none is stored."""


def check_finite(jobs: Sequence[Job], outs: Sequence[Outcome]) -> None:
    """DivergedError naming the rows whose trained model gave NaN or inf probabilities (nothing of them is stored)."""
    bad = [
        j.row
        for j, out in zip(jobs, outs)
        if not (np.isfinite(out.train_prob).all() and np.isfinite(out.test_prob).all())
    ]
    if bad:
        raise DivergedError(
            f"{len(bad)} of the {len(jobs)} models of rows {describe_rows(np.array([j.row for j in jobs]))} gave NaN "
            f"or inf outputs after training (rows {describe_rows(np.array(bad))}): their loss diverged, or the "
            "model computes NaN. Nothing of them was stored, so every estimate stays meaningful. Lower lr (or "
            "add gradient clipping to your model), check the model's forward pass, and rerun: finished models "
            "are kept."
        )


def job_groups(jobs: list[Job], group_size: int) -> list[list[Job]]:
    """The jobs in the design's groups (row r in group r // group_size)."""
    by_row = {j.row: j for j in jobs}
    return [[by_row[r] for r in rows] for rows in group_rows(by_row, group_size)]
