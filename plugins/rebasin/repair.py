"""REPAIR (Jordan et al., "REPAIR: REnormalizing Permuted Activations for Interpolation Repair", ICLR 2023),
for networks with BatchNorm.

Averaging aligned networks shrinks the spread of their hidden activations ("variance collapse"). REPAIR
measures, on training data, the mean and standard deviation of each channel at the same place in every
member, and rescales the merged network's channel there to the weighted mean of the members' values.
zoo does this at every BatchNorm's output: once a BatchNorm's statistics are re-estimated on the data, its
output per channel has mean ≈ bias and standard deviation ≈ |weight|, so the correction is closed-form (up
to BatchNorm's eps): bias ← Σ wᵢ·μᵢ, weight ← sign(weight)·Σ wᵢ·σᵢ, and then every statistic is re-estimated
in one pass (the paper's correction layer after each BatchNorm, folded into it). Networks without BatchNorm
are refused: there the paper corrects activations inside the network, which a timm model has no place to
store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from zoo.kit.train import recompute_bn_stats, to_device

if TYPE_CHECKING:  # pragma: no cover
    import torch


def _bns(model) -> dict[str, torch.nn.Module]:
    import torch

    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}


def output_stats(model, split, n_batches: int, device, *, batch_size: int = 64, seed: int = 0):
    """Per BatchNorm: the (mean, std) of each channel of its output, the model in eval mode, on ``n_batches``
    batches of ``split`` (the same batches for every model: the same seed). For timm's BatchNorm with a
    fused activation (``BatchNormAct2d``) that is the normalised output, before the activation."""
    import torch

    sums: dict[str, list[torch.Tensor]] = {}

    def hook(name):
        def record(_module, _inp, out):
            x = out.detach().double().transpose(0, 1).reshape(out.shape[1], -1)
            acc = sums.setdefault(name, [torch.zeros(x.shape[0], dtype=torch.float64)] * 2 + [0])
            sums[name] = [acc[0] + x.sum(1).cpu(), acc[1] + (x * x).sum(1).cpu(), acc[2] + x.shape[1]]
        return record

    handles = []
    for n, m in _bns(model).items():
        act = getattr(m, "act", None)
        if isinstance(act, torch.nn.Module):  # timm's BatchNormAct2d: the normalised output is its act's input
            handles.append(act.register_forward_pre_hook(lambda mod, inp, record=hook(n): record(mod, inp, inp[0])))
        else:
            handles.append(m.register_forward_hook(hook(n)))
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    try:
        with torch.no_grad():
            for i, (images, _) in enumerate(split.batches(batch_size, shuffle=True, generator=gen)):
                if i >= n_batches:
                    break
                model(to_device(images, device))
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, (s, sq, n) in sums.items():
        mean = s / n
        out[name] = (mean, (sq / n - mean * mean).clamp_min(0).sqrt())
    return out


def repair(model, member_stats: Sequence[dict], weights: Sequence[float], split, n_batches: int, device, *,
           seed: int = 0):
    """Give each BatchNorm's output the weighted mean of the members' output statistics (``member_stats``:
    :func:`output_stats` of each): its affine part first, then every running statistic re-estimated on
    ``split`` in one pass, so each BatchNorm normalises what the corrected layers before it now give it
    (correcting after the re-estimate would leave every later BatchNorm's statistics stale)."""
    import torch

    with torch.no_grad():
        for name, bn in _bns(model).items():
            if bn.weight is None or bn.bias is None:  # no affine part to carry the correction
                continue
            mean = sum(w * s[name][0] for w, s in zip(weights, member_stats))
            std = sum(w * s[name][1] for w, s in zip(weights, member_stats))
            sign = torch.where(bn.weight.detach().cpu() < 0, -1.0, 1.0).double()
            bn.weight.copy_((sign * std).to(bn.weight))
            bn.bias.copy_(mean.to(bn.bias))
    recompute_bn_stats(model, split, n_batches, device, seed=seed)
    return model
