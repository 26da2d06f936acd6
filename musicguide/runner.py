"""One edit run, from the options a user typed to published files.

check the options → reserve the outputs → load the model → open the inputs at its rate → run the
edit on excerpts → stream each output (the untouched song copied block by block, the edited
window in between) → sidecars → publish all files together. Memory stays flat in the song's
length, and nothing appears on disk unless every output of the run is complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

from . import __version__
from .errors import UserError
from .timespec import check_seconds

MAX_SEED = 2**32 - 1  # continue and evaluate add chunk/clip indices to it; torch takes up to 2**64 - 1
MAX_STEPS = 10_000
MAX_VARIATIONS = 256
MAX_CFG = 100.0
DEFAULT_CFG = 6.0  # stable-audio-tools' default cfg_scale
OUTPUT_SUFFIXES = (".wav", ".flac")
HOT_PEAK = 2.0  # +6 dBFS: a float input beyond this is far past full scale, and the user is told


@dataclass(frozen=True)
class Common:
    """The options every edit command shares."""

    output: Path | None = None
    model: str = "demo"
    steps: int = 50
    guidance: float | None = None
    sampler: str = "auto"
    eta: float = 0.0
    seed: int | None = None
    variations: int = 1
    device: str = "auto"
    quiet: bool = False
    overwrite: bool = False
    loss_space: str = "latent"
    consistency: bool = True
    context: float | None = None
    sample_format: str = "auto"
    as_json: bool = False
    plot: bool = False
    precision: str = "auto"
    prompt: str | None = None
    negative_prompt: str | None = None
    cfg: float | None = None

    def check(self) -> None:
        """Refuse bad values before any work: every number has a range."""
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"--seed must be a whole number from 0 to {MAX_SEED}, got {_short(self.seed)}")
        if not 1 <= self.steps <= MAX_STEPS:
            raise UserError(f"--steps must be from 1 to {MAX_STEPS}, got {_short(self.steps)}")
        if not 1 <= self.variations <= MAX_VARIATIONS:
            raise UserError(f"--variations must be from 1 to {MAX_VARIATIONS}, got {_short(self.variations)}")
        if self.context is not None and not check_seconds(self.context, "--context") > 0:
            raise UserError(f"--context must be a positive number of seconds, got {self.context:g}")
        if self.prompt is None and (self.negative_prompt is not None or self.cfg is not None):
            raise UserError("--negative-prompt and --cfg need --prompt")
        if self.cfg is not None and not (math.isfinite(self.cfg) and 0 <= self.cfg <= MAX_CFG):
            raise UserError(f"--cfg must be a number from 0 to {MAX_CFG:g}, got {self.cfg:g}")
        if self.eta and self.sampler in ("ddpm", "pingpong"):
            raise UserError(f"--eta applies to the ddim sampler only; {self.sampler} draws fresh noise every step",
                            hint="drop --eta, or use --sampler ddim")


def _short(value: int) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"{text[:10]}…({len(text)} digits)"


@dataclass
class Edited:
    """What an edit hands back to be written: the result, and each variation's output as pieces
    (input ranges streamed from disk, generated tensors in between)."""

    result: object  # edit.EditResult, with windows and seams in the output's coordinates
    pieces: list[list]
    # per variation, for --plot: (the audio before or None, the edited excerpt, where it starts in s)
    views: list[tuple] = field(default_factory=list)
    extra: list[dict] = field(default_factory=list)  # per variation, added to the sidecar


def output_paths(first_input: Path | None, common: Common, verb: str) -> list[Path]:
    if common.output is not None:
        base = common.output
    elif first_input is not None:
        base = first_input.with_name(f"{first_input.stem}.{verb}.wav")
    else:
        base = Path(f"musicguide.{verb}.wav")
    if base.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"cannot write {base}: use a .wav or .flac output")
    if common.variations == 1:
        return [base]
    return [base.with_name(f"{base.stem}_{i}{base.suffix}") for i in range(1, common.variations + 1)]


def sidecar_path(path: Path) -> Path:
    return path.with_suffix(".json")


def model_files(model: str) -> list[Path]:
    """A model given as a folder is read too: its files are inputs that no output may replace."""
    folder = Path(model).expanduser()
    try:  # an existing folder wins over a registry name (registry.resolve_model)
        return [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
    except OSError:  # unreadable: loading it will say so
        return []


def settings_for(common: Common):
    from .edit import SamplerSettings

    seed = common.seed if common.seed is not None else secrets.randbelow(2**31)
    return SamplerSettings(sampler=common.sampler, steps=common.steps, guidance=common.guidance, eta=common.eta,
                           loss_space=common.loss_space, consistency=common.consistency, seed=seed)


def probe_input(path: Path):
    """Read a song's header (not its audio): readable, not empty, at least a second long."""
    from .audio import _info, _open_sound

    with _open_sound(path) as sound:
        info = _info(path, sound)
    if info.frames < info.sample_rate:
        raise UserError(f"{path} is shorter than one second; give the model some music to work with")
    return info


