"""The decoder's upsampling option (`use_nearest_upsample`), the conversion of a trained decoder to
it, decoder-only training and the spectral loss's window sizes.

The option is the reference's (stable-audio-tools' Oobleck decoder); bench/conformance.py's
"options" case compares it with the reference numerically where a reference env is set up.
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch import nn

from musicguide.errors import UserError
from musicguide.models import ModelConfig, build_model
from musicguide.models.presets import preset_config
from musicguide.models.layers import WNConvTranspose1d
from musicguide.models.vae import nearest_upsample
from musicguide.train import (LONG_STFT_SIZES, STFT_SIZES, VAETrainConfig, nearest_upsample_decoder, stft_loss,
                              train_vae)
from musicguide.train.vae import DECODER_PREFIX


def tiny_config(nearest: bool) -> ModelConfig:
    data = preset_config("tiny").to_dict()
    data["model"]["pretransform"]["config"]["decoder"]["config"]["use_nearest_upsample"] = nearest
    return ModelConfig.from_dict(data)


def random_model(config: ModelConfig, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("pretransform."):
                p.add_(0.3 * torch.randn_like(p))  # biases and snake scales away from their zero start
    return model


@pytest.mark.parametrize("stride", [2, 4, 8])
def test_nearest_upsample_is_the_references_upsample_then_same_padded_convolution(stride):
    torch.manual_seed(stride)
    ours = nearest_upsample(6, 5, stride)
    theirs = nn.Sequential(nn.Upsample(scale_factor=stride, mode="nearest"),
                           nn.Conv1d(6, 5, 2 * stride, bias=False, padding="same"))
    with torch.no_grad():
        conv = ours[1]
        theirs[1].weight.copy_(conv.weight_v * conv.weight_g / conv.weight_v.flatten(1).norm(dim=1)[:, None, None])
    x = torch.randn(2, 6, 13)
    with warnings.catch_warnings():  # torch's even-kernel "same" warns (once); ours pads itself
        warnings.simplefilter("ignore")
        expected = theirs(x)
    assert torch.allclose(ours(x), expected, atol=1e-6)
    assert sorted(n for n, _ in ours.named_parameters()) == ["1.weight_g", "1.weight_v"]


def test_a_repeating_decoder_keeps_constant_latents_constant_and_a_transposed_one_buzzes():
    """Decoding a constant: the transposed decoder's output repeats every latent frame (a comb at
    the frame rate), the repeating decoder's is constant away from the window's edges."""
    frames = 96
    latents = torch.full((1, 8, frames), 0.7)
    outputs = {}
    for nearest in (False, True):
        model = random_model(tiny_config(nearest))
        ratio = model.downsampling_ratio
        with torch.no_grad():
            audio = model.vae.decode(latents)[0]
        middle = audio[:, 40 * ratio: -40 * ratio]  # beyond the receptive field of the edges
        outputs[nearest] = (middle, ratio)
    transposed, ratio = outputs[False]
    repeating, _ = outputs[True]
    assert transposed.std(-1).min() > 1e-3, "the transposed decoder should make a pattern"
    assert torch.allclose(transposed[:, ratio:], transposed[:, :-ratio], atol=1e-4), "a pattern of one frame's period"
    assert repeating.std(-1).max() < 1e-5 * repeating.abs().max().clamp_min(1e-3)


def test_conversion_reproduces_a_transposed_convolution_that_a_repeat_can_express():
    """Where the transposed kernel is one a repeat and a convolution can make, the converted
    decoder's upsampling equals it exactly (bias aside, which a constant-keeping stage cannot have)."""
    stride = 4
    size = 2 * stride
    # the offsets a repeat-then-convolve kernel reaches for each of its taps, measured by impulses
    probe = nearest_upsample(1, 1, stride)
    responses = []
    for tap in range(size):
        with torch.no_grad():
            probe[1].weight_v.zero_()
            probe[1].weight_v[0, 0, tap] = 1.0
            probe[1].weight_g.fill_(1.0)
            impulse = torch.zeros(1, 1, 9)
            impulse[..., 4] = 1.0
            responses.append(probe(impulse)[0, 0])
    basis = torch.stack(responses)  # [taps, 36 outputs]: output n = 4 * stride + r
    pad = math.ceil(stride / 2)
    window = slice(4 * stride - pad, 4 * stride - pad + size)  # where a transposed kernel can reach
    outside = torch.ones(basis.shape[1], dtype=torch.bool)
    outside[window] = False
    # repeat kernels whose response stays inside the transposed kernel's reach
    constraints = basis[:, outside].T.double()
    null = torch.linalg.svd(constraints).Vh[torch.linalg.matrix_rank(constraints):].float()
    assert len(null) > 0
    config = tiny_config(False)
    model = random_model(config)
    block = 1 + list(reversed(config.autoencoder.decoder.strides)).index(stride)
    key = f"{DECODER_PREFIX}{block}.layers.1."
    state = model.state_dict()
    cin, cout, _ = state[key + "weight_v"].shape
    torch.manual_seed(1)
    v = torch.einsum("pk,iop->iok", null, torch.randn(cin, cout, len(null)))  # [in, out, taps]
    state[key + "weight_v"] = torch.einsum("iok,kn->ion", v, basis)[..., window]  # the transposed kernel it equals
    state[key + "weight_g"] = state[key + "weight_v"].flatten(1).norm(dim=1)[:, None, None]
    new_config, new_state = nearest_upsample_decoder(config, state)
    converted = build_model(new_config)
    converted.load_state_dict(new_state, strict=True)

    transposed = WNConvTranspose1d(state[key + "weight_v"].shape[0], state[key + "weight_v"].shape[1], size,
                                   stride=stride, padding=pad)
    with torch.no_grad():
        transposed.weight_v.copy_(state[key + "weight_v"])
        transposed.weight_g.copy_(state[key + "weight_g"])
        transposed.bias.zero_()
        x = torch.randn(1, transposed.weight_v.shape[0], 10)
        upsample = converted.pretransform.model.decoder.layers[block].layers[1]
        assert torch.allclose(upsample(x)[..., stride:-stride], transposed(x)[..., stride:-stride], atol=1e-5)


