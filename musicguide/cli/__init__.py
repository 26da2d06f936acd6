"""The `musicguide` command line: options → `api.Editor`, run by `running` → files, and one-line errors.

Every user mistake is a `UserError`, printed as one line (exit status 2); so are the parser's
errors, running out of memory and a destination that cannot be written. Ctrl-C and SIGTERM end a
run with nothing written (exit 130 and 143). `--debug` adds the traceback, never changes the status.

`root` holds the typer `app` and `main`; `options` the shared options and the edit commands'
decorator; `running` runs an edit's plan and reports it. The commands are in `edits` (the edits),
`tools` (tags, batch, beats, train, models) and `evaluation` (evaluate): importing one registers
its commands, and `COMMANDS` lists them in the order `--help` shows them. Asking this package for
`app` or `main` registers them all.
"""

from importlib import import_module

COMMANDS = ("musicguide.cli.edits", "musicguide.cli.tools", "musicguide.cli.evaluation")
# Each public name and the module that defines it, imported on first use (with every command module,
# so that the app has its commands).
_HOME = {
    "app": "musicguide.cli.root",
    "main": "musicguide.cli.root",
    "edits": "musicguide.cli.edits",
    "tools": "musicguide.cli.tools",
    "evaluation": "musicguide.cli.evaluation",
}
__all__ = ["app", "main"]


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for module in COMMANDS:
        import_module(module)
    module = import_module(_HOME[name])
    return module if module.__name__ == f"{__name__}.{name}" else getattr(module, name)
