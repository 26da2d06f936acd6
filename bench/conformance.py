"""Conformance: musicguide's model family computes what stable-audio-tools computes.

The Hub (and so Stable Audio Open's real weights) is out of reach here, so the proof goes the other
way round: stable-audio-tools 0.0.19 builds each model from its config with random weights, saves
them in the published layout (model.safetensors + model_config.json), and musicguide loads that
folder with its own strict loader. Both then run the same inputs through the VAE (encode mean, KL,
decode) and the DiT (null text conditioning, text tokens, timing conditioning, several t), and we
check that musicguide's schedule reads the same x̂0 off the output as the reference's sampler does.
For rectified-flow models two sampler rows follow: the time grid of `sample_rf` (8 steps, t_max 1
and 0.7) against `sampling_times`, and a whole unguided 8-step ping-pong run from the same start
noise and the same per-step noise (`sample_rf(..., sampler_type="pingpong")` on a seeded global
RNG against `guided_pingpong` on a Generator with that seed).

Cases: "sao-1.0" (the published SAO 1.0 config: full VAE, full-width DiT at depth 2), "sao-small-rf"
(shaped like Stable Audio Open Small: width 1024, rf_denoiser, seconds_total only, qk LayerNorm,
11.9 s windows, depth 2, a slimmer VAE with a latent scale and tanh output), and "options" (a tiny
model that turns on the remaining supported settings: patching, l2 qk-norm, ELU VAE, ...).

Text prompts ("text-cfg", a separate run: `run_text_conformance`): a tiny random T5 and a tiny
Unigram tokenizer are built offline in the reference environment; stable-audio-tools' own
T5Conditioner (given that folder instead of "t5-base") and musicguide's `TextEncoder` encode the
same prompts (one plain, the empty one, one longer than max_length), also through a proj_out; then
a tiny SAO-shaped DiT with that conditioner runs under CFG (null unconditional half, a negative
prompt, scale 1), and x̂0 is read off the CFG output. The reference environment needs
`transformers` for this; the run installs the version musicguide uses into it when it is missing.

    # reference environment (about a minute): ../shared/tools/reference-env.sh .refenv
    MUSICGUIDE_REFERENCE_PYTHON=.refenv/bin/python .venv/bin/python bench/conformance.py
    # tests/data/sao_reference_keys.json, the reference's state-dict keys for the always-run test:
    .venv/bin/python bench/conformance.py keys --reference-python .refenv/bin/python

The reference half of this file runs *inside* the reference environment (same file, `reference`
subcommand, with the shims of ../shared/tools/reference-shims on PYTHONPATH) and imports nothing
from musicguide; the comparison half runs here. They exchange safetensors files in a temp dir.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
KEYS_FILE = REPO / "tests" / "data" / "sao_reference_keys.json"
DEFAULT_SHIMS = SHARED / "tools" / "reference-shims"
DEFAULT_SAO_CONFIG = SHARED / "docs" / "models" / "sao-1.0.model_config.json"
TOLERANCE = 1e-4  # max relative error (max |ours - reference| / max |reference|), fp32
SEED = 20240716
# Rectified-flow models only: the sampler's time grid (steps, t_max), and one whole ping-pong run
# on the 8-step grid Stable Audio Open Small is sampled with, its per-step noise from this seed.
RF_STEPS = 8
RF_GRIDS = {"rf_grid_8": 1.0, "rf_grid_8_tmax_0.7": 0.7}
PINGPONG = "pingpong_8"
PINGPONG_SEED = 1234


# ----------------------------------------------------------------------------------------------
# Configs (plain dicts in the published model_config.json layout)


def sao_config() -> dict:
    """The published SAO 1.0 config, as recorded next to the reference's key list."""
    return json.loads(KEYS_FILE.read_text())["config"]


def sao_small_rf_config() -> dict:
    """Shaped like Stable Audio Open Small (whose exact config is not available offline)."""
    return {
        "model_type": "diffusion_cond", "sample_size": 524288, "sample_rate": 44100, "audio_channels": 2,
        "model": {
            "pretransform": {"type": "autoencoder", "scale": 0.5, "config": {
                "encoder": {"type": "oobleck", "requires_grad": False, "config": {
                    "in_channels": 2, "channels": 16, "c_mults": [1, 2, 4, 8, 16], "strides": [2, 4, 4, 8, 8],
                    "latent_dim": 128, "use_snake": True}},
                "decoder": {"type": "oobleck", "config": {
                    "out_channels": 2, "channels": 16, "c_mults": [1, 2, 4, 8, 16], "strides": [2, 4, 4, 8, 8],
                    "latent_dim": 64, "use_snake": True, "final_tanh": True}},
                "bottleneck": {"type": "vae"}, "latent_dim": 64, "downsampling_ratio": 2048, "io_channels": 2}},
            "conditioning": {"cond_dim": 768, "configs": [
                {"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base", "max_length": 64}},
                {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 256}}]},
            "diffusion": {
                "type": "dit", "diffusion_objective": "rf_denoiser",
                "cross_attention_cond_ids": ["prompt", "seconds_total"], "global_cond_ids": ["seconds_total"],
                "config": {"io_channels": 64, "embed_dim": 1024, "depth": 2, "num_heads": 8, "cond_token_dim": 768,
                           "global_cond_dim": 768, "transformer_type": "continuous_transformer",
                           "attn_kwargs": {"qk_norm": "ln"}}},
            "io_channels": 64,
        },
    }


