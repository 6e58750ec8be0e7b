"""transformers' image classifiers as members: ``config.json`` with a ``model_type`` and ``architectures``
(``ViTForImageClassification``, ``ConvNextForImageClassification``, ...), ``model.safetensors`` and the
image processor's ``preprocessor_config.json`` — what ``save_pretrained`` writes and the Hub's
image-classification models hold.

Nothing from a repo is executed: a config that maps to the repo's own code (``auto_map``, a
``model_type`` transformers does not know) is refused, as is a model of another task. The model is built
from the config by transformers' own class (``faced``: it answers as a timm model does); preprocessing
is read through transformers' image processor and handed to zoo as timm's ``pretrained_cfg`` keys.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zoo


if TYPE_CHECKING:  # pragma: no cover
    from zoo.kit.members import Member

PREPROCESSOR = "preprocessor_config.json"
#: PIL's resampling filters (what image processors store) by timm's interpolation names
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _image_classifiers() -> dict[str, str]:
    """transformers' image-classification classes by ``model_type`` (its auto mapping)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES as names

    return dict(names)


class TransformersFormat(zoo.MemberFormat):
    """transformers' ``*ForImageClassification`` repos."""

    name = "transformers"
    library_name = "transformers"
    hub_files = (PREPROCESSOR,)

    def claims(self, folder: Path, config: dict[str, Any]) -> bool:
        # timm's own configs (and transformers' TimmWrapper ones) name an "architecture": timm's
        return "architecture" not in config and bool(config.get("model_type") or config.get("architectures"))

    def read_config(self, folder: Path, config: dict[str, Any], who: str) -> dict[str, Any]:
        try:
            import transformers
        except ImportError:
            raise zoo.BadInput(f"{who}: a transformers repo, and transformers is not installed: "
                               "pip install 'zoo[transformers]' (or transformers) to read it") from None
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        model_type = config.get("model_type")
        archs = config.get("architectures") or []
        what = f"{archs[0] if archs else 'a model'} (model_type {model_type!r})"
        if config.get("auto_map") or (model_type and model_type not in CONFIG_MAPPING_NAMES):
            raise zoo.BadInput(
                f"{who}: {what} needs the repo's own code (trust_remote_code"
                + ("" if config.get("auto_map") else f"; transformers {transformers.__version__} does not know it")
                + "); zoo never runs code from a repo — use a model transformers implements, or a timm model")
        classes = _image_classifiers()
        if archs and _headless(config) and model_type in classes:
            return config  # an image classifier's encoder without its head (a base): see as_member
        if not archs or archs[0] not in classes.values():
            raise zoo.BadInput(
                f"{who}: {what} is not an image classifier; zoo combines image classifiers: transformers' "
                "*ForImageClassification (ViT, ConvNeXt, Swin, ResNet, ...) or timm models")
        if getattr(transformers, archs[0], None) is None:
            raise zoo.BadInput(f"{who}: transformers {transformers.__version__} has no {archs[0]}; upgrade it")
        return config

    def as_member(self, member: Member) -> Member:
        """A headless encoder (``ViTModel``, the base of ``google/vit-base-patch16-224-in21k``) as its image
        classifier without a classifier (``num_labels`` 0), its tensors under the classifier model's names
        (``vit.encoder…``), so that they line up with its fine-tunes'; the pooler, which the classifier
        models do not have, is left out."""
        if not _headless(member.config):
            return member
        from zoo.kit.members import derived

        import transformers

        cls_name = _image_classifiers()[member.config["model_type"]]
        prefix = getattr(transformers, cls_name).base_model_prefix
        rules = [(f"{prefix}.{k}", (k,), None) for k in member.keys() if not k.startswith("pooler.")]
        config = {**member.config, "architectures": [cls_name], "id2label": {}, "label2id": {}, "num_labels": 0}
        return derived(member, rules, config=config, format=self,
                       note={"read_as": f"{cls_name} without a classifier"})

    def check_member(self, member: Member) -> None:
        if _headless(member.config):
            return  # an encoder: no classifier to check
        head = [k for k in member.keys() if k.startswith(f"{self._classifier_path(member)}.") and
                k.endswith("weight") and len(member.shape(k)) == 2]
        if not head:
            raise zoo.BadInput(f"member {member.name}: {self.architecture(member)} has no classifier tensors "
                               "(classifier.*) in its weights; zoo reads image classifiers whose head is "
                               "called so (ViT, ConvNeXt, Swin, ResNet, ...)")
        labels = self.num_classes(member)
        if head and member.shape(head[-1])[0] != labels:
            raise zoo.BadInput(
                f"member {member.name}: config.json names {labels} labels (id2label) but the classifier "
                f"{head[-1]} has {member.shape(head[-1])[0]} rows; fix id2label/num_labels in its config.json")

    def check_model(self, member: Member) -> None:
        pass  # read_config checked that transformers has the class

    def architecture(self, member: Member) -> str:
        return member.config["architectures"][0]

    def family(self, member: Member) -> str | None:
        return str(member.config.get("model_type"))

    def num_classes(self, member: Member) -> int:
        id2label = member.config.get("id2label")
        if id2label or id2label == {} and member.config.get("num_labels") == 0:
            return len(id2label)
        return int(member.config.get("num_labels", 2))  # transformers' default

    def label_names(self, member: Member) -> list[str] | None:
        id2label = member.config.get("id2label") or {}
        names = [str(id2label[k]) for k in sorted(id2label, key=int)]
        # transformers' placeholders (LABEL_0, LABEL_1, ...) name no class
        if not names or names == [f"LABEL_{i}" for i in range(len(names))]:
            return None
        return names

    def pretrained_cfg(self, member: Member) -> dict[str, Any]:
        cfg = preprocessing(member.root, member.config)
        cfg.update(num_classes=self.num_classes(member), classifier=self._classifier_path(member))
        if self.label_names(member):
            cfg["label_names"] = self.label_names(member)
        return cfg

    def classifier_names(self, member: Member) -> list[str]:
        return [self._classifier_path(member)]

    def _classifier_path(self, member: Member) -> str:
        return classifier_path(member.config)

    def create_model(self, member: Member, state_dict=None):
        from transformers.utils import logging as hf_logging

        from zoo.plugins.formats.face import faced

        cls = faced(_model_class(member.config), classifier_path(member.config))
        hf_logging.disable_progress_bar()  # zoo shows its own progress
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the load report is checked here, below
        try:
            # transformers' own loading: it renames the files' tensors to its modules' names where it must
            model, info = cls.from_pretrained(None, config=hf_config(member.config),
                                              state_dict=dict(state_dict or member.state_dict()),
                                              output_loading_info=True)
        finally:
            hf_logging.set_verbosity(level)
        missing, unexpected = info.get("missing_keys", []), info.get("unexpected_keys", [])
        mismatched = info.get("mismatched_keys", [])
        if missing or unexpected or mismatched:
            raise zoo.BadInput(f"member {member.name}: weights do not fit transformers' {cls.__name__} built "
                               f"from its config.json (missing {sorted(missing)[:3]}, unexpected "
                               f"{sorted(unexpected)[:3]}, other shapes {list(mismatched)[:3]})")
        model.learn_file_names()
        model.pretrained_cfg = self.pretrained_cfg(member)
        return model.eval()

    def convert(self, member: Member, to: zoo.MemberFormat) -> Member | None:
        """timm ↔ transformers, exactly, for the families of ``zoo.plugins.formats.convert``."""
        from zoo.kit.members import derived
        from zoo.plugins.formats import convert

        pair = (member.format.name, to.name)
        if pair not in (("timm", self.name), (self.name, "timm")):
            return None
        shapes = {k: member.shape(k) for k in member.keys()}
        try:
            if pair[0] == "timm":
                plan = convert.to_transformers(member.config, shapes)
            else:
                plan = convert.to_timm(member.config, shapes)
        except convert.NoConversion as e:
            raise zoo.BadInput(f"member {member.name}: {e}; give members in one format, or members of a family "
                               "with a conversion") from None
        from zoo.kit.members import PREPROCESSING

        seen = member.pretrained_cfg
        keep = {k: seen[k] for k in PREPROCESSING if k in seen}
        config = dict(plan.config)
        names = member.label_names  # as the member's own format reads them
        if to.name == "timm":  # timm reads its preprocessing (and class names) from the config
            config["pretrained_cfg"] = {**config.get("pretrained_cfg", {}), **keep}
            config["pretrained_cfg"].pop("label_names", None)
            if names:
                config["pretrained_cfg"]["label_names"] = list(names)
        elif names:
            config.update(id2label={str(i): n for i, n in enumerate(names)},
                          label2id={n: i for i, n in enumerate(names)})
        return derived(member, [(r.target, r.sources, r.fn) for r in plan.rules], config=config, format=to,
                       preprocessing=keep if to.name != "timm" else None,
                       note={"converted_to": to.name})

    def file_names(self, member: Member) -> dict[str, str]:
        """Built on the meta device (no weights, no init): transformers' renaming of this class's modules."""
        return {k: v for k, v in _file_names(json.dumps(member.config, sort_keys=True)).items() if k != v}

    def output_config(self, like: Member, *, label_names: list[str]) -> dict[str, Any]:
        return {**like.config, "id2label": {str(i): n for i, n in enumerate(label_names)},
                "label2id": {n: i for i, n in enumerate(label_names)}}

    def write_config(self, folder: Path, config: dict[str, Any], like: Member | None) -> None:
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        source = like.root / PREPROCESSOR if like is not None and like.root is not None else None
        if source is not None and source.is_file():
            (folder / PREPROCESSOR).write_text(source.read_text())
        else:
            cfg = like.pretrained_cfg if like is not None else {}
            (folder / PREPROCESSOR).write_text(json.dumps(processor_config(cfg), indent=2, sort_keys=True) + "\n")

    def usage(self, name: str) -> str | None:
        return f"""It is an ordinary transformers image classifier:

```python
from transformers import pipeline
classify = pipeline("image-classification", model="ORG/{name}")  # or the folder's path
```"""


