"""ConvNeXt and Swin convert exactly between timm and transformers: the converted model gives the same logits
on real images (scikit-learn's digits, upscaled), a round trip gives back the very tensors, the plan made on
meta tensors has the real shapes, and variants with no exact twin are refused."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import transformers
from safetensors.torch import load_file, save_file

from zoo.plugins.formats.convert import Conversion, NoConversion, convnext, swin

LABELS = [f"digit {i}" for i in range(10)]
SIZE = 32

CONVNEXT = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))
SWIN_ARCH = "swin_tiny_patch4_window7_224"
# 16×16 patches, windows of 4: stages of 16, 8 and 4 tokens a side (the last one unshifted in both libraries)
SWIN = dict(img_size=SIZE, patch_size=2, window_size=4, embed_dim=16, depths=(2, 2, 2), num_heads=(1, 2, 4))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """16 real digits, 8×8 upscaled to 32×32, three channels, normalised."""
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().images[:16], dtype=torch.float32)[:, None] / 16.0
    x = torch.nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return ((x - 0.5) / 0.25).expand(-1, 3, -1, -1).contiguous()


def shapes_of(sd: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def apply(conv: Conversion, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {r.target: r.apply(sd).contiguous() for r in conv.rules}


def perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random norms, layer scales, biases and position biases, so that none of them is a no-op (layer scale
    starts at 1e-6, norms at 1 and 0, transformers' Swin bias table at 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim == 1:
                p.copy_(noise * 0.3 + (1.0 if name.endswith("weight") and "norm" in name else 0.0))
            elif "relative_position_bias_table" in name:
                p.copy_(noise)
    return model.eval()


def timm_model(arch: str, args: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return perturb(timm.create_model(arch, pretrained=False, num_classes=10, **args), seed)


def timm_config(arch: str, args: dict) -> dict:
    return json.loads(json.dumps({"architecture": arch, "num_classes": 10, "model_args": args,
                                  "pretrained_cfg": {"label_names": LABELS}}))


def hf_model_from(conv: Conversion, tensors: dict[str, torch.Tensor], tmp_path) -> torch.nn.Module:
    """The converted member as a folder (config.json + model.safetensors), opened by transformers; every
    tensor it expects is there and nothing else."""
    transformers.AutoConfig.for_model(**conv.config).save_pretrained(tmp_path)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    model, info = transformers.AutoModelForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


def timm_model_from(conv: Conversion, tensors: dict[str, torch.Tensor]) -> torch.nn.Module:
    c = conv.config
    model = timm.create_model(c["architecture"], pretrained=False, num_classes=c["num_classes"],
                              **c.get("model_args", {}))
    model.load_state_dict(tensors, strict=True)
    return model.eval()


def same_logits(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.std() > 0.05  # a model whose logits carry signal, else equality says nothing
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def logits(model, x) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    return out if isinstance(out, torch.Tensor) else out.logits


# --------------------------------------------------------------------------------------------------- ConvNeXt

@pytest.mark.parametrize("arch", ["convnext_tiny", "convnext_atto"])  # atto: the MLP as 1×1 convs
def test_timm_convnext_converts_to_transformers_with_the_same_logits(arch, images, tmp_path):
    model = timm_model(arch, CONVNEXT)
    conv = convnext.to_transformers(timm_config(arch, CONVNEXT), shapes_of(model.state_dict()))
    assert conv.config["architectures"] == ["ConvNextForImageClassification"]
    assert conv.config["layer_norm_eps"] == 1e-6
    hf = hf_model_from(conv, apply(conv, model.state_dict()), tmp_path)
    assert [hf.config.id2label[i] for i in range(10)] == LABELS
    same_logits(logits(model, images), logits(hf, images))


# 0: no layer scale, timm's gamma becomes ones; eps 1e-12 on the pooled features as the Hub's facebook/convnext-*
@pytest.mark.parametrize("layer_scale,eps", [(1e-6, 1e-6), (0.0, 1e-6), (1e-6, 1e-12)])
def test_transformers_convnext_converts_to_timm_with_the_same_logits(layer_scale, eps, images):
    torch.manual_seed(1)
    config = transformers.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1], layer_norm_eps=eps,
                                         layer_scale_init_value=layer_scale, num_labels=10,
                                         id2label=dict(enumerate(LABELS)))
    hf = perturb(transformers.ConvNextForImageClassification(config), 1)
    sd = hf.state_dict()
    conv = convnext.to_timm(json.loads(hf.config.to_json_string()), shapes_of(sd))
    assert conv.config["architecture"] == "convnext_tiny"
    assert conv.config["model_args"] == {"depths": [1, 1, 2, 1], "dims": [8, 16, 24, 32]}
    assert conv.config["pretrained_cfg"]["label_names"] == LABELS
    same_logits(logits(hf, images), logits(timm_model_from(conv, apply(conv, sd)), images))


def test_convnext_round_trip_gives_back_the_same_tensors():
    model = timm_model("convnext_tiny", CONVNEXT)
    sd = model.state_dict()
    there = convnext.to_transformers(timm_config("convnext_tiny", CONVNEXT), shapes_of(sd))
    hf_sd = apply(there, sd)
    back = convnext.to_timm(there.config, shapes_of(hf_sd))
    again = apply(back, hf_sd)
    assert back.config["architecture"] == "convnext_tiny"
    assert list(again) == list(sd)
    assert all(torch.equal(again[k], sd[k]) for k in sd)


def test_convnext_plans_on_meta_tensors_the_real_shapes():
    sd = timm_model("convnext_atto", CONVNEXT).state_dict()
    conv = convnext.to_transformers(timm_config("convnext_atto", CONVNEXT), shapes_of(sd))
    meta = {k: torch.empty(v.shape, device="meta") for k, v in sd.items()}
    planned = {r.target: r.apply(meta) for r in conv.rules}
    assert all(t.device.type == "meta" for t in planned.values())
    assert shapes_of(planned) == shapes_of(apply(conv, sd))
    hf_sd = apply(conv, sd)
    back = convnext.to_timm(conv.config, shapes_of(hf_sd))
    meta_hf = {k: torch.empty(v.shape, device="meta") for k, v in hf_sd.items()}
    assert shapes_of({r.target: r.apply(meta_hf) for r in back.rules}) == shapes_of(apply(back, hf_sd))


def test_convnext_variants_without_an_exact_twin_are_refused():
    # an eps above timm's 1e-6 on the pooled features has no twin (1e-12, the Hub's, converts: see above)
    hf = transformers.ConvNextForImageClassification(
        transformers.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_labels=10,
                                    layer_norm_eps=1e-3))
    with pytest.raises(NoConversion, match="layer_norm_eps"):
        convnext.to_timm(hf.config.to_dict(), shapes_of(hf.state_dict()))
    # norm before pooling (timm's _hnf) computes another function
    assert not convnext.TIMM("convnext_tiny_hnf") and not convnext.TIMM("convnextv2_tiny")
    with pytest.raises(NoConversion, match="convnext_tiny_hnf"):
        convnext.to_transformers(timm_config("convnext_tiny_hnf", CONVNEXT), {})


# ------------------------------------------------------------------------------------------------------- Swin

def test_timm_swin_converts_to_transformers_with_the_same_logits(images, tmp_path):
    model = timm_model(SWIN_ARCH, SWIN)
    conv = swin.to_transformers(timm_config(SWIN_ARCH, SWIN), shapes_of(model.state_dict()))
    assert conv.config["architectures"] == ["SwinForImageClassification"]
    assert (conv.config["window_size"], conv.config["image_size"], conv.config["layer_norm_eps"]) == (4, SIZE, 1e-5)
    tensors = apply(conv, model.state_dict())
    hf = hf_model_from(conv, tensors, tmp_path)
    same_logits(logits(model, images), logits(hf, images))
    # the converted tensors carry the names transformers' own checkpoints do
    hf.save_pretrained(tmp_path / "saved")
    assert set(load_file(str(tmp_path / "saved" / "model.safetensors"))) == set(tensors)


@pytest.mark.parametrize("names", ["checkpoint", "module"])  # as save_pretrained writes them, as the module has them
def test_transformers_swin_converts_to_timm_with_the_same_logits(names, images, tmp_path):
    torch.manual_seed(2)
    config = transformers.SwinConfig(image_size=SIZE, patch_size=2, window_size=4, embed_dim=16, depths=[2, 2, 2],
                                     num_heads=[1, 2, 4], num_labels=10, id2label=dict(enumerate(LABELS)))
    hf = perturb(transformers.SwinForImageClassification(config), 2)
    if names == "checkpoint":
        hf.save_pretrained(tmp_path)
        sd = load_file(str(tmp_path / "model.safetensors"))
        assert any(".attention.self.query." in k for k in sd)
    else:
        sd = hf.state_dict()
        assert any(".attention.q_proj." in k for k in sd)
    conv = swin.to_timm(json.loads(hf.config.to_json_string()), shapes_of(sd))
    assert conv.config["architecture"] == SWIN_ARCH
    assert conv.config["model_args"] == {k: list(v) if isinstance(v, tuple) else v for k, v in SWIN.items()}
    assert conv.config["pretrained_cfg"]["label_names"] == LABELS
    same_logits(logits(hf, images), logits(timm_model_from(conv, apply(conv, sd)), images))


def test_swin_patch_merging_order_is_one_the_logits_see(images):
    """Both libraries concatenate the 2×2 neighbours in the same order; swapping two of them in the
    converted reduction changes the logits, so the equality above checks the order."""
    model = timm_model(SWIN_ARCH, SWIN)
    conv = swin.to_transformers(timm_config(SWIN_ARCH, SWIN), shapes_of(model.state_dict()))
    tensors = apply(conv, model.state_dict())
    hf = transformers.SwinForImageClassification(transformers.AutoConfig.for_model(**conv.config)).eval()
    key = "swin.encoder.layers.0.downsample.reduction.weight"
    w = tensors[key]
    c = w.shape[1] // 4
    swapped = torch.cat([w[:, :c], w[:, 2 * c:3 * c], w[:, c:2 * c], w[:, 3 * c:]], dim=1)
    live = set(hf.state_dict())
    hf.load_state_dict({_live_name(k, live): swapped if k == key else t for k, t in tensors.items()}, strict=True)
    assert (logits(hf, images) - logits(model, images)).abs().max() > 1e-3


def _live_name(name: str, live: set[str]) -> str:
    """A checkpoint's tensor name as the installed transformers' module names it (it renames on load)."""
    if name in live:
        return name
    for old, new in zip(swin._HF_FILE.values(), swin._HF_LIVE.values()):
        if old in name:
            return name.replace(old, new)
    raise KeyError(name)


def test_swin_round_trip_gives_back_the_same_tensors():
    sd = timm_model(SWIN_ARCH, SWIN).state_dict()
    there = swin.to_transformers(timm_config(SWIN_ARCH, SWIN), shapes_of(sd))
    hf_sd = apply(there, sd)
    back = swin.to_timm(there.config, shapes_of(hf_sd))
    again = apply(back, hf_sd)
    assert sorted(again) == sorted(k for k in sd)
    assert all(torch.equal(again[k], sd[k]) for k in sd)


def test_swin_plans_on_meta_tensors_the_real_shapes():
    sd = timm_model(SWIN_ARCH, SWIN).state_dict()
    conv = swin.to_transformers(timm_config(SWIN_ARCH, SWIN), shapes_of(sd))
    meta = {k: torch.empty(v.shape, device="meta") for k, v in sd.items()}
    assert shapes_of({r.target: r.apply(meta) for r in conv.rules}) == shapes_of(apply(conv, sd))
    hf_sd = apply(conv, sd)
    back = swin.to_timm(conv.config, shapes_of(hf_sd))
    meta_hf = {k: torch.empty(v.shape, device="meta") for k, v in hf_sd.items()}
    assert shapes_of({r.target: r.apply(meta_hf) for r in back.rules}) == shapes_of(apply(back, hf_sd))


def test_swin_stage_smaller_than_its_window_is_refused():
    """A fourth stage of 2×2 tokens under windows of 4: timm shrinks that stage's window and bias table,
    transformers keeps the table of 4, so no tensors fit both."""
    args = {**SWIN, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 4, 8)}
    model = timm.create_model(SWIN_ARCH, pretrained=False, num_classes=10, **args)
    assert model.layers[3].blocks[0].attn.relative_position_bias_table.shape[0] == 9  # a 2×2 window's
    with pytest.raises(NoConversion, match="smaller than the window"):
        swin.to_transformers(timm_config(SWIN_ARCH, args), shapes_of(model.state_dict()))
    assert not swin.TIMM("swin_s3_tiny_224") and not swin.TIMM("swinv2_tiny_window8_256")
    with pytest.raises(NoConversion, match="one square window"):  # a window per stage, as swin_s3 has
        swin.to_transformers(timm_config(SWIN_ARCH, {**SWIN, "window_size": (4, 4, 2)}), {})
