"""The one exception type a user is meant to read.

Anything raised as `UserError` is printed by the CLI as a single line (plus an optional hint)
and exits with status 2. Everything else is a bug and keeps its traceback (under --debug).
"""


class UserError(Exception):
    """Bad input, missing model, no network, ...: something the user can fix."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


def one_line(error: BaseException) -> str:
    """An exception's message on one line (a parser's may span several)."""
    return " ".join(str(error).split())


class BadArgument(UserError, ValueError):
    """A value the library refuses. Its message names the Python API's parameter in backticks
    (`start`, `loss_space`); the command line says the flag instead (`cli_wording`)."""


# The API's parameters that the command line spells as flags (`loss_space` -> --loss-space).
PARAMETERS = ("start", "end", "strength", "steps", "guidance", "sampler", "eta", "seed", "variations", "context",
              "loss_space", "consistency", "seconds", "length", "bars", "keep", "cfg", "prompt", "negative_prompt",
              "bpm", "downbeat", "beats_per_bar", "snap", "like", "toward", "away_from", "tagger", "match_level")


def cli_wording(message: str) -> str:
    """A library message as the command line says it: each `parameter` becomes its --flag."""
    import re

    return re.sub(r"`([a-z_]+)`", lambda m: "--" + m[1].replace("_", "-") if m[1] in PARAMETERS else m[0], message)


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM. A BaseException, like KeyboardInterrupt, so that no `except Exception`
    swallows it, but not a KeyboardInterrupt, which the CLI framework would turn into a silent exit."""

    def __init__(self, signum: int):
        import signal

        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum


def wants_json(argv: list[str]) -> bool:
    """Whether the command line asks for --json, read before (and whatever) the parser says, so
    that a parser error or an early Ctrl-C still prints its one JSON object."""
    for argument in argv:
        if argument == "--":
            return False
        if argument == "--json":
            return True
    return False


def json_error(message: str, code: int) -> str:
    import json

    return json.dumps({"ok": False, "error": message, "exit_code": code})
