"""``zoo reproduce OUTPUT``: re-run what an output's ``zoo.json`` records, and compare the bytes.

An output's ``zoo.json`` pins what its weights depend on: the strategy and its options, every member
(a Hub member by its commit, a local one by the sha256 of its files), the base, the data, the seed, the
dtype, and the environment it ran in (versions, processor, device). Reproducing it:

1. reads ``zoo.json`` from a folder, or from ``hf-hub:ORG/NAME[@REV]`` (its zoo.json, config and weights
   are downloaded: they are what the re-run is compared with);
2. finds every member: a Hub member at its pinned commit, which must still exist; a local one given as
   ``NAME=PATH``, or where it was when the output was made on this machine (``zoo.api.local_sources``: a
   record in zoo's cache, never in the output), or in the zoo ``zoo.json`` names, or at the relative path
   it was given by; a local member's files must have the recorded sha256, so a changed member is named,
   never used;
3. finds the data the same way (given, where it was if it still holds the same files, the named zoo's,
   the recorded relative path);
4. re-runs the step (``zoo.api.combine.combine``, or ``zoo.api.finetune.finetune``) into ``out``;
5. compares the weights and the config byte for byte; where they differ, names the first tensor that
   differs, by how much, and what changed in the environment (the likely cause).
"""

from __future__ import annotations

import filecmp
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from zoo.kit.data.splits import TIMM_PREFIXES  # dataset specs timm reads itself
from zoo.kit.strategy.errors import BadInput
from zoo.kit._infra.progress import Progress, Silent

#: what a re-run is compared on: the weights and the config (the card and figures name the output folder)
_COMPARED = ("config.json", "adapter_config.json", "*.safetensors", "*.safetensors.index.json")


@dataclass
class Reproduction:
    """What ``reproduce`` found. ``identical``: every compared file is byte for byte the same."""

    identical: bool
    out: Path
    compared: list[str]
    difference: str | None = None  # the first difference, in words
    causes: list[str] = field(default_factory=list)  # what changed in the environment since the original
    metrics: tuple[dict | None, dict | None] = (None, None)  # (recorded, re-run)


def reproduce(output: str, *, out: str | Path | None = None, members: dict[str, str] | None = None,
              zoo: str | None = None, eval_data: str | None = None, train_data: str | None = None,
              ood_data: str | None = None, device: str | None = None, force: bool = False,
              allow_pickle: bool = False, plugins: Sequence[str] = (), progress: Progress | None = None,
              log: Callable[[str], None] | None = None) -> Reproduction:
    """Re-run the recipe in ``output``'s zoo.json into ``out`` (default: a temporary folder, removed) and
    compare the result's weights and config with ``output``'s. ``members``: ``{name or spec: path}`` for
    members that were local folders where the output was made. ``device``: default the recorded one
    where this machine has it."""
    from zoo.kit._infra import output_folder as _output

    from zoo.api import local_sources

    progress = progress or Silent()
    log = log or (lambda message: None)
    original = _fetch(output)
    recipe = _read_recipe(original, output)
    made_here = local_sources.recall((original / "zoo.json").read_bytes()) or local_sources.Record()
    if out is not None:
        _output.check_out(Path(out), force)
    if recipe.get("multi_task"):
        raise BadInput(f"{output} is a multi-task merge (one timm repo per task under it): zoo reproduce does "
                       "not replay those yet; re-run the command in its README.md")
    world = int(recipe.get("world_size") or 1)
    if world > 1 and int(os.environ.get("WORLD_SIZE", "1")) != world:
        raise BadInput(f"{output} was made by {world} processes: run `torchrun --nproc-per-node {world} -m zoo "
                       f"reproduce ...` so the data is split the same way")
    zoo_info = _zoo(zoo or recipe.get("zoo"), progress, given=zoo is not None)
    where = dict(members or {})
    recorded = made_here.members if len(made_here.members) == len(recipe.get("members") or []) else []
    specs = [_member_spec(m, where, zoo_info, "member", recorded[i] if recorded else None)
             for i, m in enumerate(recipe.get("members") or [])]
    base = _member_spec(recipe["base"], where, zoo_info, "the base", made_here.base) if recipe.get("base") else None
    unused = set(where) - {m[k] for m in [*(recipe.get("members") or []), recipe.get("base") or {}]
                           for k in ("name", "spec") if k in m}
    if unused:
        raise BadInput(f"--member {sorted(unused)[0]}=...: {output} has no member of that name; its members: "
                       + ", ".join(m["name"] for m in recipe.get("members") or []))
    data = {kind: _data(kind, recipe.get(f"{kind}_data"), given, zoo_info, made_here.data.get(kind))
            for kind, given in (("eval", eval_data), ("train", train_data), ("ood", ood_data))}
    recorded_env = recipe.get("environment") or {}
    device = device or _recorded_device(recorded_env)
    arch = recipe.get("arch")

    temporary = out is None
    target = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="zoo-reproduce-")) / "again"
    try:
        if recipe["strategy"] == "finetune":
            result = _finetune(recipe, specs, data, target, device=device, arch=arch, allow_pickle=allow_pickle,
                               plugins=plugins, progress=progress, log=log, force=force)
        else:
            from zoo.api.combine import combine

            result = combine(recipe["strategy"], specs, base=base, eval_data=data["eval"],
                             train_data=data["train"], ood_data=data["ood"], options={**_given(recipe.get("output_options")), **(recipe.get("options") or {})},
                             out=target, force=force, device=device, arch=arch, allow_pickle=allow_pickle,
                             plugins=plugins, seed=int(recipe.get("seed") or 0), dtype=recipe.get("dtype"),
                             max_shard_size=recipe.get("max_shard_size"), format=recipe.get("format"),
                             progress=progress, log=log)
        compared, difference = compare(original, target)
        again = json.loads((target / "zoo.json").read_text())
        causes = _changes(recorded_env, again.get("environment") or {}) if difference else []
        return Reproduction(identical=difference is None, out=target, compared=compared, difference=difference,
                            causes=causes, metrics=(recipe.get("metrics"), result.metrics))
    finally:
        if temporary:
            import shutil

            shutil.rmtree(target.parent, ignore_errors=True)


