"""The `musicguide` command line: options → settings → `edit` → audio files + JSON sidecars.

Every user mistake is a `UserError`, printed as one line (exit status 2); `--debug` shows the
traceback of anything.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column, Table

from . import __version__
from .errors import UserError

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
DEBUG = {"on": bool(os.environ.get("MUSICGUIDE_DEBUG"))}
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


class LossSpace(str, Enum):
    latent = "latent"
    audio = "audio"


class SampleFormat(str, Enum):
    auto = "auto"
    pcm16 = "PCM_16"
    pcm24 = "PCM_24"
    float32 = "FLOAT"


# ---- shared options -----------------------------------------------------------------------------

Output = Annotated[Optional[Path], typer.Option("--output", "-o", help="Output .wav/.flac (default: next to the input, named after the command, e.g. song.infill.wav).")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Registry name (see `musicguide models list`) or a model folder.")]
Steps = Annotated[int, typer.Option(help="Sampling steps.")]
Guidance = Annotated[Optional[float], typer.Option(help="Guidance step size ξ at 50 steps (0 turns the gradient off; default 0.03 with --loss-space latent, 0.003 with audio; other --steps keep the same total push).")]
SamplerOpt = Annotated[Sampler, typer.Option(help="auto (ddim for v-prediction models, pingpong for rectified-flow models such as SAO Small), ddim (deterministic for a seed), ddpm (ancestral) or pingpong (fresh noise each step).")]
Eta = Annotated[float, typer.Option(help="DDIM noise: 0 deterministic, 1 ancestral.")]
Seed = Annotated[Optional[int], typer.Option(help="Random seed; the same seed on the same device gives the same audio bit for bit.")]
Variations = Annotated[int, typer.Option(help="Number of results (a batch); written as NAME_1 … NAME_N.")]
DeviceOpt = Annotated[Device, typer.Option(help="Where to run.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or messages, errors only.")]
Overwrite = Annotated[bool, typer.Option(help="Replace existing output files (never the input).")]
LossSpaceOpt = Annotated[LossSpace, typer.Option(help="Measure the guidance loss on latents (fast) or on decoded audio (exact, slower).")]
Consistency = Annotated[bool, typer.Option(help="Paste the known context into each step (data consistency).")]
Context = Annotated[Optional[float], typer.Option(help="Seconds of context on each side (default: as much as the model's window takes).")]
Format = Annotated[SampleFormat, typer.Option("--format", help="Sample format (auto: the input's PCM depth, else 24-bit).")]


@dataclass
class Common:
    output: Path | None
    model: str
    steps: int
    guidance: float | None
    sampler: Sampler
    eta: float
    seed: int | None
    variations: int
    device: Device
    quiet: bool
    overwrite: bool
    loss_space: LossSpace
    consistency: bool
    context: float | None
    sample_format: SampleFormat
    extra: dict = field(default_factory=dict)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if debug:
        DEBUG["on"] = True
    if version:
        out.print(f"musicguide {__version__}")
        raise typer.Exit()


def main() -> None:
    """Console entry point: runs the app and turns errors into one line and an exit status."""
    import torch

    try:
        app()
    except UserError as error:
        _fail(error, 2)
    except torch.cuda.OutOfMemoryError as error:
        _fail(UserError("out of GPU memory", hint="edit a shorter region, pass a smaller --context or fewer --variations, or --device cpu"), 2, error)
    except KeyboardInterrupt:
        err.print("interrupted; no output was written")
        sys.exit(130)
    except Exception as error:  # a bug, not bad input: keep it short unless asked
        _fail(UserError(f"internal error: {type(error).__name__}: {error}", hint="run with --debug for the traceback"), 1, error)


def _fail(error: UserError, code: int, cause: BaseException | None = None) -> None:
    if DEBUG["on"]:
        raise cause or error
    err.print(f"error: {error}", markup=False, soft_wrap=True)
    sys.exit(code)


# ---- running an edit ----------------------------------------------------------------------------


def _pick_device(choice: Device):
    import torch

    if choice == Device.auto:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice == Device.cuda and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available here", hint="use --device cpu")
    if choice == Device.mps and not torch.backends.mps.is_available():
        raise UserError("--device mps: Apple's Metal backend is not available here", hint="use --device cpu")
    return torch.device(choice.value)


def _output_paths(first_input: Path | None, common: Common, verb: str) -> list[Path]:
    if common.output is not None:
        base = common.output
    elif first_input is not None:
        base = first_input.with_name(f"{first_input.stem}.{verb}.wav")
    else:
        base = Path(f"musicguide.{verb}.wav")
    if common.variations == 1:
        return [base]
    return [base.with_name(f"{base.stem}_{i}{base.suffix}") for i in range(1, common.variations + 1)]


def _sidecar_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _check_outputs(paths: list[Path], inputs: list[Path], overwrite: bool) -> None:
    """Before any work: refuse to clobber the input or, without --overwrite, any existing file."""
    from .audio import same_file

    for path in paths:
        if path.suffix.lower() not in (".wav", ".flac"):
            raise UserError(f"cannot write {path}: use a .wav or .flac output")
        for source in inputs:
            if same_file(path, source) or same_file(_sidecar_path(path), source):
                raise UserError(f"the output {path} would overwrite the input {source}", hint="choose another -o")
        for target in (path, _sidecar_path(path)):
            if target.exists() and not overwrite:
                raise UserError(f"{target} exists; pass --overwrite to replace it")
        if not path.parent.is_dir():
            raise UserError(f"cannot write {path}: folder {path.parent} does not exist")


def _load_song(path: Path, quiet: bool):
    from .audio import check_not_silent, load_audio

    song, info = load_audio(path)
    check_not_silent(song, what=str(path))
    if song.shape[-1] < 44100:
        raise UserError(f"{path} is shorter than one second; give the model some music to work with")
    if not quiet:
        for note in info.conversions:
            err.print(f"[dim]{path.name}: {note}[/dim]")
    return song, info


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _progress(quiet: bool, total: int, label: str) -> Iterator:
    """A rich progress bar over sampling steps; yields the sampler callback."""
    if quiet:
        yield None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task(label, total=total, loss="")

        def callback(step) -> None:
            loss = "" if step.loss is None else f"d={step.loss:.4g}"
            progress.update(task, advance=1, loss=loss)

        yield callback


def _settings(common: Common):
    from .edit import SamplerSettings

    seed = common.seed if common.seed is not None else secrets.randbelow(2**31)
    return SamplerSettings(sampler=common.sampler.value, steps=common.steps, guidance=common.guidance, eta=common.eta,
                           loss_space=common.loss_space.value, consistency=common.consistency, seed=seed)


def _load_model(common: Common):
    import torch

    from .registry import load_model

    device = _pick_device(common.device)
    if device.type == "cuda":
        # --seed promises bit-for-bit results on the same device: cuDNN must not pick kernels by timing
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    if common.quiet:
        from huggingface_hub.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    if common.variations < 1:
        raise UserError(f"--variations must be at least 1, got {common.variations}")
    model, resolved = load_model(common.model, device=device, dtype=torch.float32)
    model.eval().requires_grad_(False)
    if resolved.kind == "builtin" and not common.quiet:
        err.print(f"[yellow]model {resolved.name}: {resolved.description}[/yellow]")
    return model, resolved, device


def _context_samples(common: Common, sample_rate: int) -> int | None:
    if common.context is None:
        return None
    if not common.context > 0 or not math.isfinite(common.context):
        raise UserError(f"--context must be a positive number of seconds, got {common.context}")
    return round(common.context * sample_rate)


def _write_results(verb: str, paths: list[Path], common: Common, result, settings, model, resolved, device,
                   inputs: list[tuple[Path, object]], edit_settings: dict, elapsed: float) -> None:
    from .audio import output_subtype, save_audio

    input_subtype = getattr(inputs[0][1], "subtype", None) if inputs else None
    for i, (path, song) in enumerate(zip(paths, result.songs)):
        subtype = output_subtype(input_subtype, path) if common.sample_format == SampleFormat.auto else common.sample_format.value
        saved = save_audio(path, song, model.sample_rate, subtype=subtype, overwrite=common.overwrite)
        sidecar = {
            "musicguide": __version__,
            "command": verb,
            "inputs": [{**info.to_dict(), "path": str(p.resolve()), "sha256": _sha256(p)} for p, info in inputs],
            "model": {"name": resolved.name, "kind": resolved.kind, "repo": resolved.repo, "revision": resolved.revision,
                      "folder": None if resolved.folder is None else str(resolved.folder), "objective": model.objective},
            "settings": {**settings.to_dict(), **edit_settings, "variation": i + 1, "variations": common.variations,
                         "device": str(device), "context_s": common.context},
            "seed": settings.seed,
            "windows": [w.to_dict(model.sample_rate) for w in result.windows],
            "seams": [s.to_dict() for s in result.seams[i]],
            "guidance_loss_final": result.guidance_loss,
            **({"level_gain_db": result.level_gain_db[i]} if result.level_gain_db else {}),
            "output": saved.to_dict(),
            "seconds": song.shape[-1] / model.sample_rate,
            "elapsed_s": round(elapsed, 3),
        }
        _write_json(_sidecar_path(path), sidecar, overwrite=common.overwrite)
        if not common.quiet:
            _report(path, song, model.sample_rate, saved, result.seams[i])


def _write_json(path: Path, data: dict, *, overwrite: bool) -> None:
    from .atomic import write_text_atomically

    if path.exists() and not overwrite:
        raise UserError(f"{path} exists; pass --overwrite to replace it")
    write_text_atomically(path, json.dumps(data, indent=2) + "\n")


def _report(path: Path, song, sample_rate: int, saved, seams) -> None:
    from .timespec import format_time

    out.print(f"wrote {path} ({format_time(song.shape[-1] / sample_rate)}, {sample_rate} Hz, "
              f"{song.shape[0]} ch, {saved.subtype}) and {_sidecar_path(path).name}")
    if saved.clipped:
        err.print(f"[yellow]warning: {saved.clipped} samples clipped (peak {saved.peak_db:.1f} dBFS); "
                  "use --format FLOAT to keep them[/yellow]")
    for seam in seams:
        if seam.flagged:
            err.print(f"[yellow]note: the seam at {format_time(seam.seconds)} changes level/timbre more than "
                      f"95% of the original does (level {seam.level_jump_db.value:.1f} dB, "
                      f"spectrum {seam.spectral_distance_db.value:.1f} dB); listen there[/yellow]")


def _run_edit(verb: str, common: Common, inputs: list[Path], run, runs, edit_settings: dict) -> None:
    """Check outputs, load inputs and the model, run `run(model, songs, settings, callback)`, write.
    `runs` is how many sampling runs the edit takes (a number, or a function of the model)."""
    paths = _output_paths(inputs[0] if inputs else None, common, verb)
    _check_outputs(paths, inputs, common.overwrite)
    loaded = [(_load_song(p, common.quiet), p) for p in inputs]
    settings = _settings(common)
    model, resolved, device = _load_model(common)
    settings = settings.for_model(model)
    started = time.perf_counter()
    runs = runs(model) if callable(runs) else runs
    with _progress(common.quiet, runs * settings.steps, f"{verb} ({settings.sampler}, seed {settings.seed})") as callback:
        result = run(model, [song for (song, _), _ in loaded], settings, callback)
    elapsed = time.perf_counter() - started
    _write_results(verb, paths, common, result, settings, model, resolved, device,
                   [(p, info) for (_, info), p in loaded], edit_settings, elapsed)


def _common(**kw) -> Common:
    kw["sample_format"] = kw.pop("format_")
    return Common(**kw)


def _samples(seconds: float, sample_rate: int = 44100) -> int:
    from .timespec import seconds_to_samples

    return seconds_to_samples(seconds, sample_rate)


def _region(start: str, end: str) -> tuple[float, float]:
    from .timespec import parse_time

    a, b = parse_time(start, "--start"), parse_time(end, "--end")
    if a >= b:
        raise UserError(f"--start ({start}) must be before --end ({end})")
    return a, b


# ---- commands -----------------------------------------------------------------------------------


@app.command()
def infill(
    song: Annotated[Path, typer.Argument(help="The song (any format libsndfile reads).")],
    start: Annotated[str, typer.Option(help="Start of the gap: seconds (30.5) or m:ss(.ms).")],
    end: Annotated[str, typer.Option(help="End of the gap.")],
    output: Output = None, model: ModelOpt = DEFAULT_MODEL, steps: Steps = 50, guidance: Guidance = None,
    sampler: SamplerOpt = Sampler.auto, eta: Eta = 0.0, seed: Seed = None, variations: Variations = 1,
    device: DeviceOpt = Device.auto, quiet: Quiet = False, overwrite: Overwrite = False,
    loss_space: LossSpaceOpt = LossSpace.latent, consistency: Consistency = True, context: Context = None,
    format_: Format = SampleFormat.auto,
) -> None:
    """Replace a stretch of the song with new music that fits what comes before and after."""
    common = _common(**{k: v for k, v in locals().items() if k not in ("song", "start", "end")})
    a, b = _region(start, end)
    _region_edit("infill", common, song, a, b, None)


@app.command()
def regenerate(
    song: Annotated[Path, typer.Argument(help="The song.")],
    start: Annotated[str, typer.Option(help="Start of the section: seconds or m:ss(.ms).")],
    end: Annotated[str, typer.Option(help="End of the section.")],
    strength: Annotated[float, typer.Option(help="How much noise replaces the original (0 < k ≤ 1; 1 = infill).")] = 0.85,
    output: Output = None, model: ModelOpt = DEFAULT_MODEL, steps: Steps = 50, guidance: Guidance = None,
    sampler: SamplerOpt = Sampler.auto, eta: Eta = 0.0, seed: Seed = None, variations: Variations = 1,
    device: DeviceOpt = Device.auto, quiet: Quiet = False, overwrite: Overwrite = False,
    loss_space: LossSpaceOpt = LossSpace.latent, consistency: Consistency = True, context: Context = None,
    format_: Format = SampleFormat.auto,
) -> None:
    """Redo a section as a variation of itself: it starts from a mix of noise and the original."""
    common = _common(**{k: v for k, v in locals().items() if k not in ("song", "start", "end", "strength")})
    if not 0 < strength <= 1:
        raise UserError(f"--strength must be in (0, 1], got {strength}")
    a, b = _region(start, end)
    _region_edit("regenerate", common, song, a, b, strength)


def _region_edit(verb: str, common: Common, song: Path, start_s: float, end_s: float, strength: float | None) -> None:
    from . import edit

    def run(model, songs, settings, callback):
        audio = songs[0]
        sr = model.sample_rate
        start, end = _samples(start_s, sr), _samples(end_s, sr)
        if start >= audio.shape[-1]:
            raise UserError(f"--start ({start_s:g} s) is past the end of the song ({audio.shape[-1] / sr:.3f} s)")
        return edit.infill(model, audio, start, end, settings,
                           variations=common.variations, context=_context_samples(common, sr),
                           strength=strength, callback=callback)

    extra = {"start_s": start_s, "end_s": end_s}
    if strength is not None:
        extra["strength"] = strength
    _run_edit(verb, common, [song], run, 1, extra)


@app.command("continue")
def continue_(
    song: Annotated[Path, typer.Argument(help="The song to continue.")],
    seconds: Annotated[float, typer.Option(help="How many seconds to add.")],
    output: Output = None, model: ModelOpt = DEFAULT_MODEL, steps: Steps = 50, guidance: Guidance = None,
    sampler: SamplerOpt = Sampler.auto, eta: Eta = 0.0, seed: Seed = None, variations: Variations = 1,
    device: DeviceOpt = Device.auto, quiet: Quiet = False, overwrite: Overwrite = False,
    loss_space: LossSpaceOpt = LossSpace.latent, consistency: Consistency = True, context: Context = None,
    format_: Format = SampleFormat.auto,
) -> None:
    """Add music after the end of the song, in overlapping chunks when it is longer than the model's window."""
    common = _common(**{k: v for k, v in locals().items() if k not in ("song", "seconds")})
    from . import edit

    if not seconds > 0 or not math.isfinite(seconds):
        raise UserError(f"--seconds must be a positive number, got {seconds}")

    def run(model, songs, settings, callback):
        return edit.continue_song(model, songs[0], seconds, settings, variations=common.variations,
                                  context=_context_samples(common, model.sample_rate), callback=callback)

    _run_edit("continue", common, [song], run, lambda model: edit.continuation_chunks(model, seconds), {"seconds": seconds})


