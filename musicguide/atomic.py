"""Writing files so that a crash or Ctrl-C leaves either the old file or the new one, never half."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable


def write_atomically(target: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Run `write(temporary)` on a file beside `target`, then rename it over `target`.

    Beside, so the rename stays on one file system and is atomic; created by `write` itself, so it
    gets the usual permissions (not mkstemp's 0600). On any failure the temporary file is removed
    and the exception propagates."""
    target = Path(target)
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
    try:
        write(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(target: str | os.PathLike, text: str) -> None:
    write_atomically(target, lambda path: path.write_text(text))
