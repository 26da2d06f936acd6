"""Speed and memory of one guided sampling step, per model: prints a Markdown table.

    .venv/bin/python bench/speed.py                                   # tiny-random and demo, CPU
    python bench/speed.py --models sao-1.0-shape sao-small-shape --device cuda --dtype float16

"sao-1.0-shape" is the published Stable Audio Open 1.0 config with random weights (full depth),
"sao-small-shape" the rectified-flow config of bench/conformance.py at depth 20; registry names and
model folders load as usual. Columns: DiT forward; VAE decode and encode of the window; one guided
step with the loss on latents (DiT + backward to x) and with the loss on decoded audio (DiT + decode
+ backward through both). Best of --repeats after one warm-up; batch 1; window = --seconds or the
model's whole window.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from musicguide.losses import audio_loss, latent_loss  # noqa: E402
from musicguide.models import ModelConfig, build_model  # noqa: E402
from musicguide.operators import SampleMask  # noqa: E402
from musicguide.measurement import free_range_mask  # noqa: E402
from musicguide.models.folder import load_model  # noqa: E402
from musicguide.sampling import predict  # noqa: E402


def shaped(name: str) -> ModelConfig:
    from conformance import sao_config, sao_small_rf_config

    if name == "sao-1.0-shape":
        return ModelConfig.from_dict(sao_config())
    config = sao_small_rf_config()
    config["model"]["diffusion"]["config"]["depth"] = 20
    return ModelConfig.from_dict(config)


def model_for(name: str, device: torch.device, dtype: torch.dtype):
    if name.endswith("-shape"):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return build_model(shaped(name)).to(device=device, dtype=dtype)
    return load_model(name, device=device, dtype=dtype)[0]


def best(fn, repeats: int, device: torch.device) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(name: str, device: torch.device, dtype: torch.dtype, seconds: float | None, repeats: int) -> list[str]:
    model = model_for(name, device, dtype).eval().requires_grad_(False)
    hop = model.downsampling_ratio
    frames = model.max_frames if seconds is None else min(model.max_frames, max(2, round(seconds * model.sample_rate / hop)))
    audio = torch.randn(1, model.audio_channels, frames * hop, device=device, dtype=dtype) * 0.1
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        x = model.encode(audio)
    t = torch.tensor(0.5, dtype=torch.float64)
    mask = free_range_mask(frames, (frames // 3, frames - frames // 3))
    known = torch.zeros(frames * hop, dtype=torch.bool)
    known[: frames // 3 * hop] = True
    samples = SampleMask(known)

    def denoiser(x_t, tb):
        return model.denoise(x_t, tb)

    with torch.no_grad():
        dit = best(lambda: model.denoise(x, 0.5), repeats, device)
        decode = best(lambda: model.decode(x), repeats, device)
        encode = best(lambda: model.encode(audio), repeats, device)
    step_latent = best(lambda: predict(denoiser, model.schedule, x, t, latent_loss(mask, mask(x))), repeats, device)
    step_audio = best(lambda: predict(denoiser, model.schedule, x, t, audio_loss(model.decode, samples, samples(audio))),
                      repeats, device)
    peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else "–"
    window = frames * hop / model.sample_rate

    def ms(s: float) -> str:
        return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"

    return [name, f"{window:.1f} s", ms(dit), ms(decode), ms(encode), ms(step_latent), ms(step_audio), peak]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny-random", "demo"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--seconds", type=float, default=None, help="window length (default: the model's)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
          f"{args.dtype}, torch {torch.__version__}")
    header = ["model", "window", "DiT forward", "decode", "encode", "guided step, latent", "guided step, audio", "peak GPU memory"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in args.models:
        print("| " + " | ".join(measure(name, device, dtype, args.seconds, args.repeats)) + " |", flush=True)


if __name__ == "__main__":
    main()