@app.command()
def transition(
    first: Annotated[Path, typer.Argument(help="The track that plays first.")],
    second: Annotated[Path, typer.Argument(help="The track that follows.")],
    length: Annotated[float, typer.Option(help="Seconds of overlap the transition spans.")] = 8.0,
    strength: Annotated[float, typer.Option(help="How much noise replaces the plain crossfade (0 < k ≤ 1).")] = 0.85,
    output: Output = None, model: ModelOpt = DEFAULT_MODEL, steps: Steps = 50, guidance: Guidance = None,
    sampler: SamplerOpt = Sampler.auto, eta: Eta = 0.0, seed: Seed = None, variations: Variations = 1,
    device: DeviceOpt = Device.auto, quiet: Quiet = False, overwrite: Overwrite = False,
    loss_space: LossSpaceOpt = LossSpace.latent, consistency: Consistency = True, context: Context = None,
    format_: Format = SampleFormat.auto,
) -> None:
    """Write a musical transition from one track into the next (their crossfade, regenerated)."""
    common = _common(**{k: v for k, v in locals().items() if k not in ("first", "second", "length", "strength")})
    from . import edit

    if not length > 0 or not math.isfinite(length):
        raise UserError(f"--length must be a positive number of seconds, got {length}")
    if not 0 < strength <= 1:
        raise UserError(f"--strength must be in (0, 1], got {strength}")

    def run(model, songs, settings, callback):
        return edit.transition(model, songs[0], songs[1], _samples(length, model.sample_rate), settings, strength=strength,
                               variations=common.variations, context=_context_samples(common, model.sample_rate),
                               callback=callback)

    _run_edit("transition", common, [first, second], run, 1, {"length_s": length, "strength": strength})


