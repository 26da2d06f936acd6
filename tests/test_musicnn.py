"""The PyTorch musicnn against the original TensorFlow package, and its differentiable front end.

The reference numbers come from scripts/convert_musicnn.py, which ran the original graph on the
shared clips as the original loads them: librosa.load(path, sr=16000) (channel mean, soxr HQ),
then the original's log-mel taken in float32 (see its header). Nothing of ours made them, so the
port fed the 44.1 kHz files is checked end to end, its resampler included.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile
import soxr
import torch
import torch.nn.functional as F

from musicguide.errors import UserError
from musicguide.musicnn import (
    HOP_LENGTH,
    MUSICNN_MODELS,
    N_MELS,
    PATCH_FRAMES,
    SAMPLE_RATE,
    Musicnn,
    MusicnnConfig,
    load_musicnn,
    resample,
)

REPO = Path(__file__).resolve().parents[1]
AUDIO_DIR = Path(__file__).resolve().parents[2] / "shared" / "audio"
FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "musicnn_reference.json").read_text())
TOLERANCE = 1e-3  # max abs difference in probabilities that the issue asks for
# Embedding entries are O(1) (batch-normed). From the 44.1 kHz file, the resamplers' difference
# moves them by up to 1.9e-3 (the probabilities by 6e-4); a one-sample delay at 16 kHz moves them by
# 7e-3 (the probabilities by 3.5e-3), a 1% gain error by 1.2e-2 (5e-3), soxr's quick mode by 0.4 (0.2).
EMBEDDING_TOLERANCE = 4e-3
needs_audio = pytest.mark.skipif(not AUDIO_DIR.is_dir(), reason=f"shared test audio not found at {AUDIO_DIR}")


@pytest.fixture(scope="module", params=list(MUSICNN_MODELS))
def model(request) -> Musicnn:
    return load_musicnn(request.param)


def read_clip(stem: str) -> tuple[np.ndarray, int]:
    """(channels, samples) float32 audio of a shared clip, checked against the fixture's hash."""
    path = AUDIO_DIR / f"{stem}.ogg"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == FIXTURE["clips"][stem]["sha256"], f"{path} changed: rerun scripts/convert_musicnn.py"
    audio, sample_rate = soundfile.read(path, dtype="float32", always_2d=True)
    return np.ascontiguousarray(audio.T), sample_rate


def model_name(model: Musicnn) -> str:
    return f"{model.config.dataset}_musicnn"


@needs_audio
def test_port_reproduces_the_original_on_every_shared_clip(model: Musicnn) -> None:
    """From the 44.1 kHz file: our resampler, STFT, mel, log and network against the original's
    whole path (measured: at most 6e-4 on a patch, 3e-4 on the mean)."""
    reference = {stem: clip[model_name(model)] for stem, clip in FIXTURE["clips"].items()}
    assert len(reference) >= 6
    for stem, expected in reference.items():
        audio, sample_rate = read_clip(stem)
        with torch.no_grad():
            output = model(torch.from_numpy(audio)[None], sample_rate)
        probs = torch.sigmoid(output.logits)[0].numpy()
        embedding = output.penultimate[0].mean(dim=0).numpy()
        assert probs.shape == (FIXTURE["clips"][stem]["n_patches"], 50)
        assert np.abs(probs - np.array(expected["patch_probs"])).max() < TOLERANCE, stem
        assert np.abs(probs.mean(axis=0) - np.array(expected["mean_probs"])).max() < TOLERANCE, stem
        assert np.abs(embedding - np.array(expected["embedding"])).max() < EMBEDDING_TOLERANCE, stem


@pytest.fixture(scope="module")
def originals_16k() -> dict[str, np.ndarray]:
    """Each shared clip as the original tagger loads it: librosa.load(path, sr=16000)."""
    if not AUDIO_DIR.is_dir():
        pytest.skip(f"shared test audio not found at {AUDIO_DIR}")
    for stem in FIXTURE["clips"]:
        read_clip(stem)  # the hash check
    return {stem: librosa.load(AUDIO_DIR / f"{stem}.ogg", sr=SAMPLE_RATE)[0] for stem in FIXTURE["clips"]}


@pytest.mark.slow
def test_port_on_the_originals_16k_audio_reproduces_the_original(model: Musicnn, originals_16k) -> None:
    """The original's own 16 kHz audio into the port: the front end and the network alone, without
    our resampler, agree far more closely than the end-to-end test allows (measured ~4e-6, ~8e-6)."""
    for stem, mono_16k in originals_16k.items():
        expected = FIXTURE["clips"][stem][model_name(model)]
        with torch.no_grad():
            output = model(torch.from_numpy(mono_16k)[None, None], SAMPLE_RATE)
        probs = torch.sigmoid(output.logits)[0].numpy()
        embedding = output.penultimate[0].mean(dim=0).numpy()
        assert probs.shape == np.shape(expected["patch_probs"])
        assert np.abs(probs - np.array(expected["patch_probs"])).max() < 5e-5, stem  # the fixture rounds to 1e-6
        assert np.abs(embedding - np.array(expected["embedding"])).max() < 1e-4, stem


