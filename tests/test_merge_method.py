"""The per-tensor merge contract (zoo.kit.merge): the streaming core, merge methods, a base model, bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import PLUGINS_ON
from safetensors.torch import load_file, save_file


def _exact_member(folder: Path, j: int, dtype: torch.dtype) -> Path:
    """A test_efficientnet member whose values are fixed by integer arithmetic alone (no RNG, no training),
    exactly representable in ``dtype``: the same bytes on every machine and every torch version."""
    import timm

    shapes = timm.create_model("test_efficientnet", num_classes=10).state_dict()
    sd = {}
    for i, (k, v) in enumerate(shapes.items()):
        if not v.is_floating_point():
            sd[k] = torch.tensor(j + 5, dtype=v.dtype)
            continue
        n = torch.arange(v.numel(), dtype=torch.int64)
        ints = (n * (7919 + 31 * j) + 104729 * i) % 255 - 127  # in [-127, 127]: exact in bf16 too
        t = ints.to(torch.float32) / 128
        if k.endswith("running_var"):
            t = t.abs() + 0.5
        sd[k] = t.reshape(v.shape).to(dtype)
    folder.mkdir(parents=True)
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps({"architecture": "test_efficientnet", "num_classes": 10}))
    return folder


# sha256 of model.safetensors of the uniform soup of the three exact members below, recorded before the
# streaming core was generalised (zoo.kit.tensors.stream.map_tensors): the rewrite must not move a single bit
SOUP_SHA256 = {
    "float32": "0e948fda53531c2e17b20360c8750acbd91baf2433397fcb0f7e719ecdb5485e",
    "bfloat16": "a860e7eec39ed42e4a242027307c34abd88c1561ed139388d2dc69df7ea298ec",
}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_uniform_soup_bytes_are_pinned(tmp_path, zoo_cli, dtype):
    members = [_exact_member(tmp_path / f"m{j}", j, getattr(torch, dtype)) for j in range(3)]
    out = tmp_path / "soup"
    zoo_cli("combine", "-s", "soup", *sum((["-m", m] for m in members), []), "--out", out)
    digest = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    soup, first = load_file(str(out / "model.safetensors")), load_file(str(members[0] / "model.safetensors"))
    assert all(soup[k].dtype == first[k].dtype for k in first)  # cast back to the members' dtype
    assert digest == SOUP_SHA256[dtype], digest


# ---- the streaming core --------------------------------------------------------------------------

def test_map_tensors_streams_in_small_chunks_with_the_same_result(ingredients, digits_zoo, monkeypatch):
    """Many chunks (a few tensors each) give the one-chunk result bit for bit, every member's file is
    hashed on the way, and fn sees each key's tensors in member order, with the base's."""
    import zoo
    from zoo.kit.tensors import stream, weights

    members = [zoo.load_member(str(p)) for p in ingredients[:3]]
    whole = weights.uniform_average(members)
    base = zoo.load_member(str(digits_zoo / "members" / "base"))
    members = [zoo.load_member(str(p)) for p in ingredients[:3]]  # fresh: nothing hashed yet
    monkeypatch.setattr(stream, "CHUNK_BYTES", 16 << 10)
    seen = []

    def second_minus_base(tensors, b, *, key):
        seen.append(key)
        return tensors[1] - b

    diff = zoo.map_tensors(members, second_minus_base, base=base)
    assert len(set(seen)) == len(seen) == sum(base.is_float(k) for k in base.keys())
    files = [load_file(str(p / "model.safetensors")) for p in ingredients[:2]]
    base_sd = load_file(str(digits_zoo / "members" / "base" / "model.safetensors"))
    for k, v in diff.items():
        if v.is_floating_point():
            assert torch.equal(v, files[1][k] - base_sd[k]), k
        else:  # integer buffers come from the base
            assert torch.equal(v, base_sd[k]), k
    for m, p in zip(members, ingredients):
        assert m.provenance()["files"]["model.safetensors"] == hashlib.sha256(
            (p / "model.safetensors").read_bytes()).hexdigest()
    monkeypatch.setattr(stream, "CHUNK_BYTES", 16 << 10)
    small = weights.uniform_average([zoo.load_member(str(p)) for p in ingredients[:3]])
    assert small.keys() == whole.keys() and all(torch.equal(small[k], whole[k]) for k in whole)


def test_task_vector_helpers():
    import zoo
    from zoo.kit.tensors import weights as merge

    base = {"w": torch.tensor([1.0, 2.0, 3.0]), "n": torch.tensor(7)}
    theta = {"w": torch.tensor([1.5, 1.0, 3.0]), "n": torch.tensor(9)}
    tv = merge.task_vector(theta, base)
    assert torch.equal(tv["w"], torch.tensor([0.5, -1.0, 0.0])) and tv["n"] == 9  # integers pass through
    assert torch.equal(merge.add(base, merge.scale(tv, 2.0))["w"], torch.tensor([2.0, 0.0, 3.0]))
    t = torch.tensor([0.1, -3.0, 2.0, -0.5, 2.0])
    assert torch.equal(zoo.keep_largest(t, 0.4), torch.tensor([0.0, -3.0, 2.0, 0.0, 2.0]))  # a tie: both kept
    assert torch.equal(zoo.keep_largest(t, 0.2), torch.tensor([0.0, -3.0, 0.0, 0.0, 0.0]))
    assert torch.equal(zoo.keep_largest(t, 0.0), torch.zeros(5)) and torch.equal(zoo.keep_largest(t, 1.0), t)


# ---- the TIES example, installed as a user would -------------------------------------------------

TIES = Path(__file__).parents[1] / "examples" / "zoo-ties-example"


@pytest.fixture(scope="module")
def ties_installed():
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(TIES)],
                   check=True, capture_output=True)
    yield
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", "zoo-ties-example"], check=True,
                   capture_output=True)


def _ties(base: torch.Tensor, thetas: list[torch.Tensor], density: float) -> torch.Tensor:
    """TIES written out directly (sort-based trimming, explicit loops over members), for comparison."""
    trimmed = []
    for theta in thetas:
        tv = theta - base
        k = max(1, int(density * tv.numel()))  # keep_largest's count: mergekit's
        if k == 0:
            trimmed.append(torch.zeros_like(tv))
            continue
        threshold = tv.abs().flatten().sort(descending=True).values[k - 1]
        trimmed.append(torch.where(tv.abs() >= threshold, tv, torch.zeros_like(tv)))
    total = sum(trimmed)
    num, count = torch.zeros_like(base), torch.zeros_like(base)
    for tv in trimmed:
        agrees = (tv != 0) & (torch.sign(tv) == torch.sign(total))
        num += torch.where(agrees, tv, torch.zeros_like(tv))
        count += agrees.to(base.dtype)
    return base + num / count.clamp(min=1)


def test_ties_plugin_end_to_end(tmp_path, ties_installed, ingredients, digits_zoo, zoo_cli):
    import timm

    show = zoo_cli("strategies", "show", "example-ties", env=PLUGINS_ON).stdout
    assert "zoo-ties-example" in show and "density" in show and "0.2" in show and "--base" in show
    base = digits_zoo / "members" / "base"
    members = ingredients[:3]
    out = tmp_path / "ties"
    zoo_cli("combine", "--strategy", "example-ties", "--base", base, *sum((["-m", m] for m in members), []),
            "-o", "density=0.3", "--out", out, env=PLUGINS_ON)
    model = timm.create_model(f"local-dir:{out}", pretrained=True)
    merged = model.state_dict()
    b = load_file(str(base / "model.safetensors"))
    thetas = [load_file(str(m / "model.safetensors")) for m in members]
    big = max((k for k in b if b[k].is_floating_point()), key=lambda k: b[k].numel())
    checked = [big, "conv_stem.weight", "classifier.bias"]
    for k in checked:
        expected = _ties(b[k], [t[k] for t in thetas], 0.3)
        assert not torch.allclose(expected, b[k]) and not torch.allclose(expected, thetas[0][k]), k
        assert torch.allclose(merged[k], expected, atol=1e-6), k
    # BatchNorm's running statistics are never pushed along task vectors, though the method does not know
    # them: the contract's default gives them the members' mean
    statistics = [k for k in b if k.endswith((".running_mean", ".running_var"))]
    assert statistics
    for k in statistics:
        pushed = _ties(b[k], [t[k] for t in thetas], 0.3)
        assert torch.equal(merged[k], torch.stack([t[k] for t in thetas]).mean(0)), k
        assert not torch.allclose(merged[k], pushed, atol=1e-6), k
    for k, v in b.items():
        if not v.is_floating_point():
            assert torch.equal(merged[k], v), k  # integer buffers from the base
    recipe = json.loads((out / "zoo.json").read_text())
    assert recipe["base"]["spec"] == base.name and len(recipe["base"]["files"]["model.safetensors"]) == 64
    assert [m["spec"] for m in recipe["members"]] == [Path(m).name for m in members]
    assert recipe["options"] == {"density": 0.3, "scale": 1.0}
    card = (out / "README.md").read_text()
    assert f"| base (base) | `{base.name}` |" in card and "onto the base `base`" in card


# ---- bad input --------------------------------------------------------------------------------

def _fails(zoo_cli, out, *args, code=2, words=(), env=None):
    proc = zoo_cli(*args, "--out", out, check=False, env=env)
    assert proc.returncode == code, proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("error:") and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))
    return err


def _plugin(tmp_path, name: str, source: str) -> dict:
    (tmp_path / f"{name}.py").write_text(source)
    return {"PYTHONPATH": str(tmp_path), "ZOO_PLUGINS": name}


@pytest.mark.parametrize("param, missing", [("density=0.5", "type annotation"), ("density: float", "default")])
def test_option_without_type_or_default(tmp_path, ingredients, zoo_cli, param, missing):
    env = _plugin(tmp_path, "sloppy_plugin", f"""
