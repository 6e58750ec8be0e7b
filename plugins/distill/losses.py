"""The distillation targets and losses: MEAL V2 (mean of the teachers' softmax, no labels) and Hinton's KD,
and MEAL V2's discriminator on the outputs."""

from __future__ import annotations


def meal_v2_loss(student_logits, target_probs):
    """−meanᵢ Σ_c p̄ᵢ(c) log softmax(sᵢ)(c): the soft-target cross-entropy; no labels."""
    from timm.loss import SoftTargetCrossEntropy

    return SoftTargetCrossEntropy()(student_logits, target_probs)


def kd_loss(student_logits, target_soft, labels, temperature: float, alpha: float):
    """α·T²·KL(target ‖ softmax(s/T)) (batchmean) + (1−α)·CE(s, y); ``target_soft`` already at temperature T."""
    import torch.nn.functional as F

    kl = F.kl_div(F.log_softmax(student_logits / temperature, dim=1), target_soft, reduction="batchmean")
    loss = alpha * temperature ** 2 * kl
    if alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(student_logits, labels)
    return loss


def teacher_target(teacher_logits: list, loss: str, temperature: float, maps: list | None = None):
    """The mean of the teachers' softmax (at temperature T for KD, plain for MEAL V2).

    ``maps[i]`` (Z_i × C, or None) carries teacher i's classes onto the student's through a label map:
    the probability of classes mapped together is added, that of dropped classes renormalised away.
    """
    import torch

    t = temperature if loss == "kd" else 1.0
    probs = []
    for i, lg in enumerate(teacher_logits):
        p = lg.float().div(t).softmax(dim=1)
        if maps and maps[i] is not None:
            m = maps[i].to(p.device)
            p = p @ m  # exact: each output sums the probabilities mapped onto it
            if (m.sum(dim=1) == 0).any():  # some classes dropped: renormalise what is left
                p = p / p.sum(dim=1, keepdim=True).clamp_min(1e-12)
        probs.append(p)
    return torch.stack(probs).mean(dim=0)


def discriminator(num_classes: int):
    """MEAL V2's discriminator on output distributions: 1×1 convolutions (as linear layers) C → C/8 → 2."""
    import torch.nn as nn

    hidden = max(8, num_classes // 8)
    return nn.Sequential(nn.Linear(num_classes, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                         nn.LeakyReLU(0.2), nn.Linear(hidden, 2))
