"""How each output is judged: MR (multi-resolution mel distance to the original), the level error
and the seam measures per case, and FD (Fréchet distance between musicnn embedding sets) per row."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import Tensor

from ..audio import rms_db
from ..splice import seam_report

if TYPE_CHECKING:  # annotations only
    from .clips import Case, Output

# ---- MR: multi-resolution mel distance ---------------------------------------------------------

# DAC's MelSpectrogramLoss, which VampNet reports as its mel distance: seven STFTs with Hann windows
# of 32 ... 2048 samples (hop a quarter of the window), 5 ... 320 slaney mel bands over 0 Hz to
# Nyquist on the magnitude, log10 after clamping at 1e-5, L1 over bins, frames and channels, and
# the seven distances *summed*, so values are on the scale VampNet and the paper print.
MR_WINDOWS = (32, 64, 128, 256, 512, 1024, 2048)
MR_MEL_BANDS = (5, 10, 20, 40, 80, 160, 320)
MR_CLAMP = 1e-5


@lru_cache(maxsize=32)
def mel_filterbank(sample_rate: int, n_fft: int, bands: int) -> Tensor:
    """[bands, n_fft // 2 + 1]: librosa.filters.mel's defaults (slaney mel scale from 0 Hz to
    Nyquist, each triangle scaled to the same area), built in float64 and rounded once to float32.
    At 2048/320 (and 32/5) some bands fall between FFT bins and stay empty; they are 0 for both
    signals, clamp to the same floor and add nothing to the distance, so librosa's warning about
    them is silenced. librosa.filters is imported here, not at the top: it costs seconds."""
    import librosa.filters

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Empty filters detected")
        weights = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=bands, dtype=np.float64)
    return torch.from_numpy(weights).float()


def _log_mel(audio: Tensor, sample_rate: int, n_fft: int, bands: int) -> Tensor:
    """[..., N] -> [..., bands, frames] log10 mel magnitudes."""
    flat = audio.float().reshape(-1, audio.shape[-1])
    spectrum = torch.stft(flat, n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft, device=audio.device),
                          center=True, pad_mode="reflect", return_complex=True).abs()
    mel = (mel_filterbank(sample_rate, n_fft, bands).to(audio.device) @ spectrum).clamp(min=MR_CLAMP).log10()
    return mel.reshape(*audio.shape[:-1], *mel.shape[-2:])


def mel_distance_tensor(a: Tensor, b: Tensor, sample_rate: int) -> Tensor:
    """MR as a differentiable tensor, for [..., N] signals of the same shape (training's mel loss)."""
    return sum((_log_mel(a, sample_rate, w, m) - _log_mel(b, sample_rate, w, m)).abs().mean()
               for w, m in zip(MR_WINDOWS, MR_MEL_BANDS))


def mel_distance(a: Tensor, b: Tensor, sample_rate: int) -> float:
    """MR between two [channels, N] signals of the same shape (0 for identical, symmetric)."""
    if a.shape != b.shape:
        raise ValueError(f"mel distance needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[-1] <= max(MR_WINDOWS) // 2:
        raise ValueError(f"mel distance needs more than {max(MR_WINDOWS) // 2} samples, got {a.shape[-1]}")
    return float(mel_distance_tensor(a.detach().cpu(), b.detach().cpu(), sample_rate))


# ---- What a VAE does to the sound: a frame-rate buzz, smeared onsets ----------------------------

COMB_WELCH_SIZE = 1 << 16  # 0.67 Hz bins at 44.1 kHz: 64 of them between two harmonics of 43 Hz
COMB_BAND_HZ = (200.0, 8000.0)


def long_term_spectrum(mono: Tensor, size: int = COMB_WELCH_SIZE) -> Tensor:
    """Welch's power spectrum: Hann windows of `size` (at most the signal's length, a power of two),
    half overlapping, averaged."""
    size = min(size, 1 << int(math.log2(mono.shape[-1])))
    frames = mono.float().unfold(-1, size, size // 2)
    return (torch.fft.rfft(frames * torch.hann_window(size, periodic=False), dim=-1).abs() ** 2).mean(0)


def frame_rate_comb_db(audio: Tensor, sample_rate: int, frame_hz: float) -> float:
    """How far the long-term spectrum of the channel mean stands above its own neighbourhood at the
    harmonics of `frame_hz` (a VAE's latent frame rate) between 200 Hz and 8 kHz: per harmonic, the
    peak of its 3 nearest bins over the median of the half-spacing around it, in dB, averaged.
    Music gives about 1 dB; a decoder that repeats a pattern every latent frame, tens of dB (a buzz).
    The definition of ../shared/tools/vae-probe.py, so the numbers compare."""
    power = long_term_spectrum(audio.float().mean(0)).double()
    size = 2 * (power.shape[-1] - 1)
    bin_hz = sample_rate / size
    half = int(frame_hz / 2 / bin_hz)
    if half < 5:
        raise ValueError(f"{audio.shape[-1]} samples resolve no comb at {frame_hz:.1f} Hz")
    low, high = COMB_BAND_HZ
    heights = []
    for k in range(int(low / frame_hz) + 1, int(high / frame_hz)):
        c = int(round(k * frame_hz / bin_hz))
        neighbours = torch.cat([power[c - half:c - 3], power[c + 4:c + half]])
        heights.append(10 * math.log10(float(power[c - 1:c + 2].max()) / max(float(neighbours.median()), 1e-30)))
    return float(np.mean(heights))


def onset_strength(audio: Tensor, sample_rate: int) -> float:
    """librosa's mean onset strength (spectral flux of the log-mel spectrogram) of the channel mean:
    how much the music's attacks stand out. A decoder that smears the beat lowers it."""
    import librosa.onset

    mono = audio.float().mean(0).cpu().numpy()
    return float(librosa.onset.onset_strength(y=mono, sr=sample_rate).mean())


# ---- FD: Fréchet distance between embedding sets -----------------------------------------------


def embedding_fd(x: np.ndarray, y: np.ndarray) -> float:
    """FD, |mu1 − mu2|² + tr(S1 + S2 − 2 (S1 S2)^½), between two sets of embeddings, [n, dim] each
    (n >= 2), with sample means and covariances.

    With A, B the centred sets divided by √(n − 1), S1 = AᵀA and S2 = BᵀB, and the eigenvalues of
    S1 S2 are the squared singular values of A Bᵀ: tr (S1 S2)^½ is the sum of those singular values.
    No matrix square root at all, so a rank-deficient covariance (fewer clips than the 200
    dimensions, the usual case here) is handled exactly, and A Bᵀ is only as big as the sets. QR
    first (A = Q R) keeps it small for large sets too."""
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"FD needs at least 2 embeddings per set, got {len(x)} and {len(y)}")
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    a = (x - x.mean(0)) / math.sqrt(len(x) - 1)
    b = (y - y.mean(0)) / math.sqrt(len(y) - 1)
    cross = np.linalg.qr(a, mode="r") @ np.linalg.qr(b, mode="r").T
    trace_root = np.linalg.svd(cross, compute_uv=False).sum()
    distance = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.sum(a**2) + np.sum(b**2) - 2 * trace_root
    return max(float(distance), 0.0)  # below 0 only by rounding


def split_half_fd(embeddings: np.ndarray) -> float | None:
    """FD between the even- and odd-numbered clips' embeddings: how far apart two sets of original
    music already are, a rough scale of FD's sampling noise (the halves are smaller than the sets
    the rows compare, so if anything it overstates the noise)."""
    halves = embeddings[0::2], embeddings[1::2]
    return embedding_fd(*halves) if min(map(len, halves)) >= 2 else None


class Embedder:
    """musicnn (MSD) embeddings, [n, 200], of equally long clips, a batch at a time (a batch of 8
    costs about a third as much per clip as one at a time on a CPU)."""

    BATCH = 8

    def __init__(self, device: torch.device, sample_rate: int):
        from ..musicnn import load_musicnn

        self.net, self.device, self.sample_rate = load_musicnn("MSD_musicnn", device=device), device, sample_rate

    def __call__(self, clips: Sequence[Tensor]) -> np.ndarray:
        batches = [torch.stack(list(clips[i : i + self.BATCH])) for i in range(0, len(clips), self.BATCH)]
        with torch.no_grad():
            return np.concatenate([self.net.embedding(b.to(self.device), self.sample_rate).double().cpu().numpy()
                                   for b in batches])


# ---- scores: per case, then per row and task ---------------------------------------------------


@dataclass
class CaseScore:
    mr: float | None
    level_error_db: float | None  # |RMS level of the generated region − the original's there|, dB
    level_jump_db: float | None  # mean over the case's seams
    spectral_distance_db: float | None
    flagged: float | None  # fraction of the case's seams flagged
    seams: int


@dataclass
class Scores:
    """One row on one task, over all its cases. Lower is better everywhere. Per-case values are
    kept (same case order in every row) so that rows can be compared pair by pair."""

    n: int
    mr: float | None
    level_jump_db: float | None
    spectral_distance_db: float | None
    flagged: float | None
    seams: int
    fd: float | None
    per_case: dict[str, list[float]]
    level_error_db: float | None = None  # last, with a default: reports written before it have none

    def to_dict(self) -> dict:
        return asdict(self)


METRICS = ("mr", "level_error_db", "level_jump_db", "spectral_distance_db", "flagged", "fd")
METRIC_NAMES = {"mr": "MR", "level_error_db": "level error dB", "level_jump_db": "level jump dB",
                "spectral_distance_db": "spectral dB", "flagged": "flagged", "fd": "FD"}
# metrics averaged over cases (FD is over the set, flagged over all seams)
CASE_METRICS = METRICS[:5]


def score_case(case: Case, output: Output, sample_rate: int) -> CaseScore:
    """MR and seam measures of one output (its embedding is taken in batches, see `Embedder`)."""
    if output.audio.shape[-1] != case.length:
        raise ValueError(f"{case.task} output has {output.audio.shape[-1]} samples, expected {case.length}")
    mr = level_error = None
    if case.original is not None:
        made, was = output.audio[:, case.start : case.end], case.original[:, case.start : case.end]
        mr = mel_distance(made, was, sample_rate)
        level_error = abs(rms_db(made) - rms_db(was))
    level = spectral = flagged = None
    seams = output.measured
    if seams is None:
        seams = seam_report(output.audio, sample_rate, output.seams, reference=case.song) if output.seams else []
    if seams:
        level = float(np.mean([s.level_jump_db.value for s in seams]))
        spectral = float(np.mean([s.spectral_distance_db.value for s in seams]))
        flagged = float(np.mean([s.flagged for s in seams]))
    return CaseScore(mr, level_error, level, spectral, flagged, len(seams))


def _mean(values: list[float | None]) -> float | None:
    return None if not values or values[0] is None else float(np.mean(values))


def aggregate(scores: list[CaseScore], embeddings: np.ndarray, reference_embeddings: np.ndarray) -> Scores:
    per_case = {m: [getattr(s, m) for s in scores] for m in CASE_METRICS}
    seams = sum(s.seams for s in scores)
    flagged = None if not seams else sum(s.flagged * s.seams for s in scores if s.seams) / seams
    fd = embedding_fd(embeddings, reference_embeddings) if len(scores) >= 2 else None
    return Scores(n=len(scores), mr=_mean(per_case["mr"]), level_error_db=_mean(per_case["level_error_db"]),
                  level_jump_db=_mean(per_case["level_jump_db"]),
                  spectral_distance_db=_mean(per_case["spectral_distance_db"]), flagged=flagged, seams=seams, fd=fd,
                  per_case={m: v for m, v in per_case.items() if v and v[0] is not None})
