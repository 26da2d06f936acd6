"""The edit commands: infill, regenerate, loop, continue, transition, generate, restyle. Each parses
its own options and returns the `api.Editor` call to make; `options.edit_command` checks them and
`running` runs the call."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from ..api import Editor
from ..defaults import DEFAULT_KEEP, DEFAULT_STRENGTH, GENERATE_SECONDS, RESTYLE_STRENGTH, TRANSITION_SECONDS
from ..options import check_strength, check_style_target
from ..timespec import check_duration
from .options import STYLE_GUIDANCE, TaggerOpt, Tagger
from .options import edit_command as register_edit

# every edit command runs on an editor of the Python API
edit_command = partial(register_edit, open_editor=Editor.from_pretrained)


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
    check_style_target(like, toward, away_from)
    check_strength(strength)
    return lambda editor, **options: editor.restyle(
        song, like=like, toward=toward, away_from=away_from, strength=strength, keep=keep, match_level=match_level,
        start=start, end=end, tagger=tagger.value, **options)
