"""Finding a song's beat grid (`track_beats`).

The grid comes either from the user (`--bpm` and `--downbeat`: a strict grid, nothing analysed
but the meter when it is not given) or from the audio:

* beats: librosa's dynamic-programming beat tracker (Ellis 2007) on its usual onset envelope,
  then each beat moved onto the attack nearest to it in a finer envelope (2.9 ms frames), because
  the tracker's frames are 11.6 ms long and lag a sharp attack by one of them (measured on clicks);
  beats before the first and after the last one tracked are extrapolated at the tempo;
* tempo: the mean of the regular beat intervals (or `--bpm`);
* meter and downbeats: librosa has no downbeat tracker. Downbeats are usually louder, carry the
  bass and are where chords change, so every beat gets four measures of that (level, bass level,
  onset strength, chroma change); each is standardised over the song, and the meter (4 or 3) and
  the phase whose beats stand out most from the others win. 4 wins unless 3 stands out clearly
  more (`TRIPLE_METER_MARGIN`): most popular music is in 4, and with weak accents the two are a
  coin toss. `downbeat_contrast` says how clear the choice was; on orchestral music it is often a
  guess (see docs/beats.md), which is what `--downbeat` and `beats_per_bar` are for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from musicguide.beats import DEFAULT_BEATS_PER_BAR, MAX_BEATS_PER_BAR, BeatGrid
from musicguide.errors import UserError
from musicguide.options import probe_input
from musicguide.timespec import format_time

MIN_BPM, MAX_BPM = 20.0, 400.0
# librosa's usual frame at 44.1 kHz for the tracker, and a 4x finer one for placing the beats.
TRACKER_HOP_SECONDS = 512 / 44100
FINE_HOP_SECONDS = 128 / 44100
# The tracker's beats lag the attack by up to ~16 ms on clicks; search a little wider than that,
# but well under the 107 ms between sixteenth notes at 140 bpm, so a beat never jumps to its
# neighbour's note.
ATTACK_SEARCH_SECONDS = 0.025
# A beat interval off the median one by more than this fraction is irregular. The tracker's first
# and last beats are pulled around by the ends of the audio (one 120 ms early on a 96 bpm click
# track), so irregular intervals at the ends are dropped (those beats are extrapolated instead),
# and irregular intervals anywhere are left out of the tempo.
IRREGULAR_INTERVAL = 0.15
# A beat's level is measured from just before its attack over the note's start: 80 ms is shorter
# than a sixteenth note up to 187 bpm, so the next note rarely leaks in.
LEVEL_WINDOW_SECONDS = (-0.010, 0.070)
BASS_HZ = 200.0
# How much more (in standard deviations of the beat measures) triple meter must stand out than
# quadruple to win: clicks in 3 give ~1.4 against ~0.1, orchestral clips 0.1-0.4 either way.
TRIPLE_METER_MARGIN = 0.3
LEVEL_FLOOR = 1e-10


# ---- finding the grid ---------------------------------------------------------------------------


def track_beats(
    audio,
    sample_rate: int,
    bpm: float | None = None,
    downbeat: float | None = None,
    beats_per_bar: int | None = None,
) -> BeatGrid:
    """The beat grid of `audio` ([channels, samples] or [samples], tensor or array).

    `bpm` alone fixes the tempo and tracks the beats' phase; `downbeat` alone (seconds) makes the
    beat nearest to it bar 1; both give a strict grid at that tempo with bar 1 at `downbeat`.
    `beats_per_bar` fixes the meter; otherwise it is 4 or 3, whichever the accents support. With
    all three given the audio is not analysed at all.
    """
    mono = _mono(audio)
    duration = len(mono) / sample_rate
    _check_grid_options(bpm, downbeat, beats_per_bar, duration)
    all_given = bpm is not None and downbeat is not None and beats_per_bar is not None
    onsets = None if all_given else _Onsets.of(mono, sample_rate)
    if bpm is not None and downbeat is not None:
        tempo, tracked_span = bpm, None
        beats = _strict_grid(60.0 / bpm, downbeat, duration)
    else:
        tracked = _tracked_beats(mono, sample_rate, bpm, onsets)
        tempo, tracked_span = bpm if bpm is not None else _tempo(tracked), (float(tracked[0]), float(tracked[-1]))
        beats = _extend(tracked, 60.0 / tempo, duration)
    fixed_downbeat = None if downbeat is None else int(np.argmin(np.abs(beats - downbeat)))
    if all_given:
        meter, first, contrast, meter_source = beats_per_bar, fixed_downbeat, None, "given"
    else:
        accent = _accent(mono, sample_rate, beats, onsets)
        meter, first, contrast, meter_source = _meter_and_downbeat(accent, beats_per_bar, fixed_downbeat)
    return BeatGrid(
        tempo=float(tempo),
        beats_per_bar=meter,
        beats=beats,
        first_downbeat=first,
        duration=duration,
        source="tracked" if tracked_span is not None else "given",
        meter_source=meter_source,
        tracked_span=tracked_span,
        downbeat_contrast=contrast,
    )


def _mono(audio) -> np.ndarray:
    samples = np.asarray(audio, dtype=np.float32)
    if samples.ndim not in (1, 2) or samples.shape[-1] == 0:
        raise ValueError(f"expected non-empty [channels, samples] or [samples] audio, got shape {samples.shape}")
    return samples.mean(axis=0) if samples.ndim == 2 else samples


def _check_grid_options(bpm: float | None, downbeat: float | None, beats_per_bar: int | None, duration: float) -> None:
    if bpm is not None and not (math.isfinite(bpm) and MIN_BPM <= bpm <= MAX_BPM):
        raise UserError(f"--bpm must be between {MIN_BPM:g} and {MAX_BPM:g}, got {bpm:g}")
    if downbeat is not None and not (math.isfinite(downbeat) and 0 <= downbeat < duration):
        raise UserError(
            f"--downbeat must be a time inside the song (0 to {format_time(duration)}), got {downbeat:g} s"
        )
    if beats_per_bar is not None and not 1 <= beats_per_bar <= MAX_BEATS_PER_BAR:
        raise UserError(f"--beats-per-bar must be between 1 and {MAX_BEATS_PER_BAR}, got {beats_per_bar}")


def _strict_grid(period: float, anchor: float, duration: float) -> np.ndarray:
    """Every `period` seconds through `anchor`, from the first one at or after 0 to the end."""
    first = -math.floor(anchor / period)
    last = math.floor((duration - anchor) / period)
    # The clip only undoes rounding (a beat at -1e-16 s), which would put a beat outside the song.
    return np.clip(anchor + np.arange(first, last + 1) * period, 0.0, duration)


def _extend(tracked: np.ndarray, period: float, duration: float) -> np.ndarray:
    """The tracked beats with the grid continued at `period` back to 0 and on to `duration`."""
    before = tracked[0] - period * np.arange(math.floor(tracked[0] / period), 0, -1)
    after = tracked[-1] + period * np.arange(1, math.floor((duration - tracked[-1]) / period) + 1)
    return np.clip(np.concatenate([before, tracked, after]), 0.0, duration)


def _tempo(beats: np.ndarray) -> float:
    """Beats per minute from the mean of the regular beat intervals.

    The mean over consecutive intervals telescopes, so it is far finer than the 2.9 ms the beats
    are placed to; irregular intervals (a beat the tracker skipped, or a stretch where it slipped
    by half a beat) are left out rather than allowed to pull the tempo."""
    intervals = np.diff(beats)
    return 60.0 / float(intervals[_regular(intervals)].mean())


def _regular(intervals: np.ndarray) -> np.ndarray:
    """Which intervals are within IRREGULAR_INTERVAL of the median one."""
    median = np.median(intervals)
    return np.abs(intervals - median) <= IRREGULAR_INTERVAL * median


@dataclass(frozen=True)
class _Onsets:
    """A fine (FINE_HOP_SECONDS) log-mel analysis of the song, shared by beat placement and accents."""

    times: np.ndarray
    mel: np.ndarray
    flux: np.ndarray

    @classmethod
    def of(cls, mono: np.ndarray, sample_rate: int) -> _Onsets:
        import librosa

        hop = max(1, round(FINE_HOP_SECONDS * sample_rate))
        mel = librosa.feature.melspectrogram(y=mono, sr=sample_rate, n_fft=8 * hop, hop_length=hop, n_mels=64)
        flux = librosa.onset.onset_strength(S=librosa.power_to_db(mel), sr=sample_rate)
        return cls(times=librosa.times_like(mel, sr=sample_rate, hop_length=hop), mel=mel, flux=flux)

    def attack_near(self, beat: float) -> float:
        """The strongest onset within ATTACK_SEARCH_SECONDS of `beat` (the beat itself if none)."""
        near = self._near(beat)
        if len(near) == 0 or self.flux[near].max() <= 0:
            return beat
        return float(self.times[near[np.argmax(self.flux[near])]])

    def strength_near(self, beat: float) -> float:
        near = self._near(beat)
        return float(self.flux[near].max()) if len(near) else 0.0

    def _near(self, beat: float) -> np.ndarray:
        return np.flatnonzero(np.abs(self.times - beat) <= ATTACK_SEARCH_SECONDS)


def _tracked_beats(mono: np.ndarray, sample_rate: int, bpm: float | None, onsets: _Onsets) -> np.ndarray:
    """Beat times (s) from librosa's tracker, each moved onto its attack, irregular end beats dropped."""
    import librosa

    hop = max(1, round(TRACKER_HOP_SECONDS * sample_rate))
    envelope = librosa.onset.onset_strength(y=mono, sr=sample_rate, hop_length=hop)
    _, frames = librosa.beat.beat_track(onset_envelope=envelope, sr=sample_rate, hop_length=hop, bpm=bpm)
    beats = librosa.frames_to_time(frames, sr=sample_rate, hop_length=hop)
    if len(beats) < 4:
        raise UserError(
            f"found {len(beats)} beats in the song, too few for a grid",
            hint="give the tempo and the first downbeat with --bpm and --downbeat",
        )
    return _drop_irregular_ends(np.unique([onsets.attack_near(beat) for beat in beats]))


