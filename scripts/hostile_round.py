"""Issue 24's hostile round, to run again after any change to the CLI, the writing or the signals:

    python scripts/hostile_round.py

Real `musicguide` processes on generated files (tiny-random model, CPU; about 2.5 minutes). Each
case prints OK or BAD: an exit other than 0, 1, 2, 130 or 143, a traceback, an exit 2 without its
one `error:` line, --json without exactly one JSON line on stdout, a hidden file left in the folder
or anything left in TMPDIR is BAD; at the end, every input must be unchanged. Then signals: a
double Ctrl-C, INT then TERM, SIGTERM while a long input is converted, Ctrl-C while modules load.
The cases are tests too (tests/test_hostile.py); this runs them together, as a user would. Exits 1
if anything is BAD."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import synth_song  # noqa: E402

SR = 44100
TR = ["--model", "tiny-random", "--steps", "2", "--device", "cpu", "-q"]
MUSICGUIDE = [sys.executable, "-m", "musicguide"]
INPUTS = ["song.wav", "ref.wav", "f48.wav", "song.ogg", "jobs.json", "-x.wav"]


def make_inputs(root: Path) -> None:
    sf.write(root / "song.wav", synth_song(10), SR, subtype="PCM_16")
    sf.write(root / "ref.wav", synth_song(6, seed=2), SR, subtype="PCM_16")
    sf.write(root / "f48.wav", synth_song(6, sample_rate=48000), 48000, subtype="FLOAT")
    with_nan = synth_song(6, sample_rate=48000)
    with_nan[1000] = np.nan
    sf.write(root / "nan48.wav", with_nan, 48000, subtype="FLOAT")
    sf.write(root / "song.ogg", synth_song(8), SR)
    sf.write(root / "quiet.wav", synth_song(10) * 0.001, SR, subtype="FLOAT")
    sf.write(root / "hot.wav", synth_song(10) * 3, SR, subtype="FLOAT")
    sf.write(root / "-x.wav", synth_song(6), SR, subtype="PCM_16")
    os.symlink("song.wav", root / "link.wav")
    jobs = {"jobs.json": ["infill", "song.wav", "--start", "1", "--end", "2", "-o", "jobs.wav", "--overwrite", "--steps", "2"],
            "help.jsonl": ["generate", "--help"],
            "dash.jsonl": ["infill", "--start", "1", "--end", "2", "--steps", "2", "-o", "dash.wav", "--", "-x.wav"]}
    for name, args in jobs.items():
        (root / name).write_text(json.dumps({"args": args}) + "\n")


def cases(root: Path) -> list[list[str]]:
    region = ["--start", "1", "--end", "2"]
    return [
        ["restyle", "song.wav", "--like", "ref.wav", "--start", "4", "--end", "8", *TR, "-o", "ref.wav", "--overwrite"],
        ["restyle", "song.wav", "--like", "ref.wav", "--start", "4", "--end", "8", *TR, "-o", "link.wav", "--overwrite"],
        ["transition", "song.wav", "ref.wav", "--length", "2", *TR, "-o", "ref.wav", "--overwrite"],
        ["infill", "song.wav", *region, *TR, "-o", "song.flac", "--overwrite"],
        ["infill", "song.wav", *region, *TR, "-o", f"../{root.name}/./song.wav", "--overwrite"],
        ["batch", "jobs.json", "--model", "tiny-random", "--device", "cpu"],
        ["batch", "help.jsonl", "--model", "tiny-random", "--json"],
        ["batch", "dash.jsonl", "--model", "tiny-random", "--device", "cpu", "--json"],
        ["infill", "nan48.wav", "--start", "2", "--end", "3", *TR],
        ["infill", "f48.wav", "--start", "2", "--end", "3", *TR, "-o", "f48.out.wav"],
        ["infill", "song.wav", *region, "--bogus", "--json"],
        ["infill", "song.wav", "--end", "2", "--json"],
        ["infill", "song.wav", *region, "--steps", "abc", "--json"],
        ["models", "list", "--json"],
        [],
        ["infill", "song.wav", *region, "--format", "FLOAT", "-o", "o.flac", *TR],
        ["infill", "song.wav", *region, "--guidance", "1e308", *TR],
        ["infill", "song.wav", "--start", "b2", "--end", "b3", "-o", "nodir/o.wav", *TR],
        ["loop", "song.wav", "--start", "b1", "--bars", "0", *TR],
        ["loop", "song.wav", "--start", "2", "--end", "2.0001", *TR],
        ["loop", "song.wav", "--start", "2", "--bars", "0.001", *TR],
        ["continue", "song.wav", "--seconds", "1e-9", *TR],
        ["generate", "--seconds", "1e-9", *TR],
        ["infill", "song.wav", *region, *TR, "-o", "/proc/o.wav"],
        ["infill", "quiet.wav", "--start", "4", "--end", "6", *TR, "-o", "quiet.out.wav"],
        ["infill", "hot.wav", "--start", "4", "--end", "6", *TR, "-o", "hot.out.wav"],
        ["infill", "song.ogg", "--start", "2", "--end", "3", *TR, "-o", "ogg.out.flac"],
        ["regenerate", "song.wav", "--start", "2", "--end", "5", *TR, "-o", "r.wav", "--variations", "2", "--plot"],
        ["infill", "song.wav", "--start", "-1", "--end", "2", *TR],
        ["infill", "song.wav", "--start", "9", "--end", "20", *TR],
        ["infill", "missing.wav", *region, *TR],
        ["infill", "song.wav", *region, *TR, "-o", "r_1.wav"],
        ["beats", "ref.wav"],
    ]


def hidden(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.name.startswith(".")]


def run_cases(root: Path, scratch: Path, env: dict) -> int:
    bad = 0
    for args in cases(root):
        done = subprocess.run([*MUSICGUIDE, *args], capture_output=True, text=True, env=env, cwd=root)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        ok = (done.returncode in (0, 1, 2, 130, 143) and not hidden(root) and not os.listdir(scratch)
              and "Traceback" not in done.stderr)
        if "--json" in args:
            out = [line for line in done.stdout.splitlines() if line.strip()]
            ok = ok and len(out) == 1 and isinstance(json.loads(out[0]), dict)
        if done.returncode == 2:
            ok = ok and len(errors) == 1
        bad += not ok
        print(f"{'OK ' if ok else 'BAD'} rc={done.returncode} {' '.join(args)[:70]:70s} | {(errors or lines or [''])[-1][:110]}")
    return bad


def run_signals(root: Path, scratch: Path, env: dict) -> int:
    """A double Ctrl-C, INT then TERM, SIGTERM while a long 48 kHz input is converted, and Ctrl-C in
    the first 0.3 s; three trials each: status 128 + the first signal, one line, nothing left."""
    long = root / "long48.flac"
    block = synth_song(10, sample_rate=48000)
    with sf.SoundFile(long, "w", 48000, 2, subtype="PCM_16") as f:
        for _ in range(30):
            f.write(block)
    bad = 0
    for name, signals, wait in [("INT INT", [signal.SIGINT, signal.SIGINT], "sampling"),
                                ("INT TERM", [signal.SIGINT, signal.SIGTERM], "sampling"),
                                ("TERM in conversion", [signal.SIGTERM], "conversion"),
                                ("INT in first 0.3 s", [signal.SIGINT], "start")]:
        for trial in range(3):
            song = str(long) if wait == "conversion" else "song.wav"
            run = subprocess.Popen([*MUSICGUIDE, "infill", song, "--start", "2", "--end", "3", "--model", "tiny-random",
                                    "--device", "cpu", "--steps", "3000", "-q", "-o", "sig.wav", "--json"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=root)
            if wait == "start":
                time.sleep(0.3)
            elif wait == "conversion":
                while not any(p.stat().st_size > 1 << 20 for p in scratch.iterdir()):
                    time.sleep(0.01)
            else:
                while not hidden(root):
                    time.sleep(0.01)
                time.sleep(1.0)
            for signum in signals:
                run.send_signal(signum)
                time.sleep(0.03)
            code, err, out = run.wait(60), run.stderr.read(), run.stdout.read()
            left = hidden(root) + os.listdir(scratch)
            good = (code == 128 + signals[0] and len(err.strip().splitlines()) == 1 and not left
                    and len(out.strip().splitlines()) == 1)
            bad += not good
            print(f"{'OK ' if good else 'BAD'} {name} trial {trial}: rc={code} left={left} err={err.strip()[:90]!r}")
    return bad


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="musicguide-hostile-"))
    scratch = root / "tmpdir"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    try:
        make_inputs(root)
        digests = {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in INPUTS}
        bad = run_cases(root, scratch, env)
        changed = [n for n, digest in digests.items() if hashlib.sha256((root / n).read_bytes()).hexdigest() != digest]
        print("inputs changed:", changed, "| bad:", bad)
        bad += len(changed) + run_signals(root, scratch, env)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("all OK" if not bad else f"{bad} BAD")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
