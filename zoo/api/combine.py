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
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from zoo import __version__
from zoo import host as _host
from zoo.kit.strategy.errors import BadInput, IncompatibleMembers
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
                 progress: Progress | None = None, base=None) -> list:
    """Resolve several members, each checked to be a model its format can build. A member that is a
    difference to a base (a LoRA adapter) is applied to ``base`` (``--base``), else to the base its files
    name (:func:`whole`)."""
    from zoo.registry import resolve

    host = host or _host.load()
    progress = progress or Silent()
    task = progress.task("resolving members", total=len(specs))
    out = []
    bases: dict[str, Any] = {}
    for spec in specs:
        out.append(whole(resolve(spec, host, arch=arch, allow_pickle=allow_pickle), base, host=host,
                         allow_pickle=allow_pickle, bases=bases))
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


def whole(member, base=None, *, host=None, allow_pickle: bool = False, bases: dict | None = None):
    """``member`` as a whole model: itself, or, when its format holds differences to a base (a LoRA adapter,
    ``MemberFormat.difference``), applied to ``base`` — the ``--base`` given, else the one its files name
    (resolved once per spec in ``bases``)."""
    from zoo.registry import resolve

    fmt = member.format
    if not fmt.difference:
        return member
    if base is None:
        spec = fmt.base_of(member)
        if not spec:
            raise BadInput(f"member {member.name}: a {fmt.name} names no base model in its files; give the model it "
                           "was trained on with --base")
        bases = {} if bases is None else bases
        if spec not in bases:
            bases[spec] = resolve(spec, host or _host.load(), allow_pickle=allow_pickle)
        base = bases[spec]
    if base.format.difference:
        raise BadInput(f"the base {base.name} is itself a {base.format.name}; give the model it was trained on")
    return fmt.apply(member, base)


@dataclass
class Request:
    """One combine, parsed and checked before any member is read: which strategy with which options, on
    which members and data, written where. ``combine`` runs it in four steps a reader can name:
    :func:`parse_request`, :func:`resolve`, :func:`run`, :func:`write`."""

    strategy: str
    host: Any  # zoo.host.Host
    cls: type  # the strategy's class
    options: dict[str, Any]  # as given, less a swept one
    opts: Any  # parsed: the strategy's Options
    swept: Any  # a zoo.api.sweep.Sweep, or None
    specs: list[str]  # the members: a zoo's, then --members-from's, then the ones named
    base: str | None
    eval_data: str | None  # one held-out folder for the whole result
    eval_named: dict[str, str]  # --multi-task: member name → its task's held-out folder
    train_data: str | None
    ood_data: str | None
    zoo_name: str | None  # the named zoo the members came from, recorded in zoo.json
    out: Path | None
    force: bool = False
    push: str | None = None
    private: bool = False
    device: str = "auto"
    arch: str | None = None
    allow_pickle: bool = False
    seed: int = 0
    max_shard_size: str | None = None
    resume: bool = False
    multi_task: bool = False
    dtype: str | None = None
    recipe_file: dict[str, Any] | None = None
    format: str | None = None  # the output's member format (--format); default: the members'
    output_options: dict[str, Any] | None = None  # a difference format's output options (--format adapter: -o rank=)

    @property
    def checkpoints(self) -> Path | None:
        """Where a training strategy keeps its checkpoints (``--resume``): beside the output folder."""
        return None if self.out is None else self.out.parent / f".{self.out.name}.{self.strategy}"