def options_config() -> dict:
    """A tiny model with every other supported option switched away from SAO's values."""
    strides = [2, 4]
    return {
        "model_type": "diffusion_cond", "sample_size": 4096, "sample_rate": 44100, "audio_channels": 2,
        "model": {
            "pretransform": {"type": "autoencoder", "config": {
                "encoder": {"type": "oobleck", "config": {
                    "in_channels": 2, "channels": 8, "c_mults": [1, 2], "strides": strides, "latent_dim": 16}},
                "decoder": {"type": "oobleck", "config": {
                    "out_channels": 2, "channels": 8, "c_mults": [1, 2], "strides": strides, "latent_dim": 8,
                    "use_nearest_upsample": True}},
                "bottleneck": {"type": "vae"}, "latent_dim": 8, "downsampling_ratio": 8, "io_channels": 2}},
            "conditioning": {"cond_dim": 64, "configs": [
                {"id": "seconds_start", "type": "number", "config": {"min_val": 0, "max_val": 100}},
                {"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base", "max_length": 5}}]},
            "diffusion": {
                "type": "dit", "diffusion_objective": "v",
                "cross_attention_cond_ids": ["seconds_start", "prompt"], "global_cond_ids": ["seconds_start"],
                "config": {"io_channels": 8, "embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": 2,
                           "cond_token_dim": 64, "global_cond_dim": 64, "project_global_cond": False,
                           "transformer_type": "continuous_transformer", "attn_kwargs": {"qk_norm": "l2"},
                           "ff_kwargs": {"mult": 3, "no_bias": True}, "norm_kwargs": {"eps": 1e-3}}},
            "io_channels": 8,
        },
    }


CASES = {"sao-1.0": sao_config, "sao-small-rf": sao_small_rf_config, "options": options_config}

# Text prompts under classifier-free guidance: its own case, run by run_text_conformance.
TEXT_CASE = "text-cfg"
TEXT_MAX_LENGTH = 12
TEXT_WIDTH = 64  # the tiny T5's d_model, equal to the tiny model's cond_dim (SAO: 768 and 768)
TEXT_PROJ_WIDTH = 48  # a second conditioner with a proj_out (project_out: true) to this width
TEXT_PROMPTS = ["solo piano", "",
                "orchestral strings swelling into a brass fanfare with punchy drums and a deep bass line"]
TEXT_NEGATIVE = "lo-fi hip hop beat with vinyl crackle"
TEXT_CFG_SCALE = 6.0  # stable-audio-tools' generate_diffusion_cond default
TEXT_X0_TIME = 0.6
_TOKENIZER_SENTENCES = [
    "warm analog synth pad with slow attack", "punchy drums and a deep bass line at 120 bpm",
    "solo piano, soft and melancholic", "distorted electric guitar riff", "ambient field recording of rain",
    "orchestral strings swelling into a brass fanfare", "lo-fi hip hop beat with vinyl crackle",
]