import zoo

@zoo.merge_method("sloppy", "an option the decorator cannot type")
def sloppy(tensors, base, *, {param}):
    return tensors[0]

@zoo.hookimpl
def zoo_strategies():
    return [sloppy]
""")
    _fails(zoo_cli, tmp_path / "out", "combine", "-s", "sloppy", "-m", ingredients[0], env=env,
           words=["sloppy_plugin", "failed to load", "sloppy_plugin.sloppy", "'density'", missing])


def test_needs_base_without_base(tmp_path, ingredients, zoo_cli):
    env = {"PYTHONPATH": str(TIES / "src"), "ZOO_PLUGINS": "zoo_ties_example.ties"}
    _fails(zoo_cli, tmp_path / "out", "combine", "-s", "example-ties", "-m", ingredients[0], "-m", ingredients[1], env=env,
           words=["'example-ties' needs a base model", "--base SPEC"])


def test_base_of_another_architecture(tmp_path, ingredients, digits_zoo, zoo_cli):
    env = {"PYTHONPATH": str(TIES / "src"), "ZOO_PLUGINS": "zoo_ties_example.ties"}
    _fails(zoo_cli, tmp_path / "out", "combine", "-s", "example-ties", "--base", digits_zoo / "members" / "other-arch",
           "-m", ingredients[0], "-m", ingredients[1], env=env,
           words=["the base other-arch", "member ft-lr3e-3", "different tensors", "test_resnet"])


def test_method_that_raises_names_plugin_method_and_tensor(tmp_path, ingredients, zoo_cli):
    env = _plugin(tmp_path, "boom_plugin", """