@app.command()
def generate(
    seconds: Annotated[float, typer.Option(help="Length in seconds (at most the model's window).")] = 10.0,
    output: Output = None, model: ModelOpt = DEFAULT_MODEL, steps: Steps = 50,
    sampler: SamplerOpt = Sampler.auto, eta: Eta = 0.0, seed: Seed = None, variations: Variations = 1,
    device: DeviceOpt = Device.auto, quiet: Quiet = False, overwrite: Overwrite = False,
    format_: Format = SampleFormat.auto,
) -> None:
    """New music from the model alone (no input, no guidance)."""
    common = _common(**{k: v for k, v in locals().items() if k != "seconds"}, guidance=0.0,
                     loss_space=LossSpace.latent, consistency=False, context=None)
    if not seconds > 0 or not math.isfinite(seconds):
        raise UserError(f"--seconds must be a positive number, got {seconds}")
    from . import edit

    def run(model, songs, settings, callback):
        return edit.generate(model, seconds, settings, variations=common.variations, callback=callback)

    _run_edit("generate", common, [], run, 1, {"seconds": seconds})


class Tagger(str, Enum):
    msd = "MSD_musicnn"
    mtt = "MTT_musicnn"


TaggerOpt = Annotated[Tagger, typer.Option(help="musicnn tagger: MSD (genres, moods, eras) or MTT (instruments, tempo, mood).")]


