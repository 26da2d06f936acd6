"""From a song to an edited song: pick a window, encode it, sample, decode, splice it back.

One function per edit (`infill`, `regenerate`, `continue_song`, `transition`, `generate`, `loop`;
restyle's are in `restyle.py`), on tensors already in memory; each returns an `EditResult` whose
songs equal the input bit for bit outside the edited region and its short seams (crossfades whose
law follows how correlated the two sides are, `splice.py`). No files and no printing here: `excerpts`
reads the excerpts, `api` returns results, the CLI writes them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch
from torch import Tensor

from . import measurement
from .defaults import DEFAULT_STRENGTH
from .errors import BadArgument, UserError
from .levels import LevelShift, working_level
from .losses import audio_loss, latent_loss
from .operators import SampleMask
from .sampling import SAMPLERS, Step, paste_known
from .schedules import RectifiedFlow, sampling_times
from .splice import SeamMetric, cut_window, fade_samples, seam_report, splice
from .timespec import samples_to_frames, whole_frames

# Default step sizes ξ, one per loss term, chosen by the sweeps in docs/guidance.md on held-out
# clips with the shipped demo model. They are per-element sums (latent elements, or audio samples
# for "audio") and apply at REFERENCE_STEPS steps; other step counts scale ξ with the step width,
# so that `steps` changes the accuracy of the sampler, not the strength of the guidance. The latent
# ξ was the paper's 0.03 until the demo model's DiT was retrained: with it, 0.03 overshoots (the
# README's gap 6 dB too loud); 0.005 has the best seams and nearly the lowest level error on 12
# held-out clips, between a gap too loud (0.01) and one that sags (0.003) (docs/guidance.md).
DEFAULT_GUIDANCE = {"latent": 5e-3, "audio": 3e-3}
REFERENCE_STEPS = 50


def default_sampler(schedule) -> str:
    """DDIM for v-prediction models; ping-pong (their own sampler) for rectified-flow models."""
    return "pingpong" if isinstance(schedule, RectifiedFlow) else "ddim"


# ξ: the edits' default is 0.03 (latent) and restyle's 100; a hundred times the largest is no longer a
# step size but a blow-up (1e308 overflows to NaN on the first step, found only after all of them)
MAX_GUIDANCE = 1e4


@dataclass(frozen=True)
class SamplerSettings:
    """Everything that decides the sampled result besides the model and the input.

    `sampler` "auto" and `guidance` None take the model's and the loss space's defaults;
    `for_model` resolves them, so that a sidecar records the values that were used."""

    sampler: str = "auto"
    steps: int = 50
    guidance: float | None = None
    eta: float = 0.0
    loss_space: str = "latent"  # "latent": d on latents; "audio": d on the decoded waveform
    distance: str = "l1"
    consistency: bool = True  # paste the known frames (noised to the step's level) after each step
    seed: int = 0

    def __post_init__(self):
        if self.sampler not in SAMPLERS and self.sampler != "auto":
            raise BadArgument(f"unknown `sampler` {self.sampler!r}", hint=f"use one of auto, {', '.join(SAMPLERS)}")
        if self.guidance is not None and not (math.isfinite(self.guidance) and 0 <= self.guidance <= MAX_GUIDANCE):
            raise BadArgument(f"`guidance` must be a number from 0 to {MAX_GUIDANCE:g}, got {self.guidance:g}")
        if not 0 <= self.eta <= 1:
            raise BadArgument(f"`eta` must be in [0, 1], got {self.eta}")
        if self.loss_space not in ("latent", "audio"):
            raise BadArgument(f"`loss_space` must be 'latent' or 'audio', got {self.loss_space!r}")
        if self.guidance is None:
            object.__setattr__(self, "guidance", DEFAULT_GUIDANCE[self.loss_space])

    def for_model(self, model) -> "SamplerSettings":
        return replace(self, sampler=default_sampler(model.schedule)) if self.sampler == "auto" else self

    def to_dict(self) -> dict:
        return asdict(self)


def step_size(xi: float) -> Callable[[Tensor, Tensor], Tensor]:
    """ξ for a step t → s: ξ · (t − s) · REFERENCE_STEPS. Each step moves x by about ξσ²g, so a
    constant ξ would guide 50 steps 2.5× harder than 20; scaled by the step's width, the total
    push over the trajectory is the same at any step count (and equals the paper's at 50 steps)."""
    return lambda t, s: xi * (t - s) * REFERENCE_STEPS


@dataclass(frozen=True)
class Window:
    """The stretch of the song the model sees, and the part of it that changes.

    `at`/`length` are samples of the (possibly extended) song; `length` is a whole number of
    latent frames. [edit_start, edit_end) is the region that changes; `free` the latent frames the
    sampler may change (the smallest frame range covering the edit)."""

    at: int
    length: int
    edit_start: int
    edit_end: int
    free: tuple[int, int]
    level: dict | None = None  # the level shift the window was sampled at (levels.py), if any

    def to_dict(self, sample_rate: int) -> dict:
        return {
            "window_start_s": self.at / sample_rate,
            "window_seconds": self.length / sample_rate,
            "edit_start_s": self.edit_start / sample_rate,
            "edit_end_s": self.edit_end / sample_rate,
            "free_frames": list(self.free),
            **({"level_shift": self.level} if self.level is not None else {}),
        }


@dataclass
class EditResult:
    songs: list[Tensor]  # one [channels, samples] song per variation
    windows: list[Window]
    seams: list[list[SeamMetric]]  # per variation
    guidance_loss: float | None = None  # d(y, A(x̂0)) at the last guided step, summed over variations
    level_gain_db: list[float] | None = None  # restyle's level match, per variation


Callback = Callable[[Step], None]


def plan_window(song_length: int, edit_start: int, edit_end: int, hop: int, max_length: int,
                context: int | None = None, sample_rate: int = 44100, min_context: int | None = None) -> Window:
    """Centre the largest window the model takes (or `context` samples a side) on the edit.

    Context missing on one side (near the song's start or end) goes to the other side. The window
    length is rounded up to whole latent frames, growing leftward first; past the song's end it is
    padded with silence (a continuation's free frames lie there). A `context` below `min_context`
    (default one latent frame; callers pass `context_floor(model)`) is rounded up to it: with less,
    no latent frame would be known and the edit would silently ignore the song around it."""
    floor = hop if min_context is None else min_context
    gap = edit_end - edit_start
    if gap <= 0:
        raise ValueError(f"the edit region [{edit_start}, {edit_end}) is empty")  # the API refuses it first
    if gap > max_length - 2 * floor:
        raise UserError(f"the region is {gap / sample_rate:.2f} s long; this model generates at most "
                        f"{(max_length - 2 * floor) / sample_rate:.2f} s with context around it",
                        hint="edit a shorter region, or several regions one after another")
    budget = max_length - gap if context is None else min(max_length - gap, 2 * max(context, floor))
    before, after = edit_start, max(song_length - edit_end, 0)
    left = min(budget // 2, before)
    right = min(budget - left, after)
    left = min(budget - right, before)
    span = left + gap + right
    length = whole_frames(span, hop) * hop
    grow_left = min(length - span, edit_start - left)
    at = edit_start - left - grow_left
    return Window(at=at, length=length, edit_start=edit_start, edit_end=edit_end,
                  free=samples_to_frames(edit_start - at, edit_end - at, hop))


def _encode_window(model, songs: Tensor, window: Window, seed: int, hide: bool = False
                   ) -> tuple[Tensor, Tensor, torch.Generator, Tensor, LevelShift | None]:
    """The window's audio [B, channels, length] at the model's working level and its latents x̄,
    the seeded generator with the start noise drawn from it (the noise is drawn first, so a seed
    fixes the start sample), and the level shift to undo on the decoded window (None: unshifted).

    With `hide`, the edited region is muted before encoding: an infill must not depend on what the
    gap held (and an evaluation must not let the held-out audio leak into the known frames)."""
    device = model.device
    audio = torch.stack([cut_window(song, window.at, window.length) for song in songs]).to(device)
    measured = (_known_audio(window, songs.shape[-1]) if hide else _in_song(window, songs.shape[-1])).known
    shift = working_level(audio, measured.to(device))
    if shift is not None:
        audio = shift.apply(audio)
    encoded = audio
    if hide:
        encoded = audio.clone()
        encoded[..., window.edit_start - window.at : window.edit_end - window.at] = 0
    with torch.no_grad():
        x_bar = model.encode(encoded)
    generator = torch.Generator(device).manual_seed(seed)
    noise = torch.randn(x_bar.shape, generator=generator, device=device, dtype=x_bar.dtype)
    return audio, x_bar, generator, noise, shift


def context_floor(model) -> int:
    """The least context a side (samples) that leaves a known latent frame beyond the frames that
    the encoder carries across the boundary."""
    return (model.encoder_leak_frames() + 1) * model.downsampling_ratio


def _known_audio(window: Window, song_length: int) -> SampleMask:
    """The window's samples that the original has and the edit keeps: the audio loss measures these."""
    known = _in_song(window, song_length).known.clone()
    known[window.edit_start - window.at : window.edit_end - window.at] = False
    return SampleMask(known)


def _in_song(window: Window, song_length: int) -> SampleMask:
    """The window's samples that the original has (not the silence padded past the song's end)."""
    inside = torch.ones(window.length, dtype=torch.bool)
    inside[max(song_length - window.at, 0) :] = False
    return SampleMask(inside)


@dataclass(frozen=True)
class Start:
    """How the window's x_T is made.

    "noise": the free frames are noise (infill, continuation); "mix": they are `strength` noise
    and 1 − strength original (regeneration, transition) — in both the known frames are y noised
    to t = 1; "sdedit": the whole window noised to t = `strength`, and sampling starts there
    (restyle: the result keeps the input's timing)."""

    kind: str = "noise"
    strength: float = 1.0


# A loss builder: given the problem (mask, y), the window's audio and x̄, the guidance loss on x̂0
# and its step size ξ (restyle's composite carries its own step sizes inside, so its ξ is 1).
LossBuilder = Callable[[measurement.EditProblem, Tensor, Tensor], tuple[Callable[[Tensor], Tensor] | None, float]]


@dataclass(frozen=True)
class Extent:
    """How much of a window holds audio, for a model trained on variable lengths (Stable Audio 3).

    Its reference conditions on `seconds_total`, the audio's length from the start of what the
    model sees, sizes the latent sequence to that plus `headroom_seconds` (6 s) which it generates
    freely and drops, and shifts its time grid by the audio's frames (`use_effective_length_for_schedule`).
    `frames`: the window's latent frames that hold audio (the rest is headroom)."""

    seconds_total: float
    frames: int


def fit_to_audio(model, window: Window, audio_end: int) -> tuple[Window, Extent | None]:
    """For a variable-length model, the window grown by the headroom where the audio (`audio_end`
    samples, in the window's coordinates) ends inside it, up to the model's longest window, and its
    Extent; other models' windows unchanged, and None."""
    if not getattr(model, "variable_length", False):
        return window, None
    hop, sr = model.downsampling_ratio, model.sample_rate
    remaining = max(audio_end - window.at, 0)
    frames = window.length // hop
    audio_frames = min(math.ceil(remaining / hop), frames)
    if audio_end <= window.at + window.length:  # the audio ends in the window: headroom after it
        wanted = min(audio_frames + int(model.headroom_seconds * sr / hop), model.max_frames)
        frames = max(frames, wanted)
        window = replace(window, length=frames * hop)
    return window, Extent(remaining / sr, audio_frames)


def sample_window(model, songs: Tensor, window: Window, settings: SamplerSettings, *, start: Start = Start(),
                  loss: LossBuilder | None = None, seconds_total: float | None = None, offset: int = 0,
                  callback: Callback | None = None) -> tuple[Tensor, float | None, Window]:
    """Sample the window's free frames for a batch of songs [B, channels, N] (the variations).
    `songs` may be an excerpt that starts `offset` samples into the song (the timing conditioning
    counts from the song's start; `seconds_total` is the song's length). `loss` replaces the edit's
    own d(y, A(x̂0)). A variable-length model's window grows by its headroom where the song ends in
    it (`fit_to_audio`).

    Returns the decoded windows [B, channels, window.length] at the songs' own level, the guidance
    loss d(y, A(x̂0)) at the last guided step (summed over the batch; None without guidance), and
    the window (as sampled, with the level shift it was sampled at: levels.py)."""
    settings = settings.for_model(model)
    hide = start.kind == "noise"
    song_end = songs.shape[-1] if seconds_total is None else round(seconds_total * model.sample_rate) - offset
    window, extent = fit_to_audio(model, window, song_end)
    audio_frames = None  # all of the window's (the known frames' end, the time grid's length)
    if extent is not None:
        seconds_total, audio_frames = extent.seconds_total, extent.frames
    audio, x_bar, generator, noise, shift = _encode_window(model, songs, window, settings.seed, hide=hide)
    problem, t_max = _problem(model, x_bar, window, noise, start, audio_frames)
    d, xi = (loss or _edit_loss(model, settings, window, songs.shape[-1], hide))(problem, audio, x_bar)
    known = settings.consistency and problem.mask.n_known
    consistency = paste_known(problem.mask, problem.y, model.schedule) if known else None
    seconds_start = (offset + window.at) / model.sample_rate
    # A model trained with an inpainting condition (Stable Audio 3) is also told which latent frames
    # are known and what they hold; the guidance then works on top of the model's own inpainting.
    condition = {"inpaint": _inpaint_condition(problem.mask, x_bar)} if getattr(model, "has_inpainting", False) else {}

    def denoiser(x: Tensor, t: Tensor) -> Tensor:
        return model.denoise(x, t, seconds_start=seconds_start, seconds_total=seconds_total, **condition)

    x0, last_loss = _sample(denoiser, model.schedule, problem.x_start, settings, generator, callback,
                            loss=d, guidance=xi if d is not None else 0.0, t_max=t_max, consistency=consistency,
                            frames=audio_frames)
    with torch.no_grad():
        decoded = model.decode(x0).float().cpu()
    if shift is None:
        return decoded, last_loss, window
    return shift.undo(decoded), last_loss, replace(window, level=shift.to_dict())


def _inpaint_condition(mask, x_bar: Tensor) -> tuple[Tensor, Tensor]:
    """(mask [B, 1, T], 1 on the known frames; the known latents, zero elsewhere), the reference's
    `inpaint_mask` and `inpaint_masked_input`."""
    known = mask.known.to(device=x_bar.device, dtype=x_bar.dtype).expand(x_bar.shape[0], 1, -1)
    return known, x_bar * known


def _problem(model, x_bar: Tensor, window: Window, noise: Tensor, start: Start,
             known_until: int | None = None) -> tuple[measurement.EditProblem, float]:
    margin, schedule = model.encoder_leak_frames(), model.schedule
    if start.kind == "noise":
        return measurement.from_noise(x_bar, window.free, noise, schedule, margin, known_until), 1.0
    if start.kind == "mix":
        return measurement.from_mix(x_bar, window.free, noise, schedule, start.strength, margin, known_until), 1.0
    mask = measurement.free_range_mask(x_bar.shape[-1], window.free, margin, known_until)
    t = torch.tensor(start.strength, dtype=torch.float64)
    x_start = schedule.alpha(t).to(x_bar) * x_bar + schedule.sigma(t).to(x_bar) * noise
    return measurement.EditProblem(mask, mask(x_bar), x_start), start.strength


def _edit_loss(model, settings: SamplerSettings, window: Window, song_length: int, hidden: bool) -> LossBuilder:
    """d(y, A(x̂0)) on latents, or on the decoded audio of the window's known samples."""
    def build(problem: measurement.EditProblem, audio: Tensor, x_bar: Tensor):
        if settings.loss_space == "latent":
            return latent_loss(problem.mask, problem.y, settings.distance), settings.guidance
        # The target is the VAE's own rendering of the known audio, not the original: a decoder
        # that is not phase-faithful cannot reach the original's waveform, and an L1 toward an
        # unreachable waveform is smallest for silence, which dug a hole into the gap (docs/guidance.md).
        # For a phase-faithful VAE the two targets agree.
        mask = _known_audio(window, song_length)
        with torch.no_grad():  # x̄ is that encoding already, unless the gap was muted for it (infill)
            rendered = model.decode(model.encode(audio) if hidden else x_bar)
        return audio_loss(model.decode, mask, mask(rendered), settings.distance), settings.guidance

    return build


def _sample(denoiser, schedule, x_start: Tensor, settings: SamplerSettings, generator: torch.Generator,
            callback: Callback | None, *, guidance: float = 0.0, t_max: float = 1.0, loss=None,
            consistency=None, frames: int | None = None) -> tuple[Tensor, float | None]:
    """Run the settings' sampler on the model's own time grid (for a grid that depends on the
    length, of `frames`, default all of x's); returns x0 and the last guidance loss."""
    extra = {"eta": settings.eta} if settings.sampler == "ddim" else {}
    frames = x_start.shape[-1] if frames is None else frames
    return SAMPLERS[settings.sampler](denoiser, schedule, x_start,
                                      sampling_times(schedule, settings.steps, t_max, frames=frames),
                                      loss=loss, guidance=step_size(guidance) if guidance else 0.0,
                                      consistency=consistency, generator=generator, callback=callback, **extra)


def splice_all(songs: Tensor, decoded: Tensor, window: Window, sample_rate: int) -> tuple[Tensor, list[int]]:
    spliced = [splice(song, audio, window.at, window.edit_start, window.edit_end, fade_samples(sample_rate))
               for song, audio in zip(songs, decoded)]
    return torch.stack([s.audio for s in spliced]), spliced[0].seams


def check_edit_region(song: Tensor, start: int, end: int) -> None:
    """0 <= start < end <= the song's length, in samples. The API checks the user's times once, at
    its boundary (`excerpts.check_region`); here a bad region is a caller's bug."""
    if not 0 <= start < end <= song.shape[-1]:
        raise ValueError(f"region [{start}, {end}) is not inside the song's {song.shape[-1]} samples")


def infill(model, song: Tensor, start: int, end: int, settings: SamplerSettings, *, variations: int = 1,
           context: int | None = None, strength: float | None = None, offset: int = 0, song_length: int | None = None,
           callback: Callback | None = None) -> EditResult:
    """Replace song[:, start:end] by new music that fits what comes before and after it.
    With `strength` this is regeneration: the new music starts from a mix with the old.

    `song` may be an excerpt, `offset` samples into a song of `song_length`: as long as it holds
    a model window on each side of the edit (or reaches the song's ends), the result is the same."""
    check_edit_region(song, start, end)
    sr, hop = model.sample_rate, model.downsampling_ratio
    window = plan_window(song.shape[-1], start, end, hop, model.max_frames * hop, context, sr, context_floor(model))
    songs = song[None].expand(variations, -1, -1)
    total = song.shape[-1] if song_length is None else song_length
    start_from = Start() if strength is None else Start("mix", strength)
    decoded, loss, window = sample_window(model, songs, window, settings, start=start_from, seconds_total=total / sr,
                                  offset=offset, callback=callback)
    edited, seams = splice_all(songs, decoded, window, sr)
    return edit_result(edited, [window], seams, song, sr, loss)


def edit_result(songs: Tensor, windows: list[Window], seams: list[int], reference: Tensor, sample_rate: int,
            loss: float | None) -> EditResult:
    reports = [seam_report(s, sample_rate, seams, reference=reference) if seams else [] for s in songs]
    return EditResult(list(songs), windows, reports, loss)


def regenerate(model, song: Tensor, start: int, end: int, settings: SamplerSettings, *, strength: float = DEFAULT_STRENGTH,
               **kwargs) -> EditResult:
    return infill(model, song, start, end, settings, strength=strength, **kwargs)


def run_callback(callback: Callback | None, run: int, runs: int) -> Callback | None:
    """The callback of sampling run `run` of `runs`: its steps say which run they belong to, so
    that a progress total comes from the edit's own plan."""
    if callback is None:
        return None
    return lambda step: callback(replace(step, run=run, runs=runs))


def continue_song(model, song: Tensor, seconds: float, settings: SamplerSettings, *, variations: int = 1,
                  context: int | None = None, offset: int = 0, callback: Callback | None = None) -> EditResult:
    """Append `seconds` of music. Beyond half a model window it proceeds in chunks of at most half a
    window, each guided by the audio before it (the song's, then its own), with its own seed.
    `song` may be the song's last samples (at least a model window), `offset` samples into it."""
    sr, hop = model.sample_rate, model.downsampling_ratio
    max_length = model.max_frames * hop
    total_new = round(seconds * sr)  # `seconds` is checked by the API
    final_length = song.shape[-1] + total_new
    songs = song[None].expand(variations, -1, -1)
    windows, seams, loss = [], [], None
    runs = whole_frames(total_new, max_length // 2)  # each run adds at most half a window
    while songs.shape[-1] < final_length:
        have = songs.shape[-1]
        new = min(final_length - have, max_length // 2)
        # a multiple of the hop whenever the model's length is what limits it, so the window fits
        ctx = min(max_length - whole_frames(new, hop) * hop, have,
                  max_length if context is None else max(context, context_floor(model)))
        length = whole_frames(ctx + new, hop) * hop
        window = Window(at=have - ctx, length=length, edit_start=have, edit_end=have + new, free=(ctx // hop, length // hop))
        chunk = SamplerSettings(**{**settings.to_dict(), "seed": settings.seed + len(windows)})
        decoded, loss, window = sample_window(model, songs, window, chunk, seconds_total=(offset + final_length) / sr,
                                      offset=offset, callback=run_callback(callback, len(windows), runs))
        songs, chunk_seams = splice_all(songs, decoded, window, sr)
        windows.append(window)
        seams += chunk_seams
    return edit_result(songs, windows, seams, song, sr, loss)


def transition(model, first: Tensor, second: Tensor, overlap: int, settings: SamplerSettings, *,
               strength: float = DEFAULT_STRENGTH, **kwargs) -> EditResult:
    """Join two tracks: their constant-power crossfade over `overlap` samples is the target, and
    regenerating the overlap turns the crossfade into a transition."""
    joined = measurement.join_with_crossfade(first, second, overlap)  # refuses an overlap longer than a track
    start = first.shape[-1] - overlap
    return infill(model, joined, start, start + overlap, settings, strength=strength, **kwargs)


def generate(model, seconds: float, settings: SamplerSettings, *, variations: int = 1,
             callback: Callback | None = None) -> EditResult:
    """Unconditional generation: no measurement, the model's prior alone."""
    sr, hop = model.sample_rate, model.downsampling_ratio
    samples = round(seconds * sr)
    max_length = model.max_frames * hop
    if not 0 < samples <= max_length:
        raise BadArgument(f"`seconds` must be in (0, {max_length / sr:.2f}] for this model, got {seconds}")
    frames = whole_frames(samples, hop)
    window = Window(0, frames * hop, 0, samples, (0, frames))
    sampled, extent = fit_to_audio(model, window, samples)
    settings = settings.for_model(model)
    device = model.device
    generator = torch.Generator(device).manual_seed(settings.seed)
    noise = torch.randn((variations, model.latent_channels, sampled.length // hop), generator=generator, device=device)

    def denoiser(x: Tensor, t: Tensor) -> Tensor:
        return model.denoise(x, t, seconds_start=0.0, seconds_total=seconds)

    x0, _ = _sample(denoiser, model.schedule, noise, settings, generator, callback,
                    frames=None if extent is None else extent.frames)
    with torch.no_grad():
        audio = model.decode(x0).float().cpu()[..., :samples]
    return EditResult(list(audio), [window], [[] for _ in audio], None)


# A loop shorter than a beat at 120 bpm has no music to repeat, and its seams could not be measured
# against the song (a seam's window is 2048 samples on each side).
MIN_LOOP_SECONDS = 0.5


def loop(model, region: Tensor, regenerate: int, settings: SamplerSettings, *, strength: float = DEFAULT_STRENGTH,
         variations: int = 1, context: int | None = None, reference: Tensor | None = None,
         callback: Callback | None = None) -> EditResult:
    """A seamless loop of `region` [channels, L]: its last `regenerate` samples are regenerated so
    that they flow back into its start, a transition from the region's end to its start.

    The region is laid twice end to end and the end of the first copy is regenerated with the
    second copy's start as its right context. The loop is then read from the second copy's start
    up to a point halfway into the untouched stretch, and from there on from the first copy: it
    keeps the fades of both seams (the first `fade` samples of its start carry the loop point's
    crossfade) and joins untouched audio to itself where it wraps. The seams are measured on the
    loop played twice, against `reference` (default: the region): where the regenerated stretch
    begins, and the loop point."""
    length = region.shape[-1]
    if length < MIN_LOOP_SECONDS * model.sample_rate:
        raise ValueError(f"a loop must be at least {MIN_LOOP_SECONDS:g} s long, got {length / model.sample_rate:.4g} s")
    if not 0 < regenerate <= length // 2:
        raise ValueError("the regenerated end must be positive and at most half the loop")  # checked by the API
    doubled = torch.cat([region, region], dim=-1)
    part = infill(model, doubled, length - regenerate, length, settings, variations=variations, context=context,
                  strength=strength, callback=callback)
    split = (length - regenerate) // 2  # inside the untouched stretch, past both seams' fades
    loops = [torch.cat([song[:, length : length + split], song[:, split:length]], dim=-1) for song in part.songs]
    seams = [length - regenerate, length]
    reference = region if reference is None else reference
    reports = [seam_report(torch.cat([z, z], dim=-1), model.sample_rate, seams, reference=reference) for z in loops]
    return EditResult(loops, part.windows, reports, part.guidance_loss)
