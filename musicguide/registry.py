"""Named checkpoints: `checkpoints.toml` → a model folder (Hub cache, shipped folder) or a built-in
model's seed; `models.folder.load_model` builds what a name resolves to.

`--model` takes either a name from the registry or the path of a folder laid out like the Stable Audio
Open Hub repositories (`model_config.json` + `model.safetensors`). Downloads go through
`huggingface_hub`, so its cache, `HF_TOKEN`/login and `HF_HUB_OFFLINE` behave as users expect from
other tools; weights are read with safetensors only, never pickle.

Every failure a user can fix (no network, gated repo, typo in a name, corrupt download) becomes a
one-line `UserError` with a hint; the Hub's own exceptions are translated here, by class.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from musicguide.cache import verify_sha256
from musicguide.errors import UserError, one_line
from musicguide.model_files import CONFIG_FILE, WEIGHTS_FILE, ResolvedModel, Source

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE)

DEFAULT_REGISTRY_PATH = Path(__file__).resolve().parent.parent / "checkpoints.toml"
REGISTRY_ENV = "MUSICGUIDE_CHECKPOINTS"

_COMMON_FIELDS = {"source", "description", "license", "gated"}
_FIELDS_BY_SOURCE: dict[str, tuple[set[str], set[str]]] = {
    # source: (required fields besides the common ones, optional fields)
    "hub": ({"repo", "revision", "files"}, {"sha256"}),
    "local": ({"path"}, {"files", "sha256"}),
    "builtin": ({"seed"}, set()),
}
_REGISTRY_HINT = "see the comment at the top of checkpoints.toml for the fields each source needs"
# A registry is a few kilobytes; anything much larger is not one, and is not read into memory.
_MAX_REGISTRY_BYTES = 1 << 20
# The seeds torch.manual_seed takes (it also takes negatives, as aliases of the top half).
MAX_BUILTIN_SEED = 2**64 - 1


@dataclass(frozen=True)
class CheckpointEntry:
    """One `[models."name"]` table of checkpoints.toml, validated.

    `path` is already absolute (resolved against the registry file's folder), so callers never
    depend on the working directory.
    """

    name: str
    source: Source
    description: str
    license: str
    gated: bool = False
    repo: str | None = None
    revision: str | None = None
    files: tuple[str, ...] = MODEL_FILES
    sha256: dict[str, str] = field(default_factory=dict)
    seed: int | None = None
    path: Path | None = None


@dataclass(frozen=True)
class ModelRow:
    """One line of `musicguide models list`; `available` means loadable without the network."""

    name: str
    source: Source
    location: str
    revision: str | None
    gated: bool
    license: str
    available: bool
    description: str


def default_registry_path() -> Path:
    """The registry in use: `$MUSICGUIDE_CHECKPOINTS` if set, else the one next to the package."""
    override = os.environ.get(REGISTRY_ENV)
    return _expanded(override, f"${REGISTRY_ENV} =") if override else DEFAULT_REGISTRY_PATH


def load_registry(path: str | os.PathLike[str] | None = None) -> dict[str, CheckpointEntry]:
    """Read and validate checkpoints.toml, so that a typo fails here and not mid-download."""
    registry_path = Path(path) if path is not None else default_registry_path()
    try:
        with registry_path.open("rb") as registry_file:
            size = os.fstat(registry_file.fileno()).st_size
            if size > _MAX_REGISTRY_BYTES:
                raise UserError(f"model registry {registry_path} is {size} bytes, too large for a checkpoints.toml")
            document = tomllib.load(registry_file)
    except FileNotFoundError:
        raise UserError(
            f"model registry {registry_path} does not exist",
            hint=f"unset {REGISTRY_ENV} or point it at a checkpoints.toml",
        ) from None
    except OSError as error:  # a folder, no permission, ...
        raise UserError(f"cannot read the model registry {registry_path}: {error.strerror}") from None
    # TOMLDecodeError is a ValueError; so is an integer longer than Python converts (4300 digits),
    # which tomllib lets through. RecursionError: arrays nested thousands deep.
    except (ValueError, RecursionError) as error:
        raise UserError(f"model registry {registry_path} is not valid TOML: {one_line(error)}") from None

    models = document.get("models")
    if not isinstance(models, dict) or not models:
        raise UserError(f"{registry_path}: no [models.\"name\"] tables found", hint=_REGISTRY_HINT)
    unknown_top_level = sorted(set(document) - {"models", "text_encoders"})
    if unknown_top_level:
        raise UserError(f"{registry_path}: unknown top-level key {unknown_top_level[0]!r}", hint=_REGISTRY_HINT)
    return {name: _parse_entry(name, table, registry_path) for name, table in models.items()}


def _parse_entry(name: str, table: Any, registry_path: Path) -> CheckpointEntry:
    """Check one entry's fields and types; every message names the file and the entry."""

    def fail(problem: str) -> UserError:
        return UserError(f"{registry_path}: model {name!r}: {problem}", hint=_REGISTRY_HINT)

    def text(key: str) -> str:
        value = table[key]
        if not isinstance(value, str) or not value.strip():
            raise fail(f"{key!r} must be a non-empty string")
        if not value.isprintable():  # it is printed in messages and `models list`, one line each
            raise fail(f"{key!r} must be one line of printable characters, got {_clipped(value)}")
        return value

    if not name.isprintable():
        raise UserError(f"{registry_path}: model name {_clipped(name)} must be printable characters only",
                        hint=_REGISTRY_HINT)
    if not isinstance(table, dict):
        raise fail("must be a table")
    source = table.get("source")
    if source not in _FIELDS_BY_SOURCE:
        raise fail(f"'source' must be one of {sorted(_FIELDS_BY_SOURCE)}, got {source!r}")
    required, optional = _FIELDS_BY_SOURCE[source]
    missing = sorted((required | {"source", "description", "license"}) - set(table))
    if missing:
        raise fail(f"missing field {missing[0]!r}")
    unknown = sorted(set(table) - required - optional - _COMMON_FIELDS)
    if unknown:
        raise fail(f"unknown field {unknown[0]!r} for source {source!r}")

    gated = table.get("gated", False)
    if not isinstance(gated, bool):
        raise fail("'gated' must be true or false")
    files = _parse_files(table.get("files", list(MODEL_FILES)), fail)
    sha256 = _parse_hashes(table.get("sha256", {}), files, fail)
    seed = _parse_seed(table.get("seed"), fail)

    repo = _parse_repo(text("repo"), fail) if "repo" in table else None
    revision = text("revision") if "revision" in table else None
    if revision is not None and any(character.isspace() for character in revision):
        raise fail(f"'revision' must be a commit hash, branch or tag without spaces, got {revision!r}")

    return CheckpointEntry(
        name=name,
        source=source,
        description=text("description"),
        license=text("license"),
        gated=gated,
        repo=repo,
        revision=revision,
        files=files,
        sha256=sha256,
        seed=seed,
        path=(registry_path.parent / text("path")).resolve() if "path" in table else None,
    )


def _parse_seed(seed: Any, fail: Callable[[str], UserError]) -> int | None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_BUILTIN_SEED):
        raise fail(f"'seed' must be an integer from 0 to {MAX_BUILTIN_SEED} (2**64 - 1), got {_clipped(seed)}")
    return seed