def combine(strategy: str, members: Sequence[str] = (), *, zoo: str | None = None,
            members_from: str | None = None, base: str | None = None,
            eval_data: str | Sequence[str] | dict[str, str] | None = None, train_data: str | None = None,
            ood_data: str | None = None, options: dict[str, Any] | None = None, out: str | Path | None = None,
            force: bool = False, push: str | None = None, private: bool = False, device: str = "auto",
            arch: str | None = None, allow_pickle: bool = False, plugins: Sequence[str] = (), seed: int = 0,
            max_shard_size: str | None = None, resume: bool = False, progress: Progress | None = None,
            log: Callable[[str], None] | None = None, multi_task: bool = False, dtype: str | None = None,
            recipe_file: dict[str, Any] | None = None, format: str | None = None) -> Combined:
    """Combine members with a strategy; write the result to ``out`` (and push it) if given.

    ``base`` is the model the members were fine-tuned from (a member spec), for strategies that merge
    task vectors (θ − base); it is pinned in ``zoo.json`` and the card like the members.

    ``dtype``: the output's floating-point dtype (float32, float16, bfloat16); default: the members' where
    they agree, float32 where they do not (members stored in different precisions merge in float32).

    ``multi_task``: the members are fine-tunes on different tasks; their heads are kept apart and ``out``
    gets one timm repo per member (``zoo.api.tasks``); ``eval_data`` is then ``{member name: folder}``
    (the CLI's ``--eval-data NAME=DIR``, one per task).

    ``format``: the output's member format (``timm``, ``transformers``, a plugin's): members in another
    format are converted to it first, exactly (``zoo.kit.members.convert``). Default: the members' format;
    members in two formats are converted to the first member's, and ``log`` says so.

    ``recipe_file``: the recipe this run is a step of (``zoo run``, ``zoo.api.recipe``), stored in
    ``zoo.json`` beside what ``zoo reproduce`` replays (strategy, options, pinned members, data, seed,
    dtype, device)."""
    from zoo.kit.tensors.stream import output_dtype

    progress = progress or Silent()
    request = parse_request(
        strategy, members, zoo=zoo, members_from=members_from, base=base, eval_data=eval_data,
        train_data=train_data, ood_data=ood_data, options=options, out=out, force=force, push=push,
        private=private, device=device, arch=arch, allow_pickle=allow_pickle, plugins=plugins, seed=seed,
        max_shard_size=max_shard_size, resume=resume, multi_task=multi_task, dtype=dtype,
        recipe_file=recipe_file, format=format, progress=progress)
    resolved, ctx = resolve(request, progress=progress, log=log)
    with _staged(request.out if ctx.rank == 0 else None, request.max_shard_size), output_dtype(request.dtype):
        if request.multi_task:
            return _combine_tasks(request, resolved, ctx)
        result = run(request, resolved, ctx)
        if request.out is not None and ctx.rank == 0:
            write(request, result, ctx)
    return result


def parse_request(strategy: str, members: Sequence[str] = (), *, zoo: str | None = None,
                  members_from: str | None = None, eval_data: str | Sequence[str] | dict[str, str] | None = None,
                  train_data: str | None = None, ood_data: str | None = None, options: dict[str, Any] | None = None,
                  plugins: Sequence[str] = (), progress: Progress | None = None, **given: Any) -> Request:
    """Step 1: everything ``combine`` can check before it reads a member (:func:`check_request`, then the
    named zoo's members and data, then :func:`check_inputs`); ``given``: the rest of ``combine``'s keywords."""
    from zoo.api import tasks as _tasks

    eval_all, eval_named = (None, dict(eval_data)) if isinstance(eval_data, dict) else _tasks.split_data(eval_data)
    if given.get("format"):
        _host.load(list(plugins))  # the formats plugins offer, --format's among them
    options, output_options = _output_options(given.get("format"), options, base=given.get("base"))
    host, cls, options, opts, swept = check_request(
        strategy, options=options, plugins=plugins, base=given.get("base"), out=given.get("out"),
        force=given.get("force", False), push=given.get("push"), dtype=given.get("dtype"),
        multi_task=given.get("multi_task", False), eval_named=eval_named, eval_all=eval_all,
        max_shard_size=given.get("max_shard_size"), format=given.get("format"))
    specs, zoo_name = list(members), None
    if zoo:
        from zoo.registry import load_zoo

        zoo_info = load_zoo(zoo, progress=progress)
        specs, zoo_name = zoo_info.members + specs, zoo_info.name
        eval_all = eval_all or zoo_info.data.get("eval")
        train_data = train_data or zoo_info.data.get("train")
        ood_data = ood_data or zoo_info.data.get("ood")
    if members_from:
        from zoo.registry import load_zoo

        specs = load_zoo(members_from, progress=progress).members + specs
    multi_task = given.get("multi_task", False)
    check_inputs(cls, strategy, members=len(specs), data={"train": train_data, "eval": eval_all or eval_named,
                                                          "ood": ood_data},
                 swept=swept, multi_task=multi_task)
    if cls.selects:  # every candidate checked before a member is read
        from zoo.api import auto as _auto

        _auto.plan(cls, opts, host, base=bool(given.get("base")), multi_task=multi_task, train=bool(train_data))
    out = given.pop("out", None)
    if given.get("resume") and out is None:
        raise BadInput("--resume needs --out: checkpoints are kept next to the output folder")
    return Request(strategy=strategy, host=host, cls=cls, options=options, opts=opts, swept=swept, specs=specs,
                   eval_data=eval_all, eval_named=eval_named, train_data=train_data, ood_data=ood_data,
                   zoo_name=zoo_name, out=Path(out) if out is not None else None, output_options=output_options,
                   **given)


