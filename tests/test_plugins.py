"""Outside plugins: the example package installed for real, --plugin, ZOO_PLUGINS, broken plugins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PLUGINS_ON

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
    listing = zoo_cli("strategies", env=PLUGINS_ON).stdout
    assert "weighted-soup" in listing and "zoo-plugin-example" in listing and "built-in" in listing
    show = zoo_cli("strategies", "show", "weighted-soup", env=PLUGINS_ON).stdout
    assert "temperature" in show and "0.01" in show
    out = tmp_path / "w"
    zoo_cli("combine", "-s", "weighted-soup", "--zoo", "digits-demo", "-o", "temperature=0.005", "--out", out,
            env=PLUGINS_ON)
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


#: imports `zoo ARGS` through its entry point (plugin commands included) and says which heavy modules it loaded
_HEAVY = ("import sys\nsys.argv = ['zoo', *sys.argv[1:]]\nfrom zoo.cli import main\ntry:\n    main()\n"
          "except SystemExit as e:\n    assert not e.code, e.code\n"
          "print('\\nHEAVY', sorted({m for m in ('torch', 'timm') if m in sys.modules}))")


@pytest.mark.parametrize("args", [["--help"], ["discover", "--help"], ["combine", "--help"], ["align", "--help"],
                                  ["stitch", "--help"], ["stitch", "list", "--help"], ["strategies"],
                                  ["strategies", "show", "ties"], ["strategies", "show", "soup"]], ids=" ".join)
def test_help_imports_neither_torch_nor_timm(args):
    """`zoo --help` collects every plugin's commands (zoo_commands) and `zoo strategies` every plugin's
    strategies (zoo_strategies, merge methods' options included): no plugin may pull torch in on the way."""
    proc = subprocess.run([sys.executable, "-c", _HEAVY, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "align" in proc.stdout or args != ["--help"]  # the plugins' commands are listed
    listed = {("strategies",): ("soup", "ties", "ensemble", "levi", "rebasin"),  # every plugin's strategies
              ("strategies", "show", "ties"): ("density", "trim"), ("strategies", "show", "soup"): ("mode",)}
    assert all(word in proc.stdout for word in listed.get(tuple(args), ())), proc.stdout[-500:]
    assert proc.stdout.splitlines()[-1] == "HEAVY []", proc.stdout[-500:]


def test_installed_plugins_stay_out_unless_autoloaded_and_can_be_switched_off(example_installed, zoo_cli):
    """Entry-point plugins are found by default, left out with ZOO_DISABLE_PLUGIN_AUTOLOAD (as in these
    tests), and one can be switched off by name with --no-plugin (also after the sub-command) or
    ZOO_DISABLE_PLUGINS; the built-ins are there in every case, registered by import path."""
    assert "weighted-soup" in zoo_cli("strategies", env=PLUGINS_ON).stdout
    for listing in (zoo_cli("strategies").stdout,
                    zoo_cli("--no-plugin", "weighted_soup", "strategies", env=PLUGINS_ON).stdout,
                    zoo_cli("strategies", "--no-plugin", "weighted_soup", env=PLUGINS_ON).stdout,
                    zoo_cli("strategies", env={**PLUGINS_ON, "ZOO_DISABLE_PLUGINS": "weighted_soup"}).stdout):
        assert "weighted-soup" not in listing
        assert all(name in listing for name in ("soup", "wise-ft", "bang", "distill", "stitch"))


def test_builtins_need_no_entry_points():
    from importlib.metadata import distribution

    from zoo import host

    assert [ep for ep in distribution("zoo").entry_points if ep.group == "zoo"] == []
    assert {"soup", "wise-ft", "bang", "distill", "stitch"} <= set(host.load().strategies())


def test_misspelled_hook_is_an_error_naming_the_plugin(tmp_path, zoo_cli):
    (tmp_path / "typo_plugin.py").write_text("import zoo\n\n@zoo.hookimpl\ndef zoo_strategy():\n    return []\n")
    proc = zoo_cli("strategies", env={"PYTHONPATH": str(tmp_path), "ZOO_PLUGINS": "typo_plugin"}, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "typo_plugin" in proc.stderr and "zoo_strategy" in proc.stderr and "zoo_strategies" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_two_plugins_offering_one_strategy_name_is_an_error(tmp_path, zoo_cli):
    (tmp_path / "dup_plugin.py").write_text(
        "import zoo\n\nclass Soup(zoo.Strategy):\n    name = 'soup'\n    summary = 'another soup'\n\n"
        "@zoo.hookimpl\ndef zoo_strategies():\n    return [Soup]\n")
    proc = zoo_cli("--plugin", "dup_plugin", "strategies", env={"PYTHONPATH": str(tmp_path)}, check=False)
    assert proc.returncode == 2
    assert "'soup' is provided twice" in proc.stderr and "built-in" in proc.stderr and "dup_plugin" in proc.stderr


CMD_PLUGIN = '''
import typer
import zoo


@zoo.hookimpl
def zoo_commands(app, cli):
    @app.command("hello")
    def hello(name: str = typer.Argument("world")):
        """Say hello."""
        if name == "err":
            raise zoo.BadInput("and a clear error")
        if name == "bug":
            raise KeyError("no such thing")
        with cli.progress() as bars:
            bars.task("greeting", total=1).advance()
        cli.console().print(f"hello {name}")
'''


def test_a_plugin_adds_a_command_and_global_flags_work_after_it(tmp_path, zoo_cli):
    (tmp_path / "cmd_plugin.py").write_text(CMD_PLUGIN)
    env = {"PYTHONPATH": str(tmp_path)}
    assert "hello there" in zoo_cli("--plugin", "cmd_plugin", "hello", "there", env=env).stderr
    assert "hello there" in zoo_cli("hello", "there", "--plugin", "cmd_plugin", env=env).stderr
    assert zoo_cli("hello", "there", "--plugin", "cmd_plugin", "--quiet", env=env).stderr == ""
    # a plugin command raises zoo's errors, and zoo prints them as it does its own: one line, its exit code
    err = zoo_cli("hello", "err", "--plugin=cmd_plugin", env=env, check=False)
    assert (err.returncode, err.stderr.strip()) == (2, "error: and a clear error")
    bug = zoo_cli("hello", "bug", "--plugin=cmd_plugin", env=env, check=False)
    assert bug.returncode == 1 and bug.stderr.strip().startswith("error: KeyError") and "--debug" in bug.stderr
    assert "Traceback" not in bug.stderr
    assert "hello" not in zoo_cli("--help").stdout  # without the plugin, no such command
    assert "stitch" in zoo_cli("--help").stdout  # the stitch plugin's own commands
