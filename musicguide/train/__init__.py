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

from musicguide import lazy_exports

# Each public name and the module that defines it, imported on first use: importing one module of
# the package (Python imports the package first) then imports that module alone.
_HOME = {
    "audio_files": "musicguide.train.data",
    "AUDIO_SUFFIXES": "musicguide.train.data",
    "calibrate_output_gain": "musicguide.train.vae",
    "check_out_dir": "musicguide.train.checkpoint",
    "CHECKPOINT_FILE": "musicguide.train.checkpoint",
    "compose_config": "musicguide.train.dit",
    "CONFIG_FILE": "musicguide.models.folder",
    "Corpus": "musicguide.train.data",
    "Crops": "musicguide.train.data",
    "DiTTrainConfig": "musicguide.train.settings",
    "EMA": "musicguide.train.run",
    "encode_track": "musicguide.train.dit",
    "holdout_names": "musicguide.train.data",
    "learning_rate": "musicguide.train.loop",
    "load_corpus": "musicguide.train.data",
    "load_vae": "musicguide.models.folder",
    "LOG_FILE": "musicguide.train.settings",
    "LONG_STFT_SIZES": "musicguide.train.settings",
    "MANIFEST_FILE": "musicguide.train.data",
    "nearest_upsample_decoder": "musicguide.train.vae",
    "preset_config": "musicguide.models.presets",
    "PRESET_SHAPES": "musicguide.models.presets",
    "PRESETS": "musicguide.models.presets",
    "ProgressCallback": "musicguide.train.settings",
    "read_manifest": "musicguide.train.data",
    "SAMPLE_RATE": "musicguide.models.presets",
    "sample_timesteps": "musicguide.train.losses",
    "stft_loss": "musicguide.train.losses",
    "STFT_SIZES": "musicguide.train.settings",
    "TIMESTEP_SAMPLERS": "musicguide.train.settings",
    "TrackBank": "musicguide.train.data",
    "train_dit": "musicguide.train.dit",
    "train_vae": "musicguide.train.vae",
    "TrainConfig": "musicguide.train.settings",
    "TrainProgress": "musicguide.train.settings",
    "TrainResult": "musicguide.train.settings",
    "v_loss": "musicguide.train.losses",
    "vae_loss": "musicguide.train.losses",
    "vae_variant": "musicguide.models.presets",
    "VAE_WEIGHTS_FILE": "musicguide.model_files",
    "VAETrainConfig": "musicguide.train.settings",
    "VARIANT_STRIDES": "musicguide.models.presets",
}
__all__ = sorted(_HOME)
__getattr__ = lazy_exports(__name__, _HOME)