def resolve(request: Request, *, progress: Progress, log: Callable[[str], None] | None = None
            ) -> tuple[list, Context]:
    """Step 2: the members (headers compared first, for a weight merge) and the base, resolved and checked;
    the device and the processes (torchrun); the :class:`Context` the strategy runs in."""
    import torch

    from zoo.kit._infra import distributed
    from zoo.kit.train.device import resolve_device

    r, host = request, request.host
    if r.cls.same_tensors and not r.multi_task:  # a multi-task merge's heads differ by design
        check_headers(r.specs, r.base, host=host, arch=r.arch, progress=progress)
    base = _load_base(r.base, host, arch=r.arch, allow_pickle=r.allow_pickle) if r.base else None
    resolved = load_members(r.specs, host=host, arch=r.arch, allow_pickle=r.allow_pickle, progress=progress,
                            base=base)
    out_format = _difference_format(r.format)
    if out_format is not None:  # the members are merged as full models, the output written as a difference
        out_format.check_output(resolved)
    resolved, base = in_one_format(resolved, base, strategy=r.strategy, cls=r.cls,
                                   wanted=None if out_format is not None else r.format,
                                   log=log or (lambda message: None))
    dev = resolve_device(r.device)
    rank, world = distributed.setup(dev)
    if rank != 0:
        progress, log = Silent(), None  # one set of progress bars and messages: rank 0's
    ctx = Context(device=dev, eval_data=r.eval_data, train_data=r.train_data, ood_data=r.ood_data,
                  progress=progress, log=log or (lambda message: None), seed=r.seed,
                  extra_metrics=host.metrics(), strategy=r.strategy, origin=host.strategies()[r.strategy][1],
                  base=base, checkpoint_dir=r.checkpoints, resume=r.resume, rank=rank, world_size=world,
                  load_member=lambda spec: load_members([spec], host=host, allow_pickle=r.allow_pickle)[0])
    torch.manual_seed(r.seed)
    return resolved, ctx


def in_one_format(members: list, base, *, strategy: str, cls: type, wanted: str | None,
                  log: Callable[[str], None]) -> tuple[list, Any]:
    """The members and the base in the one format the output is written in, converted exactly where they
    are not (``zoo.kit.members.convert``; a family without a conversion is a :class:`BadInput` naming it).
    The format: ``wanted`` (``--format``), else the one the strategy runs on, else the first member's."""
    from zoo.kit.members import convert, named_format

    every = list(members) + ([base] if base is not None else [])
    have = list(dict.fromkeys(m.format.name for m in every))
    allowed = cls.member_formats
    if wanted is not None:
        target, why = wanted, "--format"
    elif allowed and any(h not in allowed for h in have):
        target, why = allowed[0], f"strategy {strategy!r} runs on {' and '.join(allowed)} models"
    elif len(have) > 1:
        target, why = members[0].format.name, "the first member's format; --format chooses another"
    else:
        return members, base
    if have == [target]:
        return members, base
    fmt = named_format(target)
    members = [convert(m, fmt) for m in members]
    base = convert(base, fmt) if base is not None else None
    by_format = "; ".join(f"{h}: {', '.join(m.name for m in every if m.format.name == h)}" for h in have)
    log(f"members come in {' and '.join(have)} format ({by_format}): converted exactly to {target} "
        f"({why}), and the output is written in it")
    return members, base