def test_conversion_keeps_every_other_weight_and_refuses_a_second_time():
    config = tiny_config(False)
    state = random_model(config).state_dict()
    copies = {k: v.clone() for k, v in state.items()}
    new_config, new_state = nearest_upsample_decoder(config, state)
    assert new_config.autoencoder.decoder.use_nearest_upsample
    stages = range(1, len(config.autoencoder.decoder.strides) + 1)
    upsampling = {f"{DECODER_PREFIX}{b}.layers.1.{name}" for b in stages for name in ("weight_g", "weight_v", "bias")}
    assert upsampling <= set(state) and len(upsampling) == 3 * len(config.autoencoder.decoder.strides)  # weight_g, weight_v, bias per stage
    kept = set(state) - upsampling
    assert kept < set(new_state) and all(torch.equal(new_state[k], copies[k]) for k in kept)
    assert all(torch.equal(state[k], copies[k]) for k in state), "the given state is left as it was"
    build_model(new_config).load_state_dict(new_state, strict=True)
    with pytest.raises(UserError, match="already"):
        nearest_upsample_decoder(new_config, new_state)


def test_the_option_is_written_only_where_set_so_published_configs_round_trip(tmp_path):
    published = preset_config("demo").to_dict()
    assert "use_nearest_upsample" not in published["model"]["pretransform"]["config"]["decoder"]["config"]
    assert ModelConfig.from_dict(published).to_dict() == published
    nearest = tiny_config(True).to_dict()
    assert nearest["model"]["pretransform"]["config"]["decoder"]["config"]["use_nearest_upsample"] is True
    path = tmp_path / "model_config.json"
    path.write_text(json.dumps(nearest))
    assert ModelConfig.from_json(path).autoencoder.decoder.use_nearest_upsample
    nearest["model"]["pretransform"]["config"]["decoder"]["config"]["use_nearest_upsample"] = "yes"
    with pytest.raises(UserError, match="use_nearest_upsample"):
        ModelConfig.from_dict(nearest)


# --- Training ------------------------------------------------------------------------------------

def test_stft_sizes_are_checked_and_used():
    assert VAETrainConfig.for_preset("demo").stft_sizes == STFT_SIZES
    assert LONG_STFT_SIZES[:2] == (8192, 4096) and set(STFT_SIZES) < set(LONG_STFT_SIZES)
    for bad in [(), (100,), (8,), (131072,), [2048]]:
        with pytest.raises(UserError, match="stft_sizes"):
            VAETrainConfig.for_preset("demo", stft_sizes=bad)
    torch.manual_seed(0)
    target = torch.randn(1, 2, 16384)
    pred = target + 0.1 * torch.randn_like(target)
    assert stft_loss(pred, target, (8192,)) != stft_loss(pred, target, (64,))


