"""splice.py: fades, bit-exact pasting of an edit window into a song, and seam metrics."""

import json
import math
import random

import pytest
import torch

from musicguide.splice import (
    SEAM_WINDOW,
    cut_window,
    crossfade,
    equal_power_fades,
    fade_samples,
    seam_report,
    splice,
)

SR = 44100


def song(length: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, length, generator=torch.Generator().manual_seed(seed))


def tone(seconds: float, frequency: float = 440.0, amplitude: float = 0.5) -> torch.Tensor:
    t = torch.arange(round(seconds * SR), dtype=torch.float64) / SR
    return (amplitude * torch.sin(2 * math.pi * frequency * t)).float().expand(2, -1).clone()


# ---- fades ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 1323])
def test_equal_power_fades_keep_power_constant_and_mirror_each_other(n):
    fade_out, fade_in = equal_power_fades(n, torch.float64)
    assert fade_out.shape == fade_in.shape == (n,)
    assert torch.allclose(fade_out**2 + fade_in**2, torch.ones(n, dtype=torch.float64), atol=1e-15)
    assert torch.allclose(fade_in, fade_out.flip(0), atol=1e-15)
    assert (fade_out > 0).all() and (fade_out < 1).all()
    assert (fade_in.diff() > 0).all()


def test_zero_length_fades_are_empty():
    fade_out, fade_in = equal_power_fades(0)
    assert fade_out.shape == fade_in.shape == (0,)


def test_default_fade_is_30_ms():
    assert fade_samples(SR) == 1323 and fade_samples(48000) == 1440


def test_cut_window_pads_past_the_end_with_silence():
    audio = song(100)
    assert torch.equal(cut_window(audio, 10, 50), audio[:, 10:60])
    window = cut_window(audio, 80, 50)
    assert window.shape == (2, 50)
    assert torch.equal(window[:, :20], audio[:, 80:]) and (window[:, 20:] == 0).all()


# ---- splice ---------------------------------------------------------------------------------------


