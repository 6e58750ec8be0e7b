"""What a strategy is, what it gets (members and a Context) and what it returns (a Combined).

A strategy is a class with a ``name``, a one-line ``summary``, an ``Options``
dataclass (fields made with :func:`zoo.option`) and one method::

    class Average(zoo.Strategy):
        name = "average"
        summary = "plain uniform average"

        @dataclass
        class Options:
            scale: float = zoo.option(1.0, "multiply the average by this")

        def combine(self, members, options, ctx):
            sd = zoo.kit.tensors.weights.uniform_average(members, progress=ctx.progress)
            return zoo.Combined(state_dict=sd)

It never prints, never touches the network and never writes files: progress and
evaluation go through the Context, results come back in the Combined.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

from zoo.kit.strategy.errors import BadInput
from zoo.kit._infra.progress import Progress, Silent

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from zoo.kit.data import Split
    from zoo.kit.measure.metrics import Metrics
    from zoo.kit.members.member import Member


class Strategy:
    """Base class of every strategy (built-in or from a plugin)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    #: fewest members the strategy accepts
    min_members: ClassVar[int] = 1
    #: most members the strategy accepts (None: no limit)
    max_members: ClassVar[int | None] = None
    #: True: zoo refuses to run it without ``--base`` (then ``ctx.base`` is the base model)
    needs_base: ClassVar[bool] = False
    #: data zoo refuses to run it without: any of "train", "eval", "ood" (--train-data, ...)
    needs: ClassVar[tuple[str, ...]] = ()
    #: how the output relates to its Hub members, as the card's ``base_model_relation`` says it: "merge"
    #: (weights combined from several), "finetune" (trained from one), or None (not derived from the
    #: members' weights, e.g. a student distilled from teachers: the card then names no base_model)
    relation: ClassVar[str | None] = "merge"
    #: True for a weight merge: every member (and the base) must have the same tensors and shapes, and zoo
    #: compares Hub members' safetensors headers before it downloads any weights
    same_tensors: ClassVar[bool] = False
    #: the member formats the strategy runs on (``zoo.MemberFormat.name``: ("timm",) for one that reaches
    #: into timm's modules); members in another format are converted first, exactly, where a conversion
    #: exists, and the output is written in the first of these. None: any format, the members' own
    member_formats: ClassVar[tuple[str, ...] | None] = None
    #: True for a strategy that chooses among others (``auto``): zoo runs each of its :meth:`candidates` on the
    #: members, scores it on the held-out data and writes the best; its ``combine`` is not called
    selects: ClassVar[bool] = False
    #: True: it runs with ``--multi-task`` as merge methods do (members fine-tuned from one base on different
    #: tasks). It gets the members without their heads, ``ctx.tasks`` gives each task's whole member and data,
    #: and it returns the merged backbone without heads, which zoo writes once per task with that task's head
    multi_task: ClassVar[bool] = False

    @dataclass
    class Options:
        pass

    def candidates(self, options: Any, usable: Mapping[str, type]) -> list[tuple[str, dict[str, Any]]]:
        """A selecting strategy's candidates: (strategy name, its options as given on the command line — a
        numeric option may be a sweep, ``0.1:1:0.1`` or ``a,b``), in order. ``usable``: the strategies this run
        can score (those whose base, data and ``--multi-task`` needs are met), by name."""
        raise NotImplementedError

    @classmethod
    def check(cls, options: Any) -> None:
        """Refuse option values the bounds of :func:`zoo.option` cannot express (``raise zoo.BadInput``);
        called before any member is loaded."""

    def combine(self, members: Sequence[Member], options: Any, ctx: Context) -> Combined:
        raise NotImplementedError


@dataclass
class Combined:
    """The result of a strategy.

    ``state_dict`` is the combined model; ``config`` its config.json, in the format of ``like`` (default:
    the first member's config and format). ``metrics`` are held-out metrics of the result if the strategy
    measured them (else zoo measures them when there is eval data); ``report`` is
    JSON-able detail kept in zoo.json (e.g. a greedy soup's history); ``figures``
    maps PNG file names to matplotlib figures shown in the card; ``card_sections``
    are Markdown paragraphs for the model card; ``usage`` replaces the card's "load it
    with timm" paragraph for results that are not one timm architecture.
    """

    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any] | None = None
    metrics: dict[str, float] | None = None
    report: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    card_sections: list[str] = field(default_factory=list)
    #: how to load the result, as the card shows it (Markdown); default: timm, for an ordinary timm model
    usage: str | None = None
    #: filled in by zoo: the strategy's name and options, and the members' provenance
    strategy: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    members: list[dict[str, Any]] = field(default_factory=list)
    #: and the base model's provenance (``--base``), if one was given
    base: dict[str, Any] | None = None
    #: the card's ``base_model_relation`` ("" until set: zoo fills in the strategy's ``relation``, and a
    #: card of a result that never went through zoo says "merge") and ``license`` (the members' when their
    #: cards agree on one)
    relation: str | None = ""
    license: str | None = None
    #: the member the output is shaped like: it is written in that member's format, with its files (a
    #: transformers output copies its ``preprocessor_config.json``); default: the first member
    like: Any = None


@dataclass(frozen=True)
class Task:
    """One task of a ``--multi-task`` run: its member whole (the strategy's members are views without their
    heads), the names of that member's head tensors, and its ``--eval-data NAME=DIR`` (None when not given)."""

    member: Member
    head: tuple[str, ...]
    data: str | None


