"""``--strategy align`` (one member's units permuted to line up with a reference's: ``zoo align``) and
``--strategy rebasin`` (members trained from different starts, aligned, then averaged).

Both derive the permutation spec from the first member's timm model (``spec.py``), check it against the
model's outputs before anything is matched (``permute.check_function``), and match weights
(``match.py``) or, with ``method=activations``, the units' activations on ``--train-data``
(``activations.py``). ``rebasin`` then averages the aligned members (uniform or ``weights``), re-estimates
BatchNorm statistics on ``--train-data`` (``bn``), and with ``repair`` rescales each BatchNorm's output
to the members' statistics (``repair.py``). ``report`` measures the loss barrier along the path between
the reference and each member, before and after alignment (``barrier.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import zoo
from zoo.kit.card import Section
from zoo.kit.train import has_batchnorm, recomputed_state, state_on_cpu
from zoo.kit.measure import predict
from zoo.kit.tensors import check_compatible
from zoo.plugins.rebasin import activations, barrier, match, permute
from zoo.plugins.rebasin import repair as repairing
from zoo.plugins.rebasin import spec as specs

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: held-out images the function check runs on (random ones without --eval-data)
CHECK_IMAGES = 16


@dataclass
class _Common:
    max_sweeps: int = zoo.option(100, "most sweeps over the permutation groups (stops earlier after a sweep that "
                                  "gains nothing)", min=1)
    first_sweep: Literal["graph", "random"] = zoo.option(
        "graph", "order of the first sweep: the graph's (input to output; zoo's default) or random (the paper's)")
    report: bool = zoo.option(False, "measure the loss barrier along the path between the reference and each member, "
                                 "before and after alignment (needs --eval-data; --train-data adds both paths "
                                 "with BatchNorm statistics recomputed)")
    points: int = zoo.option(11, "α points on each path the report measures", min=3)
    bn_batches: int = zoo.option(20, "batches of --train-data used to re-estimate BatchNorm statistics", min=1)
    activation_images: int = zoo.option(512, "method=activations: training images whose activations are correlated "
                                              "(drawn at random, the same for every member)", min=2)


def _check_members(members) -> None:
    """One architecture, then the kit's check of the tensors (names, shapes: the width), as soups make it."""
    arch = {m.architecture for m in members}
    if len(arch) > 1:
        raise zoo.BadInput(f"members of different architectures ({', '.join(sorted(arch))}): weight matching permutes "
                           "the units of one architecture; align members of the same architecture and width")
    check_compatible(members)


def derive_checked(like, ctx, *, what: str):
    """The permutation spec of ``like``'s model, checked against its outputs, and the model."""
    from zoo.kit.data import data_config

    model = like.create_model()
    size = tuple(data_config(like.pretrained_cfg)["input_size"])
    spec = specs.derive(model, size, what=what)  # traced on the CPU
    model = model.to(ctx.device)
    images = _probe(ctx, like, size)
    permute.check_function(spec, model, images, seed=ctx.seed, what=what)
    if not spec.groups:
        raise zoo.BadInput(f"{what}: the model has no permutable units (every channel is tied to the input or the "
                           "classes), so there is nothing to align")
    return spec, model, images


def _probe(ctx, like, size) -> torch.Tensor:
    import torch

    from zoo.kit.train import to_device

    if ctx.eval_data:
        images = ctx.eval_split(like).images[:CHECK_IMAGES]
    else:
        images = torch.randn(CHECK_IMAGES, *size, generator=torch.Generator().manual_seed(ctx.seed))
    return to_device(images, ctx.device)


def _needs_train_data(options, ctx) -> None:
    if options.method == "activations" and not ctx.train_data:
        raise zoo.BadInput("method=activations pairs units by their activations on training images: pass "
                           "--train-data DIR (an image folder, one sub-folder per class), or use the default weight "
                           "matching")


def match_activations(ctx, spec, like, member, ref: dict, raw: dict, options, *, what: str) -> match.Matched:
    """``member``'s units (weights ``raw``) paired with ``like``'s (weights ``ref``) by their activations on
    ``options.activation_images`` images of --train-data, each preprocessed its member's own way."""
    from zoo.kit.train import to_device

    model_a = like.create_model(ref).to(ctx.device).eval()
    model_b = member.create_model(raw).to(ctx.device).eval()
    batches = ((to_device(a, ctx.device), to_device(b, ctx.device)) for a, b in activations.batches_of(
        ctx.train_split(like), ctx.train_split(member), options.activation_images, min(ctx.batch_size, 64),
        ctx.seed))
    found = activations.activation_matching(spec, model_a, model_b, batches, what=what)
    found.inner_before = match.inner(spec, ref, raw)
    found.inner_after = match.inner(spec, ref, permute.apply(spec, raw, found.perms))
    return found


