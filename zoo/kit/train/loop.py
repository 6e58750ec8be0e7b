"""The one training loop: fine-tuning, distillation, stitching and the demo builders all train with it.

A strategy hands :func:`train` a model (or the parameters to train), a loss step, its data and
:class:`LoopOptions`; the loop owns everything around the step:

- the optimizer (AdamW, or SGD with momentum 0.9) over the parameters that require grad;
- the learning-rate schedule, updated every step: timm's cosine with linear warmup
  (``schedule="cosine"``), torch's ``CosineAnnealingLR`` (``"cosine-annealing"``, which the
  demo zoos were built with), or none (``"constant"``, the linear probe's);
- AMP: the loss goes through the grad scaler (``zoo.device.grad_scaler``: on with CUDA, a
  pass-through on the CPU); the step runs its own forward under ``zoo.device.autocast``, so it
  decides what stays in float32;
- DistributedDataParallel under torchrun (:func:`ddp`), with the per-epoch tallies summed over
  the processes and rank 0 alone writing checkpoints;
- a checkpoint after every epoch (``zoo.kit.train.checkpoint``: model, optimizer, scheduler, scaler, the
  data-order generator, torch's RNG and optionally numpy's, plus extra stateful objects) and the
  resume from one, which ends with the weights of a run never interrupted;
- a progress bar per epoch with the running loss and top-1, a history row per epoch, a log line,
  and an ``on_epoch_end`` hook (per-epoch evaluation).

The loop draws no random numbers itself: the data order comes from the ``generator`` the strategy
passes (and the loop checkpoints), so what a strategy seeded stays as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

from zoo.kit.train import checkpoint

CHECKPOINT = "checkpoint.pt"


@dataclass
class LoopOptions:
    epochs: int
    lr: float
    steps_per_epoch: int  # optimizer steps in one epoch (the schedule's unit)
    weight_decay: float = 0.0
    optimizer: Literal["adamw", "sgd"] = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    momentum: float = 0.9  # SGD
    schedule: Literal["cosine", "cosine-annealing", "constant"] = "cosine"
    warmup_epochs: float = 0.0  # cosine: linear warmup from lr·min_lr_ratio, in epochs
    min_lr_ratio: float = 0.01  # the schedule's floor and warmup start, as a fraction of lr
    amp: bool = True  # the grad scaler (CUDA only; the CPU trains in float32 whatever this says)
    freeze_bn: bool = False  # BatchNorm running statistics kept while training (scale and shift still learn)
    # checkpoints hold only the parameters that require grad (the rest is the start's, re-made on resume: an
    # adapter over a frozen base) — with freeze_bn, so that no buffer changes either
    checkpoint_trainable: bool = False
    label: str = "train"  # the progress bar's: "LABEL epoch 2/5 · loss … · top-1 …"
    top1_note: str = ""  # the log line's: "train top-1{note}", e.g. " (labels)"
    history_tag: dict = field(default_factory=dict)  # leading fields of every history row, e.g. {"phase": "ft"}


@dataclass
class Step:
    """What a loss step returns (a bare loss tensor stands for ``Step(loss)`` with n = 1).

    ``n``: the samples this process trained on (the weight of its loss in the epoch's mean);
    ``correct``: how many of them were classified right (the running top-1); ``extra``: more
    per-sample means for the history (name → value, weighted by ``n``); ``after``: run once the
    optimizer has stepped (e.g. an adversary's own update); it may return more ``extra`` values.
    """

    loss: Any
    n: int = 1
    correct: int | None = None
    extra: dict[str, float] = field(default_factory=dict)
    after: Callable[[], dict[str, float] | None] | None = None


def ddp(module):
    """``module`` in DistributedDataParallel under torchrun (more than one process); as it is otherwise."""
    if _world()[1] <= 1:
        return module
    import torch

    return torch.nn.parallel.DistributedDataParallel(module)


def _world() -> tuple[int, int]:
    """(rank, world size) of the process group torchrun set up (``zoo.distributed.setup``); (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def share(*tensors):
    """This process's share of a global batch under torchrun (contiguous chunks, by rank), so that N processes
    take the batch one process would; the tensors themselves with one process. None when the batch has fewer
    items than processes (the same on every rank: skip the batch)."""
    rank, world = _world()
    if world <= 1:
        return tensors
    n = len(tensors[0])
    if n < world:
        return None
    import torch

    mine = torch.arange(n).chunk(world)[rank]
    return tuple(t[mine.to(t.device)] for t in tensors)


def unwrap(module):
    """The module inside a DistributedDataParallel wrapper (or ``module`` itself)."""
    return getattr(module, "module", module)


def train(model, step: Callable[[Any], Step | Any | None], data: Callable[[int, Any], Iterable], options: LoopOptions,
          *, device, generator, params=None, checkpoint_dir: Path | None = None, state: dict | None = None,
          stateful: dict[str, Any] | None = None, save_extra: dict | None = None, numpy_rng: bool = False,
          history: list[dict] | None = None, on_epoch_end: Callable[[int, dict], dict | None] | None = None,
          progress: Any = None, log: Callable[[str], None] | None = None) -> list[dict]:
    """Train ``model`` for ``options.epochs``; returns the history (one row per epoch, after ``history``).

    ``data(epoch, generator)`` gives one epoch's batches (drawing its order from ``generator``);
    ``step(batch)`` computes the loss of one (a :class:`Step`, a bare loss, or None to skip the
    batch). ``model`` may be wrapped in :func:`ddp`; checkpoints hold the module inside. ``params``:
    what the optimizer trains (default: the model's parameters that require grad).

    ``checkpoint_dir``: write ``checkpoint.pt`` there after every epoch (rank 0), with ``save_extra``
    (settings, ...), each ``stateful`` object's ``state_dict()`` under its name, and numpy's global
    RNG when ``numpy_rng``. ``state``: such a checkpoint (``zoo.checkpoint.resume_state``) to continue.
    ``on_epoch_end(epoch, row)``: after each epoch (1-based), before the checkpoint; what it returns
    joins the history row.
    """
    import torch

    from zoo.kit._infra import distributed
    from zoo.kit.train.device import amp_step, grad_scaler
    from zoo.kit._infra.progress import Silent

    progress = progress or Silent()
    log = log or (lambda message: None)
    stateful = stateful or {}
    rank, world = _world()
    module = unwrap(model)
    params = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    opt = make_optimizer(params, options)
    sched = make_schedule(opt, options)
    scaler = grad_scaler(device) if options.amp else torch.amp.GradScaler("cuda", enabled=False)  # off: a pass-through
    history = list(history or [])
    only = {name for name, p in module.named_parameters() if p.requires_grad} \
        if options.checkpoint_trainable else None
    start = 0
    if state is not None:
        start = checkpoint.restore_training(state, module, opt, sched, scaler, generator, only=only)
        if numpy_rng:
            checkpoint.set_numpy_state(state["numpy_rng"])
        for name, obj in stateful.items():
            obj.load_state_dict(state[name])
        history = list(state["history"])
        log(f"resuming from epoch {start} of {options.epochs} ({checkpoint_dir})")

    spe, epochs, label = options.steps_per_epoch, options.epochs, options.label
    n_step = start * spe
    for epoch in range(start, epochs):
        model.train()
        if options.freeze_bn:
            from zoo.kit.train.batchnorm import freeze_bn_stats

            freeze_bn_stats(model)
        task = progress.task(f"{label} epoch {epoch + 1}/{epochs}", total=spe)
        sums = torch.zeros(3, dtype=torch.float64)  # loss·n, correct, n
        extra_names: list[str] = []
        extra_sums: list[float] = []
        for batch in data(epoch, generator):
            out = step(batch)
            if out is None:  # a batch the step skips (e.g. too small to share among the processes)
                task.advance()
                continue
            if not isinstance(out, Step):
                out = Step(out)
            n_step = amp_step(out.loss, opt, scaler, sched, n_step)
            extra = dict(out.extra)
            if out.after is not None:
                extra.update(out.after() or {})
            for name, value in extra.items():
                if name not in extra_names:
                    extra_names.append(name)
                    extra_sums.append(0.0)
                extra_sums[extra_names.index(name)] += value * out.n
            sums[0] += out.loss.item() * out.n
            sums[1] += out.correct if out.correct is not None else 0
            sums[2] += out.n
            task.describe(f"{label} epoch {epoch + 1}/{epochs} · loss {sums[0] / sums[2]:.4f} · "
                          f"top-1 {sums[1] / sums[2]:.3f}")
            task.advance()
        task.close()
        if world > 1:
            import torch.distributed as dist

            # every process keeps the same extras (the same step code), so one tensor sums them all
            # on the device: NCCL (torchrun on GPUs) reduces CUDA tensors only; gloo takes either
            sums = torch.cat([sums, torch.tensor(extra_sums, dtype=torch.float64)]).to(device)
            dist.all_reduce(sums)
            sums = sums.cpu()
            extra_sums, sums = sums[3:].tolist(), sums[:3]
        n = max(float(sums[2]), 1.0)
        row = {**options.history_tag, "epoch": epoch + 1, "step": n_step, "loss": float(sums[0] / n),
               "train_top1": float(sums[1] / n), "lr": opt.param_groups[0]["lr"],
               **{name: s / n for name, s in zip(extra_names, extra_sums)}}
        if on_epoch_end is not None:
            row.update(on_epoch_end(epoch + 1, row) or {})
        history.append(row)
        log(f"epoch {epoch + 1}/{epochs}: loss {row['loss']:.4f}, train top-1{options.top1_note} "
            f"{row['train_top1']:.4f}")
        if checkpoint_dir is not None and rank == 0:
            checkpoint.save(Path(checkpoint_dir) / CHECKPOINT, checkpoint.training_state(
                epoch + 1, module, opt, sched, scaler, generator, only=only, history=history, **(save_extra or {}),
                **({"numpy_rng": checkpoint.numpy_state()} if numpy_rng else {}),
                **{name: obj.state_dict() for name, obj in stateful.items()}))
        distributed.barrier()
    return history


def make_optimizer(params, options: LoopOptions):
    import torch

    if options.optimizer == "sgd":
        return torch.optim.SGD(params, lr=options.lr, momentum=options.momentum, weight_decay=options.weight_decay)
    return torch.optim.AdamW(params, lr=options.lr, betas=options.betas, weight_decay=options.weight_decay)


def make_schedule(opt, options: LoopOptions):
    """A per-step schedule with timm's interface (``step_update(n)``, ``state_dict``, ``load_state_dict``)."""
    total = max(1, options.steps_per_epoch * options.epochs)
    floor = options.lr * options.min_lr_ratio
    if options.schedule == "constant":
        return _Constant()
    if options.schedule == "cosine-annealing":
        import torch

        return _PerStep(torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=floor))
    from timm.scheduler import CosineLRScheduler

    return CosineLRScheduler(opt, t_initial=total, warmup_t=int(options.warmup_epochs * options.steps_per_epoch),
                             warmup_lr_init=floor, lr_min=floor, t_in_epochs=False)


class _Constant:
    """No schedule: the learning rate stays ``lr`` (a linear probe on cached features)."""

    def step_update(self, num_updates: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class _PerStep:
    """A torch LR scheduler stepped once per optimizer step, behind timm's ``step_update``."""

    def __init__(self, sched):
        self.sched = sched

    def step_update(self, num_updates: int) -> None:
        self.sched.step()

    def state_dict(self) -> dict:
        return self.sched.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sched.load_state_dict(state)
