"""The house: arrows run one way (CLI → API → plugins and registry → kit → the kit's private
infrastructure), there are no import circles, and a built-in plugin imports exactly what an outside
plugin may, in the one import style of docs/writing-a-plugin.md: ``import zoo`` for the names of the
``zoo`` namespace (its KIT table), ``from zoo.kit.GROUP import NAME`` for a name a kit group exports
(its ``NAMES`` table, which is its ``__all__``); never another plugin, never a private name, never the
infrastructure in ``zoo.kit._infra``, which only zoo's API, CLI, demos and the kit itself import.

The graph is read from the source (every import statement, also those inside functions; only
``if TYPE_CHECKING:`` blocks are left out, since they never run), so these tests need no imports of zoo.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: where each installed package lives in the checkout (pyproject's package-dir)
SOURCES = {"zoo": ROOT / "zoo", "zoo.plugins": ROOT / "plugins", "zoo.registry": ROOT / "registry"}
EXAMPLES = sorted((ROOT / "examples").glob("*/src/*"))


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, module: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import that can run."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[str, str | None, int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend((alias.name, None, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.extend((base, alias.name, node.lineno) for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _target(base: str, name: str | None) -> str:
    """The module an import lands on: ``from zoo.kit.tensors import weights`` lands on zoo.kit.tensors.weights."""
    if name and f"{base}.{name}" in MODULES:
        return f"{base}.{name}"
    return base


@functools.cache
def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for base, name, _ in _imports(path, module):
            if (base, name) == ("zoo", "__version__"):
                continue  # the version string, not the namespace's lazy names
            target = _target(base, name)
            if target in MODULES and target != module:
                graph[module].add(target)
    return graph


def _layer(module: str) -> str:
    if module in ("zoo.__main__",) or module.startswith("zoo.cli"):
        return "cli"
    for prefix in ("zoo.api", "zoo.plugins", "zoo.registry", "zoo.demos", "zoo.kit"):
        if module == prefix or module.startswith(prefix + "."):
            return prefix.split(".")[1]
    if module in ("zoo.host", "zoo.hookspecs"):
        return "host"
    if module == "zoo":
        return "namespace"
    raise AssertionError(f"{module}: a module outside the layout (zoo/cli, api, kit, demos; plugins; registry)")


#: which layers each layer may import; everything else is an arrow the wrong way
ALLOWED = {
    "cli": {"cli", "api", "host", "kit"},
    "api": {"api", "host", "registry", "kit"},
    "plugins": {"plugins", "namespace", "kit", "host"},
    "registry": {"registry", "namespace", "host", "demos", "kit"},
    "demos": {"demos", "kit"},
    "host": {"host", "kit"},
    "kit": {"kit"},
    "namespace": set(),  # zoo/__init__.py only names modules lazily, as strings
}


def test_every_module_sits_in_one_room_of_the_layout():
    rooms = {m: _layer(m) for m in MODULES}
    assert {"cli", "api", "plugins", "registry", "demos", "host", "kit"} <= set(rooms.values())


def test_arrows_run_one_way():
    wrong = []
    for module, targets in _graph().items():
        for target in targets:
            if _layer(target) not in ALLOWED[_layer(module)]:
                wrong.append(f"{module} ({_layer(module)}) imports {target} ({_layer(target)})")
    assert not wrong, "imports against the layering CLI → API → plugins/registry → kit:\n" + "\n".join(sorted(wrong))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def test_no_import_circles():
    assert _cycles(_graph()) == []


def test_the_circle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_nothing_imports_the_cli():
    users = sorted(m for m, targets in _graph().items() for t in targets
                   if _layer(t) == "cli" and _layer(m) != "cli")
    assert users == []


# ---- plugins use the public kit alone -----------------------------------------------------------

def _kit_names() -> set[str]:
    """The names `zoo/__init__.py` offers plugins (its KIT table), read from the source."""
    tree = ast.parse((ROOT / "zoo" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "KIT" or (
                isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "KIT" for t in node.targets)):
            return {k.value for k in node.value.keys}
    raise AssertionError("zoo/__init__.py has no KIT table")


def _plugin_files() -> list[tuple[str, Path, str]]:
    """(module, path, its own package) for the built-in plugins, the registry's sources and the examples."""
    out = []
    for module, path in MODULES.items():
        if module.startswith("zoo.plugins."):
            own = ".".join(module.split(".")[:3])
            out.append((module, path, own))
        elif module in ("zoo.registry.hub", "zoo.registry.local"):
            out.append((module, path, module))
    for src in EXAMPLES:
        for path in src.rglob("*.py"):
            rel = path.relative_to(src.parent).with_suffix("")
            module = ".".join(p for p in rel.parts if p != "__init__")
            out.append((module, path, src.name))
    return out


