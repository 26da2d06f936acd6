"""The `musicguide` command line: options → `api.Editor`, run by `running` → files, and one-line errors.

Every user mistake is a `UserError`, printed as one line (exit status 2); so are the parser's
errors, running out of memory and a destination that cannot be written. Ctrl-C and SIGTERM end a
run with nothing written (exit 130 and 143). `--debug` adds the traceback, never changes the status.

`app` holds the typer app and `main`, `options` the shared options and `edit_command`, `edits` the
edit commands and `tools` the rest (tags, batch, beats, train, evaluate, models). Importing the
package registers every command.
"""

from . import edits, tools  # noqa: F401  (registers the commands, in this order)
from .app import app, main

__all__ = ["app", "main"]
