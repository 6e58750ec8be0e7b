"""LoRA adapters of the digits-demo zoo's base, trained here with PEFT: conftest.py's session fixture
``adapters``, which test_adapters.py and test_adapter_output.py share (one training)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file


def train_adapter(base: Path, folder: Path, split, *, r: int, targets: list[str], seed: int) -> dict:
    """A LoRA adapter of ``base`` trained a few steps on ``split`` and saved by PEFT; returns PEFT's merged
    state dict (``merge_and_unload``), the full model the adapter stands for."""
    from peft import LoraConfig, get_peft_model

    import zoo

    torch.manual_seed(seed)
    model = zoo.load_member(str(base)).create_model()
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets,
                                                  modules_to_save=["classifier"]))
    peft_model.peft_config["default"].base_model_name_or_path = str(base)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    peft_model.eval()  # BatchNorm's statistics stay the base's: an adapter does not carry them
    for step, (images, targets_) in enumerate(split.batches(32, shuffle=True, generator=gen)):
        loss = torch.nn.functional.cross_entropy(peft_model(images), targets_)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 15:
            break
    peft_model.save_pretrained(folder)
    return {k: v.detach().clone() for k, v in peft_model.merge_and_unload().state_dict().items()}


def make_adapters(root: Path, digits_zoo: Path) -> dict[str, Path]:
    """lora-a (rank 4 on the 1×1 convolutions) and lora-b (rank 16 on the projections alone), each beside the
    full model PEFT merges from it (full-a, full-b, in timm's layout)."""
    import zoo
    from zoo.kit.data import data_config, load_split

    base = digits_zoo / "members" / "base"
    member = zoo.load_member(str(base))
    split = load_split(digits_zoo / "data" / "train", data_config(member.pretrained_cfg),
                       label_names=member.label_names, num_classes=member.num_classes)
    out = {"base": base}
    for name, r, targets, seed in (("a", 4, ["conv_pw", "conv_pwl", "conv_head"], 1), ("b", 16, ["conv_pwl"], 2)):
        merged = train_adapter(base, root / f"lora-{name}", split, r=r, targets=targets, seed=seed)
        full = root / f"full-{name}"
        full.mkdir()
        shutil.copy(base / "config.json", full / "config.json")
        save_file({k: v.contiguous() for k, v in merged.items()}, str(full / "model.safetensors"))
        out[f"lora-{name}"], out[f"full-{name}"] = root / f"lora-{name}", full
    return out