@app.command()
def restyle(
    song: Annotated[Path, typer.Argument(help="The song.")],
    like: Annotated[Optional[list[Path]], typer.Option(help="Reference clip(s) whose style to move toward (embedding guidance).")] = None,
    toward: Annotated[Optional[list[str]], typer.Option(help="Tag(s) to push up, e.g. jazz (classifier guidance).")] = None,
    away_from: Annotated[Optional[list[str]], typer.Option(help="Tag(s) to push down.")] = None,
    strength: Annotated[float, typer.Option(help="How far to noise the input first (SDEdit t, 0 < k ≤ 1): higher = freer.")] = 0.6,
    keep: Annotated[float, typer.Option(help="Step size of the input's log-mel envelope term (keeps rhythm and dynamics; 0: off).")] = 1.0,
    match_level: Annotated[bool, typer.Option(help="Give the restyled region the input's RMS level (one gain, at most ±12 dB).")] = True,
    start: Annotated[Optional[str], typer.Option(help="Restyle only from here (default: the start).")] = None,
    end: Annotated[Optional[str], typer.Option(help="… up to here (default: the end).")] = None,
    tagger: TaggerOpt = Tagger.msd,
    output: Output = None, model: ModelOpt = DEFAULT_MODEL, steps: Steps = 50,
    guidance: Annotated[float, typer.Option(help="Step size ξ of the style term. Its gradient through decoder and tagger "
                                            "is small, so it is far larger than an edit's; the context keeps the edits' ξ.")] = 100.0,
    sampler: SamplerOpt = Sampler.auto, eta: Eta = 0.0, seed: Seed = None, variations: Variations = 1,
    device: DeviceOpt = Device.auto, quiet: Quiet = False, overwrite: Overwrite = False,
    consistency: Consistency = True, context: Context = None, format_: Format = SampleFormat.auto,
) -> None:
    """Steer a clip toward the style of reference clips (--like) or toward/away from tags (--toward/--away-from)."""
    params = dict(locals())
    common = _common(**{k: v for k, v in params.items() if k not in ("song", "like", "toward", "away_from", "strength",
                                                                     "keep", "start", "end", "tagger", "match_level")},
                     loss_space=LossSpace.audio)
    from . import edit, losses
    from .musicnn import load_musicnn

    like, toward, away_from = like or [], toward or [], away_from or []
    if not (like or toward or away_from):
        raise UserError("restyle needs a target: --like CLIP, --toward TAG or --away-from TAG")
    if not 0 < strength <= 1:
        raise UserError(f"--strength must be in (0, 1], got {strength}")
    references = [_load_song(p, common.quiet)[0] for p in like]

    def run(model, songs, settings, callback):
        import torch

        audio, sr = songs[0], model.sample_rate
        net = load_musicnn(tagger.value, device=model.device)
        a = _samples(parse_or(start, 0.0, "--start"), sr)
        b = audio.shape[-1] if end is None else _samples(parse_or(end, 0.0, "--end"), sr)
        terms = []
        if like:
            with torch.no_grad():
                target = torch.stack([net.embedding(r[None].to(model.device), sr)[0] for r in references]).mean(dim=0)
            terms.append(losses.embedding_distance(net, target, sr))
        if toward or away_from:
            terms.append(losses.tag_bce(net, [net.tag_index(t) for t in toward], [net.tag_index(t) for t in away_from], sr))
        return edit.restyle(model, audio, a, b, settings, style_loss=lambda x: sum(term(x) for term in terms),
                            structure=losses.log_mel_envelope(net, sr), keep=keep, strength=strength, match_level=match_level,
                            variations=common.variations, context=_context_samples(common, sr), callback=callback)

    extra = {"like": [str(p) for p in like], "toward": toward, "away_from": away_from, "strength": strength,
             "keep": keep, "start": start, "end": end, "tagger": tagger.value, "match_level": match_level}
    _run_edit("restyle", common, [song], run, 1, extra)


