"""zoo select on real members of different architectures trained on different real data (the transfer-demo zoo)."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_bad_input import _fails  # noqa: E402

#: the start of an absolute path: "/…", "~/…" or "C:\…" at the start of a line, a string or a word
ABSOLUTE = re.compile(r"""(?:^|[\s"'=(,\[])(?:/|~/|[A-Za-z]:\\)""", re.MULTILINE)


@pytest.fixture(scope="session")
def transfer_zoo() -> Path:
    from zoo.demos import ensure_built

    return ensure_built("transfer")


@pytest.fixture(scope="session")
def validated(transfer_zoo, tmp_path_factory):
    """One validated LogME selection of the whole zoo, through the CLI (shared: the forward passes are the cost)."""
    from conftest import run_zoo

    out = tmp_path_factory.mktemp("sel") / "selection"
    proc = run_zoo("select", "--zoo", "transfer-demo", "--metric", "logme", "--top-k", "3", "--validate",
                   "--out", out)
    return out, proc


def test_select_ranks_validates_and_writes_a_zoo(validated, transfer_zoo):
    out, proc = validated
    assert {p.name for p in out.iterdir()} == {"ranking.csv", "ranking.json", "zoo.toml", "validation.png"}
    report = json.loads((out / "ranking.json").read_text())
    rows = report["ranking"]
    assert len(rows) == 7 and [r["rank"] for r in rows] == list(range(1, 8))
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    by_name = {r["member"]: r for r in rows}
    # the real probes order the ends as built: trained on the task itself best, untrained worst
    best = max(rows, key=lambda r: r["probe_top1"])["member"]
    assert best == "digits-effnet", [(r["member"], r["probe_top1"]) for r in rows]
    assert by_name["untrained-resnet"]["probe_top1"] < by_name["digits-effnet"]["probe_top1"] - 0.1
    # LogME agrees with them: its ranking correlates with the probes, and τ is what scipy computes from the table
    from scipy.stats import kendalltau

    tau = report["validation"]["tau"]
    assert tau == pytest.approx(kendalltau([r["score"] for r in rows], [r["probe_top1"] for r in rows]).statistic)
    assert tau > 0.3, tau
    assert rows[0]["member"] in ("digits-effnet", "mnist-effnet"), rows[0]
    assert f"{tau:.3f}" in proc.stderr
    with open(out / "ranking.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["member"] for t in table] == [r["member"] for r in rows]
    # nothing absolute in what select writes: members and data relative to the output, messages scrubbed
    for name in ("ranking.json", "ranking.csv", "zoo.toml"):
        text = (out / name).read_text()
        assert not ABSOLUTE.search(text), f"{name}: {ABSOLUTE.search(text).group(0)!r} in\n{text}"
    assert (out / report["target_data"]).resolve() == (transfer_zoo / "data" / "train").resolve()
    # zoo.toml: the top 3, relative to its folder, and a zoo every command accepts
    from zoo.registry import load_zoo

    z = load_zoo(str(out / "zoo.toml"))
    assert [Path(m).name for m in z.members] == [r["member"] for r in rows[:3]]
    assert Path(z.data["train"]).is_dir() and Path(z.data["eval"]).is_dir()
    # the figure is each member's score against its probe accuracy, as in the table, selected ones marked
    from figcheck import assert_png_is

    from zoo.kit.card.figures import score_vs_accuracy

    fig = score_vs_accuracy(rows, metric="logme", tau=tau, selected=report["selected"])
    assert_png_is(out / "validation.png", fig)
    assert report["selected"] == [r["spec"] for r in rows[:3]]
    points = [(float(ln.get_xdata()[0]), float(ln.get_ydata()[0]), ln.get_marker())
              for ln in fig.axes[0].get_lines() if len(ln.get_xdata())]
    assert sorted(points) == sorted((r["score"], r["probe_top1"] * 100, "o" if r["rank"] <= 3 else "s")
                                    for r in rows)
    assert f"τ = {tau:.2f}" in fig.axes[0].get_title()


def test_second_select_on_the_same_data_runs_no_forward_pass(validated, tmp_path, zoo_cli):
    out, _ = validated
    again = tmp_path / "again"
    zoo_cli("select", "--zoo", "transfer-demo", "--metric", "logme", "--out", again)
    first = json.loads((out / "ranking.json").read_text())["ranking"]
    second = json.loads((again / "ranking.json").read_text())["ranking"]
    assert all(r["features"] == "cache" and r["seconds_features"] == 0 for r in second)
    assert {r["member"]: r["score"] for r in second} == {r["member"]: r["score"] for r in first}


@pytest.mark.parametrize("metric", ["leep", "nce", "hscore", "hscore-shrinkage", "gbc"])
def test_every_metric_ranks_the_untrained_member_below_the_one_trained_on_the_task(validated, metric):
    from zoo import select

    sel = select(target_data=None, zoo="transfer-demo", metric=metric)
    order = [r["member"] for r in sel.ranking]
    assert order.index("digits-effnet") < order.index("untrained-resnet"), (metric, order)


def test_ensemble_picks_a_team_and_validates_it(validated, tmp_path, zoo_cli):
    out = tmp_path / "team"
    proc = zoo_cli("select", "--zoo", "transfer-demo", "--ensemble", "--top-k", "3", "--validate", "--out", out)
    report = json.loads((out / "ranking.json").read_text())
    team = report["team"]
    assert team["metric"] == "osborn" and len(team["steps"]) == 3
    picked = [s["added"] for s in team["steps"]]
    assert len(set(picked)) == 3
    # from an empty team the gain is the member's own terms: the one trained on the task itself has the
    # smallest task difference (its source labels are the target labels) and wins
    assert picked[0] == "digits-effnet", team["steps"]
    # every member had its source data: the domain term was measured by OT, and it orders the domains as built
    terms = team["terms"]
    assert all(t["domain"] > 0 for t in terms.values()), terms
    from zoo import select

    every = select(zoo="transfer-demo", ensemble=True, top_k=7).team["terms"]
    assert every["mnist-inverted-resnet"]["domain"] == max(t["domain"] for t in every.values())
    assert every["mnist-effnet"]["domain"] > every["digits-effnet"]["domain"]
    assert report["selected"] == [s["spec"] for s in team["steps"]]
    ens = report["validation"]["ensembles"]
    assert 0.5 < ens["team"] <= 1 and set(ens) == {"team", "top-3 by the metric", "top-3 by probe accuracy (oracle)",
                                                    "best single member (oracle)"}
    assert [s["ensemble_probe_top1"] for s in team["steps"]][0] == ens["best single member (oracle)"]
    assert "team (osborn)" in proc.stderr


@pytest.mark.parametrize("team_metric", ["ms-leep", "e-leep"])
def test_baseline_team_metrics(validated, team_metric):
    from zoo import select

    sel = select(zoo="transfer-demo", ensemble=True, top_k=2, team_metric=team_metric)
    assert len(sel.selected) == 2 and sel.team["metric"] == team_metric
    assert "untrained-resnet" not in [s["added"] for s in sel.team["steps"]]


def test_a_selection_is_a_zoo_combine_accepts(tmp_path, ingredients, val_dir, digits_zoo, zoo_cli):
    sel = tmp_path / "sel"
    zoo_cli("select", *[a for m in ingredients for a in ("-m", m)], "--target-data", digits_zoo / "data" / "train",
            "--metric", "leep", "--top-k", "2", "--out", sel)
    chosen = json.loads((sel / "ranking.json").read_text())["selected"]
    soup = tmp_path / "soup"
    zoo_cli("combine", "--strategy", "soup", "--members-from", sel / "zoo.toml", "--eval-data", val_dir,
            "--out", soup)
    used = [m["spec"] for m in json.loads((soup / "zoo.json").read_text())["members"]]
    assert used == [Path(c).name for c in chosen]  # published by name (zoo.kit._infra.scrub_paths)


def test_a_metric_from_a_plugin(tmp_path, validated, zoo_cli):
    (tmp_path / "margin_metric.py").write_text(
        "import numpy as np\nimport zoo\n\n"
        "def margin(t):\n    top2 = np.sort(t.probs, axis=1)[:, -2:]\n    return float((top2[:, 1] - top2[:, 0]).mean())\n\n"
        "@zoo.hookimpl\ndef zoo_transferability_metrics():\n"
        "    return [zoo.TransferMetric('margin', 'mean top-1 minus top-2 source probability', margin,"
        " needs='predictions')]\n")
    env = {"PYTHONPATH": str(tmp_path), "COLUMNS": "250"}  # a wide table: nothing cut
    listing = zoo_cli("--plugin", "margin_metric", "select", "--list-metrics", env=env).stdout
    assert "margin" in listing and "--plugin margin_metric" in listing
    out = tmp_path / "m"
    zoo_cli("--plugin", "margin_metric", "select", "--zoo", "transfer-demo", "--metric", "margin", "--out", out,
            env=env)
    rows = json.loads((out / "ranking.json").read_text())["ranking"]
    assert all(0 <= r["score"] <= 1 for r in rows) and len(rows) == 7


# ---- bad input ---------------------------------------------------------------------------------
def test_target_data_with_one_class(tmp_path, transfer_zoo, zoo_cli):
    one = tmp_path / "one"
    (one / "3").mkdir(parents=True)
    for f in sorted((transfer_zoo / "data" / "train" / "3").glob("*.png"))[:5]:
        (one / "3" / f.name).symlink_to(f)
    out = tmp_path / "out"
    err = _fails(zoo_cli, out, "select", "-m", transfer_zoo / "members" / "digits-effnet", "--target-data", one,
                 "--out", out, words=[f"--target-data {one}:", "1 class folder", "at least two"])
    assert "--train-data" not in err  # the option the user gave, not fine-tuning's


@pytest.mark.parametrize("skip_failed", [[], ["--skip-failed"]])
def test_target_data_whose_class_folders_hold_no_images(tmp_path, transfer_zoo, zoo_cli, skip_failed):
    """The data is wrong, not the members: say so, and advise nothing about skipping members."""
    target = tmp_path / "target"
    for c in ("3", "5"):
        (target / c).mkdir(parents=True)
    (target / "3" / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    members = [a for m in ("digits-effnet", "parity-vit") for a in ("-m", transfer_zoo / "members" / m)]
    err = _fails(zoo_cli, out, "select", *members, "--target-data", target, *skip_failed, "--out", out,
                 words=[f"--target-data {target}:", "class folder(s) 3, 5 hold no images"])
    assert "--skip-failed" not in err and "every member failed" not in err and "member" not in err


def test_top_k_larger_than_the_pool(tmp_path, transfer_zoo, zoo_cli):
    out = tmp_path / "out"
    _fails(zoo_cli, out, "select", "--zoo", "transfer-demo", "--top-k", "9", "--out", out,
           words=["--top-k 9", "7 member(s)"])


def test_a_failing_member_stops_the_run_unless_skip_failed(tmp_path, transfer_zoo, zoo_cli):
    out = tmp_path / "out"
    missing = tmp_path / "no-such-member"
    args = ["select", "-m", transfer_zoo / "members" / "digits-effnet", "-m", missing,
            "-m", transfer_zoo / "members" / "parity-vit", "--target-data", transfer_zoo / "data" / "train"]
    _fails(zoo_cli, out, *args, "--out", out, words=["no-such-member", "--skip-failed"])
    proc = zoo_cli(*args, "--skip-failed", "--out", out)
    report = json.loads((out / "ranking.json").read_text())
    assert [f["spec"] for f in report["failed"]] == ["../no-such-member"]  # relative to --out, as every path
    assert len(report["ranking"]) == 2
    assert "skipped" in proc.stderr and "no-such-member" in proc.stderr


def test_members_with_nan_or_constant_outputs(tmp_path, transfer_zoo, zoo_cli):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    nan, flat = tmp_path / "nan", tmp_path / "flat"
    for dst in (nan, flat):
        shutil.copytree(transfer_zoo / "members" / "digits-effnet", dst)
    sd = load_file(nan / "model.safetensors")
    key = next(k for k, v in sd.items() if v.is_floating_point() and v.dim() == 4)
    sd[key][0, 0, 0, 0] = float("nan")
    save_file(sd, nan / "model.safetensors")
    sd = load_file(flat / "model.safetensors")
    save_file({k: torch.zeros_like(v) if v.is_floating_point() and not k.endswith("running_var") else v
               for k, v in sd.items()}, flat / "model.safetensors")
    target = transfer_zoo / "data" / "train"
    out = tmp_path / "out"
    _fails(zoo_cli, out, "select", "-m", nan, "--target-data", target, "--out", out, words=["nan", "NaN"])
    _fails(zoo_cli, out, "select", "-m", flat, "--target-data", target, "--out", out,
           words=["flat", "identical for every target image"])


def test_unknown_metric_names_the_known_ones(tmp_path, transfer_zoo, zoo_cli):
    out = tmp_path / "out"
    _fails(zoo_cli, out, "select", "--zoo", "transfer-demo", "--metric", "accuracy", "--out", out,
           words=["accuracy", "logme", "leep", "gbc"])
