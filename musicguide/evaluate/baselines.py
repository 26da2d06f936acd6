"""The rows that need no sampling: plain baselines built from the clip's own audio (silence, copy
of the neighbouring audio, linear crossfade, loop, plain crossfade), the untouched original, and
the VAE round trip (the ceiling the VAE sets)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..splice import splice
from .clips import TASKS, Case, Method, Output


def nominal_seams(case: Case, fade: int) -> list[int]:
    """Where a splice with full fades reports its seams: the middle of each fade."""
    seams = [case.start - fade // 2] if case.start > 0 else []
    return seams + ([case.end + fade // 2] if case.end < case.length else [])


def _spliced(case: Case, window: Tensor, at: int, fade: int) -> Output:
    done = splice(case.song, window, at, case.start, case.end, fade)
    return Output(done.audio, done.seams)


# Baselines use only audio the clip has. Where their source would need audio from before the clip
# starts (or after it ends), the window starts (ends) at the region and splice's fade shrinks to a
# hard cut: that is what the baseline can do with this clip, and the seam metrics show it.


def silence_fill(case: Case, fade: int) -> Output:
    at = max(case.start - fade, 0)
    stop = min(case.end + fade, case.length)
    return _spliced(case, case.song.new_zeros(case.song.shape[0], stop - at), at, fade)


def copy_fill(case: Case, fade: int) -> Output:
    """The stretch of the same length just before the region, played again in it."""
    shift = case.end - case.start
    if case.start < shift:
        raise ValueError("copying needs as much audio before the region as the region is long")
    at, stop = max(case.start - fade, shift), min(case.end + fade, case.song.shape[-1])
    return _spliced(case, case.song[:, at - shift : stop - shift], at, fade)


def linear_crossfade_fill(case: Case, fade: int) -> Output:
    """Across the region, a linear crossfade from the audio before it (shifted forward by the region's
    length) to the audio after it (shifted back)."""
    shift, n = case.end - case.start, case.song.shape[-1]
    at, stop = max(case.start - fade, shift), min(case.end + fade, n - shift)
    if case.start < shift or stop < case.end:
        raise ValueError("a crossfade across the region needs a region's length of audio on both sides")
    t = torch.arange(at, stop)
    weight = ((t - case.start + 0.5) / shift).clamp(0, 1).to(case.song.dtype)
    window = (1 - weight) * case.song[:, t - shift] + weight * case.song[:, t + shift]
    return _spliced(case, window, at, fade)


def loop_fill(case: Case, fade: int) -> Output:
    """Continuation by repeating the whole context (the song so far) until the clip's end."""
    period = case.song.shape[-1]
    t = torch.arange(case.start, case.end)
    return _spliced(case, case.song[:, (t - case.start) % period], case.start, fade)


def plain_crossfade(case: Case, fade: int) -> Output:
    """The transition's target itself: the two clips' constant-power crossfade."""
    return Output(case.song, nominal_seams(case, fade))


def unedited(case: Case, fade: int) -> Output:
    """The original clip, measured at the same boundaries: what no discontinuity looks like."""
    return Output(case.original, nominal_seams(case, fade))


Fill = Callable[[Case, int], Output]

# name -> {task: fill}. The linear crossfade and the copy are the infill baselines of the issue; the
# loop is continuation's "copy", the plain crossfade the transition's.
BASELINES: dict[str, dict[str, Fill]] = {
    "silence": {task: silence_fill for task in TASKS},
    "linear crossfade": {"infill": linear_crossfade_fill, "regeneration": linear_crossfade_fill},
    "copy neighbour": {"infill": copy_fill, "regeneration": copy_fill},
    "loop context": {"continuation": loop_fill},
    "plain crossfade": {"transition": plain_crossfade},
}


def with_fade(fill: Fill, fade: int) -> Method:
    return lambda case: fill(case, fade)


def round_trip(model, audio: Tensor) -> Tensor:
    """decode(encode(audio)), padded to whole latent frames and cut back."""
    hop, n = model.downsampling_ratio, audio.shape[-1]
    padded = torch.nn.functional.pad(audio, (0, -n % hop))[None].to(model.device)
    with torch.no_grad():
        return model.decode(model.encode(padded))[0, :, :n].float().cpu()


def round_trip_method(model) -> Method:
    done: dict[int, Tensor] = {}  # per clip: infill, regeneration and continuation share it

    def run(case: Case) -> Output:
        if case.index not in done:
            done[case.index] = round_trip(model, case.original)
        return Output(done[case.index], None)

    return run
