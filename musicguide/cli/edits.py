"""The edit commands: infill, regenerate, loop, continue, transition, generate, restyle."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Callable, Iterator, Optional

import typer

from .. import runner
from ..errors import UserError
from ..runner import Common
from ..defaults import (DEFAULT_KEEP, DEFAULT_STRENGTH, GENERATE_SECONDS, RESTYLE_STRENGTH, TRANSITION_SECONDS,
                        check_strength)
from ..timespec import check_duration
from .app import err, out
from .options import STYLE_GUIDANCE, TaggerOpt, Tagger, edit_command


# ---- running an edit -------------------------------------------------------------------------------


@contextmanager
def _progress(quiet: bool, label: str) -> Iterator:
    """A rich progress bar over sampling steps; yields the sampler callback. Its total is the
    edit's own plan, which every step carries (runs × steps). The bar is transient and a summary
    line stays, so that an error ends on one line, not on a half-full bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    if quiet:
        yield None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(label, total=None, loss="")

        def callback(step) -> None:
            loss = "" if step.loss is None else f"d={step.loss:.4g}"
            progress.update(task, advance=1, loss=loss, total=step.runs * step.steps)

        yield callback
        done = progress.tasks[0]
    err.print(f"{label}: {done.completed:.0f}/{done.total or 0:.0f} steps in {done.elapsed:.1f} s")


def execute(plan, editor=None) -> runner.Run:
    """Run a checked edit (`options.EditPlan`) through the runner: outputs reserved, the model
    loaded (or `editor`, one an `api.Editor` already holds), written and published together."""
    common = plan.common
    quiet = common.quiet or common.as_json

    def say(text: str) -> None:
        if not quiet:
            err.print(text)

    return runner.run_edit(plan.verb, common, plan.inputs, plan.call, progress=lambda label: _progress(quiet, label),
                           say=say, plot=common.plot, timing=plan.timing, reads=plan.reads, editor=editor)


def report(verb: str, common: Common, run: runner.Run) -> None:
    """What a command prints when it is done: one JSON object with --json, else a line per file."""
    if common.as_json:
        print(json.dumps({"ok": True, "command": verb, "outputs": [
            {"path": o["path"], "sidecar": o["sidecar"], "seconds": o["seconds"],
             "flagged_seams": [s.to_dict() for s in o["seams"] if s.flagged]} for o in run.outputs]}))
    elif not common.quiet:
        for output in run.outputs:
            _report(output)


def _report(output: dict) -> None:
    from ..timespec import format_time

    saved = output["saved"]
    out.print(f"wrote {output['path']} ({format_time(output['seconds'])}, {saved.sample_rate} Hz, {saved.subtype}) "
              f"and {Path(output['sidecar']).name}")
    if saved.clipped:
        err.print(f"[yellow]warning: {saved.clipped} samples clipped (peak {saved.peak_db:.1f} dBFS); "
                  "use --format FLOAT to keep them[/yellow]")
    for seam in output["seams"]:
        if seam.flagged:
            err.print(f"[yellow]note: the seam at {format_time(seam.seconds)} changes level/timbre more than "
                      f"95% of the original does (level {seam.level_jump_db.value:.1f} dB, "
                      f"spectrum {seam.spectral_distance_db.value:.1f} dB); listen there[/yellow]")


# ---- commands ------------------------------------------------------------------------------------


@edit_command(beats=True)
def infill(
    song: Annotated[Path, typer.Argument(help="The song (any format libsndfile reads).")],
    start: Annotated[str, typer.Option(help="Start of the gap: seconds (30.5), m:ss(.ms), or a bar (b9, b9.3).")],
    end: Annotated[str, typer.Option(help="End of the gap.")],
) -> Callable:
    """Replace a stretch of the song with new music that fits what comes before and after."""
    return lambda editor, **options: editor.infill(song, start, end, **options)


@edit_command(beats=True)
def regenerate(
    song: Annotated[Path, typer.Argument(help="The song.")],
    start: Annotated[str, typer.Option(help="Start of the section: seconds, m:ss(.ms), or a bar (b9, b9.3).")],
    end: Annotated[str, typer.Option(help="End of the section.")],
    strength: Annotated[float, typer.Option(help="How much noise replaces the original (0 < k ≤ 1; 1 = infill).")] = DEFAULT_STRENGTH,
) -> Callable:
    """Redo a section as a variation of itself: it starts from a mix of noise and the original."""
    check_strength(strength)
    return lambda editor, **options: editor.regenerate(song, start, end, strength=strength, **options)


