"""``zoo push``: publish an output folder to the Hub: ``HfApi.create_repo`` + ``upload_folder``, card in
the same commit.

The token comes from huggingface_hub's usual places (``HF_TOKEN``, ``hf auth login``);
zoo never prints, logs or writes it.
"""

from __future__ import annotations

from pathlib import Path

from zoo.kit.strategy.errors import BadInput, HubError
from zoo.kit.members.member import short_error
from zoo.kit._infra.hub_client import endpoint, network_errors


def check_repo_id(repo_id: str, flag: str = "repo") -> None:
    """Refuse what is not a Hub repo id ``ORG/NAME`` (huggingface_hub's own rules), before anything runs."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise BadInput(f"{flag} {repo_id!r}: write it as ORG/NAME")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise BadInput(f"{flag} {repo_id!r} is not a Hub repo id: {e}") from None


def push(folder: str | Path, repo_id: str, *, private: bool = False, message: str | None = None) -> str:
    """Upload a zoo output folder to ``repo_id``; returns the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "README.md").is_file():
        raise BadInput(f"{folder} is not a zoo output folder (no config.json and README.md); "
                       "make one with `zoo combine ... --out DIR`")
    check_repo_id(repo_id)
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                 commit_message=message or f"zoo: upload {folder.name}",
                                 ignore_patterns=[".*"])
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", None)
        if status in (401, 403):
            raise HubError(f"push to {repo_id}: the Hub at {endpoint()} refused it ({status}); log in with "
                           "`hf auth login` or set HF_TOKEN to a token with write access") from None
        raise HubError(f"push to {repo_id}: the Hub at {endpoint()} answered {status}: {short_error(e)}") from None
    except network_errors() as e:
        raise HubError(f"push to {repo_id}: cannot reach {endpoint()} ({short_error(e)})") from None
    return str(getattr(info, "commit_url", info))
