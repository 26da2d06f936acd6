"""Issue 24's hostile round, to run again after any change to the CLI, the writing or the signals:

    python scripts/hostile_round.py

Real `musicguide` processes on generated files (tiny-random model, CPU; about 2.5 minutes). Each
case prints OK or BAD: an exit other than 0, 1, 2, 130 or 143, a traceback, an exit 2 without its
one `error:` line, --json without exactly one JSON line on stdout, a hidden file left in the folder
or anything left in TMPDIR is BAD; at the end, every input must be unchanged. Then signals: a
double Ctrl-C, INT then TERM, SIGTERM while a long input is converted, Ctrl-C while modules load.
The cases are tests too (tests/test_hostile.py); this runs them together, as a user would."""
import hashlib, json, os, shutil, signal, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np, soundfile as sf
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import synth_song

root = Path(tempfile.mkdtemp(prefix="musicguide-hostile-"))
tmp = root / "tmpdir"; tmp.mkdir()
os.chdir(root)
SR = 44100
sf.write("song.wav", synth_song(10), SR, subtype="PCM_16")
sf.write("ref.wav", synth_song(6, seed=2), SR, subtype="PCM_16")
sf.write("f48.wav", synth_song(6, sample_rate=48000), 48000, subtype="FLOAT")
d = synth_song(6, sample_rate=48000); d[1000] = np.nan; sf.write("nan48.wav", d, 48000, subtype="FLOAT")
sf.write("song.ogg", synth_song(8), SR)
sf.write("quiet.wav", synth_song(10) * 0.001, SR, subtype="FLOAT")
sf.write("hot.wav", synth_song(10) * 3, SR, subtype="FLOAT")
sf.write("-x.wav", synth_song(6), SR, subtype="PCM_16")
os.symlink("song.wav", "link.wav")
Path("jobs.json").write_text(json.dumps({"args": ["infill", "song.wav", "--start", "1", "--end", "2", "-o", "jobs.wav", "--overwrite", "--steps", "2"]}) + "\n")
Path("help.jsonl").write_text(json.dumps({"args": ["generate", "--help"]}) + "\n")
Path("dash.jsonl").write_text(json.dumps({"args": ["infill", "--start", "1", "--end", "2", "--steps", "2", "-o", "dash.wav", "--", "-x.wav"]}) + "\n")
inputs = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in ["song.wav", "ref.wav", "f48.wav", "song.ogg", "jobs.json", "-x.wav"]}
TR = ["--model", "tiny-random", "--steps", "2", "--device", "cpu", "-q"]
M = [sys.executable, "-m", "musicguide"]
cases = [
    ["restyle", "song.wav", "--like", "ref.wav", "--start", "4", "--end", "8", *TR, "-o", "ref.wav", "--overwrite"],
    ["restyle", "song.wav", "--like", "ref.wav", "--start", "4", "--end", "8", *TR, "-o", "link.wav", "--overwrite"],
    ["transition", "song.wav", "ref.wav", "--length", "2", *TR, "-o", "ref.wav", "--overwrite"],
    ["infill", "song.wav", "--start", "1", "--end", "2", *TR, "-o", "song.flac", "--overwrite"],
    ["infill", "song.wav", "--start", "1", "--end", "2", *TR, "-o", "../work/./song.wav", "--overwrite"],
    ["batch", "jobs.json", "--model", "tiny-random", "--device", "cpu"],
    ["batch", "help.jsonl", "--model", "tiny-random", "--json"],
    ["batch", "dash.jsonl", "--model", "tiny-random", "--device", "cpu", "--json"],
    ["infill", "nan48.wav", "--start", "2", "--end", "3", *TR],
    ["infill", "f48.wav", "--start", "2", "--end", "3", *TR, "-o", "f48.out.wav"],
    ["infill", "song.wav", "--start", "1", "--end", "2", "--bogus", "--json"],
    ["infill", "song.wav", "--end", "2", "--json"],
    ["infill", "song.wav", "--start", "1", "--end", "2", "--steps", "abc", "--json"],
    ["models", "list", "--json"],
    [],
    ["infill", "song.wav", "--start", "1", "--end", "2", "--format", "FLOAT", "-o", "o.flac", *TR],
    ["infill", "song.wav", "--start", "1", "--end", "2", "--guidance", "1e308", *TR],
    ["infill", "song.wav", "--start", "b2", "--end", "b3", "-o", "nodir/o.wav", *TR],
    ["loop", "song.wav", "--start", "b1", "--bars", "0", *TR],
    ["loop", "song.wav", "--start", "2", "--end", "2.0001", *TR],
    ["loop", "song.wav", "--start", "2", "--bars", "0.001", *TR],
    ["continue", "song.wav", "--seconds", "1e-9", *TR],
    ["generate", "--seconds", "1e-9", *TR],
    ["infill", "song.wav", "--start", "1", "--end", "2", *TR, "-o", "/proc/o.wav"],
    ["infill", "quiet.wav", "--start", "4", "--end", "6", *TR, "-o", "quiet.out.wav"],
    ["infill", "hot.wav", "--start", "4", "--end", "6", *TR, "-o", "hot.out.wav"],
    ["infill", "song.ogg", "--start", "2", "--end", "3", *TR, "-o", "ogg.out.flac"],
    ["regenerate", "song.wav", "--start", "2", "--end", "5", *TR, "-o", "r.wav", "--variations", "2", "--plot"],
    ["infill", "song.wav", "--start", "-1", "--end", "2", *TR],
    ["infill", "song.wav", "--start", "9", "--end", "20", *TR],
    ["infill", "missing.wav", "--start", "1", "--end", "2", *TR],
    ["infill", "song.wav", "--start", "1", "--end", "2", *TR, "-o", "r_1.wav"],
    ["beats", "ref.wav"],
]
bad = 0
for args in cases:
    before = set(os.listdir(root))
    r = subprocess.run([*M, *args], capture_output=True, text=True, env={**os.environ, "TMPDIR": str(tmp)})
    after = set(os.listdir(root))
    stray = [n for n in after - before if n.startswith(".")]
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error:")]
    ok = r.returncode in (0, 1, 2, 130, 143) and not stray and not os.listdir(tmp) and "Traceback" not in r.stderr
    if "--json" in args:
        out = [l for l in r.stdout.splitlines() if l.strip()]
        ok = ok and len(out) == 1 and json.loads(out[0]) is not None
    if r.returncode == 2:
        ok = ok and len(errors) == 1
    bad += not ok
    print(f"{'OK ' if ok else 'BAD'} rc={r.returncode} {' '.join(args)[:70]:70s} | {(errors or lines or [''])[-1][:110]}")
