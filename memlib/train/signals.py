"""Per-example training signals, read off the forward pass each training step already makes.

Every epoch a model sees each example of its subset once. From that pass's logits (train mode, augmented
input, weights before the step) the recorder keeps, per model and example, on the device:

- `correct_epochs`: epochs in which the example was classified correctly (learning speed = this / epochs,
  the C-score proxy of Jiang et al. 2021);
- `forgetting`: forgetting events, correct at one presentation and wrong at the next (Toneva et al. 2019);
- `learned_epoch`: the first epoch from which the example stays correct to the end (epochs: never);
- `aum`: mean over epochs of the logit margin, given-label logit minus the largest other (Pleiss et al. 2020);
- `margin`: mean over epochs of the probability margin, p(given label) minus the largest other probability;
- `loss`: mean over epochs of the cross-entropy on the given label;
- `el2n`: the L2 norm of softmax minus one-hot in epoch `el2n_epoch(epochs)` (Paul et al. 2021: early).

Stored per model and training example: 3 uint8 + 4 float16 = 11 bytes (CIFAR-100: 50,000 x 11 = 550 kB a
model). Examples outside a model's subset get the sentinel NOT_SEEN (uint8) or NaN (float16).
"""

from __future__ import annotations

import numpy as np
import torch

from ..columns import SIGNAL_NOT_SEEN as NOT_SEEN


def el2n_epoch(epochs: int) -> int:
    """The (0-based) epoch whose pass gives EL2N: after about a tenth of training, as Paul et al. score early."""
    return min(epochs - 1, epochs // 10)


class SignalRecorder:
    """Accumulates the signals of K models over n training examples during training, on the device."""

    def __init__(self, k_models: int, n: int, epochs: int, device: torch.device):
        if epochs > 254:
            raise ValueError(f"signals count epochs in uint8: at most 254 epochs, got {epochs}")
        self.k, self.n, self.epochs = k_models, n, epochs
        self.el2n_at = el2n_epoch(epochs)
        z = lambda dtype: torch.zeros(k_models * n, dtype=dtype, device=device)
        self.seen = z(torch.bool)
        self.prev_correct = z(torch.bool)
        self.correct_epochs, self.forgetting = z(torch.int32), z(torch.int32)
        self.last_wrong = torch.full((k_models * n,), -1, dtype=torch.int32, device=device)
        self.aum, self.margin, self.loss, self.el2n = (z(torch.float32) for _ in range(4))
        self._epoch, self._pending = 0, []

    def update(self, epoch: int, examples: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, valid=None):
        """Record one step: `examples` (K, B) training positions, `logits` (K, B, C), `labels` (K, B).

        `valid` (K, B) marks real entries of padded batches; each example appears at most once per epoch, so
        an epoch's steps are kept as they come and recorded together when the epoch ends (a few large
        operations per epoch rather than a dozen small ones per step).
        """
        if epoch != self._epoch:
            self.flush()
            self._epoch = epoch
        k, b = examples.shape
        flat = (torch.arange(k, device=examples.device)[:, None] * self.n + examples).reshape(-1)
        lg, y = logits.detach().reshape(k * b, -1), labels.reshape(-1)
        if valid is not None:
            keep = valid.reshape(-1)
            flat, lg, y = flat[keep], lg[keep], y[keep]
        self._pending.append((flat, lg, y))

    @torch.no_grad()
    def flush(self) -> None:
        """Record the steps kept since the epoch began."""
        if not self._pending:
            return
        epoch = self._epoch
        flat, lg, y = (torch.cat(parts) for parts in zip(*self._pending))
        self._pending = []
        lg, y = lg.float(), y[:, None]
        logp = lg.log_softmax(-1)
        p = logp.exp()
        given = lg.gather(1, y).squeeze(1)
        other = lg.scatter(1, y, float("-inf")).amax(1)
        p_given = p.gather(1, y).squeeze(1)
        p_other = p.scatter(1, y, float("-inf")).amax(1)
        correct = lg.argmax(1) == y.squeeze(1)
        self.seen[flat] = True
        self.forgetting[flat] += (self.prev_correct[flat] & ~correct).int()
        self.prev_correct[flat] = correct
        self.correct_epochs[flat] += correct.int()
        self.last_wrong[flat[~correct]] = epoch
        self.aum[flat] += given - other
        self.margin[flat] += p_given - p_other
        self.loss[flat] -= logp.gather(1, y).squeeze(1)
        if epoch == self.el2n_at:
            onehot = torch.zeros_like(p).scatter_(1, y, 1.0)
            self.el2n[flat] = (p - onehot).norm(dim=1)

    def result(self) -> list[dict[str, np.ndarray]]:
        """Each model's signals over all n examples, as stored (NOT_SEEN / NaN where it did not train)."""
        self.flush()
        seen = self.seen.cpu().numpy()
        counts = {
            "correct_epochs": self.correct_epochs,
            "forgetting": self.forgetting,
            "learned_epoch": self.last_wrong + 1,
        }
        out: dict[str, np.ndarray] = {}
        for name, t in counts.items():
            out[name] = np.where(seen, t.cpu().numpy(), NOT_SEEN).astype(np.uint8)
        for name in ("aum", "margin", "loss"):
            out[name] = np.where(seen, getattr(self, name).cpu().numpy() / self.epochs, np.nan).astype(np.float16)
        out["el2n"] = np.where(seen, self.el2n.cpu().numpy(), np.nan).astype(np.float16)
        return [{name: v.reshape(self.k, self.n)[m] for name, v in out.items()} for m in range(self.k)]
