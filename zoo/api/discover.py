"""`zoo discover BASE`: the Hub's models whose model tree names BASE as their base (fine-tunes, adapters,
merges, quantizations), each pinned to the commit the Hub lists; with ``check``, which of them fit BASE for
a weight merge, read from their safetensors headers and config.json alone (no weights are downloaded);
with ``write``, a zoo file of those that fit, for ``zoo combine --members-from``. The check names each
candidate's member format (timm, transformers, a plugin's: the one whose ``claims`` takes its config.json)
and whether zoo can load it; a candidate in another format than the base's is converted to the base's
format on the meta device (from its header: shapes and dtypes, no data) and fits when its family converts
exactly and the converted tensors are the base's, as ``zoo combine`` would convert it.

The search is ``HfApi.list_models(filter="base_model:RELATION:ORG/NAME")``: the Hub tags every model
whose card says ``base_model: ORG/NAME`` with that tag (the relation from ``base_model_relation``, or
inferred by the Hub when the card gives none).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from zoo.kit.strategy.errors import BadInput, HubError, IncompatibleMembers, short_error
from zoo.kit._infra.hub_client import PREFIX, check_reachable, endpoint, network_errors, safetensors_header, small_file
from zoo.kit._infra.progress import Progress, Silent

#: the Hub's ``base_model_relation`` values (docs/hub/model-cards.md, "Specifying a base model")
RELATIONS = ("finetune", "adapter", "merge", "quantized")
#: the sort keys ``list_models`` takes (its ``ModelSort_T``), with the Hub's own spellings as aliases
SORTS = {"downloads": "downloads", "likes": "likes", "last_modified": "last_modified",
         "lastModified": "last_modified", "created_at": "created_at", "createdAt": "created_at",
         "trending_score": "trending_score", "trendingScore": "trending_score"}
#: what each listed model carries (``expand``): its commit to pin, and what the results are sorted by
EXPAND = ["sha", "downloads", "likes", "trendingScore", "createdAt", "lastModified"]
#: candidates checked at once: each check is a few small requests, so latency, not bandwidth, is the cost
CHECK_THREADS = 8
#: one format reads a config at a time: a format may import lazily on the way (transformers' lazy modules
#: are not safe to import from several threads at once: a class can look missing), and reading is quick
#: (the requests, the slow part, stay parallel)
_READING = threading.Lock()


@dataclass
class Candidate:
    """A model that names the base as its own, at the commit the Hub listed."""

    repo_id: str
    sha: str
    relation: str
    downloads: int | None = None
    likes: int | None = None
    trending_score: int | None = None
    created_at: str | None = None  # ISO 8601
    last_modified: str | None = None
    #: set by the check: its member format (None: none claims its config.json, or it has none), whether
    #: zoo can load it (the format reads its config.json), the architecture its config.json names, whether
    #: it fits, in a word or two why not ("different tensors", "another format (transformers)", ...) and
    #: the whole reason (compare_headers' or the format's words)
    format: str | None = None
    loads: bool | None = None  # None: not checked
    architecture: str | None = None
    fits: bool | None = None  # None: not checked
    verdict: str = ""
    reason: str = ""

    @property
    def spec(self) -> str:
        return f"{PREFIX}{self.repo_id}@{self.sha}"

    def as_dict(self) -> dict:
        return {"spec": self.spec, **asdict(self)}


def parse_base(base: str) -> tuple[str, str | None]:
    """``ORG/NAME``, ``hf-hub:ORG/NAME`` or either with ``@REV`` → (repo id, revision or None)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    repo_id, _, revision = (base[len(PREFIX):] if base.startswith(PREFIX) else base).partition("@")
    try:
        validate_repo_id(repo_id)
        ok = repo_id.count("/") == 1
    except HFValidationError:
        ok = False
    if not ok:
        raise BadInput(f"base {base!r}: give a Hub model as ORG/NAME or hf-hub:ORG/NAME[@REVISION] "
                       "(zoo discover searches the Hub's model tree; a folder on disk has none)")
    return repo_id, revision or None


