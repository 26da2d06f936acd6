"""Issue 22: how much of an edit is spent outside the sampler. The README's edit (battle_60s.ogg,
0:08-0:11, demo model) with --steps 1 against --steps 50, each a fresh `musicguide` process, the
median of --repeats, with glibc's allocator as musicguide sets it and as the system leaves it
(MUSICGUIDE_SYSTEM_MALLOC=1), interleaved. The goal: the 1-step edit at most 25 % of the 50-step one.

    python bench/edit_steps.py [--repeats 3]
    python bench/edit_steps.py --breakdown     # where the 1-step edit's time goes

Prints a Markdown table: wall seconds, peak RSS, and the 1-step edit's share of the 50-step one.
With --breakdown, one 1-step edit in a fresh process, timed phase by phase (each phase's function
wrapped in place, no profiler): imports, the load, encode, the sampler, decode, the seam report,
writing, and the process's exit after the run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SONG = REPO.parent / "shared" / "audio" / "battle_60s.ogg"
ALLOCATORS = {"musicguide's (freed memory kept)": {}, "glibc default": {"MUSICGUIDE_SYSTEM_MALLOC": "1"}}


def run_once(steps: int, env: dict[str, str], out: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one edit in a fresh process."""
    out.unlink(missing_ok=True)
    out.with_suffix(".json").unlink(missing_ok=True)
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "musicguide", "infill", str(SONG), "--start", "0:08", "--end",
                              "0:11", "--steps", str(steps), "-o", str(out), "--quiet"], env={**os.environ, **env})
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage: its peak RSS, in KiB on Linux
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        sys.exit(f"the edit failed with status {child.returncode}")
    return seconds, usage.ru_maxrss / 1024


# phase → (module, function or Class.method): each is wrapped wherever musicguide holds it
PHASES = {
    "load the model": ("musicguide.models.folder", "load_model"),
    "encode the window": ("musicguide.edit", "_encode_window"),
    "sample (1 step, guided)": ("musicguide.edit", "_sample"),
    "decode the window": ("musicguide.models.latent_diffusion", "LatentDiffusion.decode"),
    "seam report": ("musicguide.splice", "seam_report"),
    "write the file": ("musicguide.writing", "write_song"),
}
BREAKDOWN = """
import gc, importlib, json, sys, time
start = time.perf_counter()
spent = {}
import musicguide.__main__ as entry
entry._keep_freed_memory()
entry._CollectAfterTorch.install()  # as the entry point does, before torch
import torch
spent["import torch"] = time.perf_counter() - start
mark = time.perf_counter()
import musicguide.cli.edits, musicguide.edit, musicguide.models.folder, musicguide.writing
spent["import musicguide"] = time.perf_counter() - mark

def timed(name, function):
    def wrapper(*args, **kwargs):
        began = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - began
    return wrapper

for name, (module, attribute) in json.loads(sys.argv[1]).items():
    owner = importlib.import_module(module)
    for part in attribute.split(".")[:-1]:
        owner = getattr(owner, part)
    original = getattr(owner, attribute.split(".")[-1])
    setattr(owner, attribute.split(".")[-1], timed(name, original))
    for held in [m for m in sys.modules.values() if getattr(m, "__name__", "").startswith("musicguide")]:
        for key, value in list(vars(held).items()):
            if value is original:  # bound by `from … import …`
                setattr(held, key, getattr(owner, attribute.split(".")[-1]))
sys.argv = ["musicguide", *sys.argv[2:]]
try:
    entry.main()
except SystemExit:
    pass
spent["run, in all"] = time.perf_counter() - start
print(json.dumps(spent), file=sys.stderr)
sys.stderr.flush()
"""


def breakdown(out: Path) -> None:
    args = ["infill", str(SONG), "--start", "0:08", "--end", "0:11", "--steps", "1", "-o", str(out), "--quiet",
            "--overwrite"]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", BREAKDOWN, json.dumps(PHASES), *args], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"the edit failed: {done.stderr[-2000:]}")
    spent = json.loads(done.stderr.strip().splitlines()[-1])
    total = spent.pop("run, in all")
    rows = [*spent.items(), ("the rest of the run (parsing, reading, the sidecar, ...)", total - sum(spent.values())),
            ("Python's start and exit (the wall time less the run)", wall - total)]
    print(f"the README's edit with --steps 1, demo model, CPU ({os.cpu_count()} cores): {wall:.2f} s wall\n")
    print("| phase | seconds | share |")
    print("|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {seconds / wall:.0%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--breakdown", action="store_true", help="time one 1-step edit phase by phase")
    args = parser.parse_args()
    if not SONG.is_file():
        sys.exit(f"{SONG} is not there: this bench needs ../shared/audio beside the repository")
    if args.breakdown:
        with tempfile.TemporaryDirectory() as folder:
            return breakdown(Path(folder) / "edit.wav")
    times: dict[tuple[str, int], list[float]] = {}
    peaks: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "edit.wav"
        for _ in range(args.repeats):
            for name, env in ALLOCATORS.items():
                for steps in (1, 50):
                    seconds, peak = run_once(steps, env, out)
                    times.setdefault((name, steps), []).append(seconds)
                    peaks.setdefault((name, steps), []).append(peak)
    print(f"the README's edit, demo model, CPU ({os.cpu_count()} cores), median of {args.repeats}\n")
    print("| allocator | --steps 1 | --steps 50 | 1 step / 50 steps (goal <= 25 %) | peak RSS, 50 steps |")
    print("|---|---|---|---|---|")
    for name in ALLOCATORS:
        one, fifty = (statistics.median(times[name, s]) for s in (1, 50))
        print(f"| {name} | {one:.2f} s | {fifty:.2f} s | {one / fifty:.0%} | "
              f"{statistics.median(peaks[name, 50]):.0f} MiB |")


if __name__ == "__main__":
    main()