def test_splice_is_bit_exact_outside_and_crossfades_inside():
    original, edited = song(10_000, 1), song(4000, 2)
    at, start, end, fade = 3000, 4000, 6000, 300
    result = splice(original, edited, at, start, end, fade)
    out = result.audio

    assert out.shape == original.shape
    assert torch.equal(out[:, : start - fade], original[:, : start - fade])
    assert torch.equal(out[:, end + fade :], original[:, end + fade :])
    assert torch.equal(out[:, start:end], edited[:, start - at : end - at])
    left, left_edited = original[:, start - fade : start], edited[:, start - fade - at : start - at]
    assert torch.allclose(out[:, start - fade : start], crossfade(left, left_edited))
    right, right_edited = original[:, end : end + fade], edited[:, end - at : end + fade - at]
    assert torch.allclose(out[:, end : end + fade], crossfade(right_edited, right))
    # the fades go from one side to the other: all original at the outer end, all edited at the inner
    assert (out[:, start - fade] - left[:, 0]).abs().max() < 0.01 and (out[:, start - 1] - left_edited[:, -1]).abs().max() < 0.01
    assert (result.left_fade, result.right_fade) == (fade, fade)
    assert result.seams == [start - fade // 2, end + fade // 2]


def test_splicing_the_original_into_itself_keeps_uncorrelated_power():
    # Equal power: two independent signals of equal level mix at the same level through the fade.
    original = song(200_000, 3)
    other = song(200_000, 4)
    out = splice(original, other, 0, 100_000, 150_000, 20_000).audio
    power_in_fade = out[:, 80_000:100_000].pow(2).mean()
    assert power_in_fade == pytest.approx(1.0, rel=0.03)


def test_continuation_has_only_a_left_seam_and_extends_the_song():
    original, edited = song(10_000, 5), song(6000, 6)
    at, start = 8000, 10_000
    result = splice(original, edited, at, start, at + 6000, 500)
    assert result.audio.shape == (2, 14_000)
    assert torch.equal(result.audio[:, :9500], original[:, :9500])
    assert torch.equal(result.audio[:, 10_000:], edited[:, 2000:])
    assert result.seams == [10_000 - 250] and result.right_fade == 0


def test_edit_from_the_start_has_only_a_right_seam():
    original, edited = song(10_000, 7), song(5000, 8)
    result = splice(original, edited, 0, 0, 4000, 500)
    assert torch.equal(result.audio[:, :4000], edited[:, :4000])
    assert torch.equal(result.audio[:, 4500:], original[:, 4500:])
    assert result.seams == [4250] and result.left_fade == 0


def test_edit_to_the_very_end_has_only_a_left_seam_and_keeps_the_length():
    original, edited = song(10_000, 9), song(4000, 10)
    result = splice(original, edited, 6000, 7000, 10_000, 500)
    assert result.audio.shape == original.shape
    assert torch.equal(result.audio[:, :6500], original[:, :6500])
    assert torch.equal(result.audio[:, 7000:], edited[:, 1000:])
    assert result.seams == [6750] and result.right_fade == 0


def test_fades_are_clipped_to_the_available_context():
    original, edited = song(10_000, 11), song(3000, 12)
    # 100 samples of edited context on the left, 50 on the right, 30 of original after the edit.
    result = splice(original, edited, 4900, 5000, 7850, 400)
    assert (result.left_fade, result.right_fade) == (100, 50)
    assert torch.equal(result.audio[:, :4900], original[:, :4900])
    assert torch.equal(result.audio[:, 7900:], original[:, 7900:])
    short = splice(original[:, :7880], edited, 4900, 5000, 7850, 400)
    assert short.right_fade == 30 and short.audio.shape == (2, 7880)


def test_no_context_means_a_hard_cut():
    original, edited = song(10_000, 13), song(2000, 14)
    result = splice(original, edited, 4000, 4000, 6000, 400)
    assert (result.left_fade, result.right_fade) == (0, 0)
    assert torch.equal(result.audio[:, :4000], original[:, :4000])
    assert torch.equal(result.audio[:, 4000:6000], edited)
    assert torch.equal(result.audio[:, 6000:], original[:, 6000:])
    assert result.seams == [4000, 6000]


def test_zero_fade_pastes_exactly():
    original, edited = song(1000, 15), song(1000, 16)
    out = splice(original, edited, 0, 200, 300, 0).audio
    expected = original.clone()
    expected[:, 200:300] = edited[:, 200:300]
    assert torch.equal(out, expected)


@pytest.mark.parametrize(
    "at, start, end, fade",
    [(100, 50, 300, 10), (0, 300, 200, 10), (0, 100, 1200, 10), (0, 100, 200, -1), (1100, 1100, 1200, 0)],
    ids=["start-before-window", "end-before-start", "end-past-window", "negative-fade", "start-past-song"],
)
def test_inconsistent_positions_are_programming_errors(at, start, end, fade):
    with pytest.raises(ValueError):
        splice(song(1000), song(1000), at, start, end, fade)


def test_channel_mismatch_is_a_programming_error():
    with pytest.raises(ValueError, match="channels"):
        splice(song(1000), torch.zeros(1, 100), 0, 10, 20, 5)


# ---- seam metrics ---------------------------------------------------------------------------------


def test_hard_cut_from_tone_to_noise_is_flagged():
    noise = 0.3 * song(SR, 17)
    audio = torch.cat([tone(1.0), noise], dim=1)
    [metric] = seam_report(audio, SR, [SR])
    assert metric.flagged and metric.spectral_distance_db.flagged
    assert metric.spectral_distance_db.value > 10 * metric.spectral_distance_db.reference_p95


def test_hard_cut_from_loud_to_quiet_is_flagged_as_a_level_jump():
    noise = song(2 * SR, 18)
    noise[:, SR:] *= 0.1  # -20 dB
    [metric] = seam_report(noise, SR, [SR])
    assert metric.level_jump_db.flagged
    assert metric.level_jump_db.value == pytest.approx(20, abs=1.5)


def test_a_point_inside_a_continuous_signal_is_not_flagged():
    audio = tone(3.0) + 0.05 * song(3 * SR, 19)
    [metric] = seam_report(audio, SR, [SR + 12_345])
    assert not metric.flagged
    assert metric.level_jump_db.value < 1.0


def test_crossfaded_seam_between_level_matched_noises_is_not_flagged():
    original, edited = 0.3 * song(3 * SR, 20), 0.3 * song(3 * SR, 21)
    result = splice(original, edited, 0, SR, 2 * SR, fade_samples(SR))
    report = seam_report(result.audio, SR, result.seams, reference=original)
    assert len(report) == 2 and not any(metric.flagged for metric in report)


def test_seams_near_the_ends_use_shorter_windows_and_outside_seams_are_refused():
    audio = tone(1.0) + 0.05 * song(SR, 22)
    near_start, middle = seam_report(audio, SR, [300, SR // 2])
    assert near_start.window == 300 and middle.window == SEAM_WINDOW
    with pytest.raises(ValueError, match="inside"):
        seam_report(audio, SR, [SR])
    with pytest.raises(ValueError, match="too short"):
        seam_report(audio[:, :5000], SR, [2500])
    with pytest.raises(ValueError, match="too short"):
        seam_report(audio, SR, [SR // 2], reference=audio[:, :3000])


def test_report_serialises_to_json():
    audio = torch.cat([tone(1.0), 0.3 * song(SR, 23)], dim=1)
    [metric] = seam_report(audio, SR, [SR])
    record = json.loads(json.dumps(metric.to_dict()))
    assert record["position"] == SR and record["seconds"] == 1.0 and record["flagged"] is True
    assert set(record["level_jump_db"]) == {"value", "reference_median", "reference_p95"}


def test_real_music_random_positions_lie_within_the_reference_distribution(shared_audio):
    from musicguide.audio import load_audio

    music, _ = load_audio(sorted(shared_audio.glob("*.ogg"))[0])
    rng = random.Random(0)
    positions = [rng.randrange(SEAM_WINDOW, music.shape[1] - SEAM_WINDOW) for _ in range(60)]
    report = seam_report(music, SR, positions, reference=music)
    # Each measure is above its reference 95th percentile 5% of the time; two measures, so ~10%.
    assert sum(metric.flagged for metric in report) <= 0.2 * len(report)
    spectral = sorted(metric.spectral_distance_db.value for metric in report)
    reference = report[0].spectral_distance_db
    assert abs(spectral[len(spectral) // 2] - reference.reference_median) < 0.25 * reference.reference_p95

    # ...while a hard cut to a different piece at the same place stands out.
    other, _ = load_audio(sorted(shared_audio.glob("*.ogg"))[-1])
    cut = torch.cat([music[:, : 10 * SR], other[:, 10 * SR :]], dim=1)
    [seam] = seam_report(cut, SR, [10 * SR], reference=music)
    assert seam.flagged
