"""musicguide: edit real music with a pretrained latent diffusion model and guidance gradients."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `from musicguide import Editor` imports the API (and torch) only when asked: the CLI imports
    # this package too, and `musicguide --help` must not wait for torch.
    if name in ("Editor", "Result", "Sidecar"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'musicguide' has no attribute {name!r}")


__all__ = ["Editor", "Result", "Sidecar", "__version__"]
