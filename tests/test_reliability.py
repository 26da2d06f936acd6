"""Nothing lost, nothing half-written: bad values, outputs as one unit, races and signals.

The values are tried in process (fast); the races and signals with real `musicguide` processes,
because only a real process has real signal handlers, imports and a second writer."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import soundfile as sf

from musicguide import atomic
from musicguide.errors import UserError

from conftest import one_line_error, run_cli, synth_song

SR = 44100
FAST = ["--steps", "3", "--context", "2", "--quiet", "--seed", "7", "--model", "tiny-random", "--device", "cpu"]
MUSICGUIDE = [sys.executable, "-m", "musicguide"]




def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- values ----------------------------------------------------------------------------------------


def one_hertz_wav(folder: Path) -> Path:
    path = folder / "one-hertz.wav"
    sf.write(path, synth_song(1.0)[:5000], 1000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data[24:28] = (1).to_bytes(4, "little")  # the header's sample rate: 1 Hz
    data[28:32] = (4).to_bytes(4, "little")  # and its byte rate to match
    path.write_bytes(bytes(data))
    return path


def bad_values(tmp: Path, song: Path) -> list[tuple[list, str]]:
    loop = tmp / "loop.wav"
    loop.symlink_to(loop)
    out = ["-o", tmp / "out" / "never.wav"]
    region = [song, "--start", "1", "--end", "2"]
    huge_int = "18446744073709551616"
    return [
        (["infill", *region, "--seed", huge_int, *out], "--seed"),
        (["infill", *region, "--seed", "-1", *out], "--seed"),
        (["infill", *region, "--steps", "99999999999999999999", *out], "--steps"),
        (["continue", song, "--seconds", "2", "--seed", str(2**32), *out], "--seed"),
        (["continue", song, "--seconds", "1e305", *out], "--seconds"),
        (["continue", song, "--seconds", "1e9", *out], "--seconds"),
        (["continue", song, "--seconds", "300000", *out], "memory"),
        (["generate", "--seconds", "1e305", *out], "--seconds"),
        (["transition", song, song, "--length", "1e305", *out], "--length"),
        (["infill", *region, "--context", "1e308", *out], "--context"),
        (["infill", song, "--start", "1" + "0" * 310, "--end", "2", *out], "--start"),
        (["infill", song, "--start", "1", "--end", "9" * 400 + ":00", *out], "--end"),
        (["infill", song, "--start", "3", "--end", "3.00001", *out], "less than one sample apart"),
        (["infill", *region, "--variations", "10000", *out], "--variations"),
        (["infill", one_hertz_wav(tmp), "--start", "1", "--end", "2", *out], "1 Hz"),
        (["infill", loop, "--start", "1", "--end", "2", *out], "loop"),
        (["infill", *region, "-o", tmp / ("x" * 252 + ".wav")], "at most 255"),
        (["infill", *region, "-o", tmp], ".wav or .flac"),
        (["infill", *region, "-o", tmp / "no-such-folder" / "x.wav"], "does not exist"),
        (["infill", *region, "--sampler", "ddpm", "--eta", "0.5", *out], "--eta"),
        (["restyle", song, "--toward", "jazz", "--keep", "nan", *out], "--keep"),
        (["restyle", song, "--toward", "jazz", "--keep", "-1", *out], "--keep"),
        (["tags", song, "--top", "0"], "--top"),
        (["evaluate", tmp, "--out", tmp / "r.md", "--task", "nonsense"], "unknown task"),
        (["evaluate", tmp, "--out", tmp / "r.md", "--seed", huge_int], "--seed"),
        (["infill", song, "--start", "1"], "Missing option '--end'"),
        (["infill", *region, "--steps", "many"], "--steps"),
        (["infill", "-x.wav", "--start", "1", "--end", "2"], "No such option"),
        (["frobnicate"], "No such command"),
        (["--debug", "infill", tmp / "missing.wav", "--start", "1", "--end", "2"], "no such file"),
    ]


def test_bad_values_give_exit_2_one_line_and_write_nothing(song_wav, tmp_path, monkeypatch, capsys):
    (tmp_path / "out").mkdir()
    for args, expected in bad_values(tmp_path, song_wav):
        code, _, stderr = run_cli(args, monkeypatch, capsys)
        if args[0] == "--debug":  # the traceback comes first; the status and the last line stay the same
            assert code == 2 and stderr.rstrip().splitlines()[-1].startswith("error: "), stderr
            continue
        one_line_error(code, stderr, expected)
        assert files(tmp_path / "out") == [], args
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], args


def test_longest_legal_name_is_written(song_wav, tmp_path, monkeypatch, capsys):
    """A 255-byte name fits the file system; its temporary name must fit too."""
    out = tmp_path / ("x" * 250 + ".wav")
    code, _, stderr = run_cli(["infill", song_wav, "--start", "1", "--end", "2", "-o", out, *FAST], monkeypatch, capsys)
    assert code == 0, stderr
    assert out.exists() and out.with_suffix(".json").exists()
    assert files(tmp_path) == sorted([song_wav.name, out.name, out.with_suffix(".json").name])


def test_version_alone_prints_the_version(monkeypatch, capsys):
    code, stdout, _ = run_cli(["--version"], monkeypatch, capsys)
    assert code == 0 and stdout.startswith("musicguide ")


def test_json_reports_outputs_and_errors(song_wav, tmp_path, monkeypatch, capsys):
    out = tmp_path / "j.wav"
    code, stdout, _ = run_cli(["infill", song_wav, "--start", "1", "--end", "2", "-o", out, "--json", *FAST],
                              monkeypatch, capsys)
    result = json.loads(stdout)
    assert code == 0 and result["ok"] and result["outputs"][0]["path"] == str(out)
    assert Path(result["outputs"][0]["sidecar"]).exists()
    code, stdout, _ = run_cli(["infill", song_wav, "--start", "1", "--end", "2", "-o", out, "--json", *FAST],
                              monkeypatch, capsys)
    error = json.loads(stdout)
    assert code == 2 and not error["ok"] and "exists" in error["error"]


# ---- outputs as one unit ------------------------------------------------------------------------------


def test_sidecar_describes_the_audio_beside_it(song_wav, tmp_path, monkeypatch, capsys):
    out = tmp_path / "pair.wav"
    code, _, stderr = run_cli(["infill", song_wav, "--start", "1", "--end", "2", "-o", out, *FAST], monkeypatch, capsys)
    assert code == 0, stderr
    assert json.loads(out.with_suffix(".json").read_text())["output"]["sha256"] == sha256(out)


def test_a_sidecar_that_is_a_folder_is_refused_before_any_work(song_wav, tmp_path, monkeypatch, capsys):
    (tmp_path / "out.json").mkdir()
    code, _, stderr = run_cli(["infill", song_wav, "--start", "1", "--end", "2", "-o", tmp_path / "out.wav",
                               "--overwrite", *FAST], monkeypatch, capsys)
    one_line_error(code, stderr, "is a folder")
    assert files(tmp_path) == ["out.json", song_wav.name]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_failed_write_changes_nothing_on_disk(song_wav, tmp_path, monkeypatch, capsys, overwrite):
    """A full disk at the last sidecar of two variations: no new file, and old ones untouched."""
    old = {}
    if overwrite:
        for name in ("v_1.wav", "v_1.json", "v_2.wav", "v_2.json"):
            (tmp_path / name).write_bytes(name.encode())
            old[name] = name.encode()
    real = Path.write_text
    calls = []

    def fail_second_sidecar(self, text, *args, **kwargs):
        calls.append(self)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", fail_second_sidecar)
    args = ["infill", song_wav, "--start", "1", "--end", "2", "-o", tmp_path / "v.wav", "--variations", "2", *FAST]
    code, _, stderr = run_cli(args + (["--overwrite"] if overwrite else []), monkeypatch, capsys)
    one_line_error(code, stderr, "disk holding")
    assert files(tmp_path) == sorted([song_wav.name, *old])
    assert all((tmp_path / name).read_bytes() == data for name, data in old.items())


def test_publish_rolls_back_when_a_rename_fails(tmp_path, monkeypatch):
    targets = [tmp_path / "a.wav", tmp_path / "a.json"]
    for t in targets:
        t.write_text("old " + t.name)
    real = os.replace

    def fail_on_json(src, dst):
        if str(dst).endswith("a.json"):
            raise OSError(errno.EIO, "I/O error", str(dst))
        return real(src, dst)

    with atomic.Outputs(targets, overwrite=True) as outputs:
        outputs.reserve()
        for t in targets:
            outputs.write(t, lambda p, t=t: p.write_text("new " + t.name))
        monkeypatch.setattr(atomic.os, "replace", fail_on_json)
        with pytest.raises(atomic.UserError, match="nothing was changed"):
            outputs.publish()
        monkeypatch.setattr(atomic.os, "replace", real)
    assert [t.read_text() for t in targets] == ["old a.wav", "old a.json"]
    assert files(tmp_path) == ["a.json", "a.wav"]


def test_evaluate_keeps_its_numbers_when_the_report_cannot_be_written(tmp_path, monkeypatch):
    from musicguide import evaluate

    class Report:
        def to_dict(self):
            return {"numbers": [1.0, 2.0]}

    monkeypatch.setattr("musicguide.evaluate.report.render_markdown", lambda report: "# report\n")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "rescue"))
    (tmp_path / "rescue").mkdir()
    real = Path.write_text

    def disk_full(self, text, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(UserError, match="numbers are in") as caught:
        evaluate.write_report(Report(), tmp_path / "r.md", tmp_path / "r.json")
    monkeypatch.setattr(Path, "write_text", real)
    rescued = Path(str(caught.value).rsplit("numbers are in ", 1)[1])
    assert json.loads(rescued.read_text()) == {"numbers": [1.0, 2.0]}
    assert files(tmp_path) == ["rescue"]


# ---- real processes: races and signals -------------------------------------------------------------


def start(args: list, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([*MUSICGUIDE, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the condition never held")
        time.sleep(0.02)


def partials(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".")]


def pair_matches(wav: Path) -> bool:
    return json.loads(wav.with_suffix(".json").read_text())["output"]["sha256"] == sha256(wav)


@pytest.mark.slow
def test_a_race_never_destroys_the_finished_output(song_wav, tmp_path):
    """A (slow) reserves same.wav, B (fast) writes it, then A finishes: B's pair stays, A says so and
    keeps its own result under another name."""
    same = tmp_path / "same.wav"
    args = ["infill", song_wav, "--start", "1", "--end", "2", "-o", same, "--model", "tiny-random", "--device", "cpu",
            "--context", "2", "--quiet"]
    slow = start([*args, "--steps", "20", "--seed", "1"])
    wait_for(lambda: partials(tmp_path))
    slow.send_signal(signal.SIGSTOP)  # A has reserved its files and checked the name; it waits here
    fast = start([*args, "--steps", "2", "--seed", "2"])
    try:
        assert fast.wait(300) == 0, fast.stderr.read()
    finally:
        slow.send_signal(signal.SIGCONT)
    written = sha256(same)
    code = slow.wait(300)
    stderr = slow.stderr.read()
    one_line_error(code, stderr, "created by another program")
    assert sha256(same) == written and pair_matches(same)
    assert json.loads(same.with_suffix(".json").read_text())["seed"] == 2
    kept = [p for p in tmp_path.iterdir() if ".conflict-" in p.name]
    assert sorted(p.suffix for p in kept) == [".json", ".wav"]
    assert pair_matches(next(p for p in kept if p.suffix == ".wav"))
    assert not partials(tmp_path)


@pytest.mark.slow
def test_concurrent_overwrites_leave_a_matching_pair(song_wav, tmp_path):
    same = tmp_path / "same.wav"
    runs = [start(["infill", song_wav, "--start", "1", "--end", "2", "-o", same, "--overwrite", "--model", "tiny-random",
                   "--device", "cpu", "--context", "2", "--quiet", "--steps", "2", "--seed", str(seed)])
            for seed in range(3)]
    assert [r.wait(300) for r in runs] == [0, 0, 0]
    assert pair_matches(same)
    assert files(tmp_path) == sorted([song_wav.name, "same.json", "same.wav"])


def long_wav(folder: Path, minutes: float) -> Path:
    path = folder / f"long-{minutes:g}min.wav"
    block = synth_song(10.0)
    with sf.SoundFile(path, "w", SR, 2, subtype="PCM_16") as f:
        for _ in range(round(minutes * 6)):
            f.write(block)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("when", ["import", "sampling", "writing"])
def test_signals_leave_nothing_behind(tmp_path, signum, when):
    """Ctrl-C or SIGTERM while modules import, while sampling, and while the output is written:
    one line, exit 128 + signal, no partial file, and the old output untouched."""
    song = long_wav(tmp_path, 4 if when == "writing" else 0.2)
    out = tmp_path / "out.wav"
    out.write_bytes(b"old")
    steps = "2" if when == "writing" else "2000"
    run = start(["infill", song, "--start", "5", "--end", "6", "-o", out, "--overwrite", "--model", "tiny-random",
                 "--device", "cpu", "--context", "2", "--quiet", "--steps", steps, "--format", "FLOAT"])
    if when == "import":
        time.sleep(0.3)
    elif when == "sampling":
        wait_for(lambda: partials(tmp_path))
        time.sleep(2.0)
    else:  # the reserved temporary WAV starts empty and grows while the song streams into it
        wait_for(lambda: any(p.suffix == ".partial" and p.stat().st_size > 1 << 20 for p in partials(tmp_path)))
    run.send_signal(signum)
    code = run.wait(120)
    stderr = run.stderr.read()
    if code == 0:  # the run beat the signal: then it must have written a whole, matching pair
        assert when == "writing" and pair_matches(out)
    else:
        one_line_error(code, stderr, "interrupted", status=128 + signum)
        assert out.read_bytes() == b"old"
    assert not partials(tmp_path)
    assert files(tmp_path) in (sorted([song.name, "out.wav"]), sorted([song.name, "out.wav", "out.json"]))


@pytest.mark.slow
def test_memory_stays_flat_in_the_song_length(tmp_path):
    """A 1 s edit of a 12-minute song needs less than 1.5x the memory of the same edit of a 1-minute one."""
    peaks = {}
    for minutes in (1, 12):
        song = long_wav(tmp_path, minutes)
        probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
                 "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        result = subprocess.run([sys.executable, "-c", probe, *MUSICGUIDE, "infill", str(song), "--start", "30",
                                 "--end", "31", "-o", str(tmp_path / f"{minutes}.wav"), *FAST],
                                capture_output=True, text=True, check=True)
        peaks[minutes] = int(result.stdout.split()[-1])
        song.unlink()
    assert peaks[12] < 1.5 * peaks[1], peaks


def test_an_unwritable_folder_is_found_before_any_work(song_wav, tmp_path, monkeypatch, capsys):
    """root ignores permissions, so the folder's answer is given by os.access here."""
    real = os.access
    monkeypatch.setattr(atomic.os, "access", lambda path, mode: False if Path(path) == tmp_path / "ro" else real(path, mode))
    (tmp_path / "ro").mkdir()
    loaded = []
    monkeypatch.setattr("musicguide.cli.running.load_model", lambda *a, **k: loaded.append(1))
    code, _, stderr = run_cli(["infill", song_wav, "--start", "1", "--end", "2", "-o", tmp_path / "ro" / "x.wav", *FAST],
                              monkeypatch, capsys)
    one_line_error(code, stderr, "no permission to write")
    assert not loaded and files(tmp_path / "ro") == []


@pytest.mark.parametrize("code_, words", [(errno.ENOSPC, "is full"), (errno.EACCES, "no permission"),
                                          (errno.ENAMETOOLONG, "too long"), (errno.EROFS, "read-only")])
def test_os_errors_read_as_plain_words(code_, words):
    assert words in atomic.plain_reason(OSError(code_, os.strerror(code_)), Path("/music/out.wav"))


def test_running_out_of_memory_is_one_line_and_writes_nothing(song_wav, tmp_path, monkeypatch, capsys):
    def exhausted(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr("musicguide.edit.infill", exhausted)
    code, _, stderr = run_cli(["infill", song_wav, "--start", "1", "--end", "2", "-o", tmp_path / "m.wav", *FAST],
                              monkeypatch, capsys)
    one_line_error(code, stderr, "out of CPU memory")
    assert files(tmp_path) == [song_wav.name]
