"""``--format adapter``: a merge written as one PEFT LoRA adapter of the base, not as a full model.

A merge of adapters is a full model (``peft_adapter``: each adapter applied to the base). Written as an adapter,
each weight that moved is stored as its difference to the base, ``D = W_merged − W_base``, factored by a
truncated SVD: ``B = U_r·S_r``, ``A = V_rᵀ`` with ``lora_alpha = r`` (a scale of 1), so that PEFT's
``W + B @ A`` is the best rank-``r`` approximation of the merge. The rank is ``-o rank=R`` (default 16), or the
smallest one keeping ``-o energy=F`` of the delta's energy (the sum of its squared singular values; with both,
the energy's rank is at most ``rank``); per-module ranks that differ from ``r`` go into PEFT's ``rank_pattern``
and ``alpha_pattern``. A layer is read, factored and written one at a time.

What LoRA cannot carry is saved whole, as PEFT's ``modules_to_save`` of its module: a module whose bias, norm
or other tensor moved (a new head, a BatchNorm whose running statistics moved because a full fine-tune was in
the merge), a weight that is not a linear layer's or a 1×1 convolution's. A module LoRA could carry but PEFT
would not (inside a module saved whole) is saved whole too. Unchanged tensors, the BatchNorm statistics of an
adapters-only merge included, are the base's.

Each LoRA module's reconstruction error ``‖D − B·A‖ / ‖D‖`` (Frobenius, from the stored factors) is recorded;
without rank reduction (the rank at least the delta's) it is at float precision and PEFT's model gives the full
merge's logits.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import zoo
from zoo.plugins.formats.peft_files import CONFIG, PREFIX, WEIGHTS

DEFAULT_RANK = 16  # -o rank= when neither rank nor energy is given


def output_options(raw: dict[str, Any]) -> dict[str, Any]:
    """``-o rank=`` / ``-o energy=`` checked: {"rank": int, "energy": float | None}."""
    out: dict[str, Any] = {"rank": DEFAULT_RANK if "energy" not in raw else None, "energy": None}
    if "rank" in raw:
        try:
            out["rank"] = int(str(raw["rank"]))
        except ValueError:
            out["rank"] = 0
        if out["rank"] < 1:
            raise zoo.BadInput(f"-o rank={raw['rank']}: the adapter's rank is a whole number of at least 1")
    if "energy" in raw:
        try:
            energy = float(str(raw["energy"]))
        except ValueError:
            energy = -1.0
        if not 0 < energy <= 1:
            raise zoo.BadInput(f"-o energy={raw['energy']}: the fraction of each delta's energy to keep, above 0 "
                               "and at most 1 (e.g. 0.99)")
        out["energy"] = energy
    return out


def from_full(result, base, options: dict[str, Any], ctx, *, fmt):
    """The full merge ``result`` as a LoRA adapter of ``base`` (:func:`to_adapter`), with the reconstruction
    error per module and, with held-out data, its accuracy (loaded by PEFT on the base) against the full merge's;
    its metrics are the adapter's."""
    import dataclasses
    from types import SimpleNamespace

    # the base as a reader can find it: its Hub repo, else its folder's name (no path of this machine)
    tensors, config, report = to_adapter(result.state_dict, base, rank=options.get("rank"),
                                         energy=options.get("energy"), base_name=base.repo_id or base.name,
                                         revision=base.revision, device=ctx.device)
    like = result.like if result.like is not None and hasattr(result.like, "label_names") else base
    # a head for other classes than the base's (a multi-task merge's task, fine-tunes on new class folders)
    # travels whole; zoo reads its class names back from the report, PEFT needs the base's head reset to them
    classes = like.label_names if like.num_classes != base.num_classes else None
    metrics = None
    if ctx.eval_data:
        model = base.create_model()
        if classes is not None:
            model.reset_classifier(len(classes))
        model = peft_model(model, tensors, config).to(ctx.device)
        metrics = ctx.evaluate_module(model, ctx.eval_split(like)).as_dict()
        report["accuracy"] = {"adapter": metrics["top1"], "full": (result.metrics or {}).get("top1")}
        report["full_metrics"] = result.metrics
    return dataclasses.replace(
        result, state_dict=tensors, config=config, metrics=metrics,
        report={**result.report, "adapter": report, **({"classes": list(classes)} if classes else {})},
        card_sections=[*result.card_sections, card_section(report)], like=SimpleNamespace(format=fmt))


def is_adapter(member) -> bool:
    """Whether a resolved member came from an adapter (applied to its base by ``peft_adapter``)."""
    return bool(getattr(member, "note", {}).get("adapter_of"))


def _meta_modules(base) -> dict[str, Any]:
    """{name: module} of the base's model, built on the meta device (shapes only, no weight read) where its
    format allows, else with its weights."""
    import torch

    try:
        with torch.device("meta"):
            model = base.create_model({k: torch.empty(base.shape(k), device="meta") for k in base.keys()})
    except Exception:  # a format whose loader cannot build on meta tensors
        model = base.create_model()
    return dict(model.named_modules())


