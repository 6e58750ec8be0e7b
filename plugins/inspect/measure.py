"""`zoo inspect`'s measurements of a set of members: pairwise loss barriers along the linear path (the kit's
``loss_path``, what `zoo align --report` measures), task-vector norms and cosines (with a base), per-member
loss-landscape metrics (``landscape.py``) and pairwise agreement (``geometry.py``), then the advice
(``advice.py``). Everything it returns is JSON-able."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import zoo


@dataclass
class Settings:
    points: int = 5  #: α points on each path, both ends included
    bn_batches: int = 20  #: batches of --train-data to recompute BatchNorm statistics at each interior α
    batches: int = 2  #: batches of --eval-data the landscape metrics use
    batch_size: int = 64  #: their size
    iterations: int = 20  #: most power iterations for the sharpness
    samples: int = 10  #: Rademacher vectors for Hutchinson's trace
    seed: int = 0


def check_request(count: int, eval_data: str | None) -> None:
    """Refuse a request `zoo inspect` cannot measure, before any member is loaded (``zoo.BadInput``, exit 2)."""
    if count < 2:
        raise zoo.BadInput(f"zoo inspect compares members: pass at least two (-m A -m B); got {count}")
    if not eval_data:
        raise zoo.BadInput("zoo inspect measures loss barriers, sharpness, Hessian trace and agreement on held-out "
                           "data: pass --eval-data DIR (task-vector cosines alone need only --base, but inspect "
                           "measures them together)")


def check(members: Sequence, base) -> None:
    """Refuse members `zoo inspect` cannot compare: different architectures, or different tensors (shapes)."""
    from zoo.kit.tensors import check_compatible

    arch = sorted({m.architecture for m in members})
    if len(arch) > 1:
        raise zoo.BadInput(f"members of different architectures ({', '.join(arch)}): loss barriers, task vectors and "
                           "the landscape of a merge need one architecture; only their predictions could be compared "
                           "(zoo combine -s ensemble --eval-data DIR reports each member and their ensemble). Inspect "
                           "members of one architecture")
    check_compatible(members, base=base)


def inspect_members(members: Sequence, base=None, *, eval_data: str, train_data: str | None = None,
                    device="cpu", settings: Settings | None = None, progress=None) -> dict:
    """Every measurement of `zoo inspect` on ``members`` (resolved ``zoo.Member``s; ``base`` for task vectors)."""
    from zoo.kit.measure import alpha_grid, cached_json, data_identity, loss_path, member_identity, predict
    from zoo.kit.train import has_batchnorm

    from zoo.plugins.inspect import geometry, landscape
    from zoo.plugins.inspect.advice import advise

    s = settings or Settings()
    check_request(len(members), eval_data)
    check(members, base)
    kw = {"progress": progress} if progress is not None else {}
    ctx = zoo.Context(device=device, eval_data=eval_data, train_data=train_data, seed=s.seed, strategy="inspect",
                      **kw)
    like = members[0]
    split = ctx.eval_split(like)
    bn = has_batchnorm(like.create_model())
    recompute = ctx.train_split(like) if (bn and train_data) else None
    names = [m.name for m in members]
    report: dict = {"members": names, "base": base.name if base is not None else None,
                    "architecture": like.architecture, "eval_images": len(split), "points": s.points,
                    "batchnorm": bn, "batchnorm_recomputed": recompute is not None}
    if base is not None:
        report["task_vectors"] = geometry.task_vector_geometry(members, base, progress=ctx.progress)

    alphas = alpha_grid(s.points)
    # each pair's path is kept on disk by the two members' files, the data and the settings: a second inspect of
    # a zoo with one new member measures only that member's paths (identities read once: a data folder's is a walk)
    identity = {m.name: member_identity(m) for m in members}
    settings_key = {"like": identity[like.name], "eval": data_identity(eval_data),
                    "train": data_identity(train_data) if recompute else None, "alphas": list(alphas),
                    "bn_batches": s.bn_batches, "seed": s.seed,
                    "device": getattr(ctx.device, "type", str(ctx.device)), "batch_size": ctx.batch_size}
    barriers, predictions, per_member, cached = {}, {}, {}, 0
    batches = None
    for i, a in enumerate(members):
        sd_a = a.state_dict()  # two members' weights at a time: this one and the other end of each path
        model = a.create_model(sd_a).to(device)
        predictions[a.name] = predict(model, split, device, batch_size=ctx.batch_size)
        top1 = float((predictions[a.name].argmax(1) == split.targets).float().mean())
        batches = batches or landscape.batches_of(split, device, batches=s.batches, batch_size=s.batch_size)
        per_member[a.name] = {"top1": top1, **landscape.landscape(model, batches, iterations=s.iterations,
                                                                  samples=s.samples, seed=s.seed)}
        del model
        for b in members[i + 1:]:
            # every path's models are built like the first member (one architecture, one set of tensors): the
            # Context keeps one module per ``like``, so one module serves every pair
            key = {"a": identity[a.name], "b": identity[b.name], **settings_key}
            curve, kept = cached_json("barriers", key, lambda b=b, sd_a=sd_a: loss_path(
                ctx, like, sd_a, b.state_dict(), alphas, split, recompute=recompute, bn_batches=s.bn_batches,
                label=f"path {a.name} → {b.name}"))
            barriers[f"{a.name}|{b.name}"] = curve
            cached += kept
        del sd_a
    report["barriers"] = barriers
    report["barriers_cached"] = cached  # pairs read back from an earlier run ($ZOO_CACHE/measures/barriers)
    report["landscape"] = per_member
    report["agreement"] = geometry.agreement(predictions)
    report["landscape_setup"] = {"batches": len(batches), "images": sum(len(t) for _, t in batches),
                                 "iterations": s.iterations, "samples": s.samples}
    report["advice"] = advise(report)
    return report
