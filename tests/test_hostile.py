"""The hostile user's cases of issue 24, each kept as a test: files a command reads are never
written, a lost race keeps its result whichever name was taken, no scratch file is left behind,
--json always prints one object, batch jobs run as they would alone, and refusals come first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicguide import atomic

from conftest import one_line_error, run_cli, synth_song

SR = 44100
TR = ["--model", "tiny-random", "--steps", "2", "--device", "cpu", "--seed", "3"]
MUSICGUIDE = [sys.executable, "-m", "musicguide"]


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def wav(folder: Path, name: str, seconds: float = 6.0, **kwargs) -> Path:
    path = folder / name
    sf.write(path, synth_song(seconds, **kwargs), kwargs.get("sample_rate", SR), subtype="PCM_16")
    return path


# ---- 1. every file a command reads is an input ----------------------------------------------------


def test_restyle_never_overwrites_its_like_reference(tmp_path, monkeypatch, capsys):
    song, ref = wav(tmp_path, "song.wav"), wav(tmp_path, "ref.wav", seed=1)
    before = ref.read_bytes()
    args = ["restyle", song, "--like", ref, "--start", "1", "--end", "3", *TR, "--overwrite", "-q"]
    code, _, stderr = run_cli([*args, "-o", ref], monkeypatch, capsys)
    one_line_error(code, stderr, "would overwrite the input")
    # and as a variation's name: out_2.wav is the reference
    ref2 = tmp_path / "out_2.wav"
    ref2.write_bytes(before)
    code, _, stderr = run_cli([*args, "--like", ref2, "-o", tmp_path / "out.wav", "--variations", "2"], monkeypatch, capsys)
    one_line_error(code, stderr, "would overwrite the input")
    assert ref.read_bytes() == before and ref2.read_bytes() == before
    assert names(tmp_path) == ["out_2.wav", "ref.wav", "song.wav"]


def test_a_transitions_second_track_and_a_model_folder_are_inputs(tmp_path, monkeypatch, capsys):
    a, b = wav(tmp_path, "a.wav"), wav(tmp_path, "b.wav", seed=1)
    before = b.read_bytes()
    code, _, stderr = run_cli(["transition", a, b, "--length", "2", *TR, "-o", b, "--overwrite"], monkeypatch, capsys)
    one_line_error(code, stderr, "would overwrite the input")
    assert b.read_bytes() == before
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model_config.json").write_text("{}")
    code, _, stderr = run_cli(["infill", a, "--start", "1", "--end", "2", "--model", folder, "--steps", "2", "-q",
                               "-o", folder / "model_config.wav", "--overwrite"], monkeypatch, capsys)
    one_line_error(code, stderr, "would overwrite the input")  # its sidecar is the model's config
    assert (folder / "model_config.json").read_text() == "{}"


def test_a_batch_never_overwrites_its_jobs_file(tmp_path, monkeypatch, capsys):
    song = wav(tmp_path, "song.wav")
    jobs = tmp_path / "o.json"  # a job's sidecar would be the jobs file itself
    text = json.dumps({"args": ["infill", str(song), "--start", "1", "--end", "2", "--steps", "2", "--seed", "1",
                                "-o", str(tmp_path / "o.wav"), "--overwrite"]}) + "\n"
    jobs.write_text(text)
    code, _, stderr = run_cli(["batch", jobs, "--model", "tiny-random", "--device", "cpu", "-q"], monkeypatch, capsys)
    assert code == 1 and "would overwrite the input" in stderr, stderr
    assert jobs.read_text() == text and names(tmp_path) == ["o.json", "song.wav"]


# ---- 2. a lost race keeps its result, whichever name of the unit was taken -------------------------


@pytest.mark.parametrize("taken", range(6))
def test_a_name_taken_mid_run_keeps_the_whole_result_aside(tmp_path, taken):
    """Two variations with pictures: six names. Whichever one another program creates while this
    run works, that file stays as it was, none of this run's names appear, and all six of its
    files are kept as NAME.conflict-…, complete."""
    targets = [tmp_path / f"o_{i}{suffix}" for i in (1, 2) for suffix in (".wav", ".json", ".png")]
    with atomic.Outputs(targets, overwrite=False) as outputs:
        outputs.reserve()
        for target in targets:
            outputs.write(target, lambda p, t=target: p.write_text("new " + t.name))
        targets[taken].write_text("theirs")
        with pytest.raises(atomic.UserError, match="created by another program") as caught:
            outputs.publish()
    assert targets[taken].read_text() == "theirs"
    kept = sorted(p for p in tmp_path.iterdir() if ".conflict-" in p.name)
    assert len(kept) == 6 and all(str(p) in str(caught.value) for p in kept)
    assert sorted(p.read_text() for p in kept) == sorted("new " + t.name for t in targets)
    assert names(tmp_path) == sorted([targets[taken].name, *(p.name for p in kept)])


def test_a_name_taken_mid_run_through_the_cli_exits_2_and_keeps_the_result(tmp_path, monkeypatch, capsys):
    song = wav(tmp_path, "song.wav")
    out = tmp_path / "o.flac"
    real = atomic.Outputs.publish

    def someone_writes_the_sidecar(self):
        out.with_suffix(".json").write_text("theirs")
        real(self)

    monkeypatch.setattr(atomic.Outputs, "publish", someone_writes_the_sidecar)
    code, _, stderr = run_cli(["infill", song, "--start", "1", "--end", "2", *TR, "-q", "-o", out], monkeypatch, capsys)
    one_line_error(code, stderr, "created by another program")
    kept = sorted(p.name for p in tmp_path.iterdir() if ".conflict-" in p.name)
    assert [Path(k).suffix for k in kept] == [".flac", ".json"] and not out.exists()
    sidecar = json.loads((tmp_path / kept[1]).read_text())
    assert sidecar["output"]["sha256"] == __import__("hashlib").sha256((tmp_path / kept[0]).read_bytes()).hexdigest()


@pytest.mark.parametrize("taken", ["o_1.png", "o_2.wav", "o_2.json"])
def test_a_later_name_of_variations_with_pictures_taken_mid_run(taken, tmp_path, monkeypatch, capsys):
    song = wav(tmp_path, "song.wav")
    real = atomic.Outputs.publish

    def someone_takes_a_name(self):
        (tmp_path / taken).write_text("theirs")
        real(self)

    monkeypatch.setattr(atomic.Outputs, "publish", someone_takes_a_name)
    code, _, stderr = run_cli(["infill", song, "--start", "1", "--end", "2", *TR, "-q", "-o", tmp_path / "o.wav",
                               "--variations", "2", "--plot"], monkeypatch, capsys)
    one_line_error(code, stderr, "created by another program")
    kept = [p.name for p in tmp_path.iterdir() if ".conflict-" in p.name]
    assert sorted(Path(k).suffix for k in kept) == sorted([".wav", ".json", ".png"] * 2)
    assert names(tmp_path) == sorted(["song.wav", taken, *kept]) and (tmp_path / taken).read_text() == "theirs"


@pytest.mark.slow
def test_two_runs_that_share_only_a_sidecar_name_both_keep_their_result(tmp_path):
    """o.wav and o.flac both want o.json: one publishes, the other exits 2 with its result aside."""
    song = wav(tmp_path, "song.wav", 10.0)
    run = [*MUSICGUIDE, "infill", str(song), "--start", "8", "--end", "9", "--steps", "4", "--context", "1",
           "--model", "tiny-random", "--device", "cpu", "-q"]
    for attempt in range(3):
        for p in tmp_path.iterdir():
            if p != song:
                p.unlink()
        runs = [subprocess.Popen([*run, "--seed", str(seed), "-o", str(tmp_path / f"o{suffix}")], stderr=subprocess.PIPE,
                                 text=True) for seed, suffix in ((1, ".wav"), (2, ".flac"))]
        codes = [r.wait(300) for r in runs]
        errors = [r.stderr.read() for r in runs]
        assert sorted(codes) in ([0, 0], [0, 2]), errors  # [0, 0]: one ended before the other checked
        if sorted(codes) == [0, 2]:
            break
    assert 1 not in codes and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    if sorted(codes) == [0, 2]:
        loser = codes.index(2)
        one_line_error(2, errors[loser], "created by another program")
        kept = [p for p in tmp_path.iterdir() if ".conflict-" in p.name]
        assert sorted(p.suffix for p in kept) == sorted([".json", (".wav", ".flac")[loser]])


# ---- 3. no scratch file left behind ---------------------------------------------------------------


def test_a_converted_input_that_fails_leaves_no_scratch_file(tmp_path, monkeypatch, capsys):
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    data = synth_song(4.0, sample_rate=48000)
    data[100_000] = np.nan
    bad = tmp_path / "float48k_nan.wav"
    sf.write(bad, data, 48000, subtype="FLOAT")
    code, _, stderr = run_cli(["infill", bad, "--start", "2", "--end", "3", *TR, "-q"], monkeypatch, capsys)
    one_line_error(code, stderr, "NaN")
    assert names(scratch) == []


def size(path: Path) -> int:
    """A scratch file's size, or 0 once it is gone (other temporary files come and go while the
    command starts, between listing the folder and asking for their size)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_conversion_leaves_no_scratch_file(tmp_path, signum):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    song = tmp_path / "long48k.flac"
    block = synth_song(10.0, sample_rate=48000)
    with sf.SoundFile(song, "w", 48000, 2, subtype="PCM_16") as f:
        for _ in range(60):
            f.write(block)
    run = subprocess.Popen([*MUSICGUIDE, "infill", str(song), "--start", "5", "--end", "6", *TR, "-q",
                            "-o", str(tmp_path / "o.wav")], stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "TMPDIR": str(scratch)})
    deadline = time.monotonic() + 120
    while not any(size(p) > 1 << 20 for p in scratch.iterdir()):
        assert time.monotonic() < deadline and run.poll() is None, run.stderr.read()
        time.sleep(0.01)
    run.send_signal(signum)
    code = run.wait(120)
    one_line_error(code, run.stderr.read(), "interrupted", status=128 + signum)
    assert names(scratch) == []


