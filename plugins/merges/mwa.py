"""MWA — Metrics-Weighted Averaging of checkpoints (Yu & Choi 2025, "Parameter-Efficient Checkpoint
Merging via Metrics-Weighted Averaging").

θ = Σᵢ wᵢθᵢ with weights from each checkpoint's training metric and one penalty factor p:

- ``by=loss``: wᵢ ∝ ℓᵢ^(−p) (a lower training loss weighs more);
- ``by=step``: wᵢ ∝ sᵢ^p (a later checkpoint weighs more);

normalised to sum to 1; p = 0 is the uniform average, a larger p moves the weight towards the best
(or last) checkpoint. The paper's exact formula could not be retrieved where zoo was written: this
power form is ours (docs/algorithms.md says so). The metrics come from each member's ``zoo.json``
training history (the last row ``zoo finetune`` wrote: its ``loss`` and ``step``), from a transformers /
PEFT ``Trainer`` checkpoint's ``trainer_state.json`` (its ``global_step`` and the last training loss logged
by then), or from the ``losses`` / ``steps`` options, one value per member.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import zoo

from .common import weighted

if TYPE_CHECKING:  # pragma: no cover
    import torch


def metric_of(member, by: str) -> float | None:
    """The training loss (or step) a member's zoo.json history ends with, else the one of a transformers /
    PEFT ``Trainer`` checkpoint (its ``trainer_state.json``); None without either."""
    history = ((member.recipe() or {}).get("report") or {}).get("history") or []
    if not history:
        return trainer_metric(member, by)
    last = history[-1]
    if by == "loss":
        return last.get("loss")
    return last.get("step", last.get("epoch"))


def trainer_metric(member, by: str) -> float | None:
    """A ``Trainer`` checkpoint's (``checkpoint-N/``) step — its ``global_step`` — or its training loss: the last
    ``loss`` logged in ``log_history`` at or before that step; None when the folder holds no trainer_state.json."""
    import json

    path = member.root / "trainer_state.json" if member.root is not None else None
    if path is None or not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise zoo.BadInput(f"member {member.name}: its trainer_state.json is not readable JSON ({e})") from None
    step = state.get("global_step")
    if by == "step":
        return step
    logged = [row for row in state.get("log_history") or []
              if "loss" in row and (step is None or row.get("step", 0) <= step)]
    return logged[-1]["loss"] if logged else None


def mwa_weights(metrics: list[float], by: str, penalty: float) -> list[float]:
    """wᵢ ∝ ℓᵢ^(−p) (loss) or sᵢ^p (step), normalised to sum 1."""
    raw = [m ** (-penalty) if by == "loss" else m ** penalty for m in metrics]
    total = sum(raw)
    return [r / total for r in raw]


def check(options) -> None:
    if options.penalty < 0:
        raise zoo.BadInput(f"option penalty={options.penalty}: must be ≥ 0 (0 is the uniform average)")
    for name in ("losses", "steps"):
        for v in getattr(options, name) or []:
            if v <= 0:
                raise zoo.BadInput(f"option {name}: every value must be positive, got {v}")


def prepare(members, base, options, ctx) -> dict:
    given = options.losses if options.by == "loss" else options.steps
    if given is not None:
        metrics, source = list(given), "options"
    else:
        metrics = [metric_of(m, options.by) for m in members]
        missing = [m.name for m, v in zip(members, metrics) if v is None]
        if missing:
            flag = "losses" if options.by == "loss" else "steps"
            raise zoo.BadInput(f"MWA weights checkpoints by their training {options.by}, but "
                               f"{', '.join(missing)} has no training history in its zoo.json (zoo finetune "
                               f"writes one) nor a Trainer's trainer_state.json; give one value per member with "
                               f"-o {flag}=…")
        from_zoo = all(((m.recipe() or {}).get("report") or {}).get("history") for m in members)
        source = "zoo.json training history" if from_zoo else "training history (zoo.json, trainer_state.json)"
    bad = [m.name for m, v in zip(members, metrics) if not v > 0]
    if bad:
        raise zoo.BadInput(f"MWA: the training {options.by} of {', '.join(bad)} is not positive")
    weights = mwa_weights([float(v) for v in metrics], options.by, options.penalty)
    return {"by": options.by, "metrics": metrics, "weights": weights, "source": source}


@zoo.merge_method("mwa", "metrics-weighted average of checkpoints: weights from training loss or step and one "
                  "penalty factor (Yu & Choi 2025)", prepare=prepare, check=check,
                  statistics="merge", report=lambda stats, options: {"mwa": stats})
def mwa(tensors: list[torch.Tensor], base: torch.Tensor | None, *, stats,
        by: Literal["loss", "step"] = zoo.option("loss", "weigh by training loss (lower weighs more) or by step "
                                                  "(later weighs more)"),
        penalty: float = zoo.option(1.0, "p: wᵢ ∝ lossᵢ^(−p) or stepᵢ^p; 0 is the uniform average", min=0),
        losses: list[float] | None = zoo.option(None, "training loss of each member (default: from its zoo.json)"),
        steps: list[float] | None = zoo.option(None, "training step of each member (default: from its zoo.json)"),
        ) -> torch.Tensor:
    return weighted(tensors, stats["weights"])
