"""The options every edit command shares, declared once, and the decorator that adds them."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from ..defaults import DEFAULT_STYLE_GUIDANCE
from .root import DEFAULT_MODEL, app
from .running import CommandOptions, check_before_work, execute, report


class Sampler(str, Enum):
    auto = "auto"
    ddim = "ddim"
    ddpm = "ddpm"
    pingpong = "pingpong"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class LossSpace(str, Enum):
    latent = "latent"
    audio = "audio"


class SampleFormat(str, Enum):
    auto = "auto"
    pcm16 = "PCM_16"
    pcm24 = "PCM_24"
    float32 = "FLOAT"


# ---- the options every edit command shares, declared once ----------------------------------------

SHARED_OPTIONS = {
    "output": (Optional[Path], typer.Option("--output", "-o", help="Output .wav/.flac (default: next to the input, named after the command, e.g. song.infill.wav)."), None),
    "model": (str, typer.Option("--model", "-m", help="Registry name (see `musicguide models list`) or a model folder."), DEFAULT_MODEL),
    "steps": (int, typer.Option(help="Sampling steps."), 50),
    "guidance": (Optional[float], typer.Option(help="Guidance step size ξ at 50 steps (0 turns the gradient off; default 0.005 with --loss-space latent, 0.003 with audio; other --steps keep the same total push)."), None),
    "sampler": (Sampler, typer.Option(help="auto (ddim for v-prediction models, pingpong for rectified-flow models such as SAO Small), ddim (deterministic for a seed), ddpm (ancestral) or pingpong (fresh noise each step)."), Sampler.auto),
    "eta": (float, typer.Option(help="DDIM noise: 0 deterministic, 1 ancestral (ddim only)."), 0.0),
    "seed": (Optional[int], typer.Option(help="Random seed (0 to 4294967295); the same seed on the same device gives the same audio bit for bit."), None),
    "variations": (int, typer.Option(help="Number of results (a batch); written as NAME_1 … NAME_N."), 1),
    "device": (Device, typer.Option(help="Where to run."), Device.auto),
    "precision": (Precision, typer.Option(help="The model's number format: auto (bf16 on CUDA cards that have it, else fp16; fp32 on CPU and MPS), fp32, bf16, fp16."), Precision.auto),
    "quiet": (bool, typer.Option("--quiet", "-q", help="No progress or messages, errors only."), False),
    "overwrite": (bool, typer.Option(help="Replace existing output files (never the input)."), False),
    "loss_space": (LossSpace, typer.Option(help="Measure the guidance loss on latents (fast) or on decoded audio (exact, slower)."), LossSpace.latent),
    "consistency": (bool, typer.Option(help="Paste the known context into each step (data consistency)."), True),
    "context": (Optional[float], typer.Option(help="Seconds of context on each side (default: as much as the model's window takes)."), None),
    "sample_format": (SampleFormat, typer.Option("--format", help="Sample format (auto: the input's PCM depth if unconverted, else 24-bit)."), SampleFormat.auto),
    "as_json": (bool, typer.Option("--json", help="Print one JSON object on stdout (outputs, sidecars, flagged seams, or the error)."), False),
    "prompt": (Optional[str], typer.Option(help="A text prompt, for models with a T5 text conditioner (SAO 1.0, SAO Small)."), None),
    "negative_prompt": (Optional[str], typer.Option(help="What to steer away from (the unconditional half of CFG; needs --prompt)."), None),
    "cfg": (Optional[float], typer.Option("--cfg", help="Classifier-free guidance scale with --prompt (default: the model's reference, 6 for Stable Audio Open, 1 for Stable Audio 3; 1: the prompt alone)."), None),
    "plot": (bool, typer.Option("--plot", help="Also write NAME.png: spectrograms before and after, levels, the edited region and its seams (needs the 'plot' extra)."), False),
}
# Commands that take times also take these: times in bars (b9, b9.3) and --snap use the song's beat grid.
BEAT_OPTIONS = {
    "bpm": (Optional[float], typer.Option(help="The tempo, if you know it (else the beat tracker finds it)."), None),
    "downbeat": (Optional[str], typer.Option(help="Where bar 1 begins (seconds or m:ss), if you know it."), None),
    "beats_per_bar": (Optional[int], typer.Option(help="The meter (default: 4 or 3, whichever the accents support)."), None),
    "snap": (bool, typer.Option("--snap", help="Move edges given in seconds to the nearest beat."), False),
}


@dataclass(frozen=True)
class EditPlan:
    """An edit command as parsed and checked: what `running.run_edit` runs. `call(editor, **options)`
    is the `api.Editor` method with the command's own arguments bound."""

    verb: str
    common: CommandOptions
    call: Callable
    open_editor: Callable  # (model, device=, precision=, quiet=) -> api.Editor: `Editor.from_pretrained`
    timing: object  # beat_tracking.Timing, for commands that take bar times; else None
    paths: list[Path]  # the outputs, one per variation
    outputs: object  # atomic.Outputs: every file the run writes, checked, not yet reserved


