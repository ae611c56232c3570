"""Host work off the device's path: what the training loop and evaluation read back from the device, and when
the generators draw (issue 24). On a GPU, each read-back (`.item()`, `.cpu()`, `.tolist()`, a tensor used as a
Python bool or int, a boolean-mask index) and each blocking copy from the host makes the host wait for the
device, so the host can no longer queue the next steps while the device works. The CPU has no such wait, so
these tests count the calls that would make it: they run wherever the suite runs."""

from __future__ import annotations

import contextlib
from collections import Counter

import numpy as np
import pytest
import torch

import memlib.train.engine as engine
from memlib.train.design import subset_jobs
from memlib.train.engine import NeuralLearner, StackedMLP, batch_bounds, crop_flip_draws, evaluate

READ_BACKS = ("item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def counted_syncs():
    """Count, by kind, every call that on a GPU reads a value back from the device or copies from the host."""
    counts: Counter = Counter()
    saved = {name: getattr(torch.Tensor, name) for name in (*READ_BACKS, "__getitem__", "__setitem__", "to")}

    def reading(name):
        def call(self, *args, **kwargs):
            counts[name] += 1
            return saved[name](self, *args, **kwargs)

        return call

    def masked(name):  # x[mask] with a boolean tensor: the result's size is read back from the device
        def call(self, index, *rest):
            parts = index if isinstance(index, tuple) else (index,)
            if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
                counts[f"boolean mask {name}"] += 1
            return saved[name](self, index, *rest)

        return call

    def to(self, *args, **kwargs):  # a host tensor sent to a device: a blocking copy unless non_blocking
        target = kwargs.get("device", args[0] if args else None)
        if self.device.type == "cpu" and isinstance(target, (str, torch.device)) and not kwargs.get("non_blocking"):
            counts["to(device)"] += 1
        return saved["to"](self, *args, **kwargs)

    try:
        for name in READ_BACKS:
            setattr(torch.Tensor, name, reading(name))
        torch.Tensor.__getitem__, torch.Tensor.__setitem__ = masked("__getitem__"), masked("__setitem__")
        torch.Tensor.to = to
        yield counts
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


@pytest.fixture
def recipe(smoke):
    # 400-example subsets in batches of 32: 13 steps an epoch for every run, the last one short
    return smoke.replace(device="cpu", precision="fp32", batch_size=32, epochs=2, min_out=5, num_models=20)


def _group(cfg, digits, k=4):
    learner = NeuralLearner(cfg, digits)
    runs = [(np.flatnonzero(j.mask)[:400], j.seed) for j in subset_jobs(cfg, digits.n_train, range(k))]
    return learner, runs


def _train_counts(learner, runs, steps: int, signals: bool) -> Counter:
    cfg = learner.cfg
    models = StackedMLP([learner.make_model(seed) for _, seed in runs], layout=learner.layout)
    generators = [torch.Generator().manual_seed(seed) for _, seed in runs]
    subsets = [torch.as_tensor(idx) for idx, _ in runs]
    rec = engine.SignalRecorder(len(runs), len(learner.train), cfg.epochs, learner.device) if signals else None
    with counted_syncs() as counts:
        engine.train_group(models, learner.train, subsets, generators, cfg, learner.precision, steps, rec)
    return counts


@pytest.mark.parametrize("signals", [False, True])
def test_a_training_step_of_the_stacked_path_reads_nothing_back(recipe, digits, signals):
    """Faults caught: any per-step read-back or blocking copy in train_group (e.g. the per-epoch `sizes.cpu()`
    moved into the step loop, a `float(loss)` for a progress bar, per-step augmentation draws sent one by one).

    2 steps and 10 steps of the first epoch (every batch full, so no step is padded) must count the same, and
    all they count is the epoch's shuffles of the whole group, sent to the device in one copy. Over whole
    epochs, the signal recorder adds its boolean masks of the padded last step and of the epoch's end
    (memlib.train.signals: a few a epoch, never one a step)."""
    learner, runs = _group(recipe, digits)
    assert min(len(batch_bounds(len(idx), recipe.batch_size)) for idx, _ in runs) > 10
    few, many = _train_counts(learner, runs, 2, signals), _train_counts(learner, runs, 10, signals)
    assert few == many == Counter({"to(device)": 1}), (few, many)
    whole = _train_counts(learner, runs, None, signals)
    assert whole["to(device)"] == recipe.epochs, whole
    assert sum(whole.values()) - whole["to(device)"] <= (4 * recipe.epochs if signals else 0), whole


def test_augmentation_draws_reach_the_device_once_an_epoch(recipe, digits):
    """Fault caught: random_crop_flip's three draws copied to the device for each model at each step."""
    cfg = recipe.replace(augment="flip_crop")
    learner, runs = _group(cfg, digits)
    few, many = _train_counts(learner, runs, 2, False), _train_counts(learner, runs, 10, False)
    assert few == many == Counter({"to(device)": 2}), (few, many)  # the epoch's shuffles, and its draws


def test_evaluation_copies_each_result_once_whatever_the_batches(recipe, digits):
    """Fault caught: evaluate() copying each batch's results to the host (4 waits per batch on a GPU)."""
    learner, runs = _group(recipe, digits)
    models = learner.fit_group(runs, steps=2)

    def copies(rows: int) -> Counter:
        with counted_syncs() as counts:
            evaluate(models, learner.train, learner.precision, len(runs), rows=rows, topk=3)
        return counts

    one_batch, many_batches = copies(4 * len(learner.train)), copies(4 * 256)  # 1 batch, then 4 or more
    assert len(learner.train) > 3 * 256
    assert one_batch == many_batches, (one_batch, many_batches)
    assert one_batch["cpu"] == 4  # correctness, probability, top-k probabilities and classes


@pytest.mark.parametrize("ahead", [False, True], ids=["inline", "drawn-ahead"])
@pytest.mark.parametrize("augment", ["none", "flip_crop"])
def test_an_epochs_draws_up_front_keep_each_generators_order(recipe, digits, monkeypatch, augment, ahead):
    """The batches (and augmentation draws) of every step are those of the order in which each step drew its
    own: per generator, an epoch's shuffle, then each step's flips and offsets in turn, whether the epoch's
    draws are made as it begins or in a thread during the epoch before (as on a GPU). Fault caught: the draws
    made in another order (augmentation before the shuffle, one model's draws from another's generator), which
    would change every model's results."""
    monkeypatch.setattr(engine, "PREFETCH_DRAWS", ("cpu", "cuda") if ahead else ())
    cfg = recipe.replace(augment=augment)
    learner, runs = _group(cfg, digits)
    seen = []
    inputs = engine._inputs

    def spy(train, idx, aug):
        seen.append((idx.clone(), None if aug is None else aug.clone()))
        return inputs(train, idx, aug)

    monkeypatch.setattr(engine, "_inputs", spy)
    learner.fit_group(runs)
    generators = [torch.Generator().manual_seed(seed) for _, seed in runs]
    bounds = [batch_bounds(len(idx), cfg.batch_size) for idx, _ in runs]
    step = 0
    for _ in range(cfg.epochs):  # the order before: at each epoch a shuffle per model, then per step its draws
        perms = [torch.as_tensor(idx)[torch.randperm(len(idx), generator=g)] for (idx, _), g in zip(runs, generators)]
        for s in range(len(bounds[0])):
            idx, aug = seen[step]
            for k, g in enumerate(generators):
                b, e = bounds[k][s]
                assert torch.equal(idx[k, : e - b], perms[k][b:e]), (step, k)
                if augment == "flip_crop":
                    flip, dy, dx = crop_flip_draws(e - b, g)
                    assert torch.equal(aug[0, k, : e - b].bool(), flip) and torch.equal(aug[1, k, : e - b], dy.byte())
                    assert torch.equal(aug[2, k, : e - b], dx.byte()), (step, k)
                    assert (aug[0, k, e - b :] == 0).all() and (aug[1:, k, e - b :] == engine.AUG_PAD).all()
            step += 1
    assert step == len(seen)
    for (_, seed), g in zip(runs, generators):  # and each generator drew exactly as much
        assert torch.equal(g.get_state(), _state_after_training(learner, runs, seed, cfg)), seed


def _state_after_training(learner, runs, seed, cfg) -> torch.Tensor:
    """The state of run `seed`'s generator after training its group (train_group draws from the given ones)."""
    generators = [torch.Generator().manual_seed(s) for _, s in runs]
    models = StackedMLP([learner.make_model(s) for _, s in runs], layout=learner.layout)
    subsets = [torch.as_tensor(idx) for idx, _ in runs]
    engine.train_group(models, learner.train, subsets, generators, cfg, learner.precision)
    return generators[[s for _, s in runs].index(seed)].get_state()


def test_no_training_step_waits_for_the_gpu(recipe, digits, device):
    """On CUDA, with torch's sync debug mode: 2 and 10 steps of the first epoch make the same synchronizing calls
    (those of the group's set-up). Fault caught: a step that waits for the GPU. Not yet run on a GPU (none lent
    so far); on the CPU the counting tests above stand in for it."""
    if device != "cuda":
        pytest.skip("CUDA's sync debug mode: on the CPU, test_a_training_step_of_the_stacked_path_reads_nothing_back")
    import warnings

    learner, runs = _group(recipe.replace(device=device), digits)

    def syncs(steps: int) -> int:
        models = StackedMLP([learner.make_model(seed) for _, seed in runs], layout=learner.layout)
        generators = [torch.Generator().manual_seed(seed) for _, seed in runs]
        subsets = [torch.as_tensor(idx, device=device) for idx, _ in runs]
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                engine.train_group(models, learner.train, subsets, generators, learner.cfg, learner.precision, steps)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchronizing" in str(w.message) for w in caught)

    assert syncs(2) == syncs(10)


def test_the_phase_hook_ends_every_phase_of_every_step_in_order_and_changes_nothing(recipe, digits):
    """train_group calls its `phase` hook once for setup, then with each of PHASES per step, in order (what
    benchmarks/roofline.py times), and the weights it trains are those of a run without the hook. Faults caught:
    a phase that is never ended (its time would be counted in the next), or ended twice, or out of order."""
    cfg = recipe.replace(grad_clip=1.0)
    learner, runs = _group(cfg, digits)
    trained = []
    for hook in (None, []):
        models = StackedMLP([learner.make_model(seed) for _, seed in runs], layout=learner.layout)
        generators = [torch.Generator().manual_seed(seed) for _, seed in runs]
        subsets = [torch.as_tensor(idx) for idx, _ in runs]
        rec = engine.SignalRecorder(len(runs), len(learner.train), cfg.epochs, learner.device)
        hooked = {} if hook is None else {"phase": hook.append}
        engine.train_group(models, learner.train, subsets, generators, cfg, learner.precision, 15, rec, **hooked)
        trained.append(models.params)
    assert hook == ["setup", *engine.PHASES * 15]
    for a, b in zip(*trained):
        assert torch.equal(a, b)
