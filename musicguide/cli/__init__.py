"""The `musicguide` command line: options → `api.Editor`, run by `running` → files, and one-line errors.

Every user mistake is a `UserError`, printed as one line (exit status 2); so are the parser's
errors, running out of memory and a destination that cannot be written. Ctrl-C and SIGTERM end a
run with nothing written (exit 130 and 143). `--debug` adds the traceback, never changes the status.

`root` holds the typer `app` and `main`; `options` the shared options and the edit commands'
decorator; `running` runs an edit's plan and reports it. The commands are in `edits` (the edits),
`tools` (tags, batch, beats, train, models) and `evaluation` (evaluate): importing one registers
its commands. `commands.COMMANDS` names each command, its module and what `--help` says of it, so
that the entry point imports only the module of the command it runs, and `musicguide --help` none
(each pulls in the API: a third of a second). Asking this package for `app` or `main` registers
them all.
"""

from musicguide import lazy_exports

_HOME = {"app": "musicguide.cli.root", "main": "musicguide.cli.root"}
__all__ = ["app", "main"]


def __getattr__(name: str):
    from musicguide.cli.commands import MODULES

    return lazy_exports(__name__, _HOME, first=MODULES)(name)
