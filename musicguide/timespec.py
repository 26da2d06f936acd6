"""Times as users write them ("30", "1:05.250") and the sample and latent-frame indices behind them.

Three units meet in an edit: seconds (what the user types and reads), samples (what the audio
tensors are indexed by) and latent frames (what the diffusion model works on: one frame per
`hop` samples, the VAE's downsampling ratio). Conversions between them live here so that every
command rounds the same way.
"""

from __future__ import annotations

import math
import re

from musicguide.defaults import MAX_SECONDS
from musicguide.errors import BadArgument, UserError

# "S", "S.fff", "M:SS", "M:SS.fff", "H:MM:SS", "H:MM:SS.fff". Inside a colon form the minutes and
# seconds fields take exactly two digits, so "1:5" (1:05? 1:50?) is refused instead of guessed.
_TIME_PATTERN = re.compile(
    r"""
    (?:(?:(?P<hours>\d+):(?P<minutes_after_hours>\d{2}))|(?P<minutes>\d+)):(?P<seconds_in_minute>\d{2}(?:\.\d+)?)
    | (?P<seconds>\d+(?:\.\d+)?|\.\d+)
    """,
    re.VERBOSE,
)
TIME_FORMS = '"30", "30.5", "1:05", "1:05.250" or "1:02:03.5"'


# The shortest length a user may ask for: 44 samples at 44.1 kHz. Shorter ones round to nothing (a
# `continue --seconds 1e-9` would write an unchanged copy and call it done).
MIN_DURATION = 0.001


def check_duration(seconds: float, what: str) -> float:
    """A length a user gave (--seconds, --length): positive, finite, at most MAX_SECONDS."""
    check_seconds(seconds, what)
    if not seconds >= MIN_DURATION:
        raise BadArgument(f"{what} must be at least {MIN_DURATION * 1000:g} ms, got {seconds:g} s")
    return seconds


def check_seconds(seconds: float, what: str) -> float:
    """A duration or time a user gave: finite, not negative, at most MAX_SECONDS."""
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_SECONDS:
        raise BadArgument(f"{what} must be a number of seconds from 0 to {MAX_SECONDS:.0f} (100 hours), got {seconds:g}")
    return seconds


def parse_time(text: str, what: str = "time") -> float:
    """Seconds from a user-typed time; `what` names the option in error messages."""
    stripped = text.strip()
    match = _TIME_PATTERN.fullmatch(stripped)
    if match is None:
        raise UserError(f"{what} {text!r} is {_why_not_a_time(stripped)}", hint=f"write it as {TIME_FORMS}")
    if match["seconds"] is not None:
        return _bounded(float(match["seconds"]), text, what)
    seconds = float(match["seconds_in_minute"])
    if seconds >= 60:
        raise UserError(f"{what} {text!r} has {seconds:g} seconds; use less than 60 after a colon")
    if match["hours"] is None:
        return _bounded(int(match["minutes"]) * 60, text, what) + seconds
    minutes = int(match["minutes_after_hours"])
    if minutes >= 60:
        raise UserError(f"{what} {text!r} has {minutes} minutes; use less than 60 in h:mm:ss")
    return _bounded(int(match["hours"]) * 3600 + minutes * 60, text, what) + seconds


def _bounded(seconds: float | int, text: str, what: str) -> float:
    """Whole minutes and hours are Python integers of any size; the bound comes before float()."""
    if not seconds <= MAX_SECONDS:  # also catches inf
        shown = text if len(text) <= 24 else f"{text[:12]}…({len(text)} characters)"
        raise UserError(f"{what} {shown!r} is past {MAX_SECONDS / 3600:.0f} hours; no song is that long")
    return float(seconds)


def _why_not_a_time(text: str) -> str:
    """The most specific reason a string failed the pattern, for a message that helps."""
    if not text:
        return "empty"
    try:
        if not math.isfinite(float(text)):
            return "not a finite time"
    except ValueError:
        pass
    return "negative" if text.startswith("-") else "not a time"


def seconds_to_samples(seconds: float, sample_rate: int) -> int:
    """The nearest sample index to a time (halves round up, unlike Python's banker's round)."""
    if not math.isfinite(seconds):
        raise ValueError(f"time must be finite, got {seconds}")
    return math.floor(seconds * sample_rate + 0.5)


def format_time(seconds: float) -> str:
    """'m:ss.mmm' for messages and file names; minutes keep counting past 59 (75:00.000)."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format {seconds} as a time")
    # Round to whole milliseconds first so 59.9996 s becomes 1:00.000, never 0:60.000.
    milliseconds = math.floor(seconds * 1000 + 0.5)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    return f"{minutes}:{milliseconds // 1000:02d}.{milliseconds % 1000:03d}"


def whole_frames(samples: int, hop: int) -> int:
    """How many latent frames cover `samples` samples (a partial frame counts)."""
    return -(-samples // hop)


def samples_to_frames(start: int, end: int, hop: int) -> tuple[int, int]:
    """The smallest latent-frame range [f0, f1) whose samples cover [start, end).

    Frame f spans samples [f * hop, (f + 1) * hop), so the start rounds down and the end up: an
    edit never loses a sample to rounding, it only grows to whole frames.
    """
    _check_range(start, end, hop)
    return start // hop, whole_frames(end, hop)


def _check_range(start: int, end: int, hop: int) -> None:
    if hop <= 0:
        raise ValueError(f"hop must be positive, got {hop}")
    if not 0 <= start <= end:
        raise ValueError(f"need 0 <= start <= end, got [{start}, {end})")
