"""PEFT's LoRA adapters as members: ``adapter_config.json`` + ``adapter_model.safetensors``, a difference to a
base model (timm's or transformers'), applied to it tensor by tensor.

The config is read by PEFT's own ``PeftConfig``. A LoRA module ``m`` of the base holds ``lora_A`` (r × in) and
``lora_B`` (out × r); the member's ``m.weight`` is ``W + scale · (B @ A)`` with ``scale = alpha / r`` (``alpha /
√r`` with rsLoRA), ``r`` read from ``A``'s rows and ``alpha`` from the config (its ``alpha_pattern`` where one
names the module) — PEFT's ``merge_and_unload`` arithmetic, in its order. Tensors the adapter saves whole
(``modules_to_save``: a new head) replace the base's; every other tensor is the base's. Nothing is computed
before the merge engine asks for it, a few tensors at a time (``zoo.kit.members.derived``), so an adapter
merge keeps the engine's memory bound. Adapters of any rank and of any target modules merge: a module an
adapter does not touch is the base's (a delta of zero).

Written (``--format adapter``, ``adapter_output``): a merge as one LoRA adapter of the base, by an SVD of each
merged delta; this format's ``output_options``, ``check_output`` and ``from_full`` lead there.

Merged here: LoRA on linear layers (and 1×1 convolutions), with or without rsLoRA, ``alpha_pattern`` and
``rank_pattern``. Refused, naming what: other PEFT methods (prompt tuning, IA³, LoHa, ...), DoRA, LoRA on
embeddings or larger convolutions, trained LoRA biases.
"""

from __future__ import annotations

import json
import re
import shutil
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zoo

if TYPE_CHECKING:  # pragma: no cover
    from zoo.kit.members import Member

from zoo.plugins.formats.peft_files import CONFIG, PREFIX, WEIGHTS  # noqa: F401  (their names, as before)


def plus_delta(weight, lora_a, lora_b, *, scale: float):
    """``W + scale · (B @ A)``, as PEFT's merge computes it (the product in the adapter's dtype, then scaled and
    added in the weight's); a 1×1 convolution's weight keeps its two trailing unit dimensions."""
    delta = (lora_b.flatten(1) @ lora_a.flatten(1)).mul_(scale)  # in place: one temporary of the weight's size
    delta = delta.reshape(weight.shape).to(weight.dtype)
    return delta.add_(weight)  # W + δ and δ + W are the same bits; the weight itself is left as read


