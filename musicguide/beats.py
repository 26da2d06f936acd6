"""Bars and beats: a song's beat grid, and times written as bars ("b9") and beats ("b9.3").

A `BeatGrid` lists every beat of a song from 0 s to its end, the tempo, the meter (beats per bar)
and which beat is bar 1's first. Bars and beats are numbered from 1, as on a score or in a DAW:
`b9` is the first beat of bar 9, `b9.3` its third beat and `b9.2.5` halfway from beat 2 to beat 3.

The grid is found by `beat_tracking.track_beats`; this module reads and prints it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from musicguide.errors import UserError
from musicguide.timespec import format_time, parse_time

MAX_BEATS_PER_BAR = 16
# Bar 10**9 at 400 bpm is 19 years in; a longer number is a typo, and int() refuses 4300 digits.
MAX_BAR_DIGITS = 9
DEFAULT_BEATS_PER_BAR = 4

_BAR_PATTERN = re.compile(r"b(?P<bar>\d+)(?:\.(?P<beat>\d+(?:\.\d+)?))?", re.IGNORECASE)
BAR_FORMS = '"b9" (bar 9), "b9.3" (bar 9, beat 3) or "b9.2.5" (halfway from beat 2 to 3)'


@dataclass(frozen=True, eq=False)
class BeatGrid:
    """Every beat of a song, in seconds, and where its bars begin.

    `beats` covers the whole song, [0, duration]; `first_downbeat` is the index in it of bar 1's
    first beat (beats before it are a pickup). `tracked_span` is the stretch the tracker found
    beats in (None for a given grid): outside it the beats are extrapolated at the tempo.
    """

    tempo: float
    beats_per_bar: int
    beats: np.ndarray
    first_downbeat: int
    duration: float
    source: str
    meter_source: str  # "given", "detected", or "default" (too few beats to tell)
    tracked_span: tuple[float, float] | None = None
    downbeat_contrast: float | None = None

    @property
    def period(self) -> float:
        """Seconds per beat at the grid's tempo."""
        return 60.0 / self.tempo

    @property
    def downbeats(self) -> np.ndarray:
        """The first beat of bars 1, 2, ...: the last bar may be incomplete."""
        return self.beats[self.first_downbeat :: self.beats_per_bar]

    def bar_time(self, bar: int, beat: float = 1.0) -> float:
        """Seconds at bar `bar`, beat `beat` (both from 1; fractional beats lie between beats)."""
        label = f"bar {bar}" if beat == 1 else f"bar {bar} beat {beat:g}"
        if bar < 1:
            raise UserError(f"there is no {label}: bars are numbered from 1")
        if not 1 <= beat < self.beats_per_bar + 1:
            raise UserError(
                f"there is no {label}: beats are numbered from 1 and a bar has {self.beats_per_bar}",
                hint=f"beat {beat:g} of bar {bar} would be in another bar" if beat >= 1 else None,
            )
        seconds = self._time_at(self.first_downbeat + (bar - 1) * self.beats_per_bar + beat - 1)
        if seconds > self.duration:
            raise UserError(
                f"{label} would be at {format_time(seconds)}, past the end of the song ({format_time(self.duration)})",
                hint=f"the song has {len(self.downbeats)} bars at {self.tempo:.1f} bpm",
            )
        return seconds

    def bars_after(self, seconds: float, bars: float) -> float:
        """The time `bars` bars after `seconds`, following the grid (which may speed up or slow down)."""
        return self._time_at(self._index_at(seconds) + bars * self.beats_per_bar)

    def _time_at(self, index: float) -> float:
        """Seconds at a fractional index into `beats`: interpolated between beats, extrapolated at
        the tempo beyond them."""
        last = len(self.beats) - 1
        if index < 0:
            return float(self.beats[0] + index * self.period)
        if index > last:
            return float(self.beats[-1] + (index - last) * self.period)
        return float(np.interp(index, np.arange(len(self.beats)), self.beats))

    def _index_at(self, seconds: float) -> float:
        """The inverse of `_time_at`."""
        if seconds < self.beats[0]:
            return (seconds - self.beats[0]) / self.period
        if seconds > self.beats[-1]:
            return len(self.beats) - 1 + (seconds - self.beats[-1]) / self.period
        return float(np.interp(seconds, self.beats, np.arange(len(self.beats))))

    def to_dict(self) -> dict:
        """The grid for the JSON sidecar and `musicguide beats --json` (times in seconds, 0.1 ms)."""
        return {
            "source": self.source,
            "tempo_bpm": round(self.tempo, 3),
            "beats_per_bar": self.beats_per_bar,
            "meter_source": self.meter_source,
            "downbeat_contrast": None if self.downbeat_contrast is None else round(self.downbeat_contrast, 3),
            "duration": self.duration,
            "tracked_span": None if self.tracked_span is None else [round(t, 4) for t in self.tracked_span],
            "bars": len(self.downbeats),
            "beats": [round(float(t), 4) for t in self.beats],
            "downbeats": [round(float(t), 4) for t in self.downbeats],
        }


