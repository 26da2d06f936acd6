"""Stage 2: the DiT, trained for v-prediction on the VAE's latents of the corpus (encoded once)."""

from __future__ import annotations

import json
import math
import os
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from musicguide import distributed
from musicguide.errors import UserError
from musicguide.models.config import ModelConfig
from musicguide.models.folder import load_model_folder, load_vae, save_model_folder
from musicguide.models.latent_diffusion import LatentDiffusion
from musicguide.models.folder import DIT_PREFIXES, VAE_PREFIXES
from musicguide.models.presets import SAMPLE_RATE, preset_config
from musicguide.train.data import Corpus, TrackBank
from musicguide.train.loop import StepBatch, train_loop, relative_to_run
from musicguide.train.losses import sample_timesteps, v_loss
from musicguide.train.settings import DiTTrainConfig, ProgressCallback, TrainResult
from musicguide.train.shard import Shard
from musicguide.train.stage import Stage, start_from


def compose_config(vae_config: ModelConfig, dit_config: ModelConfig, latent_scale: float = 1.0) -> ModelConfig:
    """The VAE (pretransform) of one config with the conditioning, DiT and window of another; the
    DiT's channels follow the VAE's latent size. `latent_scale` is stored as the pretransform scale."""
    data = dit_config.to_dict()
    data["model"]["pretransform"] = vae_config.to_dict()["model"]["pretransform"]
    data["model"]["pretransform"]["scale"] = float(latent_scale)
    latent_dim = vae_config.autoencoder.latent_dim
    data["model"]["diffusion"]["config"]["io_channels"] = latent_dim
    data["model"]["io_channels"] = latent_dim
    return ModelConfig.from_dict(data)


