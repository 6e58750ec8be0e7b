"""Bare .safetensors members given with --arch: their class count comes from the classifier tensor's
shape in the file's header, with no model built (a random init of a ViT-L costs seconds and 1.2 GiB)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import torch
from safetensors.torch import load_file, save_file

# Run in a fresh interpreter: torch and timm are imported first, so the peak RSS measured around the
# resolution is only what resolving the member itself costs.
_RESOLVE = """
import json, resource, sys
from pathlib import Path
import torch, timm  # noqa: F401  (their import is not what is measured)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
from zoo.kit.members import member
m = member.from_file(Path(sys.argv[1]), spec=sys.argv[1], name="m", arch=sys.argv[2])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"num_classes": m.num_classes, "grew_mib": (after - before) / 1024}))
"""

_CACHED = """
import json, sys
from pathlib import Path
from zoo.kit.members import member
m = member.from_file(Path(sys.argv[1]), spec=sys.argv[1], name="m", arch=sys.argv[2])
print(json.dumps({"num_classes": m.num_classes, "timm_imported": "timm" in sys.modules}))
"""


def _run(code: str, *args, cache) -> dict:
    env = {**os.environ, "ZOO_CACHE": str(cache)}
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_raw_vit_large_class_count_from_header_alone(tmp_path):
    # only the head of a ViT-L, with 37 classes (timm's default is 1000): building the model and
    # reading its config would cost ~1.2 GiB of fp32 parameters; the header is enough
    f = tmp_path / "head-only.safetensors"
    save_file({"head.weight": torch.zeros(37, 1024), "head.bias": torch.zeros(37)}, str(f))
    cache = tmp_path / "zoo-cache"  # empty: timm's registry is asked
    got = _run(_RESOLVE, f, "vit_large_patch16_224", cache=cache)
    assert got["num_classes"] == 37
    assert got["grew_mib"] < 200, got  # a random init of vit_large_patch16_224 is 1160 MiB
    # the classifier's name is remembered for this timm version: the next run needs no timm at all
    again = _run(_CACHED, f, "vit_large_patch16_224", cache=cache)
    assert again == {"num_classes": 37, "timm_imported": False}


def test_distilled_head_and_headless_encoder(tmp_path):
    from zoo.kit.members import member

    # DeiT distilled: timm names two classifiers, ("head", "head_dist")
    f = tmp_path / "deit.safetensors"
    save_file({"head.weight": torch.zeros(5, 192), "head_dist.weight": torch.zeros(5, 192)}, str(f))
    m = member.from_file(f, spec=str(f), name="deit", arch="deit_tiny_distilled_patch16_224")
    assert m.num_classes == 5
    # a file with no classifier tensor has no classes (as before)
    g = tmp_path / "trunk.safetensors"
    save_file({"cls_token": torch.zeros(1, 1, 192)}, str(g))
    assert member.from_file(g, spec=str(g), name="t", arch="vit_tiny_patch16_224").num_classes == 0


def test_meta_fallback_builds_nothing():
    from timm.models import get_pretrained_cfg

    from zoo.kit.members.timm_format import _meta_model

    model = _meta_model("vit_large_patch16_224")
    assert all(p.device.type == "meta" for p in model.parameters())
    assert model.pretrained_cfg["classifier"] == get_pretrained_cfg("vit_large_patch16_224").classifier


def test_soup_of_raw_files_writes_the_config_it_always_did(tmp_path, ingredients, zoo_cli):
    raw = []
    for i, folder in enumerate(ingredients[:3]):
        raw.append(tmp_path / f"m{i}.safetensors")
        shutil.copy(folder / "model.safetensors", raw[-1])
    zoo_cli("combine", "-s", "soup", *sum((["-m", str(p)] for p in raw), []), "--arch", "test_efficientnet",
            "--out", tmp_path / "raw")
    zoo_cli("combine", "-s", "soup", *sum((["-m", str(p)] for p in ingredients[:3]), []), "--out", tmp_path / "dir")
    folder_cfg = json.loads((tmp_path / "dir" / "config.json").read_text())
    # what a soup of raw files wrote before this change (the model was built to find its classifier)
    assert json.loads((tmp_path / "raw" / "config.json").read_text()) == {
        "architecture": "test_efficientnet", "num_classes": folder_cfg["num_classes"]}
    assert folder_cfg["num_classes"] == 10  # not timm's default of 1000: it came from the header
    a, b = load_file(str(tmp_path / "raw" / "model.safetensors")), load_file(str(tmp_path / "dir" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
