"""Errors meant for users: each carries one clear line and the exit code the CLI returns."""

from __future__ import annotations


class ZooError(Exception):
    """Something went wrong that a user can act on; the message says what and what to do."""

    exit_code = 1


class BadInput(ZooError):
    """Bad input or usage: a missing repo or file, an incompatible member, an unknown option."""

    exit_code = 2


class IncompatibleMembers(BadInput):
    """Two members whose tensors cannot be combined."""


class HubError(ZooError):
    """The Hub (or the network) refused or failed a request."""


def short_error(e: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none), at most 200 characters."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]
