"""Permutation alignment: the spec read from timm's graphs, weight matching, `zoo align` and `--strategy rebasin`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
from conftest import refused
import torch
from safetensors.torch import load_file
from torch import nn

from zoo.plugins.rebasin import activations, match, permute
from zoo.plugins.rebasin import spec as specs

MODELS = {  # name → (model factory, input size): one per family zoo align supports
    "resnet (BatchNorm, residual stages)": (lambda: timm.create_model(
        "resnet18", num_classes=10, channels=(16, 32, 64, 128)), (3, 32, 32)),
    "convnext (LayerNorm, depthwise convs, layer scale)": (lambda: timm.create_model(
        "test_convnext", num_classes=10), (3, 32, 32)),
    "vit (residual stream, fused qkv heads)": (lambda: timm.create_model(
        "vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=3, embed_dim=96, num_heads=3),
        (3, 32, 32)),
    "mlp": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(192, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                                  nn.Linear(32, 10)), (3, 8, 8)),
    "vgg-like": (lambda: nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)), (3, 16, 16)),
}


def _model(name):
    factory, size = MODELS[name]
    torch.manual_seed(0)
    model = factory().eval()
    for m in model.modules():  # statistics that are not all 0 and 1, so a wrong permutation of them shows
        if isinstance(m, nn.BatchNorm2d):  # (timm starts each residual branch's last BatchNorm at 0: no signal)
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model, size


@pytest.mark.parametrize("name", list(MODELS))
def test_matching_a_randomly_permuted_copy_recovers_the_permutation_exactly(name):
    model, size = _model(name)
    spec = specs.derive(model, size)
    permute.check_function(spec, model, torch.randn(4, *size))
    a = {k: v.clone() for k, v in model.state_dict().items()}
    shuffled = permute.random_perms(spec, seed=7)
    b = permute.apply(spec, a, shuffled)
    assert any(not torch.equal(a[k], b[k]) for k in spec.axes)  # the copy really is permuted
    with torch.no_grad():  # ... and computes the same function
        model.load_state_dict(b)
        out_b = model(torch.ones(2, *size))
        model.load_state_dict(a)
        assert torch.allclose(out_b, model(torch.ones(2, *size)), atol=1e-5)
    found = match.weight_matching(spec, a, b, seed=3)
    assert all(torch.equal(found.perms[g], torch.argsort(shuffled[g])) for g in spec.groups)
    back = permute.apply(spec, b, found.perms)
    assert all(torch.equal(back[k], a[k]) for k in a)
    assert found.inner_after > found.inner_before


@pytest.mark.parametrize("name", ["resnet (BatchNorm, residual stages)", "vit (residual stream, fused qkv heads)"])
def test_activation_matching_of_a_randomly_permuted_copy_recovers_the_permutation_exactly(name, val_dir):
    import copy

    from zoo.kit.data import data_config, load_split

    model, size = _model(name)
    spec = specs.derive(model, size)
    cfg = {"input_size": size, "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0}
    images = load_split(str(val_dir), data_config(cfg), label_names=[str(i) for i in range(10)], num_classes=10)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    shuffled = permute.random_perms(spec, seed=7)
    other = copy.deepcopy(model)
    other.load_state_dict(permute.apply(spec, a, shuffled))
    found = activations.activation_matching(spec, model, other, activations.batches_of(images, images, 64, 32, 0))
    assert all(torch.equal(found.perms[g], torch.argsort(shuffled[g])) for g in spec.groups)
    if spec.attention:  # the heads and the dimensions inside them were shuffled, and found, too
        assert {g for g in spec.groups if not torch.equal(shuffled[g], torch.arange(spec.groups[g]))} >= \
            set(spec.attention) | set(spec.nested.values())
    back = permute.apply(spec, other.state_dict(), found.perms)
    assert all(torch.equal(back[k], a[k]) for k in a)
    assert found.correlation_after > 0.8 > 0.1 > found.correlation_before


def test_the_spec_sees_residual_streams_heads_and_hidden_units_as_their_own_groups():
    model, size = _model("vit (residual stream, fused qkv heads)")
    spec = specs.derive(model, size)
    by_start = {where: g for g, where in spec.where.items()}
    stream = by_start["patch_embed.proj"]
    # one permutation for the whole residual stream: every block's projections write into it
    assert spec.axes["blocks.2.mlp.fc2.weight"][1][0] == stream
    assert spec.axes["blocks.0.attn.proj.weight"][1][0] == stream
    assert spec.axes["cls_token"][1] == {2: stream} and spec.axes["pos_embed"][1] == {2: stream}
    assert spec.axes["head.weight"][1] == {1: stream}  # the classes are never permuted
    # the fused qkv is three blocks of (heads, head dims): heads and their dimensions are permuted alike in q, k, v
    view, axes = spec.axes["blocks.1.attn.qkv.weight"]
    assert view == (3, 3, 32, 96) and axes[3] == stream and spec.nested[axes[1]] == axes[2]
    assert spec.groups[axes[1]] == 3 and spec.groups[by_start["blocks.1.mlp.fc1"]] == 384


def test_the_function_check_names_the_layer_of_a_deliberately_wrong_spec():
    model, size = _model("resnet (BatchNorm, residual stages)")
    spec = specs.derive(model, size)
    images = torch.randn(4, *size)
    assert permute.check_function(spec, model, images) < 1e-4
    wrong = specs.Spec(groups=dict(spec.groups), axes=dict(spec.axes), where=dict(spec.where))
    view, axes = wrong.axes["layer2.0.bn1.running_mean"]
    group = axes[0]
    del wrong.axes["layer2.0.bn1.running_mean"]  # the statistics no longer follow their channels
    with pytest.raises(Exception, match=f"{spec.where[group]}.*changes the model's outputs") as e:
        permute.check_function(wrong, model, images)
    assert "layer2.0.bn1" in str(e.value) and "nothing was aligned or written" in str(e.value)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in _model("resnet (BatchNorm, residual stages)")[0]
               .state_dict().items())  # the check put the model's own weights back


def test_a_module_the_spec_cannot_permute_is_named():
    model = timm.create_model("resnext26ts", num_classes=10)
    with pytest.raises(Exception, match=r"stem\.conv1|grouped convolution") as e:
        specs.derive(model, (3, 64, 64), what="resnext26ts")
    assert "grouped convolution" in str(e.value) and "resnext26ts" in str(e.value)


def _save(model, folder: Path, size, arch: str, args: dict) -> Path:
    from timm.models import save_for_hf

    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": size, "mean": (0.5,) * 3, "std": (0.5,) * 3,
                            "crop_pct": 1.0, "num_classes": 10}
    save_for_hf(model, str(folder), model_config={"label_names": [str(i) for i in range(10)]}, model_args=args,
                safe_serialization=True)
    return folder


def test_rebasin_of_a_model_and_its_permuted_copy_is_the_model(tmp_path, zoo_cli):
    args = {"channels": [16, 32, 64, 128]}
    model, size = _model("resnet (BatchNorm, residual stages)")
    a = _save(model, tmp_path / "a", size, "resnet18", args)
    spec = specs.derive(model, size)
    model.load_state_dict(permute.apply(spec, model.state_dict(), permute.random_perms(spec, seed=11)))
    b = _save(model, tmp_path / "b", size, "resnet18", args)
    zoo_cli("combine", "-s", "rebasin", "-m", a, "-m", b, "-o", "bn=keep", "--out", tmp_path / "merged")
    merged, original = load_file(str(tmp_path / "merged" / "model.safetensors")), load_file(str(a / "model.safetensors"))
    assert merged.keys() == original.keys() and all(torch.equal(merged[k], original[k]) for k in original)
    # the same two without alignment are a different, worse-posed model: the test above is not trivially true
    zoo_cli("combine", "-s", "soup", "-m", a, "-m", b, "--out", tmp_path / "soup")
    soup = load_file(str(tmp_path / "soup" / "model.safetensors"))
    assert not torch.equal(soup["layer1.0.conv1.weight"], original["layer1.0.conv1.weight"])


@pytest.mark.parametrize("name,arch,args", [
    ("resnet (BatchNorm, residual stages)", "resnet18", {"channels": [16, 32, 64, 128]}),
    ("vit (residual stream, fused qkv heads)", "vit_tiny_patch16_224",
     {"img_size": 32, "patch_size": 8, "depth": 3, "embed_dim": 96, "num_heads": 3})])
def test_rebasin_by_activations_of_a_model_and_its_permuted_copy_is_the_model(name, arch, args, tmp_path, digits_zoo,
                                                                               zoo_cli):
    model, size = _model(name)
    a = _save(model, tmp_path / "a", size, arch, args)
    spec = specs.derive(model, size)
    model.load_state_dict(permute.apply(spec, model.state_dict(), permute.random_perms(spec, seed=11)))
    b = _save(model, tmp_path / "b", size, arch, args)
    zoo_cli("combine", "-s", "rebasin", "-m", a, "-m", b, "-o", "method=activations", "-o", "bn=keep",
            "-o", "activation_images=64", "--train-data", digits_zoo / "data" / "train", "--out", tmp_path / "merged")
    merged, original = load_file(str(tmp_path / "merged" / "model.safetensors")), load_file(str(a / "model.safetensors"))
    assert merged.keys() == original.keys() and all(torch.equal(merged[k], original[k]) for k in original)
    report = json.loads((tmp_path / "merged" / "zoo.json").read_text())["report"]
    assert report["method"] == "activations" and report["correlations"][0]["after"] > 0.8


def test_zoo_align_by_activations_keeps_the_members_logits(tmp_path, digits_zoo, zoo_cli):
    import zoo
    from zoo.kit.data import data_config, load_split

    members, data = digits_zoo / "members", digits_zoo / "data"
    out = tmp_path / "aligned"
    proc = zoo_cli("align", members / "independent", "--to", members / "base", "--method", "activations",
                   "--train-data", data / "train", "-o", "activation_images=128", "--out", out)
    assert "by activation matching" in proc.stdout
    aligned = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    member = zoo.load_member(str(members / "independent"))
    images = load_split(str(data / "val"), data_config(member.pretrained_cfg), label_names=member.label_names,
                        num_classes=10).images[:64]
    with torch.no_grad():
        assert torch.allclose(aligned(images), member.create_model().eval()(images), atol=1e-4)
    recipe = json.loads((out / "zoo.json").read_text())
    assert recipe["report"]["method"] == "activations"
    assert recipe["report"]["correlation_after"] > recipe["report"]["correlation_before"] + 0.2
    assert sum(g["units_moved"] for g in recipe["report"]["groups"].values()) > 0


def test_zoo_align_writes_a_timm_repo_computing_what_the_member_computes(tmp_path, digits_zoo, zoo_cli):
    import zoo
    from zoo.kit.data import data_config, load_split

    members, data = digits_zoo / "members", digits_zoo / "data"
    out = tmp_path / "aligned"
    proc = zoo_cli("align", members / "independent", "--to", members / "base", "--out", out, "--report",
                   "--eval-data", data / "val", "--train-data", data / "train", "-o", "points=5")
    assert "units moved" in proc.stdout and "loss barrier" in proc.stdout and "BN recomputed" in proc.stdout
    aligned = timm.create_model(f"local-dir:{out}", pretrained=True).eval()  # an ordinary timm repo
    member = zoo.load_member(str(members / "independent"))
    original = member.create_model().eval()
    split = load_split(str(data / "val"), data_config(member.pretrained_cfg), label_names=member.label_names,
                       num_classes=10)
    with torch.no_grad():
        assert torch.allclose(aligned(split.images), original(split.images), atol=1e-4)
    moved = load_file(str(out / "model.safetensors"))
    assert not torch.equal(moved["conv_stem.weight"], member.state_dict()["conv_stem.weight"])
    recipe = json.loads((out / "zoo.json").read_text())
    paths = recipe["report"]["paths"][0]["curves"]
    assert set(paths) == {"before alignment", "aligned", "before alignment, BN recomputed", "aligned + BN recomputed"}
    assert all(len(c["loss"]) == 5 and c["loss_barrier"] >= 0 for c in paths.values())
    assert recipe["report"]["inner_after"] > recipe["report"]["inner_before"]
    # the aligned member merges like any same-shaped member: the kit's merge methods work on it as they are
    zoo_cli("combine", "-s", "slerp", "-m", members / "base", "-m", out, "--out", tmp_path / "slerp")
    assert (tmp_path / "slerp" / "model.safetensors").exists()
    card = (out / "README.md").read_text()
    assert "barrier.png" in card and (out / "barrier.png").stat().st_size > 10_000
    assert "Loss barrier along the path" in card


def test_rebasin_reports_members_the_ensemble_and_the_unaligned_average(tmp_path, digits_zoo, zoo_cli):
    members, data = digits_zoo / "members", digits_zoo / "data"
    out = tmp_path / "rebasin"
    zoo_cli("combine", "-s", "rebasin", "-m", members / "base", "-m", members / "independent", "--train-data",
            data / "train", "--eval-data", data / "val", "-o", "repair=true", "--out", out)
    recipe = json.loads((out / "zoo.json").read_text())
    report = recipe["report"]
    assert report["bn"] == "repair" and set(report["members"]) == {"base", "independent"}
    assert {"ensemble", "average_without_alignment"} <= set(report)
    assert 0 < recipe["metrics"]["top1"] <= 1
    # REPAIR gave every BatchNorm the mean of the members' output statistics: its bias is their mean output
    weights = load_file(str(out / "model.safetensors"))
    assert not torch.equal(weights["bn1.bias"], load_file(str(members / "base" / "model.safetensors"))["bn1.bias"])


def test_align_refuses_bad_input_with_one_message_and_writes_nothing(tmp_path, digits_zoo, zoo_cli):
    members, data = digits_zoo / "members", digits_zoo / "data"
    for name, channels in (("narrow", [16, 32, 64, 128]), ("wide", [32, 64, 128, 256])):  # one architecture
        _save(timm.create_model("resnet18", num_classes=10, channels=channels), tmp_path / name, (3, 32, 32),
              "resnet18", {"channels": channels})
    cases = {
        "different architectures": ((members / "other-arch", "--to", members / "base"), "architecture|tensors"),
        "no reference": ((members / "base",), "--to"),
        "another width": ((tmp_path / "wide", "--to", tmp_path / "narrow"), "in shape.*width"),
        "report without data": ((members / "independent", "--to", members / "base", "--report"), "--eval-data"),
        "activations without training data": ((members / "independent", "--to", members / "base", "--method",
                                                "activations"), "method=activations.*--train-data DIR"),
    }
    for label, (args, expected) in cases.items():
        out = tmp_path / label.replace(" ", "-")
        proc = zoo_cli("align", *args, "--out", out, check=False)
        assert proc.returncode == 2, (label, proc.stderr)
        assert __import__("re").search(expected, proc.stderr), (label, proc.stderr)
        assert not out.exists() and not list(tmp_path.glob(f".{out.name}*")), label
    # a model zoo cannot permute: the layer is named
    model = timm.create_model("resnext26ts", num_classes=10)
    grouped = _save(model, tmp_path / "grouped", (3, 32, 32), "resnext26ts", {})
    proc = zoo_cli("align", grouped, "--to", grouped, "--out", tmp_path / "g-out", check=False)
    assert proc.returncode == 2 and "grouped convolution" in proc.stderr and "stem" not in proc.stderr.split(":")[0]
    assert not (tmp_path / "g-out").exists()
    # rebasin by activations needs the training images as well: one message, nothing written
    refused(zoo_cli, tmp_path / "r-out", "combine", "-s", "rebasin", "-m", members / "base", "-m",
            members / "independent", "-o", "method=activations", "-o", "bn=keep",
            words=("method=activations", "--train-data DIR"))


def test_merge_many_brings_a_model_and_two_permuted_copies_into_one_frame():
    model, size = _model("resnet (BatchNorm, residual stages)")
    spec = specs.derive(model, size)
    a = {k: v.clone() for k, v in model.state_dict().items()}
    copies = [a] + [permute.apply(spec, a, permute.random_perms(spec, seed=s)) for s in (21, 22)]
    found = match.merge_many(spec, copies, seed=0)
    aligned = [permute.apply(spec, c, f.perms) for c, f in zip(copies, found)]
    # one common frame: every copy lands on the same tensors (a permutation of the original, all alike)
    assert all(torch.equal(x[k], aligned[0][k]) for x in aligned[1:] for k in a)
    with torch.no_grad():
        images = torch.randn(4, *size)
        expected = model(images)
        model.load_state_dict(aligned[0])
        assert torch.allclose(model(images), expected, atol=1e-5)


def test_repair_gives_each_batchnorm_the_members_mean_output_statistics(digits_zoo):
    import zoo
    from zoo.kit.data import data_config, load_split
    from zoo.plugins.rebasin import repair

    base, other = (zoo.load_member(str(digits_zoo / "members" / n)) for n in ("base", "independent"))
    train = load_split(str(digits_zoo / "data" / "train"), data_config(base.pretrained_cfg),
                       label_names=base.label_names, num_classes=10)
    spec = specs.derive(base.create_model(), (3, 32, 32))
    a = base.state_dict()
    b = permute.apply(spec, other.state_dict(), match.weight_matching(spec, a, other.state_dict()).perms)
    cpu = torch.device("cpu")
    stats = [repair.output_stats(base.create_model(s), train, 10, cpu) for s in (a, b)]
    mean = {k: (v + b[k]) / 2 if v.is_floating_point() else v for k, v in a.items()}
    net = repair.repair(base.create_model(mean), stats, [0.5, 0.5], train, 10, cpu)
    after = repair.output_stats(net, train, 10, cpu)
    plain = repair.output_stats(base.create_model(mean), train, 10, cpu)  # the average as it is, no repair
    off_repaired = off_plain = 0.0
    for name, (mu_a, sd_a) in stats[0].items():
        mu_t, sd_t = (mu_a + stats[1][name][0]) / 2, (sd_a + stats[1][name][1]) / 2
        scale = float(sd_t.mean())
        assert float((after[name][0] - mu_t).abs().max()) < 0.05 * scale, name
        assert float(((after[name][1] - sd_t) / sd_t.clamp_min(1e-3)).abs().median()) < 0.05, name
        off_repaired += float((after[name][1] - sd_t).abs().mean())
        off_plain += float((plain[name][1] - sd_t).abs().mean())
    assert off_repaired < off_plain / 3  # the repair is what moved the statistics there


def test_zoo_align_of_hub_members_is_the_align_of_the_same_files(tmp_path, hub, digits_zoo, zoo_cli):
    from huggingface_hub import ModelCard

    members = digits_zoo / "members"
    shas = {n: hub.publish(members / n, f"zoo-test/align-{n}") for n in ("base", "independent")}
    zoo_cli("align", "hf-hub:zoo-test/align-independent", "--to", "hf-hub:zoo-test/align-base",
            "--out", tmp_path / "hub")
    zoo_cli("align", members / "independent", "--to", members / "base", "--out", tmp_path / "local")
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("hub", "local"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    recipe = json.loads((tmp_path / "hub" / "zoo.json").read_text())
    assert {m["revision"] for m in recipe["members"]} == set(shas.values())  # pinned to the commits
    card = ModelCard.load(str(tmp_path / "hub" / "README.md"))
    assert set(card.data.base_model) == {"zoo-test/align-base", "zoo-test/align-independent"}
