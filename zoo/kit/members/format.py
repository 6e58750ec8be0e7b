"""Member formats: how one layout of a model repo is recognised, read, run and written.

A format is a :class:`MemberFormat` subclass that a plugin returns from the ``zoo_member_formats`` hook;
timm's layout (``TimmFormat``) and transformers' image classifiers are the built-in ones. zoo asks every
format whether a folder is its own (:meth:`MemberFormat.claims`, from ``config.json`` and the files beside
it), then asks the one that claims it for everything that depends on the layout: the classes, the
preprocessing, the classifier's tensors, the torch module and how to write an output in that layout.
Tensors are read by the :class:`zoo.kit.members.Member` itself, lazily, whatever the format: every
per-tensor merge works on a new format without code of its own.

The formats in use are the host's (``zoo.kit.members.formats``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from zoo.kit.members.member import Member


class MemberFormat:
    """One layout of a model repo. Subclass it, set ``name``, and implement the methods that raise
    ``NotImplementedError``; the others have defaults that fit most formats.

    The module :meth:`create_model` returns answers as timm models do, because zoo's strategies run
    every member the same way: ``model(images)`` gives logits (N, C); ``forward_features(images)`` then
    ``forward_head(features, pre_logits=True)`` the pooled features the classifier reads;
    ``get_classifier()`` the last linear layer; ``reset_classifier(n)`` a new head of ``n`` classes;
    ``num_classes``, ``num_features`` and ``pretrained_cfg`` as timm has them. Its ``state_dict()`` keys are the
    member's own tensor names.
    """

    #: what ``--format`` takes and what zoo.json and messages call it
    name: str = ""
    #: the model card's ``library_name`` for an output written in this format
    library_name: str = ""
    #: more files of a Hub repo to download besides config.json, the weights, README.md and zoo.json
    hub_files: tuple[str, ...] = ()
    #: True for a format whose members are differences to a base (LoRA adapters): zoo applies each to its
    #: base (:meth:`base_of`, ``--base``) with :meth:`apply` before a strategy sees it
    difference: bool = False
    #: for a difference format: the ``-o NAME=VALUE`` options of an output written in it (``--format adapter``'s
    #: ``rank`` and ``energy``), taken out of the strategy's options and given to :meth:`output_options`
    output_option_names: tuple[str, ...] = ()

    # ---- recognising and reading -----------------------------------------------------------
    def claims(self, folder: Path, config: dict[str, Any]) -> bool:
        """Whether ``folder`` (holding ``config.json`` = ``config``) is in this format."""
        raise NotImplementedError

    def read_config(self, folder: Path, config: dict[str, Any], who: str) -> dict[str, Any]:
        """The config the member keeps (checked and completed); raise :class:`zoo.BadInput` naming ``who``
        for a repo of this format that zoo cannot use (another task, remote code)."""
        return config

    def weight_files(self, folder: Path, who: str) -> list[Path] | None:
        """The folder's safetensors files, for a format that names them otherwise than ``model.safetensors``
        (or its shards); None (default): zoo looks for those."""
        return None

    def check_member(self, member: Member) -> None:
        """Checks that need the tensors' header (e.g. the labels against the classifier's rows)."""

    def as_member(self, member: Member) -> Member:
        """The member as zoo works with it, once checked: itself (default), or a view of it under other
        names (``zoo.kit.members.derived``; transformers' headless encoder under its classifier's names)."""
        return member

    def check_model(self, member: Member) -> None:
        """Raise :class:`zoo.BadInput` unless the installed libraries can build this member's model."""

    def architecture(self, member: Member) -> str:
        """What kind of model it is, as messages and zoo.json name it (timm's name, transformers' class)."""
        raise NotImplementedError

    def family(self, member: Member) -> str | None:
        """The model family, for conversion between formats (``vit``, ``resnet``, ...); None when unknown."""
        return None

    def num_classes(self, member: Member) -> int:
        raise NotImplementedError

    def label_names(self, member: Member) -> list[str] | None:
        return None

    def pretrained_cfg(self, member: Member) -> dict[str, Any]:
        """The preprocessing as timm's ``pretrained_cfg`` keys (``input_size``, ``mean``, ``std``,
        ``interpolation``, ``crop_pct``, ``crop_mode``): what ``zoo.kit.data.data_config`` reads to
        build the evaluation transform."""
        raise NotImplementedError

    def classifier_names(self, member: Member) -> list[str]:
        """The module names of the classifier (``["head"]``, ``["classifier"]``): its tensors are the
        head a multi-task merge keeps apart and a fine-tune replaces."""
        raise NotImplementedError

    def file_names(self, member: Member) -> dict[str, str]:
        """The member's tensor names by the names its model gives those parameters, where the two differ
        (transformers 5 renames some modules when it loads); empty (default): they are the same. What a
        PEFT adapter, saved under the model's names, is matched against the member's files by."""
        return {}

    def create_model(self, member: Member, state_dict: dict[str, torch.Tensor] | None = None):
        """The member as a torch module in eval mode (see the class docstring), holding ``state_dict``
        (default: the member's own weights)."""
        raise NotImplementedError

    def base_of(self, member: Member) -> str | None:
        """For a member that is a difference to a base (a LoRA adapter): the base's spec its files name, or
        None when they name none (``--base`` then says which)."""
        return None

    def apply(self, member: Member, base: Member) -> Member | None:
        """A member that is a difference to a base, applied to ``base``: a full member in the base's format,
        computed a few tensors at a time (``zoo.kit.members.derived``)."""
        raise NotImplementedError

    def convert(self, member: Member, to: MemberFormat) -> Member | None:
        """``member`` converted exactly into format ``to``, where this format is the member's or ``to``: a
        member computing the same function (``zoo.kit.members.derived``: tensors made a few at a time).
        None when this format has no such conversion; raise :class:`zoo.BadInput` naming the family when
        the conversion exists for the formats but not for this member's family."""
        return None

    # ---- writing ---------------------------------------------------------------------------------
    def output_config(self, like: Member, *, label_names: list[str]) -> dict[str, Any]:
        """The config of a model shaped like ``like`` with a new classifier for ``label_names``
        (a fine-tune on new classes, a student)."""
        raise NotImplementedError

    def write_config(self, folder: Path, config: dict[str, Any], like: Member | None) -> None:
        """Write what an output in this format holds besides its weights, card and zoo.json: its
        ``config.json`` (default) and any file a loader of this format reads (``like``: the member the
        output is shaped like, whose files may be copied)."""
        (folder / "config.json").write_text(json.dumps(config, indent=2))

    def output_options(self, raw: dict[str, Any], *, base: str | None) -> dict[str, Any]:
        """A difference format's output options (``output_option_names``, as given), checked before any member
        is read, with the ``--base`` spec (None without one); returns them parsed, as zoo.json records them."""
        return {}

    def check_output(self, members: list[Member]) -> None:
        """Raise :class:`zoo.BadInput` unless ``members`` (resolved: differences applied to the base) can be
        written in this difference format; called before the strategy runs."""

    def from_full(self, result: Any, base: Member, options: dict[str, Any], ctx: Any) -> Any:
        """A difference format's output: the strategy's ``result`` (a ``zoo.Combined`` whose state dict is the
        full model, shaped like ``base``) as a difference to ``base`` — a ``Combined`` with this format's tensors
        and config (``like``: anything whose ``format`` is this one), its card sections and report; ``ctx`` the
        run's ``zoo.Context`` (data, device). zoo writes it as any result."""
        raise NotImplementedError

    def usage(self, name: str) -> str | None:
        """How to load an output of this format, as the model card shows it (Markdown); None: timm's."""
        return None

    def __repr__(self) -> str:
        return f"<member format {self.name}>"
