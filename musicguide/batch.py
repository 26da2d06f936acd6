"""`musicguide batch`'s jobs file: one edit command's arguments a line, all checked before any job runs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import UserError

EDIT_COMMANDS = ("infill", "regenerate", "continue", "transition", "generate", "restyle", "loop")
# the batch's own options (`cli.running.CommandOptions`' names), given once to `musicguide batch`, never in a job
BATCH_OPTIONS = {"model": "--model", "device": "--device", "precision": "--precision", "quiet": "--quiet",
                 "as_json": "--json"}


@dataclass(frozen=True)
class Job:
    line: int
    args: tuple[str, ...]


def read_jobs(path: Path, parse: Callable[[tuple[str, ...]], set[str]]) -> list[Job]:
    """JOBS.jsonl: one `{"args": [...]}` a line, the arguments of one edit command as typed.
    Every line is checked before any job runs; a bad one is an error naming its line. `parse`
    parses a job's arguments as its command would (a parser error raises) and returns the names
    of the options it gives, in whatever spelling (`-mdemo`, `--model=demo`, `-qm demo`)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read the jobs file {path}: {getattr(error, 'strerror', None) or error}") from error
    jobs = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            jobs.append(Job(number, _job_args(path, number, line, parse)))
    if not jobs:
        raise UserError(f"{path} holds no jobs", hint='one {"args": ["infill", "a.wav", "--start", "1", "--end", "2"]} a line')
    return jobs


def _job_args(path: Path, number: int, line: str, parse: Callable[[tuple[str, ...]], set[str]]) -> tuple[str, ...]:
    where = f"{path}, line {number}"
    try:
        job = json.loads(line)
    except json.JSONDecodeError as error:
        raise UserError(f"{where}: not JSON ({error.msg})") from error
    args = job.get("args") if isinstance(job, dict) else None
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
        raise UserError(f'{where}: expected {{"args": ["COMMAND", ...]}} with string arguments')
    if args[0] not in EDIT_COMMANDS:
        raise UserError(f"{where}: {args[0]!r} is not an edit command ({', '.join(EDIT_COMMANDS)})")
    try:
        given = parse(tuple(args))
    except UserError as error:
        raise UserError(f"{where}: {error}") from error
    if "help" in given:
        raise UserError(f"{where}: --help asks for help, not an edit; run `musicguide {args[0]} --help` alone")
    own = [option for name, option in BATCH_OPTIONS.items() if name in given]
    if own:
        raise UserError(f"{where}: {own[0]} is the batch's own option; give it once to `musicguide batch`")
    return tuple(args)
