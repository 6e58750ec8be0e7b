"""Members from the Hugging Face Hub: ``hf-hub:ORG/NAME[@REVISION]``.

Downloads go through huggingface_hub's own cache (so a second run reads from disk),
its endpoint (``HF_ENDPOINT``) and its token. The snapshot folder huggingface_hub
resolves to is named by the commit sha, which is what we pin and record.
"""

from __future__ import annotations

from pathlib import Path

from zoo import member as _member
from zoo.errors import BadInput, HubError
from zoo.hookspecs import hookimpl
from zoo.hub import endpoint, network_errors

PREFIX = "hf-hub:"


def parse(spec: str) -> tuple[str, str | None]:
    body = spec[len(PREFIX):]
    repo_id, _, revision = body.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise BadInput(f"member {spec}: write Hub members as hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION")
    return repo_id, (revision or None)



def _not_found(who: str, repo_id: str, rev: str) -> BadInput:
    return BadInput(f"{who}: {repo_id}@{rev} not found at {endpoint()} — check the name and revision; "
                    "if it is private, log in (`hf auth login` or HF_TOKEN)")


def download(repo_id: str, revision: str | None, patterns: list[str], who: str) -> Path:
    """snapshot_download with each failure turned into one clear line."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    rev = revision or "main"
    try:
        return Path(snapshot_download(repo_id, revision=rev, allow_patterns=patterns))
    except GatedRepoError:
        raise BadInput(f"{who}: {repo_id} is gated; accept its terms on the Hub and log in "
                       "(`hf auth login` or HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise BadInput(f"{who}: revision {rev!r} not found in {repo_id}") from None
    except RepositoryNotFoundError:
        # A mirror (and the Hub for private repos) answers "not found" for a missing revision too.
        raise _not_found(who, repo_id, rev) from None
    except LocalEntryNotFoundError as e:
        # snapshot_download falls back to the cache on any HTTP failure; the cause says what happened
        cause = e.__cause__ or e.__context__
        status = getattr(getattr(cause, "response", None), "status_code", None)
        if status in (401, 404):
            raise _not_found(who, repo_id, rev) from None
        raise HubError(f"{who}: cannot reach {endpoint()} and {repo_id}@{rev} is not in the local cache "
                       f"({_member._short(e)})") from None
    except HfHubHTTPError as e:
        raise HubError(f"{who}: the Hub at {endpoint()} answered {_member._short(e)}") from None
    except network_errors() as e:  # connection refused, DNS, ...
        raise HubError(f"{who}: cannot reach {endpoint()} ({_member._short(e)})") from None


@hookimpl
def zoo_resolve_member(spec: str, arch: str | None, allow_pickle: bool):
    if not spec.startswith(PREFIX):
        return None
    repo_id, revision = parse(spec)
    patterns = ["config.json", "*.safetensors", _member.SAFE_INDEX]
    if allow_pickle:
        patterns += list(_member.PICKLE_NAMES)
    folder = download(repo_id, revision, patterns, f"member {spec}")
    if not any(folder.glob("*.safetensors")) and not allow_pickle:
        raise BadInput(f"member {spec}: the repo has no .safetensors weights; if it only has a pickled "
                       "pytorch_model.bin, pass --allow-pickle (loaded with weights_only=True)")
    name = repo_id if revision is None else f"{repo_id}@{revision}"
    # snapshot folders are named by the commit sha the revision resolved to
    return _member.from_folder(folder, spec=spec, name=name, allow_pickle=allow_pickle,
                               repo_id=repo_id, revision=folder.name)