def relations(relation: str | Sequence[str]) -> list[str]:
    """The relations asked for, checked before any request: names from RELATIONS, or ``all``."""
    asked = [relation] if isinstance(relation, str) else list(relation)
    if "all" in asked:
        return list(RELATIONS)
    wrong = [r for r in asked if r not in RELATIONS] or ([] if asked else ["(none)"])
    if wrong:
        raise BadInput(f"--relation {wrong[0]}: the Hub's model tree knows {', '.join(RELATIONS)} (or all)")
    return list(dict.fromkeys(asked))


def discover(base: str, *, relation: str | Sequence[str] = "finetune", limit: int = 20, sort: str = "downloads",
             check: bool = False, write: str | Path | None = None, force: bool = False,
             plugins: Sequence[str] = (), progress: Progress | None = None) -> list[Candidate]:
    """The models on the Hub that name ``base`` as their base with ``relation`` (one of RELATIONS, several,
    or ``all``): at most ``limit`` per relation, most ``sort`` first, each pinned to its commit.

    ``check``: compare each with the base from its safetensors header and config.json (the same member
    format, one zoo can load; the same tensor names, shapes and dtypes; the same architecture) and set
    ``format``, ``loads``, ``fits``, ``verdict`` and ``reason``; no weights are downloaded. The formats are
    the plugin host's (the built-ins and ``plugins``, module names as ``--plugin`` takes). ``write``: a zoo
    ``.toml`` listing the candidates that fit (``check`` implied), written atomically; an existing file is
    refused unless ``force``. Raises BadInput when nothing is found (or,
    writing, nothing fits), HubError when the Hub fails or is out of reach.
    """
    repo_id, revision = parse_base(base)
    asked = relations(relation)
    if sort not in SORTS:
        raise BadInput(f"--sort {sort}: sort by {', '.join(k for k, v in SORTS.items() if k == v)}")
    if limit < 1:
        raise BadInput(f"--limit {limit}: give a number of models, 1 or more")
    target = writable(write, force) if write is not None else None
    check_reachable(f"searching the model tree of {repo_id}")  # the listing needs the Hub: no retries when it refuses
    if check or target:
        from zoo import host

        host.load(list(plugins))  # the member formats zoo reads: the built-ins' and the plugins'
    reference = _reference(repo_id, revision) if check or target else None  # a missing base fails first
    found = _listing(repo_id, asked, limit, SORTS[sort])
    if not found:
        others = [r for r in RELATIONS if r not in asked]
        hint = (f"; try --relation {'/'.join(others)} (or all)" if others
                else "; the model tree lists only models whose card says base_model: " + repo_id)
        raise BadInput(f"no model on {endpoint()} names {repo_id} as its base with relation "
                       f"{'/'.join(asked)}{hint}")
    if reference is not None:
        task = (progress or Silent()).task(f"checking {len(found)} candidates against {repo_id}", total=len(found))
        with ThreadPoolExecutor(CHECK_THREADS) as pool:
            for _ in pool.map(lambda c: _check(c, repo_id, reference), found):
                task.advance()
        task.close()
    if target is not None:
        write_zoo(target, base, found, force=force, how=f"relation {'/'.join(asked)}, by {SORTS[sort]}")
    return found


