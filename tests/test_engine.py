"""The engine: a stacked group trains each model as it would train alone, with its own mask and seed.

"Alone" is `_torch_reference` below: one model with torch.optim and torch's schedulers, the loop memlib's single
path ran before every path went through the engine's one loop (`train_group`), where one model is a group of one.
The equivalence tests take conftest's `device` fixture: they run on the CPU, and on CUDA where there is a GPU
(with TF32 off; conftest says which tolerances are meant to hold there).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import memlib
from memlib.runs.group import job_groups
from memlib.seeds import derive_seed
from memlib.train.design import group_rows, subset_jobs, subset_masks
from memlib.train.engine import (
    UPDATES,
    DeviceData,
    NeuralLearner,
    StackedOptimizer,
    batch_bounds,
    choose_path,
    device_data,
    mlp_layers,
    random_crop_flip,
    resolve_precision,
    schedule_table,
)
from memlib.train.signals import SignalRecorder


def _runs(cfg, data, rows):
    return [(np.flatnonzero(j.mask), j.seed) for j in subset_jobs(cfg, data.n_train, rows)]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _torch_optimizer(cfg, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    nesterov = cfg.nesterov and cfg.momentum > 0  # torch refuses Nesterov without momentum
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov, weight_decay=cfg.weight_decay)


def _torch_scheduler(cfg, opt: torch.optim.Optimizer, total_steps: int):
    if cfg.schedule == "onecycle" and total_steps >= 3:
        pct_start = max(0.25, 2 / total_steps)
        cycle = cfg.optimizer == "sgd"
        return torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps, pct_start=pct_start, cycle_momentum=cycle)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total_steps)))
    return None


def _torch_reference(learner: NeuralLearner, idx, seed: int, steps=None, recorder=None) -> torch.nn.Module:
    """The reference: one model trained by a plain PyTorch loop (torch.optim, torch's schedulers, mean loss).

    The same draws as the engine (one generator per run: a shuffle per epoch, then each batch's augmentation),
    the same batches (`batch_bounds`), and on a GPU the same channels-last layout.
    """
    cfg, train, dev = learner.cfg, learner.train, learner.device
    model, generator = learner.make_model(seed), torch.Generator().manual_seed(seed)
    sub = torch.as_tensor(np.asarray(idx), device=dev)
    x, y = train.images(sub), train.y[sub]
    if dev.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    bounds = batch_bounds(len(x), cfg.batch_size)
    opt = _torch_optimizer(cfg, model.parameters())
    sched = _torch_scheduler(cfg, opt, cfg.epochs * len(bounds))
    model.train()
    done = 0
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(x), generator=generator).to(dev)
        for s, e in bounds:
            if steps is not None and done >= steps:
                return model
            batch = perm[s:e]
            xb = random_crop_flip(x[batch], generator) if cfg.augment == "flip_crop" else x[batch]
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=learner.precision == "bf16"):
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), y[batch], label_smoothing=cfg.label_smoothing)
            if recorder is not None:
                recorder.update(epoch, sub[batch][None], logits[None], y[batch][None])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            if sched is not None:
                sched.step()
            done += 1
    return model


def _alone(cfg, data, runs, steps=None) -> list[torch.nn.Module]:
    learner = NeuralLearner(cfg, data, path="single")
    return [_torch_reference(learner, idx, seed, steps) for idx, seed in runs]


@pytest.fixture
def fp32(smoke):
    # balanced masks give the runs of a group different subset sizes, hence different numbers of batches
    return smoke.replace(device="cpu", precision="fp32", mask_design="balanced", num_models=20, min_out=5)


@pytest.mark.parametrize(
    "optimizer,lr,augment,clip",
    # clip: a norm that some models' gradients pass and others' do not at some steps; fails with no clip, and with
    # one norm taken over the whole group in place of each model's own
    [
        ("sgd", 0.1, "none", None),
        ("sgd", 0.1, "flip_crop", None),
        ("adam", 1e-3, "none", None),
        ("sgd", 0.4, "none", 1.5),
    ],
)
@pytest.mark.parametrize("path", ["stacked", "vmap"])
def test_stacked_group_takes_the_steps_each_model_takes_alone(fp32, digits, optimizer, lr, augment, clip, path, device):
    cfg = fp32.replace(optimizer=optimizer, lr=lr, augment=augment, grad_clip=clip, epochs=2, device=device)
    runs = _runs(cfg, digits, range(4))
    sizes = {len(batch_bounds(len(idx), cfg.batch_size)) for idx, _ in runs}
    assert len(sizes) > 1, "the test needs runs with different numbers of batches per epoch"
    torch.set_num_threads(1)
    for steps in (3, None):  # a few steps, and two whole epochs (the short runs sit out steps)
        group = NeuralLearner(cfg, digits, path=path).fit_group(runs, steps)
        alone = _alone(cfg, digits, runs, steps)
        for k, model in enumerate(alone):
            assert _max_diff(group.state_dicts()[k], model.state_dict()) < 1e-5, (steps, k)
        moved = _max_diff(group.state_dicts()[0], NeuralLearner(cfg, digits).make_model(runs[0][1]).state_dict())
        assert moved > 1e-4, "training changed the weights"


GROUP_OF_ONE = {
    "sgd": {},  # smoke's recipe: SGD, Nesterov momentum, weight decay, one-cycle LR and momentum
    "adam": dict(optimizer="adam", lr=1e-3, schedule="cosine", label_smoothing=0.1),
    "no-momentum": dict(momentum=0.0),  # Nesterov off whatever the flag says (one-cycle still cycles momentum)
    "cnn": dict(arch="mem_cnn", width=8, augment="flip_crop"),  # BatchNorm, augmentation draws
    "clip": dict(lr=0.4, grad_clip=0.5),  # torch.nn.utils.clip_grad_norm_ before each step
}


@pytest.mark.parametrize("case", GROUP_OF_ONE)
def test_a_group_of_one_takes_the_steps_of_a_plain_torch_loop(smoke, digits, case, device):
    cfg = smoke.replace(device=device, precision="fp32", epochs=2, **GROUP_OF_ONE[case])
    # whole epochs, except the CNN: a ReLU whose input sits at 0 turns rounding differences into 1e-4 jumps
    # after a dozen steps or so; 14 steps still cover its first epoch, folded last batch included
    steps = 14 if case == "cnn" else None
    torch.set_num_threads(1)
    learner = NeuralLearner(cfg, digits, path="single")
    rng = np.random.default_rng(0)
    for size in (13 * 64 + 1, 13 * 64 + 20):  # a last batch of one folded into the previous; a short last batch
        idx = np.sort(rng.choice(digits.n_train, size, replace=False))
        signals = []
        ours = learner.fit_group([(idx, 7)], steps, signals)[0]
        recorder = SignalRecorder(1, digits.n_train, cfg.epochs, learner.device)
        ref = _torch_reference(learner, idx, 7, steps, recorder)
        assert _max_diff(ours.state_dict(), ref.state_dict()) < 2e-6, (case, size)
        assert _max_diff(ref.state_dict(), learner.make_model(7).state_dict()) > 1e-2, "training changed the weights"
        for name, theirs in recorder.result()[0].items():
            if theirs.dtype == np.uint8:
                np.testing.assert_array_equal(signals[0][name], theirs, name)
            else:  # float16: a value's last bit may differ
                np.testing.assert_allclose(
                    signals[0][name].astype(float), theirs.astype(float), atol=1e-3, err_msg=name
                )


def test_vmap_group_keeps_batchnorm_statistics_per_model(smoke, digits, device):
    cfg = smoke.replace(device=device, precision="fp32", arch="mem_cnn", width=4, epochs=1, augment="flip_crop")
    runs = _runs(cfg, digits, range(3))
    group = NeuralLearner(cfg, digits, path="vmap").fit_group(runs, steps=3)
    alone = _alone(cfg, digits, runs, steps=3)
    for k, model in enumerate(alone):
        sd = group.state_dicts()[k]
        assert _max_diff(sd, model.state_dict()) < 1e-5
    assert not torch.equal(group.state_dicts()[0]["0.1.running_mean"], group.state_dicts()[1]["0.1.running_mean"])


def test_batchnorm_in_a_vmap_group_never_sees_padding(fp32, digits, device):
    """Runs of different subset sizes: a short last batch, padded in a group, would put copies of example 0 into
    BatchNorm's statistics. Each model must still take the steps it takes alone, over whole epochs."""
    cfg = fp32.replace(arch="mem_cnn", width=4, epochs=2, device=device)  # the first epoch's padded batch trains on
    runs = _runs(cfg, digits, range(4))
    assert len({len(idx) for idx, _ in runs}) > 1, "the test needs runs with different subset sizes"
    torch.set_num_threads(1)
    signals: list = []
    group = NeuralLearner(cfg, digits, path="vmap").fit_group(runs, None, signals)
    alone = _alone(cfg, digits, runs)
    diffs = [_max_diff(group.state_dicts()[k], model.state_dict()) for k, model in enumerate(alone)]
    assert max(diffs) < 1e-5, diffs  # before: weights 0.01 to 0.2 off
    assert len(signals) == len(runs)
    for k, (idx, seed) in enumerate(runs):  # each run's signals are its own, in the order of the runs
        one: list = []
        NeuralLearner(cfg, digits, path="vmap").fit_group([(idx, seed)], None, one)
        for name, values in one[0].items():
            np.testing.assert_allclose(signals[k][name].astype(float), values.astype(float), atol=2e-3, err_msg=name)


def test_group_gives_each_run_the_mask_and_seed_of_its_index(smoke, digits, tmp_path, device):
    cfg = smoke.replace(results_dir=str(tmp_path), group_size=4, num_models=12, min_out=2)
    jobs = subset_jobs(cfg, digits.n_train, range(12))
    masks = subset_masks(cfg, digits.n_train)
    for t, job in enumerate(jobs):
        np.testing.assert_array_equal(job.mask, masks[t])
        assert job.seed == derive_seed(cfg.seed, 1, t)
    # groups are rows [gK, (g+1)K), whatever subset of rows is pending
    assert [[j.row for j in g] for g in job_groups(jobs, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert group_rows([9, 2, 3, 11], 4) == [[2, 3], [9, 11]]
    # a run's outcome is the same whether it trains in its group or alone (fp32, same thread count)
    torch.set_num_threads(1)
    fp = cfg.replace(device=device, precision="fp32", epochs=2)
    runs = [(np.flatnonzero(j.mask), j.seed) for j in jobs[4:8]]
    together = NeuralLearner(fp, digits).fit_eval_group(runs)
    alone = NeuralLearner(fp, digits).fit_eval_group([runs[2]])[0]
    np.testing.assert_allclose(together[2].test_prob, alone.test_prob, atol=1e-4)


def test_stage_one_store_is_identical_for_any_worker_layout(smoke, digits, tmp_path, device):
    cfg = smoke.replace(device=device, num_models=12, min_out=2, group_size=4, epochs=2, mask_design="balanced")
    a = memlib.train_subsets(cfg.replace(results_dir=str(tmp_path / "a")), digits)
    # the same rows, trained group by group in two separate calls (as two machines would)
    b_cfg = cfg.replace(results_dir=str(tmp_path / "b"))
    memlib.train_subsets(b_cfg, digits, rows=range(8, 12))
    b = memlib.train_subsets(b_cfg, digits, rows=range(0, 8))
    for name in ("masks", "train_correct", "test_correct", "train_prob", "test_prob", "completed"):
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), name)


def test_uint8_resident_images_convert_to_the_standardized_floats(digits, device):
    import dataclasses

    as_bytes = dataclasses.replace(digits, x_train=np.rint(digits.x_train * 255).astype(np.float32) / 255)
    train, _ = device_data(as_bytes, torch.device(device), compact=True)
    plain, _ = device_data(as_bytes, torch.device(device), compact=False)
    assert train.compact and train.x.dtype == torch.uint8 and not plain.compact
    assert train.x.device.type == device and train.images(slice(0, 2)).device.type == device
    idx = torch.tensor([[0, 5, 7], [3, 3, 1]], device=device)
    torch.testing.assert_close(train.images(idx), plain.images(idx), rtol=0, atol=1e-5)
    noisy = DeviceData(digits.x_train + 1e-3, digits.y_train, 0.0, 1.0, device, compact=True)
    assert not noisy.compact, "values that are not whole multiples of 1/255 stay float"


def test_schedule_table_is_torchs_own_schedule(fp32):
    cfg = fp32.replace(schedule="onecycle")
    lrs, moms = schedule_table(cfg, 50)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=50, pct_start=0.25)
    for step in range(50):
        assert lrs[step] == opt.param_groups[0]["lr"] and moms[step] == opt.param_groups[0]["momentum"]
        opt.step()
        sched.step()
    assert lrs.max() == pytest.approx(cfg.lr, rel=1e-3) and moms.min() == pytest.approx(0.85, rel=1e-3)


def test_a_model_that_sits_out_a_step_keeps_its_weights_and_momentum(fp32, device):
    p = torch.ones(3, 2, requires_grad=True, device=device)
    opt = StackedOptimizer(fp32.replace(weight_decay=0.1), [p])
    lr, mom = torch.full((3,), 0.5, device=device), torch.full((3,), 0.9, device=device)
    opt.step([torch.ones(3, 2, device=device)], lr, mom, None)
    before, buf = p.detach().clone(), opt.state[0]["buf"].clone()
    opt.step([torch.ones(3, 2, device=device)], lr, mom, torch.tensor([True, False, True], device=device))
    assert torch.equal(p[1], before[1]) and torch.equal(opt.state[0]["buf"][1], buf[1])
    assert not torch.equal(p[0], before[0])


def test_paths_and_precision_are_chosen_per_architecture_and_device(smoke, digits):
    from memlib.train.models import build_model

    mlp = build_model(smoke, 1, 8, 10)
    cnn = build_model(smoke.replace(arch="mem_cnn"), 1, 8, 10)
    cpu = torch.device("cpu")
    assert mlp_layers(mlp) is not None and mlp_layers(cnn) is None
    assert choose_path(smoke, mlp, cpu) == "stacked" and choose_path(smoke, cnn, cpu) == "single"
    assert choose_path(smoke.replace(engine="vmap"), mlp, cpu) == "vmap"
    with pytest.raises(memlib.ConfigError, match="needs an MLP"):
        choose_path(smoke.replace(engine="stacked", arch="mem_cnn"), cnn, cpu)
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("auto", cpu) in ("bf16", "fp32")


def test_bf16_engine_learns_as_well_as_fp32(smoke, digits, device):
    cfg = smoke.replace(device=device, epochs=6, width=64)
    runs = _runs(cfg, digits, range(4))
    acc = {}
    for precision in ("fp32", "bf16"):
        outs = NeuralLearner(cfg.replace(precision=precision), digits).fit_eval_group(runs)
        acc[precision] = np.mean([o.test_correct.mean() for o in outs])
    assert acc["fp32"] > 0.85 and abs(acc["bf16"] - acc["fp32"]) < 0.03, acc


def test_bf16_working_copies_give_autocasts_exact_gradients(digits, device):
    from memlib.train.engine import StackedMLP
    from memlib.train.models import build_model

    cfg = memlib.load_profile("smoke")
    models = [build_model(cfg, 1, 8, 10).to(device) for _ in range(3)]
    working, master = StackedMLP(models, torch.bfloat16), StackedMLP(models, torch.float32)
    x, y = torch.randn(3, 16, 1, 8, 8, device=device), torch.randint(0, 10, (48,), device=device)
    loss = torch.nn.functional.cross_entropy(working(x).float().flatten(0, 1), y)
    grads = torch.autograd.grad(loss, working.leaves)
    with torch.autocast(device, dtype=torch.bfloat16):
        logits = master(x)
    ref = torch.autograd.grad(torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y), master.leaves)
    assert all(g.dtype == torch.bfloat16 for g in grads)
    for g, r in zip(grads, ref):
        assert torch.equal(g.float(), r)
    # an optimizer step updates the fp32 weights and refreshes their working copies
    before = [p.clone() for p in working.params]
    opt = StackedOptimizer(cfg.replace(precision="bf16"), working.params, working.leaves)
    opt.step(grads, torch.full((3,), 0.1, device=device), torch.full((3,), 0.9, device=device), None)
    for p, leaf, b in zip(working.params, working.leaves, before):
        assert p.dtype == torch.float32 and not torch.equal(p, b)
        assert torch.equal(leaf, p.to(torch.bfloat16))


