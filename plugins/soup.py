"""Model soups (Wortsman et al., 2022): uniform, greedy and learned (layer-wise) weight averages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import zoo
from zoo.kit.card import Section
from zoo.kit.tensors import check_compatible, lerp, uniform_average


class Soup(zoo.Strategy):
    name = "soup"
    same_tensors = True
    summary = "average the weights of fine-tunes of one model (uniform, greedy or learned soup)"

    @dataclass
    class Options:
        mode: Literal["uniform", "greedy", "learned"] = zoo.option(
            "uniform", "uniform: plain average; greedy: add members best-first while held-out accuracy "
            "improves; learned: train per-tensor mixing weights on the held-out split")
        accept: Literal["gt", "ge"] = zoo.option(
            "gt", "greedy: keep a candidate if its accuracy is > (gt, as the paper's code) or >= (ge) the soup's")
        recompute_bn: int = zoo.option(
            0, "re-estimate BatchNorm statistics on this many batches of --train-data (0: keep averaged stats)",
            min=0)
        epochs: int = zoo.option(5, "learned: epochs over the held-out split", min=0)
        lr: float = zoo.option(0.05, "learned: AdamW learning rate of the mixing logits", min=0)

    def combine(self, members, options, ctx: zoo.Context) -> zoo.Combined:
        check_compatible(members)
        ref = members[0]
        if options.recompute_bn:
            ctx.train_split(ref)  # fail now, not after the merge, when --train-data is missing
        if options.mode == "uniform":
            result = _uniform(members, ctx)
        elif options.mode == "greedy":
            result = _greedy(members, options, ctx)
        else:
            result = _learned(members, options, ctx)
        if options.recompute_bn:
            from zoo.kit.train import has_batchnorm, recomputed_state

            model = ctx.model(result.state_dict, ref)
            if has_batchnorm(model):
                result.state_dict = recomputed_state(model, ctx.train_split(ref), options.recompute_bn, ctx.device,
                                                     seed=ctx.seed)
                result.metrics = None  # measured again on the final weights
                result.report["recompute_bn"] = options.recompute_bn
        return result


def _member_scores(members, ctx: zoo.Context) -> list[float]:
    scores = []
    task = ctx.progress.task("evaluating members", total=len(members))
    for m in members:
        scores.append(ctx.evaluate(m).top1)
        task.advance()
    task.close()
    return scores


def _uniform(members, ctx: zoo.Context) -> zoo.Combined:
    from zoo.kit.card import bars

    sd = uniform_average(members, progress=ctx.progress, device=ctx.device)
    result = zoo.Combined(state_dict=sd, report={"ingredients": [m.name for m in members]})
    if ctx.eval_data:
        scores = _member_scores(members, ctx)
        soup = ctx.evaluate(sd, like=members[0])
        result.metrics = soup.as_dict()
        result.report["member_top1"] = dict(zip([m.name for m in members], scores))
        result.figures["soup.png"] = bars(
            [m.name for m in members] + ["uniform soup"], scores + [soup.top1], highlight=[len(members)],
            title="Held-out top-1: members and their uniform soup", ylabel="top-1 (%)")
    return result


def _greedy(members, options, ctx: zoo.Context) -> zoo.Combined:
    from zoo.kit.card import greedy_path

    scores = _member_scores(members, ctx)
    order = sorted(range(len(members)), key=lambda i: -scores[i])  # stable: ties keep the given order
    best = order[0]
    soup = members[best].state_dict()
    soup_acc = scores[best]
    soup_metrics = None
    accepted = [members[best].name]
    steps = [{"member": members[best].name, "ingredient_top1": scores[best], "candidate_top1": scores[best],
              "soup_top1": soup_acc, "accepted": True}]
    task = ctx.progress.task("greedy soup", total=len(order) - 1)
    for i in order[1:]:
        n = len(accepted)
        candidate = lerp(soup, members[i].state_dict(), 1.0 / (n + 1))  # soup·n/(n+1) + θᵢ/(n+1)
        metrics = ctx.evaluate(candidate, like=members[0])
        keep = metrics.top1 > soup_acc if options.accept == "gt" else metrics.top1 >= soup_acc
        if keep:
            soup, soup_acc, soup_metrics = candidate, metrics.top1, metrics
            accepted.append(members[i].name)
        steps.append({"member": members[i].name, "ingredient_top1": scores[i], "candidate_top1": metrics.top1,
                      "soup_top1": soup_acc, "accepted": keep})
        task.advance()
    task.close()
    result = zoo.Combined(state_dict=soup, report={"ingredients": accepted, "steps": steps,
                                                   "member_top1": dict(zip([m.name for m in members], scores))})
    result.metrics = soup_metrics.as_dict() if soup_metrics else None
    result.figures["greedy-soup.png"] = greedy_path(
        steps, title=f"Greedy soup: {len(accepted)} of {len(members)} ingredients kept")
    result.card_sections.append(Section(
        "Greedy soup", "Ingredients in order of held-out accuracy; each kept only if the soup improved "
        f"({'>' if options.accept == 'gt' else '>='}):", columns=["member", "alone", "soup with it", "kept"],
        rows=[[s["member"], s["ingredient_top1"], s["candidate_top1"], s["accepted"]] for s in steps]))
    return result


def _learned(members, options, ctx: zoo.Context) -> zoo.Combined:
    """Layer-wise learned soup: α = softmax over members per tensor (uniform at start), logit scale β."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call

    from zoo.kit.train import LoopOptions, Step, state_on_cpu, train

    ref = members[0]
    split = ctx.eval_split(ref)
    states = [m.state_dict() for m in members]
    model = ctx.model(states[0], ref)
    params = {name for name, _ in model.named_parameters()}
    float_keys = [k for k, v in states[0].items() if v.is_floating_point() and k in params]
    stacked = {k: torch.stack([s[k].float() for s in states]).to(ctx.device) for k in float_keys}
    # buffers (BatchNorm statistics) are not trainable: they stay the uniform average
    fixed = {k: (torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v)
             .to(ctx.device) for k, v in states[0].items() if k not in stacked}
    # the mixing logits α (per tensor, per member) and the logit scale β are what the kit's loop trains
    mixer = torch.nn.ParameterList([torch.zeros(len(float_keys), len(members), device=ctx.device),
                                    torch.ones((), device=ctx.device)])
    alpha, beta = mixer

    def mixed() -> dict:
        w = alpha.softmax(dim=1)
        out = {k: torch.einsum("m,m...->...", w[j], stacked[k]) for j, k in enumerate(float_keys)}
        out.update(fixed)
        return out

    losses = []

    def step(batch):
        images, targets = batch
        targets = targets.to(ctx.device)
        logits = functional_call(model, mixed(), (images.to(ctx.device),)) * beta
        loss = F.cross_entropy(logits, targets)
        losses.append(loss.item())
        return Step(loss, n=len(targets), correct=int((logits.argmax(1) == targets).sum()))

    model.eval()  # BN uses running stats (mixed too): the soup is trained as it will be used
    # the loop's AdamW at a constant rate, without AMP's loss scaling (the mixing trains in float32)
    loop = LoopOptions(epochs=options.epochs, lr=options.lr, steps_per_epoch=-(-len(split) // 64),
                       schedule="constant", amp=False, label="learning soup weights")
    train(mixer, step, lambda epoch, gen: split.batches(64, shuffle=True, generator=gen), loop,
          device=ctx.device, generator=torch.Generator().manual_seed(ctx.seed), progress=ctx.progress,
          log=ctx.log)
    with torch.no_grad():
        sd = {k: v.to(states[0][k].dtype) for k, v in state_on_cpu(mixed()).items()}
        scale = float(beta)
        head = ref.pretrained_cfg.get("classifier")
        # bake the logit scale into a linear head, so the output is an ordinary model (β·(Wx+b))
        if isinstance(head, str) and f"{head}.weight" in sd and scale != 1.0:
            sd[f"{head}.weight"] = sd[f"{head}.weight"] * scale
            if f"{head}.bias" in sd:
                sd[f"{head}.bias"] = sd[f"{head}.bias"] * scale
        mix = alpha.softmax(dim=1).cpu()
    return zoo.Combined(state_dict=sd, report={
        "ingredients": [m.name for m in members], "logit_scale": scale, "losses": losses,
        "mean_mixing_weight": dict(zip([m.name for m in members], mix.mean(0).tolist()))})


@zoo.hookimpl
def zoo_strategies():
    return [Soup]
