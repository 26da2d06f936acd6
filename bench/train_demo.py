"""Train the demo model in one run on one GPU, and leave the result in $OUT.

    PYTHONUNBUFFERED=1 python bench/train_demo.py --data .data/train --out "$OUT"
    python bench/train_demo.py --smoke --data SOME_FOLDER --out /tmp/demo   # tiny preset, CPU, seconds

Decode the corpus with a process pool, train the VAE for --vae-minutes, encode the corpus, train
the DiT for --dit-minutes (shortened to end before --deadline-minutes from the start), then write
to --out at most 8 files, each at most 16 MiB:

    vae.safetensors, dit.safetensors (or dit-1, dit-2, ...)   fp16 weights, in parts
    model_config.json                                         the model they make up
    train_log.json                                            both stages' logs (losses, held-out files)
    summary.txt                                               steps, losses, throughput

The VAE part and a config are written as soon as the VAE stage ends, so a later failure still
leaves what was trained. Put the parts together with
`musicguide.train.merge_parts([vae, dit...], "model_config.json", "models/demo")`.
Checkpoints and full-precision weights stay in --work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from musicguide.train import (  # noqa: E402
    CONFIG_FILE,
    LOG_FILE,
    SAMPLE_RATE,
    VAE_WEIGHTS_FILE,
    DiTTrainConfig,
    TrainProgress,
    TrainResult,
    VAETrainConfig,
    load_corpus,
    preset_config,
    split_weights,
    train_dit,
    train_vae,
)

MAX_FILE_BYTES = 16 << 20
FINISH_RESERVE_MIN = 0.5  # encoding, final validation and export after the DiT's budget
STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:7.1f}s] {message}", flush=True)


def show(event: TrainProgress) -> None:
    if event.val_loss is not None:
        say(f"{event.stage} step {event.step}: validation loss {event.val_loss:.4f}")
    else:
        say(f"{event.stage} step {event.step}/{event.steps}  loss {event.loss:.4f}  lr {event.lr:.2e}  "
            f"{event.elapsed_s:.0f}s")


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path(".data/train"))
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "demo-out")))
    parser.add_argument("--work", type=Path, default=None, help="checkpoints and fp32 weights (default: a temp dir)")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--vae-minutes", type=float, default=4.0)
    parser.add_argument("--dit-minutes", type=float, default=3.5)
    parser.add_argument("--deadline-minutes", type=float, default=8.5, help="the whole script, start to end")
    parser.add_argument("--vae-batch", type=int, default=None)
    parser.add_argument("--dit-batch", type=int, default=None)
    parser.add_argument("--vae-lr", type=float, default=None)
    parser.add_argument("--dit-lr", type=float, default=None)
    parser.add_argument("--holdout-list", type=Path, default=None, help="file names to hold out, one a line")
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny preset, a few steps: checks the script end to end")
    args = parser.parse_args(argv)
    if args.smoke:
        args.preset = "tiny"
        args.vae_minutes = min(args.vae_minutes, 0.25)
        args.dit_minutes = min(args.dit_minutes, 0.25)
    return args


def describe_machine(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, {os.cpu_count()} CPUs)"
    return f"CPU (torch {torch.__version__}, {os.cpu_count()} CPUs)"


def stage_line(name: str, result: TrainResult | None, unit_seconds: float, unit: str) -> str:
    if result is None:
        return f"{name}: did not finish (see train_log.json / the console)"
    per_s = result.examples_per_s
    return (f"{name}: {result.step} steps in {result.seconds:.0f} s (stopped: {result.stopped}); "
            f"train loss {result.train_loss}, validation loss {result.val_loss}; "
            f"{result.step / max(result.seconds, 1e-9):.2f} steps/s, {per_s:.1f} {unit}/s "
            f"= {per_s * unit_seconds:.1f} s of audio per second")


def write_outputs(out: Path, vae_dir: Path, dit_dir: Path, summary: list[str]) -> None:
    """Copy what exists into `out` in fp16 parts, with the logs and the summary."""
    if (dit_dir / "model.safetensors").is_file():
        parts = split_weights(dit_dir, out, MAX_FILE_BYTES)
        (out / CONFIG_FILE).write_text((dit_dir / CONFIG_FILE).read_text())
    elif (vae_dir / VAE_WEIGHTS_FILE).is_file():
        from safetensors.torch import load_file, save_file
        state = {k: v.half() for k, v in load_file(str(vae_dir / VAE_WEIGHTS_FILE)).items()}
        save_file(state, str(out / "vae.safetensors"), metadata={"format": "pt"})
        (out / CONFIG_FILE).write_text((vae_dir / CONFIG_FILE).read_text())
        parts = [out / "vae.safetensors"]
    else:
        parts = []
    logs = {stage: json.loads((d / LOG_FILE).read_text()) for stage, d in (("vae", vae_dir), ("dit", dit_dir))
            if (d / LOG_FILE).is_file()}
    (out / "train_log.json").write_text(json.dumps(logs, indent=1) + "\n")
    summary += [f"{p.name}: {p.stat().st_size / 2**20:.2f} MiB" for p in parts]
    (out / "summary.txt").write_text("\n".join(summary) + "\n")
    for path in sorted(out.iterdir()):
        if path.stat().st_size > MAX_FILE_BYTES:
            say(f"WARNING: {path.name} is {path.stat().st_size / 2**20:.1f} MiB, over the 16 MiB limit")


def main(argv: list[str] | None = None) -> int:
    global STARTED
    STARTED = time.monotonic()  # the deadline counts from here
    args = arguments(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    work = args.work or Path(tempfile.mkdtemp(prefix="musicguide-train-"))
    vae_dir, dit_dir = work / "vae", work / "dit"
    args.out.mkdir(parents=True, exist_ok=True)
    summary = [f"preset {args.preset} on {describe_machine(device)}"]
    say(summary[0])
    failed = False
    vae_result = dit_result = None
    try:
        holdout = args.holdout_list.read_text().split() if args.holdout_list else None
        corpus = load_corpus(args.data, holdout=holdout, val_fraction=args.val_fraction, workers=args.workers)
        train_count = len(corpus.names) - len(corpus.holdout)
        line = (f"corpus: {len(corpus.names)} files, {corpus.seconds / 60:.1f} min; {train_count} for training, "
                f"held out: {', '.join(corpus.holdout) or 'none'}")
        summary.append(line)
        say(line)

        vae_config = VAETrainConfig.for_preset(args.preset, max_minutes=args.vae_minutes, batch_size=args.vae_batch,
                                               lr=args.vae_lr, val_fraction=args.val_fraction)
        try:
            vae_result = train_vae(corpus, vae_dir, vae_config, device=device, progress=show)
        except Exception:
            failed = True
            say("VAE stage failed:\n" + traceback.format_exc())
        summary.append(stage_line("VAE", vae_result, vae_config.segment_samples / SAMPLE_RATE, "segments"))
        write_outputs(args.out, vae_dir, dit_dir, list(summary))  # the VAE is safe from here on
        say(summary[-1])

        if (vae_dir / VAE_WEIGHTS_FILE).is_file():
            left = args.deadline_minutes - (time.monotonic() - STARTED) / 60 - FINISH_RESERVE_MIN
            dit_minutes = min(args.dit_minutes, max(left, 0.1))
            dit_config = DiTTrainConfig.for_preset(args.preset, max_minutes=dit_minutes, batch_size=args.dit_batch,
                                                   lr=args.dit_lr, val_fraction=args.val_fraction)
            say(f"DiT budget {dit_minutes:.2f} min")
            try:
                dit_result = train_dit(corpus, vae_dir, dit_dir, dit_config, device=device, progress=show)
            except Exception:
                failed = True
                say("DiT stage failed:\n" + traceback.format_exc())
            window_s = preset_config(args.preset).sample_size / SAMPLE_RATE
            summary.append(stage_line("DiT", dit_result, window_s, "windows"))
            say(summary[-1])
    except Exception:
        failed = True
        summary.append("failed:\n" + traceback.format_exc())
        say(summary[-1])
    finally:
        summary.append(f"total {time.monotonic() - STARTED:.0f} s")
        write_outputs(args.out, vae_dir, dit_dir, summary)
        say("wrote " + ", ".join(sorted(p.name for p in args.out.iterdir())))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