def _fetch(output: str) -> Path:
    """The output's folder: itself, or its Hub snapshot (zoo.json, config, weights)."""
    from zoo.kit._infra.hub_client import PREFIX, download, parse

    if output.startswith(PREFIX):
        repo_id, revision = parse(output)
        return download(repo_id, revision, ["zoo.json", *_COMPARED], output)
    folder = Path(output)
    if not folder.is_dir():
        raise BadInput(f"{output}: no such folder (give an output folder zoo wrote, or hf-hub:ORG/NAME[@REV])")
    return folder


def _read_recipe(folder: Path, output: str) -> dict[str, Any]:
    path = folder / "zoo.json"
    if not path.is_file():
        raise BadInput(f"{output} has no zoo.json: zoo reproduce replays the recipe that `zoo combine` and "
                       "`zoo finetune` write into their outputs, and this was not written by either")
    try:
        recipe = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BadInput(f"{output}/zoo.json is not valid JSON ({e})") from None
    if not isinstance(recipe, dict) or not recipe.get("strategy") or "members" not in recipe:
        raise BadInput(f"{output}/zoo.json records no strategy and members: it is not a recipe zoo can replay")
    return recipe


def _zoo(name: str | None, progress: Progress, *, given: bool):
    """The zoo the output names (or ``--zoo``): where its local members and data may be found."""
    if not name:
        return None
    from zoo.registry import load_zoo

    try:
        return load_zoo(name, progress=progress)
    except BadInput:
        if given:
            raise
        return None  # made from a zoo file of another machine: members are then asked for by name


