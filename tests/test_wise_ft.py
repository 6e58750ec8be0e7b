"""WiSE-FT on the digits zoo: base (the pretrained start) and ft-long (fine-tuned from it)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import zoo
from zoo.kit.tensors import weights


@pytest.fixture(scope="module")
def ends(digits_zoo):
    members = digits_zoo / "members"
    return members / "base", members / "ft-long"


@pytest.mark.parametrize("alpha,end", [(0.0, 0), (1.0, 1)])
def test_ends_are_reproduced_bit_for_bit(tmp_path, ends, alpha, end):
    out = tmp_path / "out"
    zoo.combine("wise-ft", [str(e) for e in ends], options={"pick": f"alpha={alpha}"}, out=out)
    got, want = load_file(out / "model.safetensors"), load_file(ends[end] / "model.safetensors")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_equal_fishers_are_plain_interpolation(ends):
    a, b = load_file(ends[0] / "model.safetensors"), load_file(ends[1] / "model.safetensors")
    g = torch.Generator().manual_seed(0)
    f = {k: torch.rand(v.shape, generator=g) + 0.1 for k, v in a.items() if v.is_floating_point()}
    for t in (0.0, 0.3, 1.0):
        plain, fisher = weights.lerp(a, b, t), weights.fisher_lerp(a, b, f, f, t)
        assert all(torch.allclose(plain[k], fisher[k], atol=1e-7, rtol=1e-6) for k in a)  # float64 math, one rounding
    # a Fisher of zero (floored) on one side pulls that tensor toward the other end
    zero = {k: torch.zeros_like(v) for k, v in f.items()}
    pulled = weights.fisher_lerp(a, b, zero, f, 0.5)
    key = next(k for k in f if not torch.equal(a[k], b[k]))
    assert torch.allclose(pulled[key], b[key], atol=1e-5)


def test_sweep_on_held_out_and_shifted_data(tmp_path, ends, digits_zoo, zoo_cli):
    data = digits_zoo / "data"
    out = tmp_path / "wise"
    zoo_cli("combine", "-s", "wise-ft", "-m", ends[0], "-m", ends[1], "--eval-data", data / "val",
            "--ood-data", data / "test", "--train-data", data / "train", "-o", "pick=best-avg",
            "-o", "alphas=0:1:0.25", "--out", out)
    recipe = json.loads((out / "zoo.json").read_text())
    report = recipe["report"]
    kept = [p for p in report["sweep"] if p.get("kept")]
    assert [p["alpha"] for p in kept] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert report["bn_variants"] == ["interpolate", "recompute"]  # test_efficientnet has BatchNorm
    assert len(report["sweep"]) == 2 + 3 * 2  # ends once, interior α with both BN choices
    best = max(kept, key=lambda p: ((p["id_top1"] + p["ood_top1"]) / 2, -(p["id_nll"] + p["ood_nll"])))
    assert report["picked_alpha"] == best["alpha"]
    assert recipe["metrics"]["top1"] == pytest.approx(best["id_top1"])
    assert report["ood_metrics"]["top1"] == pytest.approx(best["ood_top1"])
    # the figure is the robustness curve of the kept sweep points: shifted against held-out top-1 along α
    from figcheck import assert_png_is, lines

    from zoo.kit.card.figures import robustness_curve

    fig = robustness_curve(kept, picked=report["picked_alpha"],
                           title=f"WiSE-FT: {report['pretrained_end']} → {report['fine_tuned_end']}")
    assert_png_is(out / "wise-ft.png", fig)
    (xs, ys), = [v for k, v in lines(fig).items() if k.startswith("θ(α)")]
    assert xs == pytest.approx([p["id_top1"] * 100 for p in kept])
    assert ys == pytest.approx([p["ood_top1"] * 100 for p in kept])
    star = lines(fig)[f"picked: α={report['picked_alpha']:g}"]
    assert star[0] == pytest.approx([best["id_top1"] * 100]) and star[1] == pytest.approx([best["ood_top1"] * 100])
    card = (out / "README.md").read_text()
    assert "WiSE-FT sweep" in card and "wise-ft.png" in card
    # the output is what the sweep measured: zoo eval agrees on the held-out data
    proc = zoo_cli("eval", out, "--data", data / "val", "--json")
    assert json.loads(proc.stdout)["top1"] == pytest.approx(best["id_top1"])


def test_fisher_weighting_runs_and_differs_from_plain(tmp_path, ends, digits_zoo):
    data = digits_zoo / "data"
    common = dict(train_data=str(data / "train"), eval_data=None)
    plain = zoo.combine("wise-ft", [str(e) for e in ends], options={"pick": "alpha=0.5", "bn": "interpolate"},
                        **common)
    fisher = zoo.combine("wise-ft", [str(e) for e in ends],
                         options={"pick": "alpha=0.5", "bn": "interpolate", "fisher": True, "fisher_samples": 32},
                         **common)
    assert fisher.report["fisher"] is True
    differs = [k for k, v in plain.state_dict.items() if v.is_floating_point()
               and not torch.equal(v, fisher.state_dict[k])]
    assert differs and "num_batches_tracked" not in " ".join(differs)


def test_diagonal_fisher_is_a_mean_of_squares(ends, digits_zoo):
    from torch.func import functional_call, grad, vmap

    from zoo.kit.data import data_config, load_split
    from zoo.kit.train.fisher import diagonal_fisher

    member = zoo.load_member(str(ends[1]))
    model = member.create_model()
    # the fine-tune is so confident that labels drawn from its softmax are the true ones: scale its head down
    # (logits / 20) so they are not, and the check below also tells sampled labels from true ones
    head = model.get_classifier()
    with torch.no_grad():
        head.weight /= 20
        head.bias /= 20
    split = load_split(str(digits_zoo / "data" / "train"), data_config(member.pretrained_cfg),
                       label_names=member.label_names, num_classes=member.num_classes)
    n = 8
    f = diagonal_fisher(model, split, n, torch.device("cpu"), seed=0)
    assert set(f) == {k for k, _ in model.named_parameters()}
    assert all(p.grad is None for p in model.parameters())  # leaves the model as it found it

    # by hand: the same n examples (a seeded shuffle), each one's label drawn from the model's own softmax with
    # the same generator, then every example's gradient of -log p(y|x) on its own (torch.func, no .grad), squared,
    # and the mean of those squares
    model.eval()
    gen = torch.Generator().manual_seed(0)
    images = split.images[torch.randperm(len(split), generator=gen)[:n]]
    with torch.no_grad():
        labels = torch.cat([torch.multinomial(model(x[None]).softmax(1), 1, generator=gen)[:, 0] for x in images])
    true = split.targets[torch.randperm(len(split), generator=torch.Generator().manual_seed(0))[:n]]
    assert (labels != true).sum() >= 2, (labels, true)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss(p, x, y):
        logits = functional_call(model, (p, buffers), (x[None],))
        return torch.nn.functional.cross_entropy(logits, y[None])

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))(params, images, labels)
    for name, g in per_example.items():
        assert g.shape == (n, *params[name].shape)
        want = g.pow(2).mean(0)
        assert torch.allclose(f[name], want, rtol=1e-4, atol=1e-10), (name, (f[name] - want).abs().max())
    # the mean of squares, not the square of the mean: on this model they differ (so the check above can fail)
    squared_mean = {k: g.mean(0).pow(2) for k, g in per_example.items()}
    assert any(not torch.allclose(f[k], squared_mean[k], rtol=1e-2) for k in f)
    assert sum(float(v.sum()) for v in f.values()) > 0


def _fails(zoo_cli, *args, words=()):
    proc = zoo_cli(*args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
    for w in words:
        assert w in proc.stderr, proc.stderr
    return proc


def test_bad_input(tmp_path, ends, digits_zoo, zoo_cli):
    data, out = digits_zoo / "data", tmp_path / "out"
    m = ["-m", ends[0], "-m", ends[1]]
    _fails(zoo_cli, "combine", "-s", "wise-ft", *m, "-o", "alphas=0,1.5", "--out", out, words=["alphas=1.5",
                                                                                              "at most 1"])
    _fails(zoo_cli, "combine", "-s", "wise-ft", *m, "-o", "pick=alpha=2", "--out", out, words=["pick"])
    _fails(zoo_cli, "combine", "-s", "wise-ft", *m, "--eval-data", data / "val", "-o", "pick=best-ood",
           "--out", out, words=["--ood-data"])
    (tmp_path / "empty").mkdir()
    _fails(zoo_cli, "combine", "-s", "wise-ft", *m, "--eval-data", data / "val", "--ood-data", tmp_path / "empty",
           "--out", out, words=["empty"])
    _fails(zoo_cli, "combine", "-s", "wise-ft", "-m", ends[0], "-m", digits_zoo / "members" / "other-arch",
           "--out", out, words=["other-arch", "linear probe"])
    _fails(zoo_cli, "combine", "-s", "wise-ft", *m, "-m", digits_zoo / "members" / "ft-seed4", "--out", out,
           words=["exactly two members"])
    assert not out.exists()