def text_cfg_config() -> dict:
    """A tiny model shaped like SAO 1.0 (T5 prompt + timing as cross-attention tokens, timing as
    global conditioning, v objective, cond tokens not projected), its T5 as wide as cond_dim."""
    strides = [2, 4]
    return {
        "model_type": "diffusion_cond", "sample_size": 4096, "sample_rate": 44100, "audio_channels": 2,
        "model": {
            "pretransform": {"type": "autoencoder", "config": {
                "encoder": {"type": "oobleck", "config": {
                    "in_channels": 2, "channels": 8, "c_mults": [1, 2], "strides": strides, "latent_dim": 16,
                    "use_snake": True}},
                "decoder": {"type": "oobleck", "config": {
                    "out_channels": 2, "channels": 8, "c_mults": [1, 2], "strides": strides, "latent_dim": 8,
                    "use_snake": True, "final_tanh": False}},
                "bottleneck": {"type": "vae"}, "latent_dim": 8, "downsampling_ratio": 8, "io_channels": 2}},
            "conditioning": {"cond_dim": TEXT_WIDTH, "configs": [
                {"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base", "max_length": TEXT_MAX_LENGTH}},
                {"id": "seconds_start", "type": "number", "config": {"min_val": 0, "max_val": 512}},
                {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 512}}]},
            "diffusion": {
                "type": "dit", "diffusion_objective": "v",
                "cross_attention_cond_ids": ["prompt", "seconds_start", "seconds_total"],
                "global_cond_ids": ["seconds_start", "seconds_total"],
                "config": {"io_channels": 8, "embed_dim": 128, "depth": 2, "num_heads": 4,
                           "cond_token_dim": TEXT_WIDTH, "project_cond_tokens": False,
                           "global_cond_dim": 2 * TEXT_WIDTH, "transformer_type": "continuous_transformer"}},
            "io_channels": 8,
        },
    }


def without_text(config: dict) -> dict:
    """The config stable-audio-tools can build offline: T5 conditioners dropped (their weights are
    not in the checkpoint either), and their tokens fed to the DiT directly."""
    config = copy.deepcopy(config)
    cond = config["model"]["conditioning"]
    texts = {c["id"] for c in cond["configs"] if c["type"] == "t5"}
    cond["configs"] = [c for c in cond["configs"] if c["id"] not in texts]
    diffusion = config["model"]["diffusion"]
    diffusion["cross_attention_cond_ids"] = [i for i in diffusion["cross_attention_cond_ids"] if i not in texts]
    return config


def with_depth(config: dict, depth: int) -> dict:
    config = copy.deepcopy(config)
    config["model"]["diffusion"]["config"]["depth"] = depth
    return config


# ----------------------------------------------------------------------------------------------
# Reference half: runs in the reference environment (stable-audio-tools), never imports musicguide.