def _drop_irregular_ends(beats: np.ndarray) -> np.ndarray:
    regular = _regular(np.diff(beats))
    first, last = np.argmax(regular), len(regular) - np.argmax(regular[::-1])
    return beats[first : last + 1] if regular.any() and last - first >= 3 else beats


# ---- meter and downbeats ------------------------------------------------------------------------


def _meter_and_downbeat(
    accent: np.ndarray, beats_per_bar: int | None, fixed_downbeat: int | None
) -> tuple[int, int, float | None, str]:
    """(beats per bar, index of bar 1's downbeat, downbeat contrast or None when too few beats,
    where the meter came from: "given", "detected", or "default" when too few beats to tell).

    Without a fixed downbeat, bar 1 is the earliest beat of the winning phase, so the pickup
    before it is shorter than a bar.
    """
    meter = beats_per_bar or DEFAULT_BEATS_PER_BAR
    source = "given" if beats_per_bar is not None else "detected"
    if len(accent) < 2 * max(meter, 3):
        return (meter, 0 if fixed_downbeat is None else fixed_downbeat, None,
                source if beats_per_bar is not None else "default")
    phase, contrast = _best_phase(accent, meter, fixed_downbeat)
    if beats_per_bar is None:
        triple_phase, triple_contrast = _best_phase(accent, 3, fixed_downbeat)
        if triple_contrast > contrast + TRIPLE_METER_MARGIN:
            meter, phase, contrast = 3, triple_phase, triple_contrast
    return meter, fixed_downbeat if fixed_downbeat is not None else phase, contrast, source


