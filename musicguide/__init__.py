"""musicguide: edit real music with a pretrained latent diffusion model and guidance gradients."""

__version__ = "0.1.0"