def pick_device(choice: str):
    import torch

    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available here", hint="use --device cpu")
    if choice == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: Apple's Metal backend is not available here", hint="use --device cpu")
    return torch.device(choice)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def pick_dtype(precision: str, device):
    """--precision: auto is bf16 on CUDA cards that have it, else fp16 on CUDA, and fp32 on CPU and
    MPS (their half-precision kernels are slow or missing). The sampler's own arithmetic stays in
    fp32/fp64 either way: the model computes in its dtype and answers in the caller's."""
    import torch

    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


# While a batch runs, each (model, device, precision) is loaded once and kept here.
_HELD: dict | None = None


@contextmanager
def models_held() -> Iterator[None]:
    """Keep every model that `load_model` loads until the block ends (`musicguide batch`)."""
    global _HELD
    _HELD = {}
    try:
        yield
    finally:
        _HELD = None


def load_model(common: Common, say: Callable[[str], None]):
    key = (common.model, common.device, common.precision)
    if _HELD is not None and key in _HELD:
        return _HELD[key]
    loaded = _load_model(common, say)
    if _HELD is not None:
        _HELD[key] = loaded
    return loaded


def _load_model(common: Common, say: Callable[[str], None]):
    import torch

    from .registry import load_model as load

    device = pick_device(common.device)
    dtype = pick_dtype(common.precision, device)
    if device.type == "cuda":
        # --seed promises bit-for-bit results on the same device: cuDNN must not pick kernels by timing
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    if common.quiet:
        from huggingface_hub.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    model, resolved = load(common.model, device=device, dtype=dtype)
    model.eval().requires_grad_(False)
    if resolved.kind == "builtin":
        say(f"[yellow]model {resolved.name}: {resolved.description}[/yellow]")
    return model, resolved, device


def prompted(model, resolved, common: Common) -> tuple[object, dict]:
    """With --prompt, the model whose `denoise` runs classifier-free guidance on the prompt's
    tokens (encoded once; held across a batch), and what the sidecar records of it."""
    if common.prompt is None:
        return model, {}
    if getattr(model, "family", None) == "sa3":
        raise UserError("--prompt is not supported with Stable Audio 3 models yet (their T5Gemma text encoder is "
                        "not built); edit without a prompt")
    from .text import Prompted, encode_prompts, text_encoder_entry, text_conditioner

    key = ("text", common.model, common.prompt, common.negative_prompt)
    tokens = _HELD.get(key) if _HELD is not None else None
    if tokens is None:
        # MUSICGUIDE_TEXT_ENCODER: a local T5 folder instead of the pinned Hub download (offline use)
        tokens = encode_prompts(model, common.prompt, common.negative_prompt, model_folder=resolved.folder,
                                encoder_folder=os.environ.get("MUSICGUIDE_TEXT_ENCODER"))
        if _HELD is not None:
            _HELD[key] = tokens
    scale = DEFAULT_CFG if common.cfg is None else common.cfg
    entry = text_encoder_entry(text_conditioner(model.config).t5_model_name)
    record = {"text": {"prompt": common.prompt, "negative_prompt": common.negative_prompt, "cfg_scale": scale,
                       "text_encoder": {"repo": getattr(entry, "repo", None), "revision": getattr(entry, "revision", None)}}}
    return Prompted(model, tokens[0], tokens[1], scale), record


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Run:
    """The state of one command's run, for the CLI's messages and --json."""

    verb: str
    outputs: list[dict] = field(default_factory=list)