def test_log_mel_matches_the_originals_on_a_probe_signal() -> None:
    """librosa's float32 log-mel of a 0-8 kHz sweep, stored by the converter: checks the STFT
    framing, window, padding and every mel band without librosa or the shared clips."""
    time = np.arange(4000) / SAMPLE_RATE  # convert_musicnn.probe_signal(), rebuilt here
    probe = (0.5 * np.sin(2 * np.pi * 16000 * time**2) + 0.3 * np.sin(2 * np.pi * 100 * time)).astype(np.float32)
    expected = np.array(FIXTURE["probe_log_mel"])
    with torch.no_grad():
        log_mel = load_musicnn("MTT_musicnn").log_mel(torch.from_numpy(probe)[None])[0].numpy()
    assert log_mel.shape == expected.shape == (1 + len(probe) // HOP_LENGTH, N_MELS)
    assert (expected > 1).any(axis=0).all()  # the sweep lights every mel band in some frame
    assert np.abs(log_mel - expected).max() < 1e-4


def sine(frequency: float, sample_rate: int, seconds: float = 1.0) -> torch.Tensor:
    time = torch.arange(int(sample_rate * seconds), dtype=torch.float64) / sample_rate
    return torch.sin(2 * math.pi * frequency * time)


def rms_db(signal: torch.Tensor) -> float:
    return 20 * math.log10(signal.pow(2).mean().sqrt().item() * math.sqrt(2) + 1e-30)


def test_resampler_passband_stopband_and_alignment() -> None:
    trim = slice(2000, -2000)  # away from the zero-padded ends
    for frequency in (100.0, 1000.0, 5000.0, 7000.0):
        assert abs(rms_db(resample(sine(frequency, 44100), 44100, 16000)[trim])) < 0.01, frequency
    # Above the new Nyquist frequency a tone must vanish, not fold back into the band.
    for frequency in (8000.0, 9000.0, 12000.0, 20000.0):
        assert rms_db(resample(sine(frequency, 44100), 44100, 16000)[trim]) < -95, frequency

    impulse = torch.zeros(44100)
    impulse[22050] = 1.0
    resampled = resample(impulse, 44100, 16000)
    assert resampled.shape == (16000,)  # ceil(N * 160 / 441), librosa.resample's length
    assert int(resampled.abs().argmax()) == 8000  # sample 0 stays at time 0: no delay
    assert resample(torch.zeros(3, 2, 1001), 44100, 16000).shape == (3, 2, math.ceil(1001 * 160 / 441))


def test_resampler_agrees_with_soxr_on_music_and_other_rates() -> None:
    if AUDIO_DIR.is_dir():
        audio, sample_rate = read_clip("battle_60s")
        mono = audio.mean(axis=0)
    else:  # still compare on a chord when the shared clips are absent
        sample_rate = 44100
        mono = sum(sine(f, sample_rate, 5.0) for f in (220.0, 1330.0, 3100.0, 6500.0)).float().numpy()
    ours = resample(torch.from_numpy(mono), sample_rate, SAMPLE_RATE).numpy()
    reference = soxr.resample(mono, sample_rate, SAMPLE_RATE, quality="HQ")
    assert len(ours) == len(reference)
    snr_db = 10 * np.log10(np.sum(reference**2) / np.sum((ours - reference) ** 2))
    assert snr_db > 65, f"torch resampler vs soxr HQ: {snr_db:.1f} dB SNR"  # measured 76-89 dB on the clips

    chord = sum(sine(f, 48000, 2.0) for f in (330.0, 2500.0, 6100.0)).numpy()
    ours = resample(torch.from_numpy(chord), 48000, SAMPLE_RATE).numpy()
    reference = soxr.resample(chord, 48000, SAMPLE_RATE, quality="HQ")
    assert np.abs(ours - reference)[100:-100].max() < 1e-3


@needs_audio
@pytest.mark.parametrize("loss_kind", ["tag", "embedding"])
def test_guidance_gradients_are_finite_nonzero_and_downhill(loss_kind: str) -> None:
    """On loud music, where the package's float16 log-mel saturates (zero gradient), ours must
    give a usable gradient: finite, nonzero wherever a patch hears the audio, and matching a
    finite difference so that a step against it lowers the loss."""
    model = load_musicnn("MSD_musicnn")
    audio, sample_rate = read_clip("loyalists_20s")  # 903 of its 1122 patch frames hit inf in float16
    start = 8 * sample_rate
    clip = torch.from_numpy(audio[:, start : start + 4 * sample_rate])[None]
    reference = torch.from_numpy(audio[:, :4 * sample_rate])[None]
    jazz = model.tag_index("jazz")
    with torch.no_grad():
        reference_embedding = model.embedding(reference, sample_rate)

    def loss(x: torch.Tensor) -> torch.Tensor:
        if loss_kind == "tag":
            logits = model.tag_logits(x, sample_rate)[..., jazz]
            return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        return (model.embedding(x, sample_rate) - reference_embedding).pow(2).sum()

    clip.requires_grad_(True)
    value = loss(clip)
    (gradient,) = torch.autograd.grad(value, clip)
    assert torch.isfinite(gradient).all()
    heard = int(2.9 * sample_rate)  # the one 2.98 s patch; the rest of the 4 s is dropped
    assert (gradient[..., :heard] != 0).float().mean() > 0.99
    assert torch.all(gradient[..., int(3.0 * sample_rate) :] == 0)

    step = gradient / gradient.norm() * clip.detach().norm() * 1e-4
    with torch.no_grad():
        central_difference = (loss(clip + step) - loss(clip - step)) / 2
        downhill = loss(clip - step) - value
    predicted = (gradient * step).sum()
    assert downhill < 0
    assert abs(central_difference - predicted) < 0.1 * abs(predicted)  # measured 4% (ReLU kinks)


def test_half_precision_audio_is_analysed_in_float32() -> None:
    """The defect the port must not inherit: loud audio in float16 must not saturate the log-mel."""
    model = load_musicnn("MSD_musicnn")
    loud = (0.45 * (sine(440.0, 44100, 3.0) + sine(3000.0, 44100, 3.0))).float().expand(1, 2, -1)
    with torch.no_grad():
        full = model.tag_probs(loud)
        half = model.tag_probs(loud.half())
        mel_peak = model.log_mel(resample(loud.mean(dim=1), 44100, SAMPLE_RATE)).amax()
    assert 10 ** mel_peak.item() - 1 > 65504  # 10000 * mel is past float16's largest value
    assert torch.isfinite(half).all()
    assert (full - half).abs().max() < 1e-2


def test_batches_patches_and_short_audio() -> None:
    model = load_musicnn("MTT_musicnn")
    generator = torch.Generator().manual_seed(1)
    shortest = math.ceil((PATCH_FRAMES - 1) * HOP_LENGTH * 44100 / SAMPLE_RATE)  # exactly one patch
    two = torch.randn(2, 2, shortest, generator=generator) * 0.1
    with torch.no_grad():
        together = model.tag_probs(two)
        alone = torch.cat([model.tag_probs(two[i : i + 1]) for i in range(2)])
    assert together.shape == (2, 1, 50)
    assert torch.allclose(together, alone, atol=1e-5)
    assert (together[0] - together[1]).abs().max() > 1e-4  # different audio, different tags
    with pytest.raises(UserError, match="at least 2.98 s"):
        model.tag_probs(two[..., : shortest - 300])

    overlapping = Musicnn(MusicnnConfig(dataset="MTT", tags=model.config.tags, patch_hop=PATCH_FRAMES // 2))
    overlapping.load_state_dict(model.state_dict())
    overlapping.eval()
    seven_seconds = torch.randn(1, 2, 44100 * 7, generator=generator) * 0.1
    with torch.no_grad():
        dense = overlapping.tag_probs(seven_seconds)
        sparse = model.tag_probs(seven_seconds)
    assert dense.shape[1] == 3 and sparse.shape[1] == 2  # 438 frames: starts 0, 93, 186 vs 0, 187
    assert torch.allclose(dense[:, 0], sparse[:, 0], atol=1e-5)  # both start at frame 0
    assert (dense[0, 1] - sparse[0, 0]).abs().max() > 1e-4


def test_loaded_model_is_frozen_eval_and_names_its_tags() -> None:
    model = load_musicnn("MSD_musicnn")
    assert not model.training
    assert not any(parameter.requires_grad for parameter in model.parameters())
    assert model.config.tags == tuple(FIXTURE["tags"]["MSD_musicnn"])
    assert model.config.tags[model.tag_index("JAZZ")] == "jazz"
    with pytest.raises(UserError) as error:
        model.tag_index("jaz")
    assert "jazz" in str(error.value)
    with pytest.raises(UserError, match="unknown musicnn model"):
        load_musicnn("MSD_vgg")


def test_module_imports_and_runs_without_tensorflow_or_librosa() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tensorflow', 'musicnn', 'librosa', 'tf_keras'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch\n"
        "from musicguide.musicnn import load_musicnn\n"
        "model = load_musicnn('MTT_musicnn')\n"
        "probs = model.tag_probs(torch.zeros(1, 2, 44100 * 3))\n"
        "assert probs.shape == (1, 1, 50), probs.shape\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