#: the kit's private infrastructure, and who may import it
PRIVATE = "zoo.kit._infra"
MAY_USE_PRIVATE = ("zoo.api", "zoo.cli", "zoo.demos", "zoo.kit")


def _table(path: Path, name: str) -> dict[str, str]:
    """A module-level ``NAME = {"key": "value", ...}`` literal of ``path``, read from the source."""
    for node in ast.parse(path.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(getattr(t, "id", "") == name for t in targets) and isinstance(node.value, ast.Dict):
            return {k.value: v.value for k, v in zip(node.value.keys, node.value.values)}
    raise AssertionError(f"{_rel(path)} has no {name} table")


def _groups() -> dict[str, dict[str, str]]:
    """The kit's public groups: each sub-package of zoo/kit but the private one, with its NAMES table."""
    return {f"zoo.kit.{d.name}": _table(d / "__init__.py", "NAMES") for d in sorted((ROOT / "zoo" / "kit").iterdir())
            if (d / "__init__.py").exists() and not d.name.startswith("_")}


def _plugin_violations(module: str, path: Path, own: str, kit: set[str],
                       groups: dict[str, dict[str, str]] | None = None) -> list[str]:
    groups = _groups() if groups is None else groups
    bad = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # the style: `import zoo`, never `import zoo.kit...` or `import zoo as z`
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "zoo" and (a.name != "zoo" or a.asname not in (None, "zoo")):
                    bad.append(f"{_rel(path)}:{node.lineno}: `import {a.name}"
                               f"{' as ' + a.asname if a.asname else ''}`: write `import zoo`, or import names "
                               "from a kit group")
    for base, name, line in _imports(path, module):
        where = f"{_rel(path)}:{line}"
        if base == own or base.startswith(own + "."):
            continue  # its own package
        if base == "zoo":
            if name is None:
                continue
            if name in kit:
                bad.append(f"{where}: `from zoo import {name}`: write `import zoo` and `zoo.{name}` (the one style)")
            elif name != "__version__":
                bad.append(f"{where}: `from zoo import {name}` is not a kit name (zoo.KIT)")
            continue
        if base == PRIVATE or base.startswith(PRIVATE + "."):
            bad.append(f"{where}: imports {base}, the kit's private infrastructure")
            continue
        if base == "zoo.kit" or base.startswith("zoo.kit."):
            if name is None:
                continue  # `import zoo.kit...`, named above
            if name.startswith("_"):
                bad.append(f"{where}: imports the private name {base}.{name}")
            elif base not in groups:
                bad.append(f"{where}: imports {name} from {base}; import it from the kit group that exports it")
            elif name in kit:
                bad.append(f"{where}: `from {base} import {name}`: write `zoo.{name}` (the one style)")
            elif name not in groups[base]:
                bad.append(f"{where}: {base} does not export {name} (its NAMES table, __all__)")
            continue
        if base == "zoo.plugins" or base.startswith("zoo.plugins."):
            bad.append(f"{where}: imports another plugin ({_target(base, name)})")
        elif base.startswith("zoo") and base.split(".")[0] == "zoo":
            bad.append(f"{where}: imports {_target(base, name)}, which is not part of the kit")
    zoo_aliases = {(a.asname or a.name).split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                   for a in n.names if a.name.split(".")[0] == "zoo"}
    zoo_aliases |= {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                    and (n.module or "").startswith("zoo") for a in n.names}
    for node in ast.walk(tree):  # private names reached through zoo: plots._plt(), Member(_tensors=...)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in zoo_aliases:
                bad.append(f"{_rel(path)}:{node.lineno}: uses the private attribute .{node.attr}")
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "zoo"
                and "zoo" in zoo_aliases and node.attr not in kit and node.attr != "__version__"):
            bad.append(f"{_rel(path)}:{node.lineno}: zoo.{node.attr} is not a kit name (zoo.KIT)")
        if isinstance(node, ast.keyword) and node.arg and node.arg.startswith("_"):
            bad.append(f"{_rel(path)}:{node.lineno}: passes the private argument {node.arg}=")
    return bad


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def test_plugins_import_only_the_public_kit():
    kit, groups = _kit_names(), _groups()
    bad = [v for module, path, own in _plugin_files() for v in _plugin_violations(module, path, own, kit, groups)]
    assert not bad, "plugins must use only what an outside plugin has:\n" + "\n".join(bad)


