"""A results store declared by a small spec: preallocated .npy arrays plus a completed-mask.

Workers are idempotent and addressed by row index: a worker writes a row's arrays, flushes them, and only
then marks the row completed. A worker killed at any point leaves its row not completed, so the next run
redoes it; a completed row is never trained again and never written twice.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SPEC_FILE = "spec.json"
COMPLETED = "completed"


class StoreError(RuntimeError):
    """A store that does not match the config, or is corrupt; the message says what to do."""


@dataclass(frozen=True)
class ArraySpec:
    shape: tuple[int, ...]
    dtype: str


class Store:
    """Named arrays with a leading row axis, memory-mapped from `path`, plus `completed[row]`."""

    def __init__(self, path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]):
        self.path, self.arrays, self.meta = path, arrays, meta

    # ------------------------------------------------------------------------------------------------
    @staticmethod
    def spec_of(rows: int, columns: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, ArraySpec]:
        """A store spec: each array is `rows` x shape; a bool completed-mask is added."""
        spec = {name: ArraySpec((rows, *shape), dtype) for name, (shape, dtype) in columns.items()}
        spec[COMPLETED] = ArraySpec((rows,), "bool")
        return spec

    @classmethod
    def open(cls, path: Path, spec: dict[str, ArraySpec], meta: dict[str, Any], create: bool = True) -> Store:
        """Open the store at `path`, creating it if absent; raise StoreError if it was made differently."""
        path = Path(path)
        if not (path / SPEC_FILE).exists():
            if not create:
                raise StoreError(f"no store at {path}: run the training stage first")
            return cls._create(path, spec, meta)
        check_compatible(path, spec, meta)
        arrays = {}
        for name, s in spec.items():
            arrays[name] = _load_array(path / f"{name}.npy", s, mode="r+")
        return cls(path, arrays, meta)

    @classmethod
    def _create(cls, path: Path, spec: dict[str, ArraySpec], meta: dict[str, Any]) -> Store:
        if path.exists():  # a creation that was interrupted before spec.json was written
            shutil.rmtree(path)
        tmp = path.with_name(path.name + ".creating")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        for name, s in spec.items():
            arr = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=np.dtype(s.dtype), shape=s.shape)
            arr.flush()
            del arr
        doc = {"spec": {k: {"shape": list(v.shape), "dtype": v.dtype} for k, v in spec.items()}, "meta": meta}
        (tmp / SPEC_FILE).write_text(json.dumps(doc, indent=1, default=str))
        tmp.rename(path)
        return cls.open(path, spec, meta)

    # ------------------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    @property
    def completed(self) -> np.ndarray:
        return self.arrays[COMPLETED]

    @property
    def rows(self) -> int:
        return len(self.completed)

    def done(self) -> int:
        return int(np.count_nonzero(self.completed))

    def pending(self, rows: Iterable[int] | None = None) -> list[int]:
        """Rows not yet completed (among `rows`, default all)."""
        rows = range(self.rows) if rows is None else rows
        return [int(r) for r in rows if not self.completed[r]]

    def write_row(self, row: int, values: dict[str, np.ndarray]) -> None:
        """Write one row's arrays durably, then mark it completed."""
        self.write_rows({row: values})

    def write_rows(self, rows: dict[int, dict[str, np.ndarray]]) -> None:
        """Write several rows' arrays durably, then mark them all completed together."""
        names = {name for values in rows.values() for name in values}
        for row, values in rows.items():
            for name, value in values.items():
                self.arrays[name][row] = value
        for name in names:
            self.arrays[name].flush()
        self.completed[list(rows)] = True
        self.completed.flush()

    def require_complete(self) -> None:
        """Raise StoreError unless every row is completed."""
        missing = self.rows - self.done()
        if missing:
            raise StoreError(
                f"{self.path} has {missing} of {self.rows} rows unfinished: rerun the stage that fills it "
                "(finished rows are kept)"
            )

    def reload(self) -> None:
        """Re-read completed-mask and arrays written by other processes."""
        for name in self.arrays:
            self.arrays[name] = _load_array(self.path / f"{name}.npy", None, mode="r+")


def _load_array(file: Path, spec: ArraySpec | None, mode: str) -> np.ndarray:
    try:
        arr = np.load(file, mmap_mode=mode)
    except FileNotFoundError as exc:
        raise StoreError(f"{file} is missing: the store is incomplete. Delete {file.parent} and rerun.") from exc
    except (ValueError, OSError, EOFError) as exc:
        raise StoreError(
            f"{file} is corrupt ({exc}). The store's finished rows cannot be trusted: delete {file.parent} "
            "and rerun the stage."
        ) from exc
    if spec is not None and (tuple(arr.shape) != spec.shape or arr.dtype != np.dtype(spec.dtype)):
        raise StoreError(
            f"{file} holds {arr.dtype}{list(arr.shape)}, expected {spec.dtype}{list(spec.shape)}: the store is "
            f"corrupt or from another version. Delete {file.parent} and rerun."
        )
    return arr


def check_compatible(path: Path, spec: dict[str, ArraySpec], meta: dict[str, Any]) -> None:
    """Raise StoreError if the store at `path` was made with a different spec or config. Writes nothing."""
    try:
        doc = json.loads((path / SPEC_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path / SPEC_FILE} is unreadable ({exc}): delete {path} and rerun.") from exc
    old_meta = doc.get("meta", {})
    if old_meta.get("fingerprint") != meta.get("fingerprint"):
        old_cfg, new_cfg = old_meta.get("config", {}), meta.get("config", {})
        diffs = [f"{k}: {old_cfg.get(k)!r} -> {new_cfg.get(k)!r}" for k in new_cfg if old_cfg.get(k) != new_cfg.get(k)]
        raise StoreError(
            f"the store at {path} was made with a different config ({'; '.join(diffs) or 'other inputs'}). "
            f"Its models do not answer this config. Use another profile name (or results_dir), or delete {path} "
            "to start afresh."
        )
    old_spec = {k: (tuple(v["shape"]), v["dtype"]) for k, v in doc.get("spec", {}).items()}
    new_spec = {k: (v.shape, v.dtype) for k, v in spec.items()}
    if old_spec != new_spec:
        raise StoreError(f"the store at {path} has arrays {old_spec}, expected {new_spec}: delete {path} and rerun.")