def run(request: Request, resolved: list, ctx: Context) -> Combined:
    """Step 3: the strategy on the members (once per value of a sweep, the best kept), its result completed
    with what zoo records of every result: members, base, options, license, held-out metrics."""
    from zoo.api import sweep as _sweep
    from zoo.kit.strategy import options as _options

    r, opts = request, request.opts
    if r.cls.selects:
        from zoo.api import auto as _auto

        result = _auto.run(r.cls, opts, r.host, resolved, ctx, base=ctx.base is not None, train=bool(r.train_data))
    elif r.swept is not None:
        result = _sweep.run(r.cls, r.options, r.swept, resolved, ctx, strategy=r.strategy)
        opts = _options.parse(r.cls.Options, {**r.options, r.swept.name: result.report["sweep"]["best"]},
                              strategy=r.strategy)
    else:
        result = r.cls().combine(resolved, opts, ctx)
    # members read in full were hashed on the way (zoo.reader); this reads only what was not
    result.members = [m.provenance() for m in resolved]
    result.base = ctx.base.provenance() if ctx.base is not None else None
    result.strategy = r.strategy
    if result.relation == "":
        result.relation = r.cls.relation
    result.license = result.license or agreed_license(result.members + ([result.base] if result.base else []),
                                                      ctx.log)
    result.options = _options.to_dict(opts)
    if result.config is None:
        result.config = dict(resolved[0].config)
    if result.like is None:
        result.like = resolved[0]
    if r.eval_data and result.metrics is None:
        result.metrics = ctx.evaluate(result.state_dict, like=resolved[0]).as_dict()
    return result


def write(request: Request, result: Combined, ctx: Context) -> Path:
    """Step 4: the result saved to ``out`` (:func:`save`) with the recipe that made it, the checkpoints of a
    finished run removed, and the folder pushed if asked."""
    r = request
    out_format = _difference_format(r.format)
    if out_format is not None:
        result = out_format.from_full(result, ctx.base, r.output_options or {}, ctx)
    folder = save(result, r.out, host=r.host, force=r.force, eval_data=r.eval_data, max_shard_size=r.max_shard_size,
                  zoo=r.zoo_name, train_data=r.train_data, ood_data=r.ood_data, seed=r.seed,
                  world_size=ctx.world_size, dtype=r.dtype, device=ctx.device.type, arch=r.arch,
                  **({"recipe_file": r.recipe_file} if r.recipe_file else {}),
                  **({"format": r.format} if r.format else {}),
                  **({"output_options": r.output_options} if r.output_options else {}))
    if r.checkpoints is not None and r.checkpoints.exists():
        shutil.rmtree(r.checkpoints)  # the run is complete: its checkpoints are done with
    if r.push:
        from zoo.api.push import push as _push

        result.report["pushed"] = _push(r.out, r.push, private=r.private)
    return folder


def check_request(strategy: str, *, options: dict[str, Any] | None = None, plugins: Sequence[str] = (),
                  base: str | None = None, out: str | Path | None = None, force: bool = False,
                  push: str | None = None, dtype: str | None = None, multi_task: bool = False,
                  eval_named: dict[str, str] | None = None, eval_all: str | None = None,
                  max_shard_size: str | None = None, format: str | None = None):
    """What ``combine`` checks before it reads any member: the strategy, its options (a sweep's every
    value), the base it needs, the output folder, the repo to push to, the dtype, what --multi-task
    needs, the output's format. Returns (host, strategy class, options without the swept one, parsed options, sweep or None).
    ``zoo run`` checks a recipe's steps with it."""
    from zoo.api import sweep as _sweep
    from zoo.api.push import check_repo_id
    from zoo.kit.strategy import options as _options
    from zoo.kit._infra import output_folder as output
    from zoo.kit.tensors.stream import check_dtype

    if eval_named and not multi_task:
        raise BadInput("--eval-data NAME=DIR gives each task its own held-out data: pass --multi-task too "
                       "(members fine-tuned on different tasks, each keeping its own head)")
    if multi_task and eval_all:
        raise BadInput(f"--multi-task evaluates each task with its own head on its own held-out data: give "
                       f"--eval-data NAME=DIR once per task (NAME: the member's name), not --eval-data {eval_all}")
    if multi_task and push:
        raise BadInput("--multi-task writes one timm repo per task under --out: push each with "
                       "`zoo push OUT/NAME ORG/NAME`")
    if push:
        check_repo_id(push, flag="--push")
    check_dtype(dtype)
    output.check_shard_size(max_shard_size)
    host = _host.load(list(plugins))
    cls = host.strategy(strategy)
    options, _ = _output_options(format, options, base=base)
    _refuse_output_options(cls, options)
    if format is not None:
        from zoo.kit.members import named_format

        named_format(format)  # one the host knows
        if cls.member_formats and format not in cls.member_formats:
            raise BadInput(f"--format {format}: strategy {strategy!r} writes {' or '.join(cls.member_formats)} "
                           "models (it runs on their modules); leave --format out, or convert its output")
    if multi_task:
        _check_merge_method(host, cls, strategy)
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


