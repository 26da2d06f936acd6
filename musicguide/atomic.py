"""Writing files so that a crash, Ctrl-C or a full disk leaves either the old files or the new ones.

Two levels:

* `write_atomically(target, write)` for one file: write beside it under a temporary name, then
  rename over it. Used for model folders, evaluation reports and caches.
* `Outputs`, for the files of one edit (audio + JSON sidecar, for every variation): they are
  written under temporary names and published together or not at all. Without --overwrite the
  publishing is no-clobber at the moment it happens (a hard link fails if the name was taken
  meanwhile), not a check made minutes earlier; with --overwrite the old files are kept aside
  until every new one is in place. Publishing holds a lock on the folder, so two runs writing
  the same names never leave a WAV from one and a sidecar from the other.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import signal
from pathlib import Path
from typing import Callable, Iterator

from musicguide.errors import UserError

TEMP_SUFFIX = ".partial"
PUBLISHED: list[Path] = []
_UMASK = os.umask(0)  # read once (setting it is the only way), and put back at once
os.umask(_UMASK)  # every file this process published, for the message after an interrupt


def sidecar_path(path: Path) -> Path:
    """Where a saved result's sidecar goes: beside it, with .json."""
    return path.with_suffix(".json")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when two paths name the same file (through links, `..`, case-insensitive mounts, ...).

    Publishing uses it to refuse writing the output over its own input, which `overwrite` alone
    would allow.
    """
    first, second = Path(a), Path(b)
    try:
        if first.exists() and second.exists():
            return os.path.samefile(first, second)
        return first.resolve() == second.resolve()
    except (OSError, RuntimeError):  # a link loop (RuntimeError before Python 3.13): compare as written
        return first.absolute() == second.absolute()


def name_max(folder: Path) -> int:
    """The longest file name (bytes) the folder's file system takes."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def temporary_name(target: Path, tag: str = TEMP_SUFFIX) -> Path:
    """A hidden name beside `target`, short enough for the file system even when `target`'s own
    name is at its limit (the target's name is shortened inside it, never the target itself)."""
    budget = name_max(target.parent) - (2 + 8 + len(tag))
    stem = target.name.encode()[:budget].decode(errors="ignore")
    return target.with_name(f".{stem}.{secrets.token_hex(4)}{tag}")