# ---- reading times ------------------------------------------------------------------------------


def parse_time_or_beat(text: str, what: str, grid: Callable[[], BeatGrid]) -> float:
    """Seconds from a time as `timespec.parse_time` reads it, or from a bar ("b9", "b9.3", "b9.2.5").

    `grid` is called only for a bar, so a command given plain seconds never tracks beats.
    """
    stripped = text.strip()
    match = _BAR_PATTERN.fullmatch(stripped)
    if match is None and stripped[:1] in ("b", "B"):
        raise UserError(f"{what} {text!r} is not a bar or beat", hint=f"write it as {BAR_FORMS}")
    if match is None:
        try:
            return parse_time(text, what)
        except UserError as error:
            hint = f"{error.hint}, or as a bar: {BAR_FORMS}" if error.hint else None
            raise UserError(error.message, hint=hint) from None
    if len(match["bar"]) > MAX_BAR_DIGITS:
        raise UserError(f"{what}: a bar number {len(match['bar'])} digits long is past the end of any song")
    bar, beat = int(match["bar"]), float(match["beat"] or 1)
    if bar < 1 or beat < 1:  # known without the grid: say so before tracking a whole song's beats
        label = f"bar {bar}" if beat == 1 else f"bar {bar} beat {beat:g}"
        raise UserError(f"{what} {stripped}: there is no {label}: bars and beats are numbered from 1")
    try:
        return grid().bar_time(bar, beat)
    except UserError as error:
        raise UserError(f"{what} {stripped}: {error.message}", hint=error.hint) from None


def snap(seconds: float, grid: BeatGrid) -> float:
    """The beat nearest to `seconds` (`--snap`)."""
    return float(grid.beats[np.argmin(np.abs(grid.beats - seconds))])


def format_grid(grid: BeatGrid) -> str:
    """The grid as `musicguide beats` prints it: a summary, then one line per bar."""
    if grid.source == "given":
        origin = "beats given (--bpm, --downbeat)"
    else:
        start, end = grid.tracked_span
        origin = f"beats tracked from {format_time(start)} to {format_time(end)}, extrapolated outside"
    contrast = "" if grid.downbeat_contrast is None else f", downbeat contrast {grid.downbeat_contrast:.2f}"
    meter = "the default: too few beats to tell" if grid.meter_source == "default" else grid.meter_source
    lines = [
        f"{grid.tempo:.2f} bpm, {grid.beats_per_bar} beats per bar ({meter}{contrast}), "
        f"{len(grid.downbeats)} bars; {origin}"
    ]
    if grid.first_downbeat > 0:
        lines.append(f"pickup  {_times(grid.beats[: grid.first_downbeat])}")
    for bar, start in enumerate(range(grid.first_downbeat, len(grid.beats), grid.beats_per_bar), 1):
        lines.append(f"bar {bar:<3d} {_times(grid.beats[start : start + grid.beats_per_bar])}")
    return "\n".join(lines)


def _times(seconds: np.ndarray) -> str:
    return "  ".join(format_time(float(t)) for t in seconds)
