"""Issue 22: how much of an edit is spent outside the sampler. The README's edit (battle_60s.ogg,
0:08-0:11, demo model) with --steps 1 against --steps 50, each a fresh `musicguide` process, the
median of --repeats, with glibc's allocator as musicguide sets it and as the system leaves it
(MUSICGUIDE_SYSTEM_MALLOC=1), interleaved. The goal: the 1-step edit at most 25 % of the 50-step one.

    python bench/edit_steps.py [--repeats 3]

Prints a Markdown table: wall seconds, peak RSS, and the 1-step edit's share of the 50-step one.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not SONG.is_file():
        sys.exit(f"{SONG} is not there: this bench needs ../shared/audio beside the repository")
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
