"""Where two VAEs' round-trip MR differ (issue 29, docs/training.md): per clip, MR over all mel bands
and over the bands centred at or below 16 and 12 kHz (is a difference only above a Vorbis file's
low-pass, or in the music?); then per STFT resolution, the three mel bands whose error grew most,
with the original's log10 level there (-5 is MR's clamp: nothing there).

    python bench/vae_mr_bands.py BASELINE CANDIDATE    # each "demo" or a model folder

The clips of ../shared/audio, 256 latent frames (5.9 s) from 2 s in each. The demo weights shipped
before issue 29: `git show f51d90d:musicguide/weights/demo/model.safetensors` (and model_config.json).
"""
import sys
from pathlib import Path

import librosa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from musicguide.audio import load_audio
from musicguide.evaluate import metrics as M
from musicguide.models.folder import load_model_folder
from musicguide.models.folder import load_model

SAMPLE_RATE = 44100
BAND_LIMITS_HZ = (SAMPLE_RATE / 2, 16000.0, 12000.0)


def vae_of(name: str):
    if name == "demo":
        model, _ = load_model("demo", device=torch.device("cpu"), dtype=torch.float32)
    else:
        model = load_model_folder(name, device=torch.device("cpu"), dtype=torch.float32)
    return model.eval().requires_grad_(False)


def band_errors(trip: torch.Tensor, original: torch.Tensor, window: int, bands: int) -> torch.Tensor:
    """Mean |log-mel difference| per band at one of MR's resolutions."""
    return (M._log_mel(trip, SAMPLE_RATE, window, bands) - M._log_mel(original, SAMPLE_RATE, window, bands)).abs().mean(dim=(0, 2))


def band_centres(bands: int) -> torch.Tensor:
    return torch.from_numpy(librosa.mel_frequencies(n_mels=bands + 2, fmin=0, fmax=SAMPLE_RATE / 2)[1:-1])


def main(baseline: str, candidate: str) -> None:
    models = {"baseline": vae_of(baseline), "candidate": vae_of(candidate)}
    clips = sorted((Path(__file__).resolve().parents[2] / "shared" / "audio").glob("*.ogg"))
    totals = {(name, limit): [] for name in models for limit in BAND_LIMITS_HZ}
    for clip in clips:
        audio, _ = load_audio(clip)
        x = audio[:, 2 * SAMPLE_RATE: 2 * SAMPLE_RATE + 256 * 1024]
        errors = {}
        for name, model in models.items():
            with torch.no_grad():
                trip = model.decode(model.encode(x[None]))[0, :, : x.shape[-1]].float()
            errors[name] = [band_errors(trip, x, w, b) for w, b in zip(M.MR_WINDOWS, M.MR_MEL_BANDS)]
            for limit in BAND_LIMITS_HZ:
                totals[name, limit].append(sum(e[band_centres(b) <= limit].mean().item()
                                               for e, b in zip(errors[name], M.MR_MEL_BANDS)))
        print(clip.name, "  MR (all bands / <= 16 kHz / <= 12 kHz):",
              "  ".join(f"{name} " + " / ".join(f"{totals[name, limit][-1]:.3f}" for limit in BAND_LIMITS_HZ)
                        for name in models))
        for w, b, before, after in zip(M.MR_WINDOWS, M.MR_MEL_BANDS, errors["baseline"], errors["candidate"]):
            grew = after - before
            top = grew.argsort(descending=True)[:3]
            level = M._log_mel(x, SAMPLE_RATE, w, b).mean(dim=(0, 2))[top]
            print(f"  w={w:5d} worst bands {top.tolist()} (+{[round(v, 2) for v in grew[top].tolist()]}), "
                  f"original's log10 level there {[round(v, 2) for v in level.tolist()]}")
    print("mean MR over the clips (all bands / <= 16 kHz / <= 12 kHz):")
    for name, path in (("baseline", baseline), ("candidate", candidate)):
        print(f"  {name} ({path}): " + " / ".join(
            f"{sum(totals[name, limit]) / len(clips):.3f}" for limit in BAND_LIMITS_HZ))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    torch.set_num_threads(2)
    main(sys.argv[1], sys.argv[2])
