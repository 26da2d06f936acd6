"""The excerpts each edit reads, and how its output is put together: one function per edit,
called by the Python API (`api.Editor`), which the command line stands on.

Each returns `run(model, sources, settings, begin) -> Edited`: it checks its times against the
songs, reads the excerpt that the edit can see (a model window on each side of the region, never
the whole song), runs the edit inside `begin()` (the progress bar), and says how each output is
put together: input ranges streamed from disk, with the edited excerpt between them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable

from .errors import BadArgument
from .options import EditOptions, probe_input
from .timespec import seconds_to_samples

if TYPE_CHECKING:  # restyle imports torch; this module is imported without it
    from .restyle import Style


@dataclass
class Edited:
    """What an edit hands back to be written: the result, and each variation's output as pieces
    (input ranges streamed from disk, generated tensors in between)."""

    result: object  # edit.EditResult, with windows and seams in the output's coordinates
    pieces: list[list]
    # per variation, for --plot: (the audio before or None, the edited excerpt, where it starts in s)
    views: list[tuple] = field(default_factory=list)
    extra: list[dict] = field(default_factory=list)  # per variation, added to the sidecar


def check_not_silent(audio, what: str) -> None:
    """audio.check_not_silent, imported when first needed: the CLI imports this module to build its
    commands, and `musicguide --help` must not wait for torch (audio's import)."""
    from .audio import check_not_silent as check

    check(audio, what=what)


def model_window(model) -> int:
    return model.max_frames * model.downsampling_ratio


def region_excerpt(length: int, start: int, end: int, model) -> tuple[int, int]:
    """The samples an edit of [start, end) can look at: a model window on each side (the window
    planner never reaches further), clipped to the song."""
    reach = model_window(model)
    return max(0, start - reach), min(length, end + reach)


def check_region(song, start_s: float, end_s: float, sample_rate: int) -> tuple[int, int]:
    """`start`/`end` in samples, checked against the song."""
    start, end = seconds_to_samples(start_s, sample_rate), seconds_to_samples(end_s, sample_rate)
    if start >= song.length:
        raise BadArgument(f"`start` ({start_s:g} s) is past the end of the song ({song.length / sample_rate:.3f} s)")
    if end > song.length:
        raise BadArgument(f"`end` ({end_s:g} s) is past the end of the song ({song.length / sample_rate:.3f} s)")
    if end <= start:
        raise BadArgument(f"`start` ({start_s!r} s) and `end` ({end_s!r} s) are less than one sample apart")
    return start, end


def estimate_memory(model, samples: int, variations: int, what: str) -> None:
    """Refuse a run whose audio alone cannot fit: each variation holds a few copies of its excerpt."""
    from .audio import check_memory

    copies = 8
    check_memory(samples * model.audio_channels * 4 * copies * variations, what)


def shifted(result, offset: int, sample_rate: int):
    """The result with its windows and seams moved `offset` samples later (excerpt → song)."""
    windows = [replace(w, at=w.at + offset, edit_start=w.edit_start + offset, edit_end=w.edit_end + offset)
               for w in result.windows]
    seams = [[replace(s, position=s.position + offset, seconds=s.seconds + offset / sample_rate) for s in per]
             for per in result.seams]
    return replace(result, windows=windows, seams=seams)


def _context_samples(options: EditOptions, sample_rate: int) -> int | None:
    return None if options.context is None else round(options.context * sample_rate)


def _excerpt_edited(result, excerpt, s0: int, sr: int, pieces: list[list], *, before=None, extra=None) -> Edited:
    """An `Edited` whose result is in song coordinates, with the excerpt kept for --plot."""
    views = [(excerpt if before is None else before, audio, s0 / sr) for audio in result.songs]
    return Edited(shifted(result, s0, sr), pieces, views=views, extra=extra or [{} for _ in result.songs])


# ---- the commands ------------------------------------------------------------------------------------


def region_edit(options: EditOptions, start_s: float, end_s: float, strength: float | None) -> Callable:
    """infill (strength None) or regenerate: the excerpt around the region, edited, streamed back."""
    from . import edit

    def run(model, sources, settings, begin) -> Edited:
        song, sr = sources[0], model.sample_rate
        start, end = check_region(song, start_s, end_s, sr)
        s0, s1 = region_excerpt(song.length, start, end, model)
        estimate_memory(model, s1 - s0, options.variations, f"{options.variations} variation(s) of this edit")
        excerpt = song.read(s0, s1)
        check_not_silent(excerpt, what=f"{song.path} around the edit")
        with begin() as callback:
            result = edit.infill(model, excerpt, start - s0, end - s0, settings, variations=options.variations,
                                 context=_context_samples(options, sr), strength=strength, offset=s0,
                                 song_length=song.length, callback=callback)
        pieces = [[(song, 0, s0), audio, (song, s1, song.length)] for audio in result.songs]
        return _excerpt_edited(result, excerpt, s0, sr, pieces)

    return run


def continue_edit(options: EditOptions, seconds: float) -> Callable:
    from . import edit

    def run(model, sources, settings, begin) -> Edited:
        song, sr = sources[0], model.sample_rate
        s0 = max(0, song.length - model_window(model))
        new = round(seconds * sr)
        estimate_memory(model, song.length - s0 + new, options.variations, f"continuing by {seconds:g} s")
        excerpt = song.read(s0, song.length)
        check_not_silent(excerpt, what=f"the end of {song.path}")
        with begin() as callback:
            result = edit.continue_song(model, excerpt, seconds, settings, variations=options.variations,
                                        context=_context_samples(options, sr), offset=s0, callback=callback)
        return _excerpt_edited(result, excerpt, s0, sr, [[(song, 0, s0), audio] for audio in result.songs])

    return run


def transition_edit(options: EditOptions, length_s: float, strength: float) -> Callable:
    from . import edit, measurement

    def run(model, sources, settings, begin) -> Edited:
        first, second = sources
        sr, reach = model.sample_rate, model_window(model)
        overlap = round(length_s * sr)
        if overlap > min(first.length, second.length):
            raise BadArgument(f"`length` {length_s:g} s is longer than one of the tracks")
        s0, e2 = max(0, first.length - overlap - reach), min(second.length, overlap + reach)
        estimate_memory(model, first.length - s0 + e2, options.variations, f"{options.variations} transition(s)")
        head, tail = first.read(s0, first.length), second.read(0, e2)
        check_not_silent(head, what=f"the end of {first.path}")
        check_not_silent(tail, what=f"the start of {second.path}")
        with begin() as callback:
            result = edit.transition(model, head, tail, overlap, settings, strength=strength, variations=options.variations,
                                     context=_context_samples(options, sr), offset=s0,
                                     song_length=first.length + second.length - overlap, callback=callback)
        pieces = [[(first, 0, s0), audio, (second, e2, second.length)] for audio in result.songs]
        # "before" in a picture of a transition is the plain crossfade it regenerates
        return _excerpt_edited(result, None, s0, sr, pieces, before=measurement.join_with_crossfade(head, tail, overlap))

    return run


def generate_edit(options: EditOptions, seconds: float) -> Callable:
    from . import edit

    def run(model, sources, settings, begin) -> Edited:
        with begin() as callback:
            result = edit.generate(model, seconds, settings, variations=options.variations, callback=callback)
        return Edited(result, [[audio] for audio in result.songs], views=[(None, audio, 0.0) for audio in result.songs])

    return run


def loop_edit(options: EditOptions, start_s: float, end_s: float, length_s: float | None, strength: float) -> Callable:
    """`loop`: the region, its end regenerated so that it flows back into its start."""
    from . import edit

    def run(model, sources, settings, begin) -> Edited:
        song, sr = sources[0], model.sample_rate
        start, end = check_region(song, start_s, end_s, sr)
        region = song.read(start, end)
        check_not_silent(region, what=f"{song.path} between `start` and `end`")
        regenerate = round(sr * (min(2.0, (end - start) / sr / 4) if length_s is None else length_s))
        if regenerate == (end - start) // 2 + 1:  # half an odd number of samples, rounded up: half the loop
            regenerate -= 1
        if not 0 < regenerate <= (end - start) // 2:
            raise BadArgument(f"`length` {regenerate / sr:g} s must be positive and at most half the loop "
                            f"({(end - start) / sr / 2:g} s)")
        estimate_memory(model, 2 * (end - start), options.variations, f"{options.variations} loop(s)")
        s0, s1 = region_excerpt(song.length, start, end, model)
        with begin() as callback:
            result = edit.loop(model, region, regenerate, settings, strength=strength, variations=options.variations,
                               context=_context_samples(options, sr), reference=song.read(s0, s1), callback=callback)
        return Edited(result, [[audio] for audio in result.songs], views=[(region, audio, 0.0) for audio in result.songs],
                      extra=[{"loop_s": [start / sr, end / sr], "regenerated_s": regenerate / sr} for _ in result.songs])

    return run


def restyle_edit(options: EditOptions, style: Style, start_s: float, end_s: float | None) -> Callable:
    from . import losses
    from . import restyle as restyling
    from .musicnn import load_musicnn

    for clip in style.like:
        probe_input(clip)

    def run(model, sources, settings, begin) -> Edited:
        song, sr = sources[0], model.sample_rate
        start, end = check_region(song, start_s, song.length / sr if end_s is None else end_s, sr)
        net = load_musicnn(style.tagger, device=model.device)
        style_loss = restyling.style_loss(net, style, model)
        s0, s1 = region_excerpt(song.length, start, end, model)
        estimate_memory(model, s1 - s0, options.variations, f"{options.variations} restyle variation(s)")
        excerpt = song.read(s0, s1)
        check_not_silent(excerpt, what=f"{song.path} around the region")
        with begin() as callback:
            result = restyling.restyle_song(model, excerpt, start - s0, end - s0, settings, style_loss=style_loss,
                                       structure=losses.log_mel_envelope(net, sr), keep=style.keep,
                                       strength=style.strength, match_level=style.match_level,
                                       variations=options.variations, context=_context_samples(options, sr), offset=s0,
                                       song_length=song.length, callback=callback)
        pieces = [[(song, 0, s0), audio, (song, s1, song.length)] for audio in result.songs]
        tags = restyling.tags_by_window(net, style, excerpt, result, sr)
        return _excerpt_edited(result, excerpt, s0, sr, pieces, extra=[{"restyle_windows": t} for t in tags])

    return run