def _best_phase(accent: np.ndarray, meter: int, fixed_downbeat: int | None) -> tuple[int, float]:
    """(phase, contrast): the beats i ≡ phase (mod meter) whose mean accent most exceeds the others'."""
    phases = range(meter) if fixed_downbeat is None else (fixed_downbeat % meter,)
    contrasts = {}
    for phase in phases:
        chosen = np.zeros(len(accent), dtype=bool)
        chosen[phase::meter] = True
        contrasts[phase] = float(accent[chosen].mean() - accent[~chosen].mean())
    phase = max(contrasts, key=contrasts.get)
    return phase, contrasts[phase]


def _accent(mono: np.ndarray, sample_rate: int, beats: np.ndarray, onsets: _Onsets) -> np.ndarray:
    """How downbeat-like each beat is: the mean of four standardised measures (see the module doc)."""
    import librosa

    bass_bands = librosa.mel_frequencies(n_mels=onsets.mel.shape[0] + 2, fmax=sample_rate / 2)[1:-1] < BASS_HZ
    measures = [
        _levels_db(onsets.mel.sum(axis=0), onsets.times, beats),
        _levels_db(onsets.mel[bass_bands].sum(axis=0), onsets.times, beats),
        np.array([onsets.strength_near(beat) for beat in beats]),
        _chroma_change(mono, sample_rate, beats),
    ]
    return np.mean([_standardised(measure) for measure in measures], axis=0)