def _listing(repo_id: str, asked: list[str], limit: int, sort: str) -> list[Candidate]:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    found: dict[str, Candidate] = {}
    api = HfApi()
    for rel in asked:
        try:  # list_models is a generator: the requests happen as it is read
            infos = list(api.list_models(filter=f"base_model:{rel}:{repo_id}", sort=sort, limit=limit,
                                         expand=EXPAND))
        except HfHubHTTPError as e:  # before network_errors: huggingface_hub's HTTP errors are OSErrors too
            raise HubError(f"searching the model tree of {repo_id}: the Hub at {endpoint()} answered "
                           f"{short_error(e)}") from None
        except network_errors() as e:
            raise HubError(f"searching the model tree of {repo_id}: cannot reach {endpoint()} "
                           f"({short_error(e)})") from None
        for info in infos:
            if info.id == repo_id or info.id in found:
                continue
            if not info.sha:
                raise HubError(f"the Hub at {endpoint()} listed {info.id} without its commit; cannot pin it")
            found[info.id] = Candidate(info.id, info.sha, rel, downloads=info.downloads, likes=info.likes,
                                       trending_score=info.trending_score, created_at=_iso(info.created_at),
                                       last_modified=_iso(info.last_modified))
    out = list(found.values())
    if len(asked) > 1:  # one list per relation: merge them in the Hub's order (most first), then cut
        out.sort(key=lambda c: (getattr(c, sort) is not None, getattr(c, sort) or 0), reverse=True)
        out = out[:limit]
    return out


def _iso(when) -> str | None:
    return when.isoformat() if when else None


def _architecture(config: Path | None) -> str | None:
    """The architecture a config.json names (timm's ``architecture``, or a transformers config's)."""
    if config is None:
        return None
    try:
        cfg = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict):
        return None
    return (cfg.get("architecture") or (cfg.get("pretrained_cfg") or {}).get("architecture")
            or next(iter(cfg.get("architectures") or []), None) or cfg.get("model_type"))


def format_counts(candidates: Sequence[Candidate]) -> dict[str, int]:
    """How many checked candidates each member format has, most first; ``none`` for those in no format."""
    counts = Counter(c.format or "none" for c in candidates if c.fits is not None)
    return dict(sorted(counts.items(), key=lambda kv: (kv[0] == "none", -kv[1], kv[0])))


@dataclass
class _Reference:
    """What each candidate is compared with: the base's tensors, architecture and member format."""

    header: dict
    architecture: str | None
    format: str | None


def _reference(repo_id: str, revision: str | None) -> _Reference:
    """The base's tensors (from its safetensors header), architecture and format. A base whose format
    refuses it (another task, remote code) is BadInput: nothing could be merged with it."""
    who = f"the base {repo_id}"
    config = small_file(repo_id, "config.json", revision, who)  # a missing repo or revision fails here, clearly
    fmt, verdict, reason = _format_of(config, who) if config is not None else (None, "", "")
    if fmt is not None and verdict:
        raise BadInput(f"{reason}; --check compares each candidate with a base zoo can load")
    try:
        header = safetensors_header(repo_id, revision, who)
    except BadInput as e:
        raise BadInput(f"{e}; --check compares each candidate's tensors with the base's") from None
    return _Reference(header, _architecture(config), fmt)


def _format_of(config: Path, who: str) -> tuple[str | None, str, str]:
    """The member format that claims a downloaded config.json, from that file alone, and when zoo cannot load
    the model, why in a word or two and in the format's own words: (format or None, verdict, reason)."""
    from zoo.kit.members import format_registry

    try:
        cfg = json.loads(config.read_text())
    except (OSError, ValueError) as e:
        return None, "unreadable config.json", f"{who}: its config.json is not valid JSON ({short_error(e)})"
    if not isinstance(cfg, dict):
        return None, "unreadable config.json", f"{who}: its config.json holds no JSON object"
    known = format_registry.formats()
    with _READING:
        mine = [f for f in known if f.claims(config.parent, cfg)]
    if not mine:
        return None, "in no format", (f"{who}: its config.json is in no format zoo reads (formats: "
                                      f"{', '.join(f.name for f in known)}); a timm model's names an "
                                      "'architecture', a transformers one's a 'model_type' and 'architectures'")
    if len(mine) > 1:
        return None, "several formats", (f"{who}: formats {', '.join(f.name for f in mine)} all claim its "
                                         "config.json; switch one of their plugins off (--no-plugin)")
    fmt = mine[0]
    try:
        with _READING:
            fmt.read_config(config.parent, cfg, who)
    except BadInput as e:
        return fmt.name, _why_not_loaded(str(e)), str(e)
    return fmt.name, "", ""


