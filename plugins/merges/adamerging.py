"""AdaMerging (Yang et al., ICLR 2024, "AdaMerging: Adaptive Model Merging for Multi-Task Learning").

θ = θ₀ + Σᵢ λᵢτᵢ (task-wise) or θ^l = θ₀^l + Σᵢ λᵢ^l τᵢ^l (layer-wise: one λ per member per tensor), the λ
learned with Adam to minimise the Shannon entropy of the merged model's predictions on unlabeled images of
each task (each task through its own head with ``--multi-task``). Labels are never read: the images are even
put in an order of their own (by content), so the result depends on the set of images alone. AdaMerging++
(``plus``) learns the λ of TIES-trimmed task vectors. Unlike the streamed merges, this holds the base and
the N task vectors in memory (the paper's way); the merged model is computed functionally from them and the
λ at every step, through the kit's training loop (AMP on CUDA, ``--resume``, torchrun).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

import zoo
from zoo.kit.card import Section

from .ties import elected_sign


class AdaMerging(zoo.Strategy):
    name = "adamerging"
    summary = ("task vectors merged with coefficients learned by minimising the prediction entropy on unlabeled "
               "data (Yang et al. 2024)")
    needs_base = True
    needs = ("eval",)
    same_tensors = True
    multi_task = True

    @dataclass
    class Options:
        granularity: Literal["layer", "task"] = zoo.option(
            "layer", "layer: one λ per member and tensor (θ^l = θ₀^l + Σ λᵢ^l τᵢ^l); task: one λ per member")
        steps: int = zoo.option(1000, "Adam steps (each: a batch of every task; 0 keeps λ = init: task arithmetic)",
                                min=0)
        lr: float = zoo.option(1e-3, "Adam's learning rate", min=0)
        batch_size: int = zoo.option(16, "unlabeled images per task in a step", min=1)
        init: float = zoo.option(0.3, "λ at the start (FusionBench's init_values)")
        clamp: bool = zoo.option(False, "clamp λ to [0, 1] in the merge (FusionBench's clamp_weights; off there too)")
        plus: bool = zoo.option(False, "AdaMerging++: learn the λ of TIES-trimmed task vectors (top density by "
                                "magnitude over the whole model, then only the entries that agree with the elected "
                                "sign)")
        density: float = zoo.option(0.2, "plus: fraction of each task vector kept", min=0, max=1)

    @classmethod
    def check(cls, options) -> None:
        if options.plus and not 0.0 < options.density <= 1.0:
            raise zoo.BadInput(f"option density={options.density}: the fraction of each task vector AdaMerging++ "
                               "keeps must be in (0, 1]")

    def combine(self, members, options, ctx: zoo.Context) -> zoo.Combined:
        from zoo.kit.tensors import check_compatible

        check_compatible(members, base=ctx.base)
        tasks = _tasks(members, ctx)  # refuses a task without data before anything is read
        return _run(members, tasks, options, ctx)


@dataclass
class _Task:
    name: str
    like: Any  # the member whose model (and head) computes this task's predictions
    head: tuple[str, ...]  # its head's tensors (kept apart with --multi-task; none otherwise)
    data: str  # "eval" (the run's --eval-data) or a folder
    images: Any = None  # its unlabeled images, preprocessed for ``like``
    model: Any = None  # ``like``'s module, which the merged tensors are passed through
    head_tensors: dict | None = None


def _tasks(members, ctx) -> list[_Task]:
    """One task per member with ``--multi-task`` (its whole member, head included, and its data); else one task,
    the run's ``--eval-data``, through the merged model as a whole."""
    if ctx.tasks is None:
        return [_Task("held-out", members[0], (), "eval")]
    missing = [m.name for m in members if not ctx.tasks[m.name].data]
    if missing:
        raise zoo.BadInput(f"strategy 'adamerging' learns its coefficients on unlabeled images of every task: none "
                           f"for {', '.join(missing)}; pass --eval-data {missing[0]}=DIR (its class folders are "
                           "never read)")
    return [_Task(m.name, ctx.tasks[m.name].member, ctx.tasks[m.name].head, ctx.tasks[m.name].data)
            for m in members]


