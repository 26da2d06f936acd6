"""The entry point, for `musicguide` and `python -m musicguide` alike.

Signal handlers come first, before the heavy imports: Ctrl-C during the first second (while
torch loads) then prints one line instead of a traceback, and SIGTERM (kill, timeout, docker
stop) unwinds like Ctrl-C, so temporary files are removed and nothing half-written is left."""

import signal
import sys


def _interrupt(signum, frame):
    from musicguide.errors import Interrupted

    raise Interrupted(signum)


def main() -> None:
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        from musicguide.cli import main as run
    except BaseException as error:  # noqa: BLE001 - only an interrupt can land here in practice
        if type(error).__name__ != "Interrupted":
            raise
        print(f"error: interrupted by {error.name}; no output was written", file=sys.stderr)
        sys.exit(error.exit_code)
    run()


if __name__ == "__main__":
    main()
