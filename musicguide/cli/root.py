"""The app, its consoles, and `main`: everything that ends a run becomes one line and an
exit status (see docs/guarantees.md)."""

from __future__ import annotations

import os
import sys
import traceback
from difflib import get_close_matches
from typing import Annotated

import typer
from typer import _click as click  # typer's own copy of click: its exceptions are what the parser raises
from typer._click.utils import make_default_short_help
from typer.core import TyperGroup

from .. import __version__
from ..errors import Interrupted, UserError, cli_wording, json_error, wants_json
from .commands import COMMANDS


class Commands(TyperGroup):
    """The root group. It names the commands and says what each does from `COMMANDS`, not from the
    commands themselves: the entry point registers only the one it runs, so that `musicguide --help`
    imports no command module. The rows are click's own (its short-help rule at its width)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        """typer's, with its "Did you mean" drawn from every command, not only the registered ones
        (typer's own is off: `suggest_commands=False` below)."""
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.UsageError as error:
            matches = get_close_matches(args[0], list(COMMANDS)) if args else []
            if matches:
                error.message = f"{error.message.rstrip('.')}. Did you mean {', '.join(map(repr, matches))}?"
            raise

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        limit = formatter.width - 6 - max(map(len, COMMANDS))
        with formatter.section("Commands"):
            formatter.write_dl([(name, make_default_short_help(summary, limit)) for name, (_, summary) in COMMANDS.items()])


# rich_markup_mode None: click's plain help. typer's rich help imports rich's Markdown, markdown-it
# and pygments and renders panels: 0.12 s, three times Python's own start-up, on every --help.
app = typer.Typer(
    cls=Commands,
    suggest_commands=False,
    rich_markup_mode=None,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Edit real music with a latent diffusion model and guidance gradients: "
    "continue, infill, regenerate, transition, restyle, generate.",
)
models_app = typer.Typer(help=COMMANDS["models"][1], rich_markup_mode=None)
app.add_typer(models_app, name="models")
train_app = typer.Typer(help=COMMANDS["train"][1], rich_markup_mode=None)
app.add_typer(train_app, name="train")
_CONSOLES = {}


def _console(name: str):
    """The rich console `err` or `out`, made on first use: importing rich's console costs as much
    as Python's start-up, and `--help` never prints through one.
    soft_wrap: a line is never broken at the console's width (80 columns when piped), so that a
    script reading `wrote …` or a bar of `beats` gets it whole; a terminal wraps it itself."""
    if name not in _CONSOLES:
        from rich.console import Console

        _CONSOLES[name] = Console(stderr=name == "err", highlight=False, soft_wrap=True)
    return _CONSOLES[name]


def __getattr__(name: str):
    if name in ("err", "out"):
        return _console(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


DEFAULT_MODEL = os.environ.get("MUSICGUIDE_MODEL", "demo")


def _version(value: bool) -> None:
    if value:
        print(f"musicguide {__version__}")  # not through rich: its console costs more than the rest of --version
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks (the exit status stays the same).")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_version)] = False,
) -> None:
    """(--debug is read by `main` from the command line itself, so that an error found before this
    callback runs still shows its traceback; a parser's error never does, it is a typing mistake.)"""


# ---- errors: one line, one status -----------------------------------------------------------------


def main() -> None:
    """Runs the app and turns everything that ends it into one line and an exit status. torch is
    not imported here: `--help`, `--version` and parser errors answer before any command loads it."""
    # --json and --debug are known before parsing: a parser error prints its JSON object too
    argv = sys.argv[1:]
    how = {"debug": bool(os.environ.get("MUSICGUIDE_DEBUG")) or _root_flag(argv, "--debug"), "as_json": wants_json(argv)}
    try:
        code = app(standalone_mode=False)
    except UserError as error:  # the library names its parameters; the user typed flags
        _fail(cli_wording(str(error)), 2, error, **how)
    except click.exceptions.ClickException as error:
        _fail(_parser_message(error), 2, error, **{**how, "debug": False})  # a typing mistake has no traceback worth showing
    except typer.Abort as error:
        _fail("aborted", 1, error, **how)
    except MemoryError as error:
        _fail(_out_of_memory("CPU"), 2, error, **how)
    except Interrupted as error:
        from ..atomic import PUBLISHED

        what = "the outputs were already complete" if PUBLISHED else "no output was written"
        _fail(f"interrupted by {error.name}; {what}", error.exit_code, error, **how)
    except Exception as error:  # a bug, not bad input: keep it short unless asked
        if _is_cuda_out_of_memory(error):
            _fail(_out_of_memory("GPU"), 2, error, **how)
        _fail(f"internal error: {type(error).__name__}: {error} (run with --debug for the traceback)", 1, error, **how)
    sys.exit(code if isinstance(code, int) else 0)


def _out_of_memory(where: str) -> str:
    return (f"out of {where} memory; nothing was written (edit a shorter region, pass a smaller --context or fewer "
            "--variations, --loss-space latent, or --device cpu)")


def _is_cuda_out_of_memory(error: BaseException) -> bool:
    torch = sys.modules.get("torch")  # a CUDA error needs torch loaded; never import it just to ask
    return torch is not None and isinstance(error, torch.cuda.OutOfMemoryError)


def _parser_message(error: click.exceptions.ClickException) -> str:
    ctx = getattr(error, "ctx", None)
    if ctx is None:
        return error.format_message()
    names, parent = [], ctx  # the subcommands' names: the root's own is `python -m musicguide` when run so
    while parent.parent is not None:
        names.append(parent.info_name)
        parent = parent.parent
    see = f" (see {' '.join(['musicguide', *reversed(names)])} --help)"
    if hasattr(ctx.command, "list_commands") and error.format_message().rstrip(".") == "Missing command":
        # `musicguide` or `musicguide models` alone: say what is missing, in one line (help is a --help away)
        return f"missing a command: one of {', '.join(ctx.command.list_commands(ctx))}" + see
    return error.format_message() + see


def _root_flag(argv: list[str], flag: str) -> bool:
    """Whether `flag` is given before the command's name (the root's own options)."""
    for argument in argv:
        if not argument.startswith("-"):
            return False
        if argument == flag:
            return True
    return False


def _fail(message: str, code: int, cause: BaseException, *, debug: bool, as_json: bool) -> None:
    if debug:
        traceback.print_exception(cause)
    if as_json:
        print(json_error(message, code))
    _console("err").print(f"error: {message}", markup=False, soft_wrap=True)
    sys.exit(code)
