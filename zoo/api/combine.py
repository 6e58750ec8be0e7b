"""The Python API; the CLI is a thin layer over these functions.

    import zoo
    result = zoo.combine("soup", ["hf-hub:org/a", "hf-hub:org/b@v2", "./c"],
                         eval_data="./val", options={"mode": "greedy"}, out="./soup")
    print(result.metrics)
    zoo.evaluate("./soup", "./val").top1
    zoo.push("./soup", "org/my-soup")
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from zoo import __version__
from zoo import host as _host
from zoo.kit.strategy.errors import BadInput
from zoo.kit._infra.progress import Progress, Silent
from zoo.kit.strategy import Combined, Context


def strategies(plugins: Sequence[str] = ()) -> dict[str, tuple[type, str]]:
    """Every strategy by name, with where it comes from (``built-in`` or the package)."""
    return _host.load(list(plugins)).strategies()


def load_member(spec: str, *, arch: str | None = None, allow_pickle: bool = False,
                plugins: Sequence[str] = ()):
    """Resolve one member (``hf-hub:ORG/NAME[@REV]``, a folder, or a .safetensors file with ``arch``)."""
    from zoo.registry import resolve

    member = resolve(spec, _host.load(list(plugins)), arch=arch, allow_pickle=allow_pickle)
    member.check_architecture()
    return member


def load_members(specs: Sequence[str], *, host=None, arch: str | None = None, allow_pickle: bool = False,
                 progress: Progress | None = None) -> list:
    """Resolve several members, each checked to be an architecture timm knows."""
    from zoo.registry import resolve

    host = host or _host.load()
    progress = progress or Silent()
    task = progress.task("resolving members", total=len(specs))
    out = []
    for spec in specs:
        out.append(resolve(spec, host, arch=arch, allow_pickle=allow_pickle))
        task.advance()
    task.close()
    seen: dict[str, int] = {}
    for m in out:  # names label plots, cards and errors: make repeated ones unique
        seen[m.name] = seen.get(m.name, 0) + 1
        if seen[m.name] > 1:
            m.name = f"{m.name}#{seen[m.name]}"
    for m in out:
        m.check_architecture()
    return out


def combine(strategy: str, members: Sequence[str] = (), *, zoo: str | None = None,
            members_from: str | None = None, base: str | None = None, eval_data: str | None = None,
            train_data: str | None = None,
            ood_data: str | None = None,
            options: dict[str, Any] | None = None, out: str | Path | None = None, force: bool = False,
            push: str | None = None, private: bool = False, device: str = "auto", arch: str | None = None,
            allow_pickle: bool = False, plugins: Sequence[str] = (), seed: int = 0,
            max_shard_size: str | None = None, resume: bool = False, progress: Progress | None = None,
            log: Callable[[str], None] | None = None, multi_task: bool = False,
            dtype: str | None = None, recipe_file: dict[str, Any] | None = None) -> Combined:
    """Combine members with a strategy; write the result to ``out`` (and push it) if given.

    ``base`` is the model the members were fine-tuned from (a member spec), for strategies that merge
    task vectors (θ − base); it is pinned in ``zoo.json`` and the card like the members.

    ``dtype``: the output's floating-point dtype (float32, float16, bfloat16); default: the members' where
    they agree, float32 where they do not (members stored in different precisions merge in float32).

    ``multi_task``: the members are fine-tunes on different tasks; their heads are kept apart and ``out``
    gets one timm repo per member (``zoo.api.tasks``); ``eval_data`` may then be ``{member name: folder}``
    (the CLI's ``--eval-data NAME=DIR``).

    ``recipe_file``: the recipe this run is a step of (``zoo run``, ``zoo.api.recipe``), stored in
    ``zoo.json`` beside what ``zoo reproduce`` replays (strategy, options, pinned members, data, seed,
    dtype, device)."""
    from zoo.api import sweep as _sweep
    from zoo.api import tasks as _tasks
    from zoo.kit.strategy import options as _options
    from zoo.kit.train.device import resolve_device
    from zoo.kit.tensors.stream import output_dtype

    eval_data, eval_named = (None, dict(eval_data)) if isinstance(eval_data, dict) else _tasks.split_data(eval_data)
    host, cls, options, opts, swept = check_request(
        strategy, options=options, plugins=plugins, base=base, out=out, force=force, push=push, dtype=dtype,
        multi_task=multi_task, eval_named=eval_named)
    progress = progress or Silent()
    specs = list(members)
    zoo_info = None
    if zoo:
        from zoo.registry import load_zoo

        zoo_info = load_zoo(zoo, progress=progress)
        specs = zoo_info.members + specs
        eval_data = eval_data or zoo_info.data.get("eval")
        train_data = train_data or zoo_info.data.get("train")
        ood_data = ood_data or zoo_info.data.get("ood")
    if members_from:
        from zoo.registry import load_zoo

        specs = load_zoo(members_from, progress=progress).members + specs
    check_inputs(cls, strategy, members=len(specs), data={"train": train_data, "eval": eval_data, "ood": ood_data},
                 swept=swept, multi_task=multi_task)
    if cls.same_tensors and not multi_task:  # a multi-task merge's heads differ by design
        check_headers(specs, base, host=host, arch=arch, progress=progress)
    resolved = load_members(specs, host=host, arch=arch, allow_pickle=allow_pickle, progress=progress)
    base_member = _load_base(base, host, arch=arch, allow_pickle=allow_pickle) if base else None
    from zoo.kit._infra import distributed

    dev = resolve_device(device)
    rank, world = distributed.setup(dev)
    if rank != 0:
        progress, log = Silent(), None  # one set of progress bars and messages: rank 0's
    ckpt_dir = Path(out).parent / f".{Path(out).name}.{strategy}" if out is not None else None
    if resume and ckpt_dir is None:
        raise BadInput("--resume needs --out: checkpoints are kept next to the output folder")
    ctx = Context(device=dev, eval_data=eval_data, train_data=train_data, ood_data=ood_data,
                  progress=progress,
                  log=log or (lambda message: None), seed=seed, extra_metrics=host.metrics(), strategy=strategy,
                  origin=host.strategies()[strategy][1], base=base_member,
                  checkpoint_dir=ckpt_dir, resume=resume, rank=rank, world_size=world,
                  load_member=lambda spec: load_members([spec], host=host, allow_pickle=allow_pickle)[0])
    import torch

    torch.manual_seed(seed)
    with _staged(out if rank == 0 else None, max_shard_size), output_dtype(dtype):
        if multi_task:
            _tasks.check_names(eval_named, resolved)
            return _combine_tasks(cls, opts, resolved, base_member, ctx, eval_named, eval_data, out=out, force=force,
                                  host=host, strategy=strategy, zoo_info=zoo_info, train_data=train_data, seed=seed,
                                  max_shard_size=max_shard_size)
        if swept is not None:
            result = _sweep.run(cls, options, swept, resolved, ctx, strategy=strategy)
            opts = _options.parse(cls.Options, {**options, swept.name: result.report["sweep"]["best"]},
                                  strategy=strategy)
        else:
            result = cls().combine(resolved, opts, ctx)
        # members read in full were hashed on the way (zoo.reader); this reads only what was not
        result.members = [m.provenance() for m in resolved]
        result.base = base_member.provenance() if base_member is not None else None
        result.strategy = strategy
        if result.relation == "":
            result.relation = cls.relation
        result.license = result.license or agreed_license(result.members + ([result.base] if result.base else []),
                                                          log or (lambda message: None))
        result.options = _options.to_dict(opts)
        if result.config is None:
            result.config = dict(resolved[0].config)
        if eval_data and result.metrics is None:
            result.metrics = ctx.evaluate(result.state_dict, like=resolved[0]).as_dict()
        if out is not None and rank == 0:
            save(result, out, host=host, force=force, eval_data=eval_data, max_shard_size=max_shard_size,
                 zoo=zoo_info.name if zoo_info else None, train_data=train_data, ood_data=ood_data, seed=seed,
                 world_size=world, dtype=dtype, device=dev.type, arch=arch,
                 **({"recipe_file": recipe_file} if recipe_file else {}))
            if ckpt_dir is not None and ckpt_dir.exists():
                shutil.rmtree(ckpt_dir)  # the run is complete: its checkpoints are done with
            if push:
                from zoo.api.push import push as _push

                result.report["pushed"] = _push(out, push, private=private)
    return result


def check_request(strategy: str, *, options: dict[str, Any] | None = None, plugins: Sequence[str] = (),
                  base: str | None = None, out: str | Path | None = None, force: bool = False,
                  push: str | None = None, dtype: str | None = None, multi_task: bool = False,
                  eval_named: dict[str, str] | None = None):
    """What ``combine`` checks before it reads any member: the strategy, its options (a sweep's every
    value), the base it needs, the output folder, the dtype. Returns (host, strategy class, options
    without the swept one, parsed options, sweep or None). ``zoo run`` checks a recipe's steps with it."""
    from zoo.api import sweep as _sweep
    from zoo.kit.strategy import options as _options
    from zoo.kit._infra import output_folder as output
    from zoo.kit.tensors.stream import check_dtype

    if eval_named and not multi_task:
        raise BadInput("--eval-data NAME=DIR gives each task its own held-out data: pass --multi-task too "
                       "(members fine-tuned on different tasks, each keeping its own head)")
    if multi_task and push:
        raise BadInput("--multi-task writes one timm repo per task under --out: push each with "
                       "`zoo push OUT/NAME ORG/NAME`")
    check_dtype(dtype)
    host = _host.load(list(plugins))
    cls = host.strategy(strategy)
    options, swept = _sweep.split(cls.Options, dict(options or {}), strategy=strategy)
    opts = _options.parse(cls.Options, options, strategy=strategy)
    cls.check(opts)
    if swept is not None:
        for value in swept.values:
            cls.check(_options.parse(cls.Options, {**options, swept.name: value}, strategy=strategy))
    if out is not None:
        output.check_out(Path(out), force)
    if cls.needs_base and not base:
        raise BadInput(f"strategy {strategy!r} needs a base model: pass --base SPEC, the model the members "
                       "were fine-tuned from (hf-hub:ORG/NAME[@REV], a folder or a .safetensors file)")
    if push and out is None:
        raise BadInput("--push needs --out: the folder is written first, then uploaded")
    return host, cls, options, opts, swept


def check_inputs(cls, strategy: str, *, members: int, data: dict[str, Any], swept=None,
                 multi_task: bool = False) -> None:
    """The number of members and the data a strategy needs (``data``: kind → given or not)."""
    if members < max(1, cls.min_members):
        raise BadInput(f"strategy {strategy!r} needs at least {max(1, cls.min_members)} member(s); "
                       "give them with -m SPEC or --zoo NAME")
    most = getattr(cls, "max_members", None)
    if most is not None and members > most:
        raise BadInput(f"strategy {strategy!r} takes {'exactly' if most == cls.min_members else 'at most'} "
                       f"{most} members, got {members}")
    for need in ("train", "eval", "ood"):
        if need in getattr(cls, "needs", ()) and not data.get(need):
            raise BadInput(f"strategy {strategy!r} needs {need} data: pass --{need}-data DIR "
                           "(an image folder with one sub-folder per class)")
    if swept is not None and multi_task:
        raise BadInput("a sweep keeps the best value on one held-out set; with --multi-task give the value")
    if swept is not None and not data.get("eval"):
        raise BadInput(f"-o {swept.name}={swept.raw} sweeps {swept.name} and keeps the best value on held-out "
                       "data: pass --eval-data DIR (never the test split)")


def _combine_tasks(cls, opts, resolved, base_member, ctx, eval_named, eval_all, *, out, force, host, strategy,
                   zoo_info, train_data, seed, max_shard_size) -> Combined:
    """--multi-task: merge the backbones, write one timm repo per member with its own head."""
    from zoo.api import tasks as _tasks
    from zoo.kit.strategy import options as _options

    tasks, merged = _tasks.combine_tasks(cls, opts, resolved, base_member, ctx, eval_named, eval_all)
    members = [m.provenance() for m in resolved]
    base = base_member.provenance() if base_member is not None else None
    for _, result in tasks:
        result.members, result.base, result.strategy = members, base, strategy
        result.options = _options.to_dict(opts)
    merged.report["tasks"] = {m.name: r.metrics for m, r in tasks}
    merged.members, merged.base, merged.strategy, merged.options = members, base, strategy, _options.to_dict(opts)
    if out is not None:
        extra = {"zoo": zoo_info.name if zoo_info else None, "train_data": train_data, "seed": seed}

        def save_one(result, folder):
            save(result, folder, host=host, eval_data=result.report["task"]["eval_data"],
                 max_shard_size=max_shard_size, multi_task=True, **extra)

        recipe = {"zoo_version": __version__, "strategy": strategy, "options": merged.options, "members": members,
                  **({"base": base} if base else {}), "multi_task": True, **extra}
        _tasks.save_tasks(tasks, Path(out), force=force, recipe=recipe, save_one=save_one)
    return merged


def check_headers(specs: Sequence[str], base: str | None, *, host, arch: str | None = None,
                  progress: Progress | None = None) -> None:
    """For a weight merge: every member's tensors (names, shapes, dtypes) compared with the first's (the
    base's, if given) before any weights are downloaded. Hub members' headers are read with HTTP range
    requests (``zoo.kit._infra.hub_client.remote_header``); local members' from their files. A member whose header
    cannot be read this way is left to the checks after loading."""
    from zoo.kit._infra.hub_client import PREFIX, remote_header
    from zoo.kit.tensors.headers import compare_headers, header_of
    from zoo.registry import resolve

    every = ([base] if base else []) + list(specs)
    if not any(s.startswith(PREFIX) for s in every):
        return  # all on disk: the members are checked as they load, which reads nothing more
    task = (progress or Silent()).task("reading headers", total=len(every))
    first: tuple[str, dict] | None = None
    for spec in every:
        if spec.startswith(PREFIX):
            header = remote_header(spec)
        else:
            try:
                header = header_of(resolve(spec, host, arch=arch))
            except Exception:  # a pickle, a missing file: its own error comes when it is loaded
                header = None
        task.advance()
        if header is None:
            continue
        if first is None:
            first = (spec, header)
            continue
        role = "the base" if base and first[0] == base else "member"
        compare_headers(first[1], header, both=f"{role} {first[0]} and member {spec}", names=(first[0], spec),
                        after=" (seen in the safetensors headers, before downloading any weights)")
    task.close()


def agreed_license(provenance: list[dict], log: Callable[[str], None]) -> str | None:
    """The license the members' cards agree on, else None — with a warning naming who says what."""
    said = {m["name"]: m.get("license") for m in provenance}
    values = set(said.values())
    if len(values) == 1:
        return next(iter(values))
    log("warning: the members' cards do not agree on a license ("
        + ", ".join(f"{name}: {value or 'none'}" for name, value in said.items())
        + "); the output's card names none: add the right one to its README.md before you publish it")
    return None


def save(result: Combined, out: str | Path, *, host=None, force: bool = False, eval_data: str | None = None,
         max_shard_size: str | None = None, dtype: str | None = None, device: str | None = None,
         **recipe_extra) -> Path:
    """Write a result as a timm / Hub repo: weights, config, card, zoo.json (the recipe) and figures.
    ``dtype``: floating tensors are written in it (float32, float16, bfloat16), recorded in zoo.json.
    ``device`` (cpu, cuda): where the result was computed, recorded with the versions, so that
    ``zoo reproduce`` can name it when a re-run differs."""
    import dataclasses

    from zoo.api import card
    from zoo.kit._infra import output_folder as output
    from zoo.kit._infra.scrub_paths import scrub

    host = host or _host.load()
    out = Path(out)
    recipe = {
        "zoo_version": __version__,
        "strategy": result.strategy,
        "options": result.options,
        "members": result.members,
        **({"base": result.base} if result.base else {}),
        **recipe_extra,
        **({"dtype": dtype} if dtype else {}),
        **({"max_shard_size": max_shard_size} if max_shard_size else {}),
        "eval_data": eval_data,
        "metrics": result.metrics, "report": result.report,
        "environment": environment(device),
    }
    sections: list[str] = []
    host.pm.hook.zoo_model_card(combined=result, sections=sections)
    # the card shows members, options and data by their public names (zoo.kit._infra.scrub_paths): no path of this machine
    shown = dataclasses.replace(result, members=scrub(result.members), base=scrub(result.base),
                                options=scrub(result.options))
    model_card = card.build(shown, name=out.resolve().name, eval_data=scrub(eval_data), extra_sections=sections)
    return output.write(result, out, force=force, recipe=recipe, card=model_card,
                        max_shard_size=max_shard_size or output.DEFAULT_MAX_SHARD, dtype=dtype)


@contextlib.contextmanager
def _staged(out: str | Path | None, max_shard_size: str | None):
    """With ``out``: merges write their results into a staging folder beside it as they compute them
    (``zoo.kit.tensors.stream.write_results_into``); ``save`` moves the finished files into the output.
    Removed at the end."""
    if out is None:
        yield
        return
    from zoo.kit._infra import output_folder as output
    from zoo.kit.tensors.stream import write_results_into

    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.stage-{os.getpid()}"
    try:
        with write_results_into(stage, max_shard_size=max_shard_size or output.DEFAULT_MAX_SHARD):
            yield
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _load_base(spec: str, host, *, arch: str | None, allow_pickle: bool):
    """The base model, resolved and checked like a member."""
    from zoo.registry import resolve

    member = resolve(spec, host, arch=arch, allow_pickle=allow_pickle)
    member.check_architecture()
    return member


def environment(device: str | None = None) -> dict[str, str]:
    """What a result's bytes may depend on besides its inputs: versions, the processor and the device."""
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "timm": _version("timm"),
           "huggingface_hub": _version("huggingface_hub"), "safetensors": _version("safetensors"),
           "machine": platform.machine(),
           # a CPU reduction's order, hence its last bits, follows the number of threads
           "threads": str(torch.get_num_threads())}
    cpu = _cpu_model()
    if cpu:
        env["cpu"] = cpu  # float kernels differ by instruction set: the usual cause of a last-bit difference
    if device:
        env["device"] = device
        if device == "cuda" and torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name()
    return env


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)