def _unlabeled(split) -> Any:
    """The split's images alone, in the order of their bytes' digests: neither the labels nor the file names
    (which folder an image is in) can change what is learned."""
    import torch

    images = split.images
    keys = [hashlib.sha256(images[i].numpy().tobytes()).digest() for i in range(len(images))]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return images[torch.tensor(order, dtype=torch.long)] if order else images


def _trimmed(vectors: dict, members, base, density: float, ctx) -> list[float]:
    """AdaMerging++'s task vectors, in place (``vectors``: [members, ...] per tensor): each τᵢ trimmed to its top
    ``density`` magnitudes over the whole model (TIES's model-wide trim, ``zoo.model_thresholds``), then, per
    entry, the elected sign γ = sign(Σᵢ τ̂ᵢ) (a 0 takes the tensor's majority sign, as zoo's TIES) and only the τ̂ᵢ
    that agree with it kept. Returns the thresholds."""
    thresholds = zoo.model_thresholds(members, base, density, progress=ctx.progress,
                                      description="adamerging++: trim", device=ctx.device)
    for stacked in vectors.values():
        for i, tv in enumerate(stacked):
            zoo.zero_below(tv, thresholds[i])
        sign, _ = elected_sign(stacked)  # TIES's election
        stacked.mul_((stacked * sign > 0).to(stacked.dtype))
    return thresholds


def _merger(base: dict, vectors: dict[str, list], statistics: dict[str, tuple], layers: list[str], n: int,
            options):
    """The module the loop trains: its one parameter is λ ([members] task-wise, [members, tensors] layer-wise);
    calling it gives the merged tensors. θ₀ and the τᵢ are plain attributes, not buffers: DDP broadcasts neither,
    checkpoints hold λ alone."""
    import torch

    index = {k: j for j, k in enumerate(layers)}

    class Merger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            shape = (n, len(layers)) if options.granularity == "layer" else (n,)
            self.coefficients = torch.nn.Parameter(torch.full(shape, float(options.init)))

        def table(self):
            """λ as [members, tensors] (clamped if asked), whatever the granularity."""
            lam = self.coefficients.clamp(0.0, 1.0) if options.clamp else self.coefficients
            return lam if lam.dim() == 2 else lam[:, None].expand(n, len(layers))

        def forward(self) -> dict:
            lam = self.table()
            out = dict(base)  # integer buffers: the base's
            for k, j in index.items():
                out[k] = base[k] + torch.tensordot(lam[:, j], vectors[k], dims=1)
            fixed = lam.detach()  # BatchNorm takes no gradient through its running statistics: they follow λ
            for k, (b, mean) in statistics.items():
                # towards the members' mean as far as their layer's weight moves (t = Σᵢ λᵢ, within [0, 1])
                j = index.get(k.rsplit(".", 1)[0] + ".weight")
                t = (fixed[:, j].sum() if j is not None else fixed.sum(0).mean()).clamp(0.0, 1.0)
                out[k] = b + t * (mean - b)
            return out

    return Merger()


def settings_of(options, members: list[str], tasks: list[str]) -> dict:
    """What a checkpoint must have been made with to be resumed: the options, the members and the tasks."""
    return {**asdict(options), "members": list(members), "tasks": list(tasks)}