def _levels_db(power: np.ndarray, times: np.ndarray, beats: np.ndarray) -> np.ndarray:
    """The level (dB) of `power` over LEVEL_WINDOW_SECONDS around each beat."""
    levels = []
    for beat in beats:
        inside = (times >= beat + LEVEL_WINDOW_SECONDS[0]) & (times < beat + LEVEL_WINDOW_SECONDS[1])
        levels.append(10 * math.log10((power[inside].mean() if inside.any() else 0.0) + LEVEL_FLOOR))
    return np.array(levels)


def _chroma_change(mono: np.ndarray, sample_rate: int, beats: np.ndarray) -> np.ndarray:
    """Cosine distance between the chroma of the beat before each beat and of the beat after it
    (0 where either side is silent)."""
    import librosa

    hop = max(1, round(TRACKER_HOP_SECONDS * sample_rate))
    chroma = librosa.feature.chroma_stft(y=mono, sr=sample_rate, hop_length=hop, tuning=0.0)
    frames = librosa.time_to_frames(beats, sr=sample_rate, hop_length=hop)
    width = max(1, int(np.median(np.diff(frames)))) if len(frames) > 1 else 1
    changes = []
    for frame in frames:
        before = chroma[:, max(0, frame - width) : frame].sum(axis=1)
        after = chroma[:, frame : frame + width].sum(axis=1)
        norms = np.linalg.norm(before) * np.linalg.norm(after)
        changes.append(1 - float(before @ after) / norms if norms > 0 else 0.0)
    return np.array(changes)


def _standardised(values: np.ndarray) -> np.ndarray:
    """Zero mean, unit deviation; all zeros for a constant measure, which says nothing."""
    deviation = values.std()
    return (values - values.mean()) / deviation if deviation > 1e-9 else np.zeros_like(values)


# ---- times a user writes in bars and beats --------------------------------------------------------


@dataclass
class Timing:
    """`--bpm`, `--downbeat`, `--beats-per-bar` and `--snap`, and the song's beat grid, found
    only when a time is written in bars or `--snap` asks for it."""

    bpm: float | None = None
    downbeat: str | None = None
    beats_per_bar: int | None = None
    snap: bool = False
    song: Path | None = None
    audio: object = None  # or the song as an `audio.SongArray`
    _grid: object = field(default=None, repr=False)

    def grid(self):
        if self._grid is None:
            from .audio import to_channels, load_audio, resample
            from .timespec import parse_time

            if self.audio is not None:  # mono at 44.1 kHz, as load_audio gives it from a file
                import torch

                mono, _ = to_channels(self.audio.audio.numpy().T, 1)
                audio = resample(torch.from_numpy(mono.T.copy()), self.audio.sample_rate, 44100)
            elif self.song is None:
                raise UserError("bar and beat times need a song")
            else:
                probe_input(self.song)
                audio, _ = load_audio(self.song, sample_rate=44100, channels=1)
            downbeat = None if self.downbeat is None else parse_time(self.downbeat, "`downbeat`")
            self._grid = track_beats(audio, 44100, bpm=self.bpm, downbeat=downbeat, beats_per_bar=self.beats_per_bar)
        return self._grid

    def seconds(self, text: str, what: str) -> float:
        """A time as typed (seconds, m:ss, or b9.3); seconds move to the nearest beat with --snap."""
        from .beats import parse_time_or_beat, snap

        seconds = parse_time_or_beat(text, what, self.grid)
        if self.snap and not text.strip().lower().startswith("b"):
            seconds = snap(seconds, self.grid())
        return seconds

    def sidecar(self) -> dict:
        return {} if self._grid is None else {"beat_grid": self._grid.to_dict()}