@dataclass
class Context:
    """What a strategy may use besides its members: device, data, evaluation, progress."""

    device: Any = "cpu"
    eval_data: str | None = None
    train_data: str | None = None
    ood_data: str | None = None
    progress: Progress = field(default_factory=Silent)
    log: Callable[[str], None] = lambda message: None
    seed: int = 0
    batch_size: int = 256
    extra_metrics: dict[str, Callable] = field(default_factory=dict)
    strategy: str = ""
    #: where the strategy comes from (``built-in``, a package and version, ``--plugin MODULE``), for messages
    origin: str = ""
    #: where a training strategy keeps its checkpoints (next to --out; None: keep none), and whether
    #: to continue the one found there (--resume). The only place a strategy may write.
    checkpoint_dir: Any = None
    resume: bool = False
    #: this process's rank and the number of processes (torchrun); rank 0 alone writes
    rank: int = 0
    world_size: int = 1
    #: the base model given with --base (None without one), for strategies that need a start
    base: Member | None = None
    #: ``--multi-task``: each task by its member's name (None otherwise), for strategies that need a task's
    #: head or data (``Strategy.multi_task``; merge methods never look)
    tasks: dict[str, Task] | None = None
    #: resolve one more member from a spec (hf-hub:..., a folder, a file), as -m would
    load_member: Callable[[str], Member] = field(default=lambda spec: _no_resolver(spec), repr=False)
    _models: dict[int, Any] = field(default_factory=dict, repr=False)

    # ---- data -----------------------------------------------------------------------
    #: the run's data by the name ``split`` takes: (what it is, the flag that gives it, the Context field)
    DATA: ClassVar[dict[str, tuple[str, str, str]]] = {
        "train": ("training", "--train-data", "train_data"),
        "eval": ("held-out", "--eval-data", "eval_data"),
        "ood": ("shifted (out-of-distribution)", "--ood-data", "ood_data"),
    }

    def split(self, data: str | os.PathLike, like: Member | dict, *, labels: Sequence[str] | None = None) -> Split:
        """Any data, preprocessed for any model: decoded once per run (``zoo.kit.data.load_split``'s cache).

        ``data``: ``"train"``, ``"eval"`` or ``"ood"``, the run's ``--train-data`` / ``--eval-data`` /
        ``--ood-data`` (refused, naming the flag, when the run has none), or else a folder or timm dataset spec
        (a folder named like one of those three: ``"./train"`` or a ``Path``). ``like``: the member whose timm
        preprocessing the images get, or a timm ``pretrained_cfg`` (a student's, an ensemble's). ``labels``: the
        class names the targets index, in the model's order (default: ``like``'s; required with a config).
        """
        from zoo.kit.data import data_config, load_split

        source = data
        if isinstance(data, str) and data in self.DATA:
            what, flag, attr = self.DATA[data]
            source = getattr(self, attr)
            if not source:
                raise BadInput(f"strategy {self.strategy!r} needs {what} data here: pass {flag} DIR "
                               "(an image folder with one sub-folder per class)")
        if isinstance(like, dict):
            if labels is None:
                raise TypeError("Context.split(data, pretrained_cfg): pass labels= (the model's class names)")
            cfg = like
        else:
            cfg = like.pretrained_cfg
        names, n = (list(labels), len(labels)) if labels is not None else (like.label_names, like.num_classes)
        return load_split(source, data_config(cfg), label_names=names, num_classes=n, progress=self.progress)

    def eval_split(self, like: Member) -> Split:
        """The held-out split, preprocessed the way ``like`` expects: ``split("eval", like)``."""
        return self.split("eval", like)

    def train_split(self, like: Member) -> Split:
        """``split("train", like)``."""
        return self.split("train", like)

    def ood_split(self, like: Member) -> Split:
        """Data under distribution shift (``--ood-data``), for strategies that report robustness:
        ``split("ood", like)``."""
        return self.split("ood", like)

    # ---- models and evaluation ----------------------------------------------------------
    def model(self, state_dict: dict[str, torch.Tensor], like: Member):
        """A timm model of ``like``'s architecture with ``state_dict`` loaded (one instance reused)."""
        model = self._models.get(id(like))
        if model is None:
            model = like.create_model(state_dict)
            self._models[id(like)] = model
        else:
            model.load_state_dict(state_dict)
        return model.to(self.device).eval()

    def evaluate(self, weights: Member | dict[str, torch.Tensor], like: Member | None = None,
                 split: Split | None = None) -> Metrics:
        """Metrics of a member, or of a state dict shaped like ``like``, on ``split`` (default: held-out)."""
        from zoo.kit.measure.metrics import evaluate_model
        from zoo.kit.members.member import Member as _Member

        if isinstance(weights, _Member):
            like, weights = weights, weights.state_dict()
        assert like is not None, "pass like=member for a bare state dict"
        return evaluate_model(self.model(weights, like), split or self.eval_split(like), self.device,
                              extra=self.extra_metrics, batch_size=self.batch_size)

    def evaluate_module(self, model, split: Split) -> Metrics:
        """Metrics of any module that maps a batch of ``split``'s images to logits (a student, a stitched
        network), with the metrics plugins add (``zoo_metrics``): what every strategy reports goes through here."""
        from zoo.kit.measure.metrics import evaluate_model

        return evaluate_model(model, split, self.device, extra=self.extra_metrics, batch_size=self.batch_size)

    def metrics_of(self, logits: torch.Tensor, targets: torch.Tensor) -> Metrics:
        """Metrics of logits someone else computed (an ensemble's mean, cached predictions), plugins' included."""
        from zoo.kit.measure.metrics import metrics_from_logits

        return metrics_from_logits(logits, targets, self.extra_metrics)


def _no_resolver(spec: str):
    raise BadInput(f"{spec}: this context cannot resolve members (run the strategy through zoo.combine)")


def options_of(strategy: type[Strategy]) -> type:
    opts = strategy.Options
    if not dataclasses.is_dataclass(opts):
        raise TypeError(f"strategy {strategy.name!r}: Options must be a dataclass")
    return opts
