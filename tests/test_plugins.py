"""Outside plugins: the example package installed for real, --plugin, ZOO_PLUGINS, broken plugins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[1] / "examples" / "zoo-plugin-example"


@pytest.fixture(scope="session")
def example_installed():
    """pip-install the example plugin into this environment, as a user would (and remove it after)."""
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    str(EXAMPLE)], check=True, capture_output=True)
    yield
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", "zoo-plugin-example"], check=True,
                   capture_output=True)


def test_installed_plugin_is_listed_and_runs(tmp_path, example_installed, digits_zoo, zoo_cli):
    listing = zoo_cli("strategies").stdout
    assert "weighted-soup" in listing and "zoo-plugin-example" in listing and "built-in" in listing
    show = zoo_cli("strategies", "show", "weighted-soup").stdout
    assert "temperature" in show and "0.01" in show
    out = tmp_path / "w"
    zoo_cli("combine", "-s", "weighted-soup", "--zoo", "digits-demo", "-o", "temperature=0.005", "--out", out)
    recipe = json.loads((out / "zoo.json").read_text())
    coeffs = recipe["report"]["coefficients"]
    assert sum(coeffs.values()) == pytest.approx(1.0)
    best = max(recipe["report"]["coefficients"], key=coeffs.get)
    # sharper than uniform, toward the most accurate member
    assert coeffs[best] > 1 / len(coeffs)
    assert "### Weights" in (out / "README.md").read_text()


def test_plugin_flag_and_env_var(tmp_path, ingredients, val_dir, zoo_cli):
    env = {"PYTHONPATH": str(EXAMPLE / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = ["combine", "-s", "weighted-soup", "-m", ingredients[0], "-m", ingredients[1], "--eval-data", val_dir]
    zoo_cli("--plugin", "zoo_plugin_example.weighted", *args, "--out", tmp_path / "a", env=env)
    zoo_cli(*args, "--out", tmp_path / "b", env={**env, "ZOO_PLUGINS": "zoo_plugin_example.weighted"})
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_broken_plugin_is_named_and_the_rest_work(tmp_path, zoo_cli):
    (tmp_path / "broken_plugin.py").write_text("import no_such_module_anywhere\n")
    env = {"PYTHONPATH": str(tmp_path), "ZOO_PLUGINS": "broken_plugin"}
    proc = zoo_cli("strategies", env=env)
    assert "soup" in proc.stdout
    assert "broken_plugin" in proc.stderr and "no_such_module_anywhere" in proc.stderr


def test_help_does_not_import_torch():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom zoo.cli import app\n"
            "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0, r.output\n"
            "assert 'combine' in r.output\nprint('torch' in sys.modules, 'timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"
