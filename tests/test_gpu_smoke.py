"""bench/gpu_smoke.py, the one command to run wherever a GPU is at hand, run here with --device cpu so it cannot rot:
every strategy family runs through the real `zoo` commands, every output opens, and the byte comparison compares."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent.parent / "bench" / "gpu_smoke.py"
FAMILIES = {"merge", "merge with data", "learned merge (AMP on CUDA)", "wise-ft", "finetune (AMP on CUDA)", "distill",
            "stitch", "select", "align", "ensemble/cascade", "levi"}
MERGES = {"soup", "ties", "task-arithmetic", "dare", "model-stock", "slerp", "tsv", "iso-cts"}


def _smoke_module():
    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_smoke"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(digits_zoo, tmp_path_factory):
    """One CPU run of the whole smoke: 10 images per class, one thread per command (tiny models)."""
    work = tmp_path_factory.mktemp("smoke") / "run"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--work", str(work), "--per-class", "10",
                           "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, json.loads((work / "gpu_smoke.json").read_text()), proc.stdout


def test_every_family_runs_and_every_output_opens(smoke):
    work, result, _ = smoke
    steps = {s["name"]: s for s in result["steps"]}
    assert {s["family"] for s in steps.values()} == FAMILIES
    assert set(steps) == MERGES | {"fisher", "regmean", "adamerging", "wise-ft", "finetune", "distill", "stitch",
                                   "select", "align", "ensemble", "cascade", "levi"}
    assert result["images"] == {"train": 100, "val": 100}
    x = torch.randn(2, 3, 32, 32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: on a small shared machine more threads only wait for each other
    try:
        _open_each(steps, work, x)
    finally:
        torch.set_num_threads(threads)
    # the commands ran with --device cpu, and the output says which device and versions
    assert all(s["args"][s["args"].index("--device") + 1] == "cpu" for s in result["steps"])
    env = result["environment"]
    assert env["device"] == "cpu" and env["torch"] == torch.__version__ and env["threads"] == 1 and "gpu" not in env


def _open_each(steps: dict, work: Path, x: torch.Tensor) -> None:
    """Every step's output opens as a user opens it and gives finite logits for the ten digits."""
    import timm

    import zoo

    for name, step in steps.items():
        assert step["status"] == "ok" and step["rc"] == 0 and step["wall_s"] > 0, step
        out = Path(step["out"])
        assert out.parent == work and out.is_dir(), name
        if step["opens"] == "none":  # zoo select: a ranking, no model
            ranking = json.loads((out / "ranking.json").read_text())
            assert len(ranking["selected"]) == 2 and step["extra"]["selected"] == [Path(s).name for s in
                                                                                   ranking["selected"]]
            continue
        assert step["loads"] is True and 0.0 <= step["top1"] <= 1.0, name
        assert step["top1"] == round(json.loads((out / "zoo.json").read_text())["metrics"]["top1"], 4)
        if step["opens"] == "timm":  # an ordinary timm repo
            model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        else:  # ensembles, cascades, LEVI, stitched networks: zoo.load
            model = zoo.load(out)
        with torch.inference_mode():
            logits = model(x)
        assert logits.shape == (2, 10) and torch.isfinite(logits).all(), name


def test_merges_compare_with_a_cpu_run_and_say_it_is_cpu_against_cpu(smoke):
    work, result, stdout = smoke
    compared = {s["name"]: s["vs_cpu"] for s in result["steps"] if s["vs_cpu"] is not None}
    assert set(compared) == MERGES and all(c == {"equal": True, "max_abs_diff": 0.0} for c in compared.values())
    references = {s["name"]: s for s in result["cpu_references"]}
    assert set(references) == {f"{m} (cpu reference)" for m in MERGES}
    for name in MERGES:  # the reference is a second output, written by its own --device cpu command
        ref = references[f"{name} (cpu reference)"]
        assert ref["status"] == "ok" and Path(ref["out"]) == work / f"{name}-cpu"
        assert ref["args"][ref["args"].index("--device") + 1] == "cpu"
        assert (work / f"{name}-cpu" / "model.safetensors").read_bytes() == (work / name / "model.safetensors"
                                                                            ).read_bytes()
    assert result["cpu_vs_cpu"] is True and "CPU against CPU" in result["comparison_note"]
    table = (work / "gpu_smoke.md").read_text()
    assert "CPU against CPU" in table and table in stdout
    for step in result["steps"]:
        assert f"| {step['name']} | {step['family']} | ok |" in table
    assert table.count("bytes equal") == len(MERGES)


