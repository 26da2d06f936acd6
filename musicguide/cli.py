"""The `musicguide` command line: options → `runner` (one edit run) → files, and one-line errors.

Every user mistake is a `UserError`, printed as one line (exit status 2); so are the parser's
errors, running out of memory and a destination that cannot be written. Ctrl-C and SIGTERM end a
run with nothing written (exit 130 and 143). `--debug` adds the traceback, never changes the status.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import sys
import traceback
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column, Table
from typer import _click as click  # typer's own copy of click: its exceptions are what the parser raises

from . import __version__, jobs, runner
from .errors import Interrupted, UserError
from .jobs import Timing
from .runner import Common

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Edit real music with a latent diffusion model and guidance gradients: "
    "continue, infill, regenerate, transition, restyle, generate.",
)
models_app = typer.Typer(no_args_is_help=True, help="The models musicguide knows and what is cached.")
app.add_typer(models_app, name="models")
train_app = typer.Typer(no_args_is_help=True, help="Train the model family on your own audio (VAE first, then the DiT).")
app.add_typer(train_app, name="train")

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)
STATE = {"debug": bool(os.environ.get("MUSICGUIDE_DEBUG")), "json": False, "runs": None}
DEFAULT_MODEL = os.environ.get("MUSICGUIDE_MODEL", "demo")


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
    "guidance": (Optional[float], typer.Option(help="Guidance step size ξ at 50 steps (0 turns the gradient off; default 0.03 with --loss-space latent, 0.003 with audio; other --steps keep the same total push)."), None),
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
    "sample_format": (SampleFormat, typer.Option("--format", help="Sample format (auto: the input's PCM depth, else 24-bit)."), SampleFormat.auto),
    "as_json": (bool, typer.Option("--json", help="Print one JSON object on stdout (outputs, sidecars, flagged seams, or the error)."), False),
    "prompt": (Optional[str], typer.Option(help="A text prompt, for models with a T5 text conditioner (SAO 1.0, SAO Small)."), None),
    "negative_prompt": (Optional[str], typer.Option(help="What to steer away from (the unconditional half of CFG; needs --prompt)."), None),
    "cfg": (Optional[float], typer.Option("--cfg", help="Classifier-free guidance scale with --prompt (default 6, as stable-audio-tools; 1: the prompt alone)."), None),
    "plot": (bool, typer.Option("--plot", help="Also write NAME.png: spectrograms before and after, levels, the edited region and its seams (needs the 'plot' extra)."), False),
}
# Commands that take times also take these: times in bars (b9, b9.3) and --snap use the song's beat grid.
BEAT_OPTIONS = {
    "bpm": (Optional[float], typer.Option(help="The tempo, if you know it (else the beat tracker finds it)."), None),
    "downbeat": (Optional[str], typer.Option(help="Where bar 1 begins (seconds or m:ss), if you know it."), None),
    "beats_per_bar": (Optional[int], typer.Option(help="The meter (default: 4 or 3, whichever the accents support)."), None),
    "snap": (bool, typer.Option("--snap", help="Move edges given in seconds to the nearest beat."), False),
}


def edit_command(name: str | None = None, *, fixed: dict | None = None, beats: bool = False, **replaced):
    """Register an edit command whose function takes its own options plus `common: Common` (and,
    with `beats`, `timing: Timing`); the shared options are added to its signature here. `fixed`
    options are not offered and take the given values; `replaced` ones get another
    (type, typer.Option, default)."""
    fixed = fixed or {}
    offered = {**SHARED_OPTIONS, **replaced, **(BEAT_OPTIONS if beats else {})}

    def decorate(function):
        own = [p for p in inspect.signature(function, eval_str=True).parameters.values() if p.name not in ("common", "timing")]
        shared = [inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, option])
                  for key, (kind, option, default) in offered.items() if key not in fixed]

        def command(**kwargs):
            values = {key: kwargs.pop(key) for key in SHARED_OPTIONS if key in kwargs}
            values = {key: value.value if isinstance(value, Enum) else value for key, value in values.items()}
            STATE["json"] = values.get("as_json", False)
            if beats:
                kwargs["timing"] = Timing(**{key: kwargs.pop(key) for key in BEAT_OPTIONS})
            return function(**kwargs, common=Common(**values, **fixed))

        command.__signature__ = inspect.Signature(own + shared)
        command.__name__, command.__doc__ = function.__name__, function.__doc__
        return app.command(name)(command)

    return decorate


def _version(value: bool) -> None:
    if value:
        out.print(f"musicguide {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks (the exit status stays the same).")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_version)] = False,
) -> None:
    if debug:
        STATE["debug"] = True


# ---- errors: one line, one status -----------------------------------------------------------------


def main() -> None:
    """Runs the app and turns everything that ends it into one line and an exit status."""
    import torch

    STATE.update(debug=bool(os.environ.get("MUSICGUIDE_DEBUG")), json=False)
    try:
        code = app(standalone_mode=False)
    except UserError as error:
        _fail(str(error), 2, error)
    except click.exceptions.NoArgsIsHelpError as error:
        err.print(error.format_message(), markup=False)
        sys.exit(2)
    except click.exceptions.ClickException as error:
        command = f" {error.ctx.command_path.split(' ', 1)[1]}" if getattr(error, "ctx", None) and " " in error.ctx.command_path else ""
        _fail(f"{error.format_message()} (see musicguide{command} --help)", 2, error)
    except typer.Abort as error:
        _fail("aborted", 1, error)
    except (torch.cuda.OutOfMemoryError, MemoryError) as error:
        where = "GPU" if isinstance(error, torch.cuda.OutOfMemoryError) else "CPU"
        _fail(f"out of {where} memory; nothing was written (edit a shorter region, pass a smaller --context or fewer "
              "--variations, --loss-space latent, or --device cpu)", 2, error)
    except Interrupted as error:
        from .atomic import PUBLISHED

        what = "the outputs were already complete" if PUBLISHED else "no output was written"
        _fail(f"interrupted by {error.name}; {what}", error.exit_code, error)
    except Exception as error:  # a bug, not bad input: keep it short unless asked
        _fail(f"internal error: {type(error).__name__}: {error} (run with --debug for the traceback)", 1, error)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int, cause: BaseException) -> None:
    if STATE["debug"]:
        traceback.print_exception(cause)
    if STATE["json"]:
        print(json.dumps({"ok": False, "error": message, "exit_code": code}))
    err.print(f"error: {message}", markup=False, soft_wrap=True)
    sys.exit(code)


# ---- running an edit -------------------------------------------------------------------------------


@contextmanager
def _progress(quiet: bool, total: int, label: str) -> Iterator:
    """A rich progress bar over sampling steps; yields the sampler callback. The bar is transient
    and a summary line stays, so that an error ends on one line, not on a half-full bar."""
    if quiet:
        yield None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(label, total=total, loss="")

        def callback(step) -> None:
            loss = "" if step.loss is None else f"d={step.loss:.4g}"
            progress.update(task, advance=1, loss=loss)

        yield callback
        done = progress.tasks[0]
    err.print(f"{label}: {done.completed:.0f}/{total} steps in {done.elapsed:.1f} s")


def _run(verb: str, common: Common, inputs: list[Path], edit, runs, edit_settings: dict, timing: Timing | None = None) -> None:
    quiet = common.quiet or common.as_json

    def say(text: str) -> None:
        if not quiet:
            err.print(text)

    run = runner.run_edit(verb, common, inputs, edit, runs, edit_settings,
                          progress=lambda total, label: _progress(quiet, total, label), say=say, plot=common.plot,
                          timing=timing)
    if STATE["runs"] is not None:  # a batch job: the batch reports
        STATE["runs"].append(run)
        return
    if common.as_json:
        print(json.dumps({"ok": True, "command": verb, "outputs": [
            {"path": o["path"], "sidecar": o["sidecar"], "seconds": o["seconds"],
             "flagged_seams": [s.to_dict() for s in o["seams"] if s.flagged]} for o in run.outputs]}))
    elif not common.quiet:
        for output in run.outputs:
            _report(output)


def _report(output: dict) -> None:
    from .timespec import format_time

    saved = output["saved"]
    out.print(f"wrote {output['path']} ({format_time(output['seconds'])}, {saved.sample_rate} Hz, {saved.subtype}) "
              f"and {Path(output['sidecar']).name}")
    if saved.clipped:
        err.print(f"[yellow]warning: {saved.clipped} samples clipped (peak {saved.peak_db:.1f} dBFS); "
                  "use --format FLOAT to keep them[/yellow]")
    for seam in output["seams"]:
        if seam.flagged:
            err.print(f"[yellow]note: the seam at {format_time(seam.seconds)} changes level/timbre more than "
                      f"95% of the original does (level {seam.level_jump_db.value:.1f} dB, "
                      f"spectrum {seam.spectral_distance_db.value:.1f} dB); listen there[/yellow]")


def _region(start: str, end: str, timing: Timing, song: Path) -> tuple[float, float]:
    timing.song = song
    a, b = timing.seconds(start, "--start"), timing.seconds(end, "--end")
    if a >= b:
        raise UserError(f"--start ({start}) must be before --end ({end})"
                        + (f": with --snap both are at the beat at {a:.3f} s" if timing.snap else ""))
    return a, b


def _strength(value: float) -> float:
    from .tasks import check_strength

    return check_strength(value)


# ---- commands ------------------------------------------------------------------------------------


@edit_command(beats=True)
def infill(
    song: Annotated[Path, typer.Argument(help="The song (any format libsndfile reads).")],
    start: Annotated[str, typer.Option(help="Start of the gap: seconds (30.5), m:ss(.ms), or a bar (b9, b9.3).")],
    end: Annotated[str, typer.Option(help="End of the gap.")],
    common: Common,
    timing: Timing,
) -> None:
    """Replace a stretch of the song with new music that fits what comes before and after."""
    a, b = _region(start, end, timing, song)
    _run("infill", common, [song], jobs.region_edit(common, a, b, None), 1, {"start_s": a, "end_s": b}, timing)


@edit_command(beats=True)
def regenerate(
    song: Annotated[Path, typer.Argument(help="The song.")],
    start: Annotated[str, typer.Option(help="Start of the section: seconds, m:ss(.ms), or a bar (b9, b9.3).")],
    end: Annotated[str, typer.Option(help="End of the section.")],
    common: Common,
    timing: Timing,
    strength: Annotated[float, typer.Option(help="How much noise replaces the original (0 < k ≤ 1; 1 = infill).")] = 0.85,
) -> None:
    """Redo a section as a variation of itself: it starts from a mix of noise and the original."""
    a, b = _region(start, end, timing, song)
    _run("regenerate", common, [song], jobs.region_edit(common, a, b, _strength(strength)), 1,
         {"start_s": a, "end_s": b, "strength": strength}, timing)


@edit_command(beats=True)
def loop(
    song: Annotated[Path, typer.Argument(help="The song.")],
    start: Annotated[str, typer.Option(help="Where the loop begins: seconds, m:ss(.ms), or a bar (b9).")],
    common: Common,
    timing: Timing,
    end: Annotated[Optional[str], typer.Option(help="Where it ends (or give --bars).")] = None,
    bars: Annotated[Optional[float], typer.Option(help="The loop's length in bars, from --start.")] = None,
    length: Annotated[Optional[float], typer.Option(help="Seconds at the loop's end to regenerate (default: a bar with --bars, else min(2 s, a quarter of the loop)).")] = None,
    strength: Annotated[float, typer.Option(help="How much noise replaces the original end (0 < k ≤ 1).")] = 0.85,
) -> None:
    """Write a seamless loop of a region: its end is regenerated so that it flows back into its start."""
    if (end is None) == (bars is None):
        raise UserError("loop needs --end or --bars (one of them)")
    timing.song = song
    a = timing.seconds(start, "--start")
    if bars is not None:
        if not 0 < bars <= 1000:
            raise UserError(f"--bars must be a positive number of bars up to 1000, got {bars:g}")
        b = timing.grid().bars_after(a, bars)
        if length is None:
            length = min(timing.grid().bars_after(a, 1) - a, (b - a) / 2)
    else:
        b = timing.seconds(end, "--end")
    if a >= b:
        raise UserError(f"--start ({start}) must be before the loop's end ({b:.3f} s)")
    if length is not None:
        jobs.check_length(length, "--length")
    _run("loop", common, [song], jobs.loop_edit(common, a, b, length, _strength(strength)), 1,
         {"start_s": a, "end_s": b, "bars": bars, "strength": strength}, timing)


@edit_command("continue")
def continue_(
    song: Annotated[Path, typer.Argument(help="The song to continue.")],
    seconds: Annotated[float, typer.Option(help="How many seconds to add.")],
    common: Common,
) -> None:
    """Add music after the end of the song, in overlapping chunks when it is longer than the model's window."""
    from . import edit

    jobs.check_length(seconds, "--seconds")
    _run("continue", common, [song], jobs.continue_edit(common, seconds),
         lambda model, sources: edit.continuation_chunks(model, seconds), {"seconds": seconds})


