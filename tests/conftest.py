"""Fixtures shared by the test files: generated songs, and the real clips in ../shared/audio."""

from __future__ import annotations

import math
from pathlib import Path

import sys

import numpy as np
import pytest
import soundfile as sf

SHARED_AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"


def synth_song(seconds: float, sample_rate: int = 44100, seed: int = 0) -> np.ndarray:
    """A few seconds of something song-like: a chord progression with a beat, stereo, [N, 2]."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    roots = [220.0, 174.6, 261.6, 196.0]
    bar = 1.0
    chord = np.zeros_like(t)
    for i, root in enumerate(roots):
        on = ((t // bar) % len(roots)) == i
        for ratio in (1.0, 1.25, 1.5):
            chord += on * np.sin(2 * math.pi * root * ratio * t)
    beat = np.exp(-30 * (t % 0.25)) * rng.standard_normal(t.shape) * 0.3
    left = 0.15 * chord + beat
    right = 0.15 * np.roll(chord, 50) + beat
    return np.stack([left, right], axis=1).astype(np.float32) * 0.8


@pytest.fixture
def song_wav(tmp_path: Path) -> Path:
    """A 6 s 16-bit stereo WAV at 44.1 kHz."""
    path = tmp_path / "song.wav"
    sf.write(path, synth_song(6.0), 44100, subtype="PCM_16")
    return path


@pytest.fixture
def shared_audio() -> Path:
    if not SHARED_AUDIO.is_dir():
        pytest.skip(f"the shared test music is not at {SHARED_AUDIO} (it lies beside the repository)")
    return SHARED_AUDIO


def run_cli(args: list, monkeypatch, capsys) -> tuple[int, str, str]:
    """Run `musicguide ARGS` in this process, through the console entry point: (status, stdout, stderr)."""
    from musicguide import cli

    monkeypatch.setattr(sys, "argv", ["musicguide", *map(str, args)])
    try:
        cli.main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code: int, stderr: str, expected: str, status: int = 2) -> None:
    """The CLI's promise for an error: this status, one `error: …` line holding `expected`, no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == status, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in stderr
