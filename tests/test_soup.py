"""The soup strategy through the command users run, checked against independent arithmetic."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_uniform_soup_equals_plain_mean(tmp_path, ingredients, zoo_cli):
    out = tmp_path / "soup"
    zoo_cli("combine", "--strategy", "soup", *sum((["-m", str(p)] for p in ingredients), []), "--out", out)
    soup = _weights(out)
    members = [_weights(p) for p in ingredients]
    for key, value in soup.items():
        if value.is_floating_point():
            expected = torch.stack([m[key] for m in members]).mean(0)
            assert torch.allclose(value, expected, atol=1e-6), key
        else:  # integer buffers are copied from the first member, never averaged
            assert torch.equal(value, members[0][key]), key
    recipe = json.loads((out / "zoo.json").read_text())
    assert [m["spec"] for m in recipe["members"]] == [str(p) for p in ingredients]
    assert all(len(m["files"]["model.safetensors"]) == 64 for m in recipe["members"])


def test_soup_of_identical_members_is_the_member(tmp_path, ingredients, zoo_cli):
    out = tmp_path / "same"
    zoo_cli("combine", "-s", "soup", "-m", ingredients[0], "-m", ingredients[0], "-m", ingredients[0], "--out", out)
    soup, member = _weights(out), _weights(ingredients[0])
    for key in member:
        assert torch.allclose(soup[key].float(), member[key].float(), atol=1e-7), key


def test_greedy_soup_beats_or_matches_best_ingredient(tmp_path, digits_zoo, zoo_cli):
    out = tmp_path / "greedy"
    zoo_cli("combine", "-s", "soup", "--zoo", "digits-demo", "--option", "mode=greedy", "--out", out)
    recipe = json.loads((out / "zoo.json").read_text())
    best = max(recipe["report"]["member_top1"].values())
    assert recipe["metrics"]["top1"] >= best
    steps = recipe["report"]["steps"]
    assert steps[0]["accepted"] and len(steps) == 5
    assert (out / "greedy-soup.png").stat().st_size > 1000


def test_greedy_soup_running_average_is_plain_average_of_accepted(tmp_path, digits_zoo, zoo_cli):
    out = tmp_path / "greedy-ge"
    zoo_cli("combine", "-s", "soup", "--zoo", "digits-demo", "-o", "mode=greedy", "-o", "accept=ge", "--out", out)
    recipe = json.loads((out / "zoo.json").read_text())
    by_name = {m["name"]: m["spec"] for m in recipe["members"]}
    from pathlib import Path

    accepted = [_weights(Path(by_name[n])) for n in recipe["report"]["ingredients"]]
    soup = _weights(out)
    for key, value in soup.items():
        if value.is_floating_point():
            assert torch.allclose(value, torch.stack([a[key] for a in accepted]).mean(0), atol=1e-5), key


def test_learned_soup_at_init_is_uniform(tmp_path, ingredients, val_dir, zoo_cli):
    members = sum((["-m", str(p)] for p in ingredients[:3]), [])
    zoo_cli("combine", "-s", "soup", *members, "--out", tmp_path / "u")
    zoo_cli("combine", "-s", "soup", *members, "--eval-data", val_dir, "-o", "mode=learned", "-o", "epochs=0",
            "--out", tmp_path / "l")
    u, l = _weights(tmp_path / "u"), _weights(tmp_path / "l")
    for key in u:
        assert torch.allclose(u[key].float(), l[key].float(), atol=1e-6), key


def test_learned_soup_trains_and_does_not_lose_accuracy(tmp_path, ingredients, val_dir, zoo_cli):
    members = sum((["-m", str(p)] for p in ingredients), [])
    zoo_cli("combine", "-s", "soup", *members, "--eval-data", val_dir, "--out", tmp_path / "u")
    zoo_cli("combine", "-s", "soup", *members, "--eval-data", val_dir, "-o", "mode=learned", "-o", "epochs=2",
            "--out", tmp_path / "l")
    uniform = json.loads((tmp_path / "u" / "zoo.json").read_text())["metrics"]
    learned = json.loads((tmp_path / "l" / "zoo.json").read_text())
    # trained on the held-out split with cross-entropy: its NLL there must go down
    assert learned["metrics"]["nll"] < uniform["nll"]
    weights = learned["report"]["mean_mixing_weight"].values()
    assert max(weights) - min(weights) > 1e-4  # the mixing moved away from uniform


def test_output_loads_in_timm_and_matches_card(tmp_path, digits_zoo, val_dir, zoo_cli):
    import timm
    from huggingface_hub import ModelCard

    from zoo.kit.data import data_config, load_split
    from zoo.kit.metrics import evaluate_model

    out = tmp_path / "soup"
    zoo_cli("combine", "-s", "soup", "--zoo", "digits-demo", "--out", out)
    model = timm.create_model(f"local-dir:{out}", pretrained=True)
    split = load_split(val_dir, data_config(model.pretrained_cfg), label_names=model.pretrained_cfg["label_names"],
                       num_classes=10)
    top1 = evaluate_model(model, split, torch.device("cpu")).top1
    card = ModelCard.load(out / "README.md")
    reported = card.data.eval_results[0]
    assert reported.metric_type == "accuracy"
    assert reported.metric_value == pytest.approx(top1, abs=1e-6)
    assert card.data.library_name == "timm"
    assert "soup.png" in card.text and (out / "soup.png").is_file()
    # `zoo eval` reports the same number
    metrics = json.loads(zoo_cli("eval", out, "--data", val_dir, "--json").stdout)
    assert metrics["top1"] == pytest.approx(top1, abs=1e-6)
    assert 0 <= metrics["ece"] <= 1 and metrics["nll"] > 0


def test_recompute_bn_changes_running_stats_only(tmp_path, ingredients, digits_zoo, zoo_cli):
    members = sum((["-m", str(p)] for p in ingredients), [])
    zoo_cli("combine", "-s", "soup", *members, "--out", tmp_path / "plain")
    zoo_cli("combine", "-s", "soup", *members, "-o", "recompute_bn=4", "--train-data", digits_zoo / "data" / "train",
            "--out", tmp_path / "bn")
    plain, bn = _weights(tmp_path / "plain"), _weights(tmp_path / "bn")
    stats = [k for k in plain if k.endswith(("running_mean", "running_var"))]
    assert stats and any(not torch.allclose(plain[k], bn[k]) for k in stats)
    for k in plain:
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(plain[k], bn[k]), k


def test_sharded_output_is_a_member_again(tmp_path, ingredients, zoo_cli):
    out = tmp_path / "sharded"
    zoo_cli("combine", "-s", "soup", "-m", ingredients[0], "-m", ingredients[1], "--max-shard-size", "100KB",
            "--out", out)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and not (out / "model.safetensors").exists()
    # a sharded output is itself a valid member: a soup of it with itself gives the same weights back
    zoo_cli("combine", "-s", "soup", "-m", out, "-m", out, "--out", tmp_path / "again")
    again = _weights(tmp_path / "again")
    parts = {}
    for shard in shards:
        parts.update(load_file(str(out / shard)))
    assert all(torch.equal(parts[k], again[k]) for k in again)
