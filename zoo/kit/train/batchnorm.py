"""BatchNorm running statistics after weight averaging.

Averaged running means and variances are only an approximation of the merged
network's activation statistics; recomputing them on a few training batches (train
mode, no gradient, cumulative average) fixes that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from zoo.kit.data import Split


def has_batchnorm(model) -> bool:
    import torch

    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def freeze_bn_stats(model) -> None:
    """Keep every BatchNorm's running statistics as they are while the model trains (scale and shift still learn)."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def recompute_bn_stats(model, split: Split, n_batches: int, device, *, batch_size: int = 64, seed: int = 0):
    """Reset every BatchNorm's running stats and re-estimate them on ``n_batches`` batches of ``split``."""
    import torch

    from zoo.kit.train.device import to_device

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns or n_batches <= 0:
        return model
    saved = {m: m.momentum for m in bns}
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts equally
    was_training = model.training
    model.train()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i, (images, _) in enumerate(split.batches(batch_size, shuffle=True, generator=gen)):
            if i >= n_batches:
                break
            model(to_device(images, device))
    for m, momentum in saved.items():
        m.momentum = momentum
    model.train(was_training)
    return model


def recomputed_state(model, split: Split, n_batches: int, device, *, batch_size: int = 64, seed: int = 0) -> dict:
    """:func:`recompute_bn_stats`, then the model's state as a CPU copy (``zoo.kit.train.device.state_on_cpu``): the
    weights a strategy returns after re-estimating BatchNorm statistics (a soup, a WiSE-FT point, a re-basin
    merge)."""
    from zoo.kit.train.device import state_on_cpu

    recompute_bn_stats(model, split, n_batches, device, batch_size=batch_size, seed=seed)
    return state_on_cpu(model)
