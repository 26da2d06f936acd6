"""beats.py: beat grids of click tracks at known tempi, bar/beat times, snapping, and the errors."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from musicguide.audio import load_audio
from musicguide.beat_tracking import track_beats
from musicguide.beats import BeatGrid, format_grid, parse_time_or_beat, snap
from musicguide.errors import UserError

SR = 44100
# One frame of librosa's beat tracker at 44.1 kHz (512 samples): the accuracy asked of a beat.
FRAME = 512 / SR


def click_track(
    bpm: float, beats_per_bar: int, seconds: float, sample_rate: int = SR, first: float = 0.25, accent: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """A metronome: (mono audio, click times). 30 ms decaying sine clicks, 1 kHz on the beats and
    1.5 kHz, `accent` times louder, on the downbeats; the first click (a downbeat) at `first` s.
    A faint noise floor keeps the log spectra between clicks finite, as in any recording."""
    rng = np.random.default_rng(0)
    audio = rng.standard_normal(round(seconds * sample_rate)).astype(np.float32) * 1e-4
    clicks = first + np.arange(math.floor((seconds - first) * bpm / 60) + 1) * 60 / bpm
    t = np.arange(round(0.030 * sample_rate)) / sample_rate
    for number, time in enumerate(clicks):
        downbeat = number % beats_per_bar == 0
        click = 0.4 * (accent if downbeat else 1.0) * np.sin(2 * np.pi * (1500 if downbeat else 1000) * t)
        at = round(time * sample_rate)
        length = min(len(t), len(audio) - at)
        audio[at : at + length] += (click * np.exp(-t / 0.005))[:length]
    return audio, clicks


def given_grid(bpm: float = 120.0, downbeat: float = 0.25, beats_per_bar: int = 4, seconds: float = 20.0) -> BeatGrid:
    """A strict grid, with no analysis (every option given), over `seconds` of silence."""
    return track_beats(np.zeros(round(seconds * SR), np.float32), SR, bpm, downbeat, beats_per_bar)


# ---- tracking -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bpm, beats_per_bar, first",
    [(120, 4, 0.25), (96, 4, 0.5), (100, 3, 0.25), (150, 3, 0.1)],
)
def test_the_grid_of_a_click_track_is_recovered(bpm, beats_per_bar, first):
    audio, clicks = click_track(bpm, beats_per_bar, 20.0, first=first)
    grid = track_beats(audio, SR)
    assert grid.source == "tracked" and grid.meter_source == "detected"
    assert grid.tempo == pytest.approx(bpm, abs=0.05)
    assert grid.beats_per_bar == beats_per_bar
    # One grid beat per click, each within a frame of it: the grid covers the whole song.
    assert len(grid.beats) == len(clicks)
    assert np.abs(grid.beats - clicks).max() < FRAME
    assert len(grid.downbeats) == len(clicks[::beats_per_bar])
    assert np.abs(grid.downbeats - clicks[::beats_per_bar]).max() < FRAME
    assert grid.downbeat_contrast > 1.0


def test_a_stereo_tensor_is_tracked_like_its_mono_mix():
    audio, clicks = click_track(120, 4, 10.0)
    grid = track_beats(torch.from_numpy(np.stack([audio, audio])), SR)
    assert np.abs(grid.beats - clicks).max() < FRAME


def test_a_given_tempo_is_kept_and_the_phase_tracked():
    audio, clicks = click_track(96, 4, 20.0, first=0.5)
    grid = track_beats(audio, SR, bpm=96)
    assert grid.source == "tracked"
    assert grid.tempo == 96
    assert np.abs(grid.beats - clicks).max() < FRAME
    assert np.abs(grid.downbeats - clicks[::4]).max() < FRAME


def test_a_given_downbeat_starts_bar_1_at_the_beat_nearest_to_it():
    audio, clicks = click_track(120, 4, 20.0)
    grid = track_beats(audio, SR, downbeat=4.26)  # the click at 4.25 s, bar 3 of the track
    assert grid.first_downbeat == 8
    assert grid.bar_time(1) == pytest.approx(4.25, abs=FRAME)
    assert np.abs(grid.downbeats - clicks[8::4]).max() < FRAME


def test_a_given_meter_overrides_the_detected_one():
    audio, clicks = click_track(120, 4, 20.0)
    grid = track_beats(audio, SR, beats_per_bar=2)
    assert grid.beats_per_bar == 2 and grid.meter_source == "given"
    assert np.abs(grid.downbeats - clicks[::2]).max() < FRAME


def test_bpm_and_downbeat_give_a_strict_grid_with_a_pickup():
    grid = given_grid(bpm=120, downbeat=1.75, beats_per_bar=4, seconds=10.0)
    assert grid.source == "given" and grid.tracked_span is None and grid.downbeat_contrast is None
    np.testing.assert_allclose(grid.beats, 0.25 + 0.5 * np.arange(20))
    assert grid.first_downbeat == 3  # 0.25, 0.75 and 1.25 s are the pickup
    np.testing.assert_allclose(grid.downbeats, [1.75, 3.75, 5.75, 7.75, 9.75])


def test_the_meter_is_detected_on_a_given_grid():
    audio, _ = click_track(100, 3, 20.0)
    grid = track_beats(audio, SR, bpm=100, downbeat=0.25)
    assert grid.source == "given" and grid.meter_source == "detected"
    assert grid.beats_per_bar == 3


def test_a_real_clip_has_a_plausible_steady_tempo(shared_audio):
    audio, info = load_audio(shared_audio / "battle_60s.ogg")
    grid = track_beats(audio, info.sample_rate)
    halves = [track_beats(half, info.sample_rate).tempo for half in audio.chunk(2, dim=1)]
    assert 60 <= grid.tempo <= 200
    for tempo in halves:
        assert tempo == pytest.approx(grid.tempo, rel=0.02)
    tracked = grid.beats[(grid.beats >= grid.tracked_span[0]) & (grid.beats <= grid.tracked_span[1])]
    intervals = np.diff(tracked)
    assert np.mean(np.abs(intervals - grid.period) < 0.1 * grid.period) > 0.95
    assert grid.tracked_span[1] - grid.tracked_span[0] > 0.8 * grid.duration


def test_silence_has_no_beats():
    with pytest.raises(UserError, match="too few for a grid"):
        track_beats(np.zeros(5 * SR, np.float32), SR)


@pytest.mark.parametrize(
    "options, option, value",
    [
        ({"bpm": 0.0}, "--bpm", "0"),
        ({"bpm": 19.9}, "--bpm", "19.9"),
        ({"bpm": 400.5}, "--bpm", "400.5"),
        ({"bpm": math.nan}, "--bpm", "nan"),
        ({"bpm": 120.0, "downbeat": -1.0}, "--downbeat", "-1"),
        ({"bpm": 120.0, "downbeat": 10.0}, "--downbeat", "10"),
        ({"bpm": 120.0, "downbeat": math.inf}, "--downbeat", "inf"),
        ({"beats_per_bar": 0}, "--beats-per-bar", "0"),
        ({"beats_per_bar": 17}, "--beats-per-bar", "17"),
    ],
)
def test_bad_grid_options_are_user_errors(options, option, value):
    """The message names the option and the value it got (its wording is free to change)."""
    with pytest.raises(UserError) as caught:
        track_beats(np.zeros(10 * SR, np.float32), SR, **options)
    assert caught.value.message.startswith(option)
    assert re.search(rf"(?<![\w.+-]){re.escape(value)}(?![\w.])", caught.value.message), caught.value.message


# ---- bars and beats -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("b1", 0.25),
        ("b9", 16.25),
        ("b9.1", 16.25),
        ("b9.3", 17.25),
        ("b9.2.5", 17.0),
        ("b9.4.5", 18.0),
        ("B9.03", 17.25),
        (" b2 ", 2.25),
        ("b10.4.999", 20.2495),
        ("1:05", 65.0),
        ("12.5", 12.5),
    ],
)
def test_times_in_bars_and_beats(text, seconds):
    grid = given_grid(seconds=70.0)
    assert parse_time_or_beat(text, "--start", lambda: grid) == pytest.approx(seconds, abs=1e-9)


def test_bars_on_a_tracked_grid_land_on_the_clicks():
    audio, clicks = click_track(96, 4, 20.0, first=0.5)
    grid = track_beats(audio, SR)
    assert parse_time_or_beat("b6", "--start", lambda: grid) == pytest.approx(clicks[20], abs=FRAME)
    assert parse_time_or_beat("b6.3", "--start", lambda: grid) == pytest.approx(clicks[22], abs=FRAME)
    assert parse_time_or_beat("b6.3.5", "--end", lambda: grid) == pytest.approx((clicks[22] + clicks[23]) / 2, abs=FRAME)


def test_plain_times_never_ask_for_the_grid():
    def no_grid() -> BeatGrid:
        raise AssertionError("the grid was computed for a plain time")

    assert parse_time_or_beat("1:02:03.5", "--end", no_grid) == 3723.5


def test_the_grid_is_extrapolated_at_the_tempo_where_the_music_stops():
    clicking, clicks = click_track(120, 4, 12.0)
    audio = np.concatenate([clicking, np.zeros(8 * SR, np.float32)])
    grid = track_beats(audio, SR)
    assert grid.tracked_span[1] < 12.0
    assert len(grid.beats) == 40  # 0.25 s to 19.75 s
    assert grid.bar_time(10, 4) == pytest.approx(19.75, abs=FRAME)
    assert grid.bar_time(6) == pytest.approx(clicks[20], abs=FRAME)


@pytest.mark.parametrize(
    "text, shown",
    [
        # The message starts with the option and shows the text, or what is wrong with it where
        # the text is too long to repeat; the sentence around that is free to change.
        ("b0", "b0"),
        ("b9.0", "b9.0"),
        ("b9.5", "b9.5"),
        ("b9.0.5", "b9.0.5"),
        ("b11", "0:20.000"),  # past the end: the song's length
        ("b", "'b'"),
        ("b9.", "'b9.'"),
        ("b-1", "'b-1'"),
        ("bar9", "'bar9'"),
        ("b9.3.5.1", "'b9.3.5.1'"),
        ("b1234567890", "10 digits"),
        ("b" + "9" * 5000, "5000 digits"),
        ("-5", "'-5'"),
        ("1:5", "'1:5'"),
    ],
)
def test_bad_bars_and_beats_are_one_line_user_errors(text, shown):
    grid = given_grid()
    with pytest.raises(UserError) as caught:
        parse_time_or_beat(text, "--start", lambda: grid)
    assert caught.value.message.startswith("--start") and shown in caught.value.message
    assert len(caught.value.message) < 200 and "\n" not in str(caught.value)


def test_time_errors_mention_the_bar_forms():
    with pytest.raises(UserError) as caught:
        parse_time_or_beat("1:5", "--start", given_grid)
    assert '"1:05"' in caught.value.hint and '"b9.3"' in caught.value.hint


def test_a_bar_past_the_end_says_how_many_bars_there_are():
    with pytest.raises(UserError) as caught:
        given_grid().bar_time(12)
    assert re.search(r"\b10 bars\b", caught.value.hint) and "120" in caught.value.hint


def test_bars_after_follows_the_grid():
    grid = given_grid()
    assert grid.bars_after(0.25, 2) == pytest.approx(4.25)
    assert grid.bars_after(1.0, 0.5) == pytest.approx(2.0)
    assert grid.bars_after(19.75, 1) == pytest.approx(21.75)  # extrapolated past the last beat


@pytest.mark.parametrize("seconds, nearest", [(1.1, 1.25), (0.9, 0.75), (0.0, 0.25), (0.25, 0.25), (30.0, 19.75)])
def test_snap_moves_a_time_to_the_nearest_beat(seconds, nearest):
    assert snap(seconds, given_grid()) == pytest.approx(nearest)


def test_the_grid_as_json():
    record = json.loads(json.dumps(given_grid(downbeat=1.75, seconds=10.0).to_dict()))
    assert record["source"] == "given" and record["meter_source"] == "given"
    assert record["tempo_bpm"] == 120.0 and record["beats_per_bar"] == 4
    assert record["beats"][:4] == [0.25, 0.75, 1.25, 1.75]
    assert record["downbeats"] == [1.75, 3.75, 5.75, 7.75, 9.75]
    assert record["bars"] == 5 and record["duration"] == 10.0
    assert record["tracked_span"] is None and record["downbeat_contrast"] is None


def test_the_printed_grid_numbers_bars_from_1_after_the_pickup():
    lines = format_grid(given_grid(downbeat=1.75, seconds=6.0)).splitlines()
    assert lines[0] == "120.00 bpm, 4 beats per bar (given), 3 bars; beats given (--bpm, --downbeat)"
    assert lines[1] == "pickup  0:00.250  0:00.750  0:01.250"
    assert lines[2] == "bar 1   0:01.750  0:02.250  0:02.750  0:03.250"
    assert lines[4] == "bar 3   0:05.750"
