"""A Member: one pretrained model, resolved and pinned, with its tensors read lazily.

Nothing here loads a whole state dict unless asked: keys, shapes and dtypes come
from the safetensors header, and tensors are read a few at a time (``zoo.kit._infra.safetensors_reader``,
which also computes each file's sha256 in the same pass).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Iterable

from zoo.kit.strategy.errors import BadInput, short_error
from zoo.kit._infra.safetensors_reader import FLOAT_DTYPES, SafetensorsFile, dtype_name, sha256_of
from zoo.kit.members.timm_format import TimmFormat, classifier_names

if TYPE_CHECKING:  # pragma: no cover
    import torch

SAFE_NAME = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.pth", "model.pth")



@dataclass
class Member:
    """A pretrained member: where it came from, its config (in its format's layout), and lazy access to
    its tensors."""

    name: str
    spec: str
    config: dict[str, Any]
    weight_files: list[Path]
    root: Path | None = None
    repo_id: str | None = None
    revision: str | None = None
    _tensors: dict[str, Any] | None = field(default=None, repr=False)  # only for opted-in pickles
    _hidden: frozenset = field(default=frozenset(), repr=False)  # keys a view leaves out (without())
    #: its layout (``zoo.kit.members.MemberFormat``): timm's unless a format plugin claimed the folder
    format: Any = field(default=None, repr=False)
    #: set on a member converted from another format: its source's preprocessing (timm's pretrained_cfg
    #: keys), which the new format's own reading of the folder would not find
    preprocessing: dict[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.format is None:
            self.format = TimmFormat()

    @classmethod
    def in_memory(cls, name: str, tensors: dict[str, Any], *, config: dict[str, Any], spec: str | None = None,
                  like: Member | None = None) -> Member:
        """A member made by a strategy (e.g. a fine-tuned end) from a state dict it holds, with ``config`` in
        the format of ``like`` (the member it was made from: its format and preprocessing; default timm's)."""
        if like is None:
            return cls(name=name, spec=spec or name, config=config, weight_files=[], _tensors=dict(tensors))
        return cls(name=name, spec=spec or name, config=config, weight_files=[], _tensors=dict(tensors),
                   format=like.format, preprocessing=like.carried_preprocessing())

    # ---- what it is -------------------------------------------------------------------
    def recipe(self) -> dict[str, Any] | None:
        """The member's ``zoo.json`` (how zoo made it: strategy, options, training history), if it is a
        folder that has one; None otherwise (a timm repo zoo did not write, a raw file, a Hub member)."""

        path = self.root / "zoo.json" if self.root is not None else None
        if path is None or not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise BadInput(f"member {self.name}: its zoo.json is not readable JSON ({short_error(e)})") from None

    @property
    def architecture(self) -> str:
        return self.format.architecture(self)

    @property
    def num_classes(self) -> int:
        return self.format.num_classes(self)

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """The preprocessing, as timm's ``pretrained_cfg`` keys, whatever the member's format."""
        cfg = self.format.pretrained_cfg(self)
        return {**cfg, **self.preprocessing} if self.preprocessing else cfg

    @property
    def label_names(self) -> list[str] | None:
        return self.format.label_names(self)

    def carried_preprocessing(self) -> dict[str, Any] | None:
        """What a member made from this one (in memory, or an adapter applied to it) carries of its
        preprocessing: nothing for timm's, whose config holds it; else the ``pretrained_cfg`` keys its format
        read from files beside the config, which the new member's folder does not have."""
        if self.preprocessing:
            return dict(self.preprocessing)
        if self.format.name == "timm":
            return None
        cfg = self.pretrained_cfg
        return {k: cfg[k] for k in PREPROCESSING if k in cfg}

    @property
    def model_args(self) -> dict[str, Any]:
        return dict(self.config.get("model_args", {}))

    # ---- its tensors --------------------------------------------------------------------
    @cached_property
    def _files(self) -> list[SafetensorsFile]:
        out = []
        for path in self.weight_files:
            try:
                out.append(SafetensorsFile(path))
            except Exception as e:
                raise BadInput(
                    f"member {self.name}: {path.name} is not a readable safetensors file ({short_error(e)}); "
                    "it may be truncated or corrupt — download or save it again"
                ) from None
        return out

    @cached_property
    def _header(self) -> dict[str, tuple[Any, tuple[int, ...], str]]:
        """key -> (file, shape, dtype), from the safetensors headers only, in file order."""
        if self._tensors is not None:
            return {k: (None, tuple(v.shape), dtype_name(v)) for k, v in self._tensors.items()
                    if k not in self._hidden}
        return {k: (f, e.shape, e.dtype) for f in self._files for k, e in f.entries.items() if k not in self._hidden}

    def head_keys(self) -> list[str]:
        """The tensors of the classifier (timm's ``pretrained_cfg["classifier"]``: ``head.weight``, ...;
        transformers' ``classifier.weight``, ...): what its format names."""
        heads = self.format.classifier_names(self)
        return [k for k in self.keys() if any(k.startswith(f"{h}.") for h in heads)]

    def without(self, keys: Iterable[str]) -> Member:
        """A view of this member without ``keys`` (e.g. its head): the same files and provenance, fewer
        tensors — what a multi-task merge streams, so that heads of different tasks are never mixed."""
        import dataclasses

        return dataclasses.replace(self, _hidden=self._hidden | frozenset(keys))

    def keys(self) -> list[str]:
        return list(self._header)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._header[key][1]

    def dtype(self, key: str) -> str:
        return self._header[key][2]

    def is_float(self, key: str) -> bool:
        return self._header[key][2] in FLOAT_DTYPES

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.weight_files)

    def read(self, keys: Iterable[str], *, check_finite: bool = True, borrow: bool = False) -> dict[str, torch.Tensor]:
        """Read some tensors. Reads in file order also hash the file on the way (see ``zoo.kit._infra.safetensors_reader``),
        so a full read costs no second pass.

        ``borrow=True`` returns read-only views that are valid until ``release(keys)`` — for
        streaming code that reads each chunk once; otherwise the tensors are the caller's own.

        Floating-point tensors are checked for NaN/Inf: a broken member must stop the
        run before anything is written, naming the member and the tensor.
        """
        keys = list(keys)
        if self._tensors is not None:
            out = {k: self._tensors[k] for k in keys}
        else:
            out = {}
            for f, ks in self._by_file(keys).items():
                try:
                    out.update(f.read(ks, borrow=borrow))
                except OSError as e:
                    raise BadInput(f"member {self.name}: cannot read {f.path.name} ({short_error(e)})") from None
        if check_finite:
            for k in keys:
                self.check_finite(k, out[k])
        return out

    def release(self, keys: Iterable[str]) -> None:
        """Done with borrowed tensors: their pages leave this process's memory."""
        if self._tensors is None:
            for f, ks in self._by_file(keys).items():
                f.release(ks)

    def _by_file(self, keys: Iterable[str]) -> dict[SafetensorsFile, list[str]]:
        out: dict[SafetensorsFile, list[str]] = {}
        for k in keys:
            out.setdefault(self._header[k][0], []).append(k)
        return out

    def check_finite(self, key: str, t) -> None:
        """Raise if ``t`` holds NaN or Inf, naming this member and the tensor."""
        if t.is_floating_point() and not all_finite(t):
            raise BadInput(
                f"member {self.name}: tensor {key!r} contains NaN or Inf; the checkpoint is broken — "
                "retrain it or leave this member out"
            )

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.read(self.keys())

    def check_architecture(self) -> None:
        """Raise unless the installed libraries can build this member's model (timm knows its architecture,
        transformers its class; timm's check imports timm, ~3 s, unless zoo's cache knows)."""
        self.format.check_model(self)

    def create_model(self, state_dict: dict[str, torch.Tensor] | None = None):
        """The member as a module in eval mode holding its weights (or ``state_dict``): a timm model, or
        its format's model answering as timm's do (``zoo.kit.members.MemberFormat``)."""
        return self.format.create_model(self, state_dict)

    # ---- where it came from -------------------------------------------------------------
    def provenance(self) -> dict[str, Any]:
        """What pins this member: source, commit sha and sha256 of every file we used."""
        files = {}
        if self._tensors is None:
            for f in self._files:
                files[f.path.name] = f.sha256()
        else:
            files.update({p.name: sha256_of(p) for p in self.weight_files})
        for p in self._config_files():
            files[p.name] = sha256_of(p)
        out = {
            "name": self.name,
            "spec": self.spec,
            "repo_id": self.repo_id,
            "revision": self.revision,
            "architecture": self.architecture,
            "num_classes": self.num_classes,
            "files": files,
            "license": self.license(),
        }
        if self.format.name != "timm":  # timm's is the default: records of timm members stay as they were
            out["format"] = self.format.name
        lineage = self.lineage()
        if lineage:
            out["lineage"] = lineage
        return out

    def license(self) -> str | None:
        """The ``license`` of the member's model card (its README.md), if it has one."""
        card = self.root / "README.md" if self.root is not None else None
        if card is None or not card.is_file():
            return None
        from huggingface_hub import ModelCard

        try:
            value = ModelCard.load(card).data.license
        except Exception:  # a README that is not a model card: no license to carry
            return None
        return str(value) if value else None

    def lineage(self) -> list[str]:
        """The Hub repos a local zoo output descends from (its zoo.json's members and base, and theirs):
        what the card's ``base_model`` names when this member itself is not on the Hub."""
        if self.repo_id is not None:
            return []
        recipe = self.recipe() or {}
        out: list[str] = []
        for m in ([recipe["base"]] if recipe.get("base") else []) + list(recipe.get("members") or []):
            if isinstance(m, dict):
                out += [m["repo_id"]] if m.get("repo_id") else list(m.get("lineage") or [])
        return list(dict.fromkeys(out))

    def _config_files(self) -> list[Path]:
        if self.root is None:
            return []
        # the config, and what a format reads beside it (transformers' preprocessor_config.json)
        names = ("config.json", *getattr(self.format, "hub_files", ()))
        return [self.root / n for n in names if (self.root / n).is_file()]


#: the pretrained_cfg keys that say how images are prepared
PREPROCESSING = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")


def all_finite(t) -> bool:
    """True when no element is NaN or Inf.

    A NaN or Inf anywhere makes the sum NaN or Inf, so a finite sum proves the tensor finite;
    a plain sum is ~20x cheaper than isfinite().all() (which allocates a mask) or a float64 sum.
    Only a non-finite sum, which may also be an overflow of finite values, needs the exact check.
    """
    import math

    import torch

    acc = torch.float64 if t.dtype == torch.float64 else torch.float32
    if math.isfinite(float(t.sum(dtype=acc))):
        return True
    return bool(torch.isfinite(t).all())


def load_config(path: Path, who: str) -> tuple[dict[str, Any], Any]:
    """A member folder's config.json and the format that claims the folder (``zoo.kit.members.format``)."""
    from zoo.kit.members import format_registry as formats

    if not path.is_file():  # a format whose folders hold another file (a PEFT adapter's adapter_config.json)
        mine = [f for f in formats.formats() if f.claims(path.parent, {})]
        if len(mine) == 1:
            return mine[0].read_config(path.parent, {}, who), mine[0]
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise BadInput(f"{who}: no config.json in {path.parent}; a member folder needs its config.json "
                       "(timm's save_for_hf, transformers' save_pretrained), or give a .safetensors file "
                       "with --arch") from None
    except (OSError, ValueError) as e:
        raise BadInput(f"{who}: {path} is not valid JSON ({short_error(e)})") from None
    if not isinstance(cfg, dict):
        raise BadInput(f"{who}: {path} must hold a JSON object")
    fmt = formats.claim(path.parent, cfg, who)
    return fmt.read_config(path.parent, cfg, who), fmt


def from_folder(folder: Path, *, spec: str, name: str, allow_pickle: bool = False,
                repo_id: str | None = None, revision: str | None = None) -> Member:
    """A member from a folder in timm's Hub layout (config.json + model.safetensors or shards)."""
    folder = Path(folder)
    config, fmt = load_config(folder / "config.json", f"member {name}")
    own = fmt.weight_files(folder, f"member {name}")
    if own is not None:
        files = own
    elif (folder / SAFE_NAME).is_file():
        files = [folder / SAFE_NAME]
    elif (folder / SAFE_INDEX).is_file():
        try:
            index = json.loads((folder / SAFE_INDEX).read_text())
            shards = sorted({str(f) for f in index["weight_map"].values()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise BadInput(f"member {name}: {SAFE_INDEX} is unreadable ({short_error(e)})") from None
        files = [folder / _inside(shard, name) for shard in shards]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise BadInput(f"member {name}: shards listed in {SAFE_INDEX} are missing: {', '.join(missing)}")
    else:
        pickled = [folder / p for p in PICKLE_NAMES if (folder / p).is_file()]
        if pickled:
            return _from_pickle(pickled[0], config, spec=spec, name=name, allow_pickle=allow_pickle,
                                root=folder, repo_id=repo_id, revision=revision, fmt=fmt)
        raise BadInput(f"member {name}: no {SAFE_NAME} in {folder}")
    m = Member(name=name, spec=spec, config=config, weight_files=files, root=folder,
               repo_id=repo_id, revision=revision, format=fmt)
    m.keys()  # read the headers now: a corrupt file fails before any work starts
    fmt.check_member(m)
    return fmt.as_member(m)


def _inside(shard: str, name: str) -> str:
    """A shard file named by a member's index: a path inside the member's folder, never outside it
    (``../other/…`` or an absolute path would read another model's weights). Checked on the names, not
    the resolved paths: the files of a Hub snapshot are links into huggingface_hub's blob store."""
    parts = PurePosixPath(shard.replace("\\", "/")).parts
    if not parts or parts[0] == "/" or ".." in parts or ":" in parts[0]:
        raise BadInput(f"member {name}: {SAFE_INDEX} names a shard outside the member's folder ({shard!r}); "
                       "a sharded checkpoint's shards lie beside its index")
    return shard


def from_file(path: Path, *, spec: str, name: str, arch: str | None, allow_pickle: bool = False) -> Member:
    """A member from a bare weights file, with ``arch`` or a config.json beside it."""
    path = Path(path)
    fmt = None
    if (path.parent / "config.json").is_file() and arch is None:
        config, fmt = load_config(path.parent / "config.json", f"member {name}")
    elif arch:
        config = {"architecture": arch}
    else:
        raise BadInput(f"member {name}: {path.name} is a bare weights file; say which timm architecture it "
                       "is with --arch NAME (or put timm's config.json beside it)")
    if path.suffix != ".safetensors":
        return _from_pickle(path, config, spec=spec, name=name, allow_pickle=allow_pickle, root=None, fmt=fmt)
    m = Member(name=name, spec=spec, config=config, weight_files=[path], root=None, format=fmt)
    m.keys()
    if "num_classes" not in config and m.format.name == "timm":
        config["num_classes"] = _infer_num_classes(m)
    return m


def _from_pickle(path: Path, config: dict, *, spec: str, name: str, allow_pickle: bool, root: Path | None,
                 repo_id: str | None = None, revision: str | None = None, fmt: Any = None) -> Member:
    if not allow_pickle:
        raise BadInput(
            f"member {name}: {path.name} is a pickled checkpoint, which can run arbitrary code when loaded; "
            "zoo refuses it unless you pass --allow-pickle (it then loads with weights_only=True), "
            "or convert it to safetensors"
        )
    import torch

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BadInput(f"member {name}: cannot load {path.name} with weights_only=True ({short_error(e)})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(hasattr(v, "shape") for v in sd.values()):
        raise BadInput(f"member {name}: {path.name} does not hold a state dict of tensors")
    m = Member(name=name, spec=spec, config=config, weight_files=[path], root=root,
               repo_id=repo_id, revision=revision, _tensors=dict(sd), format=fmt)
    if "num_classes" not in config and m.format.name == "timm":
        config["num_classes"] = _infer_num_classes(m)
    return m


def _infer_num_classes(m: Member) -> int:
    """The class count of a member without a config: the rows of its classifier's weight.

    Which tensor is the classifier comes from timm's pretrained cfg for the architecture; the count
    then comes from the safetensors header (or the pickle's tensor). No model is built: a random init
    of a ViT-L costs ~6 s and 1.2 GiB per member, more than reading its weights.
    """
    for h in classifier_names(m.architecture, m.name):
        if f"{h}.weight" in m._header:
            return int(m.shape(f"{h}.weight")[0])
    return 0