@contextmanager
def opened(paths: list[Path], sample_rate: int, channels: int) -> Iterator[list]:
    from .audio import SongFile

    with ExitStack() as stack:
        yield [stack.enter_context(SongFile(p, sample_rate, channels)) for p in paths]


def check_before_work(verb: str, common: Common, inputs: list[Path], reads=(), *, plot: bool = False):
    """Everything that can be refused before a model loads or a beat is tracked: the options'
    values, the output names (folder, permissions, format, clobbering, inputs) and the inputs'
    headers. The commands call it before reading bar times, `run_edit` again (it is cheap).
    Returns the output paths, the inputs' infos, and the run's `atomic.Outputs` (every file it will
    write, guarded against the inputs and the `reads`), checked, not yet reserved."""
    from .atomic import Outputs
    from .writing import check_output_format

    common.check()
    settings_for(common)  # the sampler's own ranges (--guidance, --eta, ...)
    paths = output_paths(inputs[0] if inputs else None, common, verb)
    if common.sample_format != "auto":
        for path in paths:
            check_output_format(path, common.sample_format)
    if plot:
        from .plot import require_matplotlib

        require_matplotlib()
    infos = [probe_input(p) for p in inputs]
    targets = [f for p in paths for f in (p, sidecar_path(p), *([p.with_suffix(".png")] if plot else []))]
    outputs = Outputs(targets, overwrite=common.overwrite, inputs=(*inputs, *reads, *model_files(common.model)))
    outputs.check()
    return paths, infos, outputs


def check_free_space_for(paths: list[Path], sources: list, edit_settings: dict, model) -> None:
    """Before sampling: room for the outputs at their largest (every input's length plus the
    seconds a continuation or a generation adds, at 4 bytes a sample), so that a full disk is
    found now, not after the work. `write_outputs` checks the exact size again."""
    from .atomic import check_free_space

    added = edit_settings.get("seconds", 0.0)
    samples = sum(source.length for source in sources) + math.ceil(added * model.sample_rate)
    check_free_space(paths[0].parent, len(paths) * samples * model.audio_channels * 4 + 2**20)


def run_edit(verb: str, common: Common, inputs: list[Path], edit: Callable, runs, edit_settings: dict, *,
             progress, say: Callable[[str], None], plot: bool = False, timing=None, reads: tuple = ()) -> Run:
    """Check, reserve the outputs, load, run `edit(model, sources, settings, begin) -> Edited`,
    write and publish. `runs` is how many sampling runs the edit takes (a number, or a function
    of the model and the sources); `progress(total, label)` is a context manager yielding the
    step callback, and the edit enters `begin()` (that context) around its sampling. With `plot`,
    a picture of each output is written beside it; `timing` (jobs.Timing) adds its beat grid.
    `reads` are the other files the command reads (--like clips, a batch's jobs file): like the
    inputs, no output may name one of them, even with --overwrite."""
    from .audio import amplitude_to_db

    paths, infos, outputs = check_before_work(verb, common, inputs, reads, plot=plot)
    settings = settings_for(common)
    with outputs:
        outputs.reserve()  # checks again: a name may have appeared since
        model, resolved, device = load_model(common, say)
        settings = settings.for_model(model)
        model, text = prompted(model, resolved, common)
        with opened(inputs, model.sample_rate, model.audio_channels) as sources:
            for info, source in zip(infos, sources):
                for note in source.info.conversions:
                    say(f"[dim]{Path(info.path).name}: {note}[/dim]")
            started = time.perf_counter()
            total_runs = runs(model, sources) if callable(runs) else runs
            label = f"{verb} ({settings.sampler}, seed {settings.seed})"

            def begin():  # the edit checks its inputs first, and enters this when sampling starts
                check_free_space_for(paths, sources, edit_settings, model)
                return progress(total_runs * settings.steps, label)

            edited = edit(model, sources, settings, begin)
            elapsed = time.perf_counter() - started
            context = {"verb": verb, "common": common, "settings": settings, "model": model, "resolved": resolved,
                       "device": device, "sources": sources, "edit_settings": edit_settings, "elapsed": elapsed,
                       "plot": plot, "beats": {} if timing is None else timing.sidecar(), "text": text}
            run = write_outputs(outputs, paths, edited, context)
            for source in sources:  # every sample has been read by now (the output streams the song)
                if source.peak > HOT_PEAK:
                    say(f"[yellow]warning: {source.path.name} has samples up to {amplitude_to_db(source.peak):+.1f} "
                        "dBFS, far beyond full scale; they were edited at the model's working level and written "
                        "back at the file's own (is the file scaled right?)[/yellow]")
        outputs.publish()
    return run


