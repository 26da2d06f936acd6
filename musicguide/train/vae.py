"""Stage 1: the Oobleck VAE, trained to reconstruct random segments of the corpus."""

from __future__ import annotations

import json
import math
import os
from typing import Callable, Sequence

import torch
from torch import Tensor

from musicguide.atomic import write_atomically
from musicguide.errors import UserError
from musicguide.models.config import ModelConfig
from musicguide.models.latent_diffusion import LatentDiffusion
from musicguide.models.folder import CONFIG_FILE, VAE_PREFIXES, VAE_WEIGHTS_FILE, load_vae, save_weights
from musicguide.models.presets import SAMPLE_RATE, preset_config
from musicguide.models.layers import WNConv1d, weight_normalised
from musicguide.train.data import Corpus, TrackBank
from musicguide.train.loop import StepBatch, train_loop, relative_to_run
from musicguide.train.losses import stft_loss, vae_loss
from musicguide.train.settings import ProgressCallback, TrainResult, VAETrainConfig
from musicguide.train.shard import Shard
from musicguide.train.stage import Stage, start_from


DECODER_PREFIX = "pretransform.model.decoder.layers."


def nearest_upsample_decoder(config: ModelConfig, state: dict[str, Tensor]) -> tuple[ModelConfig, dict[str, Tensor]]:
    """The same model with `use_nearest_upsample` decoders, and `state` (VAE weights at least) with
    each transposed convolution replaced by the repeat-then-convolve kernel closest to it.

    Both map one input sample x[m] to outputs n = m*stride + r through a kernel over the offset r:
    the transposed convolution's own kernel, and for the repeat then a convolution v, a running sum
    of s taps of v. The least-squares v over all offsets keeps what a repeat can express and drops
    the rest: exactly the part that turns a constant into a pattern repeating every stride. The
    transposed convolution's bias has no counterpart (a constant stays constant) and is dropped;
    everything else is kept, so fine-tuning starts from the trained residual units."""
    decoder = config.autoencoder.decoder
    if decoder.use_nearest_upsample:
        raise UserError("this model's decoder already upsamples by repeating")
    data = config.to_dict()
    data["model"]["pretransform"]["config"]["decoder"]["config"]["use_nearest_upsample"] = True
    new_config = ModelConfig.from_dict(data)
    state = dict(state)
    for block, stride in enumerate(reversed(decoder.strides), start=1):
        old = f"{DECODER_PREFIX}{block}.layers.1."
        gain, direction = state.pop(old + "weight_g"), state.pop(old + "weight_v")
        state.pop(old + "bias")
        kernel = weight_normalised(direction.float(), gain.float())  # [in, out, 2 * stride]
        fitted = _repeat_kernel(kernel, stride)  # [out, in, 2 * stride]
        state[old + "1.weight_v"] = fitted.to(direction.dtype).contiguous()
        state[old + "1.weight_g"] = fitted.flatten(1).norm(dim=1)[:, None, None].to(gain.dtype)
    return new_config, state


def _repeat_kernel(transposed: Tensor, stride: int) -> Tensor:
    """Least-squares v [out, in, 2s] with repeat-by-s then conv(v, "same") closest to
    conv_transpose(transposed [in, out, 2s], stride s, padding ceil(s/2)), offset by offset."""
    size, pad, left = 2 * stride, math.ceil(stride / 2), (2 * stride - 1) // 2
    offsets = torch.arange(-3 * stride, 3 * stride)
    taps = torch.arange(size)
    # output n = m*s + r sees x[m] through taps j with m*s <= n + j - left < (m + 1)*s
    first = left - offsets[:, None]
    repeat_map = ((taps >= first) & (taps < first + stride)).double()  # [offsets, taps]
    inside = (offsets + pad >= 0) & (offsets + pad < size)
    target = torch.zeros(len(offsets), transposed.shape[0] * transposed.shape[1], dtype=torch.float64)
    target[inside] = transposed.flatten(0, 1).T.double()[(offsets + pad)[inside]]
    fitted = torch.linalg.lstsq(repeat_map, target).solution  # [taps, in * out]
    return fitted.T.reshape(transposed.shape[0], transposed.shape[1], size).transpose(0, 1).float()


MAX_GAIN_DB = 12.0


