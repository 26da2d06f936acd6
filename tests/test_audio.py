"""audio.py: sample-exact loading and saving, conversions, and the errors a user can hit."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicguide.atomic import same_file
from musicguide.audio import AudioInfo, check_not_silent, load_audio, resample
from musicguide.writing import DEFAULT_SUBTYPE, output_subtype, write_song
from musicguide.errors import UserError

SR = 44100


def random_ints(bits: int, frames: int, channels: int = 2, seed: int = 0) -> np.ndarray:
    """Full-range random PCM integers, extremes included, as [frames, channels]."""
    full_scale = 2 ** (bits - 1)
    values = np.random.default_rng(seed).integers(-full_scale, full_scale, size=(frames, channels))
    values[0, 0], values[1, 0] = -full_scale, full_scale - 1
    return values


def write_pcm(path: Path, ints: np.ndarray, bits: int, sample_rate: int = SR) -> None:
    if bits == 16:
        sf.write(path, ints.astype(np.int16), sample_rate, subtype="PCM_16")
    else:
        sf.write(path, ints.astype(np.int32) << 8, sample_rate, subtype="PCM_24")


def read_ints(path: Path, bits: int) -> np.ndarray:
    if bits == 16:
        return sf.read(path, dtype="int16", always_2d=True)[0].astype(np.int64)
    return sf.read(path, dtype="int32", always_2d=True)[0].astype(np.int64) >> 8


@pytest.mark.parametrize("bits, extension", [(16, ".wav"), (24, ".wav"), (16, ".flac"), (24, ".flac")])
def test_pcm_loads_sample_exact_and_saves_back_to_the_same_integers(tmp_path, bits, extension):
    ints = random_ints(bits, 5000)
    source = tmp_path / f"in{extension}"
    write_pcm(source, ints, bits)

    audio, info = load_audio(source)

    assert audio.dtype == torch.float32 and audio.shape == (2, 5000)
    assert torch.equal(audio, torch.from_numpy(ints.T / 2 ** (bits - 1)).float())
    assert (info.sample_rate, info.channels, info.frames, info.subtype) == (SR, 2, 5000, f"PCM_{bits}")
    assert info.conversions == ()

    target = tmp_path / f"out{extension}"
    saved = write_song(target, [audio], SR, output_subtype([info], target))
    assert saved.subtype == f"PCM_{bits}" and saved.clipped == 0
    assert np.array_equal(read_ints(target, bits), ints)


def test_pcm16_edit_reproduces_the_original_integers_outside_the_edit(tmp_path):
    ints = random_ints(16, 20000, seed=1) // 4
    source = tmp_path / "song.wav"
    write_pcm(source, ints, 16)
    audio, info = load_audio(source)

    edited = audio.clone()
    tone = 1.4 * torch.sin(torch.arange(4000) * 0.05)  # deliberately over full scale
    edited[:, 8000:12000] = tone
    target = tmp_path / "edit.wav"
    saved = write_song(target, [edited], SR, output_subtype([info], target))

    written = read_ints(target, 16)
    assert np.array_equal(written[:8000], ints[:8000])
    assert np.array_equal(written[12000:], ints[12000:])
    assert not np.array_equal(written[8000:12000], ints[8000:12000])
    scaled = (tone.double() * 32768).round()
    assert saved.clipped == 2 * int(((scaled > 32767) | (scaled < -32768)).sum())
    assert saved.clipped > 0 and saved.peak == pytest.approx(1.4, abs=1e-3)
    assert written.max() == 32767 and written.min() == -32768


def test_float_wav_keeps_values_beyond_full_scale(tmp_path):
    audio = torch.tensor([[0.5, 1.5, -2.0], [0.0, 0.25, -0.25]])
    saved = write_song(tmp_path / "x.wav", [audio], SR, "FLOAT")
    back, info = load_audio(tmp_path / "x.wav")
    assert torch.equal(back, audio)
    assert saved.clipped == 0 and saved.peak == 2.0 and info.subtype == "FLOAT"


def test_default_subtype_is_24_bit_and_output_subtype_follows_the_input(tmp_path):
    saved = write_song(tmp_path / "x.flac", [torch.zeros(2, 10)], SR, DEFAULT_SUBTYPE)
    assert saved.subtype == "PCM_24" and sf.info(tmp_path / "x.flac").subtype == "PCM_24"
    def info(subtype, *conversions):
        return AudioInfo("x", SR, 2, 10, "WAV", subtype, conversions)

    assert output_subtype([info("PCM_16")], "a.flac") == "PCM_16"
    assert output_subtype([info("FLOAT")], "a.wav") == "FLOAT"
    assert output_subtype([info("FLOAT")], "a.flac") == "PCM_24"
    assert output_subtype([info("VORBIS")], "a.wav") == "PCM_24"
    assert output_subtype([], "a.wav") == "PCM_24"
    # a converted 16-bit input lies between 16-bit steps: 24 bits keep it within half a 24-bit step
    assert output_subtype([info("PCM_16", "resampled 48000 Hz -> 44100 Hz (soxr VHQ)")], "a.wav") == "PCM_24"
    # a transition follows the deeper of its inputs, and either one's float
    assert output_subtype([info("PCM_16"), info("PCM_24")], "a.wav") == "PCM_24"
    assert output_subtype([info("PCM_16"), info("PCM_16")], "a.wav") == "PCM_16"
    assert output_subtype([info("PCM_16"), info("FLOAT")], "a.wav") == "FLOAT"


def test_aiff_loads_sample_exact(tmp_path):
    ints = random_ints(16, 1000, seed=2)
    sf.write(tmp_path / "in.aiff", ints.astype(np.int16), SR, format="AIFF", subtype="PCM_16")
    audio, info = load_audio(tmp_path / "in.aiff")
    assert torch.equal(audio, torch.from_numpy(ints.T / 32768).float())
    assert (info.format, info.subtype) == ("AIFF", "PCM_16")


@pytest.mark.parametrize("container, subtype", [("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")])
def test_lossy_files_load_close_to_what_was_encoded(tmp_path, container, subtype):
    if container not in sf.available_formats():
        pytest.skip(f"this libsndfile cannot handle {container}")
    t = np.arange(SR) / SR
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = tmp_path / f"in.{container.lower()}"
    sf.write(path, np.stack([tone, -tone], 1), SR, format=container, subtype=subtype)
    audio, info = load_audio(path)
    assert info.subtype == subtype and audio.shape[0] == 2
    assert abs(audio.shape[1] - SR) < 0.05 * SR  # encoders may pad or trim a little
    decoded = audio[0, : min(SR, audio.shape[1])].numpy()
    assert abs(np.abs(np.fft.rfft(decoded)).argmax() * SR / len(decoded) - 440) < 2
    assert torch.allclose(audio[0], -audio[1], atol=0.02)


def test_mono_is_duplicated_to_stereo(tmp_path):
    ints = random_ints(16, 300, channels=1)
    write_pcm(tmp_path / "mono.wav", ints, 16)
    audio, info = load_audio(tmp_path / "mono.wav")
    assert audio.shape == (2, 300) and torch.equal(audio[0], audio[1])
    assert torch.equal(audio[0], torch.from_numpy(ints[:, 0] / 32768).float())
    assert info.channels == 1 and "mono" in info.conversions[0]


def test_five_one_is_downmixed_with_itu_weights(tmp_path):
    # One channel at a time carries signal, so each output side shows that channel's weight.
    data = np.zeros((6, 6), dtype=np.float32)
    np.fill_diagonal(data, 0.5)
    sf.write(tmp_path / "surround.wav", data, SR, subtype="FLOAT")
    audio, info = load_audio(tmp_path / "surround.wav")
    k = 1 / (1 + 2 / np.sqrt(2))
    g = 1 / np.sqrt(2)
    expected_left = 0.5 * k * np.array([1, 0, g, 0, g, 0])
    expected_right = 0.5 * k * np.array([0, 1, g, 0, 0, g])
    assert np.allclose(audio[0].numpy(), expected_left, atol=1e-7)
    assert np.allclose(audio[1].numpy(), expected_right, atol=1e-7)
    assert "ITU" in info.conversions[0] and info.channels == 6


def test_other_channel_counts_are_averaged(tmp_path):
    data = np.array([[0.1, 0.2, 0.3, 0.6]], dtype=np.float32).repeat(10, axis=0)
    sf.write(tmp_path / "quad.wav", data, SR, subtype="FLOAT")
    audio, info = load_audio(tmp_path / "quad.wav")
    assert torch.allclose(audio, torch.full((2, 10), 0.3))
    assert "averaged" in info.conversions[0]


def test_other_sample_rates_are_resampled_keeping_pitch_and_length(tmp_path):
    rate = 48000
    t = np.arange(rate) / rate
    tone = 0.5 * np.sin(2 * np.pi * 1000 * t)
    sf.write(tmp_path / "48k.wav", np.stack([tone, tone], 1), rate, subtype="FLOAT")
    audio, info = load_audio(tmp_path / "48k.wav")
    assert audio.shape == (2, SR)
    assert any("48000 Hz -> 44100 Hz" in note for note in info.conversions)
    expected = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(SR) / SR)
    middle = slice(1000, SR - 1000)  # away from the filter's edge transients
    assert np.abs(audio[0, middle].numpy() - expected[middle]).max() < 1e-3


def test_resample_is_identity_at_the_same_rate():
    audio = torch.randn(2, 100)
    assert torch.equal(resample(audio, SR, SR), audio)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p, "no such file"),
        (lambda p: (p.mkdir(), p)[1], "not a file"),
        (lambda p: (p.write_text("not a sound"), p)[1], "cannot read"),
        (lambda p: (p.write_bytes(b""), p)[1], "cannot read"),
        (lambda p: (sf.write(p, np.zeros((0, 2)), SR), p)[1], "no audio"),
        (lambda p: (sf.write(p, np.array([[0.1, np.nan]] * 4), SR, subtype="FLOAT"), p)[1], "NaN"),
    ],
    ids=["missing", "directory", "text", "empty-bytes", "zero-frames", "nan"],
)
def test_unreadable_inputs_are_user_errors_naming_the_file(tmp_path, make, message):
    path = make(tmp_path / "input.wav")
    with pytest.raises(UserError, match=message) as caught:
        load_audio(path)
    assert "input.wav" in str(caught.value)
    assert "\n" not in caught.value.message


def test_check_not_silent():
    check_not_silent(0.1 * torch.randn(2, 1000))
    with pytest.raises(UserError, match="silent"):
        check_not_silent(torch.zeros(2, 1000))
    dither = torch.randn(2, 10000) / 32768 / 2  # 16-bit dither, about -100 dBFS RMS
    with pytest.raises(UserError, match="silent"):
        check_not_silent(dither)
    check_not_silent(dither, threshold_db=-120)


def test_writing_refuses_unknown_extensions_and_formats_listing_the_supported_ones(tmp_path):
    with pytest.raises(UserError, match=r"\.wav, \.flac"):
        write_song(tmp_path / "x.mp3", [torch.zeros(2, 10)], SR, DEFAULT_SUBTYPE)
    with pytest.raises(UserError, match="FLAC"):
        write_song(tmp_path / "x.flac", [torch.zeros(2, 10)], SR, "FLOAT")
    with pytest.raises(UserError, match="sample format"):
        write_song(tmp_path / "x.wav", [torch.zeros(2, 10)], SR, "PCM_8")
    assert list(tmp_path.iterdir()) == []


def test_non_finite_audio_is_not_written(tmp_path):
    with pytest.raises(UserError, match="NaN"):
        write_song(tmp_path / "x.wav", [torch.tensor([[0.0, float("inf")]])], SR, "FLOAT")
    assert list(tmp_path.iterdir()) == []


def test_same_file(tmp_path, monkeypatch):
    song = tmp_path / "song.wav"
    song.write_bytes(b"x")
    (tmp_path / "link.wav").symlink_to(song)
    (tmp_path / "sub").mkdir()
    assert same_file(song, tmp_path / "link.wav")
    assert same_file(song, tmp_path / "sub" / ".." / "song.wav")
    assert not same_file(song, tmp_path / "other.wav")
    assert same_file(tmp_path / "new.wav", tmp_path / "sub" / ".." / "new.wav")
    monkeypatch.chdir(tmp_path)
    assert same_file("song.wav", song)


def test_real_ogg_loads_as_44k_stereo_unchanged(shared_audio):
    path = sorted(shared_audio.glob("*.ogg"))[0]
    audio, info = load_audio(path)
    assert audio.shape == (2, info.frames) and info.frames > 10 * SR
    assert (info.sample_rate, info.channels, info.format, info.subtype) == (SR, 2, "OGG", "VORBIS")
    assert info.conversions == ()
    assert torch.equal(audio, torch.from_numpy(sf.read(path, dtype="float32")[0].T.copy()))
    check_not_silent(audio)
