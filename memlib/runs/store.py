"""A results store declared by a small spec: preallocated .npy arrays, per-row checksums and a completed-mask.

Workers are idempotent and addressed by row index: a worker writes a row's arrays, then the row's checksums,
flushes them, and only then marks the row completed. A worker killed at any point leaves its row not
completed, so the next run redoes it; a completed row is never trained again and never written twice.

spec.json holds the store's format number (FORMAT), its arrays and its meta; a store of any other format is
refused (FormatError) with what to do. Every read verifies: each finished row's values must hash to the
checksums written with them (keyed by the store's fingerprint and the row index, so a row moved, zeroed, flipped
or cut short fails), and a file shorter than its header says is corrupt (it is never extended). A bad row is
named, never silently used, and `Store.repair` clears just those rows so that training redoes them. Every
refusal is a StoreError of a type that says what happened (`what`) and what to do (`fix`): code decides on the
type, never on the words. The tool deletes no finished work: a folder with arrays but no readable spec is an
error that lists what it holds. Creation is atomic (built in a unique temporary folder, then renamed into
place), so any number of workers may start on a fresh store.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import display_path, profile_argument

SPEC_FILE = "spec.json"
FORMAT = 1  # spec.json's "format": the only one this memlib reads and writes
COMPLETED = "completed"
CHECKSUMS = "checksums"
CLAIMS_DIR = "claims"
REPAIR = "{repair}"  # in a fix: where the command that repairs the store goes


class StoreError(RuntimeError):
    """A store that cannot be used as it is: `what` happened and `fix`, what to do (str() says both).

    Where the fix holds REPAIR, the repair command goes there: `python -m memlib repair PROFILE` for a profile's
    store (`message(profile)` spells PROFILE as the user gave it; str() as the store's meta names it), else
    `Store.repair(path)`. Plain arguments, so that the error pickles from a worker process.
    """

    def __init__(self, what: str, fix: str, path: Path | str | None = None, profile: str | None = None):
        super().__init__(what, fix, path, profile)
        self.what, self.fix, self.path, self.profile = what, fix, path, profile

    def message(self, profile: str | None = None) -> str:
        """What happened and what to do, the repair command naming `profile` (default: the store's own)."""
        profile = profile or self.profile
        command = f"python -m memlib repair {profile}" if profile else f"Store.repair({str(self.path)!r})"
        return f"{self.what} {self.fix.replace(REPAIR, command)}"

    def __str__(self) -> str:
        return self.message()


class StoreMissing(StoreError):
    """No store where one must be (a stage that reads one ran before the stage that fills it)."""


class StoreMismatch(StoreError):
    """A store made with another config, other data, another precision or other arrays: its models do not answer."""


class FormatError(StoreError):
    """A spec.json of a format other than FORMAT (or none)."""


class SpecUnreadable(StoreError):
    """A spec.json that cannot be read; the fix is repair where it rebuilds the spec from the profile."""


class NeedsRepair(StoreError):
    """Files cut short or missing, or finished rows that fail verification: repair keeps every row that verifies."""


class Unfinished(StoreError):
    """A store with rows still to train."""


class DiskFull(StoreError):
    """Rows that could not be written for lack of space (the finished ones are kept)."""


def profile_of(meta: dict[str, Any]) -> str | None:
    """How the command line names the profile that made a store (from its meta); None for a store of no profile."""
    config = meta.get("config")
    name = config.get("profile") if isinstance(config, dict) else None
    return profile_argument(name) if isinstance(name, str) else None


@dataclass(frozen=True)
class ArraySpec:
    shape: tuple[int, ...]
    dtype: str


def describe_rows(rows: Iterable[int], limit: int = 12) -> str:
    """Rows as ranges, e.g. '5, 100-119, 130' (the first `limit` ranges, then how many more rows)."""
    rows = sorted({int(r) for r in rows})
    spans: list[list[int]] = []
    for r in rows:
        if spans and r == spans[-1][1] + 1:
            spans[-1][1] = r
        else:
            spans.append([r, r])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans[:limit])
    rest = sum(b - a + 1 for a, b in spans[limit:])
    return text + (f" and {rest} more" if rest else "")


def data_names(spec: dict[str, Any]) -> list[str]:
    """The arrays that hold row values (checksummed), in a fixed order."""
    return sorted(n for n in spec if n not in (COMPLETED, CHECKSUMS))


def row_checksum(key: bytes, name: str, row: int, values: np.ndarray) -> np.uint64:
    """Keyed 64-bit hash of one row of one array (never 0, the value of a row never written)."""
    h = hashlib.blake2b(digest_size=8, key=key)
    h.update(f"{name}:{row}:".encode())
    h.update(np.ascontiguousarray(values).tobytes())
    return np.uint64(int.from_bytes(h.digest(), "little") or 1)


class Store:
    """Named arrays with a leading row axis, memory-mapped from `path`, plus `completed[row]`."""

    def __init__(
        self,
        path: Path,
        arrays: dict[str, np.ndarray],
        meta: dict[str, Any],
        writable: bool = True,
    ):
        self.path, self.arrays, self.meta, self.writable = path, arrays, meta, writable
        self.trained = 0  # models this process trained into it (set by stages.train.train_subsets)
        # rows whose checksums this object verified or wrote: `check(only_new=True)` hashes only the others
        self.verified = np.zeros(len(arrays[COMPLETED]), dtype=bool)

    # ------------------------------------------------------------------------------------------------
    @staticmethod
    def spec_of(rows: int, columns: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, ArraySpec]:
        """A store spec: each array is `rows` x shape; per-row checksums and a bool completed-mask are added."""
        spec = {name: ArraySpec((rows, *shape), dtype) for name, (shape, dtype) in columns.items()}
        spec[CHECKSUMS] = ArraySpec((rows, len(columns)), "uint64")
        spec[COMPLETED] = ArraySpec((rows,), "bool")
        return spec

    @classmethod
    def open(
        cls,
        path: Path,
        spec: dict[str, ArraySpec],
        meta: dict[str, Any],
        create: bool = True,
        writable: bool | None = None,
        verify: bool = True,
    ) -> Store:
        """Open the store at `path` (creating it if absent and `create`), verifying every finished row.

        Read-only unless `writable` (default: `create`). Raises StoreError if it was made differently or in
        another format, a file is cut short or missing, or a finished row fails its checksum.
        """
        path = Path(path)
        writable = create if writable is None else writable
        if not (path / SPEC_FILE).exists():
            refuse_unspecified(path, profile_of(meta))
            if not create:
                raise StoreMissing(f"there is no store at {path}.", "Run the training stage first.", path)
            cls._create(path, spec, meta)
        check_compatible(path, spec, meta)
        problems = inspect_files(path, spec)
        if problems:
            raise NeedsRepair(
                f"the store at {path} is corrupt: {'; '.join(p.text for p in problems)}. Nothing was changed.",
                f"Run `{REPAIR}` to keep every row that verifies and clear the others, then train again to redo "
                "just those.",
                path,
                profile_of(meta),
            )
        mode = "r+" if writable else "r"
        arrays = {name: np.load(path / f"{name}.npy", mmap_mode=mode) for name in spec}
        store = cls(path, arrays, meta, writable)
        if verify:
            store.check()
        return store

    @classmethod
    def _create(cls, path: Path, spec: dict[str, ArraySpec], meta: dict[str, Any]) -> None:
        """Build the store in a unique temporary folder, then rename it into place (the first rename wins)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.creating-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            for name, s in spec.items():
                arr = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=np.dtype(s.dtype), shape=s.shape)
                arr.flush()
                del arr
            (tmp / CLAIMS_DIR).mkdir()
            _write_spec(tmp, spec, meta)
            try:
                os.rename(tmp, path)  # atomic; replaces at most an empty folder
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not (path / SPEC_FILE).exists():
                    raise
                # another worker created the store first: open theirs
        finally:
            if tmp.exists():  # our own temporary folder, never a store
                shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    @property
    def completed(self) -> np.ndarray:
        return self.arrays[COMPLETED]

    @property
    def rows(self) -> int:
        return len(self.completed)

    @property
    def key(self) -> bytes:
        """The checksum key: the store's fingerprint, so rows written under another config do not verify."""
        return str(self.meta.get("fingerprint", "")).encode()[:64]

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
        """Write several rows' arrays and checksums durably, then mark them all completed together.

        Rows are written with ordinary file writes (the memory maps see them at once), not through the maps: a
        disk that fills up is then an error with a message, not a bus error that kills the process.
        """
        if not self.writable:
            raise StoreError(f"{self.path} was opened read-only.", "Open it with writable=True to write rows.")
        try:
            columns: dict[str, dict[int, np.ndarray]] = {}
            for row, values in rows.items():
                for name, value in values.items():
                    columns.setdefault(name, {})[row] = value
            for name, values in columns.items():
                self._write(name, values)
            self._write(CHECKSUMS, {row: self.row_checksums(row) for row in rows})
            self._write(COMPLETED, {row: True for row in rows})
            self.verified[list(rows)] = True  # their checksums are those of the values just written
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise DiskFull(
                f"the disk holding {self.path} is full ({exc.strerror}): the results of rows {describe_rows(rows)} "
                f"could not be written, so they are not marked finished; the {self.done()} finished rows are kept "
                "and verify.",
                "Free some space (or move results_dir to a larger disk) and rerun the same command: training "
                "resumes with the unfinished rows.",
                self.path,
            ) from None

    def _write(self, name: str, rows: dict[int, Any]) -> None:
        """Write whole rows of one array at their offsets in its file, then flush them to the disk."""
        arr = self.arrays[name]
        row_bytes = int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize
        fd = os.open(self.path / f"{name}.npy", os.O_WRONLY)
        try:
            for row, value in rows.items():
                buf = np.empty(arr.shape[1:], dtype=arr.dtype)
                buf[...] = value  # the same casts and broadcasting as `arr[row] = value`
                data, offset = memoryview(np.ascontiguousarray(buf)).cast("B"), arr.offset + row * row_bytes
                while len(data):
                    written = os.pwrite(fd, data, offset)
                    data, offset = data[written:], offset + written
            os.fsync(fd)
        finally:
            os.close(fd)

    def row_checksums(self, row: int) -> np.ndarray:
        """The checksums of `row` as stored now (one per data array, in `data_names` order)."""
        names = data_names(self.arrays)
        return np.array([row_checksum(self.key, n, row, self.arrays[n][row]) for n in names], dtype=np.uint64)

    def bad_rows(self, rows: Iterable[int] | None = None) -> dict[int, list[str]]:
        """Finished rows (among `rows`) whose values do not match their checksums: row -> the arrays that differ."""
        rows = np.flatnonzero(self.completed) if rows is None else [r for r in rows if self.completed[r]]
        names = data_names(self.arrays)
        stored = self.arrays[CHECKSUMS]
        bad = {}
        for r in rows:
            differ = [n for n, c, s in zip(names, self.row_checksums(int(r)), stored[r]) if c != s]
            if differ:
                bad[int(r)] = differ
        return bad

    def check(self, only_new: bool = False) -> None:
        """Raise StoreError naming every finished row whose values fail their checksums.

        With `only_new`, only the finished rows this object has not verified or written yet (those that other
        processes finished since it was opened): a process that trains a store chunk by chunk hashes each row once.
        """
        rows = np.flatnonzero(self.completed & ~self.verified) if only_new else np.flatnonzero(self.completed)
        bad = self.bad_rows(rows)
        if bad:
            raise self.bad_rows_error(bad, "fail their checksums (their values changed after writing)")
        self.verified[rows] = True

    def bad_rows_error(self, bad: dict[int, list[str]] | Iterable[int], why: str) -> NeedsRepair:
        """An error naming the bad rows, what differs, and the command that redoes only them."""
        rows = sorted(bad)
        arrays = sorted({n for names in bad.values() for n in names}) if isinstance(bad, dict) else []
        return NeedsRepair(
            f"{len(rows)} of {self.done()} finished rows of {self.path} {why}: rows {describe_rows(rows)}"
            + (f" (arrays: {', '.join(arrays)})" if arrays else "")
            + ". Nothing was used or changed.",
            f"Run `{REPAIR}` to clear just these rows, then train again to redo them ({len(rows)} "
            f"model{'s' if len(rows) != 1 else ''}; the other rows are kept).",
            self.path,
            profile_of(self.meta),
        )

    def require_complete(self) -> None:
        """Raise StoreError unless every row is completed."""
        missing = self.rows - self.done()
        if missing:
            raise Unfinished(
                f"{self.path} has {missing} of {self.rows} rows unfinished.",
                "Rerun the stage that fills it (finished rows are kept).",
                self.path,
            )

    def reload(self) -> None:
        """Re-read completed-mask and arrays written by other processes."""
        mode = "r+" if self.writable else "r"
        for name in self.arrays:
            self.arrays[name] = np.load(self.path / f"{name}.npy", mmap_mode=mode)

    # ------------------------------------------------------------------------------------------------
    @classmethod
    def repair(
        cls,
        path: Path,
        spec: dict[str, ArraySpec] | None = None,
        meta: dict[str, Any] | None = None,
        extra_bad: Callable[[Store], Iterable[int]] | None = None,
    ) -> list[int]:
        """Keep every finished row that verifies, clear the completed flag of every other one; returns those.

        Files cut short are extended with zeros (their lost rows fail their checksums); a missing file is
        recreated; a file with a wrong header is kept beside as `<name>.npy.corrupt` and recreated. Without a
        readable spec.json, `spec` and `meta` (from the config) are adopted only if finished rows verify under
        them. `extra_bad(store)` names further rows to clear (e.g. masks that their design does not give).
        A store of another format is refused (FormatError), never rewritten.
        """
        path = Path(path)
        if not path.is_dir():
            raise StoreMissing(f"there is no store at {path}.", "Nothing to repair.", path)
        locked = [p for p in (path, *path.glob("*.npy")) if not os.access(p, os.W_OK)]
        if locked:
            raise StoreError(
                f"repair must write in {path}, but {locked[0]} cannot be written here (a read-only folder or mount, "
                "or no permission). Nothing was changed.",
                "Make it writable (or copy the results folder to a writable place and point results_dir there), "
                "then rerun repair.",
                path,
            )
        spec, meta, adopt = _spec_to_repair(path, spec, meta)
        lost_completed = _restore_files(path, spec)
        arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r+") for name in spec}
        store = cls(path, arrays, meta)
        if lost_completed:  # a row is finished exactly when its checksums verify
            store.completed[:] = True
        bad = set(store.bad_rows())
        if extra_bad is not None:
            bad |= {int(r) for r in extra_bad(store)}
        if adopt:
            finished = store.done()
            if finished and len(bad) == finished:
                raise StoreMismatch(
                    f"none of the {finished} finished rows in {path} verify under this config: it was made with "
                    "another config. Nothing was changed.",
                    f"Train this config under another profile name or results_dir, or move {path} away yourself.",
                    path,
                )
            _write_spec(path, spec, meta)
        store.completed[sorted(bad)] = False
        store.completed.flush()
        return sorted(bad)


@dataclass(frozen=True)
class FileProblem:
    name: str
    kind: str  # missing | header | short
    text: str
    expected_size: int = 0
    rows_intact: int = 0


def inspect_files(path: Path, spec: dict[str, ArraySpec]) -> list[FileProblem]:
    """Every array file that is missing, has another header, or is shorter than its header says. Reads only."""
    problems = []
    for name, s in spec.items():
        file = path / f"{name}.npy"
        try:
            with open(file, "rb") as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read(f)
                offset = f.tell()
                size = os.fstat(f.fileno()).st_size
        except FileNotFoundError:
            problems.append(FileProblem(name, "missing", f"{file.name} is missing (every row needs it)"))
            continue
        except (OSError, ValueError, EOFError) as exc:
            problems.append(FileProblem(name, "header", f"{file.name} has no readable header ({exc})"))
            continue
        if tuple(shape) != s.shape or dtype != np.dtype(s.dtype) or fortran:
            problems.append(
                FileProblem(
                    name, "header", f"{file.name} holds {dtype}{list(shape)}, expected {s.dtype}{list(s.shape)}"
                )
            )
            continue
        row_bytes = int(np.prod(s.shape[1:], dtype=np.int64)) * np.dtype(s.dtype).itemsize
        expected = offset + s.shape[0] * row_bytes
        if size != expected:
            intact = max(0, min(s.shape[0], (size - offset) // row_bytes if row_bytes else s.shape[0]))
            cut = f"rows {describe_rows(range(intact, s.shape[0]))} are cut off" if size < expected else "extra bytes"
            problems.append(
                FileProblem(
                    name, "short", f"{file.name} is {size} bytes, its header says {expected} ({cut})", expected, intact
                )
            )
    return problems


def refuse_unspecified(path: Path, profile: str | None = None) -> None:
    """Raise StoreError if `path` holds files but no spec.json: finished work the tool will not touch.

    `profile`: the profile whose store it would be (the repair command the message offers names it)."""
    if not path.exists():
        return
    if not path.is_dir():
        raise StoreMismatch(
            f"{path} is a file, not a store folder.", "Move it away or choose another results_dir.", path
        )
    held = sorted(p.name for p in path.iterdir())
    if not held or SPEC_FILE in held:  # empty, or just renamed into place by a worker that created it
        return
    arrays = [n for n in held if n.endswith(".npy")]
    finished = ""
    if f"{COMPLETED}.npy" in arrays:
        try:
            finished = (
                f", {int(np.count_nonzero(np.load(path / f'{COMPLETED}.npy', mmap_mode='r')))} rows marked finished"
            )
        except (OSError, ValueError, EOFError):
            finished = ", its completed-mask unreadable"
    raise NeedsRepair(
        f"{path} holds {len(held)} files ({', '.join(held[:10])}{', ...' if len(held) > 10 else ''}{finished}) "
        f"but no readable {SPEC_FILE}, so nothing is known of how they were made. Nothing was changed or removed.",
        f"If this config made them, `{REPAIR}` adopts the rows that verify under it; otherwise move {path} away "
        "yourself.",
        path,
        profile or "PROFILE",
    )


def _write_spec(path: Path, spec: dict[str, ArraySpec], meta: dict[str, Any]) -> None:
    doc = {
        "format": FORMAT,
        "spec": {k: {"shape": list(v.shape), "dtype": v.dtype} for k, v in spec.items()},
        "meta": meta,
    }
    tmp = path / f".{SPEC_FILE}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(doc, indent=1, default=str))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / SPEC_FILE)


def read_spec(path: Path, rebuilt_by: str | None = None) -> tuple[dict[str, ArraySpec], dict[str, Any]]:
    """The arrays and meta that the store at `path` records in its spec.json.

    Raises SpecUnreadable if it cannot be read, FormatError if it is of another format than FORMAT.
    `rebuilt_by`: the profile whose `python -m memlib repair` can rewrite this store's spec (stage 1's store: it
    keeps every finished row that verifies), so the message offers it; None: it says to move the store away.
    """
    shown = display_path(path)
    try:
        doc = json.loads((Path(path) / SPEC_FILE).read_text())
        version = doc.get("format") if isinstance(doc, dict) else None
        if version == FORMAT:
            spec = {k: ArraySpec(tuple(v["shape"]), v["dtype"]) for k, v in doc["spec"].items()}
            meta = doc["meta"]
            if not isinstance(meta, dict):
                raise ValueError("its meta is not a mapping")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        if rebuilt_by is not None:
            fix = (
                f"Run `{REPAIR}`: it rewrites it from the profile and keeps every finished model that verifies under "
                f"it (none is retrained). If another profile made this store, move {shown} away instead."
            )
        else:
            fix = f"Move {shown} away and rerun the stage that made it (it cannot be read without it)."
        raise SpecUnreadable(
            f"{shown}/{SPEC_FILE} is unreadable ({exc}). Nothing was changed.", fix, path, rebuilt_by
        ) from None
    if version != FORMAT:
        made = "records no store format" if version is None else f"is of store format {version!r}"
        raise FormatError(
            f"the store at {shown} {made}; this memlib reads format {FORMAT} only. Nothing was changed.",
            f"Move {shown} away (or delete it) and rerun the stage that made it, or use the memlib that made it.",
            path,
        )
    return spec, meta


def check_compatible(path: Path, spec: dict[str, ArraySpec], meta: dict[str, Any]) -> None:
    """Raise StoreError if the store at `path` was made with a different spec or config. Writes nothing."""
    old_spec, old_meta = read_spec(path)
    if old_meta.get("fingerprint") != meta.get("fingerprint"):
        old_cfg, new_cfg = old_meta.get("config", {}), meta.get("config", {})
        diffs = [f"{k}: {old_cfg.get(k)!r} -> {new_cfg.get(k)!r}" for k in new_cfg if old_cfg.get(k) != new_cfg.get(k)]
        raise StoreMismatch(
            f"the store at {path} was made with a different config ({'; '.join(diffs) or 'other inputs'}). "
            "Its models do not answer this config.",
            f"Use another profile name (or results_dir), or delete {path} to start afresh.",
            path,
        )
    if old_spec != spec:
        raise StoreMismatch(
            f"the store at {path} has arrays {_shapes(old_spec)}, expected {_shapes(spec)}. Nothing was changed.",
            f"Move {path} away (or delete it) and rerun.",
            path,
        )


def _shapes(spec: dict[str, ArraySpec]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (v.shape, v.dtype) for k, v in spec.items()}


def _spec_to_repair(
    path: Path, spec: dict[str, ArraySpec] | None, meta: dict[str, Any] | None
) -> tuple[dict[str, ArraySpec], dict[str, Any], bool]:
    """The spec and meta a repair works to, and whether they are adopted from the config (spec.json unreadable)."""
    try:
        stored, stored_meta = read_spec(path)
    except SpecUnreadable as exc:
        if spec is None or meta is None:
            raise SpecUnreadable(exc.what, "Give repair the config's spec and meta to adopt.", path) from None
        return spec, meta, True
    return stored, stored_meta, False


def _restore_files(path: Path, spec: dict[str, ArraySpec]) -> bool:
    """Extend short files with zeros, recreate missing ones, set aside and recreate those with a wrong header;
    returns whether the completed-mask was lost."""
    lost_completed = False
    for p in inspect_files(path, spec):
        file = path / f"{p.name}.npy"
        if p.kind == "short":
            os.truncate(file, p.expected_size)  # zeros: the rows cut off no longer verify
        else:
            if p.kind == "header":
                os.replace(file, file.with_name(file.name + ".corrupt"))
            s = spec[p.name]
            np.lib.format.open_memmap(file, mode="w+", dtype=np.dtype(s.dtype), shape=s.shape).flush()
        lost_completed |= p.name == COMPLETED
    return lost_completed
