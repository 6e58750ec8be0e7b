"""`zoo push`: upload an output folder to the Hub."""

from __future__ import annotations

from typing import List, Optional

import typer

from zoo.cli.app import app, console


@app.command("push")
def push_cmd(
    folder: str = typer.Argument(..., help="A zoo output folder."),
    repo_id: str = typer.Argument(..., help="ORG/NAME on the Hub."),
    private: bool = typer.Option(False, "--private", help="Create the repo private."),
):
    """Upload an output folder to the Hub in one commit (token from HF_TOKEN or `hf auth login`)."""
    from zoo.api.push import push

    url = push(folder, repo_id, private=private)
    console().print(f"pushed: {url}", highlight=False)
