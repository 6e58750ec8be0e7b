"""What a pushed output says about where it came from: the model tree (base_model, base_model_relation,
lineage through zoo outputs used as members), the license, and no path of the machine it was made on.
Real pushes to the local Hub (olah plus the upload stand-in, tests/hubserver.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, snapshot_download

from hubserver import TOKEN

ORG = "zoo-publish"


def _with_license(src: Path, dst: Path, license: str | None) -> Path:
    shutil.copytree(src, dst)
    if license:
        (dst / "README.md").write_text(f"---\nlicense: {license}\nlibrary_name: timm\n---\n\n# {dst.name}\n")
    return dst


@pytest.fixture(scope="module")
def repos(hub, ingredients, tmp_path_factory):
    """Three members on the Hub, two under MIT and one under Apache-2.0."""
    root = tmp_path_factory.mktemp("licensed")
    licenses = {"mit-a": "mit", "mit-b": "mit", "apache-c": "apache-2.0"}
    for (name, lic), src in zip(licenses.items(), ingredients):
        hub.publish(_with_license(src, root / name, lic), f"{ORG}/{name}")
    return {name: f"hf-hub:{ORG}/{name}" for name in licenses}


def _machine_paths(*extra: Path) -> list[str]:
    home = str(Path.home())
    return [p for p in {home, os.getcwd(), os.environ["ZOO_CACHE"], "/tmp/", *map(str, extra)} if len(p) > 1]


def _assert_no_machine_path(repo_id: str, where: Path, *extra: Path) -> None:
    folder = Path(snapshot_download(repo_id, local_dir=where))
    files = [f for f in folder.rglob("*") if f.is_file() and ".cache" not in f.parts and f.suffix != ".safetensors"]
    assert {"README.md", "zoo.json", "config.json"} <= {f.name for f in files}
    for f in files:
        text = f.read_bytes().decode("latin-1")
        for p in _machine_paths(*extra):
            assert p not in text, f"{f.name} names {p!r}"


def test_pushed_soup_and_finetune_name_no_path_of_this_machine(tmp_path, hub, repos, ingredients, val_dir,
                                                             digits_zoo, zoo_cli):
    local = shutil.copytree(ingredients[3], tmp_path / "my-member")  # a local member, by absolute path
    val = shutil.copytree(val_dir, tmp_path / "held-out")
    out = tmp_path / "soup"
    zoo_cli("combine", "-s", "soup", "-m", repos["mit-a"], "-m", local.resolve(), "-m", ingredients[4],
            "--eval-data", val.resolve(), "--out", out, "--push", f"{ORG}/soup", env={"HF_TOKEN": TOKEN})
    _assert_no_machine_path(f"{ORG}/soup", tmp_path / "pulled-soup", tmp_path)
    card = ModelCard.load(f"{ORG}/soup")
    assert card.data.eval_results[0].dataset_name == "held-out"  # the folder's name, not its path
    assert "my-member" in card.content  # members are still named

    ft = tmp_path / "ft"
    zoo_cli("finetune", repos["mit-b"], "--train-data", digits_zoo / "data" / "train", "--epochs", "1",
            "--eval-data", val.resolve(), "--out", ft)
    zoo_cli("push", ft, f"{ORG}/ft", env={"HF_TOKEN": TOKEN})
    _assert_no_machine_path(f"{ORG}/ft", tmp_path / "pulled-ft", tmp_path)
    card = ModelCard.load(f"{ORG}/ft")
    assert card.data.base_model == [f"{ORG}/mit-b"] and card.data.base_model_relation == "finetune"
    assert card.data.license == "mit"  # carried over from the member's card


def test_merge_relation_lineage_and_license(tmp_path, hub, repos, zoo_cli):
    both_mit = tmp_path / "mit"
    zoo_cli("combine", "-s", "soup", "-m", repos["mit-a"], "-m", repos["mit-b"], "--out", both_mit)
    card = ModelCard.load(both_mit / "README.md")
    assert set(card.data.base_model) == {f"{ORG}/mit-a", f"{ORG}/mit-b"}
    assert card.data.base_model_relation == "merge" and card.data.license == "mit"

    # a local zoo output used as a member passes on the Hub repos it was made from
    mixed = tmp_path / "mixed"
    proc = zoo_cli("combine", "-s", "soup", "-m", both_mit, "-m", repos["apache-c"], "--out", mixed)
    card = ModelCard.load(mixed / "README.md")
    assert set(card.data.base_model) == {f"{ORG}/mit-a", f"{ORG}/mit-b", f"{ORG}/apache-c"}
    assert card.data.base_model_relation == "merge"
    # ... and the licenses disagree: none is claimed, and the warning names who says what
    assert card.data.license is None
    assert "do not agree on a license" in proc.stderr
    assert f"{ORG}/apache-c: apache-2.0" in proc.stderr and "mit: mit" in proc.stderr


def test_distilled_student_names_no_teacher_as_its_base(tmp_path, hub, repos, digits_zoo, zoo_cli):
    out = tmp_path / "student"
    zoo_cli("combine", "-s", "distill", "-m", repos["mit-a"], "--train-data", digits_zoo / "data" / "train",
            "-o", "epochs=1", "--out", out)
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model is None and getattr(card.data, "base_model_relation", None) is None
    assert f"{ORG}/mit-a" in card.content  # the teacher is still listed among the members
