"""A picture of an edit (`--plot`): spectrograms before and after, their levels, the region and seams.

Everything is drawn on the output's time axis. The input is placed on it at `offset` seconds
(0 for edits that keep the song in place; a continuation's output simply runs on past the
input's end; for a transition, the caller picks the song and offset to compare with), or left
out (`original=None`) when there is nothing to compare with.

matplotlib is an optional extra (`pip install -e '.[plot]'`), imported only here and only when a
picture is asked for. The figure is drawn on matplotlib's Agg canvas directly, never through
pyplot, so nothing global (backends, open figures) is touched.
"""

from __future__ import annotations

import math
import os
from typing import Iterable, Protocol

import numpy as np
from torch import Tensor

from musicguide.errors import UserError

FIGURE_INCHES = (12.0, 8.0)
DPI = 100
N_FFT, HOP, N_MELS = 2048, 512, 128
# The colour scale spans this many dB below the loudest bin of either spectrogram: enough for
# the quiet parts of real music, not so much that the noise floor fills the picture.
DYNAMIC_RANGE_DB = 80.0
# 50 ms level windows (every 10 ms): short enough to show a level step at a seam, long enough
# that a single waveform cycle of a bass note does not ripple the curve.
RMS_WINDOW_SECONDS, RMS_STEP_SECONDS = 0.050, 0.010
LEVEL_FLOOR_DB = -80.0
FREQUENCY_TICKS_HZ = (500, 1000, 2000, 5000, 10000)
SEAM_COLOUR, FLAGGED_SEAM_COLOUR = "#00c8ff", "red"
BEFORE_COLOUR, AFTER_COLOUR, REGION_COLOUR = "0.45", "tab:orange", "0.85"


class Seam(Protocol):
    """What a seam needs for the picture; `splice.SeamMetric` is one."""

    seconds: float

    @property
    def flagged(self) -> bool: ...


