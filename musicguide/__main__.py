"""The entry point, for `musicguide` and `python -m musicguide` alike.

Signal handlers come first, before the heavy imports. While modules import (the first second or
two: torch), Ctrl-C or SIGTERM ends the process at once with one line: nothing has been written
yet, and an exception raised inside a library's import could be swallowed by it. From then on a
signal raises `Interrupted`, which unwinds the run like Ctrl-C so that its temporary files are
removed (SIGTERM from kill, timeout or docker stop included)."""

import gc
import os
import signal
import sys


def _exit_now(signum, frame):
    from musicguide.errors import json_error, wants_json

    message = f"interrupted by {signal.Signals(signum).name}; no output was written"
    if wants_json(sys.argv[1:]):
        os.write(1, (json_error(message, 128 + signum) + "\n").encode())
    os.write(2, f"error: {message}\n".encode())
    os._exit(128 + signum)


def _interrupt(signum, frame):
    """The first signal unwinds the run. Any later one (a second Ctrl-C, a TERM after an INT) is
    ignored from here on, so that the cleanup, the line and the status are the first's, and no
    exception lands in an atexit hook. SIG_IGN, not a Python handler: at shutdown Python puts the
    default action back for its own handlers, and a late Ctrl-C would then kill the process."""
    from musicguide.errors import Interrupted

    for other in (signal.SIGINT, signal.SIGTERM):
        signal.signal(other, signal.SIG_IGN)
    raise Interrupted(signum)


def _keep_freed_memory() -> None:
    """Ask glibc to keep freed memory for reuse instead of handing it back to the system.

    By default glibc serves every temporary of 32 MiB or more with fresh `mmap` memory and unmaps
    it when freed, so each VAE encode or decode of a window pays about a million page faults, two
    thirds of its time on a CPU (../shared/docs/startup-profile.md). With mmap off and trimming
    only past 2 GiB, the README's one-step edit goes from 10.0 to 6.2 s on the 2-core CPU, for about
    a quarter more peak RSS (bench/edit_steps.py). The same as
    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=..., which must be set
    before the process starts. Anything but glibc (musl, macOS) is left as it is, and so is glibc
    with MUSICGUIDE_SYSTEM_MALLOC=1 (for a machine short of memory, and for the bench's baseline)."""
    import ctypes

    if not sys.platform.startswith("linux") or os.environ.get("MUSICGUIDE_SYSTEM_MALLOC") == "1":
        return
    try:
        # the process's own symbols, libc's among them: ctypes.util.find_library would run ldconfig
        # (10 ms, a sixth of `musicguide --help`)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    mallopt(m_mmap_max, 0)
    mallopt(m_trim_threshold, 2**31 - 1)


class _CollectAfterTorch:
    """A finder on `sys.meta_path` that turns the cyclic garbage collector back on once torch has
    imported, with everything made so far frozen (exempt from later collections), and then leaves.

    Importing torch makes about a million objects, and the collector walked all of them three times
    while it did: 0.27 s of collections in the README's one-step edit on the 2-core CPU (7 ms now),
    and more each time a later collection walked them again. Modules make little garbage worth the
    walk. (Rarer collections instead of none cost 0.07 s: each young object is still walked once.)
    A lookup that imports nothing (`importlib.util.find_spec("torch")`) leaves the finder in place.
    Every command imports torch but the quick answers (help, version, a parser error, `models
    list`), which end with the collector off."""

    def find_spec(self, name, path, target=None):
        if name != "torch":
            return None
        others = [f for f in sys.meta_path if f is not self and hasattr(f, "find_spec")]
        spec = next((s for f in others if (s := f.find_spec(name, path, target)) is not None), None)
        if spec is None or not hasattr(spec.loader, "exec_module"):
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            try:
                load(module)
            finally:
                self.leave()

        spec.loader.exec_module = exec_module
        return spec

    def leave(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        gc.freeze()
        gc.enable()

    @classmethod
    def install(cls) -> None:
        if "torch" not in sys.modules and gc.isenabled():
            gc.disable()
            sys.meta_path.insert(0, cls())


def main() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _exit_now)
    _keep_freed_memory()
    _CollectAfterTorch.install()
    from importlib import import_module

    from musicguide.cli.commands import command_modules
    from musicguide.cli.root import main as run

    for module in command_modules(sys.argv[1:]):  # registers the command on the app
        import_module(module)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    try:
        run()
    finally:
        # The run is over. Python's shutdown then collects garbage across every object torch made
        # (a third of a second on the 2-core CPU, a tenth of the README's one-step edit); frozen
        # objects are left to the process's end. Nothing else changes: exit handlers, flushing and
        # each module's teardown still run.
        gc.freeze()


if __name__ == "__main__":
    main()
