"""Training one model on one subset, and evaluating it on every train and test example.

A learner is anything with `fit_eval(train_idx, seed) -> Outcome`. The neural learner keeps the data resident
on its device (augmentation runs there too); the 1-nearest-neighbour learner is exact and deterministic, so
tests can check the estimators against the definition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .config import Config, ConfigError
from .data import Dataset
from .models import build_model


@dataclass
class Outcome:
    """What one trained model gets right, and the probability it gives the true label, per example."""

    train_correct: np.ndarray
    train_prob: np.ndarray
    test_correct: np.ndarray
    test_prob: np.ndarray


def derive_seed(base: int, *stream: int) -> int:
    """A 63-bit seed from (base, stream...), independent across streams: the run index gives the seed."""
    state = np.random.SeedSequence([base, *stream]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def resolve_device(name: str) -> torch.device:
    """'auto' means the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but torch sees no GPU here; use device: auto or cpu")
    return torch.device(name)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Standard augmentation on the device: random horizontal flip and random crop after `pad`-pixel padding."""
    n, _, h, w = x.shape
    dev = x.device
    flip = torch.rand(n, generator=generator).to(dev) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(dev)
    rows = (dy[:, None] + torch.arange(h, device=dev)[None])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=dev)[None])[:, None, None, :]
    batch = torch.arange(n, device=dev)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=dev)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def _optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,  # torch refuses Nesterov without momentum
        weight_decay=cfg.weight_decay,
    )


def _schedule(cfg: Config, opt: torch.optim.Optimizer, total_steps: int):
    if cfg.schedule == "onecycle" and total_steps >= 3:
        return torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=cfg.lr,
            total_steps=total_steps,
            pct_start=max(0.25, 2 / total_steps),  # at least two warm-up steps, or the schedule divides by zero
            cycle_momentum=cfg.optimizer == "sgd",
        )
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total_steps)))
    return None


def train_model(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: Config, generator: torch.Generator
) -> torch.nn.Module:
    """Train `model` on (x, y), already on the device, for cfg.epochs; shuffling draws from `generator`."""
    n = len(x)
    bs = min(cfg.batch_size, n)
    starts = list(range(0, n, bs))
    if len(starts) > 1 and n - starts[-1] == 1:  # a batch of one breaks BatchNorm: fold it into the previous
        starts.pop()
    ends = starts[1:] + [n]
    opt = _optimizer(cfg, model)
    sched = _schedule(cfg, opt, cfg.epochs * len(starts))
    use_amp = x.device.type == "cuda"
    model.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=generator).to(x.device)
        for s, e in zip(starts, ends):
            idx = perm[s:e]
            xb, yb = x[idx], y[idx]
            if cfg.augment == "flip_crop":
                xb = random_crop_flip(xb, generator)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = F.cross_entropy(model(xb), yb, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
    return model


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 4096) -> tuple[np.ndarray, ...]:
    """Per-example correctness (bool) and true-label probability (float32), in large batches."""
    model.eval()
    correct, prob = [], []
    use_amp = x.device.type == "cuda"
    for s in range(0, len(x), batch):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(x[s : s + batch]).float()
        yb = y[s : s + batch]
        correct.append((logits.argmax(1) == yb).cpu())
        prob.append(logits.softmax(1).gather(1, yb[:, None])[:, 0].cpu())
    return torch.cat(correct).numpy(), torch.cat(prob).numpy()


class NeuralLearner:
    """Trains `timm.create_model(cfg.arch)` on a subset, with the whole dataset resident on the device."""

    def __init__(self, cfg: Config, data: Dataset, device: str | None = None, eval_batch: int = 4096):
        self.cfg, self.eval_batch = cfg, eval_batch
        self.device = resolve_device(device or cfg.device)
        x_train, x_test = data.normalized()
        self.x_train = torch.as_tensor(x_train, device=self.device)
        self.y_train = torch.as_tensor(data.y_train, device=self.device)
        self.x_test = torch.as_tensor(x_test, device=self.device)
        self.y_test = torch.as_tensor(data.y_test, device=self.device)
        self.shape = data.image_shape
        self.num_classes = data.num_classes

    def make_model(self) -> torch.nn.Module:
        c, h, _ = self.shape
        model = build_model(self.cfg, in_chans=c, img_size=h, num_classes=self.num_classes).to(self.device)
        if self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        return model

    def fit_eval(self, train_idx: np.ndarray, seed: int) -> Outcome:
        """Train a fresh model on the training examples `train_idx` (seeded by `seed`) and evaluate it."""
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        idx = torch.as_tensor(train_idx, device=self.device)
        model = train_model(self.make_model(), self.x_train[idx], self.y_train[idx], self.cfg, generator)
        train_correct, train_prob = evaluate(model, self.x_train, self.y_train, self.eval_batch)
        test_correct, test_prob = evaluate(model, self.x_test, self.y_test, self.eval_batch)
        return Outcome(train_correct, train_prob, test_correct, test_prob)


class NearestNeighbourLearner:
    """1-nearest-neighbour on raw pixels: exact and deterministic for any subset (ties go to the lowest index)."""

    def __init__(self, data: Dataset):
        x_train = data.x_train.reshape(data.n_train, -1).astype(np.float64)
        x_test = data.x_test.reshape(data.n_test, -1).astype(np.float64)
        self.d_train = _sq_distances(x_train, x_train)
        self.d_test = _sq_distances(x_test, x_train)
        self.y_train, self.y_test = data.y_train, data.y_test

    def predict(self, train_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predicted labels of all train and all test examples from the training examples `train_idx`."""
        train_idx = np.sort(train_idx)
        nn_train = train_idx[np.argmin(self.d_train[:, train_idx], axis=1)]
        nn_test = train_idx[np.argmin(self.d_test[:, train_idx], axis=1)]
        return self.y_train[nn_train], self.y_train[nn_test]

    def fit_eval(self, train_idx: np.ndarray, seed: int) -> Outcome:
        pred_train, pred_test = self.predict(train_idx)
        train_correct, test_correct = pred_train == self.y_train, pred_test == self.y_test
        return Outcome(train_correct, train_correct.astype(np.float32), test_correct, test_correct.astype(np.float32))


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.maximum(d, 0.0)