@edit_command()
def transition(
    first: Annotated[Path, typer.Argument(help="The track that plays first.")],
    second: Annotated[Path, typer.Argument(help="The track that follows.")],
    common: Common,
    length: Annotated[float, typer.Option(help="Seconds of overlap the transition spans.")] = 8.0,
    strength: Annotated[float, typer.Option(help="How much noise replaces the plain crossfade (0 < k ≤ 1).")] = 0.85,
) -> None:
    """Write a musical transition from one track into the next (their crossfade, regenerated)."""
    jobs.check_length(length, "--length")
    _run("transition", common, [first, second], jobs.transition_edit(common, length, _strength(strength)), 1,
         {"length_s": length, "strength": strength})


@edit_command(fixed={"guidance": 0.0, "loss_space": "latent", "consistency": False, "context": None})
def generate(
    common: Common,
    seconds: Annotated[float, typer.Option(help="Length in seconds (at most the model's window).")] = 10.0,
) -> None:
    """New music from the model alone (no input, no guidance)."""
    jobs.check_length(seconds, "--seconds")
    _run("generate", common, [], jobs.generate_edit(common, seconds), 1, {"seconds": seconds})


class Tagger(str, Enum):
    msd = "MSD_musicnn"
    mtt = "MTT_musicnn"