@pytest.mark.parametrize("nesterov,weight_decay", [(False, 0.0), (True, 0.0), (True, 5e-4)])
def test_sgd_step_of_models_that_all_step_is_torchs_sgd_per_model(fp32, nesterov, weight_decay, device):
    cfg = fp32.replace(nesterov=nesterov, weight_decay=weight_decay)
    torch.manual_seed(0)
    start = torch.randn(3, 5, 4).to(device)
    ours = start.clone()
    opt = StackedOptimizer(cfg, [ours])
    refs = [start[k].clone().requires_grad_() for k in range(3)]
    sgds = [torch.optim.SGD([r], lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=weight_decay) for r in refs]
    for step in range(5):
        g = torch.randn(3, 5, 4).to(device, torch.bfloat16)  # bf16 gradients are widened as they are read
        lr = torch.tensor([0.1, 0.2, 0.05], device=device) * (1 + step)  # each model its own
        mom = torch.tensor([0.9, 0.85, 0.95], device=device)
        for k, (ref, sgd) in enumerate(zip(refs, sgds)):
            sgd.param_groups[0].update(lr=float(lr[k]), momentum=float(mom[k]))
            ref.grad = g[k].float()
            sgd.step()
        opt.step([g], lr, mom, None)
        for k, ref in enumerate(refs):
            torch.testing.assert_close(ours[k], ref.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("update", UPDATES)
@pytest.mark.parametrize("nesterov,weight_decay", [(False, 0.0), (True, 5e-4)])
def test_either_update_takes_torchs_sgd_steps_at_each_models_rates(fp32, update, nesterov, weight_decay, device):
    """The fused update (torch's fused SGD kernel, one call per set of models at the same rates) and the by-model
    one take torch.optim.SGD's steps. Catches, in the fused one: a momentum buffer not started at the first
    gradient, a model that sits a step out but steps, and a transposed gradient read as if contiguous (the kernel
    reads its tensors so: 0.15 off)."""
    cfg = fp32.replace(nesterov=nesterov, weight_decay=weight_decay)
    torch.manual_seed(0)
    start = torch.randn(3, 5, 4).to(device)
    ours = start.clone()
    opt = StackedOptimizer(cfg, [ours], update=update)
    calls = []
    fused_sgd = torch._fused_sgd_
    torch._fused_sgd_ = lambda *a, **kw: (
        calls.append("stack" if a[0][0].dim() == 3 else len(a[0])) or fused_sgd(*a, **kw)
    )
    refs = [start[k].clone().requires_grad_() for k in range(3)]
    sgds = [torch.optim.SGD([r], lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=weight_decay) for r in refs]
    try:
        for step in range(5):
            g = torch.randn(3, 4, 5).to(device).transpose(1, 2)  # a transposed gradient: not contiguous
            lrs = np.array([0.1, 0.1, 0.05 if step < 3 else 0.1]) * (1 + step)  # two models share, then all three
            moms = np.array([0.9, 0.9, 0.95 if step < 3 else 0.9])
            takes = np.array([True, step != 2, True])  # model 1 sits out step 2
            for k, (ref, sgd) in enumerate(zip(refs, sgds)):
                if takes[k]:
                    sgd.param_groups[0].update(lr=float(lrs[k]), momentum=float(moms[k]))
                    ref.grad = g[k].clone()
                    sgd.step()
            lr, mom = torch.as_tensor(lrs, dtype=torch.float32), torch.as_tensor(moms, dtype=torch.float32)
            active = None if takes.all() else torch.as_tensor(takes, device=device)
            opt.step([g.clone()], lr.to(device), mom.to(device), active, (lrs, moms, takes))
            for k, ref in enumerate(refs):
                torch.testing.assert_close(ours[k], ref.detach(), rtol=0, atol=1e-6, msg=f"step {step} model {k}")
    finally:
        torch._fused_sgd_ = fused_sgd
    # the fused kernel ran where asked: on the models of each set of rates while they differ (two with the same
    # rates in one call, then the third; the two that step in step 2 apart), on the whole stack once they agree
    assert calls == ([] if update == "by-model" else [2, 1, 2, 1, 1, 1, "stack", "stack"])
