"""The engine: training a group of K models in lockstep on one device, and evaluating them on every example.

A learner is anything with `fit_eval(train_idx, seed) -> Outcome`; the neural learner also has
`fit_eval_group(runs) -> list[Outcome]`, which trains K runs at once. Each run keeps its own seed (initial
weights, shuffles, augmentation draws) and its own subset, so a run's outcome does not depend on which group
it trains in beyond floating-point rounding.

Three paths, chosen per architecture and device by `choose_path` (the measurements that chose it are there):
- stacked: MLPs (Flatten/Linear/ReLU) as batched matrices, one `baddbmm` per layer for all K models (in bf16,
  on bf16 working copies of the fp32 weights), their products laid out as memlib.train.layouts says for the
  device's kind;
- vmap: any timm model through torch.func (`stack_module_state` + `vmap(functional_call)`), BatchNorm
  statistics kept per model (runs of different subset sizes train apart, so BatchNorm never sees padding);
- single: one model after another, each a group of one (`SingleModel`: the nn.Module itself, unstacked).
All three run through one training loop (`train_group`) with one optimizer, written over stacked parameters
with torch.optim's update rules, and one LR/momentum schedule taken from torch's own schedulers, so every path
takes the steps that torch.optim takes for each model alone (tests/test_engine.py keeps that plain loop).
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import TRAINING_KEYS, Config, ConfigError
from ..data.dataset import Dataset
from .layouts import PLAIN, Layout, cpu_flags, layout_for
from .models import build_model
from .signals import SignalRecorder

PATHS = ("auto", "stacked", "vmap", "single")
PRECISIONS = ("auto", "fp32", "bf16")
# how StackedOptimizer runs an SGD step that every model takes at the same rates: "fused", torch's fused SGD
# kernel over the whole group (one pass over weights, momentum and gradient), or "by-model", the two-pass update
# run model by model on the CPU (the engine's step before; kept so that benchmarks can show both side by side)
UPDATES = ("fused", "by-model")
TOPK_CLASSES = 10  # class probabilities kept per training example: all of them for up to 10 classes
AUG_PAD = 4  # pixels of reflect padding before augmentation's random crop
PREFETCH_DRAWS = ("cuda",)  # device types whose training draws the next epoch's shuffles in a thread meanwhile


@dataclass
class Outcome:
    """What one trained model gets right, and the probability it gives the true label, per example."""

    train_correct: np.ndarray
    train_prob: np.ndarray
    test_correct: np.ndarray
    test_prob: np.ndarray
    signals: dict[str, np.ndarray] | None = None  # per-example training signals (memlib.train.signals)
    train_topk_prob: np.ndarray | None = None  # (n, k) the k most probable classes' probabilities
    train_topk_class: np.ndarray | None = None  # (n, k) and those classes


# ---------------------------------------------------------------------------------------------------
# Device and precision
# ---------------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """'auto' means the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but torch sees no GPU here; use device: auto or cpu")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX-512 bf16 or AMX), so bf16 autocast pays."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto': bf16 autocast (fp32 master weights) where the device runs it fast, else fp32."""
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("precision: bf16, but this GPU has no bf16 support; use precision: auto or fp32")
    return name


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


# ---------------------------------------------------------------------------------------------------
# Data resident on the device
# ---------------------------------------------------------------------------------------------------


class DeviceData:
    """A split's images and labels on the device, standardized with the training statistics.

    With `compact`, images that are whole multiples of 1/255 (every image dataset memlib loads) stay on the
    device as uint8 (a quarter of the memory) and are converted on the fly, batch by batch.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, mean: np.ndarray, std: np.ndarray, device, compact: bool):
        self.device = torch.device(device)
        self.y = torch.as_tensor(y, device=self.device)
        self.mean = torch.as_tensor(mean, device=self.device)
        self.std = torch.as_tensor(std, device=self.device)
        as_bytes = np.rint(x * 255.0)
        self.compact = bool(compact and np.array_equal(as_bytes / 255.0, x.astype(np.float64)))
        if self.compact:
            self.x = torch.as_tensor(as_bytes.astype(np.uint8), device=self.device)
        else:
            self.x = torch.as_tensor((x - mean) / std, dtype=torch.float32, device=self.device)

    def __len__(self) -> int:
        return len(self.y)

    def images(self, idx: torch.Tensor | slice) -> torch.Tensor:
        """Standardized float32 images at `idx` (any index shape; image axes last)."""
        if isinstance(idx, torch.Tensor):  # index_select: 4 to 6 times faster than x[idx] on the CPU
            x = self.x.index_select(0, idx.reshape(-1)).view(*idx.shape, *self.x.shape[1:])
        else:
            x = self.x[idx]
        if self.compact:
            x = (x.float() / 255.0 - self.mean) / self.std
        return x

    def converted(self, dtype: torch.dtype) -> DeviceData:
        """The same split with its standardized images stored in `dtype` (bf16: the values autocast would make)."""
        new = copy.copy(self)
        new.x, new.compact = self.images(slice(None)).to(dtype), False
        return new


def device_data(data: Dataset, device: torch.device, compact: bool | None = None) -> tuple[DeviceData, DeviceData]:
    """Train and test splits on `device` (uint8 on a GPU)."""
    compact = device.type == "cuda" if compact is None else compact
    mean = data.x_train.mean(axis=(0, 2, 3), keepdims=True)[0]
    std = data.x_train.std(axis=(0, 2, 3), keepdims=True)[0] + 1e-6
    return (
        DeviceData(data.x_train, data.y_train, mean, std, device, compact),
        DeviceData(data.x_test, data.y_test, mean, std, device, compact),
    )


def crop_flip_draws(n: int, generator: torch.Generator, pad: int = AUG_PAD) -> tuple[torch.Tensor, ...]:
    """One batch's augmentation draws, on the generator's device (the CPU): flips, then row and column offsets."""
    flip = torch.rand(n, generator=generator) < 0.5
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    return flip, dy, dx


def crop_flip(
    x: torch.Tensor, flip: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int = AUG_PAD
) -> torch.Tensor:
    """Images x (n, C, H, W) flipped where `flip`, then cropped at (dy, dx) after `pad`-pixel reflect padding.

    The draws are on x's device (train_group copies an epoch's at once); dy = dx = pad with no flip gives x back
    unchanged (a padded entry's draws)."""
    _, _, h, w = x.shape
    dev = x.device
    dy, dx = dy.long(), dx.long()
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    rows = (dy[:, None] + torch.arange(h, device=dev)[None])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=dev)[None])[:, None, None, :]
    batch = torch.arange(len(x), device=dev)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=dev)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = AUG_PAD) -> torch.Tensor:
    """Standard augmentation on the device: random horizontal flip and random crop after `pad`-pixel padding."""
    return crop_flip(x, *(t.to(x.device) for t in crop_flip_draws(len(x), generator, pad)), pad=pad)


