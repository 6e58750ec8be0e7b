"""Recipe files: ``zoo run recipe.toml`` runs select → combine → push (any of them, in any number) as steps.

A recipe is TOML, one ``[[step]]`` table per step. ``run`` names the command; every other key is that
command's option, spelt as the Python API spells it (``eval_data`` or ``eval-data``); a combine step's
strategy options go in its ``options`` table::

    [[step]]
    run = "select"
    zoo = "transfer-demo"
    metric = "logme"
    top_k = 3
    out = "selection/"

    [[step]]
    run = "combine"
    strategy = "soup"
    members_from = "@previous"        # the zoo.toml the select step wrote
    eval_data = "./val"
    out = "soup/"
    options = { mode = "greedy" }

    [[step]]
    run = "push"                      # pushes the previous step's output
    repo = "ORG/my-soup"

``@previous`` (or ``@N``, the N-th step) is an earlier step's output: a select step's is a zoo (for
``members_from``), a combine or finetune step's is a model folder (a member, a base, what push sends),
a push step's is the Hub repo it wrote. Paths are relative to where ``zoo run`` is started, as on the
command line. The whole recipe is checked before any step runs: every key, every strategy and its
options against its schema, every ``@`` reference against what the step it names produces, a weight
merge's base and members against each other's tensors (from their headers); an error names the recipe's
line and key, and an error of a running step names the step. Each output's ``zoo.json`` stores the
recipe as ``recipe_file``.
"""

from __future__ import annotations

import inspect
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from zoo.kit.strategy.errors import BadInput, ZooError
from zoo.kit._infra.progress import Progress, Silent

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PREVIOUS = "@previous"
#: what each kind of step produces, for the steps after it
PRODUCES = {"select": "zoo", "combine": "model", "finetune": "model", "push": "hub model"}
#: API parameters a recipe does not set (zoo run gives them)
_NOT_KEYS = {"progress", "log", "plugins", "recipe_file", "recipe", "host"}
#: friendlier names for API parameters
_ALIASES = {"finetune": {"member": "member_spec"}, "push": {"repo": "repo_id"}}
#: where each step takes an earlier step's output, and what it must be
_TAKES = {"members_from": "zoo", "members": "model", "base": "model", "member_spec": "model", "folder": "model"}


@dataclass
class Step:
    number: int  # 1-based, as the messages say
    run: str
    args: dict[str, Any]
    line: int | None = None
    out: str | None = None  # what the step produces for later ones (a path, or hf-hub:ORG/NAME)
    header: dict | None = None  # the tensors (name: shape, dtype) its output will hold, where a merge tells


@dataclass
class Recipe:
    path: Path
    steps: list[Step]
    raw: dict[str, Any] = field(default_factory=dict)


def _api(kind: str) -> Callable:
    if kind == "combine":
        from zoo.api.combine import combine

        return combine
    if kind == "select":
        from zoo.api.selection import select

        return select
    if kind == "finetune":
        from zoo.api.finetune import finetune

        return finetune
    from zoo.api.push import push

    return push


