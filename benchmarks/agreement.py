"""Do the engine's estimates agree with memlib's previous trainer's? The same profile and design, trained twice.

    python benchmarks/agreement.py --profile digits [--models 1000]

(previous) one model at a time in fp32, as memlib trained before the engine stacked models (`engine: single,
           precision: fp32, group_size: 1`: each model a group of one through the same loop; before the
           restructure this path used torch.optim, which a test still checks it against);
(engine)   the profile as it runs now (`engine: auto`, `precision: auto`, `group_size` from the profile).
Both use the same masks and seeds (the design is a function of the config), so the two estimates of each
example are paired: they share the masks and the initial weights, and differ by what the engine changes
(stacking, bf16). The check: z = (mem_engine - mem_previous) / sqrt(se_engine^2 + se_previous^2) over the
examples whose outcome varies (elsewhere both estimates are exact and equal). If the engine changed nothing
that matters, |z| <= 2 almost everywhere (independent estimates would give about 95%; pairing gives more, and
a mean z^2 below 1). Stores go to results/<profile>-agreement-{previous,engine}/; timings printed here come
from two separate runs and are no speed comparison (benchmarks/train_throughput.py is).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import memlib  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="digits")
    parser.add_argument("--models", type=int, default=None, help="num_models (default: the profile's)")
    args = parser.parse_args()
    base = memlib.load_profile(args.profile)
    if args.models:
        base = base.replace(num_models=args.models, min_out=min(base.min_out, int(args.models * 0.2)))
    variants = {
        "previous": base.replace(engine="single", precision="fp32", group_size=1),
        "engine": base,
    }
    est, acc = {}, {}
    for name, cfg in variants.items():
        cfg = cfg.replace(profile=f"{base.profile}-agreement-{name}", results_dir="results")
        data = memlib.load_dataset(cfg)
        start = time.perf_counter()
        store = memlib.train_subsets(cfg, data)
        print(f"({name}) {cfg.num_models} models in {time.perf_counter() - start:.0f} s "
              f"(engine {cfg.engine}, precision {cfg.precision}, group_size {cfg.group_size})", flush=True)  # fmt: skip
        est[name] = memlib.estimate(cfg, store, data)
        acc[name] = float(np.asarray(store["test_correct"]).mean())
    a, b = est["previous"].mem, est["engine"].mem
    se = np.sqrt(a.se**2 + b.se**2)
    ok = se > 0
    z = (b.value - a.value)[ok] / se[ok]
    within = float(np.mean(np.abs(z) <= 2))
    pa, pb = est["previous"].pairs.keys(), est["engine"].pairs.keys()
    jac = len(pa & pb) / max(len(pa | pb), 1)
    rho = float(stats.spearmanr(a.value, b.value).statistic)
    print(f"test accuracy (mean over models): previous {acc['previous']:.4f}, engine {acc['engine']:.4f}")
    print(f"mem >= 0.25: previous {np.mean(a.value >= 0.25):.4f}, engine {np.mean(b.value >= 0.25):.4f}")
    print(f"mem: Spearman {rho:.3f}; |z| <= 2 for {within:.1%} of {ok.sum()} examples; mean z {np.mean(z):+.3f}, "
          f"mean z^2 {np.mean(z**2):.3f} (1 if the two differ only by their standard errors)")  # fmt: skip
    print(f"pairs: previous {len(pa)}, engine {len(pb)}, in both {len(pa & pb)} (Jaccard {jac:.2f})")
    print(f"within_2se={within:.3f} mean_z={np.mean(z):+.3f} mean_z2={np.mean(z**2):.3f} "
          f"mem_spearman={rho:.3f} acc_previous={acc['previous']:.4f} acc_engine={acc['engine']:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
