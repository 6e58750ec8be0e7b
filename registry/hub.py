"""Members from the Hugging Face Hub: ``hf-hub:ORG/NAME[@REVISION]``.

Downloads go through huggingface_hub's own cache (so a second run reads from disk),
its endpoint (``HF_ENDPOINT``) and its token. The snapshot folder huggingface_hub
resolves to is named by the commit sha, which is what we pin and record.
"""

from __future__ import annotations


import zoo
from zoo.kit.members import PICKLE_NAMES, PREFIX, SAFE_INDEX, download, formats, from_folder, parse


@zoo.hookimpl
def zoo_resolve_member(spec: str, arch: str | None, allow_pickle: bool):
    if not spec.startswith(PREFIX):
        return None
    repo_id, revision = parse(spec)
    patterns = ["config.json", "*.safetensors", SAFE_INDEX, "README.md", "zoo.json"]  # card: license, lineage
    patterns += [name for fmt in formats() for name in fmt.hub_files]  # what a format reads beside config.json
    if allow_pickle:
        patterns += list(PICKLE_NAMES)
    folder = download(repo_id, revision, patterns, f"member {spec}")
    if not any(folder.glob("*.safetensors")) and not allow_pickle:
        raise zoo.BadInput(f"member {spec}: the repo has no .safetensors weights; if it only has a pickled "
                           "pytorch_model.bin, pass --allow-pickle (loaded with weights_only=True)")
    name = repo_id if revision is None else f"{repo_id}@{revision}"
    # snapshot folders are named by the commit sha the revision resolved to
    return from_folder(folder, spec=spec, name=name, allow_pickle=allow_pickle,
                       repo_id=repo_id, revision=folder.name)
