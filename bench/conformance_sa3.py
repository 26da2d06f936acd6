"""musicguide's Stable Audio 3 models against the reference package (stable-audio-3 636f906).

    bash ../shared/tools/reference-sa3-env.sh /tmp/musicguide-sa3env
    MUSICGUIDE_SA3_REFERENCE_PYTHON=/tmp/musicguide-sa3env/bin/python python bench/conformance_sa3.py

For each case (a small SAME or DiT with the published structure and random weights) the reference side,
run in the reference's own environment, builds the model from the config dict with
`stable_audio_3.factory` (the DiT as the factory does, a DiTWrapper from `model.diffusion`), draws
random weights and inputs from a fixed seed, runs them (SAME: encode and decode; DiT: one forward
with each kind of conditioning its config takes) and saves weights, inputs and outputs. This side
loads those weights into `musicguide.models.same.SAME` or `musicguide.models.sa3_dit.SA3DiT`
(strictly: every name and shape must match) and compares. Prints one row per case and output: the
largest error relative to the reference output's largest value.

The text rows need `transformers` on both sides (.ci/run installs it in the reference's
environment): a tiny random T5Gemma encoder (768 wide, as the reference requires of
google/t5gemma-b-b-ul2, one layer) with a word-level tokenizer is written to a folder, and the
reference's own T5GemmaConditioner loads it (`model_path`). Rows: the prompt tokens, and the
network with the prompt at CFG scale 1, at scale 3 with its adaptive projection, and at scale 3
against a negative prompt, each with the timing and the inpainting condition.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE_PATH = [SHARED / "reference" / "stable-audio-3", SHARED / "tools" / "reference-shims"]
TOLERANCE = 1e-5  # relative, float32


def autoencoder_config(*, patch_size: int, channels: int, c_mults: list, strides: list, depths: list, latent_dim: int,
                       **block) -> dict:
    """A SAME config dict in the published layout (the `model` of SAME-S/L's model_config.json)."""
    shared = {"channels": channels, "c_mults": c_mults, "strides": strides, "transformer_depths": depths,
              "latent_dim": latent_dim, **{k: v for k, v in block.items() if k != "sinusoidal_blocks"}}
    io = 2
    return {
        "encoder": {"type": "same", "config": {"in_channels": io * patch_size, **shared}},
        "decoder": {"type": "same", "config": {"out_channels": io * patch_size, **shared,
                                               "sinusoidal_blocks": block.get("sinusoidal_blocks", [0] * len(c_mults))}},
        "pretransform": {"type": "patched", "config": {"channels": io, "patch_size": patch_size}},
        "bottleneck": {"type": "soft_norm", "config": {"dim": latent_dim, "auto_scale": True}},
        "latent_dim": latent_dim,
        "downsampling_ratio": patch_size * __import__("math").prod(strides),
        "io_channels": io,
    }


# SAME-S's structure (chunks with the midpoint shift, DyT, differential attention) and SAME-L's
# (a sliding window), each with the options the other does not use, at widths a CPU runs in seconds.
CASES = {
    "same-chunks-midpoint": autoencoder_config(
        patch_size=4, channels=16, c_mults=[1, 2], strides=[2, 4], depths=[2, 3], latent_dim=8, chunk_size=8,
        chunk_midpoint_shift=True, dim_heads=8, differential=True, feat_scale=True, ff_mult=3, dyt=True,
        sinusoidal_blocks=[0, 2]),
    "same-sliding-window": autoencoder_config(
        patch_size=4, channels=16, c_mults=[1, 2], strides=[2, 2], depths=[2, 1], latent_dim=8, chunk_size=8,
        sliding_window=[2, 1], dim_heads=16, differential=False, feat_scale=False, ff_mult=2, dyt=False,
        conv_mapping=True, layer_scale=True, mapping_bias=False),
}
AUDIO_SAMPLES = (1024, 1000)  # a whole number of chunks, and one that the model pads

# The DiT (`model.diffusion` of a config): adaLN with cross-attention, a global condition and the
# inpainting input concatenated; a prepended global token with a patch, a sliding window, DyT and
# grouped-query cross-attention to unprojected tokens; and a bare one. Heads of at least 32
# channels: the reference's DiT rotates max(head / 2, 32) of them.
DIT_CASES = {
    "dit-adaln-cross-concat": {"diffusion_objective": "rf_denoiser", "config": {
        "io_channels": 8, "embed_dim": 128, "depth": 2, "num_heads": 2, "cond_token_dim": 12, "global_cond_dim": 6,
        "input_concat_dim": 9, "global_cond_type": "adaLN", "timestep_features_logsnr": True, "norm_type": "rms_norm",
        "attn_kwargs": {"qk_norm": "rms", "differential": True, "feat_scale": True}, "ff_kwargs": {"mult": 3}}},
    "dit-prepend-patch-window": {"diffusion_objective": "rf_denoiser", "config": {
        "io_channels": 8, "patch_size": 2, "embed_dim": 128, "depth": 2, "num_heads": 4, "cond_token_dim": 64,
        "project_cond_tokens": False, "global_cond_dim": 6, "global_cond_type": "prepend",
        "timestep_features_type": "expo", "norm_type": "dyt", "layer_scale": True, "add_rope": True,
        "sliding_window": [3, 2], "attn_kwargs": {"qk_norm": "dyt", "differential": False},
        "ff_kwargs": {"mult": 2, "no_bias": True}}},
    "dit-bare": {"diffusion_objective": "v", "config": {
        "io_channels": 8, "embed_dim": 64, "depth": 1, "num_heads": 1, "norm_type": "layer_norm",
        "attn_kwargs": {"qk_norm": "l2"}}},
}
DIT_FRAMES = 16
# The sampler's time grid: (steps, t_max, LogSNRShift rate) at GRID_FRAMES latent frames (rate 0 is
# the published default, the grid independent of the length)
GRIDS = ((8, 1.0, 0.0), (8, 0.7, 0.0), (20, 1.0, 1.0))
GRID_FRAMES = 1034


def dit_inputs(config: dict, generator) -> dict:
    import torch

    c = config["config"]
    inputs = {"x": torch.randn(2, c["io_channels"], DIT_FRAMES, generator=generator), "t": torch.tensor([0.3, 0.9])}
    if c.get("cond_token_dim"):
        inputs["cross_attn_cond"] = torch.randn(2, 5, c["cond_token_dim"], generator=generator)
    if c.get("global_cond_dim"):
        inputs["global_cond"] = torch.randn(2, c["global_cond_dim"], generator=generator)
    if c.get("input_concat_dim"):
        inputs["input_concat_cond"] = torch.randn(2, c["input_concat_dim"], DIT_FRAMES, generator=generator)
    return inputs


def reference_side(out: Path, encoder_folder: Path | None = None) -> None:
    """Runs in the reference environment: every case's weights, inputs and outputs into `out`."""
    import torch
    from stable_audio_3.factory import create_autoencoder_from_config

    saved = {}
    for name, config in CASES.items():
        torch.manual_seed(0)
        model = create_autoencoder_from_config(config, 44100).eval()
        with torch.no_grad():
            for key, parameter in model.named_parameters():
                parameter.copy_(torch.randn_like(parameter) * 0.3 + (0.8 if key.endswith(("weight_g", "running_std")) else 0.0))
            for samples in AUDIO_SAMPLES:
                audio = torch.randn(2, 2, samples) * 0.3
                latents = model.encode(audio)
                saved[f"{name}/{samples}"] = {"audio": audio, "latents": latents, "decoded": model.decode(latents)}
        saved[f"{name}/state"] = {k: v.clone() for k, v in model.state_dict().items()}
    from stable_audio_3.models.diffusion import DiTWrapper

    for name, config in DIT_CASES.items():
        torch.manual_seed(0)
        wrapper = DiTWrapper(diffusion_objective=config["diffusion_objective"], **config["config"]).eval()
        with torch.no_grad():
            for key, parameter in wrapper.named_parameters():
                parameter.copy_(torch.randn_like(parameter) * 0.15 + (1.0 if key.endswith(("gamma", "alpha")) else 0.0))
            inputs = dit_inputs(config, torch.Generator().manual_seed(1))
            conditions = {k: v for k, v in inputs.items() if k not in ("x", "t")}
            output = wrapper(inputs["x"], inputs["t"], **conditions)
        saved[f"{name}/io"] = {**inputs, "output": output}
        saved[f"{name}/state"] = {k.removeprefix("model."): v.clone() for k, v in wrapper.state_dict().items()}
    saved.update(whole_model_reference())
    if encoder_folder is not None:
        saved.update(text_reference(encoder_folder))
    torch.save(saved, out)


def whole_model_reference() -> dict:
    """The tiny SA3 model as the reference's factory builds it: a round trip through its
    pretransform, and the network at two times with the timing conditioning, the inpainting
    condition, and the null text conditioning (the cross-attention input all zeros, as the
    unconditional half of the reference's CFG has it)."""
    import torch
    from stable_audio_3.factory import create_diffusion_cond_from_config

    sys.path.insert(0, str(REPO))  # the config only: musicguide.models.sa3 imports torch and nothing of the reference's
    from musicguide.models.sa3 import tiny_sa3_config

    torch.manual_seed(0)
    wrapper = create_diffusion_cond_from_config(tiny_sa3_config()).eval()
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for key, parameter in wrapper.named_parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.15
                            + (1.0 if key.endswith(("gamma", "alpha", "weight_g", "running_std")) else 0.0))
        audio = torch.randn(2, 2, 256 * 40, generator=generator) * 0.3
        latents = wrapper.pretransform.encode(audio)
        decoded = wrapper.pretransform.decode(latents)
        x = torch.randn(2, 8, 40, generator=generator)
        t = torch.tensor([0.25, 0.8])
        mask = torch.zeros(2, 1, 40)
        mask[..., :12] = 1
        masked = torch.randn(2, 8, 40, generator=generator) * mask
        cond = wrapper.conditioner([{"seconds_total": 17.0}, {"seconds_total": 17.0}], "cpu")
        cond["inpaint_mask"], cond["inpaint_masked_input"] = [mask], [masked]
        inputs = wrapper.get_conditioning_inputs(cond)
        inputs["cross_attn_cond"] = torch.zeros_like(inputs["cross_attn_cond"])
        output = wrapper.model(x, t, **inputs)
    from stable_audio_3.inference.distribution_shift import LogSNRShift
    from stable_audio_3.inference.sampling import build_schedule

    grids = {f"{steps}/{t_max}/{rate}": build_schedule(steps, sigma_max=t_max, dist_shift=LogSNRShift(rate=rate, anchor_logsnr=-6.2,
                                                                                                    logsnr_end=2.0),
                                                       fallback_seq_len=GRID_FRAMES)
             for steps, t_max, rate in GRIDS}
    return {"sa3-tiny/grids": grids,
            "sa3-tiny/state": {k: v.clone() for k, v in wrapper.state_dict().items()},
            "sa3-tiny/io": {"audio": audio, "latents": latents, "decoded": decoded, "x": x, "t": t, "mask": mask,
                            "masked": masked, "output": output}}