def test_decoder_only_training_leaves_the_encoder_and_so_the_latents_alone(tmp_path):
    import numpy as np
    import soundfile as sf

    rate = 44100
    t = np.arange(rate) / rate
    for i, hz in enumerate((220, 330)):
        tone = 0.2 * np.sin(2 * np.pi * hz * t) * np.exp(-3 * (t % 0.25))
        sf.write(tmp_path / f"song_{i}.wav", np.stack([tone, np.roll(tone, 30)], 1).astype(np.float32), rate)
    config = VAETrainConfig.for_preset("tiny", steps=4, batch_size=2, segment_samples=8192, warmup_steps=1,
                                       val_every=4, log_every=2, checkpoint_every=4, val_examples=2,
                                       train_encoder=False, stft_sizes=LONG_STFT_SIZES[1:])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_vae(tmp_path, tmp_path / "first", VAETrainConfig.for_preset("tiny", steps=2, batch_size=2,
                                                                         segment_samples=8192, val_every=2,
                                                                         log_every=1, checkpoint_every=2,
                                                                         val_examples=2),
                  device="cpu", holdout=["song_1.wav"])
        train_vae(tmp_path, tmp_path / "second", config, device="cpu", holdout=["song_1.wav"], init=tmp_path / "first")
    finally:
        torch.set_num_threads(threads)
    from safetensors.torch import load_file
    before, after = load_file(tmp_path / "first" / "vae.safetensors"), load_file(tmp_path / "second" / "vae.safetensors")
    encoder = [k for k in before if ".encoder." in k]
    decoder = [k for k in before if ".decoder." in k]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in decoder)


def test_output_gain_calibration_restores_the_round_trips_level():
    from musicguide.audio import rms_db
    from musicguide.train import calibrate_output_gain

    model = random_model(tiny_config(True)).float()
    torch.manual_seed(3)
    excerpts = [0.1 * torch.randn(2, 8192) for _ in range(5)]

    def level_change() -> float:
        with torch.no_grad():
            return float(torch.tensor([rms_db(model.decode(model.encode(x[None]))[0]) - rms_db(x)
                                       for x in excerpts]).median())

    last = model.vae.decoder.layers[-2]
    with torch.no_grad():  # make the round trip exactly 5 dB too loud, then 30 dB
        last.weight_g.mul_(10 ** ((5.0 - level_change()) / 20))
    assert level_change() == pytest.approx(5.0, abs=1e-3)
    assert calibrate_output_gain(model, excerpts) == pytest.approx(-5.0, abs=1e-3)
    assert abs(level_change()) < 1e-3
    with torch.no_grad():
        last.weight_g.mul_(10 ** (30.0 / 20))
    assert calibrate_output_gain(model, excerpts) == -12.0  # at most 12 dB: a larger miss is not a gain problem
    assert level_change() == pytest.approx(18.0, abs=1e-3)
    tanh = tiny_config(True).to_dict()
    tanh["model"]["pretransform"]["config"]["decoder"]["config"]["final_tanh"] = True
    with pytest.raises(UserError, match="gain"):
        calibrate_output_gain(build_model(ModelConfig.from_dict(tanh)), excerpts)


def test_the_mel_loss_is_the_evaluations_mr_and_has_a_gradient():
    from musicguide.evaluate.metrics import mel_distance, mel_distance_tensor
    from musicguide.train import vae_loss

    torch.manual_seed(0)
    a, b = torch.randn(2, 8192), torch.randn(2, 8192, requires_grad=True)
    loss = mel_distance_tensor(b, a, 44100)
    assert float(loss.detach()) == pytest.approx(mel_distance(b, a, 44100), rel=1e-6)
    loss.backward()
    assert b.grad is not None and b.grad.abs().sum() > 0
    model = random_model(tiny_config(True))
    audio = 0.1 * torch.randn(2, 2, 8192)
    plain = VAETrainConfig.for_preset("tiny", segment_samples=8192)
    with_mel = VAETrainConfig.for_preset("tiny", segment_samples=8192, mel_weight=0.5)
    noise = torch.zeros(2, 8, 8192 // model.downsampling_ratio)
    (base, parts), (total, mel_parts) = vae_loss(model, audio, plain, noise), vae_loss(model, audio, with_mel, noise)
    assert "mel" not in parts and float(total - base) == pytest.approx(0.5 * float(mel_parts["mel"]), rel=1e-4)
    with pytest.raises(UserError, match="mel_weight"):
        VAETrainConfig.for_preset("tiny", mel_weight=-1.0)
