from __future__ import annotations

import os
from pathlib import Path

# cuBLAS picks the same reduction order every time only with a fixed workspace; it must be set before CUDA starts
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
os.chdir(ROOT)  # profiles and notebooks are found from the project root

import memlib  # noqa: E402
from memlib.data.dataset import Dataset  # noqa: E402

# Devices: the engine's equivalence tests take the `device` fixture and run on every device listed here, always
# on the CPU and on CUDA when torch sees a GPU (otherwise reported as skipped, with the reason). Each case carries
# the `device` mark, so `pytest -m device` selects them; MEMLIB_TEST_DEVICES=cuda (a comma list) keeps only those
# devices (benchmarks/gpu_check.py runs them so on the device it checks).
#
# Tolerances: every fp32 bound in these tests is the CPU's and is meant to hold on CUDA as written, because the
# fixture below makes CUDA's arithmetic as repeatable as the CPU's for the duration of a CUDA case: TF32 off in
# cuBLAS matmuls and cuDNN convolutions (the latter on by default in PyTorch), so that fp32 means fp32; cuDNN
# deterministic with its autotuner off, so that the engine and the reference loop run the same convolution
# algorithm on the same shapes (the autotuner may time two algorithms differently and pick another in each);
# and torch.use_deterministic_algorithms (warn_only: an op with no deterministic kernel warns rather than fails).
# What is left is the arithmetic that differs by design, which sets each bound (max absolute weight difference;
# the largest difference measured on the CPU, torch 2.14.1, 1 thread, in brackets):
# - 2e-6, a group of one against the plain torch loop (test_a_group_of_one_...): the same module and kernels,
#   so only the optimizer's rounding differs (fused addcmul against torch.optim's separate ops, an ulp or so
#   a step) [1.2e-7 for the MLPs over 2 epochs, 4.2e-7 for the CNN over 14 steps: about 5 times the largest].
# - 1e-5, a stacked or vmap group against each model alone (test_stacked_group_..., the vmap BatchNorm tests):
#   batched products (bmm, vmap's convolutions and BatchNorm statistics) sum in another order than one model's
#   [1.8e-7 for the MLP groups, 8.3e-7 for the vmap CNN with BatchNorm over 2 epochs: about 12 times].
# - 1e-4 on test probabilities (a run in its group against alone: weights 1e-6 apart move them far less), and
#   1e-3 / 2e-3 on the signals, stored as float16 (a last bit of a value of order 1 to 2).
# The bf16 working-copy test stays exact on CUDA (the same bf16 kernels on the same inputs), and the store stays
# bit-identical whatever the layout (the same group, the same kernels).
# On CUDA these are expectations, not yet measured: no GPU has run them yet.
DEVICE_ENV = "MEMLIB_TEST_DEVICES"
CUDA_SKIP = "no CUDA device: torch.cuda.is_available() is False here (the CUDA cases run where there is a GPU)"


def _device_params() -> list:
    wanted = [d.strip() for d in os.environ.get(DEVICE_ENV, "cpu,cuda").split(",")]
    params = []
    for name in ("cpu", "cuda"):
        if name in wanted:
            marks = [pytest.mark.device]
            if name == "cuda" and not torch.cuda.is_available():
                marks.append(pytest.mark.skip(reason=CUDA_SKIP))
            params.append(pytest.param(name, marks=marks, id=name))
    return params


DEVICES = _device_params()


def pytest_configure(config) -> None:
    # registered here rather than in pyproject.toml, whose every change marks .venv out of date for make
    config.addinivalue_line("markers", "device: parametrized over the devices (conftest.DEVICES: cpu, cuda)")


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Each device the engine runs on ("cpu", "cuda"); on CUDA with TF32 off and cuDNN deterministic for the test."""
    if request.param != "cuda":
        yield request.param
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (matmul.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark)
    algorithms = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    matmul.allow_tf32 = cudnn.allow_tf32 = False
    cudnn.deterministic, cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield request.param
    finally:
        matmul.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark = saved
        torch.use_deterministic_algorithms(algorithms[0], warn_only=algorithms[1])


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return memlib.load_dataset(memlib.load_profile("smoke"))


@pytest.fixture
def smoke(tmp_path) -> memlib.Config:
    """The smoke profile, writing under a temporary results_dir."""
    return memlib.load_profile("smoke").replace(results_dir=str(tmp_path / "results"))


def tiny_dataset(n_train: int = 40, n_test: int = 15, classes: int = 3, seed: int = 0) -> Dataset:
    """Random 1x4x4 images whose pixels are multiples of 1/8, so squared distances are exact."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 9, size=(n_train + n_test, 1, 4, 4)).astype(np.float32) / 8
    y = rng.integers(0, classes, size=n_train + n_test).astype(np.int64)
    return Dataset(
        name="tiny",
        x_train=x[:n_train],
        y_train=y[:n_train],
        x_test=x[n_train:],
        y_test=y[n_train:],
        train_index=np.arange(n_train),
        test_index=np.arange(n_test),
        classes=[str(c) for c in range(classes)],
    )


def snapshot(path: Path) -> dict[str, tuple[int, int]]:
    """Every file under `path` with its size and mtime, to show that nothing was written."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file()}
