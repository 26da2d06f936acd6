"""Peak memory of a 1 s infill against the input's length (the song is streamed, not loaded).

    python bench/memory.py                 # 1 min and 60 min, tiny-random model, CPU
    python bench/memory.py --minutes 1 10 60 --model demo

Prints a table: input length, input size, peak RSS of the `musicguide infill` process, and its
ratio to the shortest input's. Target (docs/guarantees.md): a 1-hour input under 1.5x a 1-minute one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 44100


def write_song(path: Path, minutes: float) -> None:
    """A 16-bit stereo WAV of noise-like music, written in blocks (never held whole)."""
    rng = np.random.default_rng(0)
    block = (0.1 * rng.standard_normal((10 * SR, 2))).astype(np.float32)
    with sf.SoundFile(path, "w", SR, 2, subtype="PCM_16") as f:
        for _ in range(round(minutes * 6)):
            f.write(block)


def peak_rss_kib(command: list[str]) -> tuple[int, float]:
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, check=True)
    return int(result.stdout.split()[-1]), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 60])
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--steps", default="3")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for minutes in args.minutes:
            song = Path(folder) / f"song-{minutes:g}.wav"
            write_song(song, minutes)
            out = Path(folder) / f"out-{minutes:g}.wav"
            peak, seconds = peak_rss_kib([sys.executable, "-m", "musicguide", "infill", str(song), "--start", "30",
                                          "--end", "31", "-o", str(out), "--model", args.model, "--steps", args.steps,
                                          "--seed", "1", "--device", "cpu", "--quiet"])
            rows.append((minutes, song.stat().st_size, peak, seconds))
            song.unlink()
            out.unlink()
    base = rows[0][2]
    print(f"| input | file | peak RSS | vs {rows[0][0]:g} min | wall |")
    print("|---|---|---|---|---|")
    for minutes, size, peak, seconds in rows:
        print(f"| {minutes:g} min | {size / 1e6:.0f} MB | {peak / 1024:.0f} MiB | {peak / base:.2f}x | {seconds:.1f} s |")


if __name__ == "__main__":
    main()
