"""RegMean (Jin et al., ICLR 2023, "Dataless Knowledge Fusion by Merging Weights of Language Models").

For each linear map W (out × in) with inputs Xᵢ of that layer on member i's data: Gᵢ = XᵢᵀXᵢ / rows
(the mean over rows, as FusionBench; equal data sizes make it the paper's sum up to a constant),
G̃ᵢ = α·Gᵢ + (1−α)·diag(Gᵢ), W = (Σᵢ WᵢG̃ᵢ)(Σᵢ G̃ᵢ)⁻¹: the least-squares fit of every member's outputs on
its own inputs. Linear layers and 1×1 convolutions without groups (the same linear map at every pixel;
their rows are the pixels) are merged this way; every other tensor — k×k and depthwise convolutions,
biases, norms, BatchNorm statistics — is averaged. Each member's Grams are collected in one pass over
``--train-data`` and kept on disk (``zoo.Spill``) until the merge reads them back one layer at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import zoo
from zoo.kit.train import to_device

if TYPE_CHECKING:  # pragma: no cover
    import torch


def linear_maps(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """{weight key: module} of the layers RegMean merges: Linear, and Conv2d 1×1 with groups=1. The keys are
    the member's tensor names (``member_key`` where the model names its modules otherwise, transformers 5)."""
    import torch

    key = getattr(model, "member_key", lambda name: name)
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) or (
                isinstance(mod, torch.nn.Conv2d) and mod.kernel_size == (1, 1) and mod.groups == 1
                and mod.stride == (1, 1) and mod.padding in ((0, 0), "valid")):
            out[key(f"{name}.weight" if name else "weight")] = mod
    return out


def grams(model: torch.nn.Module, split, examples: int, device, *, batch_size: int = 64, progress=None
          ) -> dict[str, torch.Tensor]:
    """{weight key: mean of x xᵀ over the layer's input rows} on the first ``examples`` images of ``split``."""
    import torch

    model = model.to(device).eval()
    sums: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}
    hooks = []

    def hook(key, conv):
        def record(module, inputs, output):
            x = inputs[0].detach()
            x = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]) if conv else x.reshape(-1, x.shape[-1])
            x = x.double()
            sums[key] = sums.get(key, 0) + x.T @ x
            rows[key] = rows.get(key, 0) + x.shape[0]
        return record

    for key, mod in linear_maps(model).items():
        hooks.append(mod.register_forward_hook(hook(key, isinstance(mod, torch.nn.Conv2d))))
    n = min(examples, len(split))
    task = progress.task("RegMean: Gram matrices", total=n) if progress else None
    seen = 0
    try:
        with torch.no_grad():
            for images, _ in split.batches(batch_size):
                images = images[: n - seen]
                model(to_device(images, device))
                seen += len(images)
                if task:
                    task.advance(len(images))
                if seen >= n:
                    break
    finally:
        for h in hooks:
            h.remove()
        if task:
            task.close()
    return {k: (s / rows[k]).float().cpu() for k, s in sums.items()}


def prepare(members, base, options, ctx) -> zoo.Spill:
    spill = zoo.Spill(prefix="zoo-regmean-")
    try:
        for i, member in enumerate(members):
            model = member.create_model(member.state_dict())
            spill.put(i, grams(model, ctx.train_split(member), options.examples, ctx.device,
                               batch_size=ctx.batch_size, progress=ctx.progress))
            del model
    except BaseException:
        spill.close()
        raise
    return spill


def check(options) -> None:
    if not 0.0 <= options.alpha <= 1.0:
        raise zoo.BadInput(f"option alpha={options.alpha}: the off-diagonal scale must be in [0, 1]")


def regmean_merge(weights: list[torch.Tensor], gram_list: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """W = (Σ WᵢG̃ᵢ)(Σ G̃ᵢ)⁻¹ for weights of shape (out, in[, 1, 1]), in float64."""
    import torch

    shape = weights[0].shape
    total_g = 0
    total_wg = 0
    for w, g in zip(weights, gram_list):
        g = g.double()
        g = alpha * g + (1.0 - alpha) * torch.diag_embed(torch.diagonal(g))
        total_g = total_g + g
        total_wg = total_wg + w.double().reshape(shape[0], -1) @ g
    # W·ΣG̃ = ΣWᵢG̃ᵢ, ΣG̃ symmetric: solve ΣG̃·Wᵀ = (ΣWᵢG̃ᵢ)ᵀ; an input that never fires makes ΣG̃ singular
    try:
        merged = torch.linalg.solve(total_g, total_wg.T).T
    except RuntimeError:
        merged = (torch.linalg.pinv(total_g, hermitian=True) @ total_wg.T).T
    return merged.reshape(shape).to(weights[0].dtype)


@zoo.merge_method("regmean", "RegMean: each linear map fit to every member's outputs on its own inputs (Gram "
                  "matrices on --train-data); other tensors averaged (Jin et al. 2023)", min_members=2,
                  prepare=prepare, check=check, needs=("train",), statistics="merge")
def regmean(tensors: list[torch.Tensor], base: torch.Tensor | None, *, key: str, stats,
            alpha: float = zoo.option(0.9, "α: G̃ = α·G + (1−α)·diag(G), the paper's off-diagonal scaling",
                                      min=0, max=1),
            examples: int = zoo.option(256, "training images each member's Gram matrices are computed on",
                                       min=1)) -> torch.Tensor:
    import torch

    gram_list = stats.get(key)
    if gram_list is None:
        return torch.stack(tensors).mean(dim=0)
    return regmean_merge(tensors, [g.to(tensors[0].device) for g in gram_list], alpha)
