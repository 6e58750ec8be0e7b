"""`zoo reproduce`: an output's zoo.json re-run, compared byte for byte, from a folder and from the Hub."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import run_zoo
from hubserver import TOKEN

ORG = "reproduce-test"


@pytest.fixture(scope="module")
def soup(tmp_path_factory, digits_zoo):
    """A greedy soup of the digits-demo zoo: its members are in zoo's cache, its data is the zoo's."""
    out = tmp_path_factory.mktemp("reproduce") / "soup"
    run_zoo("combine", "-s", "soup", "--zoo", "digits-demo", "-o", "mode=greedy", "--out", out)
    return out


def _tamper(folder, name_part: str = "conv_stem") -> str:
    """Change one value of one floating tensor of an output; returns the tensor's name."""
    sd = load_file(str(folder / "model.safetensors"))
    key = next(k for k in sd if name_part in k and sd[k].is_floating_point())
    sd[key] = sd[key].clone()
    sd[key].view(-1)[0] += 1e-3
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return key


def test_a_soup_reproduces_identically_from_its_zoo_json(soup, tmp_path, zoo_cli):
    again = tmp_path / "again"
    proc = zoo_cli("reproduce", soup, "--out", again)
    assert proc.stdout.startswith("identical:") and "model.safetensors" in proc.stdout
    # the re-run is a full output, and the same bytes
    assert (again / "model.safetensors").read_bytes() == (soup / "model.safetensors").read_bytes()
    recipe = json.loads((again / "zoo.json").read_text())
    assert recipe["options"]["mode"] == "greedy"
    assert recipe["environment"]["device"] == "cpu" and recipe["environment"]["threads"].isdigit()


def test_a_changed_output_is_reported_with_its_first_differing_tensor_and_what_changed(soup, tmp_path, zoo_cli):
    changed = tmp_path / "changed"
    shutil.copytree(soup, changed)
    key = _tamper(changed)
    recipe = json.loads((changed / "zoo.json").read_text())
    recipe["environment"].update(torch="1.0.0", threads="7")  # as if made elsewhere
    (changed / "zoo.json").write_text(json.dumps(recipe))
    proc = zoo_cli("reproduce", changed, check=False)
    assert proc.returncode == 1, proc.stderr
    assert f"tensor {key} differs first: 1 of" in proc.stdout and "by at most 0.001" in proc.stdout
    assert f"torch 1.0.0 → {torch.__version__}" in proc.stdout and "threads 7 → " in proc.stdout
    assert "timm" not in proc.stdout.split("likely cause:")[1]  # only what changed is named


def test_local_members_are_found_by_name_and_checked_by_hash(soup, tmp_path, zoo_cli, ingredients, digits_zoo):
    # a soup of members given by path, from no zoo: zoo.json knows them by name and sha256 only
    out = tmp_path / "by-path"
    zoo_cli("combine", "-s", "soup", "-m", ingredients[0], "-m", ingredients[1], "--out", out)
    proc = zoo_cli("reproduce", out, check=False)
    assert proc.returncode == 2 and f"--member {ingredients[0].name}=PATH" in proc.stderr
    # the right folders: identical; a folder with other bytes under a member's name is refused
    ok = zoo_cli("reproduce", out, "--member", f"{ingredients[0].name}={ingredients[0]}",
                 "--member", f"{ingredients[1].name}={ingredients[1]}")
    assert ok.stdout.startswith("identical:")
    wrong = zoo_cli("reproduce", out, "--member", f"{ingredients[0].name}={ingredients[2]}",
                    "--member", f"{ingredients[1].name}={ingredients[1]}", check=False)
    assert wrong.returncode == 2 and "is not the file the output was made from" in wrong.stderr
    # --zoo names where they are
    assert zoo_cli("reproduce", out, "--zoo", "digits-demo").stdout.startswith("identical:")


@pytest.mark.parametrize("case", ["no zoo.json", "not a folder", "unknown member name", "missing data", "out not empty"])
def test_bad_input_is_refused_before_anything_is_written(case, soup, tmp_path, zoo_cli, digits_zoo):
    out = tmp_path / "again"
    args, words = {
        "no zoo.json": ([digits_zoo / "data"], "has no zoo.json"),
        "not a folder": ([tmp_path / "nothing"], "no such folder"),
        "unknown member name": ([soup, "--member", "nobody=/x"], "has no member of that name"),
        "missing data": (None, "--eval-data val"),
        "out not empty": ([soup], "not empty"),
    }[case]
    if case == "missing data":  # made from data this machine does not have under that name
        moved = tmp_path / "moved"
        shutil.copytree(soup, moved)
        recipe = json.loads((moved / "zoo.json").read_text())
        recipe["zoo"] = None
        (moved / "zoo.json").write_text(json.dumps(recipe))
        args = [moved, "--zoo", str(tmp_path / "members-only.toml")]  # the members, and no data
        (tmp_path / "members-only.toml").write_text(
            "members = [" + ", ".join(f'"{digits_zoo / "members" / m["name"]}"' for m in recipe["members"]) + "]\n")
    if case == "out not empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    proc = zoo_cli("reproduce", *args, "--out", out, check=False)
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr and proc.stderr.count("error:") == 1
    if case == "out not empty":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()


def test_a_pushed_soup_reproduces_from_the_hub_and_a_vanished_member_is_named(tmp_path, hub, ingredients, zoo_cli):
    shas = [hub.publish(path, f"{ORG}/m{i}") for i, path in enumerate(ingredients[:2])]
    out = tmp_path / "soup"
    zoo_cli("combine", "-s", "soup", "-m", f"hf-hub:{ORG}/m0", "-m", f"hf-hub:{ORG}/m1", "--out", out,
            "--push", f"{ORG}/soup", env={"HF_TOKEN": TOKEN})
    proc = zoo_cli("reproduce", f"hf-hub:{ORG}/soup")
    assert proc.stdout.startswith("identical:")
    # the member's history is rewritten: the commit the soup pins is gone
    shutil.rmtree(hub.repo_dir(f"{ORG}/m1"))
    hub.publish(ingredients[1], f"{ORG}/m1", message="the same files, a new history")
    proc = zoo_cli("reproduce", f"hf-hub:{ORG}/soup", check=False)
    assert proc.returncode == 2, proc.stderr
    assert f"{ORG}/m1@{shas[1]} no longer exists" in proc.stderr
