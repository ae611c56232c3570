"""Claims on groups of rows: a worker trains a group only while it holds that group's lease.

A lease is a file `claims/group-<g>.lease` created with O_EXCL (atomic on local disks and NFS), holding the
owner's host, pid, process start time and a token. Its owner refreshes the file's time while it trains. A
lease whose owner is dead (same host: no such process; another host: not refreshed for `ttl` seconds) is
taken over: renamed aside atomically (only one taker succeeds), checked to be the dead one, and replaced. So
overlapping `--rows` ranges, or several notebooks on one store, never train a group twice. (One race is left:
if a third worker's fresh lease replaces a dead one between a taker's look and its rename, the fresh lease is
put back only if no other lease appeared meanwhile; at worst a group is trained twice, to identical values.)
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

HOST = socket.gethostname()
TTL = float(os.environ.get("MEMLIB_LEASE_TTL", "600"))  # seconds without a refresh before a remote lease is dead


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from its owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return started is None or _start_time(pid) in (None, started)


class Lease:
    """A held claim on one group; `release()` (or leaving the `with` block) gives it back."""

    def __init__(self, file: Path, token: str, refresh: float):
        self.file, self.token = file, token
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh, args=(refresh,), daemon=True)
        self._thread.start()

    def _refresh(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                os.utime(self.file)
            except OSError:
                return

    def held(self) -> bool:
        """Whether the lease file is still this one (not taken over as dead)."""
        return _read(self.file).get("token") == self.token

    def release(self) -> None:
        self._stop.set()
        if self.held():
            try:
                os.unlink(self.file)
            except FileNotFoundError:
                pass

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError):
        return {}


def _dead(file: Path, info: dict, ttl: float) -> bool:
    """Whether the lease in `file` (read as `info`) belongs to a worker that is gone."""
    try:
        age = time.time() - file.stat().st_mtime
    except FileNotFoundError:
        return False  # released meanwhile: try again
    if not info:  # being written right now, or left half-written by a dead worker
        return age > 30
    if info.get("host") == HOST:
        return not _alive(int(info.get("pid", -1)), info.get("started"))
    return age > ttl


def claim(folder: Path, group: int, ttl: float = TTL) -> Lease | None:
    """Take the lease on `group` in `folder`, or None if a live worker holds it."""
    folder.mkdir(exist_ok=True)
    file = folder / f"group-{group:06d}.lease"
    token = uuid.uuid4().hex
    info = {"host": HOST, "pid": os.getpid(), "started": _start_time(os.getpid()), "time": time.time(), "token": token}
    for _ in range(3):
        try:
            fd = os.open(file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _read(file)
            if not _dead(file, held, ttl):
                return None
            aside = file.with_name(f"{file.name}.dead-{token}")
            try:
                os.rename(file, aside)  # only one taker moves a given file
            except FileNotFoundError:
                continue
            if _read(aside) != held:  # a live lease replaced the dead one meanwhile: put it back
                try:
                    os.link(aside, file)
                except FileExistsError:
                    pass
            os.unlink(aside)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(info))
        return Lease(file, token, refresh=max(1.0, ttl / 4))
    return None


def wait_claim(folder: Path, group: int, ttl: float = TTL, poll: float = 0.5) -> Lease:
    """Take the lease on `group`, waiting while a live worker holds it."""
    while True:
        lease = claim(folder, group, ttl)
        if lease is not None:
            return lease
        time.sleep(poll)
