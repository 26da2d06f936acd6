"""musicnn, the pretrained music tagger of Pons & Serra (2019), ported to PyTorch.

Restyle guidance needs a model that hears genre, mood and instrumentation and that passes
gradients back to the waveform. musicnn is small (0.79 M weights), offline (its weights ship in
the PyPI package `musicnn`, ISC licence) and comes trained on two tag sets:

- "MSD_musicnn": 50 Million-Song-Dataset tags (genres, moods, eras),
- "MTT_musicnn": 50 MagnaTagATune tags (instruments, tempo, mood).

`scripts/convert_musicnn.py` converted the TensorFlow checkpoints once into
`weights/musicnn_{msd,mtt}.safetensors` (tag names in the "config" metadata entry) and
recorded the original graph's outputs as the fixture that `tests/test_musicnn.py` checks.

Data flows top to bottom in this file:

    audio (B, C, N) at any rate -> mono -> 16 kHz (windowed-sinc resampler, conv1d)
    -> power STFT (512, hop 256, Hann, centred, zero padded) -> 96 slaney mel bands
    -> log10(10000 * mel + 1) in float32 -> 3 s patches of 187 frames
    -> front end: timbral (7 x 38, 7 x 67) and temporal (128, 64, 32 x 1) convs, max over freq
    -> mid end: three 7-tap 1-D convs, the last two residual
    -> back end: max and mean over time, dense 200 (the penultimate layer), dense 50 logits.

Every step is a torch op, so tag probabilities and embeddings are differentiable in the audio.
One deliberate difference: the package casts the mel power to float16 before the log, which
overflows to inf on loud music and turns the taggram (and so its gradient) into NaN or a
constant; here the front end runs in float32 whatever the input's dtype. See docs/musicnn.md.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from musicguide.errors import UserError

WEIGHTS_DIR = Path(__file__).parent / "weights"
MUSICNN_MODELS = {"MSD_musicnn": "musicnn_msd.safetensors", "MTT_musicnn": "musicnn_mtt.safetensors"}

# Signal processing the checkpoints were trained with (musicnn/configuration.py).
SAMPLE_RATE = 16000
N_FFT = 512
HOP_LENGTH = 256
N_MELS = 96
# librosa.time_to_frames(3 s) + 1: the original tagger's 3 s patch.
PATCH_FRAMES = 187

# Resampler design. Measured on 44.1 -> 16 kHz: flat to 7.2 kHz (< 0.001 dB), -3 dB at 7.6 kHz,
# at least -100 dB from 8 kHz up, within 76-89 dB SNR of soxr "HQ" (what librosa.load uses) on
# the shared clips. The cutoff sits just below the output Nyquist frequency so that nothing above
# it folds back; 76 zero crossings of the sinc under a Kaiser window of beta 10 give the
# ~100 dB stopband.
RESAMPLE_CUTOFF = 0.957  # of the lower Nyquist frequency
RESAMPLE_ZERO_CROSSINGS = 76
RESAMPLE_KAISER_BETA = 10.0


@dataclass(frozen=True)
class MusicnnConfig:
    """What one checkpoint is: its tag set and the layer sizes of the published musicnn."""

    dataset: str  # "MSD" or "MTT": which tag set the output layer was trained on
    tags: tuple[str, ...]
    patch_hop: int = PATCH_FRAMES  # frames between patch starts; the original tagger's default
    timbral_filters: int = 204  # int(1.6 * 128)
    temporal_filters: int = 51  # int(1.6 * 32)
    midend_filters: int = 64
    backend_units: int = 200
    batch_norm_eps: float = 1e-3  # tf.compat.v1.layers.batch_normalization's default

    @property
    def frontend_channels(self) -> int:
        return 2 * self.timbral_filters + 3 * self.temporal_filters

    @property
    def pooled_channels(self) -> int:
        return self.frontend_channels + 3 * self.midend_filters


class MusicnnOutput(NamedTuple):
    """Per-patch outputs, both (B, n_patches, dim), so one pass serves both kinds of guidance."""

    logits: torch.Tensor  # (B, P, 50) pre-sigmoid tag scores
    penultimate: torch.Tensor  # (B, P, 200) the 200-unit layer after its batch norm


# ---------------------------------------------------------------------------------------------
# Front end: audio -> log-mel patches


@lru_cache(maxsize=8)
def _resample_kernel(orig_sr: int, new_sr: int) -> tuple[torch.Tensor, int, int, int]:
    """Polyphase windowed-sinc filters: one row per output phase, in float64 on the CPU.

    With up/down = new_sr/orig_sr in lowest terms, output sample m = up * k + j sits at input
    time (down * k + j * down / up). A conv1d with stride `down` visits every block k, and its
    `up` output channels hold the sinc shifted by each phase j, so one call resamples everything.
    """
    gcd = math.gcd(orig_sr, new_sr)
    up, down = new_sr // gcd, orig_sr // gcd
    cutoff = RESAMPLE_CUTOFF * min(orig_sr, new_sr) / 2 / orig_sr  # cycles per input sample
    half_width = math.ceil(RESAMPLE_ZERO_CROSSINGS / (2 * cutoff))  # in input samples
    taps = torch.arange(2 * half_width + down, dtype=torch.float64)
    phases = torch.arange(up, dtype=torch.float64)[:, None]
    offset = taps[None, :] - half_width - phases * down / up  # input sample minus output instant
    inside = offset.abs() <= half_width
    u = (offset / half_width).clamp(-1.0, 1.0)
    beta = torch.tensor(RESAMPLE_KAISER_BETA, dtype=torch.float64)
    window = torch.where(inside, torch.i0(beta * torch.sqrt(1 - u**2)) / torch.i0(beta), 0.0)
    kernel = 2 * cutoff * torch.sinc(2 * cutoff * offset) * window
    return kernel, up, down, half_width


def resample(audio: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Band-limited resampling of (..., N) audio along the last axis; differentiable.

    Returns ceil(N * new_sr / orig_sr) samples with sample 0 aligned to input sample 0, the
    length and alignment of librosa.resample (soxr), so the two are interchangeable. Samples
    beyond both ends count as silence.
    """
    if orig_sr == new_sr:
        return audio
    kernel, up, down, half_width = _resample_kernel(orig_sr, new_sr)
    lead_shape, n_in = audio.shape[:-1], audio.shape[-1]
    n_out = math.ceil(n_in * up / down)
    flat = audio.reshape(-1, 1, n_in)
    flat = F.pad(flat, (half_width, half_width + down))
    weight = kernel.to(device=audio.device, dtype=audio.dtype)[:, None, :]
    phases = F.conv1d(flat, weight, stride=down)  # (batch, up, blocks)
    out = phases.transpose(1, 2).reshape(flat.shape[0], -1)[:, :n_out]
    return out.reshape(*lead_shape, n_out)


