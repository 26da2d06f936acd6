"""musicguide against stable-audio-tools 0.0.19, side by side: the same shapes, the same weights,
one run, interleaved (issue 22).

    bash ../shared/tools/reference-env.sh /tmp/musicguide-refenv
    python bench/vs_reference.py --reference-python /tmp/musicguide-refenv/bin/python --shape demo \
        [--shape sao-small-shape] [--rounds 3] [--threads 2] [--out bench-out/vs_reference.md]

For each shape one model folder is written (random weights in the published layout, float32; `demo`
is the shipped folder as it is), and then, round after round, a fresh process of each side takes
its turn on it (musicguide, then the reference, then musicguide again, ...), so that a machine that
slows down or speeds up during the run treats both alike. Each process:

* loads the folder: musicguide's `models.folder.load_model_folder`; the reference's
  `create_model_from_config` + `load_state_dict` of the file (its own `load_model` does the same,
  plus a download);
* times one DiT forward on a window of latent frames (the shorter of 256 and the model's window),
  batch 1, float32, at t = 0.5, with the timing conditioning: the null text conditioning that an
  edit without a prompt runs (the reference's unconditional branch: its whole cross-attention input
  zeroed, one pass at cfg_scale 1), and, for a model with a text conditioner, random text tokens
  in the prompt's place (both sides attend to them);
* times a VAE encode and a decode of 10 s of stereo (the posterior mean on our side, the
  reference's `pretransform.encode`, which also draws from the posterior, on theirs);
* reports its peak resident memory (the whole process: imports, the model, the runs).

Each time is the best of `--repeats` calls in a process and then of the rounds; memory is the
least peak over the rounds. Both sides run with the same glibc allocator settings: by default the
ones musicguide's command sets for itself (freed memory kept for reuse, `__main__._keep_freed_memory`,
here through GLIBC_TUNABLES), without which every large temporary of the VAE is page-faulted afresh
and its times vary by a third from call to call; `--allocator system` leaves glibc's defaults. The ratio is musicguide / reference: below 1.0, musicguide is faster
or smaller. Both sides run on the CPU with `--threads` threads. The reference half imports nothing
from musicguide; it runs inside the reference environment (this file, `worker` subcommand).
Prints a Markdown table and, with --out, writes it there too (a short lease can fetch it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_SHIMS = SHARED / "tools" / "reference-shims"
SHAPES = ("demo", "sao-small-shape", "sao-1.0-shape")
MAX_FRAMES = 256
VAE_SECONDS = 10.0
ROWS = [("load", "loading the folder (s)"), ("dit_null", "DiT forward, null text (s)"),
        ("dit_text", "DiT forward, text tokens (s)"), ("encode", f"VAE encode, {VAE_SECONDS:g} s (s)"),
        ("decode", f"VAE decode, {VAE_SECONDS:g} s (s)"), ("peak_mib", "peak memory (MiB)")]


def shape_folder(name: str, root: Path) -> Path:
    """The model folder of a shape: the shipped demo, or random weights for a published shape (the
    shapes of bench/cli_speed.py: SAO 1.0 at full depth, SAO Small's rectified-flow config at 20)."""
    if name == "demo":
        return REPO / "musicguide" / "weights" / "demo"
    sys.path.insert(0, str(REPO))
    import torch

    from conformance import sao_config, sao_small_rf_config
    from musicguide.models.config import ModelConfig
    from musicguide.models.folder import save_model_folder
    from musicguide.models.latent_diffusion import build_model

    config = sao_config() if name == "sao-1.0-shape" else sao_small_rf_config()
    if name == "sao-small-shape":
        config["model"]["diffusion"]["config"]["depth"] = 20
    path = root / name
    with torch.random.fork_rng():
        torch.manual_seed(0)
        save_model_folder(build_model(ModelConfig.from_dict(config)), path, dtype=torch.float32)
    return path


# ---- one side's process --------------------------------------------------------------------------


def best(call, repeats: int) -> float:
    import time

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times)


