"""`zoo discover BASE --check` over a Hub tree whose fine-tunes come in both member formats, on a local Hub
(olah + the front of tests/hubserver.py on 127.0.0.1).

    python bench/discover_formats.py --work /tmp/zoo-discover-formats

The base is a transformers ViT (``ViTForImageClassification``, digits labels). Its fine-tunes on the Hub,
each with a card naming the base (``base_model_relation: finetune``): N in transformers' layout, N the
same fine-tunes converted to timm's (``zoo combine -s soup -m FT --format timm``: the exact conversion),
one of another architecture (a transformers ResNet), a text classifier (BERT) and a ViT whose config maps
to the repo's own code (``auto_map``). The check is one ``python -m zoo discover BASE --check --json``
process with an empty huggingface_hub cache; the table and the per-format count are printed as Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
ORG = "bench-formats"
LABELS = {str(i): str(i) for i in range(10)}


def card(base: str) -> str:
    return f"---\nbase_model: {base}\nbase_model_relation: finetune\n---\n\n# a fine-tune of {base}\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/zoo-discover-formats"))
    ap.add_argument("--fine-tunes", type=int, default=4, help="fine-tunes in each format")
    args = ap.parse_args()
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    os.environ["HF_HUB_DISABLE_XET"] = "1"
    from hubserver import Hub

    import torch
    from transformers import (BertConfig, BertForSequenceClassification, ResNetConfig, ResNetForImageClassification,
                              ViTConfig, ViTForImageClassification, ViTImageProcessor)

    hub = Hub(args.work / "hub")
    os.environ["HF_ENDPOINT"] = hub.endpoint
    env = {**os.environ, "HF_HOME": str(args.work / "hf-home"), "ZOO_CACHE": str(args.work / "zoo-cache"),
           "ZOO_DISABLE_PLUGIN_AUTOLOAD": "1"}
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    labels = dict(id2label=LABELS, label2id={v: int(k) for k, v in LABELS.items()})

    def save(name: str, model, base: str | None) -> Path:
        folder = args.work / "repos" / name
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        if base:
            (folder / "README.md").write_text(card(base))
        return folder

    torch.manual_seed(0)
    vit = ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2,
                                              num_attention_heads=3, intermediate_size=96, layer_norm_eps=1e-6,
                                              **labels))
    base = f"{ORG}/vit-base"
    folders = {"vit-base": save("vit-base", vit, None)}
    for i in range(args.fine_tunes):
        with torch.no_grad():
            for p in vit.parameters():
                p.add_(0.01 * torch.randn_like(p))
        folders[f"vit-ft-{i}"] = save(f"vit-ft-{i}", vit, base)
        timm_out = args.work / "repos" / f"timm-ft-{i}"
        subprocess.run([sys.executable, "-m", "zoo", "--quiet", "combine", "-s", "soup", "-m", folders[f"vit-ft-{i}"],
                        "--format", "timm", "--out", timm_out], env=env, check=True)
        (timm_out / "README.md").write_text(card(base))
        folders[f"timm-ft-{i}"] = timm_out
    resnet = ResNetForImageClassification(ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                                                       layer_type="basic", **labels))
    folders["resnet-ft"] = save("resnet-ft", resnet, base)
    bert = args.work / "repos" / "bert-ft"
    BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32)).save_pretrained(bert)
    (bert / "README.md").write_text(card(base))
    folders["bert-ft"] = bert
    remote = args.work / "repos" / "remote-ft"
    shutil.copytree(folders["vit-ft-0"], remote)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModelForImageClassification": "modeling_mine.MyViT"}
    (remote / "config.json").write_text(json.dumps(config))
    folders["remote-ft"] = remote

    hub.start()
    try:
        for name, folder in folders.items():
            hub.publish(folder, f"{ORG}/{name}")
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "zoo", "--quiet", "discover", base, "--check", "--json",
                               "--limit", "100"], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
    finally:
        hub.stop()
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    found = json.loads(proc.stdout)
    print(f"`zoo discover {base} --check`: {len(found['candidates'])} candidates in {wall:.1f} s "
          f"(one process, empty huggingface_hub cache)\n")
    print("| candidate | format | loads | architecture | verdict |\n|---|---|---|---|---|")
    for c in sorted(found["candidates"], key=lambda c: c["repo_id"]):
        print(f"| {c['repo_id'].split('/')[1]} | {c.get('format') or '-'} | "
              f"{'yes' if c.get('loads') else 'no' if c.get('loads') is False else '-'} | "
              f"{c.get('architecture') or '-'} | {c.get('verdict') or ''} |")
    print(f"\nformats: {', '.join(f'{n} {k}' for k, n in found['formats'].items())}")


if __name__ == "__main__":
    main()