class AdapterFormat(zoo.MemberFormat):
    """PEFT LoRA adapters (see the module docstring)."""

    name = "adapter"
    library_name = "peft"
    hub_files = (CONFIG,)
    difference = True
    output_option_names = ("rank", "energy")

    def claims(self, folder: Path, config: dict[str, Any]) -> bool:
        return not config and (folder / CONFIG).is_file()

    def read_config(self, folder: Path, config: dict[str, Any], who: str) -> dict[str, Any]:
        try:
            from peft import PeftConfig
        except ImportError:
            raise zoo.BadInput(f"{who}: a PEFT adapter, and peft is not installed: pip install 'zoo[peft]' "
                               "(or peft) to read it") from None
        try:
            parsed = PeftConfig.from_pretrained(str(folder))
        except Exception as e:
            raise zoo.BadInput(f"{who}: {folder / CONFIG} is not a config PEFT reads ({type(e).__name__}: {e})") from None
        kind = str(getattr(parsed.peft_type, "value", parsed.peft_type))
        if kind != "LORA":
            raise zoo.BadInput(f"{who}: a {kind} adapter; zoo merges LoRA adapters (peft_type LORA) only")
        if getattr(parsed, "use_dora", False):
            raise zoo.BadInput(f"{who}: a DoRA adapter (use_dora); its magnitude vectors are not merged here — "
                               "give LoRA adapters, or merge it into its base with PEFT first")
        if getattr(parsed, "bias", "none") != "none" or getattr(parsed, "lora_bias", False):
            raise zoo.BadInput(f"{who}: its LoRA trains biases (bias={parsed.bias!r}); zoo merges adapters whose "
                               "biases are the base's (bias='none')")
        if getattr(parsed, "fan_in_fan_out", False):
            raise zoo.BadInput(f"{who}: fan_in_fan_out adapters (GPT-2's Conv1D layers) are not image classifiers' "
                               "adapters; zoo does not merge them")
        return json.loads((folder / CONFIG).read_text())

    def weight_files(self, folder: Path, who: str) -> list[Path]:
        if not (folder / WEIGHTS).is_file():
            raise zoo.BadInput(f"{who}: a PEFT adapter without its weights: no {WEIGHTS} beside {CONFIG} "
                               "(save it with PeftModel.save_pretrained)")
        return [folder / WEIGHTS]

    # ---- writing a merge as an adapter (--format adapter): zoo.plugins.formats.adapter_output ---------------
    def output_options(self, raw: dict[str, Any], *, base: str | None) -> dict[str, Any]:
        from zoo.plugins.formats import adapter_output

        if not base:
            raise zoo.BadInput("--format adapter writes the merge as a difference to the base: pass --base SPEC, "
                               "the model the adapters were trained on")
        return adapter_output.output_options(raw)

    def check_output(self, members: list[Member]) -> None:
        from zoo.plugins.formats import adapter_output

        if not any(adapter_output.is_adapter(m) for m in members):
            raise zoo.BadInput("--format adapter merges LoRA adapters into one adapter, and no member is an "
                               f"adapter ({', '.join(m.name for m in members)} are full models): leave --format "
                               "out to write the full merged model")

    def from_full(self, result, base: Member, options: dict[str, Any], ctx):
        from zoo.plugins.formats import adapter_output

        return adapter_output.from_full(result, base, options, ctx, fmt=self)

    def write_config(self, folder: Path, config: dict[str, Any], like) -> None:
        """An adapter output (``--format adapter``, ``adapter_output``): ``adapter_config.json``, and the weights
        under PEFT's name (``adapter_model.safetensors``), with no ``config.json`` (a folder with one is a model)."""
        (folder / CONFIG).write_text(json.dumps(config, indent=2))
        written = folder / "model.safetensors"
        if not written.is_file():
            raise zoo.BadInput(f"a LoRA adapter is one {WEIGHTS}: leave --max-shard-size out with --format adapter")
        written.rename(folder / WEIGHTS)
        shutil.copymode(folder / CONFIG, folder / WEIGHTS)  # readable as the other files are (safetensors: 0600)

    def usage(self, name: str) -> str | None:
        return ("```python\nfrom peft import PeftModel\nimport zoo\n\nbase = zoo.load(\"BASE\")  # the --base this "
                f"adapter was merged against\nmodel = PeftModel.from_pretrained(base, \"{name}\")\n```\n\n"
                f"or `zoo eval {name} --data DIR`: the adapter on the base its adapter_config.json names (a Hub base by "
                "its repo, a local one by its folder's name alone: edit `base_model_name_or_path` to its path).")

    def architecture(self, member: Member) -> str:
        return f"LoRA adapter (r={member.config.get('r')})"

    def num_classes(self, member: Member) -> int:
        return 0

    def base_of(self, member: Member) -> str | None:
        spec = member.config.get("base_model_name_or_path")
        if not spec:
            return None
        if member.root is not None and not str(spec).startswith(("hf-hub:", "/")):
            local = (member.root / spec)
            if local.exists():
                return str(local.resolve())
        if Path(spec).exists() or spec.startswith("hf-hub:"):
            return spec
        repo, _, _ = spec.partition("@")
        if repo.count("/") == 1 and all(repo.split("/")):
            return f"hf-hub:{spec}"  # a Hub repo id, as PEFT writes it
        raise zoo.BadInput(f"adapter {member.name}: its adapter_config.json names its base {spec!r}, neither a folder "
                           "here nor a Hub repo (ORG/NAME); give the model it was trained on with --base")

    def apply(self, member: Member, base: Member) -> Member:
        from zoo.kit.members import derived, joined

        loras, whole = self._parts(member)
        loras, whole = self._in_file_names(loras, whole, base)
        heads = self._check_fits(member, base, loras, whole)
        rules = []
        for key in base.keys():
            module = key[: -len(".weight")] if key.endswith(".weight") else None
            if module in loras:
                a, b = loras[module]["A"], loras[module]["B"]
                scale = self._scale(member.config, loras[module]["name"], rank=member.shape(a)[0])
                rules.append((key, (f"base/{key}", f"adapter/{a}", f"adapter/{b}"), partial(plus_delta, scale=scale)))
            elif key in whole:
                rules.append((key, (f"adapter/{whole[key]}",), None))
            else:
                rules.append((key, (f"base/{key}",), None))
        config = dict(base.config)
        if heads:  # trained on other classes: the base's model with the adapter's head
            config = base.format.output_config(base, label_names=self._classes(member, heads))
        source = joined({"base": base, "adapter": member}, main="adapter")
        return derived(source, rules, config=config, format=base.format,
                       preprocessing=base.carried_preprocessing(),
                       note={"adapter_of": base.name, "lora_modules": len(loras)})

    @staticmethod
    def _in_file_names(loras: dict, whole: dict, base: Member) -> tuple[dict, dict]:
        """The adapter's modules (named as the model names them: PEFT saves what it wraps) under the base's
        tensor names (``MemberFormat.file_names``: transformers 5 renames some modules when it loads)."""
        names = base.format.file_names(base)
        if not names:
            return {m: {**pair, "name": m} for m, pair in loras.items()}, whole
        out = {}
        for module, pair in loras.items():
            weight = names.get(f"{module}.weight", f"{module}.weight")
            out[weight[: -len(".weight")]] = {**pair, "name": module}
        return out, {names.get(k, k): v for k, v in whole.items()}

    @staticmethod
    def _classes(member: Member, rows: int) -> list[str]:
        """The class names of an adapter trained on other classes than its base's: zoo's record of them (its
        zoo.json, ``zoo finetune --lora``), else the class indices."""
        classes = ((member.recipe() or {}).get("report") or {}).get("classes")
        if isinstance(classes, list) and len(classes) == rows:
            return [str(c) for c in classes]
        return [str(i) for i in range(rows)]

    # ---- reading an adapter's tensors ----------------------------------------------------------------------
    def _parts(self, member: Member) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
        """{module: {"A": key, "B": key}} of its LoRA pairs, and {base key: key} of the tensors it saves whole."""
        loras: dict[str, dict[str, str]] = {}
        whole: dict[str, str] = {}
        for key in member.keys():
            if not key.startswith(PREFIX):
                raise zoo.BadInput(f"member {member.name}: {key!r} is not a PEFT adapter's tensor name "
                                   f"(they start with {PREFIX!r})")
            rest = key[len(PREFIX):]
            found = re.fullmatch(r"(.+)\.lora_([AB])\.weight", rest)
            if found:
                loras.setdefault(found.group(1), {})[found.group(2)] = key
            elif ".lora_" in rest:
                raise zoo.BadInput(f"member {member.name}: {rest!r} is a LoRA part zoo does not merge (embeddings' "
                                   "LoRA, DoRA's magnitude); give adapters of linear layers")
            else:
                whole[rest] = key
        for module, pair in loras.items():
            if set(pair) != {"A", "B"}:
                raise zoo.BadInput(f"member {member.name}: LoRA module {module!r} has lora_{''.join(pair)} alone")
        return loras, whole

    def _check_fits(self, member: Member, base: Member, loras: dict, whole: dict) -> int:
        """The adapter's modules and whole tensors against the base, by name and by shape, from the headers.
        Returns the adapter's class count when its head is for other classes than the base's, else 0."""
        who = f"adapter {member.name} does not fit the base {base.name}"
        keys = set(base.keys())
        for module, pair in sorted(loras.items()):
            weight = f"{module}.weight"
            if weight not in keys:
                raise zoo.BadInput(f"{who}: it adapts {module!r}, which the base does not have (is it the base the "
                                   "adapter was trained on? give it with --base)")
            w, a, b = base.shape(weight), member.shape(pair["A"]), member.shape(pair["B"])
            if len(w) == 4 and w[2:] != (1, 1):
                raise zoo.BadInput(f"{who}: {module!r} is a {w[2]}×{w[3]} convolution; zoo merges LoRA on linear "
                                   "layers and 1×1 convolutions")
            if len(a) < 2 or len(b) < 2 or (b[0], a[1]) != tuple(w[:2]) or b[1] != a[0]:
                raise zoo.BadInput(f"{who}: {module!r} is {tuple(w)} in the base, its LoRA A {tuple(a)} and B "
                                   f"{tuple(b)}")
        head, rows = set(base.head_keys()), set()
        for key, theirs in sorted(whole.items()):
            if key not in keys:
                raise zoo.BadInput(f"{who}: it saves {key!r} whole, which the base does not have")
            mine, their_shape = tuple(base.shape(key)), tuple(member.shape(theirs))
            if mine != their_shape:
                if key not in head or mine[1:] != their_shape[1:]:
                    raise zoo.BadInput(f"{who}: {key!r} is {mine} in the base, {their_shape} in the adapter")
                rows.add(their_shape[0])  # a head for other classes (zoo finetune --lora on new class folders)
        if len(rows) > 1:
            raise zoo.BadInput(f"{who}: its head's tensors disagree on the number of classes ({sorted(rows)})")
        return rows.pop() if rows else 0

    @staticmethod
    def _scale(config: dict[str, Any], module: str, *, rank: int) -> float:
        """``alpha / r`` (rsLoRA: ``alpha / √r``), ``alpha`` from the config's ``alpha_pattern`` where a pattern
        names the module (PEFT's rule: the pattern matches the end of the module's name), ``r`` from ``A``."""
        alpha = config.get("lora_alpha", 8)
        for pattern, value in (config.get("alpha_pattern") or {}).items():
            if re.match(rf"(.*\.)?{pattern}$", module):
                alpha = value
                break
        return alpha / rank ** 0.5 if config.get("use_rslora") else alpha / rank
