"""Restyle: classifier and embedding guidance through the VAE decoder into the musicnn tagger."""

from __future__ import annotations

import math

import pytest
import torch

from musicguide import restyle as restyling
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


def _restyle(model, song, style, guidance, net, keep=0.0, variations=1):
    settings = edit.SamplerSettings(steps=3, guidance=guidance, seed=3)
    return restyling.restyle(model, song, round(0.8 * SR), round(4.4 * SR), settings, style_loss=style,
                        structure=losses.log_mel_envelope(net, SR), keep=keep, strength=0.7, context=round(0.4 * SR),
                        variations=variations)


def _region(result):
    return torch.stack(result.songs)[:, :, round(0.8 * SR) : round(4.4 * SR)]


# Guidance must move each result further than the unguided results differ from one another: the
# margin is the spread of VARIATIONS unguided samples, not a number read off this code's output.
VARIATIONS = 3


@pytest.mark.slow
def test_classifier_guidance_raises_the_target_tag(setup):
    model, song, net = setup
    jazz = net.tag_index("jazz")
    style = losses.tag_bce(net, [jazz], [], SR)
    with torch.no_grad():
        plain = _restyle(model, song, style, 0.0, net, variations=VARIATIONS)
        # ξ is per unit of time at 50 steps: 3 steps over t ∈ [0.7, 0] give each one 3 · 0.233 · 50 ≈ 35
        guided = _restyle(model, song, style, 3.0, net, variations=VARIATIONS)
        # ξ = 0 is no guidance at all: the target does not matter
        elsewhere = _restyle(model, song, losses.tag_bce(net, [net.tag_index("rock")], [], SR), 0.0, net,
                             variations=VARIATIONS)
        before = net.tag_probs(_region(plain), SR)[..., jazz].mean(dim=-1)
        after = net.tag_probs(_region(guided), SR)[..., jazz].mean(dim=-1)
    assert all(torch.equal(a, b) for a, b in zip(plain.songs, elsewhere.songs))
    spread = before.max() - before.min()
    assert (after - before).min() > spread, (before.tolist(), after.tolist())


@pytest.mark.slow
def test_embedding_guidance_moves_toward_the_reference(setup):
    model, song, net = setup
    reference = torch.from_numpy(synth_song(4.0, seed=5).T.copy()).flip(-1) * 0.2
    with torch.no_grad():
        target = net.embedding(reference[None], SR)[0]
    style = losses.embedding_distance(net, target, SR)
    with torch.no_grad():
        plain = _region(_restyle(model, song, style, 0.0, net, variations=VARIATIONS))
        # the squared-L2 gradient is far larger than the BCE's: ξ = 1 here (≈ 12 per step)
        guided = _region(_restyle(model, song, style, 1.0, net, variations=VARIATIONS))
        before = torch.stack([style(plain[i : i + 1]) for i in range(VARIATIONS)])
        after = torch.stack([style(guided[i : i + 1]) for i in range(VARIATIONS)])
    spread = before.max() - before.min()
    assert (before - after).min() > spread, (before.tolist(), after.tolist())


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
    (the gain is in the result), its true peaks limited to the ceiling; --no-match-level leaves it as decoded."""
    from musicguide.audio import rms_db

    model, song, net = setup
    style = losses.tag_bce(net, [net.tag_index("rock")], [], SR)
    region = slice(round(0.8 * SR), round(4.4 * SR))
    settings = edit.SamplerSettings(steps=2, guidance=1.0, seed=3)
    kwargs = dict(style_loss=style, strength=0.7, context=round(0.4 * SR))
    matched = restyling.restyle(model, song, region.start, region.stop, settings, **kwargs)
    plain = restyling.restyle(model, song, region.start, region.stop, settings, match_level=False, **kwargs)
    gain = matched.level_gain_db[0]
    assert plain.level_gain_db is None and gain != 0.0
    assert torch.allclose(matched.songs[0][:, region], plain.songs[0][:, region] * 10 ** (gain / 20), atol=1e-5)
    quiet = song * 0.3  # below tiny-random's noise: matching needs a cut of about 8 dB
    matched = restyling.restyle(model, quiet, region.start, region.stop, settings, **kwargs)
    assert -restyling.MAX_LEVEL_MATCH_DB < matched.level_gain_db[0] < 0
    assert abs(rms_db(matched.songs[0][:, region]) - rms_db(quiet[:, region])) < 0.01
    assert matched.songs[0][:, region].abs().max() <= restyling.PEAK_CEILING + 1e-6
    # a cut past the limit stops at it
    assert restyling.restyle(model, song * 0.05, region.start, region.stop, settings, **kwargs).level_gain_db == [
        -restyling.MAX_LEVEL_MATCH_DB]


def test_one_spike_does_not_pull_the_whole_region_down():
    """Issue 24: the level match once scaled a region 10 dB down for one peak. Now the region
    gets the original's RMS, and a true-peak limiter takes the spike (and only its surroundings)
    under the ceiling."""
    torch.manual_seed(0)
    decoded = torch.randn(2, 2, SR) * 0.05
    decoded[:, 0, 20000] = 2.0  # the old rule: a cut of 6 dB for it, 12 dB below the wanted gain
    original = torch.randn(2, 2, SR) * 0.1
    matched, gains = restyling._match_level(decoded, original, 0, SR)
    assert gains == pytest.approx([6.0, 6.0], abs=0.2)
    rms_db = lambda x: 20 * math.log10(float(x.double().pow(2).mean().sqrt()))  # noqa: E731
    assert abs(rms_db(matched) - rms_db(original)) < 0.3
    assert float(restyling.true_peak(matched).max()) <= restyling.PEAK_CEILING + 1e-6
    far = slice(0, 20000 - 2 * restyling.LIMITER_HOLD - 1)
    assert torch.allclose(matched[..., far], decoded[..., far] * (10 ** (torch.tensor(gains) / 20))[:, None, None],
                          atol=1e-6)


def test_the_limiter_catches_peaks_between_samples_and_at_the_edges():
    n = 4000
    t = torch.arange(n, dtype=torch.float64)
    tone = torch.sin(2 * math.pi * 0.25 * t + math.pi / 4)  # fs/4, sampled at ±0.707: true peak 1.0
    audio = torch.stack([tone, tone])[None].float() * 1.2
    audio[..., :3] = 1.5  # a peak at the very start
    limited = restyling.limit_true_peaks(audio, 0.9)
    assert float(restyling.true_peak(limited).max()) <= 0.9 + 1e-4
    assert float(audio[..., 100:].abs().max()) < 0.9  # the samples alone are under the ceiling: only true peaks tell
