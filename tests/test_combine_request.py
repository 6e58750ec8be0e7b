"""A combine's request is checked whole before anything runs: bad input is one line, exit 2, and nothing is
written or staged (zoo.api.combine.parse_request)."""

from __future__ import annotations

import pytest


def _refused(zoo_cli, out, *args, words=()):
    proc = zoo_cli(*args, "--out", out, check=False)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    assert not out.exists(), "something was written"
    assert not list(out.parent.glob(f".{out.name}.*")), "something was left staged"
    return err


@pytest.mark.parametrize("repo_id", ["bad id!!", "org/bad id!!"])
def test_a_bad_push_repo_id_is_refused_before_the_merge(tmp_path, ingredients, zoo_cli, repo_id):
    _refused(zoo_cli, tmp_path / "soup", "combine", "-s", "soup", "-m", ingredients[0], "-m", ingredients[1],
             "--push", repo_id, words=["--push", repr(repo_id)])


@pytest.mark.parametrize("strategy", ["wise-ft", "ensemble", "cascade", "rebasin"])
def test_multi_task_with_a_strategy_that_is_not_a_merge_method_says_so(tmp_path, ingredients, digits_zoo, zoo_cli,
                                                                      strategy):
    err = _refused(zoo_cli, tmp_path / "mt", "combine", "-s", strategy, "--base", digits_zoo / "members" / "base",
                   "-m", ingredients[0], "-m", ingredients[1], "--multi-task",
                   words=["--multi-task is for merge methods", repr(strategy), "ties", "task-arithmetic"])
    assert "classifier" not in err


@pytest.mark.parametrize("strategy", ["fisher", "regmean"])
def test_multi_task_with_a_merge_that_runs_the_members_models_says_so(tmp_path, ingredients, digits_zoo, zoo_cli,
                                                                       strategy):
    """Fisher and RegMean run each member's whole model on --train-data; --multi-task hands the merge members
    without their heads (they failed on a missing classifier): refused before anything is read."""
    err = _refused(zoo_cli, tmp_path / "mt", "combine", "-s", strategy, "--base", digits_zoo / "members" / "base",
                   "-m", ingredients[0], "-m", ingredients[1], "--multi-task", "--train-data",
                   digits_zoo / "data" / "train", words=[repr(strategy), "without their heads", "adamerging"])
    assert "classifier" not in err


def test_multi_task_eval_data_without_a_task_name_is_refused(tmp_path, ingredients, digits_zoo, val_dir, zoo_cli):
    _refused(zoo_cli, tmp_path / "mt", "combine", "-s", "task-arithmetic", "--base", digits_zoo / "members" / "base",
             "-m", ingredients[0], "-m", ingredients[1], "--multi-task", "--eval-data", val_dir,
             words=["--eval-data NAME=DIR", "once per task"])
