"""zoo.kit._infra.timm_names: what it remembers between runs, and what it refuses to trust."""

from __future__ import annotations

import pytest

from zoo.kit._infra import timm_names
from zoo.kit.strategy.errors import BadInput
from zoo.kit.members.timm_format import check_architecture


def test_timm_model_names_are_remembered_per_timm_version(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path))
    assert timm_names.known_timm_models() == set()
    check_architecture("test_efficientnet", "m")  # imports timm once, remembers what it lists
    known = timm_names.known_timm_models()
    assert "test_efficientnet" in known and "resnet50" in known
    assert (tmp_path / f"timm-{__import__('timm').__version__}-models.txt").is_file()
    with pytest.raises(BadInput, match="does not know the architecture 'no_such_net'"):
        check_architecture("no_such_net", "m")  # a name not listed is asked of timm itself


def test_only_positive_answers_come_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path))
    check_architecture("test_efficientnet", "m")
    timm_names.remember_timm_models(sorted(timm_names.known_timm_models() | {"stale_name"}))
    check_architecture("stale_name", "m")  # trusted for the quick check before any work...
    with pytest.raises(BadInput, match="stale_name"):
        check_architecture("stale_name", "m", trust_cache=False)  # ...never where a model is built