def _difference_format(format: str | None):
    """The member format named by ``--format`` when it is a difference to the base (``--format adapter``), else
    None."""
    if format is None:
        return None
    from zoo.kit.members import named_format

    fmt = named_format(format)
    return fmt if fmt.difference else None


def _output_options(format: str | None, options: dict[str, Any] | None, *, base: str | None = None
                    ) -> tuple[dict[str, Any], dict | None]:
    """``--format`` of a difference format (``adapter``): its output options (``-o rank=``) taken out of the
    strategy's and checked by the format (``MemberFormat.output_options``); other formats have none."""
    options = dict(options or {})
    fmt = _difference_format(format)
    if fmt is None:
        return options, None
    raw = {k: options.pop(k) for k in fmt.output_option_names if k in options}
    return options, fmt.output_options(raw, base=base)


def _refuse_output_options(cls, options: dict[str, Any]) -> None:
    """An output option (-o rank=) without the --format it belongs to, where the strategy has no such option:
    say whose it is."""
    import dataclasses

    from zoo.kit.members import formats

    mine = {f.name for f in dataclasses.fields(cls.Options)} if dataclasses.is_dataclass(cls.Options) else set()
    for fmt in formats():
        for key in fmt.output_option_names:
            if key in options and key not in mine:
                raise BadInput(f"-o {key}= is an option of --format {fmt.name}'s output, not of the strategy: pass "
                               f"--format {fmt.name} (and --base) to write the merge in it")


def _check_merge_method(host, cls, strategy: str) -> None:
    """--multi-task streams the members without their heads through a per-tensor merge: only a merge method
    (``zoo.merge_method``), or a strategy that takes the tasks (``Strategy.multi_task``), runs on such headless
    members."""
    from zoo.kit.merge.method import MergeMethod

    if not issubclass(cls, MergeMethod) and not cls.selects and not cls.multi_task:
        merges = [name for name, (c, _) in host.strategies().items() if issubclass(c, MergeMethod) or c.multi_task]
        raise BadInput(f"--multi-task is for merge methods (they merge the backbones tensor by tensor, each "
                       f"member keeping its own head); {strategy!r} is not one. Merge methods: "
                       f"{', '.join(merges)} (see `zoo strategies`)")
    if "train" in cls.needs and not cls.multi_task:
        raise BadInput(f"--multi-task: {strategy!r} runs each member's whole model on --train-data to weigh its "
                       "tensors, and --multi-task merges the members without their heads; merge tasks with a "
                       "data-free method (task-arithmetic, ties, tsv, iso-c, ...) or with adamerging")


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
    if swept is not None and not data.get("eval"):
        raise BadInput(f"-o {swept.name}={swept.raw} sweeps {swept.name} and keeps the best value on held-out "
                       "data: pass --eval-data DIR (never the test split)")


