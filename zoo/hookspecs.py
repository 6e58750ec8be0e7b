"""The plugin contract: every hook a zoo plugin may implement.

A plugin is an ordinary module (or object) with functions marked ``@zoo.hookimpl``
and named like the specs below. Register it through the entry-point group ``zoo``
in your package's pyproject::

    [project.entry-points.zoo]
    my_plugin = "my_package.my_plugin"

or load it for one run with ``zoo --plugin my_package.my_plugin`` (or the
``ZOO_PLUGINS`` environment variable, comma-separated). The built-in strategies
in ``zoo.plugins`` and member sources in ``zoo.registry`` are plugins of exactly
this kind, registered by import path (``zoo.host.BUILTINS``). A function marked
``@zoo.hookimpl`` whose name is not one of the hooks below is an error naming the
plugin. See docs/writing-a-plugin.md for a complete example.

zoo imports every plugin's module on every ``zoo`` command, ``zoo --help`` included (to collect the
``zoo_commands``): keep it light and import what is heavy (torch, timm, your strategies' modules)
inside the hook functions, as the built-ins do.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover - typing only
    import typer
    from zoo.kit.members.format import MemberFormat
    from zoo.kit.members.member import Member
    from zoo.kit.strategy import Combined, Strategy
    from zoo.kit.measure.transferability import TransferMetric

PROJECT = "zoo"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def zoo_strategies() -> list[type[Strategy]]:
    """Return the Strategy classes this plugin provides.

    Each class needs a unique ``name`` (what ``--strategy`` takes), a one-line
    ``summary``, an ``Options`` dataclass and a ``combine(members, options, ctx)``
    method returning a :class:`zoo.Combined`. Two plugins offering one name is an error.
    ``zoo strategies`` imports every strategy's module: import torch and timm inside the methods that use
    them (annotations stay strings with ``from __future__ import annotations``), so listing stays light.
    """


@hookspec(firstresult=True)
def zoo_resolve_member(spec: str, arch: str | None, allow_pickle: bool) -> Member | None:
    """Turn a member spec (``hf-hub:org/name@rev``, a path, ...) into a :class:`zoo.Member`.

    Return ``None`` when the spec is not yours, so the next source can try it; raise
    :class:`zoo.BadInput` when it is yours but cannot be resolved (missing repo,
    missing file). ``arch`` is the timm architecture given with ``--arch`` for bare
    weight files; ``allow_pickle`` is the user's explicit consent to read pickles.
    """


@hookspec
def zoo_member_formats() -> list[MemberFormat]:
    """Return the member formats this plugin reads and writes: instances of :class:`zoo.MemberFormat`
    subclasses, each with a unique ``name`` (what ``--format`` takes).

    zoo asks every format whether a member's folder is its own (``claims``: from ``config.json`` and the
    files beside it); exactly one must say yes. The format that claims it tells zoo the member's classes,
    labels, preprocessing (as timm's ``pretrained_cfg`` keys), classifier tensors and model (a module that
    answers as timm's models do), and writes outputs in its layout (``write_config``). The member's tensors
    are read by zoo, lazily, from its safetensors files: every per-tensor merge takes a new format as it
    is. timm's layout and transformers' image classifiers are the built-in formats
    (``zoo.plugins.formats``); docs/writing-a-plugin.md adds one from outside.
    """


@hookspec
def zoo_metrics() -> dict[str, Any]:
    """Return extra evaluation metrics: ``{name: fn(logits, targets) -> float}``.

    ``logits`` is a float tensor (N, C), ``targets`` a long tensor (N,). The result is
    reported next to top-1, NLL and ECE by ``zoo eval`` and in model cards.
    """


@hookspec
def zoo_transferability_metrics() -> list[TransferMetric]:
    """Return :class:`zoo.TransferMetric` s for ``zoo select --metric NAME``.

    A ``kind="member"`` metric scores one member from its view of the target data
    (:class:`zoo.TargetView`: pooled features, source softmax, labels); a ``kind="team"``
    metric scores a set of members for ``zoo select --ensemble``. Higher is better. Two
    plugins offering one name is an error. See zoo/transfer.py.
    """


@hookspec
def zoo_model_card(combined: Combined, sections: list[str]) -> None:
    """Append Markdown sections (strings) to the model card of ``combined``."""


@hookspec
def zoo_commands(app: typer.Typer, cli: Any) -> None:
    """Add sub-commands to the ``zoo`` command: ``app.add_typer(my_app, name="mine")`` or ``app.command()``.

    Errors: a command raises :class:`zoo.BadInput` for what the user must change (exit 2), or another
    :class:`zoo.ZooError` with its ``exit_code`` (``zoo.kit.strategy.errors``; 1 for the network). zoo prints the
    message as one line on stderr and exits with that code, as for its own commands; any other exception
    is an unexpected error (exit 1, the traceback with ``--debug``). Click's own usage errors
    (``typer.BadParameter``) keep click's message and exit 2.

    ``cli`` is zoo's way to print and run: ``cli.console()`` prints messages (silent under ``--quiet``;
    a command's answer goes to stdout), ``with cli.progress() as bars:`` gives progress bars that are
    gone when the block ends, ``cli.combine(strategy, members, **kwargs)`` runs a strategy as ``zoo
    combine`` does (``zoo.combine``'s keywords, with this run's plugins, bars and messages; ``zoo align``
    is written so), ``cli.load_members(specs, base=..., arch=..., allow_pickle=...)`` resolves members
    (and a base) as ``zoo combine`` does, returning ``(members, base or None)`` (``zoo inspect`` is written so),
    ``cli.plugins`` the ``--plugin`` modules of this run. Import heavy modules inside the
    command body, not at the top of the module that defines it.
    """


@hookspec(firstresult=True)
def zoo_open_output(folder: Path, config: dict[str, Any]) -> Any | None:
    """Open an output folder your plugin wrote as a module, for ``zoo.load`` (``config`` is its config.json).

    Return ``None`` when the folder is not yours; zoo then opens it as a timm model.
    """
