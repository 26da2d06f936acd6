"""timespec.py: parsing user times, formatting them back, and sample <-> latent-frame ranges."""

import math
import random

import pytest

from musicguide.errors import UserError
from musicguide.timespec import (
    format_time,
    parse_time,
    samples_to_frames,
    seconds_to_samples,
)

SR = 44100
HOP = 2048  # Stable Audio Open's VAE downsampling ratio


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("30", 30.0),
        ("30.5", 30.5),
        (".25", 0.25),
        ("0", 0.0),
        ("1:05", 65.0),
        ("1:05.250", 65.25),
        ("0:59.999", 59.999),
        ("90:00", 5400.0),
        ("01:02:03.5", 3723.5),
        ("1:00:00", 3600.0),
        ("  7 ", 7.0),
    ],
)
def test_parse_time_accepts_the_documented_forms(text, seconds):
    assert parse_time(text) == pytest.approx(seconds, abs=1e-12)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("-5", "negative"),
        ("-1:05", "negative"),
        ("", "empty"),
        ("   ", "empty"),
        ("nan", "not a finite time"),
        ("inf", "not a finite time"),
        ("1:60", "60 seconds"),
        ("0:75.5", "75.5 seconds"),
        ("1:60:00", "60 minutes"),
        ("1:5", "not a time"),
        ("1:02:03:04", "not a time"),
        ("abc", "not a time"),
        ("1e3", "not a time"),
        ("30.", "not a time"),
        ("1,5", "not a time"),
    ],
)
def test_parse_time_rejects_bad_text_quoting_it(text, reason):
    with pytest.raises(UserError, match=reason) as caught:
        parse_time(text, what="--start")
    assert repr(text) in caught.value.message and caught.value.message.startswith("--start")


def test_format_time_examples():
    assert format_time(0) == "0:00.000"
    assert format_time(65.25) == "1:05.250"
    assert format_time(59.9996) == "1:00.000"
    assert format_time(3723.5) == "62:03.500"
    with pytest.raises(ValueError):
        format_time(-1)
    with pytest.raises(ValueError):
        format_time(math.nan)


def test_format_then_parse_round_trips_to_the_millisecond():
    rng = random.Random(0)
    for _ in range(2000):
        seconds = rng.uniform(0, 10_000)
        text = format_time(seconds)
        assert abs(parse_time(text) - seconds) <= 0.0005 + 1e-9
        assert format_time(parse_time(text)) == text


def test_seconds_to_samples_rounds_to_nearest_with_halves_up():
    assert seconds_to_samples(1.0, SR) == SR
    assert seconds_to_samples(0.1, SR) == 4410
    assert seconds_to_samples(0.5 / 4, 4) == 1  # exactly half a sample: up, not to even
    assert seconds_to_samples(2.5 / 4, 4) == 3
    rng = random.Random(1)
    for _ in range(2000):
        samples = rng.randrange(0, 10**8)
        assert seconds_to_samples(samples / SR, SR) == samples
    with pytest.raises(ValueError):
        seconds_to_samples(math.inf, SR)


def test_samples_to_frames_is_the_smallest_covering_range():
    rng = random.Random(2)
    for _ in range(5000):
        start = rng.randrange(0, 10**6)
        end = start + rng.randrange(0, 10**5)
        f0, f1 = samples_to_frames(start, end, HOP)
        first, last = f0 * HOP, f1 * HOP
        assert first <= start and end <= last  # covers
        assert start < first + HOP  # could not start a frame later
        assert end == start or last - HOP < end  # could not end a frame earlier


def test_frame_aligned_ranges_round_trip_exactly():
    assert samples_to_frames(0, 0, HOP) == (0, 0)
    assert samples_to_frames(HOP, 3 * HOP, HOP) == (1, 3)
    assert samples_to_frames(HOP - 1, HOP + 1, HOP) == (0, 2)
    rng = random.Random(3)
    for _ in range(1000):
        f0 = rng.randrange(0, 1000)
        f1 = f0 + rng.randrange(0, 1000)
        assert samples_to_frames(f0 * HOP, f1 * HOP, HOP) == (f0, f1)


@pytest.mark.parametrize("start, end, hop", [(5, 4, HOP), (-1, 4, HOP), (0, 4, 0)])
def test_bad_ranges_are_programming_errors(start, end, hop):
    with pytest.raises(ValueError):
        samples_to_frames(start, end, hop)
