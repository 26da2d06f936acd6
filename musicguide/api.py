"""musicguide from Python: an `Editor` holds a loaded model, each edit is a method, and a result is
audio in memory until you save it.

    from musicguide import Editor

    editor = Editor.from_pretrained("demo")                 # or "sao-1.0", or a model folder
    result = editor.infill("song.wav", start="0:30", end="0:34", seed=1)
    result.audio, result.sample_rate, result.seams         # [channels, samples] float32, 44100, ...
    result.save("song.infill.wav")                          # + song.infill.json; never overwrites

Audio is a path (any format libsndfile reads) or an array/tensor [channels, samples] with its
`sample_rate`. Times are seconds, "m:ss" strings, or bars ("b9.3", with the song's beat grid).
Keyword options are named after the CLI's: steps, guidance, sampler, eta, seed, variations,
context, loss_space, consistency, prompt, negative_prompt, cfg, and for bar times bpm, downbeat,
beats_per_bar and snap. `callback(done, total, info)` is called after every sampling step.

The CLI stands on this module: `cli.running.run_edit` reserves the outputs, asks an Editor for the
edit, and writes its result into them. A result made from files streams the untouched song from
disk when saved, so that a long song costs no more memory than its edited window.
"""

from __future__ import annotations

import json
import os
import sys
import time
import weakref
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

from . import __version__
from .defaults import (DEFAULT_KEEP, DEFAULT_STRENGTH, DEFAULT_STYLE_GUIDANCE, GENERATE_SECONDS, RESTYLE_STRENGTH,
                       TRANSITION_SECONDS)
from .atomic import sidecar_path
from .errors import BadArgument, UserError
from .options import check_strength, check_style_target

ProgressCallback = Callable[[int, int, dict], None]
# keyword arguments besides the edit's options: the user's callback, and the CLI's progress bar and
# free-space check (`cli.running.run_edit`)
HOOKS = ("callback", "progress", "before_sampling")