class _Lines:
    """Where each step and each key of a recipe is written (tomllib keeps no positions)."""

    _KEY = re.compile(r'^\s*"?([A-Za-z0-9_\-]+)"?\s*=')
    _INLINE = re.compile(r'([A-Za-z0-9_\-]+)\s*=')

    def __init__(self, text: str):
        self.steps: list[int] = []
        self.keys: dict[tuple[int, str], int] = {}
        table = None
        for n, line in enumerate(text.splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith("[[") and stripped.strip("[] ") == "step":
                self.steps.append(n)
                table = ""
                continue
            if stripped.startswith("["):
                name = stripped.strip("[] ")
                table = name[len("step."):] + "." if name.startswith("step.") and self.steps else None
                continue
            m = self._KEY.match(line)
            if m and table is not None and self.steps:
                key = table + m.group(1)
                self.keys.setdefault((len(self.steps), key), n)
                if "{" in line:  # an inline table: options = { mode = "greedy" }
                    for inner in self._INLINE.findall(line[line.index("{"):]):
                        self.keys.setdefault((len(self.steps), f"{key}.{inner}"), n)

    def of(self, step: int, key: str | None = None) -> int | None:
        if key is not None and (step, key) in self.keys:
            return self.keys[(step, key)]
        return self.steps[step - 1] if 0 < step <= len(self.steps) else None


def load(path: str | Path, *, plugins: Sequence[str] = ()) -> Recipe:
    """Read and check a recipe (everything that can be checked before a step runs)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise BadInput(f"recipe {path}: cannot read it ({e.strerror or e})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"recipe {path}: not valid TOML ({e})") from None
    lines = _Lines(text)
    unknown = sorted(set(raw) - {"step", "name", "description"})
    if unknown:
        raise BadInput(f"recipe {path}: unknown key {unknown[0]!r} at the top; a recipe is [[step]] tables "
                       "(and an optional name and description)")
    steps_raw = raw.get("step")
    if not isinstance(steps_raw, list) or not steps_raw:
        raise BadInput(f"recipe {path}: no steps; write each as a [[step]] table with run = \"combine\" (or "
                       "select, finetune, push)")
    steps: list[Step] = []
    for number, table in enumerate(steps_raw, 1):
        kind = table.get("run") if table.get("run") in PRODUCES else None

        def fail(message: str, key: str | None = None, number=number, kind=kind) -> BadInput:
            line = lines.of(number, key)
            where = f"{path}, line {line}" if line else str(path)
            return BadInput(f"recipe {where}: step {number}{f' ({kind})' if kind else ''}: {message}")

        if kind is None:
            raise fail(f"run = {table.get('run')!r}: choose one of {', '.join(PRODUCES)}", "run")
        step = Step(number, kind, {}, line=lines.of(number))
        try:
            _check_step(step, table, steps, fail, plugins)
        except BadInput as e:
            if str(e).startswith(f"recipe {path}"):
                raise
            raise fail(str(e)) from None
        steps.append(step)
    return Recipe(path=path, steps=steps, raw=raw)


def _check_step(step: Step, table: dict[str, Any], earlier: list[Step], fail, plugins) -> None:
    kind = step.run
    params = inspect.signature(_api(kind)).parameters
    known = {name for name in params if name not in _NOT_KEYS}
    aliases = _ALIASES.get(kind, {})
    fit_fields: set[str] = set()
    if kind == "finetune":  # zoo finetune's flags: the fine-tuning recipe's fields, flat in the step
        import dataclasses

        from zoo.kit.train.recipe import Recipe as FitRecipe

        fit_fields = {f.name for f in dataclasses.fields(FitRecipe)}
    fit: dict[str, Any] = {}
    for key, value in table.items():
        if key == "run":
            continue
        name = aliases.get(key.replace("-", "_"), key.replace("-", "_"))
        if name in fit_fields:
            fit[name] = value
            continue
        if name not in known:
            shown = sorted({k for k in known} | set(aliases) | fit_fields)
            raise fail(f"unknown key {key!r}; a {kind} step takes: {', '.join(shown)}", key)
        step.args[name] = _reference(value, name, key, earlier, fail)
    if kind == "push":
        step.args.setdefault("folder", _reference(PREVIOUS, "folder", "folder", earlier, fail))
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in _NOT_KEYS
               and n not in step.args and p.kind is not inspect.Parameter.VAR_KEYWORD]
    if missing:
        shown = {v: k for k, v in aliases.items()}.get(missing[0], missing[0])
        raise fail(f"missing key {shown!r}")
    if kind == "combine":
        _check_combine(step, fail, plugins)
    elif kind == "finetune":
        from zoo.kit.strategy import options as _options
        from zoo.kit.train.recipe import Recipe as FitRecipe

        for key in fit:
            _at(fail, key, lambda: _options.parse(FitRecipe, {key: fit[key]}, strategy="finetune"))
        step.args["recipe"] = _options.parse(FitRecipe, fit, strategy="finetune")
        step.args["recipe"].check()
    elif kind == "select":
        _check_select(step, fail, plugins)
    elif kind == "push":
        repo = step.args["repo_id"]
        if not isinstance(repo, str) or repo.count("/") != 1 or not all(repo.split("/")):
            raise fail(f"repo {repo!r}: write it as ORG/NAME", "repo")
    _check_paths(step, earlier, fail)
    if kind == "combine":
        _check_tensors(step, earlier, fail, plugins)
    step.out = _produces(step)
    for other in earlier:
        if step.out and other.out and step.run != "push" and other.run != "push" and \
                Path(step.out).resolve() == Path(other.out).resolve():
            raise fail(f"out = {step.out!r} is step {other.number}'s output too: give each step its own", "out")


def _at(fail, key: str, check: Callable[[], Any]) -> Any:
    try:
        return check()
    except BadInput as e:
        raise fail(str(e), key) from None


def _reference(value: Any, name: str, key: str, earlier: list[Step], fail) -> Any:
    """``@previous`` / ``@N`` replaced by that step's output, checked to be what ``name`` takes."""
    if isinstance(value, list):
        return [_reference(v, name, key, earlier, fail) for v in value]
    if not (isinstance(value, str) and value.startswith("@")):
        return value
    if value == PREVIOUS:
        if not earlier:
            raise fail(f"{key} = {value!r}: there is no previous step", key)
        source = earlier[-1]
    else:
        try:
            n = int(value[1:])
        except ValueError:
            raise fail(f"{key} = {value!r}: write @previous or @N (an earlier step's number)", key) from None
        if not 0 < n <= len(earlier):
            raise fail(f"{key} = {value!r}: name an earlier step (1 to {len(earlier)})", key)
        source = earlier[n - 1]
    takes = _TAKES.get(name)
    gives = PRODUCES[source.run]
    if source.run == "combine" and source.args.get("multi_task"):
        gives = "folder of tasks"
    if takes is None or not gives.endswith(takes) or (name == "folder" and gives == "hub model"):
        raise fail(f"{key} = {value!r}: step {source.number} ({source.run}) produces a {gives}, "
                   f"and {key} takes {'nothing from another step' if takes is None else 'a ' + takes}", key)
    if source.out is None:
        raise fail(f"{key} = {value!r}: step {source.number} ({source.run}) writes no output: give it an out", key)
    return source.out


#: keys whose value is data on disk (or a timm dataset spec), and keys whose value is a member
_DATA = ("eval_data", "train_data", "ood_data", "target_data", "val_data")
_MEMBERS = ("members", "base", "member_spec", "folder")


def _check_paths(step: Step, earlier: list[Step], fail) -> None:
    """What a step reads exists now, or an earlier step writes it: a typo fails before the first step."""
    from zoo.kit.data.splits import TIMM_PREFIXES

    made = {str(Path(s.out).resolve()) for s in earlier if s.out and not s.out.startswith("hf-hub:")}

    def exists(value: str) -> bool:
        return Path(value).exists() or str(Path(value).resolve()) in made

    a = step.args
    for key in _DATA:
        value = a.get(key)
        if isinstance(value, str) and value and not value.startswith(TIMM_PREFIXES) and not exists(value):
            raise fail(f"{key} = {value!r}: no such folder", key)
    for key in _MEMBERS:
        values = a.get(key)
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, str) and ":" not in value and not exists(value):
                raise fail(f"{key}: {value!r} is not a folder or file here, nor an earlier step's output "
                           "(Hub members are written hf-hub:ORG/NAME[@REV])", "member" if key == "member_spec" else key)
    zoo = a.get("zoo")
    if isinstance(zoo, str) and not zoo.endswith(".toml"):
        from zoo.registry import named_zoos

        if zoo not in named_zoos():
            raise fail(f"zoo = {zoo!r}: no such named zoo; named zoos: {', '.join(named_zoos())} (or give a "
                       "zoo .toml file)", "zoo")
    for key in ("zoo", "members_from"):
        value = a.get(key)
        if isinstance(value, str) and value.endswith(".toml") and not exists(value):
            raise fail(f"{key} = {value!r}: no such file, and no earlier step writes it", key)