def _combine_tasks(request: Request, resolved: list, ctx: Context) -> Combined:
    """--multi-task: merge the backbones, write one timm repo per member with its own head."""
    from zoo.api import tasks as _tasks
    from zoo.kit.strategy import options as _options

    r, opts = request, request.opts
    _tasks.check_names(r.eval_named, resolved)
    base_member = ctx.base
    if r.cls.selects:  # the candidate with the best mean normalised top-1 over the tasks
        from zoo.api import auto as _auto

        tasks, merged = _auto.run_tasks(r.cls, r.opts, r.host, resolved, base_member, ctx, r.eval_named, r.eval_data,
                                        train=bool(r.train_data))
    elif r.swept is not None:  # the value with the best mean normalised top-1 over the tasks
        from zoo.api import sweep as _sweep

        tasks, merged = _sweep.run_tasks(r.cls, r.options, r.swept, resolved, base_member, ctx, r.eval_named,
                                         r.eval_data, strategy=r.strategy)
        opts = _options.parse(r.cls.Options, {**r.options, r.swept.name: merged.report["sweep"]["best"]},
                              strategy=r.strategy)
    else:
        tasks, merged = _tasks.combine_tasks(r.cls, r.opts, resolved, base_member, ctx, r.eval_named, r.eval_data)
    out_format = _difference_format(r.format)
    if out_format is not None:  # --format adapter: each task's merge as an adapter of the (whole) base
        import dataclasses

        tasks = [(m, out_format.from_full(result, base_member, r.output_options or {}, dataclasses.replace(
            ctx, base=base_member, eval_data=result.report["task"]["eval_data"]))) for m, result in tasks]
    members = [m.provenance() for m in resolved]
    base = base_member.provenance() if base_member is not None else None
    for _, result in tasks:
        result.members, result.base, result.strategy = members, base, r.strategy
        result.options = _options.to_dict(opts)
    merged.report["tasks"] = {m.name: res.metrics for m, res in tasks}
    merged.members, merged.base, merged.strategy, merged.options = members, base, r.strategy, _options.to_dict(opts)
    if r.out is not None and ctx.rank == 0:  # under torchrun, rank 0 alone writes
        extra = {"zoo": r.zoo_name, "train_data": r.train_data, "seed": r.seed,
                 **({"format": r.format} if r.format else {}),
                 **({"output_options": r.output_options} if r.output_options else {})}

        def save_one(result, folder):
            save(result, folder, host=r.host, eval_data=result.report["task"]["eval_data"],
                 max_shard_size=r.max_shard_size, multi_task=True, **extra)

        recipe = {"zoo_version": __version__, "strategy": r.strategy, "options": merged.options, "members": members,
                  **({"base": base} if base else {}), "multi_task": True, **extra,
                  **{k: merged.report[k] for k in ("sweep", "auto") if k in merged.report}}
        sections = []  # the summary card's account of a sweep or a leaderboard
        if "sweep" in merged.report:
            from zoo.api import sweep as _sweep

            sections.append(_sweep.tasks_text(merged.report["sweep"]))
        if "auto" in merged.report:
            from zoo.api import auto as _auto

            sections.append(_auto.tasks_text(merged.report["auto"]))
        _tasks.save_tasks(tasks, r.out, force=r.force, recipe=recipe, save_one=save_one, extra=sections)
        if r.checkpoints is not None and r.checkpoints.exists():
            shutil.rmtree(r.checkpoints)  # the run is complete (a training strategy's, e.g. adamerging)
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
        try:
            compare_headers(first[1], header, both=f"{role} {first[0]} and member {spec}", names=(first[0], spec),
                            after=" (seen in the safetensors headers, before downloading any weights)")
        except IncompatibleMembers:
            if _format_of(first[0], host, arch) == _format_of(spec, host, arch):
                raise
            # two formats name their tensors differently: they are compared once converted to one

    task.close()


def _format_of(spec: str, host, arch: str | None) -> str | None:
    """The member format of ``spec`` from its config.json alone (a Hub member's is one small download)."""
    import json

    from zoo.kit._infra.hub_client import PREFIX, parse, small_file
    from zoo.kit.members.format_registry import claim
    from zoo.registry import resolve

    try:
        if not spec.startswith(PREFIX):
            return resolve(spec, host, arch=arch).format.name
        repo_id, revision = parse(spec)
        path = small_file(repo_id, "config.json", revision, spec)
        return claim(path.parent, json.loads(path.read_text()), spec).name if path is not None else None
    except (BadInput, OSError, ValueError):
        return None


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

    from zoo.api import card, local_sources
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
    written = output.write(result, out, force=force, recipe=recipe, card=model_card,
                           max_shard_size=max_shard_size or output.DEFAULT_MAX_SHARD, dtype=dtype)
    local_sources.remember(written, recipe)  # where the local inputs are, for zoo reproduce: in zoo's cache only
    return written


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

    stage = output.stage_folder(out)
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
