"""LoRA fine-tuning through PEFT: ``zoo finetune --lora r=8,alpha=16,targets=qkv+proj``.

The adapter is PEFT's own (``peft.get_peft_model`` with a ``LoraConfig``); zoo only chooses what it wraps and
hands the wrapped model (``wrap_lora``) to the kit's one loop (``zoo.kit.train.recipe.fit``), so the optimizer, schedule,
checkpoints and ``--resume`` are those of any fine-tune.

- Targets: by default every ``nn.Linear`` and 1×1 convolution of the model except its classifier (the layers
  zoo's adapter format merges: ``plugins/formats/peft_adapter.py``); ``targets=`` names module-name suffixes,
  PEFT's matching rule (``qkv`` matches ``blocks.0.attn.qkv``).
- The classifier (``get_classifier()``) is always trained whole and saved whole (PEFT's ``modules_to_save``):
  a new head for new class folders has to travel with the adapter, and the base's head is adapted too.
- BatchNorm: an adapter carries no running statistics, so training keeps the base's (``freeze_bn``); the
  BatchNorm scale and shift are frozen with the rest of the base.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from zoo.kit.strategy.errors import BadInput

KEYS = ("r", "alpha", "targets", "dropout", "rslora")
SPELLING = "r=N[,alpha=A][,targets=NAME+NAME...][,dropout=P][,rslora=true|false]"


@dataclass(frozen=True)
class LoraSpec:
    """What ``--lora`` says: the rank, ``lora_alpha`` (default 2·r), the target module-name suffixes (None: the
    default, every linear layer and 1×1 convolution but the classifier), LoRA dropout and rsLoRA scaling."""

    r: int
    alpha: float
    targets: tuple[str, ...] | None = None
    dropout: float = 0.0
    rslora: bool = False

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["targets"] = list(self.targets) if self.targets is not None else None
        return out


def parse_lora(text: str) -> LoraSpec:
    """``r=8,alpha=16,targets=qkv+proj,dropout=0.1,rslora=true`` as a :class:`LoraSpec`; anything else is one
    BadInput naming the key and the spelling (checked before any work)."""
    def bad(why: str) -> BadInput:
        return BadInput(f"--lora {text!r}: {why}; write {SPELLING}")

    values: dict[str, str] = {}
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            raise bad("an empty item")
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not value:
            raise bad(f"{part!r} is not KEY=VALUE")
        if key not in KEYS:
            raise bad(f"unknown key {key!r} (keys: {', '.join(KEYS)})")
        if key in values:
            raise bad(f"{key} given twice")
        values[key] = value
    if "r" not in values:
        raise bad("the rank r is required")
    try:
        r = int(values["r"])
    except ValueError:
        raise bad(f"r={values['r']!r} is not a whole number") from None
    if r < 1:
        raise bad(f"r={r}: the rank must be at least 1")
    alpha = 2.0 * r
    if "alpha" in values:
        try:
            alpha = float(values["alpha"])
        except ValueError:
            raise bad(f"alpha={values['alpha']!r} is not a number") from None
        if not alpha > 0:
            raise bad(f"alpha={values['alpha']}: must be above 0")
    dropout = 0.0
    if "dropout" in values:
        try:
            dropout = float(values["dropout"])
        except ValueError:
            raise bad(f"dropout={values['dropout']!r} is not a number") from None
        if not 0.0 <= dropout < 1.0:
            raise bad(f"dropout={values['dropout']}: must be in [0, 1)")
    rslora = False
    if "rslora" in values:
        flag = values["rslora"].lower()
        if flag not in ("true", "false", "1", "0", "yes", "no"):
            raise bad(f"rslora={values['rslora']!r}: true or false")
        rslora = flag in ("true", "1", "yes")
    targets = None
    if "targets" in values:
        names = [t.strip() for t in values["targets"].split("+")]
        if any(not t for t in names):
            raise bad(f"targets={values['targets']!r}: an empty module name (join names with '+')")
        targets = tuple(dict.fromkeys(names))
    return LoraSpec(r=r, alpha=alpha, targets=targets, dropout=dropout, rslora=rslora)


def classifier_name(model) -> str:
    """The name of ``model.get_classifier()`` among its modules (timm's interface; a transformers member's too)."""
    head = model.get_classifier()
    for name, module in model.named_modules():
        if module is head and name:
            return name
    raise BadInput(f"{type(model).__name__}: its classifier is not one of its named modules; LoRA saves it whole "
                   "by name (modules_to_save)")


def adaptable(module) -> bool:
    """A layer zoo's adapter format merges: a linear layer, or a 1×1 convolution without groups."""
    import torch

    if isinstance(module, torch.nn.Linear):
        return True
    return (isinstance(module, torch.nn.Conv2d) and tuple(module.kernel_size) == (1, 1) and module.groups == 1)


def target_modules(model, spec: LoraSpec, *, who: str) -> list[str]:
    """The full names of the modules LoRA wraps: the default, or those whose name ends with a ``targets=``
    name (PEFT's rule). Refuses a name that matches nothing, one that matches a layer of another kind
    (zoo's adapter format merges LoRA of linear layers and 1×1 convolutions), and the classifier (saved whole)."""
    head = classifier_name(model)
    inside_head = lambda name: name == head or name.startswith(head + ".")  # noqa: E731
    modules = [(name, m) for name, m in model.named_modules() if name]
    if spec.targets is None:
        chosen = [name for name, m in modules if adaptable(m) and not inside_head(name)]
        if not chosen:
            raise BadInput(f"--lora: {who} has no linear layer or 1×1 convolution outside its classifier to adapt")
        return chosen
    chosen = []
    for target in spec.targets:
        hits = [(name, m) for name, m in modules if name == target or name.endswith("." + target)]
        if not hits:
            raise BadInput(f"--lora targets={target!r}: no module of {who} is named so (a name or the end of one, "
                           f"e.g. {_examples(model, head)})")
        for name, m in hits:
            if inside_head(name):
                raise BadInput(f"--lora targets={target!r} names the classifier {head!r}, which is trained and "
                               "saved whole; leave it out")
            if not adaptable(m):
                raise BadInput(f"--lora targets={target!r}: {name!r} is a {type(m).__name__}; LoRA adapters zoo "
                               "merges adapt linear layers and 1×1 convolutions")
            chosen.append(name)
    return list(dict.fromkeys(chosen))


def _examples(model, head: str) -> str:
    """A few suffixes of adaptable modules, for a message."""
    leaves = [name.rpartition(".")[2] for name, m in model.named_modules()
              if name and adaptable(m) and not (name == head or name.startswith(head + "."))]
    return ", ".join(list(dict.fromkeys(leaves))[:4]) or "none"


def wrap_lora(model, spec: LoraSpec, *, who: str):
    """``model`` wrapped by PEFT for ``spec``: only the LoRA matrices and the classifier train."""
    from peft import LoraConfig, get_peft_model

    targets = target_modules(model, spec, who=who)
    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, target_modules=targets, lora_dropout=spec.dropout,
                        use_rslora=spec.rslora, modules_to_save=[classifier_name(model)], bias="none")
    return get_peft_model(model, config)
