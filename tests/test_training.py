"""The one training loop (zoo.kit.train.loop): resume bit for bit, the history, the schedules, the hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoo.kit.train import loop as training
from zoo.kit.train import checkpoint


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def digits(digits_zoo):
    from zoo.kit.data import data_config, load_split
    from zoo.demos.digits import LABELS, PRETRAINED_CFG

    split = load_split(digits_zoo / "data" / "val", data_config(PRETRAINED_CFG), label_names=LABELS, num_classes=10)
    return split.images[:256].flatten(1), split.targets[:256]


def _run(digits, epochs: int, ckpt=None, state=None, stop_after: int | None = None):
    """A linear classifier with a BatchNorm, an AdamW run with warmup, a numpy draw and a stateful extra."""
    x, y = digits
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(x.shape[1]), torch.nn.Linear(x.shape[1], 10))
    counter = torch.nn.Linear(1, 1, bias=False).requires_grad_(False)  # a stateful extra the step counts with
    counter.weight.zero_()
    np.random.seed(0)

    def batches(epoch, gen):
        for idx in torch.randperm(len(y), generator=gen).split(50):
            yield idx

    def step(idx):
        noise = torch.from_numpy(np.random.normal(0, 0.01, (len(idx), x.shape[1])).astype(np.float32))
        logits = model(x[idx] + noise)
        loss = torch.nn.functional.cross_entropy(logits, y[idx])

        def after():
            counter.weight += 1
            return {"count": float(counter.weight)}

        return training.Step(loss, n=len(idx), correct=int((logits.argmax(1) == y[idx]).sum()), after=after)

    def on_epoch_end(epoch, row):
        if epoch == stop_after:
            raise Stop  # after the previous epoch's checkpoint, before this one's
        return {"seen": epoch}

    options = training.LoopOptions(epochs=epochs, lr=1e-2, steps_per_epoch=-(-len(y) // 50), weight_decay=0.01,
                                   warmup_epochs=0.5)
    history = training.train(model, step, batches, options, device=torch.device("cpu"),
                             generator=torch.Generator().manual_seed(1), checkpoint_dir=ckpt, state=state,
                             stateful={"counter": counter}, save_extra={"options": {"epochs": epochs}},
                             numpy_rng=True, on_epoch_end=on_epoch_end)
    return model, history


def test_an_interrupted_run_resumes_to_the_same_weights_and_history(tmp_path, digits):
    model, history = _run(digits, 3)
    assert [h["epoch"] for h in history] == [1, 2, 3] and [h["seen"] for h in history] == [1, 2, 3]
    assert list(history[0]) == ["epoch", "step", "loss", "train_top1", "lr", "count", "seen"]
    assert history[-1]["train_top1"] > history[0]["train_top1"] and history[-1]["loss"] < history[0]["loss"]
    steps = -(-256 // 50)
    # count after step k is k; its mean over an epoch weights each step by its batch size
    assert history[0]["count"] == pytest.approx(sum((k + 1) * min(50, 256 - 50 * k) for k in range(steps)) / 256)
    assert history[-1]["lr"] == pytest.approx(1e-2 * 0.01, rel=1e-6)  # the cosine's floor at the last step

    with pytest.raises(Stop):
        _run(digits, 3, ckpt=tmp_path, stop_after=3)
    state = checkpoint.resume_state(tmp_path / training.CHECKPOINT, {"epochs": 3}, True, what="test", key="options")
    assert state["epoch"] == 2 and len(state["history"]) == 2
    resumed, resumed_history = _run(digits, 3, ckpt=tmp_path, state=state)
    want, got = model.state_dict(), resumed.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)  # BatchNorm statistics too
    assert resumed_history == history


def test_the_annealing_schedule_is_torchs_cosine_stepped_per_step():
    params = [torch.nn.Parameter(torch.zeros(1))]
    options = training.LoopOptions(epochs=2, lr=1.0, steps_per_epoch=5, schedule="cosine-annealing", min_lr_ratio=0.0)
    opt = training.make_optimizer(params, options)
    sched = training.make_schedule(opt, options)
    ref_opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=10)
    for n in range(10):
        opt.step()
        sched.step_update(n + 1)
        ref_opt.step()
        ref.step()
        assert opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]
    assert isinstance(training.make_optimizer(params, training.LoopOptions(1, 0.1, 1, optimizer="sgd")), torch.optim.SGD)
