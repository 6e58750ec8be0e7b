"""Device choice and the GPU niceties (AMP, pinned memory) in one place."""

from __future__ import annotations

import contextlib

from zoo.kit.strategy.errors import BadInput

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto"):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise BadInput(f"--device {name!r}: use auto, cpu, cuda or cuda:N") from None


def autocast(device, enabled: bool = True):
    """float16 autocast on CUDA; plain float32 on the CPU (where it would only be slower)."""
    import torch

    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def to_device(t, device):
    """Copy a CPU batch to the device, through pinned memory on CUDA so the copy overlaps compute."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def grad_scaler(device):
    """The AMP loss scaler: fp16 autocast on CUDA needs it; on the CPU it is off (a pass-through)."""
    import torch

    return torch.amp.GradScaler("cuda", enabled=device.type == "cuda")


def amp_step(loss, opt, scaler, sched, step: int) -> int:
    """One optimizer step through ``scaler`` and the per-step schedule update; returns the new step count.

    Fine-tuning, distillation and stitching all train with it.
    """
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    sched.step_update(step + 1)
    return step + 1


def state_on_cpu(model_or_state) -> dict:
    """A CPU copy of a module's state dict (or of a mapping of tensors), detached and contiguous: what a
    strategy returns in ``Combined.state_dict``. Always a copy, so a model trained or reused afterwards (the
    one ``ctx.model`` keeps) cannot change it."""
    import torch

    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
