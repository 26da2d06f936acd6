"""How long `musicguide` takes to answer when it does no audio work (issue 22): help, version, a
parser error, the model list. Batch scripts and CI smoke tests pay this on every call.

    python bench/startup.py [--repeats 5]

Each row: the median wall time of a fresh process over --repeats runs, its ratio to `python -c pass`
measured in the same run (the issue's goal: at most 4x), and whether the process imported torch
(the goal: never, for these commands). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = {
    "python -c pass": ["-c", "pass"],
    "musicguide --help": ["-m", "musicguide", "--help"],
    "musicguide --version": ["-m", "musicguide", "--version"],
    "musicguide infill --bogus": ["-m", "musicguide", "infill", "--bogus"],
    "musicguide models list": ["-m", "musicguide", "models", "list"],
}
# run the command in process and report whether torch got imported, on stderr's last line
PROBE = ("import sys, runpy; sys.argv = sys.argv[1:]\n"
         "try:\n    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
         "except SystemExit:\n    pass\n"
         "print('torch' in sys.modules, file=sys.stderr)")


def wall_time(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], capture_output=True)
    return time.perf_counter() - started


def imports_torch(args: list[str]) -> bool | None:
    if args[0] != "-m":
        return None
    done = subprocess.run([sys.executable, "-c", PROBE, *args[1:]], capture_output=True, text=True)
    return done.stderr.strip().splitlines()[-1] == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    times = {name: [] for name in CASES}
    for _ in range(args.repeats):  # interleaved, so that a busy moment hits every row alike
        for name, command in CASES.items():
            times[name].append(wall_time(command))
    base = statistics.median(times["python -c pass"])
    print("| command | median | vs `python -c pass` | imports torch |")
    print("|---|---|---|---|")
    for name, command in CASES.items():
        median = statistics.median(times[name])
        torch = imports_torch(command)
        print(f"| `{name}` | {median:.3f} s | {median / base:.1f}x | {'-' if torch is None else 'yes' if torch else 'no'} |")


if __name__ == "__main__":
    main()