@torch.no_grad()
def encode_track(model: LatentDiffusion, audio: Tensor, chunk_frames: int = 2048, context_frames: int = 32) -> Tensor:
    """Latents [latent_channels, frames] of a whole track [2, N], encoded in chunks that each see
    `context_frames` of their neighbours (silence beyond the track's ends), so chunk edges look
    like the rest: the encoder is convolutional, and 32 frames exceed its receptive field.

    Every chunk of a track has the same length (a power of two for short tracks), so cuDNN tunes
    its convolutions for a handful of shapes instead of one per track."""
    ratio = model.downsampling_ratio
    frames = -(-audio.shape[-1] // ratio)
    chunk = min(chunk_frames, 1 << (frames - 1).bit_length())
    chunks = -(-frames // chunk)
    pad_end = (chunks * chunk + context_frames) * ratio - audio.shape[-1]
    audio = F.pad(audio.float(), (context_frames * ratio, pad_end))
    pieces = []
    for first in range(0, chunks * chunk, chunk):
        window = audio[None, :, first * ratio: (first + chunk + 2 * context_frames) * ratio]
        latents = model.encode(window.to(model.device))[0]
        pieces.append(latents[:, context_frames: context_frames + chunk].float())
    return torch.cat(pieces, dim=-1)[:, :frames]


def _measured_scale(latents: Sequence[Tensor], stage: Stage) -> float:
    """The standard deviation of all training latents, from the ones each process owns."""
    stats = torch.zeros(3, dtype=torch.float64)
    for z in latents:
        z = z.double()
        stats += torch.stack([torch.tensor(float(z.numel()), dtype=torch.float64), z.sum().cpu(), z.square().sum().cpu()])
    count, total, squares = distributed.total(stats.to(stage.device), stage.world).tolist()
    return math.sqrt(max(squares - total * total / count, 0.0) / max(count - 1, 1))


def _freeze_text_paths(model: LatentDiffusion) -> None:
    """We train with the null text conditioning, under which cross-attention (and the projection of
    text tokens) add nothing and get no gradient; DDP wants every trained parameter to get one."""
    dit = model.dit
    if hasattr(dit, "to_cond_embed"):
        dit.to_cond_embed.requires_grad_(False)
    for block in dit.transformer.layers:
        if block.cross_attend:
            block.cross_attend_norm.requires_grad_(False)
            block.cross_attn.requires_grad_(False)


def _zero_init_branches(model: LatentDiffusion) -> None:
    """Start every residual branch of the DiT at zero (the reference's zero_init_branch_outputs):
    the untrained network is then the identity plus embeddings, and early steps stay stable."""
    for block in model.dit.transformer.layers:
        torch.nn.init.zeros_(block.self_attn.to_out.weight)
        torch.nn.init.zeros_(block.ff.ff[2].weight)
        if block.cross_attend:
            torch.nn.init.zeros_(block.cross_attn.to_out.weight)


def _load_vae_weights(model: LatentDiffusion, vae_state: dict[str, Tensor], vae_dir: str | os.PathLike) -> None:
    missing, unexpected = model.load_state_dict(vae_state, strict=False)
    missing = [k for k in missing if k.startswith(VAE_PREFIXES)]
    if missing or unexpected:
        raise UserError(f"the VAE weights in {vae_dir} do not match its model_config.json "
                        f"({(missing + unexpected)[0]})")


def _make_trainable(model: LatentDiffusion, config: DiTTrainConfig, initial: dict[str, Tensor] | None,
                    init: str | os.PathLike | None) -> None:
    """The DiT and conditioners from `initial` (a model folder's weights), or fresh with zeroed
    residual branches; trained, except the text paths."""
    if initial is not None:
        start_from(model, initial, DIT_PREFIXES, init)
    else:
        _zero_init_branches(model)
    model.model.requires_grad_(True)
    model.conditioner.requires_grad_(True)
    _freeze_text_paths(model)
    model.set_gradient_checkpointing(config.gradient_checkpointing)


def _latents(model: LatentDiffusion, corpus: Corpus, entries: Sequence[tuple[int, bool]]) -> list[Tensor]:
    """The latents of (file index, left/right swapped) entries."""
    return [encode_track(model, corpus.tracks[i].flip(0) if flip else corpus.tracks[i]) for i, flip in entries]


def _scaled_model(stage: Stage, model: LatentDiffusion, vae_config: ModelConfig, config: DiTTrainConfig,
                  owned: Sequence[Tensor]) -> float:
    """Set the latent scale (measured, or the checkpoint's when resuming) in the model and its config."""
    dit_config = preset_config(config.preset)
    if stage.checkpoint:
        model_config = ModelConfig.from_dict(json.loads(stage.checkpoint["model_config"]))
        scale = model_config.autoencoder.scale  # the scale the DiT was trained with
        if compose_config(vae_config, dit_config, scale).to_dict() != model_config.to_dict():
            raise UserError(f"{stage.out_dir} was trained with another preset or VAE than this run's")
    else:
        scale = _measured_scale(owned, stage)
        model_config = compose_config(vae_config, dit_config, scale)
    model.config, model.pretransform.scale = model_config, scale  # from now on encode() gives unit-variance latents
    return scale


def train_dit(data: str | os.PathLike | Corpus, vae_dir: str | os.PathLike, out_dir: str | os.PathLike,
              config: DiTTrainConfig | None = None, *, device: str | torch.device | None = None, resume: bool = False,
              holdout: Sequence[str] | None = None, progress: ProgressCallback | None = None,
              export_dtype: torch.dtype = torch.float16, init: str | os.PathLike | None = None) -> TrainResult:
    """Train the preset's DiT on latents of the files under `data`, encoded once by the VAE in `vae_dir`.

    `init`: start from the DiT of this model folder (same preset and latent size) instead of
    random weights; its latent scale is not kept, since `vae_dir`'s VAE may have moved on.

    Writes to `out_dir` a complete model folder (model_config.json + model.safetensors with the VAE
    copied in and the EMA of the DiT, in `export_dtype`), plus checkpoint.pt and train_log.json.
    The pretransform scale is set to the latents' standard deviation, so the DiT sees unit-variance data."""
    config = config or DiTTrainConfig.for_preset("demo")
    stage = Stage.open("dit", DIT_PREFIXES, out_dir, device, resume, init)
    vae_config, vae_state = load_vae(vae_dir, stage.device)
    initial = load_model_folder(init).state_dict() if init is not None else None
    corpus = stage.corpus(data, config, holdout)
    flips = (False, True) if config.stereo_flip else (False,)
    entries = [(i, flip) for i in corpus.indices(held_out=False) for flip in flips]
    shard = stage.shard(corpus, [i for i, _ in entries], config.batch_size)

    model = stage.build(compose_config(vae_config, preset_config(config.preset)), config.seed)
    _load_vae_weights(model, vae_state, vae_dir)
    held = _latents(model, corpus, [entries[t] for t in shard.tracks])
    val_latents = _latents(model, corpus, [(i, False) for i in corpus.indices(True)]) if stage.world.is_main else []
    owned = set(shard.owned)
    scale = _scaled_model(stage, model, vae_config, config, [z for t, z in zip(shard.tracks, held) if t in owned])
    _make_trainable(model, config, initial, init)

    window = config.window_frames or model.max_frames
    rate = SAMPLE_RATE / model.downsampling_ratio
    bank = stage.bank([z / scale for z in held], rate, window,
                      timing=[corpus.track_timing(entries[t][0]) for t in shard.tracks])
    val_bank = stage.bank([z / scale for z in val_latents], rate, window, timing=corpus.timing(held_out=True))
    run = stage.run(model, config, progress, {
        **stage.data_log(corpus, config, model.config), "latent_scale": scale,
        "vae_dir": relative_to_run(vae_dir, stage.out_dir), "init": relative_to_run(init, stage.out_dir),
        "latent_frames": sum(-(-round(corpus.durations[i] * SAMPLE_RATE) // model.downsampling_ratio) for i, _ in entries)},
        ema_decay=config.ema_decay)
    step_batch = _steps(stage.objective(model, v_loss, config), bank, shard, window, config, model)

    def export() -> None:
        with run.averaged():
            save_model_folder(model, stage.out_dir, dtype=export_dtype)

    return train_loop(run, step_batch, _validation(model, val_bank, window, config), export)


def _steps(objective: torch.nn.Module, bank: TrackBank, shard: Shard, window: int, config: DiTTrainConfig,
           model: LatentDiffusion) -> StepBatch:
    """This process's part of each step's batch: its slots' crops (all of one length, shorter on a
    share of the steps), their timesteps and their noise; the loss on them when called."""
    device, patch, cpu = bank.data.device, model.config.diffusion.dit.patch_size, torch.device("cpu")

    def step_batch(step: int) -> Callable[[], tuple[Tensor, dict[str, Tensor]]]:
        draws, length = shard.random(config.seed, step, device), window
        if torch.rand((), generator=draws.cpu) < config.short_crops:  # 1/4 .. 7/8 of the window: few shapes
            length = window * int(torch.randint(2, 8, (), generator=draws.cpu)) // 8
        length = max(patch, length // patch * patch)
        crops = bank.crops_at(*shard.locate(draws.uniform()), length)
        t = draws.each(lambda batch, g: sample_timesteps(batch, config.timestep_sampler, cpu, g)).to(device)
        noise = draws.normal(bank.data.shape[0], length)
        return lambda: (objective(crops.x, t, noise, crops), {})

    return step_batch


def _validation(model: LatentDiffusion, bank: TrackBank | None, window: int,
                config: DiTTrainConfig) -> Callable[[], dict[str, float]]:
    """v-prediction loss on fixed held-out windows with fixed noise and evenly spread t, so that
    numbers from different steps (and runs) compare. Run with the EMA weights, which are exported."""
    if bank is None:
        return dict
    track, start = bank.spread_crops(window, config.val_examples)
    generator = torch.Generator().manual_seed(1234)
    noise = torch.randn((len(track), bank.data.shape[0], window), generator=generator)
    t = torch.linspace(0.02, 0.98, len(track))[torch.randperm(len(track), generator=generator)]

    def validate() -> dict[str, float]:
        total = 0.0
        for i in range(0, len(track), config.batch_size):
            part = slice(i, i + config.batch_size)
            crops = bank.crops(track[part], start[part], window)
            n = noise[part].to(crops.x.device)
            total += v_loss(model, crops.x, t[part].to(crops.x.device), n, crops).item() * len(n)
        return {"loss": total / len(track)}

    return validate
