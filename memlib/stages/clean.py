"""`python -m memlib clean`: remove from a run folder what memlib wrote there, by its own record, and nothing else.

memlib's record is threefold: the folder's list of outputs (memlib.report.artifacts.MANIFEST, which every atomic
write of an output appends to), each store's spec.json (the arrays it names, its claims and SLURM folders), and
papermill's metadata in the stages' executed notebooks. A file none of them accounts for (your own data, notes, a
file you named like an output) is kept.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..report.artifacts import MANIFEST, OUTPUTS, STAGES, written
from ..runs.store import CLAIMS_DIR, SPEC_FILE

# A temporary file of memlib.files.write_atomic left by a kill: .<name>.<pid>-<8 hex>.tmp
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.\d+-[0-9a-f]{8}\.tmp")
_NOTEBOOKS = {f"{s}.ipynb" for s in STAGES} | {f"lab/{s}.ipynb" for s in STAGES}


def store_files(folder: Path) -> set[Path] | None:
    """The files a store's own spec.json accounts for (None if `folder` holds no readable memlib spec)."""
    try:
        spec = json.loads((folder / SPEC_FILE).read_text())["spec"]
        names = [str(k) for k in spec]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    files = {folder / SPEC_FILE}
    files |= {folder / f"{n}.npy" for n in names} | {folder / f"{n}.npy.corrupt" for n in names}
    files |= {p for p in folder.glob(f".{SPEC_FILE}.*.tmp")}
    for sub in (CLAIMS_DIR, "slurm"):  # leases and SLURM records and logs: only memlib writes there
        files |= {Path(root) / f for root, _, names_ in os.walk(folder / sub) for f in names_}
    return files


def _executed_notebook(path: Path) -> bool:
    """A stage notebook that papermill wrote (it records its input in the notebook's metadata)."""
    try:
        meta = json.loads(path.read_text())["metadata"]["papermill"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return Path(str(meta.get("input_path", ""))).name == path.name


def remove_outputs(out: Path) -> tuple[int, list[Path]]:
    """Remove what memlib wrote in the run folder `out`: (files removed, files kept); `out` goes if left empty."""
    recorded = written(out) | {MANIFEST}
    ours: set[Path] = set()
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            ours |= store_files(child) or set()
    removed, kept = 0, []
    for root, dirs, files in os.walk(out, topdown=False):
        for name in files + [d for d in dirs if (Path(root) / d).is_symlink()]:
            path = Path(root) / name
            rel = path.relative_to(out).as_posix()
            temporary = _TEMPORARY.fullmatch(name)
            mine = (
                path in ours
                or rel in recorded
                or (rel in _NOTEBOOKS and _executed_notebook(path))
                or (temporary is not None and (Path(rel).parent / temporary["name"]).as_posix() in OUTPUTS)
            )
            if mine:
                path.unlink()
                removed += 1
            else:
                kept.append(path)
        if Path(root) != out and not any(Path(root).iterdir()):
            Path(root).rmdir()
    if not any(out.iterdir()):
        out.rmdir()
    return removed, sorted(kept)
