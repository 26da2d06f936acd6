"""Downloads from the Hugging Face Hub, pinned and checked: files at a revision, their sha256
against the registry's (a pass remembered so multi-GB weights hash once), and every failure a user
can fix (no network, gated repo, missing file) as one line, translated from the Hub's exceptions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Protocol

from huggingface_hub import constants as hub_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.utils import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from musicguide.cache import verify_sha256
from musicguide.errors import UserError
from musicguide.model_files import CONFIG_FILE


class CheckpointEntry(Protocol):
    """What a download reads of a registry entry (`registry.CheckpointEntry`)."""

    name: str
    repo: str | None
    revision: str | None
    files: tuple[str, ...]
    sha256: dict[str, str]


def download_hub_files(entry: CheckpointEntry, token: str | None, main_file: str = CONFIG_FILE) -> Path:
    """Fetch (or find in the Hub cache) every listed file, check listed hashes, return the folder
    that holds `main_file` (a model's config; a text encoder's config.json)."""
    assert entry.repo is not None and entry.revision is not None
    paths = {filename: download_hub_file(entry, filename, token) for filename in entry.files}
    for filename, expected in entry.sha256.items():
        verify_sha256(paths[filename], expected)
    return paths[main_file].parent


def download_hub_file(entry: CheckpointEntry, filename: str, token: str | None) -> Path:
    assert entry.repo is not None and entry.revision is not None
    try:
        return Path(
            hf_hub_download(repo_id=entry.repo, filename=filename, revision=entry.revision, token=token)
        )
    except (HfHubHTTPError, EntryNotFoundError, *_NETWORK_ERRORS) as error:
        raise _hub_user_error(error, entry, filename) from error


def _hub_user_error(error: BaseException, entry: CheckpointEntry, filename: str) -> UserError:
    """Map huggingface_hub's exceptions to one-line messages.

    Order matters: GatedRepoError subclasses RepositoryNotFoundError, and LocalEntryNotFoundError
    (not cached + no network or offline mode) subclasses EntryNotFoundError (missing in the repo).
    """
    repo, revision = entry.repo, entry.revision
    where = f"{repo}@{revision}"
    download_command = (
        f"`hf download {repo} {' '.join(entry.files)} --revision {revision}`"
        " or, with older huggingface_hub, `huggingface-cli download …` and the same arguments"
    )
    if isinstance(error, GatedRepoError):
        return UserError(
            f"model {entry.name!r} ({repo}) is gated and this Hugging Face account has no access to it",
            hint=f"accept the licence at https://huggingface.co/{repo} and set HF_TOKEN",
        )
    if isinstance(error, RepositoryNotFoundError):
        return UserError(
            f"repository {repo} was not found on the Hugging Face Hub",
            hint="check 'repo' in checkpoints.toml; if the repository is private, set HF_TOKEN",
        )
    if isinstance(error, RevisionNotFoundError):
        return UserError(
            f"revision {revision!r} was not found in {repo}",
            hint="check 'revision' in checkpoints.toml (a commit hash or branch that exists)",
        )
    if isinstance(error, (LocalEntryNotFoundError, *_NETWORK_ERRORS)):
        offline = hub_constants.HF_HUB_OFFLINE or any(
            isinstance(reason, OfflineModeIsEnabled) for reason in (error, error.__cause__)
        )
        if offline:
            return UserError(
                f"HF_HUB_OFFLINE is set and {filename} of {where} is not in the local Hugging Face cache",
                hint=f"unset HF_HUB_OFFLINE, or pre-download with {download_command}",
            )
        return UserError(
            f"cannot reach the Hugging Face Hub to download {filename} of {where}, and it is not cached",
            hint=f"check the network connection, or download on a connected machine with {download_command}",
        )
    if isinstance(error, EntryNotFoundError):
        return UserError(
            f"file {filename} does not exist in {where}",
            hint="check 'files' and 'revision' in checkpoints.toml",
        )
    status = getattr(getattr(error, "response", None), "status_code", "?")
    return UserError(
        f"the Hugging Face Hub refused to serve {filename} of {where} (HTTP {status})",
        hint="retry later; if it persists, check HF_TOKEN and the repository page",
    )


def _network_error_types() -> tuple[type[BaseException], ...]:
    """Transport errors of the HTTP client this huggingface_hub version uses.

    hf_hub_download turns a failed metadata request into LocalEntryNotFoundError, but a connection
    lost mid-download surfaces raw from the client: requests before huggingface_hub 1.0, httpx in
    1.x, httpx2 after. The client in use was imported along with hf_hub_download, so looking in
    sys.modules finds it without importing the others.
    """
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module_name, class_names in (
        ("httpx2", ("TransportError",)),
        ("httpx", ("TransportError",)),
        ("requests", ("ConnectionError", "Timeout")),
    ):
        module = sys.modules.get(module_name)
        if module is not None:
            found.extend(getattr(module, class_name) for class_name in class_names)
    return tuple(found)


_NETWORK_ERRORS = _network_error_types()
