"""Cutting an edit window out of a long song, pasting the edited window back, and checking the seams.

The model edits a window of a few seconds; the song is minutes long. Only the region the user
asked to change should differ from the input: everything else is copied from the original
bit for bit, and the two meet through short equal-power crossfades. `seam_report` then measures
each join against the same measure taken all over the original, so "3.1 dB" comes with the
context that decides whether it is audible.

All positions are absolute sample indices into the original song.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

# 30 ms: a waveform step needs a few ms of fade to stop being a click, and anything past ~50 ms
# lets two different contents overlap long enough to smear attacks (audible flamming). 30 ms sits
# between, and is shorter than one Stable Audio latent frame (2048 samples, 46 ms), so the fade
# never reaches far into context the model saw only partly.
DEFAULT_FADE_SECONDS = 0.030


def fade_samples(sample_rate: int, seconds: float = DEFAULT_FADE_SECONDS) -> int:
    return round(seconds * sample_rate)


def equal_power_fades(n: int, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """(fade_out, fade_in) of length n with fade_out**2 + fade_in**2 == 1 (a quarter cos/sin cycle).

    Sampled at half-sample offsets, so the curves are mirror images of each other and neither
    reaches exactly 0 or 1 inside the fade: the samples just outside it are the pure signals.
    Equal power keeps the level constant when the two signals are uncorrelated (different music);
    for identical signals it bulges by up to +3 dB at the midpoint.
    """
    phase = (torch.arange(n, dtype=torch.float64) + 0.5) / n * (math.pi / 2)
    return torch.cos(phase).to(dtype), torch.sin(phase).to(dtype)


def cut_window(audio: Tensor, at: int, length: int) -> Tensor:
    """audio[:, at:at+length], padded with silence where the window runs past the end of the song
    (a continuation's window does)."""
    if at < 0 or length < 0:
        raise ValueError(f"need at >= 0 and length >= 0, got at={at}, length={length}")
    window = audio[:, at : at + length]
    return torch.nn.functional.pad(window, (0, length - window.shape[1]))


@dataclass(frozen=True)
class Spliced:
    """The spliced song, and where and how wide its seams are (fades may be clipped, see `splice`)."""

    audio: Tensor
    seams: list[int]
    left_fade: int
    right_fade: int


def correlation(a: Tensor, b: Tensor) -> float:
    """Normalised correlation Σab / sqrt(Σa² Σb²) of two equally long segments (0 if either is silent)."""
    a, b = a.double(), b.double()
    energy = (a.square().sum() * b.square().sum()).sqrt()
    return float((a * b).sum() / energy) if energy > 0 else 0.0


def crossfade(leaving: Tensor, arriving: Tensor) -> Tensor:
    """Crossfade from `leaving` to `arriving`, two [channels, n] segments of one span, with the fade
    law that keeps the level constant for their measured correlation ρ.

    With gains a = cos θ, b = sin θ the mix has power (1 + 2ρab) times the signals' (for equal
    powers): equal power is right for unrelated music (ρ = 0), but at a seam the edited side is
    often the VAE's reconstruction of the same audio, and with a phase-faithful VAE (ρ near 1) it
    bulges by up to 3 dB. Dividing both gains by sqrt(1 + 2ρab) removes the bulge at any ρ in
    [0, 1]: ρ = 0 is the equal-power fade, ρ = 1 the equal-gain (linear-sum) one."""
    fade_out, fade_in = equal_power_fades(leaving.shape[-1], torch.float64)
    rho = min(max(correlation(leaving, arriving), 0.0), 1.0)
    norm = (1 + 2 * rho * fade_out * fade_in).sqrt()
    return leaving * (fade_out / norm).to(leaving.dtype) + arriving * (fade_in / norm).to(arriving.dtype)


def splice(original: Tensor, edited: Tensor, at: int, edit_start: int, edit_end: int, fade: int) -> Spliced:
    """Paste `edited` (covering original samples [at, at + M)) into `original` over [edit_start, edit_end).

    Output = original outside [edit_start - fade, edit_end + fade), edited inside [edit_start,
    edit_end), and `crossfade`s in between (their law follows the two sides' correlation). The output is max(N, edit_end) long, so:

    * a continuation (edit_end > N: the window runs past the end) has only a left seam and the
      output is longer than the original;
    * an edit that starts at 0 has only a right seam, one that ends at or after N only a left one.

    A fade can only use edited samples that exist, so each fade is clipped to the edited context
    on its side of the edit (edit_start - at on the left, at + M - edit_end on the right) and to
    the original left on the right (N - edit_end). A clipped fade is shorter; with no context at
    all it becomes a hard cut. `Spliced.left_fade`/`right_fade` say what was used, so callers can
    warn. Seams are reported at the middle of each fade.
    """
    channels, length = original.shape
    window_end = at + edited.shape[1]
    if edited.shape[0] != channels:
        raise ValueError(f"edited has {edited.shape[0]} channels, original {channels}")
    if not 0 <= at <= edit_start <= edit_end <= window_end:
        raise ValueError(
            f"need 0 <= at <= edit_start <= edit_end <= at + M, got {at}, {edit_start}, {edit_end}, {window_end}"
        )
    if edit_start > length:
        raise ValueError(f"edit_start {edit_start} is past the end of the original ({length} samples)")
    if fade < 0:
        raise ValueError(f"fade must be >= 0, got {fade}")

    def edited_over(begin: int, end: int) -> Tensor:
        """The edited window's samples for original positions [begin, end)."""
        return edited[:, begin - at : end - at].to(original.dtype)

    output = torch.empty(channels, max(length, edit_end), dtype=original.dtype, device=original.device)
    output[:, :length] = original
    output[:, edit_start:edit_end] = edited_over(edit_start, edit_end)
    seams = []

    left_fade = min(fade, edit_start - at) if edit_start > 0 else 0
    if edit_start > 0:
        begin = edit_start - left_fade
        output[:, begin:edit_start] = crossfade(original[:, begin:edit_start], edited_over(begin, edit_start))
        seams.append(edit_start - left_fade // 2)

    right_fade = min(fade, window_end - edit_end, length - edit_end) if edit_end < length else 0
    if edit_end < length:
        end = edit_end + right_fade
        output[:, edit_end:end] = crossfade(edited_over(edit_end, end), original[:, edit_end:end])
        seams.append(edit_end + right_fade // 2)
    return Spliced(audio=output, seams=seams, left_fade=left_fade, right_fade=right_fade)


# ---- seam metrics -------------------------------------------------------------------------------

# 2048 samples (46 ms at 44.1 kHz) either side: long enough for a stable level and a spectrum with
# ~21 Hz bins, short enough that it describes the seam rather than the phrase around it.
SEAM_WINDOW = 2048
MEL_BANDS = 40
# Spectral bands more than 80 dB below the loudest one are floored there: their log level is
# noise, and without a floor near-silent bands would dominate the distance.
SPECTRAL_FLOOR_DB = 80.0
LEVEL_FLOOR = 1e-10
# A change under 1 dB (in level, or on average over the bands) is below the just-noticeable
# difference for level, so it is never flagged, even when the reference is so steady (a test tone)
# that its 95th percentile is a hair above zero.
MIN_FLAGGED_DB = 1.0
REFERENCE_POSITIONS = 200


@dataclass(frozen=True)
class SeamMeasure:
    """One measure at a seam, next to its distribution over the reference audio."""

    value: float
    reference_median: float
    reference_p95: float

    @property
    def flagged(self) -> bool:
        return self.value > self.reference_p95 and self.value > MIN_FLAGGED_DB


@dataclass(frozen=True)
class SeamMetric:
    """How much the audio changes across one seam, judged against how much the reference changes
    anywhere.

    `level_jump_db`: |difference| of RMS level (dB) between the windows before and after.
    `spectral_distance_db`: RMS over mel bands of the difference of their log energies (dB).
    `window` is the samples per side actually used (shorter near the ends of the audio).
    """

    position: int
    seconds: float
    window: int
    level_jump_db: SeamMeasure
    spectral_distance_db: SeamMeasure

    @property
    def flagged(self) -> bool:
        return self.level_jump_db.flagged or self.spectral_distance_db.flagged

    def to_dict(self) -> dict:
        return {**asdict(self), "flagged": self.flagged}


def _mel_filterbank(sample_rate: int, n_fft: int, bands: int) -> np.ndarray:
    """[bands, n_fft // 2 + 1] triangular filters evenly spaced on the HTK mel scale, each summing
    to 1 (so a band's value is the mean power in it). Built here rather than with librosa, whose
    filters module pulls in scipy.signal and costs seconds of start-up per CLI run; and every
    sidecar's seam measurements come from it, so a different filterbank would change what a given
    seed's sidecar says (tests/test_golden.py). The package's other mel filterbanks: librosa's for
    the evaluation metrics (evaluate/metrics.py, DAC's mel distance), and musicnn's, stored with
    its weights so that the tagger's front end matches the original bit for bit (musicnn.py)."""
    top_mel = 2595 * math.log10(1 + sample_rate / 2 / 700)
    edges_hz = 700 * (10 ** (np.linspace(0, top_mel, bands + 2) / 2595) - 1)
    bin_hz = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bin_hz - lower) / (centre - lower)
    falling = (upper - bin_hz) / (upper - centre)
    filters = np.clip(np.minimum(rising, falling), 0, None)
    return filters / filters.sum(axis=1, keepdims=True)


def _band_levels_db(segment: Tensor, mel_basis: np.ndarray, n_fft: int) -> np.ndarray:
    """Mel band energies (dB) of a [channels, n] segment, channels summed, Hann-windowed."""
    samples = segment.double().cpu().numpy()
    taper = np.hanning(samples.shape[1] + 2)[1:-1]
    power = (np.abs(np.fft.rfft(samples * taper, n=n_fft, axis=-1)) ** 2).sum(axis=0)
    levels = 10 * np.log10(mel_basis @ power + LEVEL_FLOOR)
    return np.maximum(levels, levels.max() - SPECTRAL_FLOOR_DB)


def _rms_db(segment: Tensor) -> float:
    return 10 * math.log10(segment.double().pow(2).mean().item() + LEVEL_FLOOR)


def _seam_measures(audio: Tensor, position: int, window: int, mel_basis: np.ndarray, n_fft: int) -> tuple[float, float]:
    """(level jump, spectral distance) between audio[:, p-w:p] and audio[:, p:p+w]."""
    before, after = audio[:, position - window : position], audio[:, position : position + window]
    level_jump = abs(_rms_db(after) - _rms_db(before))
    difference = _band_levels_db(after, mel_basis, n_fft) - _band_levels_db(before, mel_basis, n_fft)
    return level_jump, float(np.sqrt(np.mean(difference**2)))


def _reference_positions(length: int, window: int, avoid: list[int], count: int) -> list[int]:
    """`count` evenly spaced positions with a full window either side, at least two windows away
    from every position in `avoid` (so the seams under test never measure themselves)."""
    if length < 2 * window:
        return []
    candidates = np.unique(np.linspace(window, length - window, count).round().astype(int))
    return [int(p) for p in candidates if all(abs(p - a) >= 2 * window for a in avoid)]


def seam_report(
    audio: Tensor,
    sample_rate: int,
    seams: list[int],
    reference: Tensor | None = None,
    window: int = SEAM_WINDOW,
) -> list[SeamMetric]:
    """Measure each seam in `audio` and compare it with the same measure all over `reference`.

    `reference` is the original song (default: `audio` itself away from the seams). A seam whose
    level jump or spectral distance is above the reference's 95th percentile (and above 1 dB) is
    flagged: about 1 in 10 positions of natural music is flagged too (two measures at 5% each), so
    a flag means "look here", not "broken". Seams nearer than `window` to an end of the audio use
    shorter windows on both sides, which makes their values noisier than the reference's.
    """
    length = audio.shape[1]
    for position in seams:
        if not 0 < position < length:
            raise ValueError(f"seam {position} is not inside the audio (0, {length})")
    n_fft = window
    mel_basis = _mel_filterbank(sample_rate, n_fft, MEL_BANDS)

    source = audio if reference is None else reference
    avoid = seams if reference is None else []
    positions = _reference_positions(source.shape[1], window, avoid, REFERENCE_POSITIONS)
    if len(positions) < 20:
        raise ValueError(f"reference audio too short for a seam distribution: {source.shape[1]} samples")
    reference_values = np.array([_seam_measures(source, p, window, mel_basis, n_fft) for p in positions])
    median = np.median(reference_values, axis=0)
    p95 = np.percentile(reference_values, 95, axis=0)

    report = []
    for position in seams:
        side = min(window, position, length - position)
        level_jump, spectral = _seam_measures(audio, position, side, mel_basis, n_fft)
        report.append(
            SeamMetric(
                position=position,
                seconds=position / sample_rate,
                window=side,
                level_jump_db=SeamMeasure(level_jump, float(median[0]), float(p95[0])),
                spectral_distance_db=SeamMeasure(spectral, float(median[1]), float(p95[1])),
            )
        )
    return report
