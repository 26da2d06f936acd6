"""The model families: Stable Audio Open (Oobleck VAE + DiT) and Stable Audio 3 (SAME + DiT), each
configured by a `model_config.json`.

    config = ModelConfig.from_json("model_config.json")   # or tiny_random_config()
    model = build_model(config)                           # random weights
    model = load_model_folder("path/to/folder")           # model_config.json + model.safetensors
    z = model.encode(audio); v = model.denoise(z_t, t); audio = model.decode(z)

The names below are imported on first use, so that importing one module of the package (say
`models.config`) does not import them all.
"""

from musicguide import lazy_exports

_HOME = {
    "LatentDiffusion": "musicguide.models.latent_diffusion",
    "ModelConfig": "musicguide.models.config",
    "build_model": "musicguide.models.latent_diffusion",
    "load_model": "musicguide.models.folder",
    "load_model_folder": "musicguide.models.folder",
    "save_model_folder": "musicguide.models.folder",
    "tiny_random_config": "musicguide.models.presets",
}
__all__ = sorted(_HOME)
__getattr__ = lazy_exports(__name__, _HOME)