# ---- 4. --json prints exactly one JSON object on stdout, whatever happens ----------------------------


def one_json(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, stdout
    return json.loads(lines[0])


@pytest.mark.parametrize("args", [
    ["infill", "song.wav", "--start", "1", "--end", "2", "--bogus"],
    ["infill", "song.wav", "--end", "2"],
    ["infill", "song.wav", "--start", "1", "--end", "2", "--sampler", "bogus"],
    ["infill", "song.wav", "--start", "1", "--end", "2", "--steps", "abc"],
    ["infill", "song.wav", "extra.wav", "--start", "1", "--end", "2"],
    ["models", "list"],
    ["batch", "jobs.jsonl", "--precision", "bogus"],
])
def test_json_parser_errors_print_one_object(args, monkeypatch, capsys):
    code, stdout, stderr = run_cli([*args, "--json"], monkeypatch, capsys)
    error = one_json(stdout)
    assert code == 2 and error == {"ok": False, "error": error["error"], "exit_code": 2}
    one_line_error(code, stderr, error["error"])


def test_no_command_is_a_one_line_error(monkeypatch, capsys):
    for args in ([], ["models"], ["--debug"]):
        code, stdout, stderr = run_cli(args, monkeypatch, capsys)
        one_line_error(code, stderr, "missing a command")
        assert stdout == ""


@pytest.mark.slow
def test_an_early_ctrl_c_with_json_prints_one_object(tmp_path):
    song = wav(tmp_path, "song.wav")
    run = subprocess.Popen([*MUSICGUIDE, "infill", str(song), "--start", "1", "--end", "2", *TR, "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    run.send_signal(signal.SIGINT)
    code = run.wait(60)
    stdout, stderr = run.stdout.read(), run.stderr.read()
    one_line_error(code, stderr, "interrupted by SIGINT", status=130)
    assert one_json(stdout)["exit_code"] == 130


# ---- 5. batch jobs run as they would alone ----------------------------------------------------------


@pytest.mark.parametrize("job, expected", [
    (["generate", "--help"], "--help"),
    (["infill", "song.wav", "--start", "1", "--end", "2", "-mdemo"], "--model"),
    (["infill", "song.wav", "--start", "1", "--end", "2", "--model=demo"], "--model"),
    (["infill", "song.wav", "-qmdemo", "--start", "1", "--end", "2"], "batch's own option"),
    (["infill", "song.wav", "--start", "1", "--end", "2", "--device=cpu"], "--device"),
    (["infill", "song.wav", "--start", "1", "--end", "2", "--json"], "--json"),
    (["infill", "song.wav", "--start", "1", "--end", "2", "--steps", "abc"], "--steps"),
])
def test_a_job_that_asks_for_help_or_repeats_a_batch_option_is_a_bad_file(job, expected, tmp_path, monkeypatch,
                                                                          capsys):
    monkeypatch.chdir(tmp_path)
    wav(tmp_path, "song.wav")
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"args": job}) + "\n")
    code, stdout, stderr = run_cli(["batch", "jobs.jsonl", "--model", "tiny-random", "--device", "cpu", "--json"],
                                   monkeypatch, capsys)
    error = one_json(stdout)
    assert code == 2 and "line 1" in error["error"] and expected in error["error"], error
    one_line_error(code, stderr, "line 1")
    assert names(tmp_path) == ["jobs.jsonl", "song.wav"]


