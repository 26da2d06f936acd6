"""The entry point, for `musicguide` and `python -m musicguide` alike.

Signal handlers come first, before the heavy imports. While modules import (the first second or
two: torch), Ctrl-C or SIGTERM ends the process at once with one line: nothing has been written
yet, and an exception raised inside a library's import could be swallowed by it. From then on a
signal raises `Interrupted`, which unwinds the run like Ctrl-C so that its temporary files are
removed (SIGTERM from kill, timeout or docker stop included)."""

import os
import signal


def _exit_now(signum, frame):
    os.write(2, f"error: interrupted by {signal.Signals(signum).name}; no output was written\n".encode())
    os._exit(128 + signum)


def _interrupt(signum, frame):
    from musicguide.errors import Interrupted

    raise Interrupted(signum)


def main() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _exit_now)
    from musicguide.cli import main as run

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    run()


if __name__ == "__main__":
    main()