import zoo

@zoo.merge_method("boom", "fails on the one matrix of test_efficientnet, its classifier")
def boom(tensors, base):
    if tensors[0].ndim == 2:
        raise ValueError("kaboom")
    return tensors[0]

@zoo.hookimpl
def zoo_strategies():
    return [boom]
""")
    _fails(zoo_cli, tmp_path / "out", "combine", "-s", "boom", "-m", ingredients[0], "-m", ingredients[1], env=env,
           code=1, words=["merge method 'boom'", "boom_plugin", "'classifier.weight'", "ValueError: kaboom"])


LINEAR = """
import zoo

@zoo.merge_method("linear", "Σ wᵢ θᵢ with one weight per member")
def linear(tensors, base, *, weights: list[float] | None = zoo.option(None, "the weights (default: uniform)")):
    weights = weights or [1 / len(tensors)] * len(tensors)
    return sum(w * t for w, t in zip(weights, tensors))

@zoo.hookimpl
def zoo_strategies():
    return [linear]
"""


def test_per_member_option(tmp_path, ingredients, zoo_cli):
    env = _plugin(tmp_path, "linear_plugin", LINEAR)
    members = sum((["-m", m] for m in ingredients[:3]), [])
    assert "one value per member" in zoo_cli("strategies", "show", "linear", env=env).stdout
    _fails(zoo_cli, tmp_path / "bad", "combine", "-s", "linear", *members, "-o", "weights=0.2,0.8", env=env,
           words=["option weights has 2 value(s) but there are 3 members", "-o weights=0.5,0.5,0.5"])
    out = tmp_path / "out"
    zoo_cli("combine", "-s", "linear", *members, "-o", "weights=0.2,0.3,0.5", "--out", out, env=env)
    merged = load_file(str(out / "model.safetensors"))
    thetas = [load_file(str(m / "model.safetensors")) for m in ingredients[:3]]
    for k in ("conv_stem.weight", "classifier.weight"):
        expected = 0.2 * thetas[0][k] + 0.3 * thetas[1][k] + 0.5 * thetas[2][k]
        assert torch.allclose(merged[k], expected, atol=1e-6), k
        assert not torch.allclose(merged[k], sum(t[k] for t in thetas) / 3, atol=1e-4), k


def test_card_lists_the_base_first_in_base_model():
    from zoo.api import card
    from zoo.kit.strategy import Combined

    def prov(name, repo):
        return {"name": name, "spec": f"hf-hub:{repo}", "repo_id": repo, "revision": "a" * 40,
                "files": {"model.safetensors": "b" * 64}}

    combined = Combined(state_dict={}, strategy="ties", members=[prov("ft", "org/ft"), prov("ft2", "org/ft2")],
                        base=prov("pre", "org/pre"))
    built = card.build(combined, name="t", eval_data=None, extra_sections=[])
    assert built.data.base_model == ["org/pre", "org/ft", "org/ft2"]
    assert "| pre (base) | `hf-hub:org/pre` |" in built.text and "onto the base `pre`" in built.text