def _peft_excludes(whole: str, name: str) -> bool:
    """PEFT's rule: a LoRA target inside (or named like) a module saved whole gets no LoRA."""
    return bool(re.match(rf"(^|.*\.){whole}($|\..*)", name))


def to_adapter(merged, base, *, rank: int | None, energy: float | None, base_name: str,
               revision: str | None = None, device: Any = "cpu") -> tuple[dict, dict, dict]:
    """The merge ``merged`` (a state dict shaped like ``base``) as a LoRA adapter of ``base``: (its tensors by
    PEFT's names, its ``adapter_config.json``, the report: per-module rank and error, the modules saved whole).
    The SVDs run on ``device`` (the run's), in float64."""
    import torch

    from zoo.kit.train import adaptable  # the layers PEFT's LoRA carries exactly: zoo finetune --lora's rule

    keys = list(base.keys())
    modules = _meta_modules(base)
    changed = {k for k in keys if not torch.equal(merged[k], base.read([k])[k])}  # one tensor at a time
    by_module: dict[str, list[str]] = {}
    for k in keys:
        by_module.setdefault(k.rpartition(".")[0], []).append(k)
    lora, whole = [], []
    for k in (k for k in keys if k in changed):
        module = k.rpartition(".")[0]
        if not module:
            raise zoo.BadInput(f"--format adapter: {k!r} moved in the merge and belongs to no module PEFT can "
                               "save whole; write the full model (leave --format out)")
        moved = [t for t in by_module[module] if t in changed]
        if moved == [f"{module}.weight"] and adaptable(modules.get(module)):
            lora.append(module)
        else:
            whole.append(module)
    lora, whole = list(dict.fromkeys(lora)), list(dict.fromkeys(whole))
    while True:  # until PEFT would put LoRA on every LoRA module left
        whole = [m for m in whole if not any(m.startswith(f"{o}.") for o in whole)]  # the outermost: one copy
        excluded = [m for m in lora if any(_peft_excludes(w, m) for w in whole)]
        if not excluded:
            break
        lora = [m for m in lora if m not in excluded]
        whole += [m for m in excluded if not any(m.startswith(f"{w}.") for w in whole)]
    if not lora:
        moved = f"only {', '.join(whole)} moved, which LoRA does not carry" if whole else "it equals the base"
        raise zoo.BadInput(f"--format adapter: no weight of the merge is a LoRA module's ({moved}); write the "
                           "full model (leave --format out)")

    tensors: dict[str, Any] = {}
    ranks: dict[str, int] = {}
    errors: dict[str, float] = {}
    for module in lora:  # one layer at a time: its delta, its SVD, its factors
        key = f"{module}.weight"
        w = merged[key]
        delta = (w.to(device, torch.float64) - base.read([key])[key].to(device, torch.float64)).flatten(1)
        u, s, vh = _top_singular(delta, rank)
        k = _rank(s, rank=rank, energy=energy, eps=torch.finfo(w.dtype).eps * max(delta.shape),
                  total=float(delta.square().sum()))
        b, a = (u[:, :k] * s[:k]).to(w.dtype), vh[:k].to(w.dtype)
        errors[module] = float(torch.linalg.norm(delta - b.double() @ a.double()) / torch.linalg.norm(delta))
        b, a = b.cpu(), a.cpu()
        ranks[module] = k
        if w.dim() == 4:  # a 1×1 convolution's LoRA pair are 1×1 convolutions
            a, b = a[:, :, None, None], b[:, :, None, None]
        tensors[f"{PREFIX}{module}.lora_A.weight"] = a.contiguous()
        tensors[f"{PREFIX}{module}.lora_B.weight"] = b.contiguous()
    for module in whole:
        for key in keys:
            if key.startswith(f"{module}."):
                tensors[f"{PREFIX}{key}"] = merged[key].contiguous()
    config = lora_config(ranks, whole, base_name=base_name, revision=revision)
    report = {"rank": rank, "energy": energy, "r": config["r"],
              "modules": {m: {"rank": ranks[m], "error": errors[m]} for m in lora},
              "saved_whole": whole,
              "max_error": max(errors.values(), default=0.0)}
    return tensors, config, report


#: the randomized SVD's oversampling: singular vectors computed beyond the rank kept
OVERSAMPLE = 8


def _top_singular(delta, rank: int | None):
    """(U, S, Vᵀ) of ``delta``: with a rank cap well below its size, only the top ``rank + OVERSAMPLE`` triplets, by
    torch's randomized SVD (Halko et al.: a range finder with 4 power iterations; exact where the delta's rank is
    below that, as for merged LoRA deltas, and close to the best truncation otherwise — the error reported is
    measured on the factors themselves); seeded, so an output is the same on every run. Without a cap (``energy``
    alone needs the whole spectrum) or for a small matrix, the full SVD."""
    import torch

    q = None if rank is None else rank + OVERSAMPLE
    if q is None or 2 * q >= min(delta.shape):
        return torch.linalg.svd(delta, full_matrices=False)
    devices = [delta.device] if delta.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        u, s, v = torch.svd_lowrank(delta, q=q, niter=4)
    return u, s, v.mT


