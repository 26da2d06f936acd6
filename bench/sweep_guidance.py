"""Sweep a guidance step size ξ on held-out clips and print the table that chose the default.

Infill and continuation (`--tasks`; the evaluation protocol's, `musicguide.evaluate`) for each ξ of one loss
space, on clips that the evaluation in docs/evaluation.md does not use: the clips are cut as the
protocol cuts them, and the first `--skip` (the evaluation's) are passed over.

    python bench/sweep_guidance.py --space latent --values 0,0.01,0.03,0.1,0.3,1 --steps 20 --clips 6
    python bench/sweep_guidance.py --space audio --values 0.001,0.003,0.01 --steps 20 --clips 3 --tasks infill

Prints a Markdown table (mean over clips; lower is better in every column) and writes the whole
report as JSON next to `--out`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from musicguide.edit import SamplerSettings  # noqa: E402
from musicguide.evaluate import (  # noqa: E402
    Protocol, audio_files, cut_clips, evaluate, read_track_list, write_report,
)
from musicguide.api import Editor  # noqa: E402
from musicguide.models.folder import load_model  # noqa: E402

COLUMNS = ("mr", "level_error_db", "level_jump_db", "spectral_distance_db", "flagged", "fd")


def sweep_clips(clips_dir: Path, tracks: Path, skip: int, count: int, sample_rate: int, channels: int, into: Path) -> list[str]:
    """Write clips skip … skip+count−1 of the protocol's order as 6 s WAVs into `into`."""
    protocol = Protocol()
    files = audio_files(clips_dir, read_track_list(tracks))
    clips, _ = cut_clips(files, protocol, sample_rate, channels, skip + count)
    chosen = clips[skip : skip + count]
    for i, clip in enumerate(chosen):
        sf.write(into / f"{i:02d}_{Path(clip.file).stem}.wav", clip.audio.T.numpy(), sample_rate, subtype="FLOAT")
    return [f"{clip.file}@{clip.start / sample_rate:.1f}s" for clip in chosen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", choices=("latent", "audio"), required=True)
    parser.add_argument("--values", required=True, help="comma-separated ξ values")
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--clips-dir", type=Path, default=REPO.parent / "shared" / "audio")
    parser.add_argument("--tracks", type=Path, default=REPO / "eval" / "holdout.txt")
    parser.add_argument("--skip", type=int, default=6, help="the evaluation's clips, passed over")
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tasks", default="infill,continuation")
    parser.add_argument("--out", type=Path, default=Path("sweep.md"))
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    model, resolved = load_model(args.model)
    model.eval().requires_grad_(False)
    values = [float(v) for v in args.values.split(",")]
    tasks = args.tasks.split(",")
    variants = {f"ξ = {v:g}": SamplerSettings(sampler=args.sampler, steps=args.steps, guidance=v,
                                              loss_space=args.space, seed=0) for v in values}
    with tempfile.TemporaryDirectory() as tmp:
        labels = sweep_clips(args.clips_dir, args.tracks, args.skip, args.clips, model.sample_rate,
                             model.audio_channels, Path(tmp))
        report = evaluate(Editor.from_model(model), Path(tmp), variants=variants, steps=args.steps, n_clips=args.clips,
                          protocol=Protocol(clips_per_file=1), tasks=tasks,
                          model_info={"name": resolved.name}, progress=lambda d, t, w: print(f"{d}/{t} {w}", file=sys.stderr))
    report.clips = [{**c, "source": label} for c, label in zip(report.clips, labels)]
    write_report(report, args.out, args.out.with_suffix(".json"))

    lines = [f"{args.space}-space loss, {args.sampler.upper()}, {args.steps} steps, {len(labels)} clips "
             f"({', '.join(labels)})", "",
             "| ξ | " + " | ".join(f"{task} {name}" for task in tasks
                                   for name in ("MR", "level err dB", "level jump dB", "spectral dB", "flagged", "FD")) + " |",
             "|---|" + "---|" * (6 * len(tasks))]
    for name in variants:
        cells = []
        for task in tasks:
            scores = report.rows[name][task]
            for column in COLUMNS:
                value = getattr(scores, column)
                cells.append("–" if value is None else f"{100 * value:.0f}%" if column == "flagged" else f"{value:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    args.out.with_suffix(".table.md").write_text("\n".join(lines) + "\n")
    print(json.dumps({"elapsed_s": report.elapsed_s}), file=sys.stderr)


if __name__ == "__main__":
    main()
