"""How far reduced precision moves an edit: the same infill, same seed, in fp32 and in bf16/fp16.

    python bench/precision.py                                 # demo model, CPU, a clip from ../shared/audio
    python bench/precision.py --model sao-1.0 --device cuda --steps 100

Runs `musicguide infill` through the CLI for each precision and compares the edited region of the
output with fp32's: SNR (dB, fp32 as the signal) and MR (the evaluation's multi-resolution log-mel
distance, dB). Prints a Markdown table; docs/models.md keeps the measured one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from musicguide import cli  # noqa: E402
from musicguide.evaluate.metrics import mel_distance  # noqa: E402


def infill(song: Path, out: Path, args, precision: str) -> np.ndarray:
    code = cli.app(["infill", str(song), "--start", str(args.start), "--end", str(args.end), "-o", str(out), "--quiet",
                    "--model", args.model, "--device", args.device, "--precision", precision, "--steps", str(args.steps),
                    "--seed", "1", "--loss-space", args.loss_space, "--context", str(args.context)], standalone_mode=False)
    if code not in (None, 0):
        raise SystemExit(f"{precision}: infill failed ({code})")
    audio, rate = sf.read(out, dtype="float32", always_2d=True)
    return audio[round(args.start * rate) : round(args.end * rate)].T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--song", type=Path, default=REPO.parent / "shared" / "audio" / "battle_60s.ogg")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--start", type=float, default=8.0)
    parser.add_argument("--end", type=float, default=11.0)
    parser.add_argument("--loss-space", default="latent")
    parser.add_argument("--context", type=float, default=3.0, help="seconds of context each side")
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp16"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        reference = infill(args.song, Path(folder) / "fp32.wav", args, "fp32")
        print(f"{args.model} on {args.device}, {args.steps} steps, infill {args.start:g}–{args.end:g} s of "
              f"{args.song.name}, --context {args.context:g}, --loss-space {args.loss_space}, seed 1")
        print("| precision | SNR of the edit vs fp32 | MR vs fp32 | finite |")
        print("|---|---|---|---|")
        for precision in args.precisions:
            edit = infill(args.song, Path(folder) / f"{precision}.wav", args, precision)
            noise = float(((edit - reference) ** 2).sum())
            snr = 10 * np.log10(float((reference**2).sum()) / max(noise, 1e-30))
            mr = mel_distance(torch.from_numpy(edit), torch.from_numpy(reference), 44100)
            print(f"| {precision} | {snr:.1f} dB | {mr:.3f} | {bool(np.isfinite(edit).all())} |", flush=True)


if __name__ == "__main__":
    main()
