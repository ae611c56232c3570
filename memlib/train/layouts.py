"""How the stacked path lays out its matrix products on each kind of device: a table, and what chose each entry.

The same products run fast or slow by their layout alone, and the fast layout differs between processors. Products
timed alone do not choose an entry: on an Intel Xeon with AMX a contiguous operand and one wide product ran about
twice as fast alone, yet the whole engine trained and evaluated slower with them. A layout changes only the
rounding of the same sums, yet it does change it, so the layout is looked up by device kind, never timed at
start-up: two runs on one kind of machine then train the same models. `benchmarks/layouts.py` times the whole
engine in each layout side by side on the machine it runs on and prints the entry to put here, with its figures.

An entry's fields:
- `weight_grad`: how the backward pass forms each layer's weight gradient, input^T @ grad_output, K at a time.
  "view": autograd's own (the input's transpose is a strided view); "contiguous": the transposed input copied
  to a contiguous operand first (memlib's `_ContiguousWeightGrad`).
- `eval_first`: how evaluation computes the first layer, whose input all K models share. "bmm": K batched
  products of the same input (expanded, not copied); "wide": one product of the input with all K models'
  weights side by side, (rows, in) @ (in, K * out).
- `last`: how the last layer (few outputs: the classes) is multiplied. "plain": autograd's own; "transposed":
  its forward and weight-gradient products taken through the weight's transpose, (K, out, in), whose few rows
  run faster than few columns (memlib's `_TransposedLast`).
- `measured`: the measurement that chose the entry (where, when, which command, what it printed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..machine import cpu_flags

WEIGHT_GRADS = ("view", "contiguous")
EVAL_FIRSTS = ("bmm", "wide")
LASTS = ("plain", "transposed")


@dataclass(frozen=True)
class Layout:
    weight_grad: str
    eval_first: str
    measured: str
    last: str = "plain"

    def __post_init__(self):
        if self.weight_grad not in WEIGHT_GRADS or self.eval_first not in EVAL_FIRSTS or self.last not in LASTS:
            raise ValueError(f"unknown layout {self.weight_grad!r}/{self.eval_first!r}/{self.last!r}")

    @property
    def name(self) -> str:
        return f"{self.weight_grad}/{self.eval_first}" + ("/transposed-last" if self.last == "transposed" else "")


PLAIN = Layout("view", "bmm", "autograd's own products: the layout memlib always used")

# Device kinds (`device_kind`), most specific first. An extension is one entry, with its measurement.
LAYOUTS: dict[str, Layout] = {
    "cpu-amx": Layout(
        "view",
        "bmm",
        "python benchmarks/layouts.py on an Intel Xeon with AMX (issue 23): the whole engine trained and evaluated "
        "slower with contiguous/wide, so view/bmm (its figures: benchmarks/README.md, the stacked path's layout per "
        "device kind); the last layer transposed: not yet measured there",
    ),
    "cpu-avx512-bf16": Layout(
        "view",
        "bmm",
        "python benchmarks/layouts.py on an AMD EPYC (Zen 4), 1 thread: contiguous/wide no faster than view/bmm, "
        "so the layout memlib always used stays (its figures, date and commit: benchmarks/README.md, the stacked "
        "path's layout per device kind)",
    ),
    "cpu": Layout(
        "view",
        "wide",
        "python benchmarks/layouts.py --steps 40 --rounds 4 on an AMD EPYC (Zen 3, AVX2, fp32) under load: "
        "evaluation faster with the wide first layer, training faster with the last layer transposed; shorter runs "
        "under that load disagreed, so to be confirmed on a quiet machine (figures: benchmarks/README.md)",
        "transposed",
    ),
    "cuda": Layout("view", "bmm", "not measured on a GPU yet (benchmarks/layouts.py --device cuda there)"),
}


def device_kind(device: torch.device, flags: frozenset[str] | None = None) -> str:
    """The LAYOUTS key of a device: 'cuda', or the CPU's kind by its bf16 matrix units."""
    if device.type == "cuda":
        return "cuda"
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "cpu-amx"
    if "avx512_bf16" in flags:
        return "cpu-avx512-bf16"
    return "cpu"


def layout_for(device: torch.device) -> tuple[str, Layout]:
    """The device's kind and the stacked path's layout there."""
    kind = device_kind(device)
    return kind, LAYOUTS[kind]