def checkpoint_folder(root, settings: dict):
    """Where a run with ``settings`` keeps its checkpoint under ``ctx.checkpoint_dir``: one folder per settings,
    so that the points of a sweep do not take each other's for an interrupted run."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return root / f"adamerging-{digest}"


def _entropy(logits):
    """Mean Shannon entropy (nats) of the softmax of each row."""
    logp = logits.float().log_softmax(dim=1)
    return -(logp.exp() * logp).sum(dim=1).mean()


def _run(members, tasks: list[_Task], options, ctx) -> zoo.Combined:
    import torch
    from torch.func import functional_call

    from zoo.kit.tensors import result_dtypes, torch_dtype
    from zoo.kit.train import (CHECKPOINT, LoopOptions, Step, autocast, ddp, resume_state, share, to_device,
                               train, unwrap)

    device, names = ctx.device, [m.name for m in members]
    # the data first: a missing or unreadable folder stops the run before any weight is read
    for t in tasks:
        split = ctx.eval_split(t.like) if t.data == "eval" else ctx.split(t.data, t.like)
        t.images = _unlabeled(split)
    for t in tasks:
        t.model = t.like.create_model().to(device).eval().requires_grad_(False)  # BatchNorm: running statistics
        t.head_tensors = {k: v.float().to(device) for k, v in t.like.read(t.head).items()} if t.head else {}
    base_member = ctx.base
    floats = [k for k in base_member.keys() if base_member.is_float(k)]
    order = {k: i for i, k in enumerate(tasks[0].model.state_dict())}  # the model's order, not the file's
    layers = sorted((k for k in floats if not zoo.is_statistic(k)), key=lambda k: order.get(k, len(order)))
    base = {k: (v.float() if k in floats else v).to(device) for k, v in base_member.state_dict().items()}
    # the output's dtypes: those the streamed merges write (the members' where they agree, else float32)
    dtypes = {k: v for k, v in result_dtypes(members, base_member).items() if k in floats}
    # one member at a time (memory: the base, the N task vectors and one member), stacked [members, ...] per tensor
    vectors = {k: torch.empty((len(members), *base[k].shape), device=device) for k in layers}
    statistics = {k: (base[k], torch.zeros_like(base[k])) for k in floats if zoo.is_statistic(k)}
    for i, m in enumerate(members):
        sd = m.state_dict()
        for k in layers:
            torch.sub(sd[k].float().to(device), base[k], out=vectors[k][i])
        for k, (_, mean) in statistics.items():
            mean += sd[k].float().to(device) / len(members)
        del sd
    report: dict[str, Any] = {"granularity": options.granularity}
    if options.plus:
        report["plus"] = {"density": options.density,
                          "thresholds": _trimmed(vectors, members, base_member, options.density, ctx)}

    merger = _merger(base, vectors, statistics, layers, len(members), options).to(device)
    model = ddp(merger)

    def predict(merged: dict, t: _Task, images):
        with autocast(device, True):
            return functional_call(t.model, {**merged, **t.head_tensors}, (to_device(images, device),)).float()

    def entropies() -> dict[str, float]:
        with torch.no_grad():
            merged = merger()
            out = {}
            for t in tasks:
                total = sum(float(_entropy(predict(merged, t, x))) * len(x) for x in t.images.split(ctx.batch_size))
                out[t.name] = total / max(1, len(t.images))
            return out

    start = entropies()
    b = options.batch_size
    per_epoch = -(-max(len(t.images) for t in tasks) // b)  # an epoch: one pass over the largest task's images
    epochs = -(-options.steps // per_epoch)

    def batches(epoch: int, gen):
        """One epoch's steps: per task, fresh random orders of its images, end to end, cut into full batches."""
        steps = min(per_epoch, options.steps - epoch * per_epoch)
        orders = []
        for t in tasks:
            n = len(t.images)
            order = torch.cat([torch.randperm(n, generator=gen) for _ in range(-(-steps * b // n))])
            orders.append(order[:steps * b].view(steps, b))
        for s in range(steps):
            yield [o[s] for o in orders]

    def step(batch):
        merged = model()
        # One task's activations alive at a time: each task's entropy is backpropagated at once to the merged
        # tensors, taken as leaves (sharing their storage), and the loop's one backward then carries
        # Σₖ ⟨mergedₖ, ∂H/∂mergedₖ⟩ through the merge to λ — the chain rule, the same gradient. Backpropagating the
        # summed entropy through everything held the N tasks' graphs together (1.6× FusionBench's peak on Lite0 ×
        # 8, bench/fusionbench_hard.py). On CUDA the loop's gradient scaler scales that last backward only.
        leaves = {k: v.detach().requires_grad_() for k, v in merged.items() if v.requires_grad}
        given = {**merged, **leaves}
        total, extra = 0.0, {}
        for t, idx in zip(tasks, batch):
            mine = share(t.images[idx])
            if mine is None:
                return None
            h = _entropy(predict(given, t, mine[0]))
            h.backward()
            total += h.item()
            extra[f"entropy/{t.name}"] = h.item()
        surrogate = sum((merged[k] * leaf.grad).sum() for k, leaf in leaves.items() if leaf.grad is not None)
        return Step(surrogate - surrogate.detach() + total, n=1, extra=extra)  # its value: the summed entropy

    settings = settings_of(options, names, [t.name for t in tasks])
    folder = state = None
    if ctx.checkpoint_dir is not None:
        folder = checkpoint_folder(ctx.checkpoint_dir, settings)
        state = resume_state(folder / CHECKPOINT, settings, ctx.resume, what="AdaMerging run", key="settings")
    # Adam (AdamW without decay) at a constant rate, as FusionBench; entropy is a sum over tasks of batch means
    loop = LoopOptions(epochs=epochs, lr=options.lr, steps_per_epoch=per_epoch, schedule="constant",
                       label="adamerging: learning λ", top1_note=" (labels unused)")
    history = train(model, step, batches, loop, device=device, generator=torch.Generator().manual_seed(ctx.seed),
                    checkpoint_dir=folder, state=state, save_extra={"settings": settings}, progress=ctx.progress,
                    log=ctx.log)
    history = [{k: v for k, v in row.items() if k != "train_top1"} for row in history]
    merger = unwrap(model)
    end = entropies()
    with torch.no_grad():
        merged = merger()
        lam = merger.table().detach().cpu()
    sd = {k: v.detach().to(device="cpu", dtype=torch_dtype(dtypes[k]) if k in dtypes else v.dtype, copy=True)
          .contiguous() for k, v in merged.items()}

    coefficients = {name: (lam[i].tolist() if options.granularity == "layer" else [float(lam[i, 0])])
                    for i, name in enumerate(names)}
    report.update(coefficients={n: (c if options.granularity == "layer" else c[0]) for n, c in coefficients.items()},
                  entropy={"start": start, "end": end}, steps=options.steps, history=history)
    if options.granularity == "layer":
        report["layers"] = layers
    result = zoo.Combined(state_dict=sd, report={"ingredients": names, "base": base_member.name,
                                                 "adamerging": report})
    from zoo.kit.card import merging_coefficients

    kind = "layer-wise" if options.granularity == "layer" else "task-wise"
    result.figures["adamerging.png"] = merging_coefficients(
        coefficients, layers=layers if options.granularity == "layer" else None,
        history=[{"epoch": 0, "loss": sum(start.values()), **{f"entropy/{n}": h for n, h in start.items()}}] + history,
        title=f"AdaMerging{'++' if options.plus else ''} ({kind}): learned λ")
    rows = [[n, c[0]] if options.granularity == "task" else [n, sum(c) / len(c), min(c), max(c)]
            for n, c in coefficients.items()]
    columns = ["member", "λ"] if options.granularity == "task" else ["member", "mean λ", "min λ", "max λ"]
    text = (f"Coefficients learned over {options.steps} Adam steps (lr {options.lr:g}, {b} unlabeled images per task "
            f"and step, λ from {options.init:g}) by minimising the entropy of the merged model's predictions; labels "
            "are never read. Mean entropy on each task's images, at the start and the end: "
            + ", ".join(f"{n} {start[n]:.4f} → {end[n]:.4f}" for n in start) + ".")
    result.card_sections.append(Section(f"AdaMerging{'++' if options.plus else ''} ({kind})", text, columns=columns,
                                        rows=rows))
    return result
