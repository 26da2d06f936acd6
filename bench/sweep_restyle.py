"""Sweep restyle's three step sizes on held-out songs and print the tables that chose the defaults.

Each run restyles a 6 s region in the middle of a held-out song toward a tag (classifier guidance
through the VAE decoder into musicnn), as `musicguide restyle SONG --start A --end B --toward TAG`
does. Per run: the target tag's probability in the region before → after, the region's RMS level
change, the region's peak before any clipping, and the seam level jumps.

    python bench/sweep_restyle.py --term style --values 10,30,100,300
    python bench/sweep_restyle.py --term keep --values 0,1e-4,1e-3,1e-2
    python bench/sweep_restyle.py --term context --values 0.01,0.03,0.1

The other two terms stay at their defaults (musicguide.edit) while one is swept.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from musicguide import restyle as restyling
from musicguide import defaults, edit, losses  # noqa: E402
from musicguide.audio import load_audio, rms_db  # noqa: E402
from musicguide.musicnn import load_musicnn  # noqa: E402
from musicguide.models.folder import load_model  # noqa: E402

SONGS = ("loyalists_20s.ogg", "traveling_minstrels_40s.ogg", "elvish-theme_30s.ogg")
REGION_SECONDS = 6.0


def restyle_once(model, net, song, tag: str, settings, keep: float, context_guidance: float, context: int | None):
    sr = model.sample_rate
    centre = song.shape[-1] // 2
    a, b = centre - round(REGION_SECONDS / 2 * sr), centre + round(REGION_SECONDS / 2 * sr)
    target = net.tag_index(tag)
    style = losses.tag_bce(net, [target], [], sr)
    result = restyling.restyle(model, song, a, b, settings, style_loss=style, structure=losses.log_mel_envelope(net, sr),
                          keep=keep, context_guidance=context_guidance, strength=0.6, context=context)
    out = result.songs[0]
    with torch.no_grad():
        before = float(net.tag_probs(song[None, :, a:b], sr)[..., target].mean())
        after = float(net.tag_probs(out[None, :, a:b], sr)[..., target].mean())
    return {
        "tag_before": before, "tag_after": after,
        "level_change_db": rms_db(out[:, a:b]) - rms_db(song[:, a:b]),
        "peak": float(out[:, a:b].abs().max()),
        "level_jump_db": float(np.mean([s.level_jump_db.value for s in result.seams[0]])),
        "flagged": float(np.mean([s.flagged for s in result.seams[0]])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--term", choices=("style", "keep", "context"), required=True)
    parser.add_argument("--values", required=True)
    parser.add_argument("--tag", default="rock")
    parser.add_argument("--tagger", default="MSD_musicnn")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--songs", type=Path, default=REPO.parent / "shared" / "audio")
    parser.add_argument("--only", default=",".join(SONGS), help="comma-separated song files")
    parser.add_argument("--context", type=float, default=None, help="seconds of context a side (default: the window)")
    args = parser.parse_args()

    model, _ = load_model(args.model)
    model.eval().requires_grad_(False)
    net = load_musicnn(args.tagger)
    names = args.only.split(",")
    songs = [(name, load_audio(args.songs / name, model.sample_rate, model.audio_channels)[0]) for name in names]
    context = None if args.context is None else round(args.context * model.sample_rate)
    print(f"restyle toward {args.tag!r} ({args.tagger}), {REGION_SECONDS:g} s in the middle of {', '.join(names)}; "
          f"{args.steps} steps, strength 0.6, seed 0, context {args.context or 'the window'}; "
          f"sweeping the {args.term} step size\n")
    print(f"| {args.term} ξ | tag before → after (mean) | tag rose on | level change dB (min … max) | region peak (max) | "
          "seam level jump dB | flagged | s/run |")
    print("|---|---|---|---|---|---|---|---|")
    for value in [float(v) for v in args.values.split(",")]:
        style = value if args.term == "style" else defaults.DEFAULT_STYLE_GUIDANCE
        keep = value if args.term == "keep" else defaults.DEFAULT_KEEP
        xi_context = value if args.term == "context" else defaults.DEFAULT_CONTEXT_GUIDANCE
        settings = edit.SamplerSettings(steps=args.steps, guidance=style, loss_space="audio", seed=0)
        started = time.perf_counter()
        runs = [restyle_once(model, net, song, args.tag, settings, keep, xi_context, context) for _, song in songs]
        per_run = (time.perf_counter() - started) / len(runs)
        col = lambda k: [r[k] for r in runs]  # noqa: E731
        rose = sum(r["tag_after"] > r["tag_before"] for r in runs)
        print(f"| {value:g} | {np.mean(col('tag_before')):.3f} → {np.mean(col('tag_after')):.3f} | {rose} of {len(runs)} | "
              f"{min(col('level_change_db')):+.1f} … {max(col('level_change_db')):+.1f} | {max(col('peak')):.2f} | "
              f"{np.mean(col('level_jump_db')):.2f} | {100 * np.mean(col('flagged')):.0f}% | {per_run:.0f} |", flush=True)


if __name__ == "__main__":
    main()