def test_the_plugin_check_catches_what_it_forbids(tmp_path):
    plugin = tmp_path / "bad_plugin.py"
    plugin.write_text("from zoo import combine\nfrom zoo.kit.card.figures import _plt\nfrom zoo.plugins.soup import Soup\n"
                      "from zoo.api import card\nimport zoo\nfrom zoo.kit.members import member\n"
                      "from zoo import Strategy\nfrom zoo.kit.strategy import BadInput\n"
                      "from zoo.kit.train.loop import train\nfrom zoo.kit import tensors\n"
                      "from zoo.kit._infra.cache import root\nfrom zoo.kit.train import not_exported\n"
                      "import zoo.kit.tensors\n\n"
                      "def f(m, model):\n    model._pos_embed(m)\n    zoo.Member(_tensors={})\n"
                      "    zoo.combine('soup')\n    return member._short(m)\n")
    found = _plugin_violations("bad_plugin", plugin, "bad_plugin", _kit_names())
    joined = "\n".join(found)
    assert len(found) == 15, joined  # model._pos_embed is timm's business, not zoo's
    for needle in ("from zoo import combine", "_plt", "another plugin", "zoo.api.card", "._short", "_tensors=",
                   "does not export member", "`from zoo import Strategy`: write `import zoo` and `zoo.Strategy`",
                   "`from zoo.kit.strategy import BadInput`: write `zoo.BadInput`",
                   "imports train from zoo.kit.train.loop", "imports tensors from zoo.kit",
                   "private infrastructure", "does not export not_exported", "`import zoo.kit.tensors`",
                   "zoo.combine is not a kit name"):
        assert needle in joined, needle


PLUGIN_MARKS = ("hookimpl", "zoo.Strategy", "merge_method", "from zoo.kit", "import zoo.kit")