@dataclass
class Sidecar:
    """What a result's JSON sidecar records: every setting, the seed, the windows, the seams.
    `to_dict()` is the JSON the CLI writes; `output` is filled in when the audio is saved."""

    command: str
    inputs: list[dict]
    model: dict
    settings: dict
    seed: int
    windows: list[dict]
    seams: list[dict]
    guidance_loss_final: float | None
    seconds: float
    elapsed_s: float
    level_gain_db: float | None = None  # restyle's level match
    beat_grid: dict | None = None  # when a time was given in bars, or snapped to beats
    text: dict | None = None  # the prompt and its classifier-free guidance
    extra: dict = field(default_factory=dict)  # the command's own: loop_s, regenerated_s, restyle_windows
    output: dict | None = None  # the saved file: path, subtype, peak, clipped, sha256
    musicguide: str = __version__

    def to_dict(self) -> dict:
        return {
            "musicguide": self.musicguide,
            "command": self.command,
            "inputs": self.inputs,
            "model": self.model,
            "settings": self.settings,
            "seed": self.seed,
            "windows": self.windows,
            "seams": self.seams,
            "guidance_loss_final": self.guidance_loss_final,
            **({"level_gain_db": self.level_gain_db} if self.level_gain_db is not None else {}),
            **({"beat_grid": self.beat_grid} if self.beat_grid is not None else {}),
            **(self.text or {}),
            **({"output": self.output} if self.output is not None else {}),
            "seconds": self.seconds,
            "elapsed_s": self.elapsed_s,
            **self.extra,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


class Result:
    """One edited song: `.audio` [channels, samples] float32 at `.sample_rate`, its `.sidecar`,
    the `.seams` it flagged or measured, and the `.windows` the model saw. With `variations`,
    `.variations` holds one result per variation (this one first)."""

    def __init__(self, edited, sidecars: list[Sidecar], sample_rate: int, inputs: list, closer: Callable[[], None],
                 index: int = 0, siblings: list["Result"] | None = None):
        self._edited, self._inputs = edited, inputs
        self._index, self._audio = index, None
        self.sample_rate = sample_rate
        self.sidecar = sidecars[index]
        self.seams = edited.result.seams[index]
        self.windows = edited.result.windows
        if siblings is None:
            siblings = [self]
            siblings += [Result(edited, sidecars, sample_rate, inputs, closer, i, siblings) for i in range(1, len(sidecars))]
            # the songs a result streams from stay open while any variation of it lives (each holds
            # the list of all, and so the first)
            self._finalizer = weakref.finalize(self, closer)
        self.variations = siblings

    @property
    def sources(self) -> list:
        """The inputs as opened (`audio.SongFile` or `audio.SongArray`), at the model's rate."""
        return self._inputs

    @property
    def pieces(self) -> list:
        """The output as pieces: ranges of an input (streamed when saved) and generated tensors."""
        return self._edited.pieces[self._index]

    @property
    def audio(self):
        """The whole edited song, [channels, samples] float32 (read from the inputs once, then kept)."""
        if self._audio is None:
            import numpy as np
            import torch

            from .writing import piece_blocks

            self._audio = torch.from_numpy(np.ascontiguousarray(np.concatenate(list(piece_blocks(self.pieces))).T))
        return self._audio

    @property
    def view(self) -> tuple:
        """For a picture: (the audio before or None, the edited excerpt, where it starts in s)."""
        return self._edited.views[self._index]

    def close(self) -> None:
        """Close the input files this result streams from (`.audio` read before stays usable)."""
        self.variations[0]._finalizer()

    def __enter__(self) -> "Result":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def save(self, path: str | os.PathLike, *, overwrite: bool = False, sample_format: str = "auto",
             plot: bool = False) -> Path:
        """Write the audio to a .wav or .flac file and its sidecar beside it (PATH with .json; with
        `plot`, a .png picture too), all published together and atomically: nothing is replaced
        without `overwrite`, and no input is ever replaced. `sample_format`: PCM_16, PCM_24,
        FLOAT, or auto (the input's depth when unconverted, else 24-bit)."""
        from .atomic import Outputs
        path = Path(path)
        targets = [path, sidecar_path(path), *([path.with_suffix(".png")] if plot else [])]
        files = [Path(s.path) for s in self._inputs if getattr(s, "info", None) and s.info.format != "array"]
        with Outputs(targets, overwrite=overwrite, inputs=tuple(files)) as outputs:
            outputs.reserve()
            self.write_into(outputs, path, sample_format=sample_format, plot=plot)
            outputs.publish()
        return path

    def write_into(self, outputs, path: Path, *, sample_format: str = "auto", plot: bool = False):
        """Write into `outputs` (an `atomic.Outputs` that reserved `path`, its sidecar, and its
        picture with `plot`), not yet published; returns what was written (`writing.SavedAudio`)."""
        from .atomic import check_free_space
        from .cache import file_sha256
        from .writing import PCM_BITS, output_subtype, piece_length, write_song

        subtype = output_subtype([s.info for s in self._inputs], path) if sample_format == "auto" else sample_format
        length = sum(piece_length(piece) for piece in self.pieces)
        channels = self.pieces[0].shape[0] if hasattr(self.pieces[0], "shape") else self.pieces[0][0].channels
        check_free_space(path.parent, length * channels * PCM_BITS.get(subtype, 32) // 8 + 2**20)
        saved: list = []
        outputs.write(path, lambda temporary: saved.append(
            write_song(temporary, self.pieces, self.sample_rate, subtype, named=path)))
        self.sidecar = replace(self.sidecar, output={**saved[0].to_dict(), "sha256": file_sha256(outputs.temporary(path))})
        if plot:
            outputs.write(path.with_suffix(".png"), lambda temporary: self._picture(temporary, path))
        text = self.sidecar.to_json()
        outputs.write(sidecar_path(path), lambda temporary: temporary.write_text(text))
        return saved[0]

    def _picture(self, temporary: Path, path: Path) -> None:
        """The edit's picture: the excerpt the model saw, before and after, on the song's time axis."""
        from .plot import draw_edit, save_png

        before, after, start = self.view
        sr = self.sample_rate
        region = (min(w.edit_start for w in self.windows) / sr - start,
                  max(w.edit_end for w in self.windows) / sr - start) if self.windows else None
        seams = [replace(s, seconds=s.seconds - start) for s in self.seams]
        save_png(draw_edit(before, after, sr, region=region, seams=seams, time_origin=start, title=path.name), temporary)


class Editor:
    """A loaded model (and its text encoder's prompts, once encoded), for as many edits as you like."""

    def __init__(self, model, resolved, device, precision: str = "auto"):
        self.model, self.resolved, self.device, self.precision = model, resolved, device, precision
        self._prompts: dict = {}  # encoded prompts, by (prompt, negative prompt)

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike = "demo", *, device: str = "auto", precision: str = "auto",
                        token: str | None = None, quiet: bool = False) -> "Editor":
        """A registry name (`musicguide models list`: "demo", "sao-1.0", ...) or a model folder.
        `device`: auto, cpu, cuda or mps; `precision`: auto, fp32, bf16 or fp16."""
        import torch

        from .models.folder import load_model
        from .options import pick_device, pick_dtype

        where = pick_device(device)
        dtype = pick_dtype(precision, where)
        if where.type == "cuda":
            # a seed promises bit-for-bit results on the same device: cuDNN must not pick kernels by timing
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        if quiet:  # huggingface_hub's warnings too; imported only if a download needs it (it costs 0.1 s)
            hub_logging = sys.modules.get("huggingface_hub.utils.logging")
            if hub_logging is not None:
                hub_logging.set_verbosity_error()
            else:
                os.environ["HF_HUB_VERBOSITY"] = "error"
        loaded, resolved = load_model(str(model), device=where, dtype=dtype, token=token)  # eval mode, frozen
        return cls(loaded, resolved, where, precision)

    @classmethod
    def from_model(cls, model, name: str = "in memory") -> "Editor":
        """An editor for a model object you built or trained yourself (on its own device)."""
        from .model_files import ResolvedModel

        resolved = ResolvedModel(name=name, kind="memory", folder=None, repo=None, revision=None,
                                 description="a model object given to Editor.from_model")
        precision = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(str(model.dtype).removeprefix("torch."),
                                                                                  "auto")
        return cls(model, resolved, model.device, precision)

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    # ---- the edits ---------------------------------------------------------------------------

    def infill(self, audio, start, end, *, sample_rate: int | None = None, **options) -> Result:
        """Replace audio between `start` and `end` with new music that fits around it."""
        from . import excerpts

        with self._opened([audio], sample_rate, options) as (opts, sources, timing, hand_over):
            a, b = _region(start, end, timing)
            return self._run("infill", opts, sources, excerpts.region_edit(opts, a, b, None),
                             {"start_s": a, "end_s": b}, timing, options, hand_over)

    def regenerate(self, audio, start, end, *, strength: float = DEFAULT_STRENGTH, sample_rate: int | None = None,
                   **options) -> Result:
        """Redo a section as a variation of itself, starting from a mix of noise and the original."""
        from . import excerpts

        with self._opened([audio], sample_rate, options) as (opts, sources, timing, hand_over):
            a, b = _region(start, end, timing)
            return self._run("regenerate", opts, sources, excerpts.region_edit(opts, a, b, check_strength(strength)),
                             {"start_s": a, "end_s": b, "strength": strength}, timing, options, hand_over)

    def continue_(self, audio, seconds: float, *, sample_rate: int | None = None, **options) -> Result:
        """Add `seconds` of music after the end, in chunks of half the model's window when longer."""
        from . import excerpts
        from .timespec import check_duration

        check_duration(seconds, "`seconds`")
        with self._opened([audio], sample_rate, options) as (opts, sources, timing, hand_over):
            return self._run("continue", opts, sources, excerpts.continue_edit(opts, seconds), {"seconds": seconds},
                             timing, options, hand_over)

    def transition(self, first, second, *, length: float = TRANSITION_SECONDS, strength: float = DEFAULT_STRENGTH, sample_rate: int | None = None,
                   **options) -> Result:
        """Join two tracks: their crossfade over `length` seconds, regenerated into a transition."""
        from . import excerpts
        from .timespec import check_duration

        check_duration(length, "`length`")
        with self._opened([first, second], sample_rate, options) as (opts, sources, timing, hand_over):
            return self._run("transition", opts, sources, excerpts.transition_edit(opts, length, check_strength(strength)),
                             {"length_s": length, "strength": strength}, timing, options, hand_over)

    def generate(self, seconds: float = GENERATE_SECONDS, **options) -> Result:
        """New music from the model alone (no input, no guidance)."""
        from . import excerpts
        from .timespec import check_duration

        check_duration(seconds, "`seconds`")
        options = {**options, "guidance": 0.0, "loss_space": "latent", "consistency": False, "context": None}
        with self._opened([], None, options) as (opts, sources, timing, hand_over):
            return self._run("generate", opts, sources, excerpts.generate_edit(opts, seconds), {"seconds": seconds},
                             timing, options, hand_over)

    def loop(self, audio, start, end=None, *, bars: float | None = None, length: float | None = None,
             strength: float = DEFAULT_STRENGTH, sample_rate: int | None = None, **options) -> Result:
        """A seamless loop of start..end (or `bars` bars from `start`): its last `length` seconds
        (default a bar with `bars`, else min(2 s, a quarter of the loop)) are regenerated so that
        they flow back into its start."""
        from . import excerpts
        from .edit import MIN_LOOP_SECONDS
        from .timespec import check_duration

        if (end is None) == (bars is None):
            raise BadArgument("loop needs `end` or `bars` (one of them)")
        if bars is not None and not 0 < bars <= 1000:
            raise BadArgument(f"`bars` must be a positive number of bars up to 1000, got {bars:g}")
        with self._opened([audio], sample_rate, options) as (opts, sources, timing, hand_over):
            a = _seconds(start, "`start`", timing)
            if bars is not None:
                b = timing.grid().bars_after(a, bars)
                duration = sources[0].info.duration
                if duration < b <= duration + BAR_END_TOLERANCE_S:
                    b = duration  # the last bar, whose end the grid puts a few ms past the last sample
                if b > duration:
                    raise BadArgument(f"`bars` {bars:g} from `start` {start} ends at {b:.3f} s, past the end of the song "
                                    f"({duration:.3f} s)")
                if length is None:
                    length = min(timing.grid().bars_after(a, 1) - a, (b - a) / 2)
            else:
                b = _seconds(end, "`end`", timing)
            if a >= b:
                raise BadArgument(f"`start` ({start}) must be before the loop's end ({b:.3f} s)")
            if b - a < MIN_LOOP_SECONDS:
                raise BadArgument(f"a loop must be at least {MIN_LOOP_SECONDS:g} s long; this one is {b - a:.4g} s")
            if length is not None:
                check_duration(length, "`length`")
            return self._run("loop", opts, sources, excerpts.loop_edit(opts, a, b, length, check_strength(strength)),
                             {"start_s": a, "end_s": b, "bars": bars, "strength": strength}, timing, options, hand_over)

    def restyle(self, audio, *, like: list | tuple = (), toward: list | tuple = (), away_from: list | tuple = (),
                strength: float = RESTYLE_STRENGTH, keep: float = DEFAULT_KEEP, match_level: bool = True, start=None, end=None,
                tagger: str = "MSD_musicnn", sample_rate: int | None = None, **options) -> Result:
        """Steer the song (or start..end of it) toward the style of clips (`like`, paths) or
        toward/away from musicnn tags. `guidance` is the style term's step size (default 100)."""
        import math

        from . import excerpts, restyle

        like, toward, away_from = [Path(p) for p in like], list(toward), list(away_from)
        check_style_target(like, toward, away_from)
        if not keep >= 0 or not math.isfinite(keep):
            raise BadArgument(f"`keep` must be a finite number >= 0, got {keep}")
        if options.get("guidance") is None:
            options = {**options, "guidance": DEFAULT_STYLE_GUIDANCE}
        options = {**options, "loss_space": "audio"}
        with self._opened([audio], sample_rate, options) as (opts, sources, timing, hand_over):
            a = 0.0 if start is None else _seconds(start, "`start`", timing)
            b = None if end is None else _seconds(end, "`end`", timing)
            if b is not None and a >= b:
                raise BadArgument(f"`start` ({start}) must be before `end` ({end})")
            style = restyle.Style(like=like, toward=toward, away_from=away_from, tagger=tagger,
                               strength=check_strength(strength), keep=keep, match_level=match_level)
            extra = {"like": [str(p) for p in like], "toward": toward, "away_from": away_from, "strength": strength,
                     "keep": keep, "start": start, "end": end, "tagger": tagger, "match_level": match_level}
            return self._run("restyle", opts, sources, excerpts.restyle_edit(opts, style, a, b), extra, timing, options,
                             hand_over)

    # ---- how an edit runs ----------------------------------------------------------------------

    @contextmanager
    def _opened(self, audios: list, sample_rate: int | None, options: dict) -> Iterator[tuple]:
        """The run's options (checked), its songs opened at the model's rate, its beat timing, and
        `hand_over()`, which hands the open songs over to a result (it streams from them) and returns
        what closes them; without it they are closed when the block ends."""
        from .audio import SongArray, SongFile
        from .beat_tracking import Timing
        from .options import BEAT_OPTIONS, EDIT_OPTIONS, EditOptions, probe_input

        unknown = sorted(set(options) - {*EDIT_OPTIONS, *BEAT_OPTIONS, *HOOKS})
        if unknown:  # a CLI-only option (output, overwrite, ...) would otherwise be dropped without a word
            raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)}; an edit takes "
                            f"{', '.join((*EDIT_OPTIONS, *BEAT_OPTIONS, 'callback'))}")
        timing = Timing(**{key: options[key] for key in BEAT_OPTIONS if key in options})
        chosen = {key: value for key, value in options.items() if key in EDIT_OPTIONS}
        opts = EditOptions(**chosen)
        opts.check()
        stack = ExitStack()
        try:
            sources = []
            for i, audio in enumerate(audios):
                if isinstance(audio, (str, os.PathLike)):
                    probe_input(Path(audio))
                    sources.append(stack.enter_context(SongFile(audio, self.model.sample_rate, self.model.audio_channels)))
                else:
                    if sample_rate is None:
                        raise BadArgument("audio given as an array needs its `sample_rate`")
                    name = "the audio" if len(audios) == 1 else ("the first track", "the second track")[i]
                    source = SongArray(audio, sample_rate, self.model.sample_rate, self.model.audio_channels, name)
                    if source.length < source.sample_rate:
                        raise UserError(f"{name} is shorter than one second; give the model some music to work with")
                    sources.append(source)
            if sources:
                timing.song = None if sources[0].info.format == "array" else sources[0].path
                timing.audio = sources[0] if sources[0].info.format == "array" else None
            yield opts, sources, timing, lambda: stack.pop_all().close
        finally:
            stack.close()  # empty once the result has taken the songs over

    def _run(self, verb: str, opts, sources: list, edit: Callable, edit_settings: dict, timing, options: dict,
             hand_over: Callable) -> Result:
        """Run `edit(model, sources, settings, begin) -> excerpts.Edited` with the progress the caller
        asked for; the result with one sidecar per variation."""
        from .options import settings_for
        from .text import prompted

        settings = settings_for(opts).for_model(self.model)
        model, text = prompted(self.model, self.resolved, opts.prompt, opts.negative_prompt, opts.cfg,
                               self._prompts)
        started = time.perf_counter()
        label = f"{verb} ({settings.sampler}, seed {settings.seed})"
        progress = options.get("progress") or (lambda label: _calling_back(options.get("callback"), label))
        before_sampling = options.get("before_sampling")

        def begin():  # the edit checks its inputs first, and enters this when sampling starts
            if before_sampling is not None:
                before_sampling(sources, edit_settings, model)
            return progress(label)

        edited = edit(model, sources, settings, begin)
        elapsed = time.perf_counter() - started
        inputs = self._inputs_record(sources)  # each file hashed once, whatever the number of variations
        sidecars = [self._sidecar(verb, opts, settings, inputs, edited, i, edit_settings, elapsed, timing, text)
                    for i in range(len(edited.pieces))]
        return Result(edited, sidecars, model.sample_rate, sources, hand_over())

    @staticmethod
    def _inputs_record(sources: list) -> list[dict]:
        """The sidecar's inputs: each one's header, where it is and its sha256 (an array's: of its samples)."""
        from .cache import file_sha256

        return [{**s.info.to_dict(), "path": str(s.path.resolve()), "sha256": file_sha256(s.path)}
                if s.info.format != "array" else {**s.info.to_dict(), "path": None, "sha256": s.digest}
                for s in sources]

    def _sidecar(self, verb, opts, settings, inputs, edited, i, edit_settings, elapsed, timing, text) -> Sidecar:
        from .writing import piece_length

        result, resolved, sr = edited.result, self.resolved, self.model.sample_rate
        return Sidecar(
            command=verb,
            inputs=inputs,
            model={"name": resolved.name, "kind": resolved.kind, "repo": resolved.repo, "revision": resolved.revision,
                   "folder": None if resolved.folder is None else str(resolved.folder), "objective": self.model.objective},
            settings={**settings.to_dict(), **edit_settings, "variation": i + 1, "variations": opts.variations,
                      "device": str(self.device), "context_s": opts.context, "precision": self.precision,
                      "dtype": str(self.model.dtype).removeprefix("torch.")},
            seed=settings.seed,
            windows=[w.to_dict(sr) for w in result.windows],
            seams=[s.to_dict() for s in result.seams[i]],
            guidance_loss_final=result.guidance_loss,
            seconds=sum(piece_length(piece) for piece in edited.pieces[i]) / sr,
            elapsed_s=round(elapsed, 3),
            level_gain_db=result.level_gain_db[i] if result.level_gain_db else None,
            beat_grid=timing.sidecar().get("beat_grid"),
            text=text or None,
            extra=edited.extra[i] if edited.extra else {},
        )