@edit_command(beats=True)
def loop(
    song: Annotated[Path, typer.Argument(help="The song.")],
    start: Annotated[str, typer.Option(help="Where the loop begins: seconds, m:ss(.ms), or a bar (b9).")],
    end: Annotated[Optional[str], typer.Option(help="Where it ends (or give --bars).")] = None,
    bars: Annotated[Optional[float], typer.Option(help="The loop's length in bars, from --start.")] = None,
    length: Annotated[Optional[float], typer.Option(help="Seconds at the loop's end to regenerate (default: a bar with --bars, else min(2 s, a quarter of the loop)).")] = None,
    strength: Annotated[float, typer.Option(help="How much noise replaces the original end (0 < k ≤ 1).")] = DEFAULT_STRENGTH,
) -> Callable:
    """Write a seamless loop of a region: its end is regenerated so that it flows back into its start."""
    check_strength(strength)
    return lambda editor, **options: editor.loop(song, start, end, bars=bars, length=length, strength=strength,
                                                 **options)


@edit_command("continue")
def continue_(
    song: Annotated[Path, typer.Argument(help="The song to continue.")],
    seconds: Annotated[float, typer.Option(help="How many seconds to add.")],
) -> Callable:
    """Add music after the end of the song, in overlapping chunks when it is longer than the model's window."""
    check_duration(seconds, "--seconds")
    return lambda editor, **options: editor.continue_(song, seconds, **options)


@edit_command()
def transition(
    first: Annotated[Path, typer.Argument(help="The track that plays first.")],
    second: Annotated[Path, typer.Argument(help="The track that follows.")],
    length: Annotated[float, typer.Option(help="Seconds of overlap the transition spans.")] = TRANSITION_SECONDS,
    strength: Annotated[float, typer.Option(help="How much noise replaces the plain crossfade (0 < k ≤ 1).")] = DEFAULT_STRENGTH,
) -> Callable:
    """Write a musical transition from one track into the next (their crossfade, regenerated)."""
    check_duration(length, "--length")
    check_strength(strength)
    return lambda editor, **options: editor.transition(first, second, length=length, strength=strength, **options)


@edit_command(fixed={"guidance": 0.0, "loss_space": "latent", "consistency": False, "context": None})
def generate(
    seconds: Annotated[float, typer.Option(help="Length in seconds (at most the model's window).")] = GENERATE_SECONDS,
) -> Callable:
    """New music from the model alone (no input, no guidance)."""
    check_duration(seconds, "--seconds")
    return lambda editor, **options: editor.generate(seconds, **options)


@edit_command(fixed={"loss_space": "audio"}, beats=True, guidance=STYLE_GUIDANCE)
def restyle(
    song: Annotated[Path, typer.Argument(help="The song.")],
    like: Annotated[Optional[list[Path]], typer.Option(help="Reference clip(s) whose style to move toward (embedding guidance).")] = None,
    toward: Annotated[Optional[list[str]], typer.Option(help="Tag(s) to push up, e.g. jazz (classifier guidance).")] = None,
    away_from: Annotated[Optional[list[str]], typer.Option(help="Tag(s) to push down.")] = None,
    strength: Annotated[float, typer.Option(help="How far to noise the input first (SDEdit t, 0 < k ≤ 1): higher = freer.")] = RESTYLE_STRENGTH,
    keep: Annotated[float, typer.Option(help="Step size of the input's log-mel envelope term (keeps rhythm and dynamics; 0: off).")] = DEFAULT_KEEP,
    match_level: Annotated[bool, typer.Option(help="Give the restyled region the input's RMS level (one gain, at most ±12 dB).")] = True,
    start: Annotated[Optional[str], typer.Option(help="Restyle only from here (default: the whole song, in windows).")] = None,
    end: Annotated[Optional[str], typer.Option(help="… up to here (default: the end).")] = None,
    tagger: TaggerOpt = Tagger.msd,
) -> Callable:
    """Steer a song toward the style of reference clips (--like) or toward/away from tags (--toward/--away-from)."""
    like, toward, away_from = like or [], toward or [], away_from or []
    if not (like or toward or away_from):
        raise UserError("restyle needs a target: --like CLIP, --toward TAG or --away-from TAG")
    check_strength(strength)
    return lambda editor, **options: editor.restyle(
        song, like=like, toward=toward, away_from=away_from, strength=strength, keep=keep, match_level=match_level,
        start=start, end=end, tagger=tagger.value, **options)
