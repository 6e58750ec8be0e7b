"""The model card (README.md) of a result, built with huggingface_hub's ModelCard."""

from __future__ import annotations

import json
from typing import Any

from zoo.strategy import Combined


def _member_row(m: dict[str, Any], role: str = "") -> str:
    rev = (m.get("revision") or "")[:12] or "local"
    weights = next((v for k, v in m["files"].items() if k.endswith((".safetensors", ".bin", ".pth"))), "")
    return f"| {m['name']}{role} | `{m['spec']}` | {rev} | `{weights[:16]}…` |"


def _timm_usage(name: str) -> str:
    return f"""It is an ordinary timm model:

```python
import timm
model = timm.create_model("hf-hub:ORG/{name}", pretrained=True)  # or "local-dir:PATH" for the folder
```"""


def build(combined: Combined, *, name: str, eval_data: str | None, extra_sections: list[str]) -> Any:
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    # the base first: it is what every member was fine-tuned from
    base_models = [m["repo_id"] for m in ([combined.base] if combined.base else []) + combined.members
                   if m.get("repo_id")]
    base_models = list(dict.fromkeys(base_models))
    eval_results = []
    if combined.metrics:
        for key, label in (("top1", "accuracy"), ("nll", "nll"), ("ece", "ece")):
            if key in combined.metrics:
                eval_results.append(EvalResult(
                    task_type="image-classification", dataset_type="imagefolder",
                    dataset_name=eval_data or "held-out", dataset_split="validation",
                    metric_type=label, metric_value=round(float(combined.metrics[key]), 6)))
    data = ModelCardData(
        library_name="timm" if combined.usage is None else "zoo", pipeline_tag="image-classification", model_name=name,
        tags=["zoo", "model-merging", f"zoo-{combined.strategy}", "image-classification"],
        base_model=base_models or None, eval_results=eval_results or None, license=None,
    )
    rows = ([_member_row(combined.base, " (base)")] if combined.base else []) + [_member_row(m) for m in combined.members]
    figures = "\n\n".join(f"![{f}]({f})" for f in combined.figures)
    metrics = ""
    if combined.metrics:
        metrics = ("| metric | value |\n|---|---|\n" + "\n".join(
            f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in combined.metrics.items()))
    body = f"""---
{data.to_yaml()}
---

# {name}

A `{combined.strategy}` of {len(combined.members)} member{'s' if len(combined.members) != 1 else ''}\
{f" onto the base `{combined.base['name']}`" if combined.base else ""}, made with zoo.
{combined.usage or _timm_usage(name)}

## Members

| member | source | revision | sha256 (weights) |
|---|---|---|---|
{chr(10).join(rows)}

## Held-out evaluation

{metrics or "No held-out data was given, so nothing was measured."}
{f"(data: `{eval_data}`)" if eval_data and metrics else ""}

{figures}

{(chr(10) * 2).join(combined.card_sections + extra_sections)}

## Recipe

Strategy `{combined.strategy}` with options:

```json
{json.dumps(combined.options, indent=2)}
```

`zoo.json` in this repository pins every member (commit sha, sha256 of each file) and the options: enough to
reproduce these weights.
"""
    return ModelCard(body)
