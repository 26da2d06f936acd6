"""Files' digests, and musicguide's own cache: what is slow to establish about a file and cannot
change while the file does not. Two kinds live in the cache: a weights file's verified sha256 (so
multi-GB weights hash once), and facts measured on a model's weights (how far its encoder sees
across an edit boundary). Weights themselves stay in the Hugging Face cache or the model folder.

Each entry is keyed by the file's resolved path, size and mtime (`file_stamp`): neither the Hub
cache nor a model folder rewrites a file in place without changing them. Where: $MUSICGUIDE_CACHE_DIR,
else $XDG_CACHE_HOME/musicguide, else ~/.cache/musicguide. An unreadable or unwritable cache only
costs the work again; it never fails a command. (It imports nothing of the package but errors: the
Hub download stands on it.)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from musicguide.errors import UserError

CACHE_ENV = "MUSICGUIDE_CACHE_DIR"


def cache_dir() -> Path:
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    xdg_cache = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg_cache) if xdg_cache else Path.home() / ".cache") / "musicguide"


def file_stamp(path: str | os.PathLike) -> dict[str, Any]:
    """The file's resolved path, size and mtime; FileNotFoundError if it is gone."""
    blob = Path(path).resolve()
    stat = blob.stat()
    return {"path": str(blob), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _read(entry: Path) -> Any:
    try:
        return json.loads(entry.read_text())
    except (OSError, ValueError):
        return None


def _write(entry: Path, value: Any) -> None:
    # a temporary name and a rename, so that a reader never sees half an entry (atomic.py's
    # write_text_atomically does the same for outputs; importing it would put the Hub download,
    # which stands on this module, a layer deeper than tests/test_structure.py allows)
    temporary = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(value))
        os.replace(temporary, entry)
    except OSError:
        temporary.unlink(missing_ok=True)


def file_sha256(path: str | os.PathLike) -> str:
    """A file's sha256, read in 1 MiB blocks (the sidecars' digests, the Hub downloads' checks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, *, hint: str | None = None) -> None:
    """Check a file against its pinned digest, remembering a pass (the file's stamp)."""
    try:
        stamp = file_stamp(path)
    except FileNotFoundError:
        raise UserError(f"cannot check the sha256 of {path}: the file does not exist") from None
    entry = cache_dir() / "verified" / f"{expected}.json"
    if _read(entry) == stamp:
        return
    actual = file_sha256(Path(stamp["path"]))
    if actual != expected:
        raise UserError(
            f"sha256 mismatch for {path}: expected {expected}, got {actual}",
            hint=hint or f"the download is corrupt or was replaced; delete {stamp['path']} and run again to fetch it afresh",
        )
    _write(entry, stamp)


def remembered(kind: str, key: dict[str, Any], measure: Callable[[], int]) -> int:
    """`measure()`, or the value it gave before for the same `key` (a file's stamp and whatever else
    the measurement depends on), stored under `kind`."""
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    entry = cache_dir() / kind / f"{name}.json"
    stored = _read(entry)
    if isinstance(stored, dict) and stored.get("key") == key and isinstance(stored.get("value"), int):
        return stored["value"]
    value = measure()
    _write(entry, {"key": key, "value": value})
    return value
