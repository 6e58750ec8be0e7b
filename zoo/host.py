"""The plugin host: one pluggy PluginManager with the built-ins and every outside plugin.

As pytest and llm do it: the built-in strategies and member sources are ordinary plugin modules
registered by import path (``BUILTINS``), so a source checkout works without installed entry
points; outside plugins come from the entry-point group ``zoo``, and ``--plugin MODULE`` /
``ZOO_PLUGINS`` add modules for one run. ``--no-plugin NAME`` / ``ZOO_DISABLE_PLUGINS`` switch an
outside plugin off; ``ZOO_DISABLE_PLUGIN_AUTOLOAD=1`` skips entry points altogether (the tests use it,
so that plugins installed in the environment do not leak into them). A plugin that fails to import
is recorded and reported by name instead of taking the others down with it; a hook implementation
whose name is not a hook of ``zoo.hookspecs`` is an error naming the plugin (pluggy's
``check_pending``).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

import pluggy

from zoo import hookspecs
from zoo.kit.strategy.errors import BadInput

if TYPE_CHECKING:  # pragma: no cover
    from zoo.kit.strategy import Strategy

ENV_VAR = "ZOO_PLUGINS"
DISABLE_VAR = "ZOO_DISABLE_PLUGINS"
AUTOLOAD_VAR = "ZOO_DISABLE_PLUGIN_AUTOLOAD"

#: the built-in plugins, by import path: strategies, transferability metrics, member sources
BUILTINS = (
    "zoo.plugins.soup",
    "zoo.plugins.merges",
    "zoo.plugins.auto",
    "zoo.plugins.wise_ft",
    "zoo.plugins.distill",
    "zoo.plugins.stitch",
    "zoo.plugins.ensemble",
    "zoo.plugins.levi",
    "zoo.plugins.rebasin",
    "zoo.plugins.inspect",
    "zoo.plugins.transfer",
    "zoo.plugins.formats",
    "zoo.registry.hub",
    "zoo.registry.local",
)


@dataclass
class BrokenPlugin:
    name: str
    origin: str
    error: str


@dataclass
class Host:
    """A PluginManager plus what we learned while loading it."""

    pm: pluggy.PluginManager
    origins: dict[object, str] = field(default_factory=dict)
    broken: list[BrokenPlugin] = field(default_factory=list)

    def strategies(self) -> dict[str, tuple[type[Strategy], str]]:
        """All strategies by name, each with where it comes from."""
        found: dict[str, tuple[type[Strategy], str]] = {}
        for impl in self.pm.hook.zoo_strategies.get_hookimpls():
            origin = self.origins.get(impl.plugin, impl.plugin_name)
            for cls in impl.function() or []:
                if cls.name in found:
                    raise BadInput(
                        f"strategy {cls.name!r} is provided twice: by {found[cls.name][1]} and by {origin}; "
                        "uninstall one of them"
                    )
                found[cls.name] = (cls, origin)
        return dict(sorted(found.items()))

    def strategy(self, name: str) -> type[Strategy]:
        known = self.strategies()
        if name not in known:
            # the strategy may be in a plugin that failed to import: say why, that is what to fix
            hint = "".join(f"; plugin {b.name} ({b.origin}) failed to load, so its strategies are missing: {b.error}"
                           for b in self.broken)
            raise BadInput(
                f"unknown strategy {name!r}; available: {', '.join(known) or 'none'}"
                f" (see `zoo strategies`){hint}"
            )
        return known[name][0]

    def transfer_metrics(self) -> dict:
        """Transferability metrics by name (``zoo select --metric``), each a :class:`zoo.TransferMetric`."""
        found: dict = {}
        for impl in self.pm.hook.zoo_transferability_metrics.get_hookimpls():
            origin = self.origins.get(impl.plugin, impl.plugin_name)
            for metric in impl.function() or []:
                if metric.name in found:
                    raise BadInput(f"transferability metric {metric.name!r} is provided twice: by "
                                   f"{found[metric.name][1]} and by {origin}; uninstall one of them")
                found[metric.name] = (metric, origin)
        return dict(sorted(found.items()))

    def formats(self) -> list:
        """The member formats (``zoo_member_formats``), the built-ins first."""
        return [f for found in self.pm.hook.zoo_member_formats()[::-1] for f in (found or [])]

    def metrics(self) -> dict:
        out: dict = {}
        for extra in self.pm.hook.zoo_metrics():
            out.update(extra or {})
        return out


def _origin_of(ep) -> str:
    dist = getattr(ep, "dist", None)
    return ep.value if dist is None else f"{dist.name} {dist.version}"


def _names(var: str) -> list[str]:
    return [m.strip() for m in os.environ.get(var, "").split(",") if m.strip()]


def builtins() -> Host:
    """A host with the built-in plugins alone. Every zoo command imports them (their ``zoo_commands``), so a
    built-in's top module imports nothing heavy: its strategies' modules are imported inside its hooks."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    host = Host(pm)
    for name in BUILTINS:  # a broken built-in is a bug of zoo's: let it raise
        plugin = importlib.import_module(name)
        pm.register(plugin, name=name)
        host.origins[plugin] = "built-in"
    from zoo.kit.members import format_registry as member_formats

    member_formats.use(host.formats())
    return host


def load(extra_modules: list[str] | None = None, *, disabled: list[str] | None = None) -> Host:
    """Build the plugin host: the built-ins, entry points of group ``zoo``, ``ZOO_PLUGINS``, ``extra_modules``."""
    host = builtins()
    pm = host.pm
    off = set(_names(DISABLE_VAR)) | set(disabled or [])
    if not os.environ.get(AUTOLOAD_VAR):
        for ep in entry_points(group=hookspecs.PROJECT):
            if ep.name in off or ep.value in off or pm.get_plugin(ep.name) is not None:
                continue
            try:
                plugin = ep.load()
            except Exception as e:  # a plugin that cannot import must not break the others
                host.broken.append(BrokenPlugin(ep.name, _origin_of(ep), f"{type(e).__name__}: {e}"))
                continue
            if pm.is_registered(plugin):  # e.g. a stale entry point naming a built-in
                continue
            _register(pm, plugin, ep.name, _origin_of(ep))
            host.origins[plugin] = _origin_of(ep)
    for name in _names(ENV_VAR) + list(extra_modules or []):
        if name in off or pm.get_plugin(name) is not None:
            continue
        try:
            plugin = importlib.import_module(name)
        except Exception as e:
            host.broken.append(BrokenPlugin(name, "--plugin", f"{type(e).__name__}: {e}"))
            continue
        if pm.is_registered(plugin):
            continue
        _register(pm, plugin, name, f"--plugin {name}")
        host.origins[plugin] = f"--plugin {name}"
    from zoo.kit.members import format_registry as member_formats

    member_formats.use(host.formats())  # the layouts members are read in: this host's
    return host


def _register(pm: pluggy.PluginManager, plugin: object, name: str, origin: str) -> None:
    """Register ``plugin``; a hook implementation named like no hook (a typo) is an error naming the plugin."""
    try:
        pm.register(plugin, name=name)
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        known = ", ".join(sorted(n for n in dir(hookspecs) if n.startswith("zoo_")))
        raise BadInput(f"plugin {name} ({origin}) is invalid: {e}. The hooks are: {known}; fix the plugin "
                       f"or switch it off with --no-plugin {name}") from None