def _doc_plugins() -> list[tuple[str, str]]:
    """(where, code) of every ```python block of README.md and docs/ that is plugin code."""
    out = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        lines = doc.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip() in ("```python", "```py"):
                end = next(j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```"))
                code = "\n".join(lines[i + 1:end]) + "\n"
                if any(mark in code for mark in PLUGIN_MARKS):
                    out.append((f"{_rel(doc)}:{i + 1}", code))
    return out


def test_the_docs_write_plugins_in_the_one_style(tmp_path):
    kit, groups = _kit_names(), _groups()
    bad = []
    for where, code in _doc_plugins():
        path = tmp_path / "block.py"
        path.write_text(code)
        bad += [f"{where}: {v.split(': ', 1)[1]}" for v in _plugin_violations("block", path, "block", kit, groups)]
    assert len(_doc_plugins()) >= 4  # README's TIES, the two examples and the training strategy of the guide
    assert not bad, "plugin code in the docs must be written as docs/writing-a-plugin.md says:\n" + "\n".join(bad)


# ---- the two layers of the kit ------------------------------------------------------------------

def test_every_kit_module_sits_in_a_group_or_in_the_private_infrastructure():
    groups = _groups()
    flat = sorted(m for m in MODULES if m.startswith("zoo.kit.") and m != "zoo.kit._infra"
                  and not m.startswith(PRIVATE + ".") and m not in groups and m.rpartition(".")[0] not in groups)
    assert not flat, ("kit modules outside a group (zoo.kit.GROUP.module) and outside zoo.kit._infra: "
                      + ", ".join(flat))


def test_each_group_exports_what_its_modules_define():
    """A group's NAMES table is its __all__; each name lives where the table says (read from the source)."""
    wrong = []
    for group, names in _groups().items():
        init = ast.parse(MODULES[group].read_text())
        if not ast.get_docstring(init):
            wrong.append(f"{group}: no docstring saying what it holds")
        all_ = [n for n in init.body if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "__all__"
                                                                         for t in n.targets)]
        if not all_ or ast.unparse(all_[0].value) != "sorted(NAMES)":
            wrong.append(f"{group}: __all__ must be sorted(NAMES)")
        if not names:
            wrong.append(f"{group}: exports nothing")
        for name, module in names.items():
            if module not in MODULES:
                wrong.append(f"{group}.{name}: {module} does not exist")
                continue
            tree = ast.parse(MODULES[module].read_text())
            defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
            defined |= {t.id for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                        for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
            if name not in defined:
                wrong.append(f"{group}.{name}: {module} does not define it")
    assert not wrong, "\n".join(wrong)


def test_the_namespace_names_come_from_the_groups():
    """Each kit name of the `zoo` namespace is one a group exports (so it has one home and one spelling)."""
    groups = _groups()
    wrong = []
    for name, where in _table(ROOT / "zoo" / "__init__.py", "KIT").items():
        group, _, attr = where.partition(":")
        if group == "zoo.hookspecs":
            continue  # hookimpl: the pluggy marker lives with the hooks
        if (attr or name) not in groups.get(group, {}):
            wrong.append(f"zoo.{name} → {where}: not a group, or the group does not export {attr or name}")
    assert not wrong, "\n".join(wrong)


def test_only_the_core_imports_the_private_infrastructure():
    users = sorted(f"{m} imports {t}" for m, targets in _graph().items() for t in targets
                   if (t == PRIVATE or t.startswith(PRIVATE + ".")) and not m.startswith(MAY_USE_PRIVATE))
    assert users == [], "zoo.kit._infra is for zoo's API, CLI, demos and the kit alone:\n" + "\n".join(users)


def _names_of_plugins_in_core() -> list[str]:
    """Imports of zoo.plugins anywhere in zoo/ (TYPE_CHECKING blocks included: they name it too) and the
    namespace's lazy tables. host.BUILTINS is left out: registering the built-ins by import path is the
    pluggy host's job."""
    found = []
    for module, path in MODULES.items():
        if not module.startswith("zoo.") and module != "zoo" or module.startswith(("zoo.plugins", "zoo.registry")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("zoo.plugins"):
                found.append(f"{_rel(path)}:{node.lineno}: from {node.module} import ...")
            elif isinstance(node, ast.Import) and any(a.name.startswith("zoo.plugins") for a in node.names):
                found.append(f"{_rel(path)}:{node.lineno}: import zoo.plugins...")
    init = ROOT / "zoo" / "__init__.py"
    for table in ("API", "KIT"):
        found += [f"{_rel(init)}: {table}[{k!r}] = {v!r}" for k, v in _table(init, table).items()
                  if v.startswith("zoo.plugins")]
    return found


def test_nothing_in_zoo_imports_the_plugins():
    assert _names_of_plugins_in_core() == []


@pytest.mark.parametrize("module", ["zoo.kit", "zoo.kit._infra", "zoo.plugins", "zoo.api", "zoo.cli", "zoo.demos"])
def test_each_package_has_a_docstring_saying_what_it_holds(module):
    assert ast.get_docstring(ast.parse(MODULES[module].read_text())), f"{module} has no docstring"
