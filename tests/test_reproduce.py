"""`zoo reproduce`: an output's zoo.json re-run, compared byte for byte, from a folder and from the Hub."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import class_slice, run_zoo
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


def test_an_output_written_before_the_transformers_fix_still_reproduces_and_another_config_does_not(
        soup, tmp_path, zoo_cli):
    """Older outputs repeat num_classes in config.json's model_args (zoo writes it at the top level only now, so
    that transformers opens its outputs): that alone is no difference; any other change of config.json is."""
    older = tmp_path / "older"
    shutil.copytree(soup, older)
    config = json.loads((older / "config.json").read_text())
    assert "num_classes" not in config.get("model_args", {})
    config["model_args"] = {**config.get("model_args", {}), "num_classes": config["num_classes"]}
    (older / "config.json").write_text(json.dumps(config, indent=2))
    proc = zoo_cli("reproduce", older)
    assert proc.stdout.startswith("identical:"), proc.stdout
    config["model_args"]["drop_rate"] = 0.5
    (older / "config.json").write_text(json.dumps(config, indent=2))
    proc = zoo_cli("reproduce", older, check=False)
    assert proc.returncode == 1 and "config.json: differs in model_args" in proc.stdout, proc.stdout


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
    # the right folders: identical; a folder with other bytes under a member's name is refused
    ok = zoo_cli("reproduce", out, "--member", f"{ingredients[0].name}={ingredients[0]}",
                 "--member", f"{ingredients[1].name}={ingredients[1]}")
    assert ok.stdout.startswith("identical:")
    wrong = zoo_cli("reproduce", out, "--member", f"{ingredients[0].name}={ingredients[2]}",
                    "--member", f"{ingredients[1].name}={ingredients[1]}", check=False)
    assert wrong.returncode == 2 and "is not the file the output was made from" in wrong.stderr
    # --zoo names where they are
    assert zoo_cli("reproduce", out, "--zoo", "digits-demo").stdout.startswith("identical:")


def _record(output):
    """zoo's local record of where ``output``'s inputs were (zoo.api.local_sources), as JSON text."""
    import hashlib
    import os

    digest = hashlib.sha256((output / "zoo.json").read_bytes()).hexdigest()
    return (Path(os.environ["ZOO_CACHE"]) / "outputs" / f"{digest}.json").read_text()


def test_where_it_was_made_an_output_of_local_members_reproduces_with_no_arguments(tmp_path, zoo_cli, ingredients,
                                                                                   val_dir):
    """Nothing published names a local path, yet `zoo reproduce OUT` needs no --member or --eval-data on the
    machine that made OUT: zoo's cache remembers where they were, and uses them while they hold the same files."""
    mine = shutil.copytree(ingredients[0], tmp_path / "mine")
    held_out = class_slice({"val": val_dir}, tmp_path, {"val": 10})["val"]  # 100 images: a quick evaluation
    out = tmp_path / "soup"
    zoo_cli("combine", "-s", "soup", "-m", mine, "-m", ingredients[1], "--eval-data", held_out, "--out", out)
    assert str(tmp_path) not in (out / "zoo.json").read_text()  # zoo.json names no path of this machine
    assert zoo_cli("reproduce", out).stdout.startswith("identical:")
    moved = shutil.copytree(out, tmp_path / "elsewhere" / "soup")  # the output itself may move
    assert zoo_cli("reproduce", moved).stdout.startswith("identical:")

    # a member moved: it is named, with where it was and what to give
    mine.rename(tmp_path / "moved")
    proc = zoo_cli("reproduce", out, "--out", tmp_path / "again", check=False)
    assert proc.returncode == 2 and proc.stderr.count("error:") == 1, proc.stderr
    assert f"member mine was a local folder (it was {mine} when the output was made, and that is gone): give it " \
           "with --member mine=PATH" in " ".join(proc.stderr.split())
    assert not (tmp_path / "again").exists()
    ok = zoo_cli("reproduce", out, "--member", f"mine={tmp_path / 'moved'}")
    assert ok.stdout.startswith("identical:")
    (tmp_path / "moved").rename(mine)

    # the data changed (an image added): it is named, with what to give
    extra = held_out / "0" / "extra.png"
    shutil.copy(next((held_out / "1").iterdir()), extra)
    proc = zoo_cli("reproduce", out, check=False)
    assert proc.returncode == 2 and "its files have changed since" in proc.stderr and "--eval-data DIR" in proc.stderr
    extra.unlink()
    assert zoo_cli("reproduce", out).stdout.startswith("identical:")


def test_the_local_record_stays_on_this_machine(tmp_path, hub, zoo_cli, ingredients, val_dir):
    """What reproduce remembers of a local output lives in zoo's cache: nothing in the output, nothing pushed."""
    from huggingface_hub import snapshot_download

    mine = shutil.copytree(ingredients[0], tmp_path / "mine")
    out = tmp_path / "soup"
    zoo_cli("combine", "-s", "soup", "-m", mine, "-m", ingredients[1], "--eval-data", val_dir, "--out", out,
            "--push", f"{ORG}/local-soup", env={"HF_TOKEN": TOKEN})
    assert str(mine) in _record(out)  # the record exists, and holds the path
    made = sorted(p.name for p in out.iterdir())
    assert not [n for n in made if n.startswith(".")]  # no hidden file in the output
    pulled = snapshot_download(f"{ORG}/local-soup", local_dir=tmp_path / "pulled")
    files = sorted(p.name for p in Path(pulled).iterdir() if p.name not in (".cache", ".gitattributes"))
    assert files == made  # the Hub's own .gitattributes aside, what the output holds and nothing more
    for f in Path(pulled).iterdir():
        if f.is_file():
            assert str(tmp_path) not in f.read_bytes().decode("latin-1"), f.name


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