def _random_weights(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Fill every tensor of a model built on the meta device with random values of a sensible scale.

    Faster than the reference's own initialisation of 250M parameters, and better for the proof:
    the reference zero-initialises output projections and Snake parameters, and compared as they
    are, whole branches would contribute nothing and the check would prove nothing about them."""
    state = model.state_dict()
    unsaved = {n for n, _ in model.named_buffers()} - set(state)
    assert not unsaved, f"non-persistent buffers would stay uninitialised: {unsaved}"
    with torch.no_grad():
        for name, tensor in state.items():
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("inv_freq"):  # rotary frequencies are a constant, not a weight
                dim = 2 * tensor.numel()
                tensor.copy_(1.0 / 10000 ** (torch.arange(0, dim, 2).float() / dim))
            elif name.endswith(("gamma", "norm.weight")):
                tensor.copy_(1 + 0.1 * noise)
            elif name.endswith((".weights", "timestep_features.weight")):  # Fourier frequencies
                tensor.copy_(noise)
            elif tensor.ndim >= 2:
                # Gain 1/2 per VAE convolution, close to the reference's Kaiming-uniform init: its 15
                # stacked residual units stay well conditioned, so float32 rounding is not amplified
                # into chaos. The pre-norm transformer is well conditioned at gain 1.
                gain = 0.5 if name.startswith("pretransform.") else 1.0
                tensor.copy_(gain * noise / (tensor[0].numel() ** 0.5))
            else:  # biases, LayerNorm shifts, log Snake parameters
                tensor.copy_(0.1 * noise)
        for name, tensor in state.items():  # weight norm: g = |v| e^(0.1 n), after v is drawn
            if name.endswith("weight_g"):
                v = state[name[: -len("g")] + "v"]
                norm = v.flatten(1).norm(dim=1).reshape(tensor.shape)
                tensor.copy_(norm * (0.1 * torch.randn(tensor.shape, generator=generator)).exp())


def _reference_cases(root: Path) -> None:
    """Each case of root/cases.json into root/<case>/: one process, so the slow import happens once."""
    for name, config in json.loads((root / "cases.json").read_text()).items():
        _reference_case(name, config, root / name)


def _reference_rf(model_fn, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference's rf sampling path, `sample_rf(..., sampler_type="pingpong")`: its time grids
    (taken where sample_rf hands them to `sample_flow_pingpong`, so they are its own, not a copy of
    its formula) and a whole ping-pong run from x. That run draws its per-step noise with
    randn_like from the global RNG, seeded here; ours draws the same numbers from a Generator."""
    from unittest import mock

    from stable_audio_tools.inference import sampling

    grids: list[torch.Tensor] = []
    pingpong = sampling.sample_flow_pingpong

    def recording(fn, x, sigmas=None, **kwargs):
        grids.append(sigmas.clone())
        return pingpong(fn, x, sigmas=sigmas, **kwargs)

    outputs = {}
    with mock.patch.object(sampling, "sample_flow_pingpong", recording):
        for name, t_max in RF_GRIDS.items():  # the grid alone: a zero velocity on a scrap of x
            sampling.sample_rf(lambda x, t: torch.zeros_like(x), x[:1, :1], steps=RF_STEPS,
                               sampler_type="pingpong", sigma_max=t_max)
            outputs[name] = grids[-1]
        torch.manual_seed(PINGPONG_SEED)
        outputs[PINGPONG] = sampling.sample_rf(model_fn, x, steps=RF_STEPS, sampler_type="pingpong", sigma_max=1.0)
    assert torch.equal(grids[-1], outputs["rf_grid_8"]), "the run used another grid than the one compared"
    return outputs


def _reference_case(name: str, config: dict, out: Path) -> None:
    from stable_audio_tools.inference.sampling import sample, sample_flow_pingpong
    from stable_audio_tools.models.factory import create_model_from_config

    with torch.device("meta"):
        model = create_model_from_config(without_text(config))
    model = model.to_empty(device="cpu").eval()
    generator = torch.Generator().manual_seed(SEED)
    _random_weights(model, generator)
    model.cross_attn_cond_ids = config["model"]["diffusion"]["cross_attention_cond_ids"]

    folder = out / "model"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "model_config.json").write_text(json.dumps(config, indent=2))

    ratio = model.pretransform.downsampling_ratio
    latent_dim = model.pretransform.encoded_channels
    conditioning = config["model"]["conditioning"]
    texts = [c for c in conditioning["configs"] if c["type"] == "t5"]
    frames = 8 * config["model"]["diffusion"]["config"].get("patch_size", 1)
    samples = torch.arange(4 * ratio) / config["sample_rate"]
    inputs = {
        "audio": (0.4 * torch.sin(2 * torch.pi * 220 * samples)
                  + 0.1 * torch.randn(2, samples.numel(), generator=generator))[None],
        "latents": torch.randn(1, latent_dim, 4, generator=generator),
        "x": torch.randn(3, latent_dim, 8 * frames, generator=generator),
        "t": torch.tensor([0.1, 0.5, 0.9]),
        "seconds_start": torch.tensor([0.0, 12.5, 30.0]),
        "seconds_total": torch.tensor([47.5, 20.0, 95.0]),
        "text_tokens": torch.randn(3, texts[0]["config"]["max_length"], conditioning["cond_dim"], generator=generator),
        "x0_times": torch.tensor([0.3, 0.8]),
    }

    metadata = [{"seconds_start": float(s), "seconds_total": float(t)}
                for s, t in zip(inputs["seconds_start"], inputs["seconds_total"], strict=True)]
    cond = model.conditioner(metadata, "cpu")
    cond[texts[0]["id"]] = (inputs["text_tokens"], torch.ones(inputs["text_tokens"].shape[:2]))
    cond_inputs = model.get_conditioning_inputs(cond)

    def unconditional(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # cfg_scale 0 returns the reference's own unconditional branch: uncond + 0 * (cond - uncond).
        return model.model(x, t, **cond_inputs, cfg_scale=0.0)

    outputs = {}
    with torch.no_grad():
        _, info = model.pretransform.model.encode(inputs["audio"], return_info=True)
        outputs["vae_encode_mean"] = info["pre_bottleneck_latents"].chunk(2, dim=1)[0] / model.pretransform.scale
        outputs["vae_kl"] = info["kl"].reshape(1)
        outputs["vae_decode"] = model.pretransform.decode(inputs["latents"])
        outputs["dit_null_text"] = unconditional(inputs["x"], inputs["t"])
        later = [{"seconds_start": m["seconds_start"] + 60, "seconds_total": m["seconds_total"] + s}
                 for m, s in zip(metadata, (60, 60, 600), strict=True)]  # the last one beyond max_val: clamped
        text_id = texts[0]["id"]
        later_inputs = model.get_conditioning_inputs({**model.conditioner(later, "cpu"), text_id: cond[text_id]})
        outputs["dit_null_text_later"] = model.model(inputs["x"], inputs["t"], **later_inputs, cfg_scale=0.0)
        outputs["dit_text_tokens"] = model.model(inputs["x"], inputs["t"], **cond_inputs, cfg_scale=1.0)
        steps: list[dict] = []  # the rf sampler reports its x̂0 ("denoised") through its callback
        for i, t in enumerate(inputs["x0_times"].tolist()):
            if model.diffusion_objective == "v":
                outputs[f"x0_hat_{i}"] = sample(unconditional, inputs["x"], 1, 0, sigma_max=t)
            else:
                sample_flow_pingpong(unconditional, inputs["x"], sigmas=torch.tensor([t, 0.0]), callback=steps.append)
                outputs[f"x0_hat_{i}"] = steps[-1]["denoised"]
        if model.diffusion_objective != "v":
            outputs.update(_reference_rf(unconditional, inputs["x"]))
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(out / "inputs.safetensors"))
    save_file({k: v.contiguous() for k, v in outputs.items()}, str(out / "outputs.safetensors"))
    (out / "objective").write_text(model.diffusion_objective)
    print(f"reference: {name} done", flush=True)