def calibrate_output_gain(model: LatentDiffusion, excerpts: Sequence[Tensor]) -> float:
    """Scale the decoder's last convolution so that round trips of `excerpts` ([2, N] each, training
    audio) keep their level: the median level change over them, undone (at most +-12 dB).

    The spectral loss's log-magnitude term is nearly blind to a constant gain next to its other
    errors, and a decoder fine-tuned with it came out 3.9 dB quiet. The decoder ends in a linear,
    bias-free convolution, so one factor on its weight is an exact gain. Returns the gain in dB."""
    last = model.vae.decoder.layers[-2]
    if model.config.autoencoder.decoder.final_tanh or not isinstance(last, WNConv1d) or last.bias is not None:
        raise UserError("this decoder does not end in a linear, bias-free convolution: its gain cannot be set")
    changes = []
    with torch.no_grad():
        for audio in excerpts:
            audio = audio.float()[None, :, : audio.shape[-1] // model.downsampling_ratio * model.downsampling_ratio]
            decoded = model.decode(model.encode(audio.to(model.device, model.dtype))).float().cpu()
            changes.append(10 * math.log10(audio.square().mean() / decoded.square().mean().clamp_min(1e-12)))
    gain_db = max(-MAX_GAIN_DB, min(MAX_GAIN_DB, float(torch.tensor(changes).median())))
    with torch.no_grad():
        last.weight_g.mul_(10 ** (gain_db / 20))
    return gain_db


def _model_config(stage: Stage, config: VAETrainConfig, given: ModelConfig | None) -> ModelConfig:
    wanted = given or preset_config(config.preset)
    checkpoint = stage.checkpoint
    model_config = ModelConfig.from_dict(json.loads(checkpoint["model_config"])) if checkpoint else wanted
    if model_config.to_dict() != wanted.to_dict():
        raise UserError(f"{stage.out_dir} was trained with another model than this run's (preset {config.preset!r})")
    ratio = model_config.autoencoder.downsampling_ratio
    if config.segment_samples % ratio:
        raise UserError(f"segment_samples must be a multiple of the VAE's {ratio} samples per latent frame")
    return model_config


def train_vae(data: str | os.PathLike | Corpus, out_dir: str | os.PathLike, config: VAETrainConfig | None = None, *,
              device: str | torch.device | None = None, resume: bool = False, holdout: Sequence[str] | None = None,
              progress: ProgressCallback | None = None, init: str | os.PathLike | None = None,
              model_config: ModelConfig | None = None) -> TrainResult:
    """Train the preset's VAE on random segments of the files under `data` (or a loaded Corpus).

    `init`: start from the VAE of this folder (a model folder, or a `train_vae` one) instead of
    random weights. `model_config`: train this model's VAE instead of the preset's (a variant of
    another compression, say; the preset still gives the training settings).

    Writes to `out_dir`: model_config.json (the preset's model), vae.safetensors (the VAE's weights,
    float32), checkpoint.pt (to resume) and train_log.json. `train_dit` reads this folder."""
    config = config or VAETrainConfig.for_preset("demo")
    stage = Stage.open("vae", VAE_PREFIXES, out_dir, device, resume, init)
    model_config = _model_config(stage, config, model_config)
    corpus = stage.corpus(data, config, holdout)
    entries = corpus.indices(held_out=False)
    shard = stage.shard(corpus, entries, config.batch_size)
    model = stage.build(model_config, config.seed)
    if init is not None:
        start_from(model, load_vae(init)[1], VAE_PREFIXES, init)
    model.pretransform.requires_grad_(True)
    model.vae.encoder.requires_grad_(config.train_encoder)

    segment = config.segment_samples
    bank = stage.bank([corpus.tracks[entries[t]] for t in shard.tracks], SAMPLE_RATE, segment, torch.float16)
    _, val_tracks = corpus.split(held_out=True)
    val_bank = stage.bank(val_tracks, SAMPLE_RATE, segment, torch.float16) if stage.world.is_main else None
    run = stage.run(model, config, progress, {**stage.data_log(corpus, config, model_config),
                                              "init": relative_to_run(init, stage.out_dir)})
    step_batch = _steps(stage.objective(model, vae_loss, config), bank, shard, config, model)

    def export() -> None:
        write_atomically(stage.out_dir / CONFIG_FILE, model.config.to_json)
        save_weights({k: v.detach().float().cpu().contiguous() for k, v in run.trained_state().items()},
                     stage.out_dir / VAE_WEIGHTS_FILE)

    return train_loop(run, step_batch, _validation(model, val_bank, config), export)


def _steps(objective: torch.nn.Module, bank: TrackBank, shard: Shard, config: VAETrainConfig,
           model: LatentDiffusion) -> StepBatch:
    """This process's part of each step's batch: its slots' segments, flipped at random, and their
    posterior noise; the loss on them when called."""
    device, frames = bank.data.device, config.segment_samples // model.downsampling_ratio

    def step_batch(step: int) -> Callable[[], tuple[Tensor, dict[str, Tensor]]]:
        draws = shard.random(config.seed, step, device)
        audio = bank.crops_at(*shard.locate(draws.uniform()), config.segment_samples).x
        # Polarity and channel order carry no musical meaning: flip both at random.
        sign = draws.coin().to(device)[:, None, None] * 2.0 - 1.0
        swap = draws.coin().to(device)[:, None, None]
        audio = torch.where(swap, audio.flip(1), audio) * sign
        noise = draws.normal(model.latent_channels, frames)
        return lambda: objective(audio, config, noise)

    return step_batch


def _validation(model: LatentDiffusion, bank: TrackBank | None, config: VAETrainConfig) -> Callable[[], dict[str, float]]:
    """Reconstruction loss of fixed held-out segments through the posterior mean (what editing uses)."""
    if bank is None:
        return dict
    track, start = bank.spread_crops(config.segment_samples, config.val_examples)

    def validate() -> dict[str, float]:
        totals = {"stft": 0.0, "l1": 0.0}
        for i in range(0, len(track), config.batch_size):
            audio = bank.crops(track[i:i + config.batch_size], start[i:i + config.batch_size], config.segment_samples).x
            decoded = model.decode(model.encode(audio))
            totals["stft"] += stft_loss(decoded, audio, config.stft_sizes).item() * len(audio)
            totals["l1"] += (decoded.float() - audio).abs().mean().item() * len(audio)
        parts = {k: v / len(track) for k, v in totals.items()}
        return {"loss": parts["stft"] + config.l1_weight * parts["l1"], **parts}

    return validate
