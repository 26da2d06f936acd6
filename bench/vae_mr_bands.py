"""Where a VAE's round-trip MR differs from the committed demo's: per STFT resolution, the three mel
bands that differ most, with the original's log10 level there (-5 is MR's clamp: nothing there).

    python bench/vae_mr_bands.py MODEL_FOLDER

Four clips of ../shared/audio, 256 latent frames (5.9 s) from 2 s in each (issue 29, docs/training.md).
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from musicguide.models.folder import load_model_folder
from musicguide.registry import load_model
from musicguide.audio import load_audio
from musicguide.evaluate import metrics as M

def vae_of(name):
    if name == "committed":
        m, _ = load_model("demo", device=torch.device("cpu"), dtype=torch.float32)
    else:
        m = load_model_folder(name, device=torch.device("cpu"), dtype=torch.float32)
    return m.eval().requires_grad_(False)

models = {"committed": vae_of("committed"), "candidate": vae_of(sys.argv[1])}
clips = ["battle_60s.ogg", "knolls_100s.ogg", "loyalists_20s.ogg", "traveling_minstrels_40s.ogg"]
sr = 44100
for clip in clips:
    audio, _ = load_audio(Path(__file__).resolve().parents[2] / "shared" / "audio" / clip)
    x = audio[:, 2 * sr : 2 * sr + 256 * 1024]
    trips = {}
    for name, m in models.items():
        with torch.no_grad():
            trips[name] = m.decode(m.encode(x[None]))[0, :, : x.shape[-1]].float()
    print(clip)
    for w, b in zip(M.MR_WINDOWS, M.MR_MEL_BANDS):
        ref = M._log_mel(x, sr, w, b)
        row = []
        for name in models:
            d = (M._log_mel(trips[name], sr, w, b) - ref).abs().mean(dim=(0, 2))  # per band
            row.append(d)
        diff = row[1] - row[0]
        top = diff.argsort(descending=True)[:3]
        print(f"  w={w:5d} committed {row[0].mean():.3f} candidate {row[1].mean():.3f}  worst bands {top.tolist()} (+{diff[top].tolist()})  "
              f"orig level in those bands {ref.mean(dim=(0,2))[top].tolist()}")