def _build_tiny_t5(folder: Path) -> None:
    """A T5 encoder with random weights and a Unigram tokenizer trained on a few sentences, laid out
    like google-t5/t5-base (config.json, model.safetensors, tokenizer.json), built with no network."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import Unigram
    from transformers import T5Config, T5EncoderModel

    folder.mkdir(parents=True)
    tokenizer = Tokenizer(Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")])
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tokenizer.train_from_iterator(_TOKENIZER_SENTENCES, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)])
    tokenizer.save(str(folder / "tokenizer.json"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        config = T5Config(vocab_size=tokenizer.get_vocab_size(), d_model=TEXT_WIDTH, d_kv=16, d_ff=128, num_layers=2,
                          num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                          feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
        T5EncoderModel(config).save_pretrained(str(folder))


def _reference_text(root: Path) -> None:
    """The text-cfg case: T5Conditioner tokens, and the DiT under CFG, into root/."""
    from unittest import mock

    from stable_audio_tools.inference.sampling import sample
    from stable_audio_tools.models.conditioners import T5Conditioner
    from stable_audio_tools.models.factory import create_model_from_config

    t5_folder = root / "t5"
    _build_tiny_t5(t5_folder)
    name = str(t5_folder)  # the reference accepts only Hub names it knows: admit this folder too
    with mock.patch.object(T5Conditioner, "T5_MODELS", [*T5Conditioner.T5_MODELS, name]), \
            mock.patch.dict(T5Conditioner.T5_MODEL_DIMS, {name: TEXT_WIDTH}):
        t5 = T5Conditioner(output_dim=TEXT_WIDTH, t5_model_name=name, max_length=TEXT_MAX_LENGTH)
        projected = T5Conditioner(output_dim=TEXT_PROJ_WIDTH, t5_model_name=name, max_length=TEXT_MAX_LENGTH,
                                  project_out=True)
    assert isinstance(t5.proj_out, torch.nn.Identity)
    generator = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for p in projected.proj_out.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) / p.shape[-1] ** 0.5)
    proj_folder = root / "proj"
    proj_folder.mkdir()
    save_file({f"conditioner.conditioners.prompt.proj_out.{k}": v.contiguous()
               for k, v in projected.proj_out.state_dict().items()}, str(proj_folder / "model.safetensors"))

    config = text_cfg_config()
    with torch.device("meta"):
        model = create_model_from_config(without_text(config))
    model = model.to_empty(device="cpu").eval()
    _random_weights(model, generator)
    model.cross_attn_cond_ids = config["model"]["diffusion"]["cross_attention_cond_ids"]
    model.conditioner.conditioners["prompt"] = t5  # its proj_out is an Identity: no weights
    folder = root / "model"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "model_config.json").write_text(json.dumps(config, indent=2))

    latent_dim = model.pretransform.encoded_channels
    inputs = {"x": torch.randn(3, latent_dim, 16, generator=generator), "t": torch.tensor([0.1, 0.5, 0.9]),
              "seconds_start": torch.tensor([0.0, 12.5, 30.0]), "seconds_total": torch.tensor([47.5, 20.0, 95.0])}
    metadata = [{"prompt": p, "seconds_start": float(s), "seconds_total": float(t)}
                for p, s, t in zip(TEXT_PROMPTS, inputs["seconds_start"], inputs["seconds_total"], strict=True)]
    negative = [{**m, "prompt": TEXT_NEGATIVE} for m in metadata]
    outputs = {}
    with torch.no_grad():
        outputs["text_tokens"], mask = t5(TEXT_PROMPTS, "cpu")
        outputs["text_mask"] = mask.float()
        outputs["text_tokens_proj_out"] = projected(TEXT_PROMPTS, "cpu")[0]
        cond_inputs = model.get_conditioning_inputs(model.conditioner(metadata, "cpu"))
        negative_inputs = model.get_conditioning_inputs(model.conditioner(negative, "cpu"), negative=True)

        def guided(x: torch.Tensor, t: torch.Tensor, **extra) -> torch.Tensor:
            return model.model(x, t, **cond_inputs, **extra)

        x, t = inputs["x"], inputs["t"]
        outputs["dit_cfg_null"] = guided(x, t, cfg_scale=TEXT_CFG_SCALE)
        outputs["dit_cfg_negative"] = guided(x, t, **negative_inputs, cfg_scale=TEXT_CFG_SCALE)
        outputs["dit_cfg_scale_1"] = guided(x, t, cfg_scale=1.0)
        outputs["dit_cfg_uncond"] = guided(x, t, cfg_scale=0.0)  # for the sensitivity check only
        outputs["x0_hat_cfg"] = sample(lambda x, t: guided(x, t, cfg_scale=TEXT_CFG_SCALE), x, 1, 0,
                                       sigma_max=TEXT_X0_TIME)
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(root / "inputs.safetensors"))
    save_file({k: v.contiguous() for k, v in outputs.items()}, str(root / "outputs.safetensors"))
    print("reference: text-cfg done", flush=True)


def _reference_keys(config_path: Path, out: Path) -> None:
    from importlib.metadata import version

    from stable_audio_tools.models.factory import create_model_from_config

    config = json.loads(config_path.read_text())
    with torch.device("meta"):
        model = create_model_from_config(without_text(config))
    header = json.dumps({
        "generated_by": "python bench/conformance.py keys --reference-python REFENV/bin/python",
        "reference": f"stable-audio-tools {version('stable-audio-tools')}, torch {torch.__version__}",
        "config": config,
    }, indent=1)
    keys = ",\n".join(f"  {json.dumps(k)}: {json.dumps(list(v.shape))}" for k, v in model.state_dict().items())
    out.write_text(header[:-2] + ',\n "keys": {\n' + keys + "\n }\n}\n")


# ----------------------------------------------------------------------------------------------
# Our half: runs in musicguide's environment.


def _reference_env(shims: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(shims)
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    return env


def _run_reference(reference_python: str, shims: Path, *args: str) -> None:
    cmd = [reference_python, str(Path(__file__).resolve()), "reference", *args]
    result = subprocess.run(cmd, env=_reference_env(shims), capture_output=True, text=True)
    if result.returncode:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"the reference run failed (exit {result.returncode}): {' '.join(cmd)}")


def compare_case(case_dir: Path) -> list[tuple[str, float, float]]:
    """(component, max abs error, relative error) rows for one case computed by the reference."""
    from musicguide.models import load_model_folder
    from musicguide.sampling import guided_pingpong
    from musicguide.schedules import sampling_times

    model = load_model_folder(case_dir / "model")  # strict: any missing/unexpected key fails here
    inputs = load_file(str(case_dir / "inputs.safetensors"))
    reference = load_file(str(case_dir / "outputs.safetensors"))
    assert model.objective == (case_dir / "objective").read_text()
    timing = {"seconds_start": inputs["seconds_start"], "seconds_total": inputs["seconds_total"]}
    ours = {}
    with torch.no_grad():
        mean, kl = model.encode(inputs["audio"], return_kl=True)
        ours["vae_encode_mean"], ours["vae_kl"] = mean, kl.reshape(1)
        ours["vae_decode"] = model.decode(inputs["latents"])
        ours["dit_null_text"] = model.denoise(inputs["x"], inputs["t"], **timing)
        later = {"seconds_start": timing["seconds_start"] + 60,
                 "seconds_total": timing["seconds_total"] + torch.tensor([60.0, 60.0, 600.0])}
        ours["dit_null_text_later"] = model.denoise(inputs["x"], inputs["t"], **later)
        ours["dit_text_tokens"] = model.denoise(inputs["x"], inputs["t"], **timing, text_tokens=inputs["text_tokens"])
        for i, t in enumerate(inputs["x0_times"].tolist()):
            out = model.denoise(inputs["x"], t, **timing)
            ours[f"x0_hat_{i}"] = model.schedule.x0_hat(inputs["x"], out, t)
        if PINGPONG in reference:  # rf models: the grid our editor samples on, and a whole unguided run
            for name, t_max in RF_GRIDS.items():
                ours[name] = sampling_times(model.schedule, RF_STEPS, t_max)
            # the reference also draws (and multiplies by 0) noise at the last step; ours stops one
            # draw earlier, so the first RF_STEPS - 1 draws, the ones that count, line up
            ours[PINGPONG] = guided_pingpong(lambda x, t: model.denoise(x, t, **timing), model.schedule, inputs["x"],
                                             sampling_times(model.schedule, RF_STEPS),
                                             generator=torch.Generator().manual_seed(PINGPONG_SEED))[0]
    _check_sensitivity(reference)
    rows = []
    for name, ref in reference.items():
        err = (ours[name].double() - ref.double()).abs().max().item()
        rows.append((name, err, err / max(ref.double().abs().max().item(), 1e-30)))
    return rows


def _relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _check_sensitivity(reference: dict[str, torch.Tensor]) -> None:
    """A match proves something only if the input matters: text tokens and timing must move the
    reference's output well above the tolerance, or the comparison of that path would be vacuous."""
    for what, other in (("text tokens", "dit_text_tokens"), ("timing", "dit_null_text_later")):
        effect = _relative_difference(reference[other], reference["dit_null_text"])
        if effect < 100 * TOLERANCE:
            raise SystemExit(f"{what} change the reference DiT output by only {effect:.1e}: "
                             "the check would prove nothing")