def parse_or(text: str | None, default: float, what: str) -> float:
    from .timespec import parse_time

    return default if text is None else parse_time(text, what)


@app.command()
def tags(
    song: Annotated[Path, typer.Argument(help="The audio to tag.")],
    tagger: TaggerOpt = Tagger.msd,
    top: Annotated[int, typer.Option(help="How many tags to show.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """What the musicnn tagger hears: the top tags with their probabilities (mean over 3 s patches)."""
    import torch

    from .musicnn import load_musicnn

    audio, _ = _load_song(song, quiet=as_json)
    net = load_musicnn(tagger.value)
    with torch.no_grad():
        probs = net.tag_probs(audio[None]).mean(dim=1)[0]
    order = probs.argsort(descending=True)[: max(top, 1)]
    rows = [(net.config.tags[i], float(probs[i])) for i in order]
    if as_json:
        out.print_json(json.dumps({"file": str(song), "tagger": tagger.value, "tags": dict(rows)}))
        return
    table = Table("tag", "probability", title=f"{song.name} — {tagger.value}")
    for name, p in rows:
        table.add_row(name, f"{p:.3f}")
    out.print(table)


DataDir = Annotated[Path, typer.Argument(help="Folder of audio files (.wav/.flac/.ogg, searched recursively), 44.1 kHz stereo preferred.")]
OutDir = Annotated[Path, typer.Option("--out", help="Output folder (refused if it holds a run, unless --resume).")]
Preset = Annotated[str, typer.Option(help="tiny (CPU seconds), demo (what ships), sao (SAO 1.0 shapes).")]
TrainSteps = Annotated[Optional[int], typer.Option("--steps", help="Optimizer steps (default: the preset's).")]
BatchSize = Annotated[Optional[int], typer.Option(help="Examples per step (default: the preset's).")]
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
    from .train import VAETrainConfig, train_vae

    config = VAETrainConfig.for_preset(preset, steps=steps, batch_size=batch_size, lr=lr, max_minutes=max_minutes)
    _train("vae", lambda progress: train_vae(data, out_dir, config, device=_pick_device(device), resume=resume,
                                             holdout=holdout, progress=progress), config, quiet)


@train_app.command("dit")
def train_dit_cmd(data: DataDir, vae: Annotated[Path, typer.Option(help="Folder written by `train vae` (or any model folder).")],
                  out_dir: OutDir, preset: Preset = "demo", steps: TrainSteps = None, batch_size: BatchSize = None,
                  lr: LearningRate = None, max_minutes: MaxMinutes = None, resume: Resume = False,
                  holdout: Holdout = None, device: TrainDevice = Device.auto, quiet: Quiet = False) -> None:
    """Train the DiT (v-prediction) on the VAE's latents; writes a complete model folder for --model."""
    from .train import DiTTrainConfig, train_dit

    config = DiTTrainConfig.for_preset(preset, steps=steps, batch_size=batch_size, lr=lr, max_minutes=max_minutes)
    _train("dit", lambda progress: train_dit(data, vae, out_dir, config, device=_pick_device(device), resume=resume,
                                             holdout=holdout, progress=progress), config, quiet)


def _train(stage: str, run, config, quiet: bool) -> None:
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
                  TimeRemainingColumn(), console=err, disable=quiet) as bar:
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
