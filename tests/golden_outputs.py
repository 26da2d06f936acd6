"""Every command's output, pinned: what the code wrote before the Python API (issue 23) was put
under the CLI, so that the rework can be shown to change no sample and no sidecar value.

    python tests/golden_outputs.py --write    # records tests/data/golden-outputs.json (only on purpose)

`tests/test_golden.py` runs the same cases and compares. Each case is a real command line on the
tiny random model and a synthetic song; the record holds the sha256 of the output's float32
samples (written as FLOAT, so nothing is hidden by quantisation) and the sidecar less what
changes from run to run (paths, elapsed time, version). Float results are bit-identical only where
the arithmetic is the same: the record names the torch version and the CPU's kernel family, and
the test compares exactly there."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
RECORD = HERE / "data" / "golden-outputs.json"
SR = 44100
COMMON = ["--steps", "3", "--quiet", "--seed", "11", "--model", "tiny-random", "--device", "cpu", "--format", "FLOAT"]
CONTEXT = ["--context", "2"]

# name -> the command line after `musicguide`; SONG, A, B name the input files, OUT the output
CASES: dict[str, list[str]] = {
    "infill": ["infill", "SONG", "--start", "2", "--end", "3.5", *CONTEXT],
    "infill-audio-loss": ["infill", "SONG", "--start", "0:01.5", "--end", "0:02.25", "--loss-space", "audio", *CONTEXT],
    "infill-ddpm-variations": ["infill", "SONG", "--start", "2", "--end", "3", "--sampler", "ddpm", "--variations", "2",
                               *CONTEXT],
    "regenerate": ["regenerate", "SONG", "--start", "1", "--end", "2", "--strength", "0.5", *CONTEXT],
    "continue": ["continue", "SONG", "--seconds", "8", *CONTEXT],
    "transition": ["transition", "A", "B", "--length", "1.5", *CONTEXT],
    "generate": ["generate", "--seconds", "2.5"],
    "loop": ["loop", "SONG", "--start", "1", "--end", "3.5", "--length", "0.5", *CONTEXT],
    "loop-bars": ["loop", "SONG", "--start", "b2", "--bars", "2", "--bpm", "120", "--downbeat", "0", *CONTEXT],
    "restyle": ["restyle", "SONG", "--toward", "rock", "--start", "1", "--end", "4.5", "--steps", "2", *CONTEXT],
}


def inputs(folder: Path) -> dict[str, Path]:
    """The songs the cases read, written the same way every time."""
    sys.path.insert(0, str(HERE))
    from conftest import synth_song

    files = {"SONG": folder / "song.wav", "A": folder / "a.wav", "B": folder / "b.wav"}
    sf.write(files["SONG"], synth_song(6.0), SR, subtype="PCM_16")
    sf.write(files["A"], synth_song(5.0, seed=1), SR, subtype="PCM_16")
    sf.write(files["B"], synth_song(4.0, seed=2)[:, ::-1].copy(), SR, subtype="PCM_16")
    return files


def command_line(name: str, files: dict[str, Path], out: Path) -> list[str]:
    return [str(files.get(a, a)) for a in CASES[name]] + ["-o", str(out), *COMMON]


def outputs_of(out: Path, variations: int) -> list[Path]:
    return [out] if variations == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(1, variations + 1)]


def describe(path: Path) -> dict:
    """What is pinned of one output: its samples' digest and shape, and its sidecar's values."""
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    for key in ("elapsed_s", "musicguide"):
        sidecar.pop(key)
    for item in sidecar["inputs"]:
        item["path"] = Path(item["path"]).name
    sidecar["output"]["path"] = Path(sidecar["output"]["path"]).name
    # a float WAV's PEAK chunk holds the time it was written: the file's digest changes, its samples' not
    sidecar["output"].pop("sha256")
    return {"sample_rate": rate, "shape": list(audio.shape),
            "samples_sha256": hashlib.sha256(np.ascontiguousarray(audio).tobytes()).hexdigest(),
            "sidecar": sidecar}


def platform() -> dict:
    import torch

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


# Reductions split their sums by thread: the record is made, and compared, with this many.
THREADS = 2


def run_case(name: str, folder: Path, run) -> list[dict]:
    """Run one case with `run(argv) -> (status, stderr)` in `folder`; its outputs described."""
    import torch

    files = inputs(folder)
    out = folder / f"{name}.wav"
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        code, err = run(command_line(name, files, out))
    finally:
        torch.set_num_threads(threads)
    if code != 0:
        raise AssertionError(f"{name}: exit {code}: {err}")
    variations = 2 if "--variations" in CASES[name] else 1
    return [describe(p) for p in outputs_of(out, variations)]


def _run_in_process(argv: list[str]) -> tuple[int, str]:
    from musicguide import cli

    sys.argv = ["musicguide", *argv]
    try:
        cli.main()
    except SystemExit as exit_:
        return (exit_.code if isinstance(exit_.code, int) else 1), ""
    return 0, ""


def main() -> None:
    import tempfile

    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python tests/golden_outputs.py --write   (replaces the pinned outputs)")
    record = {"platform": platform(), "cases": {}}
    for name in CASES:
        with tempfile.TemporaryDirectory() as folder:
            record["cases"][name] = run_case(name, Path(folder), _run_in_process)
        print(name, "ok")
    RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"wrote {RECORD}")


if __name__ == "__main__":
    main()