def test_a_job_may_end_its_options_with_a_double_dash(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    wav(tmp_path, "-x.wav")
    args = ["infill", "--start", "1", "--end", "2", "--steps", "2", "--seed", "1", "--", "-x.wav"]
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"args": [*args[:-2], "-o", "batch.wav", *args[-2:]]}) + "\n")
    code, stdout, stderr = run_cli(["batch", "jobs.jsonl", "--model", "tiny-random", "--device", "cpu", "--json"],
                                   monkeypatch, capsys)
    assert code == 0 and one_json(stdout)["ok"], stderr
    code, _, stderr = run_cli([*args[:-2], "--model", "tiny-random", "--device", "cpu", "-q", "-o", "alone.wav",
                               *args[-2:]], monkeypatch, capsys)
    assert code == 0, stderr
    assert sf.read(tmp_path / "batch.wav")[0].tolist() == sf.read(tmp_path / "alone.wav")[0].tolist()


# ---- 8. a second signal while the first unwinds ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_changes_neither_the_line_nor_the_status(tmp_path, second):
    song = wav(tmp_path, "song.wav")
    for attempt in range(3):
        run = subprocess.Popen([*MUSICGUIDE, "infill", str(song), "--start", "1", "--end", "2", "--model", "tiny-random",
                                "--device", "cpu", "--steps", "5000", "-q", "-o", str(tmp_path / "o.wav")],
                               stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not [p for p in tmp_path.iterdir() if p.name.startswith(".")]:
            assert time.monotonic() < deadline and run.poll() is None, run.stderr.read()
            time.sleep(0.01)
        time.sleep(0.5)
        run.send_signal(signal.SIGINT)
        time.sleep(0.03)
        run.send_signal(second)
        code = run.wait(60)
        one_line_error(code, run.stderr.read(), "interrupted by SIGINT", status=130)
        assert names(tmp_path) == ["song.wav"]


# ---- 6, 7, 9, 10: refusals before the work, with the limit named ------------------------------------


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if a command tracks beats, or starts sampling."""
    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the refusal")

    monkeypatch.setattr("musicguide.beat_tracking.track_beats", forbidden)
    monkeypatch.setattr("musicguide.edit.infill", forbidden)


@pytest.mark.parametrize("args, expected", [
    (["infill", "song.wav", "--start", "1", "--end", "2", "--format", "FLOAT", "-o", "o.flac"], "FLAC cannot store"),
    (["infill", "song.wav", "--start", "1", "--end", "2", "--guidance", "1e308"], "--guidance must be a number from 0"),
    (["infill", "song.wav", "--start", "b3", "--end", "b4", "-o", "nodir/o.wav"], "does not exist"),
    (["infill", "song.wav", "--start", "b0", "--end", "b2"], "no bar 0"),
    (["infill", "song.wav", "--start", "b2.0", "--end", "b3"], "no bar 2 beat 0"),
    (["loop", "song.wav", "--start", "b2", "--bars", "0"], "--bars must be a positive number"),
    (["restyle", "song.wav", "--like", "ref.wav", "--start", "b2", "--end", "b3", "-o", "ref.wav", "--overwrite"],
     "would overwrite the input"),
    (["continue", "song.wav", "--seconds", "1e-9"], "at least 1 ms"),
    (["generate", "--seconds", "1e-9"], "at least 1 ms"),
    (["transition", "song.wav", "ref.wav", "--length", "1e-9"], "at least 1 ms"),
])
def test_what_can_be_refused_is_refused_before_any_work(args, expected, tmp_path, monkeypatch, capsys, no_work):
    monkeypatch.chdir(tmp_path)
    wav(tmp_path, "song.wav"), wav(tmp_path, "ref.wav", seed=1)
    code, _, stderr = run_cli([*args, *TR, "-q"], monkeypatch, capsys)
    one_line_error(code, stderr, expected)
    assert names(tmp_path) == ["ref.wav", "song.wav"]


def test_a_full_disk_is_found_before_sampling(tmp_path, monkeypatch, capsys, no_work):
    import shutil
    from collections import namedtuple

    song = wav(tmp_path, "song.wav")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**5, 10**5))
    code, _, stderr = run_cli(["infill", song, "--start", "1", "--end", "2", *TR, "-q"], monkeypatch, capsys)
    one_line_error(code, stderr, "not enough disk space")
    assert names(tmp_path) == ["song.wav"]


@pytest.mark.parametrize("region", [["--end", "2.0001"], ["--bars", "0.001", "--bpm", "120", "--downbeat", "0"]])
def test_a_loop_too_short_names_the_minimum(region, tmp_path, monkeypatch, capsys):
    song = wav(tmp_path, "song.wav")
    code, _, stderr = run_cli(["loop", song, "--start", "2", *region, *TR, "-q"], monkeypatch, capsys)
    one_line_error(code, stderr, "at least 0.5 s")


def test_the_last_bar_can_be_looped_when_the_grid_ends_just_past_the_song(tmp_path, monkeypatch, capsys):
    """4 bars at 96 bpm end at 10.000 s; the clip ends at 9.990 s."""
    song = wav(tmp_path, "nine.wav", 9.99)
    grid = ["--bpm", "96", "--downbeat", "0", "--beats-per-bar", "4"]
    code, _, stderr = run_cli(["loop", song, "--start", "b4", "--bars", "1", *grid, *TR, "-q", "-o", tmp_path / "l.wav"],
                              monkeypatch, capsys)
    assert code == 0, stderr
    assert json.loads((tmp_path / "l.json").read_text())["loop_s"] == [7.5, 9.99]
    code, _, stderr = run_cli(["loop", song, "--start", "b4", "--bars", "2", *grid, *TR, "-q"], monkeypatch, capsys)
    one_line_error(code, stderr, "--bars 2 from --start b4 ends at 12.500 s, past the end of the song (9.990 s)")


# ---- 13: small ones -------------------------------------------------------------------------------


def test_a_special_folder_is_not_called_missing(tmp_path, monkeypatch, capsys):
    song = wav(tmp_path, "song.wav")
    code, _, stderr = run_cli(["infill", song, "--start", "1", "--end", "2", *TR, "-o", "/proc/o.wav"], monkeypatch,
                              capsys)
    assert code == 2 and "does not exist" not in stderr and "/proc" in stderr, stderr


def test_beats_says_when_the_meter_is_only_the_default(tmp_path, monkeypatch, capsys):
    song = wav(tmp_path, "short.wav", 2.5)
    code, stdout, _ = run_cli(["beats", song], monkeypatch, capsys)
    assert code == 0 and "(the default: too few beats to tell)" in stdout and "detected" not in stdout
    code, stdout, _ = run_cli(["beats", song, "--json"], monkeypatch, capsys)
    assert json.loads(stdout)["meter_source"] == "default"


def test_lines_are_not_wrapped_when_piped(tmp_path):
    """`wrote …` and a seam note are one line each at any length, when stdout/stderr are pipes."""
    song = wav(tmp_path, "song-with-a-rather-long-name-so-that-the-wrote-line-is-past-eighty-columns.wav")
    out = tmp_path / ("an-output-name-that-is-also-quite-long-" * 2 + ".wav")
    result = subprocess.run([*MUSICGUIDE, "infill", str(song), "--start", "1", "--end", "2", *TR, "-o", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    wrote = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(wrote) == 1 and wrote[0].startswith("wrote ") and wrote[0].endswith(".json"), result.stdout
    assert all(line.startswith(("note:", "warning:", "model ", "infill ")) for line in result.stderr.splitlines()
               if line.strip()), result.stderr


# ---- 11: levels far from the model's working level ----------------------------------------------------


def level_db(audio: np.ndarray) -> float:
    centred = audio - audio.mean(axis=0)
    return 10 * np.log10(max(float((centred.astype(np.float64) ** 2).mean()), 1e-60))


def infill_level(tmp_path, monkeypatch, capsys, data: np.ndarray, subtype: str, gap=(5.0, 7.0)):
    song = tmp_path / f"level-{subtype}.wav"
    sf.write(song, data, SR, subtype=subtype)
    out = tmp_path / "o.wav"
    code, _, stderr = run_cli(["infill", song, "--start", str(gap[0]), "--end", str(gap[1]), *TR, "-q", "-o", out,
                               "--overwrite", "--format", "FLOAT"], monkeypatch, capsys)
    assert code == 0, stderr
    edited, _ = sf.read(out, dtype="float32")
    a, b = round(gap[0] * SR), round(gap[1] * SR)
    inside = slice(a + 2048, b - 2048)  # past the seam fades
    context = np.concatenate([data[a - 2 * SR : a], data[b : b + 2 * SR]])
    return edited, data, inside, context, json.loads(out.with_suffix(".json").read_text())


@pytest.mark.parametrize("target_db", [-60.0, 9.0])
def test_a_gap_in_a_song_far_from_the_working_level_comes_out_at_the_songs_level(target_db, tmp_path, monkeypatch,
                                                                                capsys):
    data = synth_song(12.0)
    data *= 10 ** ((target_db - level_db(data)) / 20)
    edited, data, inside, context, sidecar = infill_level(tmp_path, monkeypatch, capsys, data, "FLOAT")
    assert abs(level_db(edited[inside]) - level_db(context)) < 6.0
    assert sidecar["windows"][0]["level_shift"]["gain_db"] == pytest.approx(-20.0 - target_db, abs=1.0)
    assert np.array_equal(edited[: 4 * SR], data[: 4 * SR])  # outside: untouched, sample for sample


def test_a_dc_offset_is_kept_inside_the_gap(tmp_path, monkeypatch, capsys):
    data = synth_song(12.0) * 0.5 + 0.25
    edited, data, inside, context, sidecar = infill_level(tmp_path, monkeypatch, capsys, data, "FLOAT")
    assert edited[inside].mean() == pytest.approx(0.25, abs=0.06)  # the tiny model adds a mean of its own
    assert sidecar["windows"][0]["level_shift"]["dc_removed"] == pytest.approx([0.25, 0.25], abs=0.01)


def test_a_gap_in_digital_silence_stays_silent(tmp_path, monkeypatch, capsys):
    data = np.concatenate([synth_song(20.0), np.zeros((20 * SR, 2), np.float32)])
    edited, data, inside, context, sidecar = infill_level(tmp_path, monkeypatch, capsys, data, "PCM_16", gap=(30.0, 32.0))
    assert not edited[25 * SR : 35 * SR].any()
    assert sidecar["windows"][0]["level_shift"]["silent_context"]


def test_a_song_at_a_normal_level_is_not_shifted(tmp_path, monkeypatch, capsys):
    from musicguide import levels

    data = synth_song(12.0)
    torch_audio = __import__("torch").from_numpy(data.T.copy())[None]
    assert levels.working_level(torch_audio, __import__("torch").ones(data.shape[0], dtype=bool)) is None
    edited, data, inside, context, sidecar = infill_level(tmp_path, monkeypatch, capsys, data, "PCM_16")
    assert "level_shift" not in sidecar["windows"][0]


def test_a_float_file_far_beyond_full_scale_is_taken_with_a_warning(tmp_path, monkeypatch, capsys):
    song = tmp_path / "hot.wav"
    sf.write(song, synth_song(8.0) * 1e6, SR, subtype="FLOAT")
    code, _, stderr = run_cli(["infill", song, "--start", "3", "--end", "4", *TR[:-2], "--seed", "1"], monkeypatch,
                              capsys)
    assert code == 0 and "warning: hot.wav has samples up to +1" in stderr and "dBFS, far beyond full scale" in stderr
    normal = wav(tmp_path, "normal.wav")
    code, _, stderr = run_cli(["infill", normal, "--start", "3", "--end", "4", *TR], monkeypatch, capsys)
    assert code == 0 and "warning" not in stderr
