"""Held-out evaluation: logits of a model on a Split, and the metrics zoo reports (top-1, NLL, ECE,
mean confidence)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from zoo.kit.data import Split

ECE_BINS = 15


@dataclass
class Metrics:
    top1: float
    nll: float
    ece: float
    n: int
    confidence: float = float("nan")  # mean max-softmax: with ECE, shows over-confidence (e.g. out of distribution)
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        return {"top1": self.top1, "nll": self.nll, "ece": self.ece, "confidence": self.confidence, "n": self.n,
                **self.extra}


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = ECE_BINS) -> float:
    """ECE with equal-width confidence bins: Σ_b |B_b|/N · |acc(B_b) − conf(B_b)|."""
    import torch

    conf, pred = probs.max(dim=1)
    correct = pred.eq(targets).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=conf.dtype)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.double().mean().item() * abs(correct[in_bin].mean().item() - conf[in_bin].double().mean().item())
    return float(ece)


def metrics_from_logits(logits: torch.Tensor, targets: torch.Tensor,
                        extra: dict[str, Callable[[Any, Any], float]] | None = None) -> Metrics:
    import torch.nn.functional as F

    logits = logits.float()
    probs = logits.softmax(dim=1)
    return Metrics(
        top1=float(logits.argmax(dim=1).eq(targets).float().mean()),
        nll=float(F.cross_entropy(logits, targets)),
        ece=expected_calibration_error(probs, targets),
        n=int(targets.numel()),
        confidence=float(probs.max(dim=1).values.mean()),
        extra={name: float(fn(logits, targets)) for name, fn in (extra or {}).items()},
    )


def predict(model, split: Split, device, *, batch_size: int = 256, amp: bool = True) -> torch.Tensor:
    """Logits of ``model`` on every image of ``split`` (in order), on ``device``."""
    import torch

    from zoo.kit.train.device import autocast, to_device

    model = model.to(device).eval()
    out = []
    with torch.inference_mode(), autocast(device, amp):
        for images, _ in split.batches(batch_size):
            out.append(model(to_device(images, device)).float().cpu())
    return torch.cat(out)


def evaluate_model(model, split: Split, device, *, extra=None, batch_size: int = 256) -> Metrics:
    return metrics_from_logits(predict(model, split, device, batch_size=batch_size), split.targets, extra)


def macs_per_image(model, input_size: tuple[int, ...]) -> int:
    """Multiply–accumulates of one image of ``input_size`` (C, H, W) through ``model``: torch's flop counter
    (``torch.utils.flop_counter``), FLOPs / 2. The image is made on the model's device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_size, device=device))
    return counter.get_total_flops() // 2
