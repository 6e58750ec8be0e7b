"""An outside member format, installed for real: examples/zoo-format-example reads and writes torchvision's
image classifiers (config.json naming a ``torchvision_model`` beside the model's own state_dict), and zoo's
commands take its members as they take timm's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PLUGINS_ON
from safetensors.torch import load_file, save_file

import zoo

EXAMPLE = Path(__file__).parents[1] / "examples" / "zoo-format-example"
ARCH = "mobilenet_v3_small"  # its classifier is a small MLP: the head is "classifier", its last layer classifier.3
LABELS = [str(i) for i in range(10)]
#: the digits demo's preprocessing: 8×8 digits upscaled to 32 px
PREPROCESSING = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear",
                 "crop_pct": 1.0}


@pytest.fixture(scope="module")
def example_installed():
    """pip-install the example plugin into this environment, as a user would (and remove it after)."""
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    str(EXAMPLE)], check=True, capture_output=True)
    yield
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", "zoo-format-example"], check=True,
                   capture_output=True)


def _config() -> dict:
    return {"torchvision_model": ARCH, "num_classes": 10, "label_names": LABELS, **PREPROCESSING}


def _split(folder: Path):
    from zoo.kit.data import data_config, load_split

    cfg = {**PREPROCESSING, "input_size": tuple(PREPROCESSING["input_size"])}
    return load_split(folder, data_config(cfg), label_names=LABELS, num_classes=10)


def _torchvision_model(state: dict):
    import torchvision

    model = torchvision.models.get_model(ARCH, weights=None, num_classes=10)
    model.load_state_dict(state)
    return model.eval()


@pytest.fixture(scope="module")
def members(tmp_path_factory, digits_zoo) -> list[Path]:
    """Two fine-tunes of one start, on the digits' training images, saved in the torchvision format."""
    import torchvision

    root = tmp_path_factory.mktemp("torchvision-members")
    train = root / "train"  # 20 training images of each digit: enough for a brief fine-tune, quick to decode
    for digit in LABELS:
        (train / digit).mkdir(parents=True)
        for image in sorted((digits_zoo / "data" / "train" / digit).iterdir())[:20]:
            (train / digit / image.name).symlink_to(image)
    split = _split(train)
    torch.manual_seed(0)
    start = torchvision.models.get_model(ARCH, weights=None, num_classes=10).state_dict()
    folders = []
    for seed, lr in ((1, 2e-3), (2, 1e-3)):
        model = torchvision.models.get_model(ARCH, weights=None, num_classes=10)
        model.load_state_dict(start)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None  # running statistics: the mean over these few steps (torchvision's 0.01 barely moves)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        model.train()
        for _ in range(8):
            idx = torch.randperm(len(split.targets), generator=gen)[:32]
            loss = torch.nn.functional.cross_entropy(model(split.images[idx]), split.targets[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        folder = root / f"ft-{seed}"
        folder.mkdir()
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps(_config()))
        folders.append(folder)
    return folders


def test_soup_of_torchvision_members_is_a_torchvision_model_of_their_mean(tmp_path, members, val_dir,
                                                                          example_installed, zoo_cli, monkeypatch):
    out = tmp_path / "soup"
    zoo_cli("combine", "-s", "soup", "-m", members[0], "-m", members[1], "--out", out, env=PLUGINS_ON)
    config = json.loads((out / "config.json").read_text())
    assert config["torchvision_model"] == ARCH and config["num_classes"] == 10 and config["label_names"] == LABELS
    assert {k: config[k] for k in PREPROCESSING} == PREPROCESSING
    assert [m["format"] for m in json.loads((out / "zoo.json").read_text())["members"]] == ["torchvision"] * 2

    # the output's tensors: torchvision's own names, the members' exact mean (integer buffers: the first's)
    soup, a, b = load_file(out / "model.safetensors"), *(load_file(m / "model.safetensors") for m in members)
    mean = {k: (a[k] + b[k]) / 2 if a[k].is_floating_point() else a[k] for k in a}
    assert not torch.equal(a["classifier.3.weight"], b["classifier.3.weight"])  # two different fine-tunes
    assert soup.keys() == mean.keys()
    assert all(torch.equal(soup[k], mean[k]) for k in mean), [k for k in mean if not torch.equal(soup[k], mean[k])]

    # torchvision's model holding the mean is what `zoo eval` measures and what `zoo.load` opens
    reference = _torchvision_model(mean)
    split = _split(val_dir)
    with torch.no_grad():
        logits = reference(split.images)
    top1 = (logits.argmax(1) == split.targets).float().mean().item()
    assert top1 > 0.3  # brief but real fine-tunes: their soup is far above chance (0.1); measured 0.52
    metrics = json.loads(zoo_cli("eval", out, "--data", val_dir, "--json", env=PLUGINS_ON).stdout)
    assert metrics["n"] == len(split.targets) and metrics["top1"] == pytest.approx(top1, abs=1e-6)
    monkeypatch.setenv("ZOO_DISABLE_PLUGIN_AUTOLOAD", "")  # zoo.load finds the installed plugin, as a user's would
    model = zoo.load(out)
    assert list(model.state_dict()) == list(reference.state_dict())
    x = split.images[:32]
    with torch.no_grad():
        assert torch.equal(model(x), logits[:32])
        # timm's interface: the pre-logits are the last linear layer's input (mobilenet_v3's 1024 hidden units)
        features = model.forward_head(model.forward_features(x), pre_logits=True)
        assert features.shape == (32, model.num_features) == (32, 1024)
        assert model.get_classifier() is model.classifier[3]
        assert torch.allclose(model.get_classifier()(features), logits[:32], atol=1e-5)
    assert model.pretrained_cfg["classifier"] == "classifier" and model.pretrained_cfg["input_size"] == (3, 32, 32)


def test_unknown_torchvision_model_is_refused_in_one_line(tmp_path, members, example_installed, zoo_cli):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").symlink_to(members[0] / "model.safetensors")
    (bad / "config.json").write_text(json.dumps({**_config(), "torchvision_model": "resnet9000"}))
    out = tmp_path / "soup"
    proc = zoo_cli("combine", "-s", "soup", "-m", members[0], "-m", bad, "--out", out, env=PLUGINS_ON, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "resnet9000" in lines[0] and "torchvision" in lines[0], proc.stderr
    assert not out.exists()


def test_installed_format_keeps_zoo_help_light(example_installed):
    """zoo imports every plugin's module on every command: the format's imports torch and torchvision only
    inside its methods, so `zoo --help` (which loads it, and so knows the format) stays without them."""
    code = ("import sys\nsys.argv = ['zoo', '--help']\nfrom zoo.cli import main\ntry:\n    main()\n"
            "except SystemExit as e:\n    assert not e.code, e.code\nfrom zoo.kit.members import formats\n"
            "print('\\nFORMATS', [f.name for f in formats()])\n"
            "print('HEAVY', sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **PLUGINS_ON})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-2:] == ["FORMATS ['timm', 'transformers', 'adapter', 'torchvision']", "HEAVY []"]