TaggerOpt = Annotated[Tagger, typer.Option(help="musicnn tagger: MSD (genres, moods, eras) or MTT (instruments, tempo, mood).")]
STYLE_GUIDANCE = (float, typer.Option(help="Step size ξ of the style term. Its gradient through decoder and tagger is "
                                           "small, so it is far larger than an edit's; the context keeps the edits' ξ."), 100.0)


@edit_command(fixed={"loss_space": "audio"}, beats=True, guidance=STYLE_GUIDANCE)
def restyle(
    song: Annotated[Path, typer.Argument(help="The song.")],
    common: Common,
    timing: Timing,
    like: Annotated[Optional[list[Path]], typer.Option(help="Reference clip(s) whose style to move toward (embedding guidance).")] = None,
    toward: Annotated[Optional[list[str]], typer.Option(help="Tag(s) to push up, e.g. jazz (classifier guidance).")] = None,
    away_from: Annotated[Optional[list[str]], typer.Option(help="Tag(s) to push down.")] = None,
    strength: Annotated[float, typer.Option(help="How far to noise the input first (SDEdit t, 0 < k ≤ 1): higher = freer.")] = 0.6,
    keep: Annotated[float, typer.Option(help="Step size of the input's log-mel envelope term (keeps rhythm and dynamics; 0: off).")] = 1.0,
    match_level: Annotated[bool, typer.Option(help="Give the restyled region the input's RMS level (one gain, at most ±12 dB).")] = True,
    start: Annotated[Optional[str], typer.Option(help="Restyle only from here (default: the whole song, in windows).")] = None,
    end: Annotated[Optional[str], typer.Option(help="… up to here (default: the end).")] = None,
    tagger: TaggerOpt = Tagger.msd,
) -> None:
    """Steer a song toward the style of reference clips (--like) or toward/away from tags (--toward/--away-from)."""
    like, toward, away_from = like or [], toward or [], away_from or []
    if not (like or toward or away_from):
        raise UserError("restyle needs a target: --like CLIP, --toward TAG or --away-from TAG")
    if not keep >= 0 or not math.isfinite(keep):
        raise UserError(f"--keep must be a finite number >= 0, got {keep}")
    timing.song = song
    a = 0.0 if start is None else timing.seconds(start, "--start")
    b = None if end is None else timing.seconds(end, "--end")
    if b is not None and a >= b:
        raise UserError(f"--start ({start}) must be before --end ({end})")
    style = jobs.Style(like=like, toward=toward, away_from=away_from, tagger=tagger.value, strength=_strength(strength),
                         keep=keep, match_level=match_level)
    extra = {"like": [str(p) for p in like], "toward": toward, "away_from": away_from, "strength": strength,
             "keep": keep, "start": start, "end": end, "tagger": tagger.value, "match_level": match_level}
    _run("restyle", common, [song], jobs.restyle_edit(common, style, a, b),
         lambda model, sources: jobs.restyle_chunk_count(model, sources, a, b), extra, timing)


