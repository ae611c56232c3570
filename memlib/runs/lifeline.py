"""Worker processes die with their parent: this module imports nothing heavy, so a spawned worker runs it first.

With the 'spawn' start method a worker imports whatever its initializer needs before the initializer runs.
Importing memlib is light (its package namespace loads modules on first use), so `start` below runs within
a fraction of a second of the worker's birth: it asks the kernel to kill the worker when the parent dies
(PR_SET_PDEATHSIG, Linux), then checks that the parent has not died already (the race the signal cannot
cover), and keeps a thread watching the parent (other systems) before any heavy import or any work.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time


def die_with_parent(parent_pid: int, poll: float = 1.0) -> None:
    """Exit at once if `parent_pid` is no longer the parent, and from now on whenever it dies."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="memlib-parent-watch").start()


def start(parent_pid: int, target: str, *args) -> None:
    """Pool initializer: die with the parent, then import and call `target` ('module:function') with `args`."""
    die_with_parent(parent_pid)
    module, name = target.split(":")
    getattr(importlib.import_module(module), name)(*args)