def _same_function(model, before: dict, after: dict, images, *, what: str, rtol: float = 1e-4) -> float:
    diff = permute.output_difference(model, before, after, images)
    if diff > rtol:
        raise zoo.BadInput(f"{what}: the aligned weights compute something else (outputs differ by {diff:.2g} of their "
                           "scale); nothing was written")
    return diff


def _report_paths(ctx, like, spec, ref, raw, aligned, options, name: str, with_bn: bool) -> dict:
    split = ctx.eval_split(like)
    alphas = barrier.grid(options.points)
    curves = {"before alignment": barrier.path(ctx, like, ref, raw, alphas, split, label=f"path to {name}"),
              "aligned": barrier.path(ctx, like, ref, aligned, alphas, split, label=f"aligned path to {name}")}
    if with_bn and ctx.train_data:  # both, so what alignment adds is not credited to the recompute
        for variant, end in (("before alignment, BN recomputed", raw), ("aligned + BN recomputed", aligned)):
            curves[variant] = barrier.path(ctx, like, ref, end, alphas, split, recompute=ctx.train_split(like),
                                           bn_batches=options.bn_batches, label=f"{variant}: {name}")
    keys = list(spec.axes)
    return {"member": name, "l2_before": barrier.l2(ref, raw, keys), "l2_after": barrier.l2(ref, aligned, keys),
            "curves": curves}


def _paths_section(paths: list[dict]) -> Section:
    rows = []
    for p in paths:
        for variant, c in p["curves"].items():
            rows.append([p["member"], variant, c["loss_barrier"], c["top1_drop"], c["midpoint_top1"]])
    return Section(
        "Loss barrier along the path", "θ(α) = (1−α)·θ(reference) + α·θ(member) on the held-out data; the barrier "
        "is the largest excess of the loss over the straight line between the two ends' losses.",
        columns=["member", "path", "loss barrier", "top-1 drop", "top-1 at α=0.5"], rows=rows)


def _describe(spec) -> str:
    kinds = {}
    for g, where in spec.where.items():
        kind = "attention heads" if where.endswith(" heads") else "head dimensions" if where.endswith(" head dims") \
            else "units"
        kinds[kind] = kinds.get(kind, 0) + 1
    return ", ".join(f"{n} groups of {k}" for k, n in kinds.items())


class Align(zoo.Strategy):
    name = "align"
    member_formats = ("timm",)  # reaches into timm's modules: other formats are converted first
    summary = "permute a member's units to line up with a reference's (weight matching): the same function, " \
              "ready to merge (zoo align)"
    min_members = 2
    max_members = 2
    same_tensors = True
    relation = "finetune"

    @dataclass
    class Options(_Common):
        method: Literal["weights", "activations"] = zoo.option(
            "weights", "how units are paired: weight matching (Git Re-Basin), or activations: by the correlation of "
                       "their activations on --train-data (Convergent Learning; Git Re-Basin's activation matching)")

    def combine(self, members, options, ctx) -> zoo.Combined:
        import torch

        _check_members(members)
        reference, member = members
        if options.report and not ctx.eval_data:
            raise zoo.BadInput("option report=true measures the loss along the path: pass --eval-data (held-out data)")
        _needs_train_data(options, ctx)
        spec, model, images = derive_checked(reference, ctx, what=reference.architecture)
        ref, raw = reference.state_dict(), member.state_dict()
        if options.method == "activations":
            matched = match_activations(ctx, spec, reference, member, ref, raw, options,
                                        what=reference.architecture)
        else:
            matched = match.weight_matching(spec, ref, raw, seed=ctx.seed, max_sweeps=options.max_sweeps,
                                            first_sweep=options.first_sweep)
        aligned = permute.apply(spec, raw, matched.perms)
        diff = _same_function(model, raw, aligned, images, what=f"{member.name} aligned to {reference.name}")
        moved = {g: int((p != torch.arange(len(p))).sum()) for g, p in matched.perms.items()}
        report = {"reference": reference.name, "member": member.name, "spec": spec.describe(),
                  "groups": {g: {"size": spec.groups[g], "starts_at": spec.where[g], "units_moved": moved[g]}
                             for g in spec.groups},
                  "method": options.method, "sweeps": matched.sweeps, "inner_before": matched.inner_before,
                  "inner_after": matched.inner_after, "output_difference": diff}
        rows = [["units moved", f"{sum(moved.values())} of {sum(spec.groups.values())}"],
                ["Σ⟨reference, member⟩ before", matched.inner_before], ["after", matched.inner_after]]
        if options.method == "activations":
            how = (f"activation matching on {min(options.activation_images, len(ctx.train_split(reference)))} "
                   f"training images, over {_describe(spec)}")
            report["correlation_before"] = matched.correlation_before
            report["correlation_after"] = matched.correlation_after
            rows += [["mean correlation of paired units before", matched.correlation_before],
                     ["after", matched.correlation_after]]
        else:
            how = f"weight matching, {matched.sweeps} sweeps over {_describe(spec)}"
        result = zoo.Combined(state_dict=aligned, config=member.config, report=report)
        sections = [Section(
            "Alignment", f"The units of {member.name} permuted to line up with {reference.name} ({how}). It "
            f"computes what {member.name} computes: the outputs differ by {diff:.1e} of their scale on the check "
            "images. No training.", columns=["", "value"], rows=rows)]
        if options.report:
            paths = [_report_paths(ctx, reference, spec, ref, raw, aligned, options, member.name,
                                   has_batchnorm(model))]
            report["paths"] = paths
            result.figures["barrier.png"] = barrier.figure(paths[0]["curves"],
                                                          title=f"{reference.name} → {member.name}")
            sections.append(_paths_section(paths))
        result.card_sections += sections
        return result


