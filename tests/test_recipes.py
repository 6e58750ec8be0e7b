"""`zoo run recipe.toml`: steps checked as a whole before any runs, each feeding the next, stored in zoo.json."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from hubserver import TOKEN

ORG = "recipe-test"


def _write(folder, text: str):
    path = folder / "recipe.toml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_select_then_soup_then_push_runs_as_written_and_is_stored(tmp_path, hub, digits_zoo, val_dir, zoo_cli,
                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)  # paths in a recipe are relative to where zoo run starts
    recipe = _write(tmp_path, f"""
        name = "pick three, soup them, publish"

        [[step]]
        run = "select"
        zoo = "digits-demo"
        metric = "logme"
        top_k = 3
        out = "sel/"

        [[step]]
        run = "combine"
        strategy = "soup"
        members_from = "@previous"
        eval_data = "{val_dir}"
        out = "soup/"
        options = {{ mode = "greedy" }}

        [[step]]
        run = "push"
        repo = "{ORG}/soup"
        """)
    checked = zoo_cli("run", recipe, "--check")
    assert "3 step(s) checked" in checked.stderr and not (tmp_path / "sel").exists()
    zoo_cli("run", recipe, env={"HF_TOKEN": TOKEN})
    picked = json.loads((tmp_path / "sel" / "ranking.json").read_text())
    stored = json.loads((tmp_path / "soup" / "zoo.json").read_text())
    # the soup's members are the three the selection picked, in its order
    top3 = [row["member"] for row in sorted(picked["ranking"], key=lambda r: r["rank"])[:3]]
    assert [m["name"] for m in stored["members"]] == top3
    assert stored["options"]["mode"] == "greedy"
    # the recipe itself, with its step number, in the output's zoo.json, naming no path of this machine
    assert stored["recipe_file"]["step"] == 2 and stored["recipe_file"]["name"] == "recipe.toml"
    assert [s["run"] for s in stored["recipe_file"]["steps"]] == ["select", "combine", "push"]
    assert str(val_dir) not in json.dumps(stored) and stored["recipe_file"]["steps"][1]["eval_data"] == "val"
    # and the push step published what the combine step wrote
    from huggingface_hub import hf_hub_download

    pushed = hf_hub_download(f"{ORG}/soup", "model.safetensors")
    assert open(pushed, "rb").read() == (tmp_path / "soup" / "model.safetensors").read_bytes()


def test_a_model_step_feeds_the_next_as_a_member(tmp_path, ingredients, zoo_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b, c = ingredients[:3]
    recipe = _write(tmp_path, f"""
        [[step]]
        run = "combine"
        strategy = "soup"
        members = ["{a}", "{b}"]
        out = "ab/"

        [[step]]
        run = "combine"
        strategy = "soup"
        members = ["@1", "{c}"]
        out = "ab-c/"
        """)
    zoo_cli("run", recipe)
    ab, abc = load_file("ab/model.safetensors"), load_file("ab-c/model.safetensors")
    sc = load_file(str(c / "model.safetensors"))
    for k, v in abc.items():
        if v.is_floating_point():
            assert torch.allclose(v, (ab[k] + sc[k]) / 2, atol=1e-6), k
    assert [m["name"] for m in json.loads((tmp_path / "ab-c" / "zoo.json").read_text())["members"]] == ["ab", c.name]


def test_a_step_whose_base_is_another_architecture_is_refused_before_the_first_step(tmp_path, digits_zoo, ingredients,
                                                                                     zoo_cli, monkeypatch):
    """Every step is checked before the first runs, the members' tensors too (from their headers, and for an
    earlier step's output from its own members'): the 3rd step's base of another architecture is named at its
    line, where steps 1 and 2 used to be written before step 3 failed without saying which step it was."""
    monkeypatch.chdir(tmp_path)
    a, b, c = ingredients[:3]
    recipe = _write(tmp_path, f"""
        [[step]]
        run = "combine"
        strategy = "soup"
        members = ["{a}", "{b}"]
        out = "ab/"

        [[step]]
        run = "combine"
        strategy = "soup"
        members = ["@1", "{c}"]
        out = "abc/"

        [[step]]
        run = "combine"
        strategy = "task-arithmetic"
        base = "{digits_zoo / 'members' / 'other-arch'}"
        members = ["@1", "@2"]
        out = "ta/"
        """)
    for check in (["--check"], []):
        proc = zoo_cli("run", recipe, *check, check=False)
        assert proc.returncode == 2 and proc.stderr.count("error:") == 1, proc.stderr
        said = " ".join(proc.stderr.split())
        assert "line 17: step 3 (combine): the base" in said and "member ab/ (step 1's output)" in said, said
        assert "have different tensors" in said
        assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.toml"]  # nothing was written
    # what only the run finds (a zoo's members are read when the step runs) is said with its step too
    recipe = _write(tmp_path, f"""
        [[step]]
        run = "combine"
        strategy = "task-arithmetic"
        zoo = "digits-demo"
        base = "{digits_zoo / 'members' / 'other-arch'}"
        out = "z/"
        """)
    proc = zoo_cli("run", recipe, check=False)
    assert proc.returncode == 2 and "error: step 1 (combine): the base other-arch" in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.toml"]


BAD = {
    "unknown key": ("""
        [[step]]
        run = "combine"
        strategy = "soup"
        zoo = "digits-demo"
        evl_data = "val"
        out = "x/"
        """, ["line 5", "unknown key 'evl_data'", "eval_data"]),
    "unknown strategy": ("""
        [[step]]
        run = "combine"
        strategy = "sooup"
        zoo = "digits-demo"
        out = "x/"
        """, ["line 3", "unknown strategy 'sooup'"]),
    "unknown option": ("""
        [[step]]
        run = "combine"
        strategy = "soup"
        zoo = "digits-demo"
        out = "x/"

        [step.options]
        mode = "greedy"
        acept = "gt"
        """, ["line 9", "unknown option 'acept'"]),
    "option out of bounds": ("""
        [[step]]
        run = "combine"
        strategy = "ties"
        base = "hf-hub:org/base"
        members = ["hf-hub:org/m1", "hf-hub:org/m2"]
        out = "x/"
        options = { density = 2.0 }
        """, ["line 7", "density=2.0: must be at most 1"]),
    "a member that is not here": ("""
        [[step]]
        run = "combine"
        strategy = "soup"
        members = ["hf-hub:org/m1", "./m2"]
        out = "x/"
        """, ["line 4", "'./m2' is not a folder or file here"]),
    "data that is not here": ("""
        [[step]]
        run = "select"
        zoo = "digits-demo"
        target_data = "./trian"
        """, ["line 4", "target_data = './trian': no such folder"]),
    "an unknown zoo": ("""
        [[step]]
        run = "combine"
        strategy = "soup"
        zoo = "digits-demoo"
        out = "x/"
        """, ["line 4", "no such named zoo"]),
    "a zoo where a model is taken": ("""
        [[step]]
        run = "select"
        zoo = "digits-demo"
        out = "sel/"

        [[step]]
        run = "push"
        repo = "org/x"
        """, ["line 6", "step 2 (push)", "step 1 (select) produces a zoo", "takes a model"]),
    "a model where a zoo is taken": ("""
        [[step]]
        run = "combine"
        strategy = "soup"
        zoo = "digits-demo"
        out = "x/"

        [[step]]
        run = "combine"
        strategy = "soup"
        members_from = "@previous"
        out = "y/"
        """, ["line 10", "produces a model", "members_from takes a zoo"]),
    "no previous step": ("""
        [[step]]
        run = "combine"
        strategy = "soup"
        members_from = "@previous"
        out = "y/"
        """, ["line 4", "there is no previous step"]),
    "unknown command": ("""
        [[step]]
        run = "merge"
        """, ["line 2", "choose one of select, combine, finetune, push"]),
    "missing strategy": ("""
        [[step]]
        run = "combine"
        zoo = "digits-demo"
        """, ["line 1", "missing key 'strategy'"]),
    "not TOML": ("""
        [[step]]
        run = combine
        """, ["not valid TOML", "line 2"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_recipe_is_refused_with_its_line_and_key_before_any_step_runs(case, tmp_path, zoo_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text, words = BAD[case]
    recipe = _write(tmp_path, text)
    proc = zoo_cli("run", recipe, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("error:") == 1
    for w in words:
        assert w in proc.stderr, (w, proc.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.toml"]  # nothing was written