def run_conformance(reference_python: str, shims: Path = DEFAULT_SHIMS, cases: list[str] | None = None,
                    workdir: Path | None = None) -> list[tuple[str, str, float, float]]:
    """Run the reference for each case, compare, and return (case, component, abs, rel) rows."""
    names = cases or list(CASES)
    configs = {name: CASES[name]() for name in names}
    if "sao-1.0" in configs:  # published width, heads and conditioning; 2 of its 24 layers
        configs["sao-1.0"] = with_depth(configs["sao-1.0"], 2)
    with tempfile.TemporaryDirectory(prefix="musicguide-conformance-") as tmp:
        root = workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        (root / "cases.json").write_text(json.dumps(configs))
        started = time.perf_counter()
        _run_reference(reference_python, shims, "cases", str(root))
        print(f"reference half: {time.perf_counter() - started:.0f} s", flush=True)
        return [(name, *row) for name in names for row in compare_case(root / name)]


class ReferenceSetupError(RuntimeError):
    """The reference environment lacks something the check needs and it could not be installed."""


def ensure_reference_text_deps(reference_python: str, shims: Path = DEFAULT_SHIMS) -> None:
    """`transformers` in the reference environment, at the version musicguide's environment has
    (so that only the wrappers differ); installed with the environment's pip if it is missing."""
    from importlib.metadata import version

    wanted = version("transformers")
    probe = "import transformers, tokenizers; print(transformers.__version__)"
    found = subprocess.run([reference_python, "-c", probe], env=_reference_env(shims), capture_output=True, text=True)
    if found.returncode == 0 and found.stdout.strip() == wanted:
        return
    install = subprocess.run([reference_python, "-m", "pip", "install", "-q", f"transformers=={wanted}"],
                             capture_output=True, text=True)
    if install.returncode:
        tail = " ".join((install.stdout + install.stderr).split()[-30:])
        raise ReferenceSetupError(f"could not install transformers=={wanted} into the reference environment: {tail}")