def _produces(step: Step) -> str | None:
    if step.run == "push":
        return f"hf-hub:{step.args['repo_id']}"
    out = step.args.get("out")
    if out is None:
        return None
    return str(Path(out) / "zoo.toml") if step.run == "select" else str(out)


def _check_combine(step: Step, fail, plugins) -> None:
    from zoo.api.combine import check_inputs, check_request
    from zoo.api.tasks import split_data

    a = step.args
    options = a.get("options") or {}
    if not isinstance(options, dict):
        raise fail("options must be a table, e.g. options = { mode = \"greedy\" }", "options")
    strategy = a["strategy"]
    host = _at(fail, "strategy", lambda: _load_host(plugins))
    cls = _at(fail, "strategy", lambda: host.strategy(strategy))
    from zoo.api.sweep import split
    from zoo.kit.strategy import options as _options

    rest, swept = _at(fail, "options", lambda: split(cls.Options, dict(options), strategy=strategy))
    for key, value in rest.items():  # one at a time, so the message names the line of the bad one
        _at(fail, f"options.{key}", lambda: _options.parse(cls.Options, {key: value}, strategy=strategy))
    eval_data = a.get("eval_data")
    eval_all, eval_named = (None, dict(eval_data)) if isinstance(eval_data, dict) else split_data(eval_data)
    _at(fail, None, lambda: check_request(strategy, options=options, plugins=plugins, base=a.get("base"),
                                          out=a.get("out"), force=bool(a.get("force")), push=a.get("push"),
                                          dtype=a.get("dtype"), multi_task=bool(a.get("multi_task")),
                                          eval_named=eval_named, eval_all=eval_all,
                                          max_shard_size=a.get("max_shard_size")))
    if not (a.get("zoo") or a.get("members_from")):  # otherwise the zoo says how many, when it is read
        members = a.get("members") or []
        _at(fail, "members", lambda: check_inputs(
            cls, strategy, members=len(members), swept=swept, multi_task=bool(a.get("multi_task")),
            data={k: a.get(f"{k}_data") for k in ("train", "eval", "ood")}))