TEXT_PROMPTS = ["warm analog synth pad with slow attack", "punchy drums and a deep bass line at 120 bpm solo piano"]
TEXT_NEGATIVE = "soft melancholic piano"
TEXT_MAX_LENGTH = 12  # the second prompt is truncated, the others padded
TEXT_CFG_SCALE = 3.0


def build_tiny_t5gemma(folder: Path) -> Path:
    """A random T5Gemma encoder and a word-level tokenizer (<bos> … <eos>) saved as a Hub folder is."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5GemmaConfig, T5GemmaEncoderModel

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for word in " ".join([*TEXT_PROMPTS, TEXT_NEGATIVE]).split():
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>",
                                                             special_tokens=[("<bos>", 2), ("<eos>", 1)])
    module = {"vocab_size": 64, "hidden_size": 768, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "max_position_embeddings": 64,
              "sliding_window": 16, "query_pre_attn_scalar": 32}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = T5GemmaEncoderModel(T5GemmaConfig(encoder=module, decoder=module, vocab_size=64,
                                                    is_encoder_decoder=False))
    encoder.save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                            unk_token="<unk>").save_pretrained(folder)
    return folder


def text_reference(encoder_folder: Path) -> dict:
    """The tiny SA3 model with a T5Gemma prompt conditioner, as the reference's factory builds it."""
    import torch
    from stable_audio_3.factory import create_diffusion_cond_from_config

    from musicguide.models.sa3 import tiny_sa3_config

    prompt = {"model_path": str(encoder_folder), "max_length": TEXT_MAX_LENGTH}
    torch.manual_seed(0)
    wrapper = create_diffusion_cond_from_config(tiny_sa3_config(prompt=prompt)).eval()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for key, parameter in wrapper.named_parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.15
                            + (1.0 if key.endswith(("gamma", "alpha", "weight_g", "running_std")) else 0.0))
        x = torch.randn(2, 8, 40, generator=generator)
        t = torch.tensor([0.3, 0.9])
        mask = torch.zeros(2, 1, 40)
        mask[..., 20:] = 1
        masked = torch.randn(2, 8, 40, generator=generator) * mask
        tokens, token_mask = wrapper.conditioner.conditioners["prompt"](TEXT_PROMPTS, "cpu")

        def inputs(prompts: list[str], negative: bool = False) -> dict:
            cond = wrapper.conditioner([{"prompt": p, "seconds_total": 17.0} for p in prompts], "cpu")
            cond["inpaint_mask"], cond["inpaint_masked_input"] = [mask], [masked]
            return wrapper.get_conditioning_inputs(cond, negative=negative)

        positive = inputs(TEXT_PROMPTS)
        negative = {k: v for k, v in inputs([TEXT_NEGATIVE] * 2, negative=True).items() if k.startswith("negative")}
        outputs = {"tokens": tokens, "token_mask": token_mask.float(),
                   "cfg 1": wrapper.model(x, t, **positive, cfg_scale=1.0),
                   "cfg 3": wrapper.model(x, t, **positive, cfg_scale=TEXT_CFG_SCALE),
                   "cfg 3, negative": wrapper.model(x, t, **positive, **negative, cfg_scale=TEXT_CFG_SCALE),
                   # the null half alone, for the test's check that plain CFG would not pass
                   "uncond": wrapper.model(x, t, **{**positive, "cross_attn_cond": torch.zeros_like(
                       positive["cross_attn_cond"])}, cfg_scale=1.0)}
    return {"sa3-text/state": {k: v.clone() for k, v in wrapper.state_dict().items()},
            "sa3-text/io": {"x": x, "t": t, "mask": mask, "masked": masked, **outputs}}