# The Hub's rules for a repository id (huggingface_hub's validate_repo_id), checked here without
# importing huggingface_hub, whose import costs every command a tenth of a second: each part one to
# 96 word characters, '-' or '.', starting and ending with a word character; no '--' or '..'; no '.git' end.
_REPO_PART = re.compile(r"\w(?:[\w.-]{0,94}\w)?", re.ASCII)


def _parse_repo(repo: str, fail: Callable[[str], UserError]) -> str:
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise fail(f"'repo' must look like 'owner/name', got {repo!r}")
    if (not all(_REPO_PART.fullmatch(part) for part in repo.split("/")) or "--" in repo or ".." in repo
            or repo.endswith(".git")):
        raise fail(f"'repo' is not a valid Hugging Face repository id (letters, digits, '_', '-' and '.', "
                   f"not '-' or '.' at either end of a part, no '--' or '..'), got {repo!r}")
    return repo


def _parse_files(value: Any, fail: Callable[[str], UserError]) -> tuple[str, ...]:
    """The loader reads the config and weights side by side, so both must be listed, without folders."""
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise fail("'files' must be a list of file names")
    nested = [item for item in value if "/" in item or "\\" in item or item in {".", ".."}]
    if nested:
        raise fail(f"'files' must name files at the top of the repository, got {nested[0]!r}")
    unprintable = [item for item in value if not item.isprintable()]
    if unprintable:
        raise fail(f"'files' must be printable names, got {unprintable[0]!r}")
    absent = [required for required in MODEL_FILES if required not in value]
    if absent:
        raise fail(f"'files' must include {absent[0]!r}")
    return tuple(value)


def _parse_hashes(value: Any, files: tuple[str, ...], fail: Callable[[str], UserError]) -> dict[str, str]:
    """Digests are optional per file; a listed one must be 64 hex digits and name a listed file."""
    if not isinstance(value, dict):
        raise fail("'sha256' must be a table of file name = hex digest")
    hashes: dict[str, str] = {}
    for filename, digest in value.items():
        if filename not in files:
            raise fail(f"'sha256' lists {filename!r}, which is not in 'files'")
        if not isinstance(digest, str) or len(digest) != 64 or not _is_hex(digest):
            raise fail(f"sha256 of {filename!r} must be 64 hexadecimal digits")
        hashes[filename] = digest.lower()
    return hashes


def _is_hex(text: str) -> bool:
    return all(character in "0123456789abcdefABCDEF" for character in text)


