"""Restyle (the paper's embedding and classifier guidance): steer a region of any length toward
a style, window by window, keeping its timing, its seams and its level."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from . import measurement
from .edit import (Callback, EditResult, SamplerSettings, Start, check_edit_region, edit_result, splice_all,
                   context_floor, plan_window, run_callback, sample_window)
from .losses import latent_loss
from .splice import cut_window
from .timespec import whole_frames

from .defaults import DEFAULT_CONTEXT_GUIDANCE, DEFAULT_KEEP, RESTYLE_STRENGTH


def restyle(model, song: Tensor, start: int, end: int, settings: SamplerSettings, *,
            style_loss: Callable[[Tensor], Tensor], structure: Callable[[Tensor], Tensor] | None = None,
            keep: float = DEFAULT_KEEP, context_guidance: float | None = None, strength: float = RESTYLE_STRENGTH,
            match_level: bool = True, variations: int = 1, context: int | None = None, offset: int = 0,
            song_length: int | None = None, callback: Callback | None = None) -> EditResult:
    """Steer song[:, start:end] toward a style (paper's Table 2, embedding/classifier guidance).

    SDEdit start: the window's latents noised to t = `strength`, so the result keeps the input's
    timing. Each guidance term has its own step size, because their gradients differ by orders of
    magnitude: ξ_style · style_loss(audio) on the restyled region's decoded audio (ξ_style is
    `settings.guidance`), + keep · |structure(audio) − structure(input)|₁ (summed), + ξ_context ·
    the latent L1 on the context frames, which keeps the seams in place (an infill's latent ξ).

    With `match_level`, each decoded window gets one gain (at most ±MAX_LEVEL_MATCH_DB) that gives
    the restyled region the input's RMS level there: a restyle changes the style, not the mix
    level, and a VAE that loses level on its round trip (the demo's loses ~4 dB) would otherwise
    make every restyle quieter. The gains are in `EditResult.level_gain_db`."""
    songs = song[None].expand(variations, -1, -1) if song.ndim == 2 else song  # or one song per variation
    check_edit_region(songs[0], start, end)  # strength and keep: checked by the API
    xi_context = DEFAULT_CONTEXT_GUIDANCE if context_guidance is None else context_guidance
    sr, hop = model.sample_rate, model.downsampling_ratio
    length = songs.shape[-1]
    window = plan_window(length, start, end, hop, model.max_frames * hop, context, sr, context_floor(model))
    a, b = window.edit_start - window.at, window.edit_end - window.at

    def composite(problem: measurement.EditProblem, audio: Tensor, x_bar: Tensor):
        target = None if structure is None or not keep else structure(audio[..., a:b]).detach()
        context_loss = latent_loss(problem.mask, problem.y, settings.distance) if problem.mask.n_known else None

        def loss(x0: Tensor) -> Tensor:
            region = model.decode(x0)[..., a:b]
            total = settings.guidance * style_loss(region)
            if target is not None:
                total = total + keep * (structure(region) - target).abs().sum()
            if context_loss is not None:
                total = total + xi_context * context_loss(x0)
            return total

        return loss, 1.0  # the step sizes live inside the loss (still scaled by step width)

    total = length if song_length is None else song_length
    decoded, last_loss, window = sample_window(model, songs, window, settings, start=Start("sdedit", strength), loss=composite,
                                       seconds_total=total / sr, offset=offset, callback=callback)
    original = torch.stack([cut_window(song, window.at, window.length) for song in songs]).float()
    gains = None
    if match_level:
        decoded, gains = _match_level(decoded, original, a, b)
    edited, seams = splice_all(songs, decoded, window, sr)
    result = edit_result(edited, [window], seams, songs[0], sr, last_loss)
    result.level_gain_db = gains
    return result


def restyle_chunks(model, samples: int) -> list[int]:
    """Where a restyle of `samples` samples is cut into windows: one window when it fits with
    context around it, else equal parts of at most half the model's window."""
    hop = model.downsampling_ratio
    window = model.max_frames * hop
    if samples <= window - 2 * context_floor(model) - 2 * hop:
        return [0, samples]
    count = whole_frames(samples, window // 2)
    return [round(k * samples / count) for k in range(count + 1)]


def restyle_song(model, song: Tensor, start: int, end: int, settings: SamplerSettings, *, variations: int = 1,
                 callback: Callback | None = None, **kwargs) -> EditResult:
    """Restyle song[:, start:end] of any length. Past one model window it goes in windows of at
    most half the model's window, in order, each with its own seed. Each window's left context is
    the restyled audio before it: the context term and the pasted known frames make it continue
    that audio, as a continuation does, so that the style carries across windows and no seam
    opens between them. `level_gain_db` holds the mean gain over the windows, per variation."""
    cuts = [start + c for c in restyle_chunks(model, end - start)]
    songs = song[None].expand(variations, -1, -1)
    windows, positions, gains, loss = [], set(), [], None
    for k, (a, b) in enumerate(zip(cuts, cuts[1:])):
        part = restyle(model, songs, a, b, replace(settings, seed=settings.seed + k), variations=variations,
                       callback=run_callback(callback, k, len(cuts) - 1), **kwargs)
        songs = torch.stack(part.songs)
        windows += part.windows
        # a window's end seam lies inside the next window's new audio, unless it is the last window
        last = k == len(cuts) - 2
        positions |= {seam.position for seam in part.seams[0] if last or seam.position < (a + b) // 2}
        gains.append(part.level_gain_db)
        loss = part.guidance_loss
    result = edit_result(songs, windows, sorted(positions), song, model.sample_rate, loss)
    if all(gains):
        result.level_gain_db = [sum(g[i] for g in gains) / len(gains) for i in range(variations)]
    return result


MAX_LEVEL_MATCH_DB = 12.0
PEAK_CEILING = 0.99  # a level match never lifts the region's true peak past this (or the original's, if higher)
LIMITER_HOLD = 220  # samples (5 ms at 44.1 kHz) each side over which the limiter's gain falls and recovers
OVERSAMPLING = 4  # true peaks: the peaks between samples, found at 4x the rate (as ITU-R BS.1770)


def _match_level(decoded: Tensor, original: Tensor, a: int, b: int) -> tuple[Tensor, list[float]]:
    """Scale each decoded window [B, channels, n] so that its [a, b) has the original's RMS there
    (never by more than ±MAX_LEVEL_MATCH_DB), then limit the true peaks that this lifts past the
    ceiling. A limiter, not a smaller gain: one spike in the decoded audio must not pull the whole
    region down (it once left a region 10 dB below the original, with both seams flagged)."""
    def rms(x: Tensor) -> Tensor:
        return x[..., a:b].double().square().mean(dim=(1, 2)).sqrt()

    ratio = rms(original) / rms(decoded).clamp(min=1e-9)
    gain_db = (20 * ratio.clamp(min=1e-9).log10()).clamp(-MAX_LEVEL_MATCH_DB, MAX_LEVEL_MATCH_DB)
    scaled = decoded * (10 ** (gain_db / 20)).to(decoded.dtype)[:, None, None]
    ceiling = max(PEAK_CEILING, float(true_peak(original[..., a:b]).max()))
    return limit_true_peaks(scaled, ceiling), [float(g) for g in gain_db]


def true_peak(audio: Tensor) -> Tensor:
    """|audio| [..., channels, n] at its largest between each sample and the next, per sample
    (max over channels) [..., n]: the peak a DAC's reconstruction reaches, from 4x oversampling."""
    import numpy as np
    import soxr

    flat = audio.detach().double().reshape(-1, audio.shape[-1]).numpy()
    up = np.stack([soxr.resample(channel, 1, OVERSAMPLING, quality="VHQ") for channel in flat])
    n = audio.shape[-1]
    up = np.abs(up[:, : n * OVERSAMPLING]).reshape(len(flat), n, OVERSAMPLING).max(axis=-1)
    peaks = np.maximum(up, np.abs(flat))
    return torch.from_numpy(peaks).reshape(*audio.shape[:-2], audio.shape[-2], n).amax(dim=-2)


def limit_true_peaks(audio: Tensor, ceiling: float) -> Tensor:
    """`audio` [B, channels, n] with a smooth gain that keeps every true peak at or below `ceiling`
    and is exactly 1 away from the peaks. The gain each sample needs is min-filtered, then
    averaged, over the same 2·LIMITER_HOLD + 1 samples: the average of values that are each at
    most the need at the centre is at most that need, so no peak is missed, and the gain moves
    over 5 ms instead of jumping."""
    width = 2 * LIMITER_HOLD + 1
    for _ in range(4):  # the gain reshapes the waveform between samples a little: a second pass takes the rest
        peaks = true_peak(audio)
        if float(peaks.max()) <= ceiling:
            break
        need = (ceiling / peaks.clamp(min=1e-12)).clamp(max=1.0)[:, None]  # [B, 1, n]
        held = -torch.nn.functional.max_pool1d(-need, width, stride=1, padding=LIMITER_HOLD)
        # edges padded with the edge's own held gain, which is at most the need of every sample it covers
        padded = torch.nn.functional.pad(held, (LIMITER_HOLD, LIMITER_HOLD), mode="replicate")
        audio = audio * torch.nn.functional.avg_pool1d(padded, width, stride=1).to(audio.dtype)
    return audio


# ---- what restyle steers toward, and what it reports -----------------------------------------------


@dataclass(frozen=True)
class Style:
    """What restyle steers toward, and how hard."""

    like: list[Path]
    toward: list[str]
    away_from: list[str]
    tagger: str
    strength: float
    keep: float
    match_level: bool


def style_loss(net, style: Style, model) -> Callable:
    import torch

    from . import losses
    from .audio import check_not_silent, load_audio

    sr = model.sample_rate
    terms = []
    if style.like:
        references = [load_audio(clip, sr, model.audio_channels)[0] for clip in style.like]
        for clip, reference in zip(style.like, references):
            check_not_silent(reference, what=str(clip))
        with torch.no_grad():
            target = torch.stack([net.embedding(r[None].to(model.device), sr)[0] for r in references]).mean(dim=0)
        terms.append(losses.embedding_distance(net, target, sr))
    if style.toward or style.away_from:
        terms.append(losses.tag_bce(net, [net.tag_index(t) for t in style.toward],
                                    [net.tag_index(t) for t in style.away_from], sr))
    return lambda audio: sum(term(audio) for term in terms)


REPORTED_TAGS = 5  # with --like only, the original's top tags are the ones followed window by window


def tags_by_window(net, style: Style, excerpt, result, sample_rate: int) -> list[list[dict]]:
    """Per variation, per window: the tagger's probabilities of the steered tags (or, with --like
    only, of the original's top tags) before and after, on the window's edited stretch."""
    import torch

    def probs(audio) -> torch.Tensor:
        with torch.no_grad():
            return net.tag_probs(audio[None].to(net_device(net)), sample_rate).mean(dim=1)[0].cpu()

    names = [*style.toward, *style.away_from]
    if not names:
        whole = probs(excerpt)
        names = [net.config.tags[i] for i in whole.argsort(descending=True)[:REPORTED_TAGS]]
    indices = [net.tag_index(name) for name in names]
    reports = []
    for audio in result.songs:
        rows = []
        for w in result.windows:
            a, b = w.edit_start, w.edit_end
            before, after = probs(excerpt[:, a:b]), probs(audio[:, a:b])
            rows.append({"start_s": a / sample_rate, "end_s": b / sample_rate,
                         "before": {n: round(float(before[i]), 4) for n, i in zip(names, indices)},
                         "after": {n: round(float(after[i]), 4) for n, i in zip(names, indices)}})
        reports.append(rows)
    return reports


def net_device(net):
    """The torch device the tagger sits on (musicnn has no device property of its own)."""
    return next(net.parameters()).device