def compare_text(root: Path) -> list[tuple[str, float, float]]:
    """(component, max abs error, relative error) rows of the text-cfg case computed by the reference."""
    from musicguide.models import load_model_folder
    from musicguide.text import TextEncoder, cfg_denoiser, load_proj_out

    inputs = load_file(str(root / "inputs.safetensors"))
    reference = load_file(str(root / "outputs.safetensors"))
    encoder = TextEncoder.from_folder(root / "t5", max_length=TEXT_MAX_LENGTH, output_dim=TEXT_WIDTH)
    projected = TextEncoder.from_folder(root / "t5", max_length=TEXT_MAX_LENGTH, output_dim=TEXT_PROJ_WIDTH,
                                        proj_out=load_proj_out(root / "proj", "prompt"))
    model = load_model_folder(root / "model")
    timing = {"seconds_start": inputs["seconds_start"], "seconds_total": inputs["seconds_total"]}
    x, t = inputs["x"], inputs["t"]
    ours = {}
    with torch.no_grad():
        tokens, mask = encoder.encode(TEXT_PROMPTS)
        ours["text_tokens"], ours["text_mask"] = tokens, mask.float()
        ours["text_tokens_proj_out"] = projected.encode(TEXT_PROMPTS)[0]
        negative = encoder(TEXT_NEGATIVE)
        guided = cfg_denoiser(model, tokens, None, TEXT_CFG_SCALE, **timing)
        ours["dit_cfg_null"] = guided(x, t)
        ours["dit_cfg_negative"] = cfg_denoiser(model, tokens, negative, TEXT_CFG_SCALE, **timing)(x, t)
        ours["dit_cfg_scale_1"] = cfg_denoiser(model, tokens, None, 1.0, **timing)(x, t)
        ours["x0_hat_cfg"] = model.schedule.x0_hat(x, guided(x, TEXT_X0_TIME), TEXT_X0_TIME)
    for what, a, b in (("the prompt", "dit_cfg_null", "dit_cfg_uncond"),
                       ("the negative prompt", "dit_cfg_negative", "dit_cfg_null"),
                       ("the CFG scale", "dit_cfg_scale_1", "dit_cfg_null")):
        effect = _relative_difference(reference[a], reference[b])
        if effect < 100 * TOLERANCE:
            raise SystemExit(f"{what} changes the reference DiT output by only {effect:.1e}: "
                             "the check would prove nothing")
    if not (reference["text_tokens"][1, 1:] == 0).all() or reference["text_mask"][1].sum() != 1:
        raise SystemExit("the empty prompt should be one </s> token and zeros: the check would not cover padding")
    if not 1 < reference["text_mask"][0].sum() < TEXT_MAX_LENGTH:
        raise SystemExit("the first prompt should be padded: the check would not cover the mask")
    if reference["text_mask"][2].sum() != TEXT_MAX_LENGTH:
        raise SystemExit("the long prompt should fill max_length: the check would not cover truncation")
    rows = []
    for name, ref in reference.items():
        if name in ours:
            err = (ours[name].double() - ref.double()).abs().max().item()
            rows.append((name, err, err / max(ref.double().abs().max().item(), 1e-30)))
    return rows