def _rank(s, *, rank: int | None, energy: float | None, eps: float, total: float | None = None) -> int:
    """The smallest rank keeping ``energy`` of Σ s² (at most ``rank``), else ``rank``; never above the delta's
    numerical rank (singular values above ``eps · s_max``, the rest being the weights' rounding), at least 1.
    ``total``: Σ s² over the whole spectrum (‖D‖²) when ``s`` holds only the top singular values."""
    import torch

    k = int((s > eps * s[0]).sum()) if len(s) else 0
    if energy is not None:
        power = s.double() ** 2
        kept = torch.cumsum(power, 0) / (power.sum() if total is None else total)
        k = int(torch.searchsorted(kept, torch.tensor(energy, dtype=kept.dtype) - 1e-12)) + 1
    if rank is not None:
        k = min(k, rank)
    return max(1, k)


def lora_config(ranks: dict[str, int], whole: list[str], *, base_name: str, revision: str | None) -> dict:
    """PEFT's ``adapter_config.json``: exactly these modules (a full-match pattern), each at its rank with
    ``alpha = rank`` (scale 1); ``r`` the most common rank, the others in ``rank_pattern``/``alpha_pattern``
    (anchored on the full module name: PEFT would match a bare name at the end of longer ones)."""
    from collections import Counter

    from peft import LoraConfig

    r = Counter(ranks.values()).most_common(1)[0][0] if ranks else 1
    other = {f"^{re.escape(m)}": k for m, k in ranks.items() if k != r}
    config = LoraConfig(
        r=r, lora_alpha=r, lora_dropout=0.0, bias="none",
        # PEFT reads a string as a pattern the module's full name must match
        target_modules="|".join(re.escape(m) for m in ranks) if ranks else None,
        modules_to_save=list(whole) or None, rank_pattern=other, alpha_pattern=dict(other),
        base_model_name_or_path=base_name, revision=revision)
    return json.loads(json.dumps(config.to_dict(), default=_jsonable))


def _jsonable(value):
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "value"):  # PEFT's enums
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON")


def write_files(folder: Path, tensors: dict, config: dict) -> None:
    """The adapter as ``PeftModel.save_pretrained`` lays it out."""
    from safetensors.torch import save_file

    (folder / CONFIG).write_text(json.dumps(config, indent=2))
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})


def peft_model(base_model, tensors: dict, config: dict):
    """``base_model`` with the adapter loaded by PEFT (``PeftModel.from_pretrained``, as a user loads it)."""
    import tempfile

    from peft import PeftModel

    with tempfile.TemporaryDirectory() as tmp:
        write_files(Path(tmp), tensors, config)
        return PeftModel.from_pretrained(base_model, tmp).eval()


def card_section(report: dict[str, Any], *, shown: int = 20) -> str:
    """The card's paragraph: the rank chosen, the reconstruction error per module (the worst ``shown``), the
    modules saved whole, and the accuracy against the full merge's."""
    modules = report["modules"]
    how = (f"the smallest rank keeping {report['energy']} of each delta's energy"
           + (f", at most {report['rank']}" if report["rank"] else "")) if report["energy"] else f"rank {report['rank']}"
    lines = [f"### A merged LoRA adapter of the base\n\nThis merge is stored as a PEFT LoRA adapter: each moved weight's "
             f"difference to the base, factored by a truncated SVD ({how}; `lora_alpha` = rank). "
             f"{len(modules)} LoRA modules; largest relative reconstruction error ‖D − B·A‖/‖D‖: "
             f"{report['max_error']:.3g}."]
    if report.get("accuracy"):
        acc = report["accuracy"]
        lines.append(f"Held-out top-1: {acc['adapter']:.4f} with this adapter on the base (loaded by PEFT), "
                     f"{acc['full']:.4f} for the full merged model.")
    if modules:
        worst = sorted(modules.items(), key=lambda kv: -kv[1]["error"])[:shown]
        rows = "\n".join(f"| `{m}` | {v['rank']} | {v['error']:.3g} |" for m, v in worst)
        more = f" (the {shown} largest errors; all in zoo.json)" if len(modules) > shown else ""
        lines.append(f"| module | rank | error |\n|---|---|---|\n{rows}\n\nReconstruction error per module{more}.")
    if report["saved_whole"]:
        lines.append("Saved whole (`modules_to_save`: tensors LoRA does not carry moved): "
                     + ", ".join(f"`{m}`" for m in report["saved_whole"]) + ".")
    return "\n\n".join(lines)