changed = [p for p, h in inputs.items() if hashlib.sha256(Path(p).read_bytes()).hexdigest() != h]
print("inputs changed:", changed, "| bad:", bad)
bad += len(changed)
# signals: double INT, INT+TERM, SIGTERM during conversion of a long 48k file
long = root / "long48.flac"
blk = synth_song(10, sample_rate=48000)
with sf.SoundFile(long, "w", 48000, 2, subtype="PCM_16") as f:
    for _ in range(30): f.write(blk)
for name, sigs, wait_tmp in [("INT INT", [signal.SIGINT, signal.SIGINT], False), ("INT TERM", [signal.SIGINT, signal.SIGTERM], False),
                             ("TERM in conversion", [signal.SIGTERM], True), ("INT in first 0.3 s", [signal.SIGINT], None)]:
    for trial in range(3):
        args = ["infill", str(long) if wait_tmp else "song.wav", "--start", "2", "--end", "3", "--model", "tiny-random", "--device", "cpu", "--steps", "3000", "-q", "-o", "sig.wav", "--json"]
        p = subprocess.Popen([*M, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(tmp)})
        if wait_tmp is None:
            time.sleep(0.3)
        elif wait_tmp:
            while not any(q.stat().st_size > 1 << 20 for q in tmp.iterdir()): time.sleep(0.01)
        else:
            while not [q for q in root.iterdir() if q.name.startswith(".")]: time.sleep(0.01)
            time.sleep(1.0)
        for s in sigs:
            p.send_signal(s); time.sleep(0.03)
        code = p.wait(60); err = p.stderr.read(); out = p.stdout.read()
        stray = [q.name for q in root.iterdir() if q.name.startswith(".")] + os.listdir(tmp)
        good = code == 128 + sigs[0] and len(err.strip().splitlines()) == 1 and not stray and len(out.strip().splitlines()) == 1
        bad += not good
        print(f"{'OK ' if good else 'BAD'} {name} trial {trial}: rc={code} stray={stray} err={err.strip()[:90]!r}")
shutil.rmtree(root, ignore_errors=True)
sys.exit(1 if bad else 0)