def test_the_comparison_finds_a_changed_tensor_and_its_size(smoke, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    gpu_smoke = _smoke_module()
    work, _, _ = smoke
    assert gpu_smoke.compare_outputs(work / "soup", work / "soup-cpu") == {"equal": True, "max_abs_diff": 0.0}
    changed = tmp_path / "changed"
    shutil.copytree(work / "soup-cpu", changed)
    tensors = load_file(changed / "model.safetensors")
    with safe_open(changed / "model.safetensors", "pt") as f:
        metadata = f.metadata()
    key = "classifier.weight"
    tensors[key] = tensors[key].clone()
    tensors[key][3, 7] += 1e-3
    save_file(tensors, changed / "model.safetensors", metadata=metadata)
    found = gpu_smoke.compare_outputs(work / "soup", changed)
    assert found["equal"] is False and found["tensor"] == key and found["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)
    # the same tensors in another dtype are named as such, not compared as values
    save_file({k: v.double() if k == key else v for k, v in tensors.items()}, changed / "model.safetensors")
    found = gpu_smoke.compare_outputs(work / "soup", changed)
    assert found["equal"] is False and found["max_abs_diff"] is None and key in found["differs"]


def test_refuses_a_work_folder_it_did_not_write(tmp_path):
    work = tmp_path / "mine"
    work.mkdir()
    (work / "keep.txt").write_text("the user's")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--work", str(work)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "not an earlier smoke run's folder" in proc.stderr
    assert (work / "keep.txt").read_text() == "the user's" and sorted(p.name for p in work.iterdir()) == ["keep.txt"]


def test_a_failing_command_is_reported_with_its_message(tmp_path):
    """A step whose command fails is marked failed with the command's own last line (here through
    --subprocess's plain `python -m zoo`), and the table says so."""
    gpu_smoke = _smoke_module()
    (tmp_path / "logs").mkdir()
    step = gpu_smoke.Step("soup", "merge", ["combine", "-s", "no-such-strategy", "-m", str(tmp_path), "--device",
                                            "cpu", "--out", str(tmp_path / "out")], str(tmp_path / "out"))
    gpu_smoke.run_step(step, tmp_path / "logs", fresh=True)
    assert step.status == "failed" and step.rc == 2 and "no-such-strategy" in step.note and step.top1 is None
    assert not (tmp_path / "out").exists() and Path(step.log).read_text().strip().endswith(step.note)
    from dataclasses import asdict

    result = {"environment": {"device": "cpu", "cpu_count": 2, "torch": "t", "cuda": None, "timm": "x"},
              "started": "now", "wall_s": 1.0, "comparison_note": "", "steps": [asdict(step)]}
    assert f"| soup | merge | failed ({step.note}) |" in gpu_smoke.markdown(result)


def test_a_command_past_its_time_is_killed_and_the_run_goes_on(tmp_path, ingredients):
    gpu_smoke = _smoke_module()
    (tmp_path / "logs").mkdir()
    out = tmp_path / "out"
    # a real soup: importing torch alone takes longer than the limit (`zoo strategies` no longer does)
    step = gpu_smoke.Step("soup", "merge", ["combine", "-s", "soup", "-m", str(ingredients[0]), "-m", str(ingredients[1]),
                                            "--out", str(out)], str(out))
    start = time.perf_counter()
    gpu_smoke.run_step(step, tmp_path / "logs", fresh=True, timeout=0.5)
    assert time.perf_counter() - start < 5
    assert step.status == "failed" and step.rc == gpu_smoke.TIMED_OUT and step.note == "killed after 0.5 s"