# ---------------------------------------------------------------------------------------------------
# Optimizer and schedule for K models stacked on axis 0 (torch.optim's update rule, torch's schedules)
# ---------------------------------------------------------------------------------------------------


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, end) of each batch of an epoch over n examples; a last batch of one is folded into the previous
    (a batch of one breaks BatchNorm)."""
    bs = min(batch_size, n)
    starts = list(range(0, n, bs))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return list(zip(starts, starts[1:] + [n]))


def _torch_schedule(cfg: Config, total_steps: int):
    """torch's scheduler for `cfg`, driving a dummy SGD whose LR and momentum `schedule_table` reads step by step.

    Only the schedule is torch's: the training step itself is `StackedOptimizer`'s. For Adam the momentum is
    not cycled (and not read), as torch.optim.Adam would not have it cycled either.
    """
    sgd = cfg.optimizer == "sgd"
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr, momentum=cfg.momentum if sgd else 0.0)
    if cfg.schedule == "onecycle" and total_steps >= 3:
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=cfg.lr,
            total_steps=total_steps,
            pct_start=max(0.25, 2 / total_steps),  # at least two warm-up steps, or the schedule divides by zero
            cycle_momentum=sgd,
        )
    elif cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total_steps)))
    else:
        sched = None
    return opt, sched


@functools.lru_cache(maxsize=64)
def _schedule_table_cached(recipe: tuple, total_steps: int) -> tuple[np.ndarray, np.ndarray]:
    cfg = Config(**dict(recipe))
    opt, sched = _torch_schedule(cfg, total_steps)
    lrs, moms = np.empty(total_steps), np.empty(total_steps)
    key = "momentum" if cfg.optimizer == "sgd" else None
    for step in range(total_steps):
        group = opt.param_groups[0]
        lrs[step] = group["lr"]
        moms[step] = group[key] if key else 0.0
        opt.step()  # no gradient: a no-op that keeps the scheduler's bookkeeping honest
        if sched is not None:
            sched.step()
    return lrs, moms


def schedule_table(cfg: Config, total_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The learning rate and SGD momentum at every step, exactly as torch's optimizer and scheduler set them."""
    return _schedule_table_cached(tuple((k, getattr(cfg, k)) for k in TRAINING_KEYS), total_steps)  # all it may read