def _why_not_loaded(message: str) -> str:
    """A format's refusal in a word or two, for the table (transformers' words; any other: cannot load)."""
    if "trust_remote_code" in message or "own code" in message:
        return "needs remote code"
    if "not an image classifier" in message:
        return "another task"
    return "cannot load"


def _check(c: Candidate, base: str, ref: _Reference) -> None:
    """Set whether ``c`` fits the base: its config.json is in the base's member format and zoo can load it,
    its safetensors header has the base's tensors (compare_headers, the check zoo combine makes), and its
    config names the base's architecture — stricter than zoo combine, which builds the output from the
    first member's config. A candidate in another format is not compared tensor by tensor: its tensors
    are named otherwise, and the verdict says so rather than "different tensors"."""
    from zoo.kit.tensors.headers import compare_headers

    who = f"candidate {c.repo_id}"

    def no(verdict: str, reason: str) -> None:
        c.fits, c.verdict, c.reason = False, verdict, reason

    try:
        config = small_file(c.repo_id, "config.json", c.sha, who)
    except BadInput as e:  # gated, or gone since the listing (HubError, the Hub failing, ends the run)
        return no("cannot read", str(e))  # whether zoo loads it is not known (loads stays None)
    if config is None:
        c.loads = False
        return no("no config.json", f"{who}: no config.json at {c.sha[:10]}; zoo tells a member's format and "
                                    "architecture from its config.json (timm's, or transformers' save_pretrained)")
    c.architecture = _architecture(config)
    c.format, verdict, reason = _format_of(config, who)
    c.loads = not verdict
    if verdict:
        return no(verdict, reason)
    if ref.format is not None and c.format != ref.format:
        return _check_converted(c, base, ref, config, no)
    try:
        theirs = safetensors_header(c.repo_id, c.sha, who)
    except BadInput as e:  # no safetensors (HubError, the Hub failing, ends the run)
        return no("no safetensors", str(e))
    arch = ref.architecture
    archs = (arch, c.architecture) if arch and c.architecture else None
    try:
        compare_headers(ref.header, theirs, both=f"the base {base} and {c.repo_id}", names=(base, c.repo_id),
                        archs=archs)
    except IncompatibleMembers as e:
        return no(_what_differs(str(e), archs), str(e))
    if archs and archs[0] != archs[1]:
        return no("another architecture", f"{c.repo_id}'s config.json names {archs[1]}, the base's {archs[0]}: "
                                          "the same tensors, but another model")
    c.fits, c.verdict = True, "fits"


def _check_converted(c: Candidate, base: str, ref: _Reference, config: Path, no) -> None:
    """A candidate in another format than the base's: its tensors, converted (``zoo.kit.members.convert``, planned
    on the meta device from its safetensors header: nothing is downloaded but the header), against the
    base's. It fits when its family converts exactly and the converted tensors are the base's;
    ``zoo combine`` converts it the same way."""
    from zoo.kit.tensors.headers import compare_headers

    who = f"candidate {c.repo_id}"
    try:
        theirs = safetensors_header(c.repo_id, c.sha, who)
    except BadInput as e:  # no safetensors (HubError, the Hub failing, ends the run)
        return no("no safetensors", str(e))
    try:
        with _READING:
            converted = _converted_header(config, theirs, ref.format, who)
    except BadInput as e:
        return no(f"another format ({c.format})",
                  f"{c.repo_id} is a {c.format} model ({c.architecture or 'architecture unnamed'}), the base {base} "
                  f"a {ref.format} one ({ref.architecture or 'architecture unnamed'}), and it does not convert: {e}")
    archs = (ref.architecture, c.architecture) if ref.architecture and c.architecture else None
    try:
        compare_headers(ref.header, converted, both=f"the base {base} and {c.repo_id} (converted to {ref.format})",
                        names=(base, c.repo_id), archs=archs)
    except IncompatibleMembers as e:
        return no(_what_differs(str(e), archs), str(e))
    c.fits, c.verdict = True, f"fits, converted from {c.format}"