def run_text_conformance(reference_python: str, shims: Path = DEFAULT_SHIMS,
                         workdir: Path | None = None) -> list[tuple[str, str, float, float]]:
    """The text-cfg case: (case, component, abs, rel) rows. Needs transformers here and installs it there."""
    ensure_reference_text_deps(reference_python, shims)
    with tempfile.TemporaryDirectory(prefix="musicguide-conformance-text-") as tmp:
        root = workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        _run_reference(reference_python, shims, "text", str(root))
        print(f"reference half (text): {time.perf_counter() - started:.0f} s", flush=True)
        return [(TEXT_CASE, *row) for row in compare_text(root)]


def format_table(rows: list[tuple[str, str, float, float]]) -> str:
    lines = ["| case | component | max abs error | max rel error | pass |", "|---|---|---|---|---|"]
    lines += [f"| {case} | {name} | {err:.2e} | {rel:.2e} | {'yes' if rel <= TOLERANCE else 'NO'} |"
              for case, name, err, rel in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    ref = sub.add_parser("reference", help="(internal) the reference half; run by the reference python")
    ref.add_argument("what", choices=["cases", "keys", "text"])
    ref.add_argument("args", nargs="+")
    keys = sub.add_parser("keys", help=f"regenerate {KEYS_FILE.relative_to(REPO)} from the reference")
    for p in (parser, keys):
        p.add_argument("--reference-python", default=os.environ.get("MUSICGUIDE_REFERENCE_PYTHON"),
                       help="python of the reference environment (default: $MUSICGUIDE_REFERENCE_PYTHON)")
        p.add_argument("--shims", type=Path, default=Path(os.environ.get("MUSICGUIDE_REFERENCE_SHIMS", DEFAULT_SHIMS)))
    keys.add_argument("--config", type=Path, default=DEFAULT_SAO_CONFIG)
    parser.add_argument("--case", action="append", choices=[*CASES, TEXT_CASE],
                        help="run only this case (repeatable)")
    args = parser.parse_args(argv)

    if args.command == "reference":
        if args.what == "cases":
            _reference_cases(Path(args.args[0]))
        elif args.what == "text":
            _reference_text(Path(args.args[0]))
        else:
            _reference_keys(Path(args.args[0]), Path(args.args[1]))
        return 0
    if not args.reference_python:
        parser.error("no reference environment: pass --reference-python or set MUSICGUIDE_REFERENCE_PYTHON")
    if args.command == "keys":
        _run_reference(args.reference_python, args.shims, "keys", str(args.config.resolve()), str(KEYS_FILE))
        print(f"wrote {KEYS_FILE}")
        return 0

    if str(REPO) not in sys.path:  # run as a script from a checkout, musicguide not installed
        sys.path.insert(0, str(REPO))
    start = time.perf_counter()
    model_cases = [c for c in args.case or CASES if c != TEXT_CASE]
    rows = run_conformance(args.reference_python, args.shims, model_cases) if model_cases else []
    if not args.case or TEXT_CASE in args.case:
        try:
            rows += run_text_conformance(args.reference_python, args.shims)
        except ReferenceSetupError as error:
            raise SystemExit(str(error)) from None
    print(format_table(rows))
    worst = max(rel for *_, rel in rows)
    print(f"\nworst relative error {worst:.2e} (tolerance {TOLERANCE:.0e}), {time.perf_counter() - start:.0f} s")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