def _clipped(value: Any) -> str:
    """A value for a one-line message: escaped, and a number of thousands of digits described."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 100:
        return f"an integer of {len(str(abs(value)))} digits"  # tomllib only makes ints str() can print
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def resolve_model(name_or_path: str | os.PathLike[str], *, token: str | None = None) -> ResolvedModel:
    """Turn a `--model` argument into something loadable, downloading and hash-checking if needed.

    An existing folder wins over a registry name of the same spelling, because a user who typed a
    path means that path. `token` overrides huggingface_hub's own (HF_TOKEN or `hf auth login`).
    """
    argument = os.fspath(name_or_path)
    candidate = _expanded(argument, "--model")
    if _is_dir(candidate, argument):
        folder = candidate.resolve()
        return ResolvedModel(
            name=folder.name, kind="local", folder=folder, repo=None, revision=None,
            description=f"model folder {folder}",
        )
    if candidate.is_file():
        raise UserError(
            f"--model expects a model folder or a registry name, got the file {argument}",
            hint=f"pass the folder that holds {CONFIG_FILE} and {WEIGHTS_FILE}",
        )

    registry = load_registry()
    entry = registry.get(argument)
    if entry is None:
        if _looks_like_path(argument):
            raise UserError(
                f"model folder {argument} does not exist",
                hint=f"known model names: {', '.join(sorted(registry))}",
            )
        raise _unknown_name_error(argument, registry)

    if entry.source == "builtin":
        folder = None
    elif entry.source == "local":
        folder = _checked_local_folder(entry)
    else:
        from musicguide.hub import download_hub_files

        folder = download_hub_files(entry, token)
    return ResolvedModel(
        name=entry.name, kind=entry.source, folder=folder, repo=entry.repo, revision=entry.revision,
        description=entry.description, seed=entry.seed,
    )


def _expanded(path_text: str, given_as: str) -> Path:
    try:
        return Path(path_text).expanduser()
    except RuntimeError:  # "~someone/..." for a user who does not exist
        raise UserError(f"{given_as} {path_text}: cannot find the home folder it starts from") from None


def _is_dir(candidate: Path, argument: str) -> bool:
    """is_dir, with the errors pathlib does not swallow (a name too long, no permission) as a UserError."""
    try:
        return candidate.is_dir()
    except OSError as error:
        raise UserError(f"cannot use --model {_clipped(argument)}: {error.strerror}") from None


def list_models() -> list[ModelRow]:
    """The registry with what is usable offline; reads the Hub cache only, never the network."""
    return [
        ModelRow(
            name=entry.name,
            source=entry.source,
            location=_location(entry),
            revision=entry.revision,
            gated=entry.gated,
            license=entry.license,
            available=_available_offline(entry),
            description=entry.description,
        )
        for entry in load_registry().values()
    ]


def _location(entry: CheckpointEntry) -> str:
    if entry.source == "hub":
        return str(entry.repo)
    if entry.source == "local":
        return str(entry.path)
    return f"built in (seed {entry.seed})"


def _available_offline(entry: CheckpointEntry) -> bool:
    """try_to_load_from_cache only looks at the cache folder; it returns a path string when cached."""
    if entry.source == "hub":
        from huggingface_hub import try_to_load_from_cache

        return all(
            isinstance(try_to_load_from_cache(str(entry.repo), filename, revision=entry.revision), str)
            for filename in entry.files
        )
    if entry.source == "local":
        return entry.path is not None and all((entry.path / filename).is_file() for filename in entry.files)
    return True


def _looks_like_path(argument: str) -> bool:
    """Registry names are bare words; anything with a separator or a leading dot/tilde is a path."""
    return (
        "/" in argument
        or os.sep in argument
        or argument.startswith((".", "~"))
        or Path(argument).suffix in {".json", ".safetensors"}
    )


def _unknown_name_error(name: str, registry: dict[str, CheckpointEntry]) -> UserError:
    known = sorted(registry)
    # difflib catches typos; the prefix test catches abbreviations it scores too low ("tiny").
    close = difflib.get_close_matches(name, known, n=1) or [k for k in known if k.startswith(name)][:1]
    suggestion = f"did you mean {close[0]!r}? " if close else ""
    return UserError(
        f"unknown model {name!r}: not a registry name and not an existing folder",
        hint=f"{suggestion}known models: {', '.join(known)}; `musicguide models list` describes them",
    )


def _checked_local_folder(entry: CheckpointEntry) -> Path:
    """A shipped folder must be present (e.g. not an un-pulled Git LFS checkout) and match its hashes."""
    assert entry.path is not None
    if not entry.path.is_dir():
        raise UserError(
            f"model {entry.name!r} points to {entry.path}, which does not exist",
            hint="restore the folder from the repository or fix 'path' in checkpoints.toml",
        )
    for filename, expected in entry.sha256.items():
        verify_sha256(
            entry.path / filename,
            expected,
            hint=f"restore {entry.path / filename} from the repository (e.g. `git lfs pull`)",
        )
    return entry.path