def text_rows(reference: dict, encoder_folder: Path) -> list[tuple[str, str, float]]:
    import torch
    from torch import nn

    from musicguide.models.sa3 import SA3Model, sa3_config_from_dict, tiny_sa3_config
    from musicguide.text import TextEncoder, cfg_denoiser

    state = reference["sa3-text/state"]
    prefix = "conditioner.conditioners.prompt."
    model = SA3Model(sa3_config_from_dict(tiny_sa3_config(prompt={"max_length": TEXT_MAX_LENGTH}))).eval()
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith(prefix)}, strict=True)
    proj_out = nn.Linear(768, model.config.cond_dim)
    proj_out.load_state_dict({"weight": state[prefix + "proj_out.weight"], "bias": state[prefix + "proj_out.bias"]})
    encoder = TextEncoder.from_folder(encoder_folder, kind="t5gemma", max_length=TEXT_MAX_LENGTH,
                                      output_dim=model.config.cond_dim, proj_out=proj_out)
    theirs = reference["sa3-text/io"]
    x, t = theirs["x"], theirs["t"]
    conditioning = {"seconds_total": 17.0, "inpaint": (theirs["mask"], theirs["masked"])}
    with torch.no_grad():
        tokens, token_mask = encoder.encode(TEXT_PROMPTS)
        negative, negative_mask = encoder.encode([TEXT_NEGATIVE])
        negative = negative.masked_fill(~negative_mask.unsqueeze(-1), 0.0)
        ours = {"tokens": tokens, "token_mask": token_mask.float(),
                "cfg 1": cfg_denoiser(model, tokens, None, 1.0, **conditioning)(x, t),
                "cfg 3": cfg_denoiser(model, tokens, None, TEXT_CFG_SCALE, **conditioning)(x, t),
                "cfg 3, negative": cfg_denoiser(model, tokens, negative, TEXT_CFG_SCALE, **conditioning)(x, t)}
    return [("sa3-tiny with a prompt", name, _relative(value, theirs[name])) for name, value in ours.items()]