class StackedOptimizer:
    """torch.optim's SGD (momentum, Nesterov, weight decay) or Adam, applied to K models stacked on axis 0.

    Each model has its own learning rate and momentum at each step (`lr`, `momentum`: K-vectors) and may sit
    a step out (`active`), so runs with different numbers of steps per epoch train side by side. SGD steps run
    through torch's fused SGD kernel where the rates are also given on the host (`update="fused"`).
    """

    def __init__(
        self, cfg: Config, params: list[torch.Tensor], copies: list[torch.Tensor] | None = None, update: str = "fused"
    ):
        """`copies`: bf16 working copies of `params` (StackedMLP.leaves), refreshed after every step; `update`:
        one of UPDATES, how an SGD step that every model takes at the same rates runs."""
        if update not in UPDATES:
            raise ValueError(f"unknown update {update!r}: one of {UPDATES}")
        self.cfg, self.params, self.update = cfg, params, update
        # torch's fused kernel reads every tensor as contiguous (a transposed gradient came out 0.15 off)
        self.fusable = all(p.is_contiguous() for p in params)
        self.copies = copies if copies is not None and copies[0] is not params[0] else None
        self.state = [dict() for _ in params]
        self.steps = torch.zeros(params[0].shape[0], dtype=torch.float64, device=params[0].device)

    @torch.no_grad()
    def step(
        self,
        grads,
        lr: torch.Tensor,
        momentum: torch.Tensor,
        active: torch.Tensor | None,
        host: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """One step for every active model; `lr` and `momentum` are each model's values at its own step, and
        `host` the same values and which models take the step, (K,) arrays each, on the host (for the fused update).

        Gradients may be bf16 (those of bf16 working copies of the weights): they are widened as they are read.
        Where the config sets `grad_clip`, each model's gradients are first clipped to it (clip_grad_norms).
        """
        cfg = self.cfg
        if cfg.grad_clip is not None:
            clip_grad_norms(grads, cfg.grad_clip)
        self.steps += 1 if active is None else active
        nesterov = cfg.nesterov and cfg.momentum > 0
        fused = self.update == "fused" and self.fusable and host is not None and cfg.optimizer == "sgd"
        if fused and host[1][host[2]].min() > 0:  # (without momentum, torch.optim.SGD keeps no buffer)
            self._fused_sgd(grads, *host, nesterov)
            return
        copies = self.copies or [None] * len(self.params)
        every_sgd = active is None and cfg.optimizer == "sgd"  # the common step: two passes, copies refreshed
        rates: dict[int, tuple] = {}  # lr, momentum and lr * momentum shaped to broadcast over a tensor of each rank
        lr_mom = lr * momentum if every_sgd else None
        for p, g, st, copy_to in zip(self.params, grads, self.state, copies):
            shape = (-1,) + (1,) * (p.dim() - 1)
            if every_sgd:
                if p.dim() not in rates:
                    rates[p.dim()] = (lr.view(shape), momentum.view(shape), lr_mom.view(shape))
                _sgd_step(p, g, st, *rates[p.dim()], cfg.weight_decay, nesterov, copy_to)
                continue
            keep = None if active is None else active.view(shape)
            g = g if g.dtype == p.dtype else g.to(p.dtype)
            d_p = g.add_(p, alpha=cfg.weight_decay) if cfg.weight_decay else g  # g is ours: updated in place
            if cfg.optimizer == "adam":
                beta1, beta2, eps = 0.9, 0.999, 1e-8
                m, v = _buffer(st, "m", p), _buffer(st, "v", p)
                m_new = m.lerp(d_p, 1 - beta1)
                v_new = v * beta2 + (1 - beta2) * d_p * d_p
                steps = torch.clamp(self.steps, min=1).view(shape)
                bc1, bc2 = (1 - beta1**steps).to(p.dtype), (1 - beta2**steps).to(p.dtype)
                update = (lr.view(shape) / bc1) * (m_new / (v_new.sqrt() / bc2.sqrt() + eps))
                _assign(m, m_new, keep)
                _assign(v, v_new, keep)
                p.sub_(update if keep is None else update * keep)
                continue
            # torch.optim.SGD starts the buffer at d_p; from zeros, buf * momentum + d_p is exactly that
            buf = _buffer(st, "buf", p)  # (steps where some sit out: never the first)
            mom, rate = momentum.view(shape), lr.view(shape)
            buf_new = buf * mom + d_p
            _assign(buf, buf_new, keep)
            update = d_p + mom * buf_new if nesterov else buf_new
            p.sub_(rate * update * keep)
        if self.copies is not None and not every_sgd:
            torch._foreach_copy_(self.copies, self.params)

    def _fused_sgd(self, grads, lrs: np.ndarray, moms: np.ndarray, active: np.ndarray, nesterov: bool) -> None:
        """torch.optim.SGD(fused=True)'s kernel over the group: one pass over each weight, gradient and momentum
        (reads 12 bytes a parameter, writes 8), one call per set of models that step at the same rates (all of
        them, on whole stacked tensors, when every model has the same schedule); then the working copies."""
        first = "buf" not in self.state[0]  # torch.optim.SGD starts the buffer at the gradient
        bufs = [_buffer(st, "buf", p, torch.empty_like) for st, p in zip(self.state, self.params)]
        grads = [(g if g.dtype == p.dtype else g.to(p.dtype)).contiguous() for g, p in zip(grads, self.params)]
        sets: dict[tuple[float, float], list[int]] = {}
        for k in np.flatnonzero(active):
            sets.setdefault((float(lrs[k]), float(moms[k])), []).append(int(k))
        for (lr, momentum), ks in sets.items():
            tensors = (self.params, grads, bufs)
            if len(ks) < len(active):  # (views of one model each: contiguous, as the kernel needs)
                tensors = tuple([t[k] for t in ts for k in ks] for ts in tensors)
            torch._fused_sgd_(
                *tensors, weight_decay=self.cfg.weight_decay, momentum=momentum, lr=lr, dampening=0.0,
                nesterov=nesterov, maximize=False, is_first_step=first,
            )  # fmt: skip
        if self.copies is not None:
            torch._foreach_copy_(self.copies, self.params)


def _buffer(state: dict, name: str, like: torch.Tensor, make=torch.zeros_like) -> torch.Tensor:
    """state[name], made by `make` the first time it is asked for (and not allocated again on every step)."""
    buf = state.get(name)
    if buf is None:
        buf = state[name] = make(like)
    return buf


def _sgd_step(p, g, state: dict, lr, momentum, lr_momentum, weight_decay: float, nesterov: bool, copy_to=None) -> None:
    """torch.optim.SGD's update for K models that all take this step, then the bf16 working copy `copy_to`: the
    `by-model` update of UPDATES (the fused one is StackedOptimizer._fused_sgd).

    `lr`, `momentum` and their product `lr_momentum` are per model, shaped to broadcast over p. The update is
    memory-bound. On the CPU it runs model by model for large weights, so that a model's weights,
    gradient, momentum and working copy stay in cache from the first pass over them to the last, and in
    two passes (momentum buffer, then weights) rather than four. A bf16 gradient is widened first: on the
    CPU, widening and then adding in fp32 took 0.15 ms where one mixed-dtype addcmul took 0.23 ms.
    """
    first = "buf" not in state
    buf = _buffer(state, "buf", p, torch.empty_like)
    args = (weight_decay, nesterov, first)
    # model by model only where a cache pays for it: on a GPU each part is a kernel launch (a group of 250
    # recipe MLPs would launch about 2,500 a step), so the whole stack updates at once there
    if p.device.type != "cpu" or p.numel() // p.shape[0] < 1 << 16:
        _sgd_update(p, g, buf, lr, momentum, lr_momentum, *args, copy_to)  # (no indexing: views cost time too)
        return
    for k in range(p.shape[0]):
        _sgd_update(
            p[k], g[k], buf[k], lr[k], momentum[k], lr_momentum[k], *args, None if copy_to is None else copy_to[k]
        )


def _sgd_update(p, g, buf, lr, momentum, lr_momentum, weight_decay: float, nesterov: bool, first: bool, copy_to):
    """One part of `_sgd_step`: the whole stack, or one model's tensors."""
    g = g if g.dtype == p.dtype else g.to(p.dtype)
    d_p = g.add_(p, alpha=weight_decay) if weight_decay else g  # (g is ours: updated in place)
    if first:  # torch.optim.SGD starts the buffer at d_p
        buf.copy_(d_p)
    else:
        torch.addcmul(d_p, buf, momentum, out=buf)  # buf = momentum * buf + d_p
    if nesterov:
        p.addcmul_(d_p, lr, value=-1)
        p.addcmul_(buf, lr_momentum, value=-1)
    else:
        p.addcmul_(buf, lr, value=-1)
    if copy_to is not None:
        copy_to.copy_(p)


def _assign(dst: torch.Tensor, src: torch.Tensor, keep: torch.Tensor | None) -> None:
    if keep is None:
        dst.copy_(src)
    else:
        dst.copy_(torch.where(keep, src, dst))


# ---------------------------------------------------------------------------------------------------
# Stacked forward passes
# ---------------------------------------------------------------------------------------------------


def mlp_layers(model: nn.Module) -> list[nn.Linear] | None:
    """The Linear layers of a Flatten/Linear/ReLU stack (memlib's MLPs), or None for any other architecture."""
    if not isinstance(model, nn.Sequential):
        return None
    kinds = [type(m) for m in model]
    if not kinds or kinds[0] is not nn.Flatten or any(k not in (nn.Flatten, nn.Linear, nn.ReLU) for k in kinds):
        return None
    linears = [m for m in model if isinstance(m, nn.Linear)]
    pattern = [k for k in kinds[1:]]
    expected = [nn.Linear, nn.ReLU] * (len(linears) - 1) + [nn.Linear]
    return linears if pattern == expected and all(m.bias is not None for m in linears) else None


class _ContiguousWeightGrad(torch.autograd.Function):
    """baddbmm(b, h, w) whose backward pass forms the weight gradient from a contiguous copy of h's transpose.

    The gradients are autograd's own for baddbmm (h: (K, B, in), w: (K, in, out), b: (K, 1, out)); only the weight
    gradient's first operand is laid out differently (`Layout.weight_grad` says where that is faster).
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(h, w)
        return torch.baddbmm(b, h, w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        h, w = ctx.saved_tensors
        grad_h = torch.bmm(grad, w.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(h.transpose(1, 2).contiguous(), grad)
        return grad_h, grad_w, grad.sum(1, keepdim=True)


class _TransposedLast(torch.autograd.Function):
    """baddbmm(b, h, w) for a narrow w (K, in, few out) whose forward and weight-gradient products run through
    w's transpose (K, out, in): the same sums, with few rows where autograd's own have few columns.

    The input gradient is autograd's own; the weight gradient comes back in w's layout, contiguous.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(h, w)
        return _transposed_last(h, w, b)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        h, w = ctx.saved_tensors
        grad_h = torch.bmm(grad, w.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(grad.transpose(1, 2), h).transpose(1, 2).contiguous()
        return grad_h, grad_w, grad.sum(1, keepdim=True)


def _transposed_last(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """baddbmm(b, h, w) with w read through a contiguous copy of its transpose (small: the last layer's)."""
    return torch.baddbmm(b, h, w.transpose(1, 2).contiguous().transpose(1, 2))


class StackedMLP:
    """K MLPs as batched matrices: weights kept as (K, in, out), one baddbmm per layer for all models.

    (K, in, out) rather than nn.Linear's (K, out, in): the gradient then comes out contiguous, which made
    the optimizer's elementwise update 8x faster on the CPU. The weights (`params`) stay fp32; with a bf16
    `compute_dtype`, the forward pass runs on bf16 working copies (`leaves`, refreshed by the optimizer after each
    step) and the gradients come out in bf16. These are the values bf16 autocast would make from the fp32
    weights, without casting every weight twice a step. `layout` (memlib.train.layouts) says how the weight
    gradients, evaluation's first layer and the last layer are multiplied on this kind of device.
    """

    def __init__(self, models: list[nn.Module], compute_dtype: torch.dtype = torch.float32, layout: Layout = PLAIN):
        layers = [mlp_layers(m) for m in models]
        depth = len(layers[0])
        self.layout, self.k_models = layout, len(models)
        self._wide = None  # evaluation's wide first layer (layout.eval_first == "wide"), kept while the weights stay
        self.weights = [torch.stack([ls[i].weight.detach().t() for ls in layers]).contiguous() for i in range(depth)]
        self.biases = [torch.stack([ls[i].bias.detach() for ls in layers]).unsqueeze(1) for i in range(depth)]
        self.params = [t for pair in zip(self.weights, self.biases) for t in pair]
        if compute_dtype == torch.float32:
            self.leaves = [t.requires_grad_() for t in self.params]
            self.copies = None
        else:
            self.leaves = [t.to(compute_dtype).requires_grad_() for t in self.params]
            self.copies = self.leaves  # the optimizer refreshes them from the fp32 weights after each step

    def gradients(self, loss: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """d loss / d leaves, stacked like the leaves (the optimizer widens bf16 ones as it reads them)."""
        return torch.autograd.grad(loss, self.leaves)

    def train(self) -> None:
        pass

    def eval(self) -> None:
        pass

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (K, B, ...) -> logits (K, B, classes)."""
        return self._layers(x.reshape(x.shape[0], x.shape[1], -1).to(self.leaves[0].dtype), 0)

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, ...), one batch that every model reads -> logits (K, B, classes); for evaluation (no gradients)."""
        h = x.reshape(x.shape[0], -1).to(self.leaves[0].dtype)
        if self.layout.eval_first == "bmm":
            return self._layers(h.unsqueeze(0).expand(self.k_models, *h.shape), 0)
        b, w = self._wide_first()
        wide = torch.addmm(b, h, w)
        return self._layers(wide.view(len(h), self.k_models, -1).transpose(0, 1), 1)

    def _wide_first(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first layer's biases (1, K * out) and weights (in, K * out), side by side; copied once per update."""
        w, b = self.leaves[0], self.leaves[1]  # (K, in, out), (K, 1, out)
        version = (w._version, b._version, w.data_ptr())
        if self._wide is None or self._wide[0] != version:
            self._wide = (
                version,
                b.detach().transpose(0, 1).reshape(1, -1),
                w.detach().transpose(0, 1).reshape(w.shape[1], -1),
            )
        return self._wide[1], self._wide[2]

    def _layers(self, h: torch.Tensor, start: int) -> torch.Tensor:
        """Layers `start`... of all K models on h (K, B, features): ReLU between them, none after the last."""
        last = len(self.weights) - 1
        if start > 0:
            h = torch.relu(h)
        for i in range(start, last + 1):
            w, b = self.leaves[2 * i], self.leaves[2 * i + 1]
            grad = w.requires_grad and torch.is_grad_enabled()
            if i == last and self.layout.last == "transposed":
                h = _TransposedLast.apply(h, w, b) if grad else _transposed_last(h, w, b)
            elif self.layout.weight_grad == "contiguous" and grad:
                h = _ContiguousWeightGrad.apply(h, w, b)
            else:
                h = torch.baddbmm(b, h, w)
            if i < last:
                h = torch.relu(h)
        return h

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """Each model's weights under nn.Sequential's names (for tests and for saving)."""
        out = []
        for k in range(self.weights[0].shape[0]):
            sd, pos = {}, 1
            for w, b in zip(self.weights, self.biases):
                sd[f"{pos}.weight"], sd[f"{pos}.bias"] = w[k].detach().t(), b[k, 0].detach()
                pos += 2
            out.append(sd)
        return out


class VmapModels:
    """K copies of any nn.Module through torch.func: parameters and buffers stacked, forward vmapped."""

    def __init__(self, models: list[nn.Module]):
        from torch.func import stack_module_state

        params, buffers = stack_module_state(models)
        self.names = list(params)
        self.params = [params[n].detach().clone().requires_grad_() for n in self.names]
        self.leaves = self.params  # autocast casts them in the forward pass
        self.copies = None
        self.buffers = {n: b.clone() for n, b in buffers.items()}
        self.base = copy.deepcopy(models[0]).to("meta")

    def gradients(self, loss: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(loss, self.leaves)

    def train(self) -> None:
        self.base.train()

    def eval(self) -> None:
        self.base.eval()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call, vmap

        def one(params, buffers, xb):
            return functional_call(self.base, (dict(zip(self.names, params)), buffers), (xb,))

        return vmap(one, in_dims=(0, 0, 0), randomness="error")(self.params, self.buffers, x)

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, ...), one batch that every model reads -> logits (K, B, classes)."""
        return self(x.unsqueeze(0).expand(self.params[0].shape[0], *x.shape))

    @classmethod
    def join(cls, parts: list[VmapModels], positions: list[list[int]]) -> VmapModels:
        """One group of the models of `parts`, trained apart: model j of parts[i] goes to positions[i][j]."""
        order = torch.as_tensor([p for ps in positions for p in ps], device=parts[0].params[0].device)
        where = torch.argsort(order)  # position -> its model in the parts' concatenation
        out = copy.copy(parts[0])
        out.params = [torch.cat([g.params[i] for g in parts])[where] for i in range(len(out.names))]
        out.leaves = out.params
        out.buffers = {n: torch.cat([g.buffers[n] for g in parts])[where] for n in out.buffers}
        return out

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        k_models = self.params[0].shape[0]
        return [
            {
                **{n: p[k].detach() for n, p in zip(self.names, self.params)},
                **{n: b[k] for n, b in self.buffers.items()},
            }
            for k in range(k_models)
        ]


class SingleModel:
    """One nn.Module as a group of one (the single path): the module itself runs, with no stacking and no vmap.

    `params` are its parameters seen with a model axis of 1 (views: the optimizer updates the module's own
    weights in place), and its gradients are given that axis too, so that `train_group` and `StackedOptimizer`
    train it as they train K models. With `channels_last` (a CNN on a GPU), batches go in as channels-last.
    """

    def __init__(self, model: nn.Module, channels_last: bool = False):
        self.module, self.channels_last = model, channels_last
        self.leaves = [p for p in model.parameters() if p.requires_grad]
        self.params = [p.detach().unsqueeze(0) for p in self.leaves]
        self.copies = None

    def gradients(self, loss: torch.Tensor) -> list[torch.Tensor]:
        return [g.unsqueeze(0) for g in torch.autograd.grad(loss, self.leaves)]

    def train(self) -> None:
        self.module.train()

    def eval(self) -> None:
        self.module.eval()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (1, B, ...) -> logits (1, B, classes)."""
        x = x[0]
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.module(x).unsqueeze(0)

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        return [self.module.state_dict()]


def choose_path(cfg: Config, model: nn.Module, device: torch.device) -> str:
    """Which path trains a group of this architecture on this device (`engine: auto`).

    Measured on a 2-core AMD EPYC (Zen 4, AVX-512 bf16), 1 thread per process, by
    benchmarks/train_throughput.py (figures in benchmarks/README.md):
    - MLPs: stacked matrices beat one model at a time (bf16: x2.0 against x1.65 for autocast alone), so MLPs
      are stacked on every device; on a GPU one small MLP at a time is bound by kernel launches, not arithmetic.
    - CNNs on the CPU: vmap (and grouped convolutions) were not faster than one model at a time, so other
      architectures train one at a time. No GPU has measured vmap against one at a time yet: set
      `engine: vmap` to try it.
    """
    if cfg.engine != "auto":
        if cfg.engine == "stacked" and mlp_layers(model) is None:
            raise ConfigError(
                f"engine: stacked needs an MLP (Flatten/Linear/ReLU); {cfg.arch} is not one. Use auto, vmap or single."
            )
        return cfg.engine
    return "stacked" if mlp_layers(model) is not None else "single"


# ---------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------


def _epoch_layout(lengths: list[int], batch_size: int, width: int, n_batches: list[int], dev: torch.device):
    """Where each model's epoch lands in the padded (steps, K, width) batches, with the loss weights and batch sizes.

    The same every epoch, so built once per group: element i of model k's epoch (its shuffled subset, or its
    augmentation draws in step order) goes to batch min(i // B, last) at offset i - B * batch, which is
    `batch_bounds` with its folded last batch. Returns the flat destination of each element, the weights
    (steps, K, width) and the batch sizes as host lists (steps x K: read at every step, never from the device).
    """
    k_models, steps = len(lengths), max(n_batches)
    model = np.repeat(np.arange(k_models), lengths)
    pos = np.arange(sum(lengths)) - np.repeat(np.cumsum(lengths) - np.asarray(lengths), lengths)
    batch = np.minimum(pos // batch_size, np.asarray(n_batches)[model] - 1)
    offset = pos - batch * batch_size
    sizes = np.zeros((steps, k_models), dtype=np.int64)
    np.add.at(sizes, (batch, model), 1)
    on_dev = torch.as_tensor(sizes, device=dev)
    valid = torch.arange(width, device=dev)[None, None, :] < on_dev[:, :, None]
    weight = valid / on_dev.clamp(min=1)[:, :, None]
    dest = torch.as_tensor((batch * k_models + model) * width + offset, device=dev)
    return dest, weight.float(), sizes.tolist()


def _host_draws(generators, bounds, augment: bool, pin: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One epoch's shuffles (and augmentation draws) of the whole group, on the host.

    Each model's generator draws in the order it always has (its shuffle, then each step's augmentation in turn),
    so each model takes the batches it took when every step drew its own. Returns every model's shuffled
    positions into the group's concatenated subsets and, with `augment`, the draws (3, total) in step order:
    flips, row and column offsets. `pin`: in pinned memory, for a copy to a GPU that does not wait.
    """
    positions, draws, start = [], [], 0
    for g, bds in zip(generators, bounds):
        n = bds[-1][1]
        positions.append(torch.randperm(n, generator=g) + start)
        start += n
        if augment:
            steps = [crop_flip_draws(e - b, g, AUG_PAD) for b, e in bds]
            draws.append(torch.stack([torch.cat(parts).to(torch.uint8) for parts in zip(*steps)]))
    out = torch.cat(positions), torch.cat(draws, 1) if augment else None
    return tuple(t.pin_memory() if pin and t is not None else t for t in out)  # type: ignore[return-value]


def _epochs_drawn(generators, bounds, augment: bool, epochs: int, device: torch.device):
    """Each epoch's `_host_draws` in turn; where the device is a GPU, the next epoch's drawn in a thread meanwhile.

    Only these draws use the generators, one epoch after another, so drawing ahead keeps each generator's order;
    the host's draws (benchmarks/README.md times them) then overlap the device's work instead of stalling it at
    every epoch's start.
    """
    pin = device.type == "cuda"
    if device.type not in PREFETCH_DRAWS:
        for _ in range(epochs):
            yield _host_draws(generators, bounds, augment, pin)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        ahead = pool.submit(_host_draws, generators, bounds, augment, pin)
        for epoch in range(epochs):
            drawn = ahead.result()
            if epoch + 1 < epochs:
                ahead = pool.submit(_host_draws, generators, bounds, augment, pin)
            yield drawn


def _epoch_batches(drawn, flat_subsets: torch.Tensor, dest: torch.Tensor, shape: tuple[int, int, int]):
    """An epoch's padded indices (steps, K, width) into the training split, from its host draws (one copy each),
    and its augmentation draws (3, steps, K, width) or None; padding's draws leave an image unchanged."""
    positions, draws = drawn
    dev = flat_subsets.device
    index = torch.zeros(math.prod(shape), dtype=torch.long, device=dev)
    index[dest] = flat_subsets[positions.to(dev, non_blocking=positions.is_pinned())]
    if draws is None:
        return index.view(shape), None
    aug = torch.full((3, math.prod(shape)), AUG_PAD, dtype=torch.uint8, device=dev)
    aug[0] = 0
    aug[:, dest] = draws.to(dev, non_blocking=draws.is_pinned())
    return index.view(shape), aug.view(3, *shape)


def _step_tables(cfg: Config, n_batches: list[int], dev: torch.device):
    """Each model's learning rate and momentum at each (epoch, step), (2, epochs, steps, K), as torch's scheduler
    sets them for a model with its number of batches per epoch, and whether model k takes step s, (steps, K):
    on the device (rates in float32), and on the host (float64, torch's own values; for the fused update)."""
    rates = np.zeros((2, cfg.epochs, max(n_batches), len(n_batches)))
    for k, nb in enumerate(n_batches):
        for i, table in enumerate(schedule_table(cfg, cfg.epochs * nb)):
            rates[i, :, :nb, k] = table.reshape(cfg.epochs, nb)
    takes = np.arange(max(n_batches))[:, None] < np.array(n_batches)[None, :]
    device = torch.as_tensor(rates, dtype=torch.float32, device=dev), torch.as_tensor(takes, device=dev)
    return device, (rates, takes)


def _step_batch(index: torch.Tensor, weight: torch.Tensor, sizes: list[int], width: int):
    """One step's (K, width) indices and loss weights, and which entries are real ((K, width) bool; None: all).

    A group of one takes its batch as it is, never padded: its BatchNorm layers then see only real examples,
    as they do when the model trains alone.
    """
    if len(sizes) == 1:
        return index[:, : sizes[0]], weight[:, : sizes[0]], None
    return index, weight, (weight > 0 if any(b != width for b in sizes) else None)


def _inputs(train: DeviceData, idx: torch.Tensor, aug: torch.Tensor | None) -> torch.Tensor:
    """One step's batches of images (K, width, C, H, W), each model's augmented with its own draws `aug`."""
    xb = train.images(idx)
    if aug is not None:  # (3, K, width): every entry at once; padding's draws leave it unchanged
        flip, dy, dx = (a.reshape(-1) for a in aug)
        xb = crop_flip(xb.flatten(0, 1), flip.bool(), dy, dx, AUG_PAD).view(xb.shape)
    return xb


# The phases of a training step, in train_group's order, each ended by a call of its `phase` hook with the name
# (benchmarks/roofline.py times them): the batch gathered from the resident data (and, at an epoch's start,
# the epoch's draws), the forward pass and loss, the training signals recorded, the backward pass, the update
# (gradient clipping included). "setup", before the first step, ends what train_group does before it trains.
PHASES = ("gather", "forward", "signals", "backward", "update")


def train_group(
    models,
    train: DeviceData,
    subsets: list[torch.Tensor],
    generators: list[torch.Generator],
    cfg: Config,
    precision: str,
    steps: int | None = None,
    recorder: SignalRecorder | None = None,
    update: str = "fused",
    phase: Callable[[str], None] = lambda name: None,
) -> None:
    """Train K models in lockstep, model k on train examples subsets[k]: memlib's one training loop.

    `models` is a group: StackedMLP or VmapModels (K stacked models), or SingleModel (one nn.Module, K = 1).
    Every model draws its shuffles and augmentation from its own generator, in the same order whatever its group,
    so each takes the steps it would take alone; a whole epoch's draws are made, and copied to the device, when
    the epoch begins. Models with fewer batches in an epoch sit out the last steps of that epoch; in a group of
    more than one, a short last batch is padded and weighted out of the loss. A `recorder` (for K models) gets each
    step's logits of the real (unpadded) entries; `steps` stops early; `update` is StackedOptimizer's (UPDATES);
    `phase` is called as each of a step's `PHASES` ends (and with "setup" before the first).
    """
    dev = train.device
    bounds = [batch_bounds(len(sub), cfg.batch_size) for sub in subsets]
    n_batches = [len(b) for b in bounds]
    width = max(e - s for b in bounds for s, e in b)
    shape = (max(n_batches), len(subsets), width)
    ((lr_all, mom_all), active_all), (rates, takes) = _step_tables(cfg, n_batches, dev)
    dest, weight, host_sizes = _epoch_layout([len(sub) for sub in subsets], cfg.batch_size, width, n_batches, dev)
    flat_subsets = torch.cat(list(subsets))
    everyone = min(n_batches)  # steps before which every model is active
    opt = StackedOptimizer(cfg, models.params, models.copies, update)
    models.train()
    done = 0
    # no step reads anything back from the device: the host queues steps ahead of the device (a test counts it)
    drawn = _epochs_drawn(generators, bounds, cfg.augment == "flip_crop", cfg.epochs, dev)
    phase("setup")
    for epoch, host in enumerate(drawn):
        index, aug = _epoch_batches(host, flat_subsets, dest, shape)
        for s in range(shape[0]):
            if steps is not None and done >= steps:
                return
            idx, w, valid = _step_batch(index[s], weight[s], host_sizes[s], width)
            xb = _inputs(train, idx, None if aug is None else aug[:, s, :, : idx.shape[1]])
            yb = train.y[idx]
            phase("gather")
            with _autocast(dev, precision):
                logits = models(xb)
            loss = _weighted_loss(logits, yb, w, cfg.label_smoothing)
            phase("forward")
            if recorder is not None:
                recorder.update(epoch, idx, logits, yb, valid=valid)
            phase("signals")
            grads = models.gradients(loss)
            phase("backward")
            active = None if s < everyone else active_all[s]
            host_rates = rates[0, epoch, s], rates[1, epoch, s], takes[s]
            opt.step(grads, lr_all[epoch, s], mom_all[epoch, s], active, host_rates)
            phase("update")
            done += 1


def _weighted_loss(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """A step's loss: each entry's cross-entropy (in fp32) times its weight (0 for padding), summed over the group."""
    losses = F.cross_entropy(
        logits.float().flatten(0, 1), y.flatten(), reduction="none", label_smoothing=label_smoothing
    )
    return (losses.view(y.shape) * w).sum()


def clip_grad_norms(grads, max_norm: float) -> None:
    """Scale each model's gradients in place as torch.nn.utils.clip_grad_norm_ scales one model's: by
    max_norm / (norm + 1e-6) where that is below 1, the norm taken over all of the model's gradients (axis 0: K).

    No value is read back to the host (models under the limit are multiplied by 1).
    """
    norms = [torch.linalg.vector_norm(g.float(), dim=tuple(range(1, g.dim()))) for g in grads]
    total = torch.linalg.vector_norm(torch.stack(norms), dim=0)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.view((-1,) + (1,) * (g.dim() - 1)).to(g.dtype))


@torch.inference_mode()
def evaluate(model, split: DeviceData, precision: str, k_models: int | None = None, rows: int = 65536, topk: int = 0):
    """Per-example correctness (bool) and true-label probability (float32), in large batches.

    `model` is one nn.Module (k_models None: arrays of shape (n,)) or K stacked models (arrays (K, n)).
    With `topk`, also the topk largest class probabilities (float16) and their classes (uint8/uint16), (..., topk).
    """
    model.eval()
    stacked = k_models is not None
    batch = max(256, rows // (k_models or 1))
    correct, prob, top_p, top_c = [], [], [], []
    for s in range(0, len(split), batch):  # everything stays on the device: no batch waits for a copy
        x = split.images(slice(s, s + batch))
        y = split.y[s : s + batch]
        with _autocast(split.device, precision):
            logits = (model.shared(x) if stacked else model(x)).float()
        yy = y.expand(k_models, -1) if stacked else y
        correct.append(logits.argmax(-1) == yy)
        p = logits.softmax(-1)
        prob.append(p.gather(-1, yy.unsqueeze(-1)).squeeze(-1))
        if topk:
            values, classes = p.topk(topk, dim=-1)
            top_p.append(values.half())
            top_c.append(classes.to(torch.uint8 if logits.shape[-1] <= 256 else torch.int32))
    parts = [torch.cat(correct, -1), torch.cat(prob, -1)]
    parts += [torch.cat(top_p, -2), torch.cat(top_c, -2)] if topk else []
    out = [t.cpu().numpy() for t in parts]  # one copy of each array, at the end
    if topk and out[3].dtype != np.uint8:
        out[3] = out[3].astype(np.uint16)
    return tuple(out)


class NeuralLearner:
    """Trains `timm.create_model(cfg.arch)` on subsets, K at a time, with the data resident on the device."""

    def __init__(
        self,
        cfg: Config,
        data: Dataset,
        device: str | None = None,
        precision: str | None = None,
        path: str | None = None,
        eval_rows: int | None = None,
        record_signals: bool = True,
        layout: Layout | None = None,
        update: str = "fused",
    ):
        if not isinstance(cfg.epochs, int):
            raise ConfigError(
                f"epochs: {cfg.epochs} is chosen by stage 1 (memlib.stages.train.resolve_epochs) before any model "
                "trains: resolve it first, or give a number of epochs"
            )
        self.cfg, self.record_signals, self.update = cfg, record_signals, update  # update: one of UPDATES
        self.device = resolve_device(device or cfg.device)
        # rows per evaluation batch, over all K models: on the CPU 16,384 evaluated 8 stacked MLPs 20% faster
        # than 65,536 (a batch's activations stay in cache); a GPU takes larger batches (not yet measured)
        self.eval_rows = eval_rows or (16384 if self.device.type == "cpu" else 65536)
        self.precision = resolve_precision(precision or cfg.precision, self.device)
        self.train, self.test = device_data(data, self.device)
        self.shape, self.num_classes = data.image_shape, data.num_classes
        self._train_bf16: DeviceData | None = None
        self.path = "choosing"
        probe = self.make_model(0)
        self.path = path or choose_path(cfg, probe, self.device)
        # the stacked path's products: by this device's kind (memlib.train.layouts says what measured each)
        self.layout_kind, self.layout = ("given", layout) if layout else layout_for(self.device)
        self.batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in probe.modules())

    def make_model(self, seed: int) -> nn.Module:
        """A fresh model with the initial weights that `seed` gives, built on the device (its generator draws them:
        on a GPU, torch.manual_seed(seed) seeds the GPU's generator too, so no weight is made on the CPU and copied)."""
        torch.manual_seed(seed)
        c, h, _ = self.shape
        with self.device:
            model = build_model(self.cfg, in_chans=c, img_size=h, num_classes=self.num_classes).to(self.device)
        if self.device.type == "cuda" and self.path == "single":
            model = model.to(memory_format=torch.channels_last)
        return model

    def fit_eval(self, train_idx: np.ndarray, seed: int) -> Outcome:
        """Train one fresh model on the training examples `train_idx` (seeded by `seed`) and evaluate it."""
        return self.fit_eval_group([(train_idx, seed)])[0]

    def train_input(self) -> DeviceData:
        """The training split as the stacked path reads it: in bf16 when it trains in bf16 without augmentation.

        These are the values autocast would make of each batch; stored once, a batch is gathered in half the
        bytes and not cast again.
        """
        if self.path != "stacked" or self.precision != "bf16" or self.cfg.augment != "none":
            return self.train
        if self._train_bf16 is None:
            self._train_bf16 = self.train.converted(torch.bfloat16)
        return self._train_bf16

    def fit_eval_group(self, runs: list[tuple[np.ndarray, int]], steps: int | None = None) -> list[Outcome]:
        """Train one model per (train_idx, seed) in lockstep on this learner's path, and evaluate them all."""
        signals: list = []
        models = self.fit_group(runs, steps, signals if self.record_signals else None)
        signals += [None] * (len(runs) - len(signals))
        topk = min(self.num_classes, TOPK_CLASSES) if self.record_signals else 0
        if self.path == "single":
            outs = []
            for i, model in enumerate(models):
                tr = evaluate(model, self.train, self.precision, rows=self.eval_rows, topk=topk)
                te = evaluate(model, self.test, self.precision, rows=self.eval_rows)
                outs.append(Outcome(tr[0], tr[1], te[0], te[1], signals[i], *tr[2:]))
            return outs
        k = len(runs)
        tr = evaluate(models, self.train_input(), self.precision, k, self.eval_rows, topk=topk)
        te_c, te_p = evaluate(models, self.test, self.precision, k, self.eval_rows)
        return [Outcome(tr[0][i], tr[1][i], te_c[i], te_p[i], signals[i], *(a[i] for a in tr[2:])) for i in range(k)]

    def fit_group(self, runs: list[tuple[np.ndarray, int]], steps: int | None = None, signals: list | None = None):
        """The trained models: a list of nn.Module (single path) or one stacked object (stacked, vmap).

        With a `signals` list, each model's training signals (memlib.train.signals) are appended to it, in order.
        """
        generators = [torch.Generator().manual_seed(seed) for _, seed in runs]
        lengths = [len(idx) for idx, _ in runs]  # the subsets copied to the device at once, then split
        flat = torch.as_tensor(np.concatenate([np.asarray(idx, dtype=np.int64) for idx, _ in runs]), device=self.device)
        subsets = list(flat.split(lengths))
        n, epochs = len(self.train), self.cfg.epochs
        if self.path == "single":  # one model at a time: K groups of one, trained in turn
            out = []
            for run, sub, g in zip(runs, subsets, generators):
                model = self.make_model(run[1])
                rec = SignalRecorder(1, n, epochs, self.device) if signals is not None else None
                group = SingleModel(model, channels_last=self.device.type == "cuda")
                train_group(group, self.train, [sub], [g], self.cfg, self.precision, steps, rec, self.update)
                out.append(model)
                if rec is not None:
                    signals += rec.result()
            return out
        if self.path == "vmap" and self.batchnorm and len({len(idx) for idx, _ in runs}) > 1:
            return self._fit_by_size(runs, steps, signals)
        models = [self.make_model(seed) for _, seed in runs]
        if self.path == "stacked":
            stacked = StackedMLP(models, torch.bfloat16 if self.precision == "bf16" else torch.float32, self.layout)
        else:
            stacked = VmapModels(models)
        rec = SignalRecorder(len(runs), n, epochs, self.device) if signals is not None else None
        train_group(stacked, self.train_input(), subsets, generators, self.cfg, self.precision, steps, rec, self.update)
        if rec is not None:
            signals += rec.result()
        return stacked

    def _fit_by_size(self, runs: list[tuple[np.ndarray, int]], steps: int | None, signals: list | None) -> VmapModels:
        """A vmap group with BatchNorm, trained as one group per subset size and joined back in the runs' order.

        In one group, a model's short last batch is padded (copies of example 0) and a model with fewer batches
        still runs the steps it sits out; BatchNorm would take both into its statistics. Runs of one size have
        the same batches, so each such group needs no padding and every model takes the steps it takes alone.
        """
        sizes = list(dict.fromkeys(len(idx) for idx, _ in runs))
        positions = [[i for i, (idx, _) in enumerate(runs) if len(idx) == size] for size in sizes]
        parts, found = [], {}
        for pos in positions:
            got: list | None = [] if signals is not None else None
            parts.append(self.fit_group([runs[i] for i in pos], steps, got))
            found.update(zip(pos, got or []))
        if signals is not None:
            signals += [found[i] for i in range(len(runs))]
        return VmapModels.join(parts, positions)


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
