"""The two files of a model folder, and where a `--model` argument points once resolved, in one
place that imports nothing heavy (the registry lists models without loading torch, the Hub
client or httpx; models.folder reads and writes the files; `Editor.from_model` describes a model
object without the registry)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

CONFIG_FILE = "model_config.json"
WEIGHTS_FILE = "model.safetensors"
VAE_WEIGHTS_FILE = "vae.safetensors"  # `musicguide train vae` writes the VAE alone, beside the config

Source = Literal["hub", "local", "builtin", "memory"]  # memory: a model object handed to `Editor.from_model`


@dataclass(frozen=True)
class ResolvedModel:
    """Where a `--model` argument points, once any download is done.

    `folder` is None only for builtin models, which are constructed from code (with `seed`).
    """

    name: str
    kind: Source
    folder: Path | None
    repo: str | None
    revision: str | None
    description: str
    seed: int | None = None
