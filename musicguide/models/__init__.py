"""The Stable Audio Open model family: Oobleck VAE + DiT, configured by a `model_config.json`.

    config = ModelConfig.from_json("model_config.json")   # or tiny_random_config()
    model = build_model(config)                           # random weights
    model = load_model_folder("path/to/folder")           # model_config.json + model.safetensors
    z = model.encode(audio); v = model.denoise(z_t, t); audio = model.decode(z)
"""

from musicguide.models.config import ModelConfig
from musicguide.models.presets import tiny_random_config
from musicguide.models.folder import load_model_folder, save_model_folder
from musicguide.models.latent_diffusion import LatentDiffusion, build_model

__all__ = [
    "LatentDiffusion",
    "ModelConfig",
    "build_model",
    "load_model_folder",
    "save_model_folder",
    "tiny_random_config",
]