def _member_spec(prov: dict, where: dict[str, str], zoo_info, role: str, made_from: str | None = None) -> str:
    """Where to load a recorded member from, checked against its recorded file hashes when local.
    ``made_from``: where it was when the output was made on this machine (zoo.api.local_sources)."""
    from zoo.kit._infra.hub_client import PREFIX

    name, spec = prov.get("name", "?"), prov.get("spec", "")
    who = f"{role} {name}"
    if prov.get("repo_id") and prov.get("revision"):
        _check_revision(prov["repo_id"], prov["revision"], who)
        return f"{PREFIX}{prov['repo_id']}@{prov['revision']}"
    path = where.get(name) or where.get(spec)
    if path is not None:  # given: it must be the member, or it is refused
        _check_hashes(prov, Path(path), who)
        return str(path)
    moved = None  # why the recorded place no longer holds it, for the message
    if made_from is not None:
        try:
            _check_hashes(prov, Path(made_from), who)
            return made_from
        except BadInput:
            moved = (f"it was {made_from} when the output was made, and "
                     + ("that now holds other files" if Path(made_from).exists() else "that is gone"))
    if zoo_info is not None:
        path = next((m for m in zoo_info.members if Path(m).name in (name, Path(spec).name)), None)
    if path is None and spec and Path(spec).exists():
        path = spec  # the relative path it was given by, from the same folder
    if path is None:
        kind = "file" if spec.endswith(".safetensors") else "folder"
        raise BadInput(f"{who} was a local {kind} ({moved or spec + ' where the output was made'}): give it "
                       f"with --member {name}=PATH, or --zoo ZOO if a zoo holds it")
    _check_hashes(prov, Path(path), who)
    return str(path)


def _check_revision(repo_id: str, revision: str, who: str) -> None:
    """A pinned Hub member still exists at its commit (one metadata request, no download)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    from zoo.kit._infra.hub_client import endpoint

    try:
        HfApi().model_info(repo_id, revision=revision)
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise BadInput(f"{who}: {repo_id}@{revision} no longer exists at {endpoint()}; zoo reproduce needs "
                       "the members at the commits the output pins") from None
    except Exception:  # unreachable Hub and the like: the download says it, with its own message
        return


def _check_hashes(prov: dict, path: Path, who: str) -> None:
    from zoo.kit._infra.safetensors_reader import sha256_of
    for filename, expected in (prov.get("files") or {}).items():
        f = path if path.is_file() else path / filename
        if path.is_file() and path.name != filename:
            continue
        if not f.is_file():
            raise BadInput(f"{who}: {path} has no {filename}, which the output's member had")
        got = sha256_of(f)
        if got != expected:
            raise BadInput(f"{who}: {f} is not the file the output was made from (sha256 {got[:12]}…, "
                           f"zoo.json pins {expected[:12]}…)")


def _data(kind: str, recorded: str | None, given: str | None, zoo_info,
          made_from: tuple[str, str] | None = None) -> str | None:
    """The data folder to re-run with: given, else where it was on this machine if it holds the same files
    (``made_from``: path and fingerprint, zoo.api.local_sources), the zoo's, or the recorded relative path."""
    from zoo.api.local_sources import fingerprint

    if given:
        return given
    if not recorded:
        return None
    if made_from is not None and Path(made_from[0]).exists():
        if fingerprint(Path(made_from[0])) == made_from[1]:
            return made_from[0]
        raise BadInput(f"the output was made with --{kind}-data {made_from[0]}, and its files have changed since "
                       f"(added, removed or rewritten): give the data it was made with, --{kind}-data DIR")
    if zoo_info is not None and kind in zoo_info.data and Path(zoo_info.data[kind]).name == Path(recorded).name:
        return zoo_info.data[kind]
    if Path(recorded).exists() or recorded.startswith(TIMM_PREFIXES):
        return recorded
    where = made_from[0] if made_from is not None else recorded
    raise BadInput(f"the output was made with --{kind}-data {where}, a folder "
                   f"{'that is gone' if made_from is not None else 'of the machine it was made on'}, and there "
                   f"is no {recorded} here: give it with --{kind}-data DIR")


def _recorded_device(env: dict) -> str:
    recorded = env.get("device")
    if recorded == "cuda":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return recorded or "auto"


def _given(output_options: dict | None) -> dict:
    """The output options (``--format adapter``'s ``-o rank=``) a re-run gives again: those that were set."""
    return {k: v for k, v in (output_options or {}).items() if v is not None}


def _finetune(recipe: dict, specs: list[str], data: dict, out: Path, **kw):
    from zoo.api.finetune import finetune
    from zoo.kit.strategy import options as _options
    from zoo.kit.train.recipe import Recipe

    if not data["train"]:
        raise BadInput("the output's zoo.json records no training data for its fine-tune")
    options = dict(recipe.get("options") or {})
    lora = options.pop("lora", None)  # a LoRA run records its --lora beside the recipe
    if lora is not None:
        from zoo.kit.train.lora import LoraSpec

        lora = LoraSpec(**{**lora, "targets": tuple(lora["targets"]) if lora.get("targets") is not None else None})
    fit = _options.parse(Recipe, options, strategy="finetune")
    return finetune(specs[0], data["train"], out, recipe=fit, eval_data=data["eval"], lora=lora, **kw)