def classifier_path(config: dict[str, Any]) -> str:
    """The classifier module's name: transformers' image classifiers call it ``classifier`` (``check_member``
    refuses a member without one)."""
    return "classifier"


@lru_cache(maxsize=16)
def _file_names(config_json: str) -> dict[str, str]:
    import torch

    from zoo.plugins.formats.face import faced

    config = json.loads(config_json)
    with torch.device("meta"):
        model = faced(_model_class(config), classifier_path(config))(hf_config(config))
    model.learn_file_names()
    return dict(model._file_names)


def _headless(config: dict[str, Any]) -> bool:
    """Whether ``config`` is an image classifier's encoder alone (``ViTModel``, ``ConvNextModel``, ...)."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    archs = config.get("architectures") or []
    return bool(archs) and archs[0] == MODEL_MAPPING_NAMES.get(config.get("model_type"))


def _model_class(config: dict[str, Any]) -> type:
    import transformers

    return getattr(transformers, config["architectures"][0])


def hf_config(config: dict[str, Any]):
    """The transformers config object of a member's config.json."""
    from transformers import AutoConfig

    rest = {k: v for k, v in config.items() if k != "model_type"}
    return AutoConfig.for_model(config["model_type"], **rest)


def preprocessing(folder: Path | None, config: dict[str, Any]) -> dict[str, Any]:
    """A member's image processor (``preprocessor_config.json``, read by transformers' own class) as timm's
    ``pretrained_cfg`` keys; without one, the model's image size and ImageNet's mean and std (what
    transformers' processors default to)."""
    path = folder / PREPROCESSOR if folder is not None else None
    size = config.get("image_size", 224)
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    channels = int(config.get("num_channels", 3))
    if path is None or not path.is_file():
        return {"input_size": (channels, *size), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "squash"}
    stat = path.stat()  # read once per file version: a member's preprocessing is asked for often
    return dict(_processor_cfg(str(folder), stat.st_mtime_ns, stat.st_size, channels, size))


