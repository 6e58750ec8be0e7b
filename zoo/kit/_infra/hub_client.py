"""Talking to the Hub through huggingface_hub: ``hf-hub:`` specs, snapshot downloads with one clear error
per failure, where huggingface_hub points, and what a broken connection raises."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from zoo.kit.strategy.errors import BadInput, HubError, short_error


def network_errors() -> tuple[type[BaseException], ...]:
    """What a refused or broken connection raises: OSError, and the HTTP client's transport errors
    (huggingface_hub 1.x uses httpx, 2.x its fork httpx2)."""
    import importlib

    errors: list[type[BaseException]] = [OSError]
    for name in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def endpoint() -> str:
    """The Hub URL huggingface_hub talks to (HF_ENDPOINT or huggingface.co)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def check_reachable(what: str) -> None:
    """Fail at once when the Hub's address refuses connections or does not resolve: huggingface_hub retries
    such a request five times with backoff (about 25 s) before it gives up, for an answer one connection
    gives. Anything else (a slow or silent host, a proxy in the way, offline mode) is left to the request
    itself, which says what happened."""
    import socket
    import urllib.request
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    url = urlsplit(endpoint())
    if constants.HF_HUB_OFFLINE or not url.hostname:
        return
    if urllib.request.getproxies() and not urllib.request.proxy_bypass(url.hostname):
        return  # through a proxy: a direct connection tells nothing
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
        socket.create_connection((url.hostname, port), timeout=5).close()
    except (ConnectionRefusedError, socket.gaierror) as e:
        raise HubError(f"{what}: cannot reach {endpoint()} ({short_error(e)})") from None
    except (OSError, ValueError):
        return


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


@contextmanager
def _hub_errors(who: str, repo_id: str, rev: str):
    """A download's failures (``snapshot_download``, ``hf_hub_download``) as one clear line each."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except GatedRepoError:
        raise BadInput(f"{who}: {repo_id} is gated; accept its terms on the Hub and log in "
                       "(`hf auth login` or HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise BadInput(f"{who}: revision {rev!r} not found in {repo_id}") from None
    except RepositoryNotFoundError:
        # A mirror (and the Hub for private repos) answers "not found" for a missing revision too.
        raise _not_found(who, repo_id, rev) from None
    except LocalEntryNotFoundError as e:
        # downloads fall back to the cache on any HTTP failure; the cause says what happened
        cause = e.__cause__ or e.__context__
        status = getattr(getattr(cause, "response", None), "status_code", None)
        if status in (401, 404):
            raise _not_found(who, repo_id, rev) from None
        raise HubError(f"{who}: cannot reach {endpoint()} and {repo_id}@{rev} is not in the local cache "
                       f"({short_error(e)})") from None
    except HfHubHTTPError as e:
        raise HubError(f"{who}: the Hub at {endpoint()} answered {short_error(e)}") from None
    except network_errors() as e:  # connection refused, DNS, ...
        raise HubError(f"{who}: cannot reach {endpoint()} ({short_error(e)})") from None


def download(repo_id: str, revision: str | None, patterns: list[str], who: str) -> Path:
    """snapshot_download with each failure turned into one clear line."""
    from huggingface_hub import snapshot_download

    rev = revision or "main"
    with _hub_errors(who, repo_id, rev):
        return Path(snapshot_download(repo_id, revision=rev, allow_patterns=patterns))


def safetensors_header(repo_id: str, revision: str | None, who: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """The tensors (name -> (shape, dtype)) of a Hub repo's safetensors files, read from their headers alone
    (HTTP range requests, through ``HfApi.get_safetensors_metadata``): no weights are downloaded. BadInput
    when the repo has no safetensors weights (the Hub answers so for a missing repo too) or a header that
    does not parse; HubError when the Hub fails or cannot be reached."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, NotASafetensorsRepoError, SafetensorsParsingError

    rev = revision or "main"
    try:
        meta = HfApi().get_safetensors_metadata(repo_id, revision=rev)
    except NotASafetensorsRepoError:
        raise BadInput(f"{who}: {repo_id}@{rev} has no safetensors weights (no model.safetensors, "
                       "no model.safetensors.index.json)") from None
    except SafetensorsParsingError as e:
        raise BadInput(f"{who}: the safetensors header of {repo_id}@{rev} does not parse ({short_error(e)})") from None
    except HfHubHTTPError as e:  # before network_errors: huggingface_hub's HTTP errors are OSErrors too
        raise HubError(f"{who}: the Hub at {endpoint()} answered {short_error(e)}") from None
    except network_errors() as e:
        raise HubError(f"{who}: cannot reach {endpoint()} ({short_error(e)})") from None
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for f in meta.files_metadata.values():
        for name, info in f.tensors.items():
            out[name] = (tuple(info.shape), info.dtype)
    return out


def remote_header(spec: str) -> dict[str, tuple[tuple[int, ...], str]] | None:
    """A Hub member's tensors from its safetensors headers (:func:`safetensors_header`), or None when they
    cannot be read that way (no safetensors, a network error, a missing repo): the download then says what
    is wrong."""
    repo_id, revision = parse(spec)
    try:
        return safetensors_header(repo_id, revision, spec)
    except Exception:  # any failure here is reported, better, by the download that follows
        return None


def small_file(repo_id: str, filename: str, revision: str | None, who: str) -> Path | None:
    """One small file of a Hub repo (``hf_hub_download``, into huggingface_hub's cache), or None when the repo
    has no such file. A missing repo or revision is BadInput; the Hub failing or out of reach, HubError."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    rev = revision or "main"
    with _hub_errors(who, repo_id, rev):
        try:
            return Path(hf_hub_download(repo_id, filename, revision=rev))
        except EntryNotFoundError as e:
            if isinstance(e, LocalEntryNotFoundError):  # out of reach, not missing: _hub_errors says which
                raise
            return None


def folder_of(spec: str) -> Path:
    """A local folder for ``spec``: the folder itself, or the Hub snapshot (``hf-hub:ORG/NAME[@REV]``,
    config and safetensors files) that huggingface_hub downloads into its cache."""
    if spec.startswith(PREFIX):
        repo_id, revision = parse(spec)
        return download(repo_id, revision, ["*.json", "*.safetensors"], spec)
    folder = Path(spec)
    if not folder.is_dir():
        raise BadInput(f"{spec}: no such folder (give a folder zoo wrote, or hf-hub:ORG/NAME[@REV])")
    return folder