class LogMel(nn.Module):
    """librosa.feature.melspectrogram(sr=16000, n_fft=512, hop_length=256, n_mels=96), then
    log10(10000 * mel + 1), in torch and float32.

    The filterbank is the constant librosa built for the original (slaney scale and norm); the
    converter stores it next to the weights so that this module needs no librosa.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)  # periodic, as librosa's
        self.register_buffer("mel_filterbank", torch.zeros(N_MELS, N_FFT // 2 + 1))

    def forward(self, audio_16k: torch.Tensor) -> torch.Tensor:
        """(B, N) mono 16 kHz audio -> (B, frames, 96) log-mel, frames = 1 + N // 256."""
        spectrum = torch.stft(
            audio_16k.float(),
            n_fft=N_FFT,
            hop_length=HOP_LENGTH,
            window=self.window,
            center=True,
            pad_mode="constant",  # librosa >= 0.10's default, which made the reference fixture
            return_complex=True,
        )
        power = spectrum.real**2 + spectrum.imag**2  # no sqrt: its gradient is infinite at 0
        mel = torch.matmul(self.mel_filterbank, power)
        return torch.log10(10000.0 * mel + 1.0).transpose(1, 2)


# ---------------------------------------------------------------------------------------------
# The network, on (N, 187, 96) log-mel patches


class TimbralBranch(nn.Module):
    """conv2d over 7 frames x a span of mel bands -> ReLU -> batch norm -> max over frequency.

    Shapes spanning many bands find timbre. Time is zero-padded 3 + 3 so that 187 frames stay 187.
    """

    def __init__(self, filters: int, bands: int, eps: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, filters, (7, bands))
        self.norm = nn.BatchNorm2d(filters, eps=eps)

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        """(N, 1, T, 96) -> (N, filters, T)."""
        features = self.norm(F.relu(self.conv(F.pad(log_mel, (0, 0, 3, 3)))))
        return features.amax(dim=3)