# A bar's end from the beat grid may fall a little past the song's last sample (the grid is
# extrapolated at the tempo); within this, `loop(bars=...)` ends at the last sample instead of refusing.
BAR_END_TOLERANCE_S = 0.05


def _seconds(value, what: str, timing) -> float:
    """A time as given: seconds (a number), or a string of seconds, m:ss(.ms) or a bar (b9.3)."""
    if isinstance(value, str):
        return timing.seconds(value, what)
    return timing.seconds(repr(float(value)), what)


def _region(start, end, timing) -> tuple[float, float]:
    a, b = _seconds(start, "`start`", timing), _seconds(end, "`end`", timing)
    if a >= b:
        raise BadArgument(f"`start` ({start}) must be before `end` ({end})"
                        + (f": with `snap` both are at the beat at {a:.3f} s" if timing.snap else ""))
    return a, b


@contextmanager
def _calling_back(callback: ProgressCallback | None, label: str) -> Iterator:
    """The sampler's step callback that calls `callback(done, total, info)`; the total is the
    edit's own plan (its runs times their steps), carried by every step."""
    if callback is None:
        yield None
        return
    done = 0

    def step(s) -> None:
        nonlocal done
        done += 1
        callback(done, s.runs * s.steps, {"label": label, "step": s.i, "steps": s.steps, "run": s.run, "runs": s.runs,
                                           "t": s.t, "loss": s.loss})

    yield step


