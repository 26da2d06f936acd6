"""The producer's commands end to end on tiny-random: bar/beat times, --snap, beats, loop, whole-song
restyle and --plot. The model makes noise; these tests check what the commands promise about
times, lengths, untouched audio, sidecars and files, not how the music sounds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


from conftest import synth_song
from conftest import run_cli
from test_beats import click_track

SR = 44100
FAST = ["--steps", "2", "--quiet", "--seed", "3", "--model", "tiny-random", "--device", "cpu"]




@pytest.fixture
def clicks(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """20 s of a 120 bpm 4/4 metronome (bar 1 at 0.25 s) over a quiet chord, 16-bit stereo."""
    audio, times = click_track(120.0, 4, 20.0, first=0.25)
    music = 0.3 * synth_song(20.0)[:, 0] + audio
    path = tmp_path / "clicks.wav"
    sf.write(path, np.stack([music, music], axis=1), SR, subtype="PCM_16")
    return path, times


def test_beats_recovers_a_click_tracks_grid(clicks, monkeypatch, capsys):
    path, times = clicks
    code, stdout, stderr = run_cli(["beats", path, "--json"], monkeypatch, capsys)
    assert code == 0, stderr
    grid = json.loads(stdout)
    assert abs(grid["tempo_bpm"] - 120.0) < 0.5 and grid["beats_per_bar"] == 4
    downbeats = np.array(grid["downbeats"])
    assert np.abs(downbeats[: len(times[::4])] - times[::4][: len(downbeats)]).max() < 0.012
    code, stdout, _ = run_cli(["beats", path], monkeypatch, capsys)
    assert code == 0 and "bar 1 " in stdout and "120" in stdout.splitlines()[0]


def test_bar_times_replace_bars_and_record_the_grid(clicks, tmp_path, monkeypatch, capsys):
    path, times = clicks
    out = tmp_path / "bars.wav"
    code, _, stderr = run_cli(["infill", path, "--start", "b3", "--end", "b4.3", "-o", out, *FAST], monkeypatch, capsys)
    assert code == 0, stderr
    meta = json.loads(out.with_suffix(".json").read_text())
    assert abs(meta["settings"]["start_s"] - times[8]) < 0.012  # bar 3, beat 1: the 9th click
    assert abs(meta["settings"]["end_s"] - times[14]) < 0.012  # bar 4, beat 3
    assert meta["beat_grid"]["beats_per_bar"] == 4 and abs(meta["beat_grid"]["tempo_bpm"] - 120) < 0.5
    original, edited = sf.read(path, dtype="int16")[0], sf.read(out, dtype="int16")[0]
    keep = round((meta["settings"]["start_s"] - 0.05) * SR)
    assert np.array_equal(original[:keep], edited[:keep])


def test_given_grid_and_snap(clicks, tmp_path, monkeypatch, capsys):
    path, _ = clicks
    out = tmp_path / "snap.wav"
    args = ["infill", path, "--start", "4.1", "--end", "5.9", "--snap", "--bpm", "120", "--downbeat", "0.25",
            "--beats-per-bar", "4", "-o", out, *FAST]
    code, _, stderr = run_cli(args, monkeypatch, capsys)
    assert code == 0, stderr
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["settings"]["start_s"] == pytest.approx(4.25) and meta["settings"]["end_s"] == pytest.approx(5.75)
    assert meta["beat_grid"]["source"] == "given"


def test_plain_seconds_never_track_beats(song_wav, tmp_path, monkeypatch, capsys):
    out = tmp_path / "plain.wav"
    code, _, stderr = run_cli(["infill", song_wav, "--start", "1", "--end", "2", "-o", out, *FAST], monkeypatch, capsys)
    assert code == 0, stderr
    assert "beat_grid" not in json.loads(out.with_suffix(".json").read_text())


def test_loop_by_bars_has_the_bars_length_and_measured_seams(clicks, tmp_path, monkeypatch, capsys):
    path, times = clicks
    out = tmp_path / "loop.wav"
    code, _, stderr = run_cli(["loop", path, "--start", "b2", "--bars", "4", "-o", out, *FAST], monkeypatch, capsys)
    assert code == 0, stderr
    audio, rate = sf.read(out, dtype="int16")
    assert abs(len(audio) / rate - (times[20] - times[4])) < 0.012  # 4 bars of 4 beats from bar 2
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["command"] == "loop" and len(meta["seams"]) == 2
    loop_point = meta["seams"][-1]
    assert loop_point["seconds"] == pytest.approx(len(audio) / rate, abs=1e-3)
    assert meta["regenerated_s"] == pytest.approx(times[16] - times[12], abs=0.02)  # one bar


def test_loop_keeps_its_untouched_middle_sample_exact(song_wav, tmp_path, monkeypatch, capsys):
    out = tmp_path / "loop.wav"
    code, _, stderr = run_cli(["loop", song_wav, "--start", "1", "--end", "5", "--length", "1", "-o", out, *FAST],
                              monkeypatch, capsys)
    assert code == 0, stderr
    original, loop = sf.read(song_wav, dtype="int16")[0], sf.read(out, dtype="int16")[0]
    assert len(loop) == 4 * SR
    middle = slice(round(0.2 * SR), round(2.8 * SR))  # away from the loop point's and the regenerated part's fades
    assert np.array_equal(loop[middle], original[SR:][middle])
    assert not np.array_equal(loop[3 * SR :], original[4 * SR : 5 * SR])


def test_loop_needs_end_or_bars(song_wav, monkeypatch, capsys):
    code, _, stderr = run_cli(["loop", song_wav, "--start", "1", *FAST], monkeypatch, capsys)
    assert code == 2 and "--end or --bars" in stderr


@pytest.mark.slow
def test_restyle_covers_a_song_longer_than_the_window(tmp_path, monkeypatch, capsys):
    path = tmp_path / "long.wav"
    sf.write(path, synth_song(13.0), SR, subtype="PCM_16")
    out = tmp_path / "restyled.wav"
    code, _, stderr = run_cli(["restyle", path, "--toward", "rock", "--context", "1", "-o", out, *FAST, "--steps", "1"],
                              monkeypatch, capsys)
    assert code == 0, stderr
    meta = json.loads(out.with_suffix(".json").read_text())
    windows = meta["restyle_windows"]
    assert len(windows) == len(meta["windows"]) == 3  # 13 s in windows of at most half of 11.9 s
    assert windows[0]["start_s"] == 0 and windows[-1]["end_s"] == pytest.approx(13.0)
    assert all(set(w["before"]) == set(w["after"]) == {"rock"} for w in windows)
    assert all(a["end_s"] == pytest.approx(b["start_s"]) for a, b in zip(windows, windows[1:]))
    assert len(meta["seams"]) == len(windows) - 1  # between windows; the song's own ends are not seams
    assert sf.info(out).frames == 13 * SR


def test_plot_writes_a_picture_beside_each_output(song_wav, tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "pic.wav"
    code, _, stderr = run_cli(["continue", song_wav, "--seconds", "2", "--plot", "--variations", "2", "-o", out, *FAST],
                              monkeypatch, capsys)
    assert code == 0, stderr
    for name in ("pic_1", "pic_2"):
        png = (tmp_path / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_plot_without_matplotlib_is_one_line_before_any_work(song_wav, tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    code, _, stderr = run_cli(["infill", song_wav, "--start", "1", "--end", "2", "--plot", "-o", tmp_path / "x.wav",
                               *FAST], monkeypatch, capsys)
    assert code == 2 and "plot" in stderr and len(stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [song_wav.name]