def worker(side: str, folder: Path, threads: int, repeats: int) -> dict:
    import resource
    import time

    import torch

    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    config = json.loads((folder / "model_config.json").read_text())
    load = ours_loader() if side == "ours" else theirs_loader()  # imports done before the clock starts
    started = time.perf_counter()
    model = load(folder, config)
    loaded = time.perf_counter() - started

    generator = torch.Generator().manual_seed(0)
    sample_rate, ratio = config["sample_rate"], config["model"]["pretransform"]["config"]["downsampling_ratio"]
    frames = min(MAX_FRAMES, config["sample_size"] // ratio)
    latent_dim = config["model"]["pretransform"]["config"]["latent_dim"]
    x = torch.randn(1, latent_dim, frames, generator=generator)
    t = torch.tensor([0.5])
    conditioning = config["model"]["conditioning"]
    text = next((c for c in conditioning["configs"] if c["type"] == "t5"), None)
    tokens = None if text is None else torch.randn(1, text["config"]["max_length"], conditioning["cond_dim"],
                                                   generator=generator)
    samples = round(VAE_SECONDS * sample_rate / ratio) * ratio
    audio = 0.1 * torch.randn(1, 2, samples, generator=generator)
    latents = torch.randn(1, latent_dim, samples // ratio, generator=generator)
    seconds_total = frames * ratio / sample_rate
    timing = {"seconds_start": 0.0, "seconds_total": seconds_total}

    if side == "ours":
        calls = {"dit_null": lambda: model.denoise(x, t, **timing),
                 "dit_text": None if tokens is None else (lambda: model.denoise(x, t, **timing, text_tokens=tokens)),
                 "encode": lambda: model.encode(audio), "decode": lambda: model.decode(latents)}
    else:
        calls = theirs_calls(model, config, x, t, tokens, timing, audio, latents)
    result = {"load": loaded}
    for name, call in calls.items():
        if call is not None:
            call()  # warm-up: first-call allocations and kernel choices
            result[name] = best(call, repeats)
    result["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def ours_loader():
    sys.path.insert(0, str(REPO))
    from musicguide.models.folder import load_model_folder

    return lambda folder, config: load_model_folder(folder, device="cpu")


def theirs_loader():
    from safetensors.torch import load_file
    from stable_audio_tools.models.factory import create_model_from_config

    from conformance import without_text  # the T5 conditioner dropped, as the conformance bench builds it

    def load(folder: Path, config: dict):
        model = create_model_from_config(without_text(config))
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        return model.eval()

    return load


def theirs_calls(model, config: dict, x, t, tokens, timing: dict, audio, latents) -> dict:
    import torch

    metadata = [{"seconds_start": timing["seconds_start"], "seconds_total": timing["seconds_total"]}]
    conditioning = model.conditioner(metadata, "cpu")
    ids = config["model"]["diffusion"]["cross_attention_cond_ids"]
    text_ids = [c["id"] for c in config["model"]["conditioning"]["configs"] if c["type"] == "t5"]
    if tokens is not None:  # the prompt's tokens where the T5 conditioner would put them
        conditioning[text_ids[0]] = (tokens, torch.ones(tokens.shape[:2]))
    model.cross_attn_cond_ids = ids if tokens is not None else [i for i in ids if i not in text_ids]
    inputs = model.get_conditioning_inputs(conditioning)
    null = {**inputs}
    if inputs.get("cross_attn_cond") is not None:  # the unconditional branch: cross-attention input zeroed
        null["cross_attn_cond"] = torch.zeros_like(inputs["cross_attn_cond"])
    return {"dit_null": lambda: model.model(x, t, **null, cfg_scale=1.0),
            "dit_text": None if tokens is None else (lambda: model.model(x, t, **inputs, cfg_scale=1.0)),
            "encode": lambda: model.pretransform.encode(audio), "decode": lambda: model.pretransform.decode(latents)}


# ---- the run ---------------------------------------------------------------------------------------


KEPT_MEMORY = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"  # as __main__._keep_freed_memory


def run_side(side: str, python: str, folder: Path, threads: int, repeats: int, shims: Path, allocator: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if allocator == "kept":
        env["GLIBC_TUNABLES"] = KEPT_MEMORY
    if side == "theirs":
        env["PYTHONPATH"] = str(shims)
    command = [python, str(Path(__file__).resolve()), "worker", side, str(folder), str(threads), str(repeats)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"{side} failed (exit {done.returncode}): {' '.join(command)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(shape: str, reference_python: str, rounds: int, threads: int, repeats: int, shims: Path,
            allocator: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = shape_folder(shape, Path(tmp))
        runs = {"ours": [], "theirs": []}
        for i in range(rounds):
            for side, python in (("ours", sys.executable), ("theirs", reference_python)):
                runs[side].append(run_side(side, python, folder, threads, repeats, shims, allocator))
                print(f"{shape} round {i + 1}/{rounds} {side}: {runs[side][-1]}", file=sys.stderr, flush=True)
    return {side: {key: min(r[key] for r in found) for key in found[0]} for side, found in runs.items()}


def table(results: dict[str, dict], threads: int, rounds: int, repeats: int, allocator: str) -> str:
    lines = [f"musicguide / stable-audio-tools 0.0.19, CPU, {threads} threads, float32, glibc allocator {allocator}; "
             f"best of {repeats} calls × {rounds} interleaved rounds", "",
             "| shape | what | musicguide | reference | ratio |", "|---|---|---|---|---|"]
    for shape, sides in results.items():
        for key, label in ROWS:
            if key in sides["ours"] and key in sides["theirs"]:
                ours, theirs = sides["ours"][key], sides["theirs"][key]
                digits = 0 if key == "peak_mib" else 3
                lines.append(f"| {shape} | {label} | {ours:.{digits}f} | {theirs:.{digits}f} | {ours / theirs:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        side, folder, threads, repeats = argv[1], Path(argv[2]), int(argv[3]), int(argv[4])
        print(json.dumps(worker(side, folder, threads, repeats)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-python", default=os.environ.get("MUSICGUIDE_REFERENCE_PYTHON"),
                        help="python of the reference environment (default: $MUSICGUIDE_REFERENCE_PYTHON)")
    parser.add_argument("--shims", type=Path, default=Path(os.environ.get("MUSICGUIDE_REFERENCE_SHIMS", DEFAULT_SHIMS)))
    parser.add_argument("--shape", action="append", choices=SHAPES, help="repeatable; default: demo")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--allocator", choices=("kept", "system"), default="kept",
                        help="glibc's settings for both sides: musicguide's (freed memory kept) or the defaults")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    if not args.reference_python:
        parser.error("no reference environment: pass --reference-python or set MUSICGUIDE_REFERENCE_PYTHON")
    results = {shape: measure(shape, args.reference_python, args.rounds, args.threads, args.repeats, args.shims,
                              args.allocator) for shape in args.shape or ["demo"]}
    text = table(results, args.threads, args.rounds, args.repeats, args.allocator)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
