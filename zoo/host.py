"""The plugin host (zoo.host; `zoo.plugins` is the package of built-in strategies): one pluggy PluginManager with the built-ins and every outside plugin.

Built-in strategies and member sources are found through the entry-point group
``zoo`` exactly like third-party ones; ``--plugin MODULE`` and ``ZOO_PLUGINS`` add
modules for one run. A plugin that fails to import is recorded (and reported by
name) instead of taking the others down with it.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

import pluggy

from zoo import hookspecs
from zoo.errors import BadInput

if TYPE_CHECKING:  # pragma: no cover
    from zoo.strategy import Strategy

ENV_VAR = "ZOO_PLUGINS"


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

    def metrics(self) -> dict:
        out: dict = {}
        for extra in self.pm.hook.zoo_metrics():
            out.update(extra or {})
        return out


def _origin_of(ep) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ep.value
    return "built-in" if dist.name == "zoo" else f"{dist.name} {dist.version}"


def load(extra_modules: list[str] | None = None) -> Host:
    """Build the plugin host: entry points of group ``zoo``, then ``ZOO_PLUGINS``, then ``extra_modules``."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    host = Host(pm)
    for ep in entry_points(group=hookspecs.PROJECT):
        if pm.get_plugin(ep.name) is not None:
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as e:  # a broken plugin must not break the others
            host.broken.append(BrokenPlugin(ep.name, _origin_of(ep), f"{type(e).__name__}: {e}"))
            continue
        host.origins[plugin] = _origin_of(ep)
    modules = [m.strip() for m in os.environ.get(ENV_VAR, "").split(",") if m.strip()]
    for name in modules + list(extra_modules or []):
        if pm.get_plugin(name) is not None:
            continue
        try:
            plugin = importlib.import_module(name)
            pm.register(plugin, name=name)
        except Exception as e:
            host.broken.append(BrokenPlugin(name, "--plugin", f"{type(e).__name__}: {e}"))
            continue
        host.origins[plugin] = f"--plugin {name}"
    return host
