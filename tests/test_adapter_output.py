"""``--format adapter``: a merge of LoRA adapters written as one PEFT adapter of the base (truncated SVD of each
merged delta), loaded by PEFT itself and compared with the full merged model zoo writes without it."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

PREFIX = "base_model.model."


@pytest.fixture(scope="module")
def merges(tmp_path_factory, adapters, val_dir, digits_zoo):
    """The task arithmetic of lora-a and lora-b, full and as an adapter at a rank that loses nothing (64, with
    held-out data); of lora-a and a full fine-tune of the base (every tensor moves, BatchNorm statistics
    included), full and as an adapter keeping 90% of each delta's energy. Through the Python API, in this
    process (the CLI's path to it is the refusals' below)."""
    import zoo

    root = tmp_path_factory.mktemp("adapter-out")
    base = str(adapters["base"])
    two = [str(adapters["lora-a"]), str(adapters["lora-b"])]
    mixed = [str(adapters["lora-a"]), str(digits_zoo / "members" / "ft-long")]
    zoo.combine("task-arithmetic", two, base=base, out=root / "full")
    zoo.combine("task-arithmetic", two, base=base, format="adapter", options={"rank": "64"}, eval_data=str(val_dir),
                out=root / "rank64")
    zoo.combine("task-arithmetic", mixed, base=base, out=root / "full-mixed")
    zoo.combine("task-arithmetic", mixed, base=base, format="adapter", options={"energy": "0.9"}, out=root / "energy")
    return root


def _peft(adapters, folder):
    from peft import PeftModel

    import zoo

    return PeftModel.from_pretrained(zoo.load_member(str(adapters["base"])).create_model(), str(folder)).eval()


def _report(folder):
    return json.loads((folder / "zoo.json").read_text())["report"]["adapter"]


def test_without_rank_reduction_peft_loads_the_full_merge(merges, adapters):
    import zoo

    folder = merges / "rank64"
    assert sorted(p.name for p in folder.iterdir() if p.suffix in (".json", ".safetensors")) == [
        "adapter_config.json", "adapter_model.safetensors", "zoo.json"]
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, full = _peft(adapters, folder)(x), zoo.load(str(merges / "full"))(x)
    assert torch.allclose(ours, full, rtol=0, atol=1e-4 * full.abs().max()), (ours - full).abs().max()
    report = _report(folder)
    # the 1×1 convolutions the adapters moved carry LoRA at the rank of their delta (4 + 16 where both
    # adapted it), not more; the head (its bias moved) is saved whole
    assert {m: v["rank"] for m, v in report["modules"].items() if m.endswith(("conv_pwl", "conv_head"))} == {
        "conv_head": 4, **{f"blocks.{i}.0.conv_pwl": 20 for i in range(1, 5)}}
    assert report["saved_whole"] == ["classifier"]
    assert report["max_error"] < 1e-5
    # the accuracy on the held-out data, the adapter's on the base against the full merge's
    assert report["accuracy"]["adapter"] == report["accuracy"]["full"] > 0.5
    card = (folder / "README.md").read_text()
    assert "library_name: peft" in card and "conv_head" in card and "PeftModel.from_pretrained" in card
    # zoo reads its own output back as an adapter member
    assert zoo.load_member(str(folder)).format.name == "adapter"


def test_energy_chooses_each_rank_and_the_reported_error_is_peft_s(merges, adapters):
    folder = merges / "energy"
    report, config = _report(folder), json.loads((folder / "adapter_config.json").read_text())
    ranks = {m: v["rank"] for m, v in report["modules"].items()}
    assert len(set(ranks.values())) > 1 and config["rank_pattern"] and config["lora_alpha"] == config["r"]
    assert report["max_error"] > 1e-3  # the rank was reduced
    full, base = load_file(str(merges / "full-mixed" / "model.safetensors")), load_file(
        str(adapters["base"] / "model.safetensors"))
    # the weights PEFT's model computes with, merged: each module off the full merge by the error reported
    merged = _peft(adapters, folder).merge_and_unload().state_dict()
    for module, v in report["modules"].items():
        key = f"{module}.weight"
        delta = (full[key] - base[key]).double()
        error = float((merged[key].double() - full[key].double()).norm() / delta.norm())
        assert error == pytest.approx(v["error"], rel=1e-3, abs=1e-6), module
        assert merged[key].shape == full[key].shape
    # what LoRA does not carry is the full merge's, exactly: the head, a depthwise convolution, BatchNorm's
    # statistics (the fine-tune moved them)
    for key in ("classifier.bias", "conv_stem.weight", "blocks.3.0.conv_dw.weight", "bn1.running_var"):
        assert not torch.equal(full[key], base[key]) and torch.equal(merged[key], full[key]), key
    assert {"bn1", "blocks.3.0.conv_dw", "classifier"} <= set(report["saved_whole"])


def test_a_rank_cap_takes_the_top_singular_vectors_close_to_the_best_truncation(merges, adapters, tmp_path):
    """-o rank=4 (well below the layers' sizes: the randomized SVD's path): each module's reported error is within
    1% (relative) of the best rank-4 error, Eckart–Young's √(Σ_{i>4} sᵢ²)/‖D‖ from the full SVD, and the same run
    twice writes the same bytes (the random range finder is seeded)."""
    import zoo

    two = [str(adapters["lora-a"]), str(adapters["lora-b"])]
    for out in ("r4", "r4-again"):
        zoo.combine("task-arithmetic", two, base=str(adapters["base"]), format="adapter", options={"rank": "4"},
                    out=tmp_path / out)
    assert (tmp_path / "r4" / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "r4-again" / "adapter_model.safetensors").read_bytes()
    full, base = load_file(str(merges / "full" / "model.safetensors")), load_file(
        str(adapters["base"] / "model.safetensors"))
    checked = 0
    for module, v in _report(tmp_path / "r4")["modules"].items():
        delta = (full[f"{module}.weight"] - base[f"{module}.weight"]).double().flatten(1)
        if 2 * (4 + 8) >= min(delta.shape):
            continue  # small enough for the full SVD
        s = torch.linalg.svdvals(delta)
        best = float(s[4:].square().sum().sqrt() / s.square().sum().sqrt())
        assert v["rank"] == 4 and best * (1 - 1e-6) <= v["error"] <= best * 1.01, (module, best, v["error"])
        checked += 1
    assert checked >= 3


def test_reproduce_replays_the_output_options(merges, zoo_cli):
    """zoo reproduce of a merged adapter re-runs it with its recorded ``-o energy=0.9`` (an option of the output,
    not the strategy's): the same files, byte for byte."""
    assert json.loads((merges / "energy" / "zoo.json").read_text())["output_options"]["energy"] == 0.9
    done = zoo_cli("reproduce", merges / "energy")
    assert "identical: adapter_config.json, adapter_model.safetensors" in done.stdout


@pytest.mark.parametrize("case,words", [
    ("full-members", ["no member is an adapter", "leave --format out"]),
    ("no-base", ["--format adapter", "--base"]),
    ("rank-without-format", ["-o rank=", "--format adapter"]),
    ("bad-energy", ["energy=2", "at most 1"]),
])
def test_bad_adapter_outputs_are_refused(tmp_path, adapters, zoo_cli, case, words):
    a, b = adapters["lora-a"], adapters["lora-b"]
    args = {"full-members": ["--base", adapters["base"], "-m", adapters["full-a"], "-m", adapters["full-b"],
                             "--format", "adapter"],
            "no-base": ["-m", a, "-m", b, "--format", "adapter"],
            "rank-without-format": ["--base", adapters["base"], "-m", a, "-m", b, "-o", "rank=4"],
            "bad-energy": ["--base", adapters["base"], "-m", a, "-m", b, "--format", "adapter", "-o", "energy=2"],
            }[case]
    out = tmp_path / "out"
    proc = zoo_cli("combine", "-s", "task-arithmetic", *args, "--out", out, check=False)
    assert proc.returncode == 2, proc.stderr
    message = " ".join(proc.stderr.split())
    assert len(proc.stderr.strip().splitlines()) <= 2 and all(w in message for w in words), message
    assert not out.exists()
