"""The speed of the command itself: a 4 s infill in a 3-minute song, through the CLI's own code path.

    python bench/cli_speed.py                                        # GPU: SAO 1.0 and SAO Small shapes
    python bench/cli_speed.py --shapes demo --steps 8 --device cpu   # a CPU smoke run of the same path
    python bench/cli_speed.py --shapes sao-small-shape --out "$OUT"  # one shape per call, for a short GPU lease
    python bench/cli_speed.py --load-only --shapes demo sao-small-shape  # loading only: a minute on the CPU

For each shape it builds a model folder with random weights (the published configs: SAO 1.0 at
full depth, SAO Small's rectified-flow config at depth 20), then:

* load: `musicguide`'s model loading of that folder, against the time to read the file from disk
  (with --load-only, only that, the time to build the model's modules, which no loader avoids,
  and the median load in a fresh process, where the destination memory is new);
* infill: what `musicguide infill song.wav --start 88 --end 92 …` runs once the model is loaded,
  with the model held by one `Editor` (as `musicguide batch` does): `editor.infill(...).save(...)`,
  reading and streaming the song, encoding, sampling, decoding, splicing, writing the WAV and
  sidecar — best of --repeats after a warm-up;
* the cost of a guided step against an unguided one (the same infill with --guidance 0);
* peak GPU memory of the infill with --loss-space audio (decoder-space guidance).

Prints a Markdown table (docs/models.md keeps the measured one) and, with --out (default: $OUT
when set, as on the GPU machine), writes it to OUT/cli_speed.md row by row, so that a run cut off
by its time limit still returns the shapes it finished. Targets on one H100/H200 at
--precision auto: SAO Small shape at 8 steps under 1 s; SAO 1.0 shape at 100 steps under 6 s; a
guided step at most 3.5x an unguided one; loading at most 2x reading the file; peak memory with
decoder-space guidance at most 26 GiB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from musicguide import Editor  # noqa: E402
from musicguide.models import ModelConfig, build_model  # noqa: E402
from musicguide.models.folder import (CONFIG_FILE, WEIGHTS_FILE, model_skeleton, read_model_config,  # noqa: E402
                                      save_model_folder)

DEFAULT_STEPS = {"sao-1.0-shape": 100, "sao-small-shape": 8}


def shaped_folder(name: str, folder: Path) -> Path:
    """A model folder for a shape (random weights, fp32 on disk), or a registry name as it is."""
    from conformance import sao_config, sao_small_rf_config

    if name == "sao-1.0-shape":
        config = sao_config()
    elif name == "sao-small-shape":
        config = sao_small_rf_config()
        config["model"]["diffusion"]["config"]["depth"] = 20
    else:  # a registry name (its folder, for the read) or a folder
        from musicguide.registry import resolve_model

        return resolve_model(name).folder or Path(name)
    path = folder / name
    with torch.random.fork_rng():
        torch.manual_seed(0)
        save_model_folder(build_model(ModelConfig.from_dict(config)), path)
    return path


def song(folder: Path, minutes: float = 3.0) -> Path:
    path = folder / "song.wav"
    rng = np.random.default_rng(0)
    t = np.arange(round(minutes * 60 * 44100)) / 44100
    music = 0.2 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 2 * t)) + 0.02 * rng.standard_normal(len(t))
    sf.write(path, np.stack([music, music], axis=1).astype(np.float32), 44100, subtype="PCM_16")
    return path


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def read_file(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def infill(editor: Editor, wav: Path, out: Path, steps: int, **options) -> None:
    with editor.infill(wav, 88, 92, steps=steps, seed=0, **options) as result:
        result.save(out, overwrite=True)


def measure_load(model: Path, device: str, precision: str, rounds: int = 3) -> tuple[float, float, float]:
    """Seconds to read the folder's weights file, to load the folder as the command does, and to
    build the model's modules alone (what the loader fills): warm, as the issue measured it (the
    file in the page cache, the modules imported), interleaved, the best of `rounds` each.
    The read is NaN for a built-in model, which has no file."""
    weights = model / WEIGHTS_FILE
    config = read_model_config(model / CONFIG_FILE) if weights.exists() else None

    times: dict[str, list[float]] = {"read": [], "load": [], "build": []}
    for _ in range(rounds):
        if weights.exists():
            times["read"].append(timed(lambda: read_file(weights), device))
            times["build"].append(timed(lambda: model_skeleton(config), device))
        times["load"].append(timed(lambda: Editor.from_pretrained(str(model), device=device, precision=precision,
                                                                  quiet=True), device))
    return tuple(min(times[k]) if times[k] else float("nan") for k in ("load", "read", "build"))


FRESH_LOAD = """
import gc, sys, time
import torch
from musicguide import Editor
gc.freeze()  # as the command's entry point leaves the collector once torch is imported
start = time.perf_counter()
Editor.from_pretrained(sys.argv[1], device=sys.argv[2], precision=sys.argv[3], quiet=True)
if sys.argv[2].startswith("cuda"):
    torch.cuda.synchronize()