class TemporalBranch(nn.Module):
    """A `frames`-long filter run along each mel band alone -> ReLU -> batch norm -> max over bands.

    Long, one-band-tall filters find rhythm and tempo. The original is a (frames x 1) conv2d with
    TensorFlow's "same" padding ((k-1)//2 before, k//2 after); here the bands are folded into the
    batch and it is a conv1d, the same arithmetic, because cuDNN ran the conv2d form 150x slower
    (157 ms against 1 ms for 15 patches on an H100) for most patch counts.
    """

    def __init__(self, filters: int, frames: int, eps: float) -> None:
        super().__init__()
        self.time_padding = ((frames - 1) // 2, frames // 2)
        self.conv = nn.Conv1d(1, filters, frames)
        self.norm = nn.BatchNorm1d(filters, eps=eps)

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        """(N, 1, T, 96) -> (N, filters, T)."""
        n, _, frames, bands = log_mel.shape
        per_band = log_mel[:, 0].transpose(1, 2).reshape(n * bands, 1, frames)
        features = self.norm(F.relu(self.conv(F.pad(per_band, self.time_padding))))
        return features.reshape(n, bands, -1, frames).amax(dim=1)


class MidendConv(nn.Module):
    """7-frame conv1d over all features -> ReLU -> batch norm, as the mid end's three layers."""

    def __init__(self, in_channels: int, filters: int, eps: float) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, filters, 7, padding=3)
        self.norm = nn.BatchNorm1d(filters, eps=eps)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.norm(F.relu(self.conv(features)))


