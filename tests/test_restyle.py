"""Restyle: classifier and embedding guidance through the VAE decoder into the musicnn tagger."""

from __future__ import annotations

import pytest
import torch

from musicguide import edit, losses
from musicguide.models import build_model, tiny_random_config
from musicguide.musicnn import load_musicnn

from conftest import synth_song

SR = 44100


@pytest.fixture(scope="module")
def setup():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(tiny_random_config()).eval().requires_grad_(False)
    song = torch.from_numpy(synth_song(5.0).T.copy())
    return model, song, load_musicnn("MSD_musicnn")


def _restyle(model, song, style, guidance, net, keep=0.0):
    settings = edit.SamplerSettings(steps=3, guidance=guidance, seed=3)
    return edit.restyle(model, song, round(0.8 * SR), round(4.4 * SR), settings, style_loss=style,
                        structure=losses.log_mel_envelope(net, SR), keep=keep, strength=0.7, context=round(0.4 * SR))


def _region(result):
    return result.songs[0][None, :, round(0.8 * SR) : round(4.4 * SR)]


def test_classifier_guidance_raises_the_target_tag(setup):
    model, song, net = setup
    jazz = net.tag_index("jazz")
    style = losses.tag_bce(net, [jazz], [], SR)
    with torch.no_grad():
        plain = net.tag_probs(_region(_restyle(model, song, style, 0.0, net)), SR)[..., jazz].mean()
        # ξ is per unit of time at 50 steps: 3 steps over t ∈ [0.7, 0] give each one 3 · 0.233 · 50 ≈ 35
        guided = net.tag_probs(_region(_restyle(model, song, style, 3.0, net)), SR)[..., jazz].mean()
    assert guided > 1.15 * plain, (float(plain), float(guided))


def test_embedding_guidance_moves_toward_the_reference(setup):
    model, song, net = setup
    reference = torch.from_numpy(synth_song(4.0, seed=5).T.copy()).flip(-1) * 0.2
    with torch.no_grad():
        target = net.embedding(reference[None], SR)[0]
    style = losses.embedding_distance(net, target, SR)
    with torch.no_grad():
        plain = style(_region(_restyle(model, song, style, 0.0, net)))
        # the squared-L2 gradient is far larger than the BCE's: ξ = 1 here (≈ 12 per step)
        guided = style(_region(_restyle(model, song, style, 1.0, net)))
    assert guided < 0.8 * plain, (float(plain), float(guided))


def test_restyle_keeps_audio_outside_the_region(setup):
    model, song, net = setup
    style = losses.tag_bce(net, [net.tag_index("rock")], [], SR)
    result = _restyle(model, song, style, 1.0, net, keep=1.0)
    fade = 1323
    a, b = round(0.8 * SR) - fade, round(4.4 * SR) + fade
    assert torch.equal(result.songs[0][:, :a], song[:, :a]) and torch.equal(result.songs[0][:, b:], song[:, b:])
    assert result.songs[0].shape == song.shape


def test_restyle_matches_the_inputs_level_without_clipping(setup):
    """A restyle changes the style, not the mix level: the region comes back at the input's RMS
    (the gain is in the result), unless that would clip; --no-match-level leaves it as decoded."""
    from musicguide.audio import rms_db

    model, song, net = setup
    style = losses.tag_bce(net, [net.tag_index("rock")], [], SR)
    region = slice(round(0.8 * SR), round(4.4 * SR))
    settings = edit.SamplerSettings(steps=2, guidance=1.0, seed=3)
    kwargs = dict(style_loss=style, strength=0.7, context=round(0.4 * SR))
    matched = edit.restyle(model, song, region.start, region.stop, settings, **kwargs)
    plain = edit.restyle(model, song, region.start, region.stop, settings, match_level=False, **kwargs)
    gain = matched.level_gain_db[0]
    assert plain.level_gain_db is None and gain != 0.0
    assert torch.allclose(matched.songs[0][:, region], plain.songs[0][:, region] * 10 ** (gain / 20), atol=1e-5)
    quiet = song * 0.3  # below tiny-random's noise: matching needs a cut of about 8 dB
    matched = edit.restyle(model, quiet, region.start, region.stop, settings, **kwargs)
    assert -edit.MAX_LEVEL_MATCH_DB < matched.level_gain_db[0] < 0
    assert abs(rms_db(matched.songs[0][:, region]) - rms_db(quiet[:, region])) < 0.01
    assert matched.songs[0][:, region].abs().max() <= edit.PEAK_CEILING + 1e-6
    # a cut past the limit stops at it
    assert edit.restyle(model, song * 0.05, region.start, region.stop, settings, **kwargs).level_gain_db == [
        -edit.MAX_LEVEL_MATCH_DB]