@app.command()
def tags(
    song: Annotated[Path, typer.Argument(help="The audio to tag.")],
    tagger: TaggerOpt = Tagger.msd,
    top: Annotated[int, typer.Option(help="How many tags to show (at least 1).")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """What the musicnn tagger hears: the top tags with their probabilities (mean over 3 s patches)."""
    import torch

    from .audio import check_not_silent, load_audio
    from .musicnn import load_musicnn

    STATE["json"] = as_json
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    runner.probe_input(song)
    audio, _ = load_audio(song)
    check_not_silent(audio, what=str(song))
    net = load_musicnn(tagger.value)
    with torch.no_grad():
        probs = net.tag_probs(audio[None]).mean(dim=1)[0]
    order = probs.argsort(descending=True)[:top]
    rows = [(net.config.tags[i], float(probs[i])) for i in order]
    if as_json:
        print(json.dumps({"ok": True, "file": str(song), "tagger": tagger.value, "tags": dict(rows)}))
        return
    table = Table("tag", "probability", title=f"{song.name} — {tagger.value}")
    for name, p in rows:
        table.add_row(name, f"{p:.3f}")
    out.print(table)


def _shared(key: str):
    kind, option, _ = SHARED_OPTIONS[key]
    return Annotated[kind, option]


ModelOpt, DeviceOpt, PrecisionOpt, Quiet, Overwrite = (_shared(k) for k in ("model", "device", "precision", "quiet", "overwrite"))


@app.command()
def batch(
    jobs: Annotated[Path, typer.Argument(help='JOBS.jsonl: one {"args": ["infill", "a.wav", "--start", "30", "--end", "34"]} a line.')],
    model: ModelOpt = DEFAULT_MODEL, device: DeviceOpt = Device.auto, precision: PrecisionOpt = Precision.auto,
    quiet: Quiet = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object: every job with its outputs or error.")] = False,
) -> None:
    """Run many edits with one model load: each job writes what its command alone would, from the same seed.
    Under torchrun the jobs are split across the processes (one model load each)."""
    from . import distributed

    STATE["json"] = as_json
    jobs_list = runner.read_jobs(jobs)
    here = distributed.start("cuda" if device == Device.cuda else "cpu")
    mine = jobs_list[here.rank :: here.size]
    own = ["--model", model, "--device", distributed.device_for(device.value, here), "--precision", precision.value,
           "--quiet"]
    results = []
    with runner.models_held(), Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                        TimeElapsedColumn(), TimeRemainingColumn(), console=err,
                                        disable=quiet or as_json or not here.is_main, transient=True) as bar:
        task = bar.add_task("batch", total=len(mine))
        for job in mine:
            results.append(_batch_job(job, own))
            bar.update(task, advance=1)
    merged = sorted((r for part in distributed.gather(results, here) for r in part), key=lambda r: r["line"])
    distributed.stop()
    failed = [r for r in merged if not r["ok"]]
    if here.is_main:
        _batch_summary(jobs, merged, failed, as_json, quiet)
    raise typer.Exit(1 if failed else 0)


def _batch_job(job, own: list[str]) -> dict:
    """One job in this process, as its command alone would run it; its error becomes one line."""
    batch_json = STATE["json"]
    STATE["runs"] = []
    result = {"line": job.line, "args": list(job.args), "ok": False}
    try:
        app([*job.args, *own], standalone_mode=False)
        result.update(ok=True, outputs=[{"path": o["path"], "sidecar": o["sidecar"],
                                         "flagged_seams": [s.to_dict() for s in o["seams"] if s.flagged]}
                                        for run in STATE["runs"] for o in run.outputs])
    except UserError as error:
        result["error"] = str(error)
    except click.exceptions.ClickException as error:
        result["error"] = error.format_message()
    except (MemoryError, Exception) as error:  # noqa: BLE001 - one job's failure must not stop the rest
        result["error"] = f"{type(error).__name__}: {error}"
    finally:
        STATE.update(runs=None, json=batch_json)
    return result


def _batch_summary(jobs: Path, results: list[dict], failed: list[dict], as_json: bool, quiet: bool) -> None:
    if as_json:
        print(json.dumps({"ok": not failed, "jobs": results}))
        return
    for r in failed:
        err.print(f"error: {jobs}, line {r['line']} ({' '.join(r['args'][:2])}): {r['error']}", markup=False, soft_wrap=True)
    if not quiet:
        written = sum(len(r.get("outputs", [])) for r in results)
        out.print(f"batch: {len(results) - len(failed)} of {len(results)} jobs done, {written} file(s) written"
                  + (f"; {len(failed)} failed" if failed else ""))
@app.command()
def beats(
    song: Annotated[Path, typer.Argument(help="The song.")],
    bpm: Annotated[Optional[float], typer.Option(help="The tempo, if you know it.")] = None,
    downbeat: Annotated[Optional[str], typer.Option(help="Where bar 1 begins, if you know it.")] = None,
    beats_per_bar: Annotated[Optional[int], typer.Option(help="The meter (default: detected, 4 or 3).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the grid as JSON.")] = False,
) -> None:
    """The song's beat grid as bar and beat times take it: tempo, meter, and every bar's beats (bars from 1)."""
    from .beats import format_grid

    STATE["json"] = as_json
    grid = Timing(bpm=bpm, downbeat=downbeat, beats_per_bar=beats_per_bar, song=song).grid()
    if as_json:
        print(json.dumps({"ok": True, "file": str(song), **grid.to_dict()}))
    else:
        out.print(format_grid(grid), markup=False, highlight=False)


DataDir = Annotated[Path, typer.Argument(help="Folder of audio files (.wav/.flac/.ogg, searched recursively), 44.1 kHz stereo preferred.")]
OutDir = Annotated[Path, typer.Option("--out", help="Output folder (refused if it holds a run, unless --resume).")]
Preset = Annotated[str, typer.Option(help="tiny (CPU seconds), demo (what ships), sao (SAO 1.0 shapes).")]
TrainSteps = Annotated[Optional[int], typer.Option("--steps", help="Optimizer steps (default: the preset's).")]
BatchSize = Annotated[Optional[int], typer.Option(help="Examples per step, all processes together under torchrun (default: the preset's).")]
LearningRate = Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate (default: the preset's).")]
MaxMinutes = Annotated[Optional[float], typer.Option(help="Wall-clock budget; stops cleanly and saves.")]
Resume = Annotated[bool, typer.Option(help="Continue the run in --out from its checkpoint.")]
Holdout = Annotated[Optional[list[str]], typer.Option(help="File names held out for validation (default: a deterministic 15%).")]
TrainDevice = Annotated[Device, typer.Option("--device", help="Where to train.")]


@train_app.command("vae")
def train_vae_cmd(data: DataDir, out_dir: OutDir, preset: Preset = "demo", steps: TrainSteps = None,
                  batch_size: BatchSize = None, lr: LearningRate = None, max_minutes: MaxMinutes = None,
                  resume: Resume = False, holdout: Holdout = None, device: TrainDevice = Device.auto,
                  quiet: Quiet = False) -> None:
    """Train the Oobleck VAE (multi-resolution STFT + L1 + KL)."""
    from .train import VAETrainConfig, check_out_dir, train_vae

    config = VAETrainConfig.for_preset(preset, steps=steps, batch_size=batch_size, lr=lr, max_minutes=max_minutes)
    check_out_dir(out_dir)
    _train("vae", lambda progress: train_vae(data, out_dir, config, device=runner.pick_device(device.value), resume=resume,
                                             holdout=holdout, progress=progress), config, quiet)


@train_app.command("dit")
def train_dit_cmd(data: DataDir, vae: Annotated[Path, typer.Option(help="Folder written by `train vae` (or any model folder).")],
                  out_dir: OutDir, preset: Preset = "demo", steps: TrainSteps = None, batch_size: BatchSize = None,
                  lr: LearningRate = None, max_minutes: MaxMinutes = None, resume: Resume = False,
                  holdout: Holdout = None, device: TrainDevice = Device.auto, quiet: Quiet = False) -> None:
    """Train the DiT (v-prediction) on the VAE's latents; writes a complete model folder for --model."""
    from .train import DiTTrainConfig, check_out_dir, train_dit

    config = DiTTrainConfig.for_preset(preset, steps=steps, batch_size=batch_size, lr=lr, max_minutes=max_minutes)
    check_out_dir(out_dir)
    _train("dit", lambda progress: train_dit(data, vae, out_dir, config, device=runner.pick_device(device.value), resume=resume,
                                             holdout=holdout, progress=progress), config, quiet)


def _train(stage: str, run, config, quiet: bool) -> None:
    from . import distributed

    quiet = quiet or not distributed.world().is_main  # under torchrun only rank 0 shows progress
    if quiet:
        result = run(None)
    else:
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                   TimeElapsedColumn()]
        with Progress(*columns, console=err) as progress:
            task = progress.add_task(f"train {stage}", total=config.steps, info="")

            def report(event) -> None:
                info = f"loss {event.loss:.4f}" if event.loss is not None else ""
                if event.val_loss is not None:
                    info = f"validation {event.val_loss:.4f}"
                progress.update(task, completed=event.step, total=event.steps, info=info)

            result = run(report)
    if not quiet:
        val = "-" if result.val_loss is None else f"{result.val_loss:.4f}"
        out.print(f"{stage}: {result.step} steps ({result.stopped}) in {result.seconds:.0f} s; validation loss {val}; "
                  f"wrote {result.out_dir}")
    distributed.stop()


@app.command()
def evaluate(
    clips_dir: Annotated[Path, typer.Argument(help="Folder of held-out audio files to cut 6 s clips from.")],
    report_path: Annotated[Path, typer.Option("--out", help="Markdown report; the JSON goes next to it.")] = Path("report.md"),
    model: ModelOpt = DEFAULT_MODEL,
    steps: Annotated[int, typer.Option(help="Sampling steps for every variant.")] = 50,
    clips: Annotated[int, typer.Option(help="How many clips (taken in turn from each file).")] = 24,
    seed: Annotated[int, typer.Option(help="Seed; clip k samples with seed + k.")] = 0,
    tracks: Annotated[Optional[Path], typer.Option(help="Only these tracks (a list like eval/holdout.txt).")] = None,
    context: Annotated[Optional[float], typer.Option(help="Seconds of context per side (default: the whole clip).")] = None,
    variants: Annotated[Optional[list[str]], typer.Option("--variant", help="Run only these sampler variants "
                                                            "(repeatable; default all; 'guided DDIM, latent loss' always runs).")] = None,
    tasks: Annotated[Optional[list[str]], typer.Option("--task", help="Run only these tasks (repeatable: infill, "
                                                         "regeneration, continuation, transition; default all).")] = None,
    device: DeviceOpt = Device.auto, quiet: Quiet = False, overwrite: Overwrite = False,
) -> None:
    """Measure infill, regeneration, continuation and transitions against baselines (the paper's protocol)."""
    from .evaluate import TASKS, Protocol, run_evaluate

    if context is not None and not (context > 0 and math.isfinite(context)):
        raise UserError(f"--context must be a positive number of seconds, got {context}")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=err, disable=quiet, transient=True) as bar:
        task = bar.add_task("evaluate", total=None)

        def progress(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=what)

        report = run_evaluate(clips_dir, model, report_path, steps, clips, seed, device.value, quiet, tracks=tracks,
                              overwrite=overwrite, protocol=Protocol(context_seconds=context), progress=progress,
                              variant_names=variants, tasks=tasks or TASKS)
    if not quiet:
        out.print(f"wrote {report_path} and {report_path.with_suffix('.json').name}")
        for name in report.tasks:
            err.print(report.verdicts[name], markup=False)


@models_app.command("list")
def models_list() -> None:
    """Show the registry and whether each model is usable offline."""
    from .registry import list_models

    rows = list_models()
    table = Table(Column("name", no_wrap=True), Column("where", overflow="fold"), "revision", "gated", "offline")
    for row in rows:
        table.add_row(row.name, row.location, row.revision or "-", "yes" if row.gated else "no",
                      "[green]yes[/green]" if row.available else "no")
    out.print(table)
    for row in rows:
        out.print(f"[bold]{row.name}[/bold]: {row.description.rstrip('.')}. Licence: {row.license}.")


if __name__ == "__main__":
    main()