def write_atomically(target: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Run `write(temporary)` on a file beside `target`, then rename it over `target`.

    Beside, so the rename stays on one file system and is atomic; created by `write` itself, so it
    gets the usual permissions (not mkstemp's 0600). On any failure the temporary file is removed
    and the exception propagates."""
    target = Path(target)
    temporary = temporary_name(target)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~_UMASK)  # some writers (safetensors) create files 0600
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(target: str | os.PathLike, text: str) -> None:
    write_atomically(target, lambda path: path.write_text(text))


def plain_reason(error: OSError, path: Path) -> str:
    """An OSError in words a user acts on."""
    reasons = {
        errno.ENOSPC: f"the disk holding {path.parent} is full",
        errno.EDQUOT: f"the disk quota for {path.parent} is used up",
        errno.EACCES: f"no permission to write in {path.parent}",
        errno.EPERM: f"no permission to write in {path.parent}",
        errno.EROFS: f"{path.parent} is on a read-only file system",
        errno.ENAMETOOLONG: f"the name {path.name!r} is too long for this file system",
        errno.ENOENT: (f"the folder {path.parent} does not exist" if not path.parent.is_dir()
                       else f"{path.parent} does not take new files (a special file system)"),
        errno.ENOTDIR: f"{path.parent} is not a folder",
        errno.EISDIR: f"{path} is a folder",
        errno.ELOOP: f"{path} is a symbolic link loop",
    }
    return reasons.get(error.errno, error.strerror or str(error))


def check_writable(target: Path, *, overwrite: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Everything that can be known before a run starts about writing `target`: its folder exists
    and takes new files, its name and temporary name fit the file system, it is not an input, and
    it does not exist (unless `overwrite`) or is at least a plain file that can be replaced."""

    folder = target.parent
    if not folder.is_dir():
        raise UserError(f"cannot write {target}: " + ("the folder does not exist" if not folder.exists()
                                                          else f"{folder} is not a folder"))
    limit = name_max(folder)
    if len(target.name.encode()) > limit:
        raise UserError(f"cannot write {target}: the name is {len(target.name.encode())} bytes and this "
                        f"file system allows at most {limit}")
    for source in inputs:
        if same_file(target, source):
            raise UserError(f"the output {target} would overwrite the input {source}", hint="choose another -o")
    if target.is_dir():
        raise UserError(f"cannot write {target}: it is a folder")
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise UserError(f"{target} exists; pass --overwrite to replace it")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {target}: no permission to write in {folder}")


def check_free_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise UserError(f"not enough disk space in {folder}: the outputs need about {needed / 1e6:.0f} MB "
                        f"and {free / 1e6:.0f} MB are free")


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM for a few system calls (they are delivered right after), so that
    publishing is never cut in half."""
    held = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on the folder, held while a run publishes into it."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): publishing is still no-clobber, just not serialised
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Outputs:
    """The files of one run: reserved up front, written under temporary names, published together.

    `reserve()` creates every temporary file at once, before any work, so an unwritable folder or
    an overlong name is found in the first second rather than after the sampling. `temporary(t)`
    is where to write target `t`. `publish()` moves them all into place under the folder lock, or
    raises and leaves the folder as it was. Used as a context manager, anything not published is
    removed on the way out, whatever the reason (error, Ctrl-C, SIGTERM)."""

    def __init__(self, targets: list[Path], *, overwrite: bool, inputs: tuple[Path, ...] = ()):
        if len(set(targets)) != len(targets):
            raise ValueError("duplicate output names")
        self.targets = [Path(t) for t in targets]
        self.overwrite = overwrite
        self.inputs = inputs
        self._temporary: dict[Path, Path] = {}
        self.published = False
        self.conflict: list[Path] = []

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, *exc) -> None:
        if not self.published:
            self.discard()

    def check(self) -> None:
        for target in self.targets:
            check_writable(target, overwrite=self.overwrite, inputs=self.inputs)

    def reserve(self) -> None:
        self.check()
        for target in self.targets:
            temporary = temporary_name(target)
            try:
                os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            except OSError as error:
                self.discard()
                raise UserError(f"cannot write {target}: {plain_reason(error, target)}") from error
            self._temporary[target] = temporary

    def temporary(self, target: Path) -> Path:
        return self._temporary[Path(target)]

    def write(self, target: Path, write: Callable[[Path], None]) -> None:
        """Fill the temporary file of `target`; a failed write leaves the folder unchanged."""
        try:
            write(self.temporary(target))
        except OSError as error:
            raise UserError(f"cannot write {target}: {plain_reason(error, target)}; nothing was written") from error

    def discard(self) -> None:
        for temporary in self._temporary.values():
            with contextlib.suppress(OSError):
                temporary.unlink()

    def publish(self) -> None:
        """All targets appear, or none change. Without overwrite a name that another program took
        since `check()` is left alone: this run's files are kept beside it and named in the error."""
        folders = sorted({t.parent.resolve() for t in self.targets})
        with signals_held(), contextlib.ExitStack() as locks:
            for folder in folders:
                locks.enter_context(folder_lock(folder))
            if self.overwrite:
                self._replace_all()
            else:
                self._link_all()
            self.published = True
            PUBLISHED.extend(self.targets)
        self.discard()

    def _link_all(self) -> None:
        """Publish each target with no-clobber; if any name is taken, take back the ones already
        published (their temporary files still hold them) and keep the whole unit aside."""
        done: list[tuple[Path, bool]] = []  # (target, whether its temporary file was moved, not linked)
        for target in self.targets:
            try:
                moved = _link_no_clobber(self._temporary[target], target)
            except OSError as error:
                for published, was_moved in reversed(done):
                    if was_moved:
                        os.rename(published, self._temporary[published])
                    else:
                        published.unlink()
                if isinstance(error, FileExistsError):
                    kept = self._keep_aside()
                    raise UserError(f"{target} was created by another program while this run worked; it was left "
                                    f"alone, and this run's result is in {', '.join(map(str, kept))}") from error
                raise UserError(f"cannot write {target}: {plain_reason(error, target)}; nothing was written") from error
            done.append((target, moved))

    def _keep_aside(self) -> list[Path]:
        """Move this run's finished files to fresh names beside their targets (same suffixes)."""
        tag = secrets.token_hex(3)
        kept = []
        for target in self.targets:
            aside = target.with_name(f"{target.stem}.conflict-{tag}{target.suffix}")
            os.replace(self._temporary[target], aside)
            kept.append(aside)
        self.published = True  # what remains is kept, not discarded
        return kept

    def _replace_all(self) -> None:
        backups: dict[Path, Path] = {}  # old files, linked aside until every new one is in place
        placed: list[Path] = []
        try:
            for target in self.targets:
                if target.exists():
                    backups[target] = temporary_name(target, ".old")
                    os.link(target, backups[target])
                os.replace(self._temporary[target], target)
                placed.append(target)
        except OSError as error:
            for target in placed:
                if target in backups:
                    os.replace(backups.pop(target), target)
                else:
                    target.unlink(missing_ok=True)
            for backup in backups.values():
                backup.unlink(missing_ok=True)
            raise UserError(f"cannot replace {target}: {plain_reason(error, target)}; nothing was changed") from error
        for backup in backups.values():
            backup.unlink(missing_ok=True)


def _link_no_clobber(source: Path, target: Path) -> bool:
    """Give `source` the name `target` unless `target` exists, as one atomic step (a hard link
    fails with EEXIST). The source keeps its name too, so that the caller can take the link back;
    file systems without hard links get renameat2(RENAME_NOREPLACE), which moves it (returns True)."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        _rename_no_replace(source, target)
        return True
    return False


def _rename_no_replace(source: Path, target: Path) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_noreplace = -100, 1
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOTSUP, "no atomic no-clobber rename on this system", str(target))
    if renameat2(at_fdcwd, os.fsencode(source), at_fdcwd, os.fsencode(target), rename_noreplace) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(target))
