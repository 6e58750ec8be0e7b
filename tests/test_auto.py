"""--strategy auto: candidates (strategies × sweep points) run on the members, scored on held-out data, the best
written with the leaderboard; every candidate checked before a member is read."""

from __future__ import annotations

import json

import pytest

from conftest import refused, run_zoo


def _fails(out, *args, words):
    refused(run_zoo, out, *args, words=words)


def test_auto_keeps_the_best_candidate_with_its_leaderboard_and_reproduces(tmp_path, ingredients, digits_zoo,
                                                                           val_dir):
    base = digits_zoo / "members" / "base"
    members = [a for m in ingredients[:3] for a in ("-m", m)]
    out = tmp_path / "auto"
    run_zoo("combine", "-s", "auto", "--base", base, *members, "--eval-data", val_dir,
            "-o", "candidates=task-arithmetic[scale=0.2,1] ties[scale=1] model-stock", "--out", out)
    recipe = json.loads((out / "zoo.json").read_text())
    board = recipe["report"]["auto"]["leaderboard"]
    assert [(r["strategy"], r["options"]) for r in board] == [
        ("task-arithmetic", {"scale": 0.2}), ("task-arithmetic", {"scale": 1.0}), ("ties", {"scale": 1.0}),
        ("model-stock", {})]
    scores = [r["score"] for r in board]
    assert len(set(scores)) > 1 and all(r["seconds"] > 0 for r in board)
    best = board[scores.index(max(scores))]
    assert [r["kept"] for r in board].count(True) == 1 and best["kept"]
    assert recipe["report"]["auto"]["kept"] == {"strategy": best["strategy"], "options": best["options"]}
    assert recipe["metrics"]["top1"] == pytest.approx(best["score"])
    # the very model the kept candidate writes when run alone
    direct = tmp_path / "direct"
    run_zoo("combine", "-s", best["strategy"], "--base", base, *members,
            *[a for k, v in best["options"].items() for a in ("-o", f"{k}={v}")], "--out", direct)
    assert (out / "model.safetensors").read_bytes() == (direct / "model.safetensors").read_bytes()
    card = (out / "README.md").read_text()
    assert "Leaderboard (--strategy auto)" in card and "← kept" in card and "model-stock" in card
    # zoo reproduce runs the whole leaderboard again and gets the same model
    assert "identical" in run_zoo("reproduce", out).stdout


@pytest.mark.parametrize("candidates,words", [
    ("ties[scale=1] no-such-merge", ["candidate 'no-such-merge' is not a strategy", "task-arithmetic"]),
    ("ties[sharpness=2]", ["sharpness", "ties"]),
    ("ties[scale=1", ["never close", "NAME[OPTION=VALUE"]),
    ("ties[scale]", ["'scale'", "OPTION=VALUE"]),
    ("fisher", ["'fisher' cannot run here", "--train-data"]),
    ("distill", ["'distill' cannot run here"]),
])
def test_bad_candidates_are_refused_before_any_member_is_read(tmp_path, ingredients, digits_zoo, val_dir,
                                                              candidates, words):
    _fails(tmp_path / "out", "combine", "-s", "auto", "--base", digits_zoo / "members" / "base", "-m", ingredients[0],
           "-m", tmp_path / "not-there", "--eval-data", val_dir, "-o", f"candidates={candidates}", words=words)


def test_the_default_candidates_are_those_the_run_can_score(tmp_path, ingredients, val_dir):
    """Without -o candidates: with a base, the soups and the task-vector methods over their λ ranges; without one,
    the soups alone (naming a method that needs a base is refused); with --multi-task, merge methods alone."""
    from zoo import host as _host
    from zoo.api.auto import plan

    host = _host.load()
    auto = host.strategy("auto")
    opts = auto.Options()
    without = plan(auto, opts, host, base=False, multi_task=False, train=False)
    assert [(p.strategy, p.given) for p in without] == [("soup", {}), ("soup", {"mode": "greedy"})]
    based = [(p.strategy, p.given) for p in plan(auto, opts, host, base=True, multi_task=False, train=False)]
    assert based[:2] == [("soup", {}), ("soup", {"mode": "greedy"})]
    assert [g["scale"] for s, g in based if s == "task-arithmetic"] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert {s for s, _ in based} >= {"ties", "dare", "model-stock"}
    tasks = [p.strategy for p in plan(auto, opts, host, base=True, multi_task=True, train=False)]
    assert "soup" not in tasks and "ties" in tasks
    _fails(tmp_path / "out", "combine", "-s", "auto", "-m", ingredients[0], "-m", ingredients[1], "--eval-data",
           val_dir, "-o", "candidates=ties", words=["'ties' cannot run here", "--base"])
