"""The kit's helpers for whole-model strategies, on real digits-zoo members: ``Context.split`` (any data for any
model's preprocessing), ``data.common_labels``, ``batchnorm.recomputed_state``, ``device.state_on_cpu`` and
``options.compose``'s bounds (levi's and distill's training options come from ``zoo finetune``'s recipe)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import zoo
from zoo.kit.strategy.errors import BadInput


@pytest.fixture(scope="module")
def members(digits_zoo):
    return {name: zoo.load_member(str(digits_zoo / "members" / name)) for name in ("base", "ft-long", "other-arch")}


@pytest.fixture(scope="module")
def ctx(digits_zoo):
    data = digits_zoo / "data"
    # "train" is the 360-image test folder here: decoding the 1078 training images would only cost time
    return zoo.Context(device=torch.device("cpu"), train_data=str(data / "test"), eval_data=str(data / "val"),
                       strategy="helpers")


def _count(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def test_split_gives_the_runs_data_for_a_members_preprocessing(ctx, members, digits_zoo):
    from zoo.kit.data import data_config, load_split

    base = members["base"]
    train = ctx.split("train", base)
    assert len(train) == _count(digits_zoo / "data" / "test")
    held = ctx.split("eval", base)
    assert len(held) == _count(digits_zoo / "data" / "val")
    direct = load_split(ctx.eval_data, data_config(base.pretrained_cfg), label_names=base.label_names,
                        num_classes=base.num_classes)
    assert torch.equal(held.images, direct.images) and torch.equal(held.targets, direct.targets)
    # the named shortcuts are the same splits, and a folder of one's own (a Path) is data too
    assert ctx.eval_split(base) is held and ctx.train_split(base) is train
    assert ctx.split(Path(ctx.eval_data), base) is held


def test_split_preprocesses_for_any_config_and_label_order(ctx, members):
    base = members["base"]
    held = ctx.split("eval", base)
    side = held.images.shape[-1] + 8
    cfg = {**base.pretrained_cfg, "input_size": [3, side, side]}
    reverse = list(reversed(base.label_names))
    other = ctx.split("eval", cfg, labels=reverse)
    assert other.images.shape[-2:] == (side, side)  # the config's preprocessing, not the member's
    assert other.classes == reverse
    assert torch.equal(other.targets, 9 - held.targets)  # targets index the given labels
    relabelled = ctx.split("eval", base, labels=reverse)  # a member's preprocessing, another label order
    assert torch.equal(relabelled.images, held.images) and torch.equal(relabelled.targets, 9 - held.targets)


def test_split_refuses_missing_data_naming_the_flag(ctx, members):
    with pytest.raises(BadInput, match="--ood-data"):
        ctx.split("ood", members["base"])
    with pytest.raises(TypeError, match="labels="):
        ctx.split("eval", dict(members["base"].pretrained_cfg))


def test_common_labels_accepts_one_label_space_and_names_the_member_that_differs(members):
    from zoo.kit.data.splits import common_labels, label_names

    base, other = members["base"], members["other-arch"]
    assert common_labels([base, other], why="-") == label_names(base) == [str(i) for i in range(10)]
    relabelled = zoo.Member.in_memory("relabelled", base.state_dict(),
                                      config={**base.config, "label_names": list("abcdefghij")})
    with pytest.raises(BadInput, match=r"teachers base and relabelled have different label spaces .*; do this"):
        common_labels([base, other, relabelled], why="do this", role="teachers")
    # labels from elsewhere (a label map): every member after the first is held to them
    assert common_labels([relabelled, base], labels=label_names(base), why="-") == label_names(base)
    with pytest.raises(BadInput, match="different label spaces"):
        common_labels([base, relabelled], labels=label_names(base), why="-")


def test_recomputed_state_reestimates_batchnorm_and_returns_a_copy(ctx, members):
    from zoo.kit.train.batchnorm import recompute_bn_stats, recomputed_state

    base = members["base"]
    train = ctx.split("train", base)
    given = base.state_dict()
    model = ctx.model(given, base)
    state = recomputed_state(model, train, 3, ctx.device, seed=1)
    keys = [k for k in given if k.endswith("running_var")]
    assert keys and all(not torch.equal(state[k], given[k]) for k in keys)  # the statistics were re-estimated
    other = base.create_model(given)
    recompute_bn_stats(other, train, 3, ctx.device, seed=1)
    assert all(torch.equal(state[k], v) for k, v in other.state_dict().items())  # exactly the recompute's
    ctx.model(given, base)  # the context's model reused for other weights: the returned state stays
    assert all(torch.equal(state[k], v) for k, v in other.state_dict().items())


def test_state_on_cpu_is_a_detached_contiguous_copy(members):
    from zoo.kit.train.device import state_on_cpu

    model = members["base"].create_model()
    state = state_on_cpu(model)
    assert state.keys() == model.state_dict().keys()
    weight = next(k for k, v in state.items() if v.dim() == 4)
    before = state[weight].clone()
    with torch.no_grad():
        model.get_parameter(weight).add_(1.0)
    assert torch.equal(state[weight], before)  # a copy: the model moved on, the state did not
    assert not any(v.requires_grad for v in state.values())
    transposed = {"w": torch.arange(6.0).reshape(2, 3).t()}
    out = state_on_cpu(transposed)
    assert out["w"].is_contiguous() and torch.equal(out["w"], transposed["w"])


def test_compose_bounds_change_a_fields_limits():
    from zoo.kit.train.recipe import Recipe
    from zoo.kit.strategy.options import compose, describe, parse

    composed = compose((Recipe, ["epochs"]), bounds={"epochs": (2, 9)})
    assert parse(composed, {"epochs": "2"}).epochs == 2
    for bad in ("1", "10"):
        with pytest.raises(BadInput, match="option epochs="):
            parse(composed, {"epochs": bad})
    assert parse(Recipe, {"epochs": "1"}).epochs == 1  # the recipe's own bound is unchanged
    with pytest.raises(TypeError, match="no field 'nope'"):
        compose(Recipe, bounds={"nope": (0, 1)})
    assert {i.name: (i.min, i.max) for i in describe(composed)} == {"epochs": (2, 9)}


@pytest.mark.parametrize("module, name", [("levi.strategy", "Levi"), ("distill.strategy", "Distill")])
def test_training_options_are_the_recipes(module, name):
    """levi's and distill's training options are zoo finetune's fields (type and, unless changed, default and
    bounds), composed, not declared again."""
    import importlib

    from zoo.kit.train.recipe import Recipe
    from zoo.kit.strategy.options import describe

    options = getattr(importlib.import_module(f"zoo.plugins.{module}"), name).Options
    recipe = {i.name: i for i in describe(Recipe)}
    own = {i.name: i for i in describe(options)}
    shared = set(own) & set(recipe)
    assert {"epochs", "lr", "weight_decay", "warmup_epochs", "batch_size"} <= shared
    for name in shared:
        assert own[name].type == recipe[name].type, name
    assert own["lr"].default == recipe["lr"].default and own["lr"].min == recipe["lr"].min
    assert own["epochs"].min == 1  # a strategy that trains at least one epoch
    assert dataclasses.is_dataclass(options)
