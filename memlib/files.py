"""Atomic file writes: every output goes to a temporary file in its own folder, is flushed to disk, then renamed over
the final name, so a full disk, a crash or a kill leaves the previous complete file (or none), never a part of one."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call `write(f)` on a new file beside `path`, fsync it, then os.replace it onto `path`; returns `path`.

    If anything fails (the disk fills, `write` raises, the process is interrupted) the temporary file is removed
    and `path` is as it was. The file gets the permissions the umask gives a new file (not mkstemp's 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """`text` (UTF-8) to `path`, atomically (write_atomic)."""
    return write_atomic(path, lambda f: f.write(text.encode()))


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable where the platform allows it (a folder cannot be opened on Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