class Musicnn(nn.Module):
    """The musicnn tagger with its differentiable front end. Use `load_musicnn` to get one."""

    def __init__(self, config: MusicnnConfig) -> None:
        super().__init__()
        self.config = config
        eps = config.batch_norm_eps
        self.log_mel = LogMel()
        self.input_norm = nn.BatchNorm2d(1, eps=eps)  # one scalar mean/scale for the log-mel
        self.timbral_narrow = TimbralBranch(config.timbral_filters, int(0.4 * N_MELS), eps)
        self.timbral_wide = TimbralBranch(config.timbral_filters, int(0.7 * N_MELS), eps)
        self.temporal_long = TemporalBranch(config.temporal_filters, 128, eps)
        self.temporal_mid = TemporalBranch(config.temporal_filters, 64, eps)
        self.temporal_short = TemporalBranch(config.temporal_filters, 32, eps)
        self.midend = nn.ModuleList(
            [
                MidendConv(config.frontend_channels, config.midend_filters, eps),
                MidendConv(config.midend_filters, config.midend_filters, eps),
                MidendConv(config.midend_filters, config.midend_filters, eps),
            ]
        )
        self.pool_norm = nn.BatchNorm1d(2 * config.pooled_channels, eps=eps)
        self.dense = nn.Linear(2 * config.pooled_channels, config.backend_units)
        self.dense_norm = nn.BatchNorm1d(config.backend_units, eps=eps)
        self.classifier = nn.Linear(config.backend_units, len(config.tags))

    def patch_outputs(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, frames, 96) log-mel patches -> logits (N, 50) and penultimate (N, 200).

        Any number of frames works (the convs are padded and the back end pools over time), but
        the checkpoints were trained on 187.
        """
        log_mel = self.input_norm(patches[:, None])
        frontend = torch.cat(
            [
                self.timbral_narrow(log_mel),
                self.timbral_wide(log_mel),
                self.temporal_long(log_mel),
                self.temporal_mid(log_mel),
                self.temporal_short(log_mel),
            ],
            dim=1,
        )
        # Dense connections: the back end sees the front end and every mid-end layer.
        first = self.midend[0](frontend)
        second = self.midend[1](first) + first
        third = self.midend[2](second) + second
        features = torch.cat([frontend, first, second, third], dim=1)  # (N, 753, T)
        # TensorFlow flattened (753, [max, mean]), so the two statistics interleave per feature.
        pooled = torch.stack([features.amax(dim=2), features.mean(dim=2)], dim=2).flatten(1)
        penultimate = self.dense_norm(F.relu(self.dense(self.pool_norm(pooled))))
        return self.classifier(penultimate), penultimate

    def mono_log_mel(self, audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """(B, C, N) audio at `sample_rate` -> (B, T, 96): the front end's log-mel of the channels'
        mean, resampled to the tagger's rate; differentiable."""
        return self.log_mel(resample(audio.float().mean(dim=1), sample_rate, SAMPLE_RATE))

    def patches(self, audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """(B, C, N) audio at `sample_rate` -> (B, P, 187, 96) log-mel patches.

        Channels are averaged (librosa.load's mono). Patches start every `config.patch_hop`
        frames and a tail shorter than a patch is dropped, as the original tagger does.
        Audio shorter than one patch is an error rather than padded: padding with silence would
        make the tags describe the silence.
        """
        if audio.dim() != 3:
            raise ValueError(f"musicnn wants audio of shape (batch, channels, samples), got {tuple(audio.shape)}")
        mono = resample(audio.float().mean(dim=1), sample_rate, SAMPLE_RATE)
        n_frames = 1 + mono.shape[-1] // HOP_LENGTH
        if n_frames < PATCH_FRAMES:
            shortest = (PATCH_FRAMES - 1) * HOP_LENGTH / SAMPLE_RATE
            raise UserError(
                f"musicnn needs at least {shortest:.2f} s of audio, got {audio.shape[-1] / sample_rate:.2f} s",
                hint="tag or restyle a longer stretch",
            )
        log_mel = self.log_mel(mono)  # (B, T, 96)
        return log_mel.unfold(1, PATCH_FRAMES, self.config.patch_hop).transpose(2, 3)

    def forward(self, audio: torch.Tensor, sample_rate: int = 44100) -> MusicnnOutput:
        """(B, C, N) audio -> per-patch logits and penultimate activations."""
        patches = self.patches(audio, sample_rate)
        batch, n_patches = patches.shape[:2]
        logits, penultimate = self.patch_outputs(patches.flatten(0, 1))
        return MusicnnOutput(
            logits=logits.reshape(batch, n_patches, -1),
            penultimate=penultimate.reshape(batch, n_patches, -1),
        )

    def tag_logits(self, audio: torch.Tensor, sample_rate: int = 44100) -> torch.Tensor:
        """(B, C, N) -> (B, P, 50) pre-sigmoid scores; BCE guidance wants these (stable loss)."""
        return self(audio, sample_rate).logits

    def tag_probs(self, audio: torch.Tensor, sample_rate: int = 44100) -> torch.Tensor:
        """(B, C, N) -> (B, P, 50) tag probabilities per 3 s patch (the original's taggram)."""
        return torch.sigmoid(self.tag_logits(audio, sample_rate))

    def embedding(self, audio: torch.Tensor, sample_rate: int = 44100) -> torch.Tensor:
        """(B, C, N) -> (B, 200): the penultimate layer averaged over patches, a style vector."""
        return self(audio, sample_rate).penultimate.mean(dim=1)

    def tag_index(self, tag: str) -> int:
        """Index of a tag name (case-insensitive), or a UserError that suggests close names."""
        lowered = [name.lower() for name in self.config.tags]
        if tag.lower() in lowered:
            return lowered.index(tag.lower())
        close = difflib.get_close_matches(tag.lower(), lowered, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"known tags: {', '.join(self.config.tags)}"
        raise UserError(f"{self.config.dataset} musicnn has no tag {tag!r}", hint=hint)


def load_musicnn(name: str = "MSD_musicnn", device: str | torch.device = "cpu") -> Musicnn:
    """The converted checkpoint `name` ("MSD_musicnn" or "MTT_musicnn"), frozen, in eval mode.

    Eval mode makes batch norm use its running statistics and turns dropout off (the original's
    is_training=False). The weights do not require grad: guidance differentiates the audio only.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    if name not in MUSICNN_MODELS:
        raise UserError(f"unknown musicnn model {name!r}", hint=f"choose one of {', '.join(MUSICNN_MODELS)}")
    path = WEIGHTS_DIR / MUSICNN_MODELS[name]
    if not path.is_file():
        raise UserError(f"musicnn weights missing: {path}", hint="reinstall musicguide or run scripts/convert_musicnn.py")
    with safe_open(str(path), framework="pt") as weights_file:
        stored = json.loads(weights_file.metadata()["config"])
    config = MusicnnConfig(dataset=stored["dataset"], tags=tuple(stored["tags"]))
    model = Musicnn(config)
    model.load_state_dict(load_file(str(path)))
    return model.to(device).eval().requires_grad_(False)