@lru_cache(maxsize=64)
def _processor_cfg(folder: str, mtime_ns: int, file_size: int, channels: int, size: tuple) -> dict[str, Any]:
    """``preprocessing`` of one version of a folder's preprocessor_config.json (see there)."""
    from transformers import AutoImageProcessor
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # only the values are read here: its notes on backends are not for the user
    try:
        proc = AutoImageProcessor.from_pretrained(folder)
    except Exception as e:
        raise zoo.BadInput(f"{Path(folder) / PREPROCESSOR}: transformers cannot read it ({type(e).__name__}: {e})") from None
    finally:
        hf_logging.set_verbosity(level)
    resize = dict(getattr(proc, "size", None) or {})
    crop = dict(getattr(proc, "crop_size", None) or {}) if getattr(proc, "do_center_crop", False) else {}
    out: dict[str, Any] = {"mean": tuple(proc.image_mean), "std": tuple(proc.image_std),
                           "interpolation": _RESAMPLE.get(int(getattr(proc, "resample", 2)), "bilinear")}
    if "height" in resize and not crop:  # resized to a fixed size, no crop: timm's "squash"
        out.update(input_size=(channels, resize["height"], resize["width"]), crop_pct=1.0, crop_mode="squash")
    elif "shortest_edge" in resize and getattr(proc, "crop_pct", None) is not None:
        # ConvNeXt's processor: below 384 px, the shortest edge to edge/crop_pct, then a center crop
        edge = int(resize["shortest_edge"])
        if edge < 384:
            out.update(input_size=(channels, edge, edge), crop_pct=float(proc.crop_pct), crop_mode="center")
        else:
            out.update(input_size=(channels, edge, edge), crop_pct=1.0, crop_mode="squash")
    elif crop:  # resize, then a center crop of crop_size
        edge = resize.get("shortest_edge") or resize.get("height")
        out.update(input_size=(channels, crop["height"], crop["width"]),
                   crop_pct=float(crop["height"]) / float(edge or crop["height"]), crop_mode="center")
    else:
        out.update(input_size=(channels, *size), crop_pct=1.0, crop_mode="squash")
    return out


def processor_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """An image processor's ``preprocessor_config.json`` for timm's eval transform ``cfg`` (a converted
    timm member): a ViT processor for a plain resize, ConvNeXt's for a resize-and-center-crop."""
    from zoo.kit.data import data_config

    cfg = data_config(cfg)
    _, h, w = cfg["input_size"]
    resample = {v: k for k, v in _RESAMPLE.items()}.get(cfg.get("interpolation", "bilinear"), 2)
    common = {"do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
              "image_mean": list(cfg["mean"]), "image_std": list(cfg["std"]), "resample": resample,
              "do_resize": True}
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    if cfg.get("crop_mode", "center") == "center" and crop_pct < 1.0 and h == w and h < 384:
        return {"image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": h},
                "crop_pct": crop_pct, **common}
    return {"image_processor_type": "ViTImageProcessor", "size": {"height": h, "width": w}, **common}
