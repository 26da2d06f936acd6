"""The entry point, for `musicguide` and `python -m musicguide` alike.

Signal handlers come first, before the heavy imports. While modules import (the first second or
two: torch), Ctrl-C or SIGTERM ends the process at once with one line: nothing has been written
yet, and an exception raised inside a library's import could be swallowed by it. From then on a
signal raises `Interrupted`, which unwinds the run like Ctrl-C so that its temporary files are
removed (SIGTERM from kill, timeout or docker stop included)."""

import os
import signal


def _exit_now(signum, frame):
    import sys

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


def main() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _exit_now)
    from musicguide.cli import main as run

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    run()


if __name__ == "__main__":
    main()
