"""A profile's FLOPs per model, and the models/hour they allow at a fraction of one H100's dense bf16 peak.

    python benchmarks/flops.py cifar10-fast     # the fast CIFAR-shaped target (docs/gpu.md)
    python benchmarks/flops.py cifar10 --fraction 1.0

FLOPs are torch's FLOP counter (torch.utils.flop_counter: 2 per multiply-add of convolutions and matrix
products; normalization and activations not counted) on one example's forward pass. A model costs
3 x forward (forward and backward) for each training example of each epoch, plus one forward pass for each
example it is evaluated on (every training and test example). The last line is the headline.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

H100_BF16_DENSE = 989e12  # FLOP/s: H100 SXM, dense bf16 tensor cores (the H200 has the same compute)
TARGET_FRACTION = 0.20  # of that peak: the fast CIFAR-shaped target (docs/gpu.md says why 20%)
# the built-in datasets' image shape, classes, training and test examples (before train_size)
SHAPES = {
    "cifar10": ((3, 32, 32), 10, 50_000, 10_000),
    "cifar100": ((3, 32, 32), 100, 50_000, 10_000),
    "mnist": ((1, 28, 28), 10, 60_000, 10_000),
    "fashion-mnist": ((1, 28, 28), 10, 60_000, 10_000),
}


def forward_flops(cfg, image_shape: tuple[int, int, int], num_classes: int) -> int:
    """FLOPs of one example's forward pass through the profile's architecture."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from memlib.train.models import build_model

    c, h, _ = image_shape
    model = build_model(cfg, in_chans=c, img_size=h, num_classes=num_classes).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *image_shape))
    return counter.get_total_flops()


def model_flops(cfg) -> dict:
    """Per example forward, and per model: training (3 x forward x subset x epochs), evaluation, total."""
    shape, classes, n_train, n_test = SHAPES[cfg.dataset]
    n_train = min(cfg.train_size or n_train, n_train)
    forward = forward_flops(cfg, shape, classes)
    subset = round(cfg.subset_ratio * n_train)
    training = 3 * forward * subset * cfg.epochs
    evaluation = forward * (n_train + n_test)
    return dict(forward=forward, subset=subset, epochs=cfg.epochs, training=training, evaluation=evaluation,
                total=training + evaluation)  # fmt: skip


def models_per_hour(total_flops: float, fraction: float, peak: float = H100_BF16_DENSE) -> float:
    """Models an hour at `fraction` of `peak` FLOP/s."""
    return fraction * peak * 3600 / total_flops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", help="a profile name or YAML path (e.g. cifar10-fast)")
    parser.add_argument("--fraction", type=float, default=TARGET_FRACTION, help="of the H100's dense bf16 peak")
    args = parser.parse_args(argv)
    import memlib

    cfg = memlib.load_profile(args.profile)
    f = model_flops(cfg)
    rate = models_per_hour(f["total"], args.fraction)
    seconds = f["total"] / (args.fraction * H100_BF16_DENSE)
    print(f"{cfg.profile}: {cfg.arch} (width {cfg.width}) on {cfg.dataset}")
    print(f"  forward, one example    {f['forward'] / 1e9:10.4f} GFLOP")
    print(
        f"  training, one model     {f['training'] / 1e15:10.4f} PFLOP (3 x forward x {f['subset']:,} x {f['epochs']})"
    )
    print(f"  evaluation, one model   {f['evaluation'] / 1e15:10.4f} PFLOP")
    print(f"  at {args.fraction:.0%} of {H100_BF16_DENSE / 1e12:.0f} TFLOP/s {seconds:10.2f} s a model")
    print(
        f"profile={cfg.profile} forward_gflop={f['forward'] / 1e9:.4f} model_pflop={f['total'] / 1e15:.4f} "
        f"fraction={args.fraction:.2f} models_per_hour={rate:.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
