"""The host's work around the 2,000-model recipe's GPU steps, timed on this machine's CPU (issue 24).

    python benchmarks/host_work.py              # mnist-paper's recipe on all 60,000 training images

What a GPU waits for when the host does it in the training path: hashing a finished row of the stage-1 store
(before: every finished row again at every chunk of a chunked run; now once), one epoch's shuffles of a group
of 250 models (now drawn in a thread during the epoch before), and building a group's 250 models (now on the
device). The last line is the headline.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import memlib  # noqa: E402
from memlib.runs.store import Store  # noqa: E402
from memlib.runs.subsets import subset_store_spec  # noqa: E402
from memlib.train.engine import _host_draws, batch_bounds  # noqa: E402
from memlib.train.models import build_model  # noqa: E402

N_TRAIN, N_TEST, GROUP, CHUNKS, ROWS = 60_000, 10_000, 250, 8, 8


def main() -> None:
    torch.set_num_threads(1)
    cfg = memlib.load_profile("mnist-paper")
    data = SimpleNamespace(n_train=N_TRAIN, n_test=N_TEST, num_classes=10, source="-", fingerprint={})
    spec, meta = subset_store_spec(cfg, data)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "s", spec, meta)
        rng = np.random.default_rng(0)
        for r in range(ROWS):
            store.write_row(r, {k: rng.integers(0, 2, a.shape[1:]).astype(a.dtype) for k, a in store.arrays.items()
                                if k not in ("completed", "checksums")})  # fmt: skip
        row_mb = sum(a[0].nbytes for a in store.arrays.values()) / 1e6
        t = time.perf_counter()
        store.check()
        hash_s = (time.perf_counter() - t) / ROWS
    per_chunk = cfg.num_models // CHUNKS
    before = per_chunk * sum(range(CHUNKS)) + cfg.num_models  # every chunk rehashed the finished rows
    now = cfg.num_models
    print(f"a row of the store ({row_mb:.2f} MB) hashed in {hash_s * 1e3:.1f} ms; the recipe in {CHUNKS} chunks: "
          f"{before:,} row hashes before ({before * hash_s:.0f} s), {now:,} now ({now * hash_s:.0f} s)")  # fmt: skip
    subset = round(cfg.subset_ratio * N_TRAIN)
    generators = [torch.Generator().manual_seed(k) for k in range(GROUP)]
    bounds = [batch_bounds(subset, cfg.batch_size)] * GROUP
    t = time.perf_counter()
    _host_draws(generators, bounds, False, False)
    draw_s = time.perf_counter() - t
    print(f"an epoch's shuffles for a group of {GROUP} ({subset:,} examples each): {draw_s:.2f} s; the recipe's "
          f"{CHUNKS} groups x {cfg.epochs} epochs: {draw_s * CHUNKS * cfg.epochs:.0f} s")  # fmt: skip
    t = time.perf_counter()
    for k in range(GROUP):
        torch.manual_seed(k)
        build_model(cfg, in_chans=1, img_size=28, num_classes=10)
    build_s = time.perf_counter() - t
    print(f"{GROUP} models {cfg.arch} built on the CPU: {build_s:.2f} s; the recipe's {CHUNKS} groups: "
          f"{build_s * CHUNKS:.0f} s")  # fmt: skip
    print(f"load average {__import__('os').getloadavg()[0]:.1f}")
    print(f"row_hash_ms={hash_s * 1e3:.1f} epoch_draws_s={draw_s:.2f} group_build_s={build_s:.2f}")


if __name__ == "__main__":
    main()
