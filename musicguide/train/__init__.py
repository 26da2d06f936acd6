"""Train the model family on a folder of audio: first the VAE, then the DiT on the VAE's latents.

    vae = train_vae("songs/", "runs/vae", VAETrainConfig.for_preset("demo"))
    dit = train_dit("songs/", "runs/vae", "runs/model", DiTTrainConfig.for_preset("demo"))
    # runs/model is a model folder: musicguide --model runs/model ...

The VAE learns to reconstruct random segments (multi-resolution STFT + waveform L1 + a small KL
term, as stable-audio-tools trains Oobleck, without its adversarial stage). The DiT then learns
v-prediction on the VAE's latents, encoded once up front, with the timing conditioning the family
uses (where the crop starts in its track, how long the track is) and the null text conditioning
that `LatentDiffusion.denoise` samples with. Both stages share one loop: AdamW, warmup then cosine
learning rate, gradient clipping, bf16 autocast on CUDA, a wall-clock budget, validation on
held-out files, a resumable `checkpoint.pt` and a JSON log. Published weights are safetensors only.

Launched by torchrun, the same calls train with DistributedDataParallel: each process reads its
own shard of the tracks and fills its share of the (global) batch, and rank 0 alone writes
(docs/scaling.md).

A run can also start from the weights of a model folder (`init=`, e.g. the shipped demo model):
fp16 weights are enough, since the optimiser state starts fresh under the warm-up anyway. A folder
with a `manifest.json` (scripts/build_corpus.py writes one) gives the held-out split and where each
excerpt sits in its original track, so the timing conditioning stays that of the whole track.

Every setting is checked when a config is made, and `--out` before any work: a bad value is a
`UserError` and nothing is written. The output folder is made when its first file is.

The modules, in the order a run uses them:
    settings    TrainConfig / VAETrainConfig / DiTTrainConfig, TrainProgress, TrainResult
    data        Corpus (files, split, decoding), TrackBank (crops on the device)
    shard       which slots of each global batch this process fills, and their random numbers
    stage       set-up both stages share: device and process group, shard, model, run, DDP
    loop        the training loop, EMA, learning-rate schedule, clock
    checkpoint  checkpoint.pt: save, resume, --out checks
    losses      STFT/L1/KL for the VAE, v-prediction for the DiT
    vae, dit    the two stages
The model presets are in musicguide.models.presets; split_weights/merge_parts in musicguide.models.folder.
"""

from musicguide.models.folder import CONFIG_FILE
from musicguide.models.presets import PRESET_SHAPES, PRESETS, SAMPLE_RATE, VARIANT_STRIDES, preset_config, vae_variant
from musicguide.train.checkpoint import check_out_dir
from musicguide.train.data import (
    AUDIO_SUFFIXES,
    MANIFEST_FILE,
    Corpus,
    Crops,
    TrackBank,
    audio_files,
    holdout_names,
    load_corpus,
    read_manifest,
)
from musicguide.train.dit import compose_config, encode_track, train_dit
from musicguide.train.loop import learning_rate
from musicguide.train.run import EMA
from musicguide.train.losses import sample_timesteps, stft_loss, v_loss, vae_loss
from musicguide.train.settings import (
    CHECKPOINT_FILE,
    LOG_FILE,
    LONG_STFT_SIZES,
    STFT_SIZES,
    TIMESTEP_SAMPLERS,
    VAE_WEIGHTS_FILE,
    DiTTrainConfig,
    ProgressCallback,
    TrainConfig,
    TrainProgress,
    TrainResult,
    VAETrainConfig,
)
from musicguide.train.vae import calibrate_output_gain, load_vae, nearest_upsample_decoder, train_vae

__all__ = [
    "AUDIO_SUFFIXES", "CHECKPOINT_FILE", "CONFIG_FILE", "EMA", "LOG_FILE", "LONG_STFT_SIZES", "MANIFEST_FILE",
    "PRESETS", "PRESET_SHAPES", "SAMPLE_RATE", "STFT_SIZES", "TIMESTEP_SAMPLERS", "VAE_WEIGHTS_FILE",
    "VARIANT_STRIDES", "Corpus", "Crops", "DiTTrainConfig", "ProgressCallback", "TrackBank", "TrainConfig",
    "TrainProgress", "TrainResult", "VAETrainConfig", "audio_files", "calibrate_output_gain", "check_out_dir",
    "compose_config", "encode_track", "holdout_names", "learning_rate", "load_corpus", "load_vae",
    "nearest_upsample_decoder", "preset_config", "read_manifest", "sample_timesteps", "stft_loss", "train_dit",
    "train_vae", "v_loss", "vae_loss", "vae_variant",
]