def write_outputs(outputs, paths: list[Path], edited: Edited, context: dict) -> Run:
    """Every output and its sidecar into their reserved temporary files (nothing published yet)."""
    from .atomic import check_free_space
    from .writing import DEFAULT_SUBTYPE, PCM_BITS, _piece_length, output_subtype, write_song

    common, model, sources = context["common"], context["model"], context["sources"]
    inputs = [source.info for source in sources]
    run = Run(context["verb"])
    subtypes = [output_subtype(inputs, p) if common.sample_format == "auto" else common.sample_format for p in paths]
    lengths = [sum(_piece_length(piece) for piece in pieces) for pieces in edited.pieces]
    bytes_per_sample = [PCM_BITS.get(s, 32) // 8 for s in subtypes]
    check_free_space(paths[0].parent, sum(n * model.audio_channels * b for n, b in zip(lengths, bytes_per_sample)) + 2**20)
    for i, (path, pieces, subtype) in enumerate(zip(paths, edited.pieces, subtypes)):
        saved: list = []
        outputs.write(path, lambda temporary: saved.append(
            write_song(temporary, pieces, model.sample_rate, subtype or DEFAULT_SUBTYPE, named=path)))
        sidecar = {**_sidecar(context, i, saved[0], lengths[i], edited.result, outputs.temporary(path)),
                   **(edited.extra[i] if edited.extra else {})}
        if context["plot"]:
            outputs.write(path.with_suffix(".png"), lambda temporary: _picture(temporary, edited, i, model.sample_rate, path))
        outputs.write(sidecar_path(path), lambda temporary: temporary.write_text(json.dumps(sidecar, indent=2) + "\n"))
        run.outputs.append({"path": str(path), "sidecar": str(sidecar_path(path)), "seconds": lengths[i] / model.sample_rate,
                            "saved": saved[0], "seams": edited.result.seams[i]})
    return run


def _picture(temporary: Path, edited: Edited, i: int, sample_rate: int, path: Path) -> None:
    """The edit's picture: the excerpt the model saw, before and after, on the song's time axis."""
    from .plot import draw_edit, save_png

    before, after, start = edited.views[i]
    result = edited.result
    region = (min(w.edit_start for w in result.windows) / sample_rate - start,
              max(w.edit_end for w in result.windows) / sample_rate - start) if result.windows else None
    seams = [replace(s, seconds=s.seconds - start) for s in result.seams[i]]
    figure = draw_edit(before, after, sample_rate, region=region, seams=seams, time_origin=start, title=path.name)
    save_png(figure, temporary)


def _sidecar(context: dict, i: int, saved, length: int, result, written: Path) -> dict:
    common, settings, model, resolved = context["common"], context["settings"], context["model"], context["resolved"]
    sr = model.sample_rate
    return {
        "musicguide": __version__,
        "command": context["verb"],
        "inputs": [{**s.info.to_dict(), "path": str(s.path.resolve()), "sha256": sha256(s.path)} for s in context["sources"]],
        "model": {"name": resolved.name, "kind": resolved.kind, "repo": resolved.repo, "revision": resolved.revision,
                  "folder": None if resolved.folder is None else str(resolved.folder), "objective": model.objective},
        "settings": {**settings.to_dict(), **context["edit_settings"], "variation": i + 1,
                     "variations": common.variations, "device": str(context["device"]), "context_s": common.context,
                     "precision": common.precision, "dtype": str(model.dtype).removeprefix("torch.")},
        "seed": settings.seed,
        "windows": [w.to_dict(sr) for w in result.windows],
        "seams": [s.to_dict() for s in result.seams[i]],
        "guidance_loss_final": result.guidance_loss,
        **({"level_gain_db": result.level_gain_db[i]} if result.level_gain_db else {}),
        **context["beats"],
        **context["text"],
        # the audio this sidecar describes: a script can check that the pair belongs together
        "output": {**saved.to_dict(), "sha256": sha256(written)},
        "seconds": length / sr,
        "elapsed_s": round(context["elapsed"], 3),
    }