def _check_tensors(step: Step, earlier: list[Step], fail, plugins) -> None:
    """A weight merge's base and members have one set of tensors (names, shapes, dtypes), read from their
    safetensors headers (a Hub member's by HTTP range requests) and, for an earlier step's output, from the
    headers its own members have: the kit's comparison (zoo.kit.tensors.headers.compare_headers), before any step
    runs. Sets ``step.header``, what the step's output will hold. A member whose header cannot be read so
    (a zoo's members, a pickle, a Hub member out of reach) is left to the checks when the step runs."""
    from zoo.kit.tensors.headers import compare_headers

    a = step.args
    cls = _load_host(plugins).strategy(a["strategy"])
    if not cls.same_tensors or a.get("multi_task"):
        return  # a whole-model strategy (ensemble, distill, ...) or separate heads: other architectures are fine
    made = {str(Path(s.out).resolve()): s for s in earlier if s.out and not s.out.startswith("hf-hub:")}
    given = [("base", a["base"])] if isinstance(a.get("base"), str) else []
    given += [("members", m) for m in a.get("members") or [] if isinstance(m, str)]
    first: tuple[str, str, dict] | None = None
    for key, spec in given:
        source = made.get(str(Path(spec).resolve())) if ":" not in spec else None
        header = source.header if source is not None else _header(spec, plugins, a.get("arch"))
        if header is None:
            continue
        label = f"{'the base' if key == 'base' else 'member'} {spec}" + \
            (f" (step {source.number}'s output)" if source is not None else "")
        if first is None:
            first = (label, spec, header)
            continue
        _at(fail, key, lambda: compare_headers(first[2], header, both=f"{first[0]} and {label}",
                                               names=(first[1], spec), after=" (seen in the safetensors headers)"))
    step.header = first[2] if first is not None else None


def _header(spec: str, plugins, arch: str | None) -> dict | None:
    """A member's tensors from its safetensors header alone (no weights read), or None when that cannot tell."""
    from zoo.kit._infra.hub_client import PREFIX, remote_header
    from zoo.kit.tensors.headers import header_of
    from zoo.registry import resolve

    if spec.startswith(PREFIX):
        return remote_header(spec)
    try:
        return header_of(resolve(spec, _load_host(plugins), arch=arch))
    except Exception:  # a pickle, an unreadable file: its own error comes when the step loads it
        return None


def _check_select(step: Step, fail, plugins) -> None:
    from zoo.api.selection import transfer_metrics

    a = step.args
    found = _at(fail, "metric", lambda: transfer_metrics(plugins))
    for key, default in (("metric", "logme"), ("team_metric", "osborn")):
        name = a.get(key, default)
        if name not in found:
            raise fail(f"{key} = {name!r}: not a metric here; known: {', '.join(sorted(found))}", key)
    if not (a.get("target_data") or a.get("zoo")):
        raise fail("missing key 'target_data' (or a zoo whose train data is the target)")
    if a.get("out") is None:
        return
    from zoo.kit._infra.output_folder import check_out

    _at(fail, "out", lambda: check_out(Path(a["out"]), bool(a.get("force"))))


def _load_host(plugins):
    from zoo import host

    return host.load(list(plugins))


def run_recipe(path: str | Path, *, plugins: Sequence[str] = (), progress: Progress | None = None,
        log: Callable[[str], None] | None = None, check_only: bool = False) -> Recipe:
    """Check the whole recipe, then run its steps in order (``check_only``: check, run nothing)."""
    recipe = load(path, plugins=plugins)
    if check_only:
        return recipe
    progress = progress or Silent()
    log = log or (lambda message: None)
    stored = {"name": recipe.path.name, "steps": recipe.raw["step"]}
    for step in recipe.steps:
        log(f"step {step.number}/{len(recipe.steps)}: {step.run}")
        extra: dict[str, Any] = {}
        if step.run in ("combine", "finetune"):
            extra["recipe_file"] = {**stored, "step": step.number}
        if step.run in ("combine", "select", "finetune"):
            extra.update(progress=progress, log=log, plugins=plugins)
        args = dict(step.args)
        if step.run == "combine":
            args["members"] = args.get("members") or []
        try:
            _api(step.run)(**args, **extra)
        except ZooError as e:  # what failed, said with the step it failed in (the same error, exit code kept)
            e.args = (f"step {step.number} ({step.run}): {e}",)
            raise
        if step.out:
            log(f"step {step.number}: {'pushed' if step.run == 'push' else 'wrote'} {step.out}")
    return recipe
