"""The model card (README.md) of a result: one template (``modelcard.md`` beside this file) rendered by
huggingface_hub's ``ModelCard.from_template``, with the metadata as ``ModelCardData`` and the sections
that strategies fill through the kit (``zoo.kit.card.Section``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zoo.kit.card import sections
from zoo.kit.strategy import Combined

TEMPLATE = Path(__file__).with_name("modelcard.md")


def _member_row(m: dict[str, Any], role: str = "") -> list[str]:
    rev = (m.get("revision") or "")[:12] or "local"
    weights = next((v for k, v in m["files"].items() if k.endswith((".safetensors", ".bin", ".pth"))), "")
    return [f"{m['name']}{role}", f"`{m['spec']}`", rev, f"`{weights[:16]}…`"]


def _timm_usage(name: str) -> str:
    return f"""It is an ordinary timm model:

```python
import timm
model = timm.create_model("hf-hub:ORG/{name}", pretrained=True)  # or "local-dir:PATH" for the folder
```"""


def build(combined: Combined, *, name: str, eval_data: str | None, extra_sections: list) -> Any:
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    # the base first: it is what every member was fine-tuned from; a member that is a local zoo output
    # stands for the Hub repos it was made from (its lineage)
    base_models: list[str] = []
    relation = "merge" if combined.relation == "" else combined.relation
    if relation is not None:
        for m in ([combined.base] if combined.base else []) + combined.members:
            base_models += [m["repo_id"]] if m.get("repo_id") else list(m.get("lineage") or [])
    base_models = list(dict.fromkeys(base_models))
    eval_results = []
    if combined.metrics:
        for key, label in (("top1", "accuracy"), ("nll", "nll"), ("ece", "ece")):
            if key in combined.metrics:
                eval_results.append(EvalResult(
                    task_type="image-classification", dataset_type="imagefolder",
                    dataset_name=eval_data or "held-out", dataset_split="validation",
                    metric_type=label, metric_value=round(float(combined.metrics[key]), 6)))
    fmt = combined.like.format if combined.like is not None else None
    usage = combined.usage or (fmt.usage(name) if fmt is not None else None)
    data = ModelCardData(
        library_name=(fmt.library_name if fmt is not None else "timm") if combined.usage is None else "zoo", pipeline_tag="image-classification", model_name=name,
        tags=["zoo", "model-merging", f"zoo-{combined.strategy}", "image-classification"],
        base_model=base_models or None, eval_results=eval_results or None, license=combined.license,
    )
    if base_models:  # how the Hub's model tree files it (merge, finetune, ...)
        data.base_model_relation = relation
    if combined.metrics:
        evaluation = sections.table(["metric", "value"], [[k, v] for k, v in combined.metrics.items()])
        if eval_data:
            evaluation += f"\n\n(data: `{eval_data}`)"
    else:
        evaluation = "No held-out data was given, so nothing was measured."
    n = len(combined.members)
    onto = f" onto the base `{combined.base['name']}`" if combined.base else ""
    return ModelCard.from_template(
        data, template_path=str(TEMPLATE), model_name=name,
        summary=f"A `{combined.strategy}` of {n} member{'s' if n != 1 else ''}{onto}, made with zoo.",
        usage=usage or _timm_usage(name),
        members_table=sections.table(["member", "source", "revision", "sha256 (weights)"],
                                     ([_member_row(combined.base, " (base)")] if combined.base else [])
                                     + [_member_row(m) for m in combined.members]),
        evaluation=evaluation, figures=list(combined.figures),
        sections=[sections.render(s) for s in [*combined.card_sections, *extra_sections]],
        strategy=combined.strategy, options_json=json.dumps(combined.options, indent=2))