def require_matplotlib() -> None:
    """Raise the one-line error now, before a long edit, rather than after it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError(
            "--plot needs matplotlib, which is not installed", hint="install the 'plot' extra: pip install -e '.[plot]'"
        ) from None


def draw_edit(
    original: Tensor | None,
    edited: Tensor,
    sample_rate: int,
    *,
    offset: float = 0.0,
    region: tuple[float, float] | None = None,
    seams: Iterable[Seam] = (),
    title: str | None = None,
    time_origin: float = 0.0,
):
    """The matplotlib Figure of an edit, on the edited audio's time axis.

    `original` and `edited` are [channels, samples]; `offset` is where the original starts on the
    edited audio's time axis; `region` (seconds, on that axis) is shaded; each seam is a vertical
    line, red when it is flagged. `time_origin` is added to the tick labels: an excerpt that starts
    1:23 into a song is labelled in the song's time.
    """
    require_matplotlib()
    seams = list(seams)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGURE_INCHES, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    rows = 2 if original is None else 3
    axes = figure.subplots(rows, 1, sharex=True, height_ratios=[3] * (rows - 1) + [2])
    _draw_spectrograms(figure, axes[:-1], original, edited, sample_rate, offset)
    _draw_levels(axes[-1], original, edited, sample_rate, offset)
    for axis in axes:
        _mark_edit(axis, region, seams, on_spectrogram=axis is not axes[-1])
    axes[-1].set_xlim(0, edited.shape[-1] / sample_rate)
    axes[-1].xaxis.set_major_formatter(lambda seconds, _position=None: _minutes_and_seconds(seconds + time_origin))
    axes[-1].set_xlabel("time in the output (m:ss)")
    _legend(axes[-1], original is not None, region, seams)
    if title:
        figure.suptitle(title)
    return figure


def save_png(figure, path: str | os.PathLike) -> None:
    """Write `figure` as a FIGURE_INCHES x DPI PNG to `path` (for a caller that manages its own
    temporary files, such as the CLI's `Outputs`)."""
    figure.savefig(path, format="png", dpi=DPI)


def _draw_spectrograms(figure, axes, original, edited, sample_rate, offset) -> None:
    """Mel spectrograms on one dB scale (relative to the loudest bin of either), with Hz ticks."""
    signals = ([] if original is None else [("before", original, offset)]) + [("after", edited, 0.0)]
    powers = [_mel_power(audio, sample_rate) for _, audio, _ in signals]
    # Silence has no loudest bin; any positive reference then draws it all at the floor.
    reference = max(float(power.max()) for power in powers) or 1.0
    image = None
    for axis, (name, audio, start), power in zip(axes, signals, powers):
        levels = 10 * np.log10(np.maximum(power, reference * 1e-12) / reference)
        seconds = audio.shape[-1] / sample_rate
        image = axis.imshow(
            levels, origin="lower", aspect="auto", interpolation="nearest", cmap="magma",
            vmin=-DYNAMIC_RANGE_DB, vmax=0.0, extent=(start, start + seconds, 0, N_MELS),
        )
        axis.set_ylabel(f"{name}\nfrequency (Hz)")
        _frequency_ticks(axis, sample_rate)
    figure.colorbar(image, ax=axes, label="dB (re loudest)", pad=0.01, aspect=30)


def _mel_power(audio: Tensor, sample_rate: int) -> np.ndarray:
    import librosa

    mono = audio.detach().cpu().float().mean(dim=0).numpy()
    return librosa.feature.melspectrogram(y=mono, sr=sample_rate, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS)


def _frequency_ticks(axis, sample_rate: int) -> None:
    """Label the mel rows in Hz, at round frequencies."""
    import librosa

    centres = librosa.mel_frequencies(n_mels=N_MELS + 2, fmax=sample_rate / 2)[1:-1]
    ticks = [hz for hz in FREQUENCY_TICKS_HZ if hz < sample_rate / 2]
    axis.set_yticks(np.interp(ticks, centres, np.arange(N_MELS) + 0.5))
    axis.set_yticklabels([f"{hz // 1000}k" if hz >= 1000 else str(hz) for hz in ticks])


def _draw_levels(axis, original, edited, sample_rate, offset) -> None:
    """The level curves, on a scale that starts a little below the quietest moment (so a step of a
    few dB at a seam is visible) but never below LEVEL_FLOOR_DB."""
    quietest = 0.0
    curves = ([] if original is None else [(original, offset, BEFORE_COLOUR)]) + [(edited, 0.0, AFTER_COLOUR)]
    for audio, start, colour in curves:
        times, levels = _rms_curve(audio, sample_rate)
        axis.plot(times + start, levels, color=colour, linewidth=1.0)
        quietest = min(quietest, float(levels.min()))
    axis.set_ylim(bottom=max(LEVEL_FLOOR_DB, 10 * math.floor((quietest - 6) / 10)))
    axis.set_ylabel("RMS level (dBFS)")
    axis.grid(alpha=0.3)


def _rms_curve(audio: Tensor, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(window centres, RMS dBFS) over RMS_WINDOW_SECONDS windows, channels together, floored."""
    power = audio.detach().cpu().double().pow(2).mean(dim=0).numpy()
    window = max(1, round(RMS_WINDOW_SECONDS * sample_rate))
    step = max(1, round(RMS_STEP_SECONDS * sample_rate))
    cumulative = np.concatenate([[0.0], np.cumsum(power)])
    starts = np.arange(0, max(1, len(power) - window + 1), step)
    ends = np.minimum(starts + window, len(power))
    mean_power = (cumulative[ends] - cumulative[starts]) / (ends - starts)
    levels = 10 * np.log10(np.maximum(mean_power, 10 ** (LEVEL_FLOOR_DB / 10)))
    return (starts + ends) / 2 / sample_rate, levels


def _mark_edit(axis, region, seams, on_spectrogram: bool) -> None:
    """Shade the region (lighter on a spectrogram, grey on the level plot) and draw the seams."""
    if region is not None:
        colour, alpha = ("white", 0.18) if on_spectrogram else (REGION_COLOUR, 0.6)
        axis.axvspan(*region, facecolor=colour, alpha=alpha)
    for seam in seams:
        colour = FLAGGED_SEAM_COLOUR if seam.flagged else SEAM_COLOUR
        axis.axvline(seam.seconds, color=colour, linewidth=1.5, linestyle="--")


def _legend(axis, has_original: bool, region, seams) -> None:
    """One legend, on the level plot, naming only what is drawn."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], color=AFTER_COLOUR, label="after")]
    if has_original:
        handles.insert(0, Line2D([], [], color=BEFORE_COLOUR, label="before"))
    if region is not None:
        handles.append(Patch(facecolor=REGION_COLOUR, alpha=0.6, label="edited region"))
    if any(not seam.flagged for seam in seams):
        handles.append(Line2D([], [], color=SEAM_COLOUR, linestyle="--", label="seam"))
    if any(seam.flagged for seam in seams):
        handles.append(Line2D([], [], color=FLAGGED_SEAM_COLOUR, linestyle="--", label="flagged seam (listen here)"))
    axis.legend(handles=handles, loc="lower left", ncols=len(handles), fontsize="small", framealpha=0.9)


def _minutes_and_seconds(seconds: float, _position=None) -> str:
    """Tick labels as the CLI writes times: 1:05, or 1:05.5 between whole seconds."""
    minutes, rest = divmod(max(seconds, 0.0), 60)
    whole = math.isclose(rest, round(rest), abs_tol=1e-6)
    return f"{int(minutes)}:{round(rest):02d}" if whole else f"{int(minutes)}:{rest:04.1f}"
