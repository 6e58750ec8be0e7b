"""The Hub path for real: downloads through olah on 127.0.0.1, pushes through the upload stand-in,
read back with timm. No huggingface_hub function is patched."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from hubserver import TOKEN, free_port

ORG = "zoo-test"


@pytest.fixture(scope="session")
def published(hub, ingredients):
    """Three ingredients published as Hub repos; returns {name: commit sha}."""
    return {name: hub.publish(path, f"{ORG}/{name}") for name, path in zip("abc", ingredients)}


def test_combine_from_hub_then_push_and_load_with_timm(tmp_path, hub, published, ingredients, val_dir, zoo_cli):
    import timm
    from huggingface_hub import ModelCard

    out = tmp_path / "soup"
    short = published["b"][:10]
    proc = zoo_cli("combine", "-s", "soup", "-m", f"hf-hub:{ORG}/a", "-m", f"hf-hub:{ORG}/b@{short}",
                   "-m", ingredients[2], "--eval-data", val_dir, "--out", out, "--push", f"{ORG}/soup",
                   env={"HF_TOKEN": TOKEN})
    assert TOKEN not in proc.stdout + proc.stderr
    assert all(TOKEN not in f.read_bytes().decode("latin-1") for f in out.iterdir())

    recipe = json.loads((out / "zoo.json").read_text())
    by_spec = {m["spec"]: m for m in recipe["members"]}
    assert by_spec[f"hf-hub:{ORG}/a"]["revision"] == published["a"]  # "main" pinned to its sha
    assert by_spec[f"hf-hub:{ORG}/b@{short}"]["revision"] == published["b"]

    # the soup of hub members equals the soup of the same files on disk
    local = tmp_path / "local"
    zoo_cli("combine", "-s", "soup", *sum((["-m", p] for p in ingredients[:3]), []), "--out", local)
    a, b = load_file(str(out / "model.safetensors")), load_file(str(local / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    # read back through olah, as a user would
    model = timm.create_model(f"hf-hub:{ORG}/soup", pretrained=True)
    sd = model.state_dict()
    assert all(torch.equal(sd[k], a[k]) for k in a)
    card = ModelCard.load(f"{ORG}/soup")
    assert set(card.data.base_model) == {f"{ORG}/a", f"{ORG}/b"}
    assert card.data.eval_results[0].metric_value == pytest.approx(recipe["metrics"]["top1"], abs=1e-6)


def test_push_command_and_private_flag(tmp_path, hub, ingredients, zoo_cli):
    out = tmp_path / "soup"
    zoo_cli("combine", "-s", "soup", "-m", ingredients[0], "-m", ingredients[1], "--out", out)
    proc = zoo_cli("push", out, f"{ORG}/pushed", "--private", env={"HF_TOKEN": TOKEN})
    assert "pushed" in proc.stderr and TOKEN not in proc.stdout + proc.stderr
    from huggingface_hub import hf_hub_download

    got = hf_hub_download(f"{ORG}/pushed", "zoo.json", revision="main")
    assert json.loads(open(got).read())["strategy"] == "soup"


@pytest.mark.parametrize("spec, words", [
    (f"hf-hub:{ORG}/does-not-exist", ["does-not-exist", "not found"]),
    (f"hf-hub:{ORG}/a@0123456789abcdef0123456789abcdef01234567", ["not found", "0123456789abcdef"]),
    ("hf-hub:no-slash", ["hf-hub:ORG/NAME"]),
])
def test_missing_repo_or_revision(tmp_path, hub, published, zoo_cli, spec, words):
    out = tmp_path / "out"
    proc = zoo_cli("combine", "-s", "soup", "-m", spec, "--out", out, check=False)
    assert proc.returncode == 2, proc.stderr
    assert all(w in proc.stderr for w in words), proc.stderr
    assert not out.exists()


def test_push_without_token_is_refused(tmp_path, hub, ingredients, zoo_cli):
    out = tmp_path / "soup"
    zoo_cli("combine", "-s", "soup", "-m", ingredients[0], "--out", out)
    proc = zoo_cli("push", out, f"{ORG}/no-token", check=False)
    assert proc.returncode == 1
    assert "hf auth login" in proc.stderr and "HF_TOKEN" in proc.stderr
    assert proc.stderr.count("\n") <= 3


def test_hub_down_and_hub_failing(tmp_path, hub, published, ingredients, zoo_cli):
    out = tmp_path / "soup"
    zoo_cli("combine", "-s", "soup", "-m", ingredients[0], "--out", out)
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    proc = zoo_cli("push", out, f"{ORG}/down", env={"HF_TOKEN": TOKEN, "HF_ENDPOINT": closed}, check=False)
    assert proc.returncode == 1 and "cannot reach" in proc.stderr and closed in proc.stderr
    proc = zoo_cli("combine", "-s", "soup", "-m", f"hf-hub:{ORG}/c", "--out", tmp_path / "x",
                   env={"HF_ENDPOINT": closed}, check=False)
    assert proc.returncode == 1 and "cannot reach" in proc.stderr
    assert not (tmp_path / "x").exists()
    hub.fail_with = 500
    try:
        proc = zoo_cli("push", out, f"{ORG}/fails", env={"HF_TOKEN": TOKEN}, check=False)
        assert proc.returncode == 1 and "500" in proc.stderr and "Traceback" not in proc.stderr
    finally:
        hub.fail_with = None


def test_select_over_the_hub_pins_revisions_and_reports_a_member_that_fails_to_download(
        tmp_path, hub, published, digits_zoo, zoo_cli):
    args = ["select", "-m", f"hf-hub:{ORG}/a", "-m", f"hf-hub:{ORG}/does-not-exist", "-m", f"hf-hub:{ORG}/b",
            "--target-data", digits_zoo / "data" / "train", "--metric", "leep"]
    out = tmp_path / "sel"
    proc = zoo_cli(*args, "--out", out, check=False)
    assert proc.returncode == 2 and "does-not-exist" in proc.stderr and "--skip-failed" in proc.stderr
    assert not out.exists()
    proc = zoo_cli(*args, "--skip-failed", "--top-k", "1", "--out", out)
    report = json.loads((out / "ranking.json").read_text())
    assert [f["spec"] for f in report["failed"]] == [f"hf-hub:{ORG}/does-not-exist"]
    assert {r["revision"] for r in report["ranking"]} == {published["a"], published["b"]}
    [chosen] = report["selected"]
    name = chosen.split("/")[-1]
    assert f'"{chosen}@{published[name]}"' in (out / "zoo.toml").read_text()  # pinned to the scored commit
    closed = f"http://127.0.0.1:{free_port()}"
    proc = zoo_cli(*args, "--out", tmp_path / "down", env={"HF_ENDPOINT": closed}, check=False)
    assert proc.returncode == 1 and "cannot reach" in proc.stderr and not (tmp_path / "down").exists()


def test_an_incompatible_hub_member_is_refused_from_its_header_before_any_download(tmp_path, hub, ingredients,
                                                                                  digits_zoo, zoo_cli):
    """The soup's members are checked from their safetensors headers (HTTP range requests through
    HfApi.get_safetensors_metadata, which olah serves): no weights reach the cache before the refusal."""
    from huggingface_hub import try_to_load_from_cache

    hub.publish(ingredients[0], f"{ORG}/header-a")
    hub.publish(digits_zoo / "members" / "other-arch", f"{ORG}/header-other")
    out = tmp_path / "soup"
    proc = zoo_cli("combine", "-s", "soup", "-m", f"hf-hub:{ORG}/header-a", "-m", f"hf-hub:{ORG}/header-other",
                   "--out", out, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "before downloading any weights" in proc.stderr and f"hf-hub:{ORG}/header-other" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()
    for repo in ("header-a", "header-other"):
        assert not isinstance(try_to_load_from_cache(f"{ORG}/{repo}", "model.safetensors"), str), repo
    # a local member against a Hub one: the same check, the same words
    proc = zoo_cli("combine", "-s", "soup", "-m", ingredients[1], "-m", f"hf-hub:{ORG}/header-other",
                   "--out", out, check=False)
    assert proc.returncode == 2 and "before downloading any weights" in proc.stderr
    assert not isinstance(try_to_load_from_cache(f"{ORG}/header-other", "model.safetensors"), str)


def test_select_refuses_a_candidate_that_cannot_be_ranked_before_downloading_any_weights(
        tmp_path, hub, ingredients, digits_zoo, zoo_cli):
    """zoo select ranks any architecture, so its early check is "can it be ranked at all": a config.json
    naming a timm architecture, and safetensors weights, read without the weights."""
    import shutil

    from huggingface_hub import try_to_load_from_cache

    hub.publish(ingredients[0], f"{ORG}/sel-good")
    unknown = tmp_path / "unknown-arch"
    shutil.copytree(ingredients[1], unknown)
    config = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**config, "architecture": "no_such_net"}))
    hub.publish(unknown, f"{ORG}/sel-unknown-arch")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(ingredients[2] / "config.json", pickled / "config.json")
    torch.save(load_file(str(ingredients[2] / "model.safetensors")), pickled / "pytorch_model.bin")
    hub.publish(pickled, f"{ORG}/sel-pickled")
    args = ["select", "-m", f"hf-hub:{ORG}/sel-good", "-m", f"hf-hub:{ORG}/sel-unknown-arch",
            "-m", f"hf-hub:{ORG}/sel-pickled", "--target-data", digits_zoo / "data" / "train", "--metric", "leep"]
    out = tmp_path / "sel"
    proc = zoo_cli(*args, "--out", out, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "no_such_net" in proc.stderr and "before downloading any weights" in proc.stderr
    assert not out.exists()
    assert not isinstance(try_to_load_from_cache(f"{ORG}/sel-good", "model.safetensors"), str)
    # with --skip-failed both are reported with their reasons, and the good one is ranked
    proc = zoo_cli(*args, "--skip-failed", "--out", out)
    failed = {f["spec"]: f["error"] for f in json.loads((out / "ranking.json").read_text())["failed"]}
    assert "no_such_net" in failed[f"hf-hub:{ORG}/sel-unknown-arch"]
    assert "has no safetensors weights" in failed[f"hf-hub:{ORG}/sel-pickled"]
    assert [r["spec"] for r in json.loads((out / "ranking.json").read_text())["ranking"]] == [f"hf-hub:{ORG}/sel-good"]
