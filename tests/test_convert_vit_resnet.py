"""ViT and ResNet convert exactly between timm and transformers: the converted model gives the same logits
on real digits (|diff| <= 1e-5), loads with no missing or unexpected tensor, a round trip gives the same
tensors bit for bit, planning on meta tensors gives the real shapes, and variants the other side lacks
raise NoConversion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from zoo.plugins.formats.convert import NoConversion, resnet, vit

LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
VIT_ARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3}
VIT_HF = {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 3, "intermediate_size": 192,
          "image_size": 32, "patch_size": 8, "layer_norm_eps": 1e-6}

#: case -> (family module, timm architecture, timm model_args, transformers config class, its kwargs)
CASES = {
    "vit": (vit, "vit_tiny_patch16_224", VIT_ARGS, transformers.ViTConfig, VIT_HF),
    "resnet-basic": (resnet, "resnet18", {"layers": [1, 2, 1, 1], "channels": [8, 16, 32, 64]},
                     transformers.ResNetConfig,
                     {"layer_type": "basic", "hidden_sizes": [8, 16, 32, 64], "depths": [1, 2, 1, 1]}),
    "resnet-bottleneck": (resnet, "resnet50", {"layers": [1, 2, 1, 1], "channels": [8, 16, 32, 64]},
                          transformers.ResNetConfig,
                          {"layer_type": "bottleneck", "hidden_sizes": [32, 64, 128, 256], "depths": [1, 2, 1, 1]}),
}
#: transformers-only cases: tanh GELU and a qkv without bias, both of which timm's ViT has too
HF_CASES = {**CASES, "vit-tanh-nobias": (vit, None, None, transformers.ViTConfig,
                                         {**VIT_HF, "hidden_act": "gelu_pytorch_tanh", "qkv_bias": False})}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """16 of scikit-learn's handwritten digits, upscaled to 32x32, three channels, normalised."""
    from sklearn.datasets import load_digits

    digits = torch.tensor(load_digits().images[:16], dtype=torch.float32)[:, None] / 16
    x = nn.functional.interpolate(digits, size=(32, 32), mode="bilinear", align_corners=False)
    return ((x - 0.5) / 0.25).repeat(1, 3, 1, 1)


def _perturb(model: nn.Module) -> nn.Module:
    """Norm weights and BatchNorm statistics away from their init, so that a mix-up shows in the logits."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=gen))
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
                m.num_batches_tracked.fill_(7)
    return model.eval()


def _timm(case: str):
    module, architecture, model_args, _, _ = CASES[case]
    torch.manual_seed(0)
    model = _perturb(timm.create_model(architecture, pretrained=False, num_classes=10, **model_args))
    config = {"architecture": architecture, "num_classes": 10, "model_args": model_args,
              "pretrained_cfg": {"label_names": LABELS}}
    return module, model, config


def _hf(case: str):
    module, _, _, config_class, kwargs = HF_CASES[case]
    torch.manual_seed(0)
    config = config_class(**kwargs, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    return module, _perturb(transformers.AutoModelForImageClassification.from_config(config))


def _shapes(tensors: dict) -> dict:
    return {k: tuple(v.shape) for k, v in tensors.items()}


def _apply(conversion, tensors: dict) -> dict:
    """The converted state dict; each target made by exactly one rule, each source read."""
    out = {}
    for rule in conversion.rules:
        assert rule.target not in out, rule.target
        out[rule.target] = rule.apply(tensors)
    used = {s for rule in conversion.rules for s in rule.sources}
    assert used == set(tensors), set(tensors) ^ used
    return out


def _load_hf(folder: Path, config: dict, tensors: dict):
    """transformers' model from a folder as a converted member is written: config.json + safetensors."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    model, info = transformers.AutoModelForImageClassification.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info  # strict: no missing, unexpected or mismatched tensor
    return model.eval()


def _saved_hf(model, folder: Path) -> tuple[dict, dict]:
    """config.json and tensors of a transformers model as save_pretrained writes them (the names on disk)."""
    model.save_pretrained(folder)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return json.loads((folder / "config.json").read_text()), tensors


def _load_timm(config: dict, tensors: dict):
    model = timm.create_model(config["architecture"], pretrained=False, num_classes=config["num_classes"],
                              **config["model_args"])
    model.load_state_dict(tensors, strict=True)
    return model.eval()


def _assert_same_logits(a: torch.Tensor, b: torch.Tensor):
    assert a.std() > 0.05  # the logits tell the images and classes apart: the comparison means something
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def _assert_same_norm_eps(a: nn.Module, b: nn.Module):
    """Norm eps (1e-6 against 1e-12 moves these logits by less than 1e-5, so they are compared directly)."""
    def eps(model):
        return sorted((isinstance(m, nn.LayerNorm), m.eps) for m in model.modules()
                      if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)))

    assert eps(a) == eps(b) and eps(a)


@pytest.mark.parametrize("case", list(CASES))
def test_timm_to_transformers_gives_timms_logits(case, images, tmp_path):
    module, model, config = _timm(case)
    state = model.state_dict()
    conversion = module.to_transformers(config, _shapes(state))
    hf = _load_hf(tmp_path / "hf", conversion.config, _apply(conversion, state))
    assert [hf.config.id2label[i] for i in range(10)] == LABELS
    with torch.no_grad():
        _assert_same_logits(model(images), hf(images).logits)
    _assert_same_norm_eps(model, hf)