def _converted_header(config: Path, header: dict, to: str, who: str) -> dict:
    """The safetensors header of the member described by ``config`` and ``header`` once converted to format
    ``to``: the conversion run on meta tensors (shapes and dtypes, no data)."""
    import torch

    from zoo.kit._infra.safetensors_reader import torch_dtype
    from zoo.kit.members import Member, convert, format_registry, named_format
    from zoo.kit.tensors.headers import header_of

    cfg = json.loads(config.read_text())
    fmt = format_registry.claim(config.parent, cfg, who)
    cfg = fmt.read_config(config.parent, cfg, who)
    meta = {k: torch.empty(shape, dtype=torch_dtype(dtype), device="meta")
            for k, (shape, dtype) in header.items()}
    member = fmt.as_member(Member(name=who, spec=who, config=cfg, weight_files=[], _tensors=meta, format=fmt))
    return header_of(convert(member, named_format(to)))


def _what_differs(message: str, archs: tuple[str, str] | None) -> str:
    """compare_headers' message in a word or two, for the table: which of its three differences it names."""
    if "different tensors" in message:
        return "another architecture" if archs and archs[0] != archs[1] else "different tensors"
    if " in shape:" in message:
        return "different shape"
    if " in dtype:" in message:
        return "different dtype"
    return "incompatible"


def writable(path: str | Path, force: bool) -> Path:
    """Where a zoo file may be written: a ``.toml`` (what ``--members-from`` reads) in a folder that exists,
    not there yet unless ``force``. Called before any request, and again when writing."""
    path = Path(path).expanduser().resolve()
    if path.suffix != ".toml":
        raise BadInput(f"--write {path.name}: a zoo file ends in .toml (zoo combine --members-from reads it)")
    if not path.parent.is_dir():
        raise BadInput(f"--write {path}: the folder {path.parent} does not exist")
    if path.exists() and not force:
        raise BadInput(f"--write {path} exists; choose another name or pass --force to replace it")
    return path


def write_zoo(path: str | Path, base: str, candidates: Sequence[Candidate], *, force: bool = False,
              how: str = "") -> Path:
    """Write the checked candidates that fit as a zoo file (registry/__init__.py's format), each pinned to its
    commit; atomically (a temporary file beside it, renamed into place). BadInput when none fits."""
    path = writable(path, force)
    if any(c.fits is None for c in candidates):
        raise ValueError("write_zoo takes checked candidates (discover(..., check=True))")
    fits = [c for c in candidates if c.fits]
    if not fits:
        why = ", ".join(f"{c.repo_id} ({c.verdict})" for c in candidates)
        raise BadInput(f"none of the {len(candidates)} candidates fits {base}: {why}; nothing written")
    repo_id, _ = parse_base(base)

    def q(text: str) -> str:
        return json.dumps(text, ensure_ascii=False)  # a JSON string is a valid TOML basic string

    description = (f"models that name {repo_id} as their base on {endpoint()}, found by zoo discover"
                   f"{f' ({how})' if how else ''}, whose safetensors headers match the base's: "
                   f"{len(fits)} of {len(candidates)}")
    text = "\n".join([
        f"name = {q(path.stem)}",
        'task = "image-classification"',
        f"description = {q(description)}",
        f"# the base they derive from (--base of task-vector merges): {PREFIX}{repo_id}",
        "members = [", *[f"    {q(c.spec)}," for c in fits], "]", ""])
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