# verb -> plan(reads=(), **parsed parameters) -> EditPlan: what the command would run, not run
# (`musicguide batch` runs each job's plan with the one model it holds)
EDIT_PLANNERS: dict[str, Callable[..., EditPlan]] = {}


def edit_command(name: str | None = None, *, open_editor: Callable, fixed: dict | None = None, beats: bool = False,
                 **replaced):
    """Register an edit command. Its function takes its own options and returns the call to make,
    `lambda editor, **options: editor.METHOD(...)`, on the editor that `open_editor` loads (`edits`
    passes `api.Editor.from_pretrained`: this module stays below the API); the shared options (and,
    with `beats`, the beat options) are added to its signature here. `fixed` options are not offered
    and take the given values; `replaced` ones get another (type, typer.Option, default)."""
    fixed = fixed or {}
    offered = {**SHARED_OPTIONS, **replaced, **(BEAT_OPTIONS if beats else {})}

    def decorate(function):
        verb = name or function.__name__
        own = list(inspect.signature(function, eval_str=True).parameters.values())
        shared = [inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, option])
                  for key, (kind, option, default) in offered.items() if key not in fixed]

        def plan(reads: tuple = (), **kwargs) -> EditPlan:
            values = {key: kwargs.pop(key) for key in SHARED_OPTIONS if key in kwargs}
            values = {key: value.value if isinstance(value, Enum) else value for key, value in values.items()}
            common = CommandOptions.from_flags({**values, **fixed})
            # refuse what can be refused before the command reads bar times (minutes of beat
            # tracking on a long song) or loads a model: the positional songs are the inputs, lists
            # of paths (--like) are read too
            inputs = [value for value in kwargs.values() if isinstance(value, Path)]
            reads = (*[p for value in kwargs.values() if isinstance(value, list) for p in value if isinstance(p, Path)],
                     *reads)
            paths, outputs = check_before_work(verb, common, inputs, reads, plot=common.plot)
            timing = None
            if beats:
                from ..beat_tracking import Timing

                timing = Timing(**{key: kwargs.pop(key) for key in BEAT_OPTIONS})
            return EditPlan(verb, common, function(**kwargs), open_editor, timing, paths, outputs)

        def command(**kwargs):
            edit = plan(**kwargs)
            report(edit.verb, edit.common, execute(edit))

        EDIT_PLANNERS[verb] = plan
        command.__signature__ = inspect.Signature(own + shared)
        command.__name__, command.__doc__ = function.__name__, function.__doc__
        return app.command(name)(command)

    return decorate


def _shared(key: str):
    kind, option, _ = SHARED_OPTIONS[key]
    return Annotated[kind, option]


ModelOpt, DeviceOpt, PrecisionOpt, Quiet, Overwrite = (_shared(k) for k in ("model", "device", "precision", "quiet", "overwrite"))


class Tagger(str, Enum):
    msd = "MSD_musicnn"
    mtt = "MTT_musicnn"


TaggerOpt = Annotated[Tagger, typer.Option(help="musicnn tagger: MSD (genres, moods, eras) or MTT (instruments, tempo, mood).")]
STYLE_GUIDANCE = (float, typer.Option(help="Step size ξ of the style term. Its gradient through decoder and tagger is "
                                           "small, so it is far larger than an edit's; the context keeps the edits' ξ."), DEFAULT_STYLE_GUIDANCE)