@pytest.mark.parametrize("case", list(HF_CASES))
def test_transformers_to_timm_gives_transformers_logits(case, images, tmp_path):
    module, hf = _hf(case)
    config, tensors = _saved_hf(hf, tmp_path)
    conversion = module.to_timm(config, _shapes(tensors))
    assert conversion.config["pretrained_cfg"]["label_names"] == LABELS
    assert module.TIMM(conversion.config["architecture"])
    json.dumps(conversion.config)  # a timm config.json
    model = _load_timm(conversion.config, _apply(conversion, tensors))
    with torch.no_grad():
        _assert_same_logits(hf(images).logits, model(images))
    _assert_same_norm_eps(hf, model)
    # the names transformers 5 holds in memory convert to the same tensors as the names on disk
    memory = hf.state_dict()
    from_memory = _apply(module.to_timm(config, _shapes(memory)), memory)
    assert all(torch.equal(from_memory[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_timm_transformers_timm_is_bit_identical(case):
    module, model, config = _timm(case)
    state = model.state_dict()
    there = module.to_transformers(config, _shapes(state))
    hf_tensors = _apply(there, state)
    back = module.to_timm(there.config, _shapes(hf_tensors))
    again = _apply(back, hf_tensors)
    assert list(again) == list(state)
    assert all(torch.equal(again[k], state[k]) and again[k].dtype == state[k].dtype for k in state)
    assert back.config["pretrained_cfg"]["label_names"] == LABELS
    # the timm config that comes back builds the network the tensors came from
    _load_timm(back.config, again)


def _meta(tensors: dict) -> dict:
    return {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in tensors.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_planning_on_meta_tensors_gives_the_real_shapes(case, tmp_path):
    module, model, config = _timm(case)
    state = model.state_dict()
    conversion = module.to_transformers(config, _shapes(state))
    real, planned = _apply(conversion, state), _apply(conversion, _meta(state))
    assert {k: (v.shape, v.dtype) for k, v in planned.items()} == {k: (v.shape, v.dtype) for k, v in real.items()}
    assert all(v.device.type == "meta" for v in planned.values())
    _, hf = _hf(case)
    hf_config, tensors = _saved_hf(hf, tmp_path)
    conversion = module.to_timm(hf_config, _shapes(tensors))
    real, planned = _apply(conversion, tensors), _apply(conversion, _meta(tensors))
    assert {k: (v.shape, v.dtype) for k, v in planned.items()} == {k: (v.shape, v.dtype) for k, v in real.items()}


def test_a_timm_resnet_without_batchnorm_counts_converts_with_zero_counts():
    """Older checkpoints carry no num_batches_tracked: the converted member still has every tensor."""
    module, model, config = _timm("resnet-basic")
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    conversion = module.to_transformers(config, _shapes(state))
    out = {rule.target: rule.apply(state) for rule in conversion.rules}
    counts = [k for k in out if k.endswith("num_batches_tracked")]
    assert counts and all(out[k].dtype == torch.long and int(out[k]) == 0 for k in counts)


def _meta_shapes(architecture: str, **model_args) -> dict:
    with torch.device("meta"):
        return _shapes(timm.create_model(architecture, num_classes=10, **model_args).state_dict())


def _hf_shapes(config) -> dict:
    with torch.device("meta"):
        return _shapes(transformers.AutoModelForImageClassification.from_config(config).state_dict())


def test_variants_without_a_counterpart_raise_no_conversion():
    layer_scale = {**VIT_ARGS, "init_values": 0.1}
    with pytest.raises(NoConversion, match="layer scale"):
        vit.to_transformers({"architecture": "vit_tiny_patch16_224", "num_classes": 10, "model_args": layer_scale},
                            _meta_shapes("vit_tiny_patch16_224", **layer_scale))
    # transformers' default LayerNorm eps (1e-12, as google/vit-* and facebook/deit-* have) is not timm's 1e-6
    config = transformers.ViTConfig(**{**VIT_HF, "layer_norm_eps": 1e-12}, num_labels=10)
    with pytest.raises(NoConversion, match="layer_norm_eps"):
        vit.to_timm(config.to_dict(), _hf_shapes(config))
    with pytest.raises(NoConversion, match="stem"):
        resnet.to_transformers({"architecture": "resnet18", "num_classes": 10, "model_args": {"stem_type": "deep"}},
                               _meta_shapes("resnet18", stem_type="deep"))
    config = transformers.ResNetConfig(**CASES["resnet-bottleneck"][4], downsample_in_bottleneck=True, num_labels=10)
    with pytest.raises(NoConversion, match="downsample_in_bottleneck"):
        resnet.to_timm(config.to_dict(), _hf_shapes(config))
    assert not vit.TIMM("deit_tiny_distilled_patch16_224") and not vit.TIMM("vit_small_patch14_reg4_dinov2")
    assert not resnet.TIMM("resnet50d") and not resnet.TIMM("resnext50_32x4d")
    assert vit.TIMM("deit_tiny_patch16_224") and resnet.TIMM("resnet34")
