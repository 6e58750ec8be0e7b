"""`zoo discover BASE`: the Hub's model tree searched for real (list_models over HTTP to the test Hub's front,
which computes each repo's tags from its model card as the Hub does), candidates checked from their
safetensors headers and config.json alone, and the zoo file it writes combined over the Hub."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from hubserver import free_port

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ORG = "discover-test"
FINETUNES = ["ft-b", "ft-a", "ft-other", "ft-head"]  # most downloaded first (see `tree`)


def _card(front_matter: str) -> str:
    return f"---\n{front_matter.strip()}\n---\n\n# a test model\n"


@pytest.fixture(scope="module")
def tree(hub, ingredients, digits_zoo, tmp_path_factory):
    """A base, four fine-tunes that name it (two that fit, one of another architecture, one with another
    head), a merge of it, an adapter of it without safetensors, and an unrelated model, published as their
    authors would; returns {name: commit sha}."""
    members = digits_zoo / "members"
    head = tmp_path_factory.mktemp("five-classes")  # ingredients[4] with a 5-class head: another shape
    config = json.loads((ingredients[4] / "config.json").read_text())
    (head / "config.json").write_text(json.dumps({**config, "num_classes": 5, "label_names": list("01234")}))
    weights = load_file(str(ingredients[4] / "model.safetensors"))
    weights.update({k: weights[k][:5].clone() for k in ("classifier.weight", "classifier.bias")})
    save_file(weights, str(head / "model.safetensors"), metadata={"format": "pt"})
    repos = {
        "base": (members / "base", None),
        "ft-a": (ingredients[0], f"base_model: {ORG}/base\nbase_model_relation: finetune"),
        # a list of one and no relation: the Hub infers a fine-tune
        "ft-b": (ingredients[1], f"base_model:\n- {ORG}/base"),
        "ft-other": (members / "other-arch", f"base_model: {ORG}/base\nbase_model_relation: finetune"),
        "ft-head": (head, f"base_model: {ORG}/base\nbase_model_relation: finetune"),
        "merged": (ingredients[2], f"base_model:\n- {ORG}/base\n- {ORG}/ft-a\nbase_model_relation: merge"),
        "adapter": (None, f"base_model: {ORG}/base"),  # adapter_config.json: the Hub infers an adapter
        "unrelated": (ingredients[3], "base_model: someone-else/another-base\nlicense: apache-2.0"),
    }
    shas = {}
    for name, (source, card) in repos.items():
        folder = tmp_path_factory.mktemp(name)
        if source is not None:
            for f in source.iterdir():
                shutil.copy(f, folder / f.name)
        else:
            shutil.copy(ingredients[0] / "config.json", folder / "config.json")
            (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
        if card:
            (folder / "README.md").write_text(_card(card))
        shas[name] = hub.publish(folder, f"{ORG}/{name}")
    hub.stats.update({f"{ORG}/ft-b": {"downloads": 7, "likes": 1}, f"{ORG}/ft-a": {"downloads": 3, "likes": 2},
                      f"{ORG}/ft-other": {"downloads": 1, "likes": 9}})
    return shas


def _json(proc) -> list[dict]:
    """The candidates of `zoo discover --json` (an object: the base, the count per format, the candidates)."""
    return json.loads(proc.stdout)["candidates"]


def test_lists_exactly_the_fine_tunes_pinned_to_their_commits(tree, zoo_cli):
    found = _json(zoo_cli("discover", f"{ORG}/base", "--json"))
    assert [c["repo_id"] for c in found] == [f"{ORG}/{n}" for n in FINETUNES]  # by downloads, most first
    assert [c["spec"] for c in found] == [f"hf-hub:{ORG}/{n}@{tree[n]}" for n in FINETUNES]
    assert {c["relation"] for c in found} == {"finetune"} and all(c["fits"] is None for c in found)
    # the other spellings of the base, the limit and the sort go to the Hub as they should
    assert _json(zoo_cli("discover", f"hf-hub:{ORG}/base@main", "--json")) == found
    assert [c["repo_id"] for c in _json(zoo_cli("discover", f"{ORG}/base", "--limit", "2", "--json"))] == \
        [f"{ORG}/ft-b", f"{ORG}/ft-a"]
    by_likes = _json(zoo_cli("discover", f"{ORG}/base", "--sort", "likes", "--json"))
    assert [c["repo_id"] for c in by_likes] == [f"{ORG}/{n}" for n in ("ft-other", "ft-a", "ft-b", "ft-head")]
    proc = zoo_cli("discover", f"{ORG}/base")  # the table
    assert all(f"{ORG}/{n}" in proc.stdout and tree[n][:10] in proc.stdout for n in FINETUNES)
    assert f"{ORG}/merged" not in proc.stdout and f"{ORG}/unrelated" not in proc.stdout
    assert "4 models name" in proc.stderr


def test_other_relations(tree, zoo_cli):
    merges = _json(zoo_cli("discover", f"{ORG}/base", "--relation", "merge", "--json"))
    assert [(c["repo_id"], c["sha"], c["relation"]) for c in merges] == [(f"{ORG}/merged", tree["merged"], "merge")]
    # the merge names ft-a as a base too
    assert [c["repo_id"] for c in _json(zoo_cli("discover", f"{ORG}/ft-a", "-r", "merge", "--json"))] == \
        [f"{ORG}/merged"]
    every = _json(zoo_cli("discover", f"{ORG}/base", "-r", "all", "--json"))
    assert {c["repo_id"]: c["relation"] for c in every} == {
        **{f"{ORG}/{n}": "finetune" for n in FINETUNES}, f"{ORG}/merged": "merge", f"{ORG}/adapter": "adapter"}
    both = _json(zoo_cli("discover", f"{ORG}/base", "-r", "merge", "-r", "adapter", "--json"))
    assert {c["repo_id"] for c in both} == {f"{ORG}/merged", f"{ORG}/adapter"}


def test_check_says_which_fit_and_why_not_without_downloading_weights(tree, tmp_path, zoo_cli):
    from huggingface_hub import try_to_load_from_cache

    home = tmp_path / "hf-home"  # an empty huggingface_hub cache: what the check downloads lands here alone
    env = {"HF_HOME": str(home)}
    found = {c["repo_id"]: c for c in _json(zoo_cli("discover", f"{ORG}/base", "--check", "--json", env=env))}
    assert [n for n in FINETUNES if found[f"{ORG}/{n}"]["fits"]] == ["ft-b", "ft-a"]
    assert all(c["format"] == "timm" and c["loads"] for c in found.values())  # misfits too: zoo loads them
    other = found[f"{ORG}/ft-other"]
    assert other["fits"] is False and other["verdict"] == "another architecture"
    assert "different tensors" in other["reason"] and "test_resnet" in other["reason"], other["reason"]
    assert other["architecture"] == "test_resnet" and found[f"{ORG}/ft-a"]["architecture"] == "test_efficientnet"
    head = found[f"{ORG}/ft-head"]
    assert head["fits"] is False and head["verdict"] == "different shape"
    assert "'classifier." in head["reason"] and "[10" in head["reason"] and "[5" in head["reason"], head["reason"]

    proc = zoo_cli("discover", f"{ORG}/base", "--check", env=env)
    assert f"3. {ORG}/ft-other does not fit: " in proc.stdout and "different tensors" in proc.stdout
    assert f"4. {ORG}/ft-head does not fit: " in proc.stdout
    assert "2 of 4 fit" in proc.stderr and "1 another architecture" in proc.stderr and "1 different shape" in proc.stderr

    adapter = _json(zoo_cli("discover", f"{ORG}/base", "-r", "adapter", "--check", "--json", env=env))
    assert [(c["fits"], c["verdict"]) for c in adapter] == [(False, "no safetensors")]
    assert "no safetensors weights" in adapter[0]["reason"]

    cache = home / "hub"
    for name in ["base", *FINETUNES]:
        rev = "main" if name == "base" else tree[name]  # candidates are read at their pinned commit
        assert not isinstance(try_to_load_from_cache(f"{ORG}/{name}", "model.safetensors", cache_dir=cache,
                                                     revision=rev), str), name
        # the cache looked at is the one the check used: the small file it read is there
        assert isinstance(try_to_load_from_cache(f"{ORG}/{name}", "config.json", cache_dir=cache, revision=rev),
                          str), name
    assert list(cache.rglob("*.safetensors")) == []


def test_write_a_zoo_then_soup_it_over_the_hub(tree, ingredients, tmp_path, zoo_cli):
    from zoo.registry import load_zoo

    path = tmp_path / "zoo.toml"
    proc = zoo_cli("discover", f"{ORG}/base", "--write", path)  # --check implied
    assert "2 of 4 fit" in proc.stderr and f"wrote {path}" in proc.stderr
    written = tomllib.loads(path.read_text())
    pinned = [f"hf-hub:{ORG}/ft-b@{tree['ft-b']}", f"hf-hub:{ORG}/ft-a@{tree['ft-a']}"]
    assert written["members"] == pinned and written["name"] == "zoo"
    assert load_zoo(str(path)).members == pinned
    assert [p.name for p in tmp_path.iterdir()] == ["zoo.toml"]  # no temporary file left beside it

    out = tmp_path / "soup"
    zoo_cli("combine", "-s", "soup", "--members-from", path, "--out", out)
    recipe = json.loads((out / "zoo.json").read_text())
    assert [m["revision"] for m in recipe["members"]] == [tree["ft-b"], tree["ft-a"]]
    local = tmp_path / "local"  # the same soup from the same files on disk: the same bytes
    zoo_cli("combine", "-s", "soup", "-m", ingredients[1], "-m", ingredients[0], "--out", local)
    a, b = load_file(str(out / "model.safetensors")), load_file(str(local / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    before = path.read_text()
    proc = zoo_cli("discover", f"{ORG}/base", "-r", "all", "--write", path, check=False)
    assert proc.returncode == 2 and "--force" in proc.stderr and path.read_text() == before
    zoo_cli("discover", f"{ORG}/base", "-r", "all", "--write", path, "--force")
    assert tomllib.loads(path.read_text())["members"] == pinned + [f"hf-hub:{ORG}/merged@{tree['merged']}"]


def test_the_api(tree, tmp_path):
    import zoo
    from zoo.api.discover import discover

    assert zoo.discover is discover
    found = zoo.discover(f"{ORG}/base", check=True)
    assert [(c.repo_id, c.fits) for c in found] == [(f"{ORG}/ft-b", True), (f"{ORG}/ft-a", True),
                                                     (f"{ORG}/ft-other", False), (f"{ORG}/ft-head", False)]
    assert found[0].spec == f"hf-hub:{ORG}/ft-b@{tree['ft-b']}"


CLOSED = "closed"  # stands for an endpoint where nothing listens


@pytest.mark.parametrize("args, env, code, words", [
    ([f"{ORG}/ft-a"], {}, 2, [f"names {ORG}/ft-a as its base with relation finetune",
                              "try --relation adapter/merge/quantized"]),
    ([f"{ORG}/unrelated", "-r", "all"], {}, 2, ["no model on", "base_model: " + f"{ORG}/unrelated"]),
    # an unknown relation is refused before any request: with the Hub out of reach too
    ([f"{ORG}/base", "-r", "lora"], {"HF_ENDPOINT": CLOSED}, 2, ["--relation lora", "finetune, adapter, merge, quantized"]),
    ([f"{ORG}/base", "--sort", "stars"], {}, 2, ["--sort stars", "downloads"]),
    ([f"{ORG}/base", "--limit", "0"], {}, 2, ["--limit 0"]),
    (["./some-folder"], {}, 2, ["ORG/NAME"]),
    ([f"{ORG}/does-not-exist", "--check"], {}, 2, [f"{ORG}/does-not-exist", "not found"]),
    ([f"{ORG}/base", "-r", "adapter"], {}, 2, ["none of the 1 candidates fits", "no safetensors"]),
    ([f"{ORG}/base"], {"HF_ENDPOINT": CLOSED}, 1, ["cannot reach"]),
])
def test_bad_input_is_one_line_and_writes_nothing(tree, tmp_path, zoo_cli, args, env, code, words):
    if env.get("HF_ENDPOINT") == CLOSED:
        env = {**env, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    path = tmp_path / "zoo.toml"
    proc = zoo_cli("discover", *args, "--write", path, env=env, check=False)
    assert proc.returncode == code, proc.stderr
    assert all(w in proc.stderr for w in words), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not path.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [[], ["--check"]])
def test_a_hub_that_refuses_connections_fails_at_once(tmp_path, zoo_cli, args):
    """huggingface_hub retries a refused request five times with backoff (1+2+4+8+8 s): zoo asks once."""
    import time

    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there: every connection is refused
    start = time.monotonic()
    proc = zoo_cli("discover", f"{ORG}/base", *args, env={"HF_ENDPOINT": endpoint}, check=False)
    took = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == (f"error: searching the model tree of {ORG}/base: cannot reach {endpoint} "
                                   "([Errno 111] Connection refused)")
    assert took < 10, f"{took:.1f} s: retried"


def test_the_hub_failing(tree, hub, tmp_path, zoo_cli):
    hub.fail_with = 500
    try:
        proc = zoo_cli("discover", f"{ORG}/base", "--write", tmp_path / "zoo.toml", check=False)
    finally:
        hub.fail_with = None
    assert proc.returncode == 1 and "500" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_write_target_is_checked_before_any_request(tree, tmp_path, zoo_cli):
    closed = {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    (tmp_path / "taken.toml").write_text("name = 'mine'\n")
    for target, words in ((tmp_path / "taken.toml", "--force"), (tmp_path / "zoo.txt", ".toml"),
                          (tmp_path / "no" / "zoo.toml", "does not exist")):
        proc = zoo_cli("discover", f"{ORG}/base", "--write", target, env=closed, check=False)
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr
    assert (tmp_path / "taken.toml").read_text() == "name = 'mine'\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.toml"]