def compare(original: Path, again: Path) -> tuple[list[str], str | None]:
    """The files compared, and the first difference in words (None: identical)."""
    def files(folder: Path) -> set[str]:
        return {p.name for pattern in _COMPARED for p in folder.glob(pattern)}

    mine, theirs = files(original), files(again)
    if mine != theirs:
        return sorted(mine), (f"the re-run wrote other files: {', '.join(sorted(theirs - mine)) or 'none more'}; "
                              f"missing {', '.join(sorted(mine - theirs)) or 'none'}")
    # the weights first: a weight difference explains a config or index difference, never the other way
    for name in sorted(mine, key=lambda n: (not n.endswith(".safetensors"), n)):
        a, b = original / name, again / name
        if filecmp.cmp(a, b, shallow=False):
            continue
        if name.endswith(".safetensors"):
            return sorted(mine), f"{name}: {_first_tensor_difference(a, b)}"
        if name == "config.json":
            if _same_config(a, b):
                continue
            return sorted(mine), f"config.json: {_json_difference(a, b)}"
        if name == "adapter_config.json":  # where the base is found depends on where the re-run writes
            if _without(a, "base_model_name_or_path") == _without(b, "base_model_name_or_path"):
                continue
            return sorted(mine), f"adapter_config.json: {_json_difference(a, b)}"
        return sorted(mine), f"{name} differs"
    return sorted(mine), None


def _without(path: Path, key: str) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if k != key}


def _first_tensor_difference(a: Path, b: Path) -> str:
    """The first tensor (in file order) that differs, with how many values differ and by how much."""
    import torch
    from safetensors import safe_open

    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        ka, kb = list(fa.keys()), list(fb.keys())
        if set(ka) != set(kb):
            return (f"other tensors (only in the original: {', '.join(sorted(set(ka) - set(kb))[:3]) or 'none'}; "
                    f"only in the re-run: {', '.join(sorted(set(kb) - set(ka))[:3]) or 'none'})")
        for k in ka:
            x, y = fa.get_tensor(k), fb.get_tensor(k)
            if x.dtype != y.dtype or x.shape != y.shape:
                return f"tensor {k} is {x.dtype} {tuple(x.shape)} in the original, {y.dtype} {tuple(y.shape)} again"
            if torch.equal(x, y):
                continue
            if not x.is_floating_point():
                return f"tensor {k}: {int((x != y).sum())} of {x.numel()} values differ"
            d = (x.double() - y.double()).abs()
            return (f"tensor {k} differs first: {int((d > 0).sum())} of {x.numel()} values, by at most "
                    f"{d.max().item():.3g} (largest value {x.double().abs().max().item():.3g})")
        return "the same tensors, in another header (metadata or order)"


def _same_config(a: Path, b: Path) -> bool:
    """The same config.json once an older output's copy of ``num_classes`` in ``model_args`` is left out:
    zoo writes it at the top level only since its outputs open in transformers (output_folder.timm_config),
    so an output made before that is still reproduced where nothing else differs."""
    from zoo.kit._infra.output_folder import timm_config

    return timm_config(json.loads(a.read_text())) == timm_config(json.loads(b.read_text()))


def _json_difference(a: Path, b: Path) -> str:
    x, y = json.loads(a.read_text()), json.loads(b.read_text())
    keys = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))
    return "differs in " + ", ".join(f"{k} ({x.get(k)!r} → {y.get(k)!r})" for k in keys[:3])


def _changes(recorded: dict, now: dict) -> list[str]:
    """What changed between the environment the output records and the re-run's: the likely causes."""
    changed = [f"{k} {recorded.get(k, '?')} → {now.get(k, '?')}" for k in
               ("device", "gpu", "cpu", "machine", "threads", "torch", "timm", "safetensors", "huggingface_hub",
                "python")
               if (k in recorded or k in now) and recorded.get(k) != now.get(k)]
    if not recorded.get("device"):
        changed.append("the original's device is not recorded (made by an older zoo)")
    if not changed:
        changed.append("nothing: the same versions, processor and device, and the same members and data "
                       "(checked by hash), so the strategy itself is not deterministic here")
    return changed