print(time.perf_counter() - start)
"""


def fresh_load(model: Path, device: str, precision: str, rounds: int) -> float:
    """Seconds to load the folder in a fresh process, torch already imported (as the command
    loads it, with the destination memory new to the process): the median of `rounds`."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    runs = [float(subprocess.run([sys.executable, "-c", FRESH_LOAD, str(model), device, precision], env=env,
                                 check=True, capture_output=True, text=True).stdout.split()[-1])
            for _ in range(rounds)]
    return float(np.median(runs))


def measure(name: str, folder: Path, wav: Path, device: str, precision: str, steps: int, repeats: int) -> list[str]:
    model = shaped_folder(name, folder)
    load, read, _ = measure_load(model, device, precision)
    out = folder / "out.wav"
    editor = Editor.from_pretrained(model, device=device, precision=precision, quiet=True)

    def run(steps_: int, **options) -> float:
        infill(editor, wav, out, steps_, **options)  # warm-up
        return min(timed(lambda: infill(editor, wav, out, steps_, **options), device) for _ in range(repeats))

    guided, unguided = run(steps), run(steps, guidance=0.0)
    # per step: the fixed costs (read, encode, decode, write) cancel against a 1-step run
    per_guided = (guided - run(1)) / max(steps - 1, 1)
    per_unguided = (unguided - run(1, guidance=0.0)) / max(steps - 1, 1)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    audio_loss = run(steps, loss_space="audio")
    peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.startswith("cuda") else "–"
    # a step too cheap to show above the fixed costs' noise (tiny-random) has no ratio
    step_ratio = f"{per_guided / per_unguided:.2f}x" if per_guided > 0 and per_unguided > 0 else "–"
    has_file = read == read
    return [name, str(steps), f"{guided:.2f} s", f"{unguided:.2f} s", step_ratio, f"{audio_loss:.2f} s",
            _seconds(load), _seconds(read) if has_file else "–", f"{load / read:.2f}x" if has_file else "–", peak]


def _seconds(value: float) -> str:
    """Seconds, with the digits that a small model's load and read need (3.2 ms, not 0.00 s)."""
    return f"{value:.2f} s" if value >= 0.1 else f"{value:.3f} s" if value >= 0.01 else f"{value * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["sao-small-shape", "sao-1.0-shape"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--steps", type=int, default=None, help="default: 100 for SAO 1.0, 8 for SAO Small")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--load-only", action="store_true",
                        help="only the load against the read and against building the modules, interleaved")
    parser.add_argument("--rounds", type=int, default=7, help="with --load-only: the best of this many")
    parser.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
                        help="also write the table to OUT/cli_speed.md, a row as each shape finishes")
    args = parser.parse_args()
    table = args.out / "cli_speed.md" if args.out else None
    if table:
        args.out.mkdir(parents=True, exist_ok=True)
        table.write_text("")

    def say(line: str) -> None:
        print(line, flush=True)
        if table:
            with table.open("a") as f:
                f.write(line + "\n")

    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    if args.load_only:
        say(f"{gpu}, --precision {args.precision}, torch {torch.__version__}; warm, best of {args.rounds}\n")
        say("| shape | file | read file | load | load/read | build the modules | build/read | load, fresh process |")
        say("|---|---|---|---|---|---|---|---|")
        with tempfile.TemporaryDirectory() as folder:
            for name in args.shapes:
                model = shaped_folder(name, Path(folder))
                # Fresh processes first: after the warm rounds, with their models and buffers freed
                # but this process's memory still spread over gigabytes, a child's load of the SAO
                # Small shape took 1.03 s instead of 0.61 s on the 2-core CPU.
                fresh = _seconds(fresh_load(model, args.device, args.precision, args.rounds))
                load, read, build = measure_load(model, args.device, args.precision, args.rounds)
                if read != read:  # a built-in model: no file to read, nothing built from one
                    say(f"| {name} | – | – | {_seconds(load)} | – | – | – | {fresh} |")
                    continue
                size = (model / WEIGHTS_FILE).stat().st_size / 1e6
                say(f"| {name} | {size:.1f} MB | {_seconds(read)} | {_seconds(load)} | {load / read:.1f}x "
                    f"| {_seconds(build)} | {build / read:.1f}x | {fresh} |")
        return
    say(f"{gpu}, --precision {args.precision}, torch {torch.__version__}; a 4 s infill in a 3-minute song\n")
    header = ["shape", "steps", "infill", "unguided", "guided/unguided step", "infill, audio loss", "load",
              "read file", "load/read", "peak GPU memory (audio loss)"]
    say("| " + " | ".join(header) + " |")
    say("|" + "---|" * len(header))
    with tempfile.TemporaryDirectory() as folder:
        wav = song(Path(folder))
        for name in args.shapes:
            steps = args.steps or DEFAULT_STEPS.get(name, 8)
            row = measure(name, Path(folder), wav, args.device, args.precision, steps, args.repeats)
            say("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
