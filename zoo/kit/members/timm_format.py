"""timm's layout as a member format: ``config.json`` naming an ``architecture`` (timm's ``save_for_hf``,
or transformers' ``TimmWrapper`` configs, which carry it too) beside ``model.safetensors``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.kit.members.format import MemberFormat
from zoo.kit.strategy.errors import BadInput

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from zoo.kit.members.member import Member


class TimmFormat(MemberFormat):
    """timm's Hub layout; the model is ``timm.create_model(architecture, **model_args)``."""

    name = "timm"
    library_name = "timm"

    def claims(self, folder: Path, config: dict[str, Any]) -> bool:
        return "architecture" in config or bool((config.get("pretrained_cfg") or {}).get("architecture"))

    def read_config(self, folder: Path, config: dict[str, Any], who: str) -> dict[str, Any]:
        if "architecture" not in config:
            config["architecture"] = config["pretrained_cfg"]["architecture"]
        return config

    def check_model(self, member: Member) -> None:
        check_architecture(member.config["architecture"], member.name)

    def architecture(self, member: Member) -> str:
        return member.config["architecture"]

    def family(self, member: Member) -> str | None:
        return member.config["architecture"].split("_")[0]

    def num_classes(self, member: Member) -> int:
        return int(member.config.get("num_classes", self.pretrained_cfg(member).get("num_classes", 0)))

    def label_names(self, member: Member) -> list[str] | None:
        names = member.config.get("label_names") or self.pretrained_cfg(member).get("label_names")
        if isinstance(names, dict):
            names = [names[k] for k in sorted(names, key=int)]
        return list(names) if names else None

    def pretrained_cfg(self, member: Member) -> dict[str, Any]:
        return dict(member.config.get("pretrained_cfg", {}))

    def classifier_names(self, member: Member) -> list[str]:
        return classifier_names(member.config["architecture"], member.name)

    def create_model(self, member: Member, state_dict: dict[str, torch.Tensor] | None = None):
        import timm

        arch = member.config["architecture"]
        check_architecture(arch, member.name, trust_cache=False)  # timm is imported now anyway
        args = {**member.model_args, "num_classes": member.num_classes}
        model = timm.create_model(arch, pretrained=False, **args)
        cfg = dict(model.pretrained_cfg)
        cfg.update(self.pretrained_cfg(member))
        model.pretrained_cfg = cfg
        missing, unexpected = model.load_state_dict(state_dict or member.state_dict(), strict=False)
        if missing or unexpected:
            raise BadInput(
                f"member {member.name}: weights do not fit timm's {arch} "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]}); check --arch and num_classes"
            )
        return model.eval()

    def output_config(self, like: Member, *, label_names: list[str]) -> dict[str, Any]:
        """``like``'s config relabelled for ``label_names`` everywhere timm reads a class count."""
        classes = list(label_names)
        config = dict(like.config)
        config["num_classes"] = len(classes)
        config["label_names"] = classes
        if "num_classes" in config.get("model_args", {}):
            # timm's loader passes model_args to the constructor: a stale count there makes it build the old
            # head and silently drop the trained one when the shapes differ
            config["model_args"] = {**config["model_args"], "num_classes": len(classes)}
        pretrained_cfg = {**like.pretrained_cfg, "num_classes": len(classes), "label_names": classes}
        if classes != like.label_names:
            pretrained_cfg.pop("label_descriptions", None)  # they describe the member's classes, not these
        config["pretrained_cfg"] = pretrained_cfg
        return config


def classifier_names(arch: str, who: str) -> list[str]:
    """The names of ``arch``'s classifier modules in timm (``["head"]``, ``["head", "head_dist"]``, or
    none for a headless encoder), remembered per timm version so a known answer does not import timm."""
    from zoo.kit._infra import timm_names

    known = timm_names.known_timm_classifiers().get(arch)
    if known is not None:
        return known
    check_architecture(arch, who)
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)  # the registry's copy: what create_model(arch) would attach
    if cfg is not None:
        heads = _names(cfg.classifier)
    else:  # an architecture registered without a pretrained cfg: build it, but on the meta device
        heads = _names(_meta_model(arch).pretrained_cfg.get("classifier", "head"))
    timm_names.remember_timm_classifiers(arch, heads)
    return heads


def _meta_model(arch: str):
    """timm's ``arch`` built on the meta device: its modules and config, no memory, no random init."""
    import timm
    import torch

    with torch.device("meta"):
        return timm.create_model(arch, pretrained=False)


def _names(classifier) -> list[str]:
    if not classifier:
        return []
    return [classifier] if isinstance(classifier, str) else list(classifier)


def check_architecture(arch: str, who: str, *, trust_cache: bool = True) -> None:
    from zoo.kit._infra import timm_names

    if trust_cache and arch in timm_names.known_timm_models():
        return
    import timm

    timm_names.remember_timm_models(timm.list_models())
    if not timm.is_model(arch):
        raise BadInput(f"member {who}: timm does not know the architecture {arch!r} "
                       f"(timm {timm.__version__}; see timm.list_models())")
