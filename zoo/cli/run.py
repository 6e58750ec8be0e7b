"""`zoo run recipe.toml`: a recipe's steps (select, combine, finetune, push), checked first, then run."""

from __future__ import annotations

import typer

from zoo.cli.app import app, console, progress, state


@app.command("run")
def run_cmd(
    recipe: str = typer.Argument(..., help="A recipe .toml: \\[\\[step]] tables, each with run = \"select\", "
                                 "\"combine\", \"finetune\" or \"push\" and that command's options."),
    check: bool = typer.Option(False, "--check", help="Only check the recipe (keys, strategies, options, "
                               "how the steps feed each other, the merged members' tensors); run nothing."),
):
    """Run a recipe file: every step is checked against its command's and strategy's options before the
    first one starts; each step can take an earlier one's output (@previous, @N). See docs/usage.md."""
    from zoo.api.recipe import run_recipe

    say = console()
    with progress() as bars:
        done = run_recipe(recipe, plugins=state.plugins, progress=bars, log=say.print, check_only=check)
    if check:
        say.print(f"{recipe}: {len(done.steps)} step(s) checked: "
                  + ", ".join(f"{s.number} {s.run}" for s in done.steps), highlight=False, soft_wrap=True)