def _relative(ours, expected) -> float:
    if ours.shape != expected.shape:
        return float("inf")
    return float((ours - expected).abs().max() / expected.abs().max().clamp(min=1e-12))


def run_reference(python: str, encoder_folder: Path | None = None) -> dict:
    import torch

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "reference.pt"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, REFERENCE_PATH))}
        text = ["--text-encoder", str(encoder_folder)] if encoder_folder is not None else []
        done = subprocess.run([python, __file__, "--reference-side", str(out), *text], env=env, capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the reference side failed:\n{done.stderr[-3000:]}")
        return torch.load(out, weights_only=True)


def compare(reference: dict, encoder_folder: Path | None = None) -> list[tuple[str, str, float]]:
    """(case, output, relative error) for every case and output (the text rows with `encoder_folder`)."""
    import torch

    from musicguide.models.same import SAME, same_config_from_dict

    rows = []
    for name, config in CASES.items():
        model = SAME(same_config_from_dict(config)).eval()
        model.load_state_dict(reference[f"{name}/state"], strict=True)
        for samples in AUDIO_SAMPLES:
            theirs = reference[f"{name}/{samples}"]
            with torch.no_grad():
                latents = model.encode(theirs["audio"])
                decoded = model.decode(theirs["latents"])
            for output, ours, expected in (("encode", latents, theirs["latents"]), ("decode", decoded, theirs["decoded"])):
                if ours.shape != expected.shape:
                    rows.append((f"{name} ({samples} samples)", output, float("inf")))
                    continue
                error = float((ours - expected).abs().max() / expected.abs().max().clamp(min=1e-12))
                rows.append((f"{name} ({samples} samples)", output, error))
    from musicguide.models.sa3_dit import SA3DiT, sa3_dit_config_from_dict

    for name, config in DIT_CASES.items():
        model = SA3DiT(sa3_dit_config_from_dict(config)).eval()
        model.load_state_dict(reference[f"{name}/state"], strict=True)
        theirs = reference[f"{name}/io"]
        with torch.no_grad():
            ours = model(theirs["x"], theirs["t"], **{k: v for k, v in theirs.items() if k not in ("x", "t", "output")})
        expected = theirs["output"]
        error = (float((ours - expected).abs().max() / expected.abs().max().clamp(min=1e-12))
                 if ours.shape == expected.shape else float("inf"))
        rows.append((name, "forward", error))
    rows += whole_model_rows(reference)
    if encoder_folder is not None:
        rows += text_rows(reference, encoder_folder)
    return rows


def whole_model_rows(reference: dict) -> list[tuple[str, str, float]]:
    import torch

    from musicguide.models.sa3 import SA3Model, sa3_config_from_dict, tiny_sa3_config

    model = SA3Model(sa3_config_from_dict(tiny_sa3_config())).eval()
    model.load_state_dict(reference["sa3-tiny/state"], strict=True)
    theirs = reference["sa3-tiny/io"]
    with torch.no_grad():
        ours = {"encode": model.encode(theirs["audio"]), "decode": model.decode(theirs["latents"]),
                "denoise": model.denoise(theirs["x"], theirs["t"], seconds_total=17.0,
                                         inpaint=(theirs["mask"], theirs["masked"]))}
    expected = {"encode": theirs["latents"], "decode": theirs["decoded"], "denoise": theirs["output"]}
    from musicguide.schedules import LogSNRShift

    for steps, t_max, rate in GRIDS:
        ours[f"grid {steps} steps, t_max {t_max}, rate {rate:g}"] = LogSNRShift(rate=rate).times(steps, t_max, GRID_FRAMES).float()
        expected[f"grid {steps} steps, t_max {t_max}, rate {rate:g}"] = reference["sa3-tiny/grids"][f"{steps}/{t_max}/{rate}"]
    rows = []
    for name, value in ours.items():
        error = (float((value - expected[name]).abs().max() / expected[name].abs().max().clamp(min=1e-12))
                 if value.shape == expected[name].shape else float("inf"))
        rows.append(("sa3-tiny (whole model)", name, error))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-side", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--text-encoder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--reference-python", default=os.environ.get("MUSICGUIDE_SA3_REFERENCE_PYTHON"))
    args = parser.parse_args()
    if args.reference_side:
        reference_side(args.reference_side, args.text_encoder)
        return
    if not args.reference_python:
        sys.exit("set MUSICGUIDE_SA3_REFERENCE_PYTHON or pass --reference-python (see this file's docstring)")
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory() as folder:
        encoder = build_tiny_t5gemma(Path(folder) / "t5gemma")
        rows = compare(run_reference(args.reference_python, encoder), encoder)
    print(json.dumps({"tolerance": TOLERANCE}))
    for case, output, error in rows:
        print(f"{case:40} {output:7} {error:.2e} {'ok' if error <= TOLERANCE else 'FAIL'}")
    sys.exit(0 if all(error <= TOLERANCE for *_, error in rows) else 1)


if __name__ == "__main__":
    main()