class Rebasin(zoo.Strategy):
    name = "rebasin"
    member_formats = ("timm",)  # reaches into timm's modules: other formats are converted first
    summary = "align members trained from different starts (weight matching), then average them; BatchNorm " \
              "statistics recomputed (Git Re-Basin; REPAIR as an option)"
    min_members = 2
    same_tensors = True

    @dataclass
    class Options(_Common):
        method: Literal["reference", "merge-many", "activations"] = zoo.option(
            "reference", "weight matching of every member to the first (reference), Git Re-Basin's MergeMany (each "
                         "to the mean of the others, repeated until nothing changes), or activations: every member "
                         "to the first by the correlation of their units' activations on --train-data")
        weights: list[float] = zoo.option([], "one weight per member for the average (default: uniform)", min=0)
        bn: Literal["auto", "recompute", "keep"] = zoo.option(
            "auto", "BatchNorm statistics of the average: recompute them on --train-data (auto: when the model has "
                    "BatchNorm), or keep the averaged ones")
        repair: bool = zoo.option(False, "REPAIR: rescale each BatchNorm's output to the members' statistics (needs "
                                     "--train-data and a model with BatchNorm)")

    def combine(self, members, options, ctx) -> zoo.Combined:
        _check_members(members)
        if options.weights and len(options.weights) != len(members):
            raise zoo.BadInput(f"option weights has {len(options.weights)} values for {len(members)} members")
        if options.weights and sum(options.weights) <= 0:
            raise zoo.BadInput("option weights must not sum to 0")
        weights = [w / sum(options.weights) for w in options.weights] if options.weights else \
            [1 / len(members)] * len(members)
        if options.report and not ctx.eval_data:
            raise zoo.BadInput("option report=true measures the loss along the path: pass --eval-data (held-out data)")
        _needs_train_data(options, ctx)
        like = members[0]
        spec, model, images = derive_checked(like, ctx, what=like.architecture)
        with_bn = has_batchnorm(model)
        recompute = options.bn == "recompute" or (options.bn == "auto" and with_bn) or options.repair
        if options.repair and not with_bn:
            raise zoo.BadInput(f"option repair=true rescales BatchNorm outputs; {like.architecture} has no BatchNorm "
                               "(use bn=keep, or a model with BatchNorm)")
        if recompute and with_bn and not ctx.train_data:
            raise zoo.BadInput(f"{like.architecture} has BatchNorm: averaged statistics fit no member, so rebasin "
                               "recomputes them; pass --train-data DIR (or -o bn=keep to keep the averaged ones)")
        train = ctx.train_split(like) if recompute and with_bn else None
        split = ctx.eval_split(like) if ctx.eval_data else None

        # one member at a time: read once, matched to the reference (MergeMany: matched all together first,
        # which holds every member), its function checked, measured, its path to the reference
        reference = like.state_dict()
        states = [reference] + [m.state_dict() for m in members[1:]] if options.method == "merge-many" else None
        found = match.merge_many(spec, states, seed=ctx.seed, max_sweeps=options.max_sweeps,
                                 first_sweep=options.first_sweep, progress=ctx.progress) if states else None
        perms, sweeps, per, paths, stats, probs, correlations = [], [], [], [], [], 0, []
        task = ctx.progress.task("aligning members", total=len(members))
        for i, (m, w) in enumerate(zip(members, weights)):
            raw = states[i] if states else reference if i == 0 else m.state_dict()
            if found is not None:
                f = found[i]
            elif i == 0:
                f = match.Matched(permute.identity(spec), 0)
            elif options.method == "activations":
                f = match_activations(ctx, spec, like, m, reference, raw, options, what=like.architecture)
            else:
                f = match.weight_matching(spec, reference, raw, seed=ctx.seed + i, max_sweeps=options.max_sweeps,
                                          first_sweep=options.first_sweep)
            perms.append(f.perms)
            sweeps.append(f.sweeps)
            if f.correlation_after is not None:
                correlations.append({"member": m.name, "before": f.correlation_before, "after": f.correlation_after})
            aligned = permute.apply(spec, raw, f.perms)
            _same_function(model, raw, aligned, images, what=f"{m.name} aligned")
            if split is not None:  # the member alone, and its share of the output ensemble
                logits = predict(ctx.model(raw, like), split, ctx.device, batch_size=ctx.batch_size)
                per.append(ctx.metrics_of(logits, split.targets))
                probs = probs + w * logits.float().softmax(1)
            if options.report and i > 0:
                paths.append(_report_paths(ctx, like, spec, reference, raw, aligned, options, m.name, with_bn))
            if options.repair:
                stats.append(repairing.output_stats(ctx.model(aligned, like), train, options.bn_batches, ctx.device,
                                                    seed=ctx.seed))
            del raw, aligned
            task.advance()
        task.close()
        del states

        # the average itself is streamed tensor by tensor through the kit: no member is held whole
        def permuted_mean(tensors, _base, *, key):
            return sum(w * permute.permute_tensor(spec, key, t, p) for w, t, p in zip(weights, tensors, perms))

        merged = zoo.map_tensors(members, permuted_mean, progress=ctx.progress, description="averaging aligned members",
                                 who="rebasin")
        if options.repair:
            merged = state_on_cpu(repairing.repair(ctx.model(merged, like), stats, weights, train, options.bn_batches,
                                                   ctx.device, seed=ctx.seed))
        elif train is not None:
            merged = recomputed_state(ctx.model(merged, like), train, options.bn_batches, ctx.device, seed=ctx.seed)
        report = {"method": options.method, "weights": weights, "spec": spec.describe(),
                  "bn": "repair" if options.repair else ("recomputed" if train is not None else "averaged"),
                  "sweeps": sweeps}
        if correlations:  # method=activations: the mean correlation of paired units, as they stood and as matched
            report["correlations"] = correlations
        result = zoo.Combined(state_dict=merged, report=report)
        rows = []
        if split is not None:
            naive = zoo.map_tensors(members, lambda tensors, _b, *, key: sum(w * t for w, t in zip(weights, tensors)),
                                    progress=ctx.progress, description="averaging without alignment", who="rebasin")
            naive = dict(naive)
            if train is not None:
                naive = recomputed_state(ctx.model(naive, like), train, options.bn_batches, ctx.device, seed=ctx.seed)
            ens = ctx.metrics_of(probs.clamp_min(1e-12).log(), split.targets)
            unaligned = ctx.evaluate(naive, like=like, split=split)
            report["members"] = {m.name: p.as_dict() for m, p in zip(members, per)}
            report["ensemble"] = ens.as_dict()
            report["average_without_alignment"] = unaligned.as_dict()
            rows = [[m.name, p.top1, p.nll] for m, p in zip(members, per)]
            rows += [["output ensemble (mean softmax)", ens.top1, ens.nll],
                     ["average without alignment", unaligned.top1, unaligned.nll]]
            measured = ctx.evaluate(dict(merged), like=like, split=split)
            result.metrics = measured.as_dict()  # zoo would measure the same again otherwise
            result.figures["rebasin.png"] = _bars(rows, measured)
        if paths:
            report["paths"] = paths
            result.figures["barrier.png"] = barrier.figure(paths[0]["curves"],
                                                          title=f"{like.name} → {members[1].name}")
            result.card_sections.append(_paths_section(paths))
        how = "the first by weight matching" if options.method == "reference" else \
            "each other by weight matching (MergeMany)" if options.method == "merge-many" else \
            "the first by the correlation of their units' activations on " \
            f"{min(options.activation_images, len(ctx.train_split(like)))} training images"
        text = (f"{len(members)} members aligned to {how} ({_describe(spec)}), then averaged"
                + (", BatchNorm statistics recomputed on the training data" if train is not None else "")
                + (" and each BatchNorm's output rescaled to the members' (REPAIR)" if options.repair else "") + ".")
        result.card_sections.insert(0, Section("Re-basin", text, columns=["model", "held-out top-1",
                                                                             "held-out NLL"], rows=rows)
                                    if rows else Section("Re-basin", text))
        return result


def _bars(rows, merged):
    from zoo.kit.card import bars

    labels = [r[0] for r in rows] + ["re-basin merge"]
    values = [r[1] for r in rows] + [merged.top1]
    return bars(labels, values, highlight=[len(values) - 1], title="held-out top-1", ylabel="top-1 (%)")
