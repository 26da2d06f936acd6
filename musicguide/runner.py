"""One edit run, from the options a user typed to published files.

check the options → reserve the outputs → load the model → open the inputs at its rate → run the
edit on excerpts → stream each output (the untouched song copied block by block, the edited
window in between) → sidecars → publish all files together. Memory stays flat in the song's
length, and nothing appears on disk unless every output of the run is complete.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

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


def load_model(common: Common, say: Callable[[str], None]):
    """The `api.Editor` holding the model, device and precision that `common` names."""
    from .api import Editor

    editor = Editor.from_pretrained(common.model, device=common.device, precision=common.precision, quiet=common.quiet)
    if editor.resolved.kind == "builtin":
        say(f"[yellow]model {editor.resolved.name}: {editor.resolved.description}[/yellow]")
    return editor


def prompted(model, resolved, common: Common, cache: dict | None = None) -> tuple[object, dict]:
    """With --prompt, the model whose `denoise` runs classifier-free guidance on the prompt's
    tokens (encoded once per `cache`), and what the sidecar records of it."""
    if common.prompt is None:
        return model, {}
    if getattr(model, "family", None) == "sa3":
        raise UserError("--prompt is not supported with Stable Audio 3 models yet (their T5Gemma text encoder is "
                        "not built); edit without a prompt")
    from .text import Prompted, encode_prompts, text_encoder_entry, text_conditioner

    key = (common.prompt, common.negative_prompt)
    tokens = cache.get(key) if cache is not None else None
    if tokens is None:
        # MUSICGUIDE_TEXT_ENCODER: a local T5 folder instead of the pinned Hub download (offline use)
        tokens = encode_prompts(model, common.prompt, common.negative_prompt, model_folder=resolved.folder,
                                encoder_folder=os.environ.get("MUSICGUIDE_TEXT_ENCODER"))
        if cache is not None:
            cache[key] = tokens
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
    found now, not after the work. Writing checks the exact size again."""
    from .atomic import check_free_space

    added = edit_settings.get("seconds", 0.0)
    samples = sum(source.length for source in sources) + math.ceil(added * model.sample_rate)
    check_free_space(paths[0].parent, len(paths) * samples * model.audio_channels * 4 + 2**20)


# The options of `Common` that an edit takes (the rest say where and how to write, and what to print).
EDIT_OPTIONS = ("steps", "guidance", "sampler", "eta", "seed", "variations", "loss_space", "consistency", "context",
                "prompt", "negative_prompt", "cfg")


def edit_options(common: Common, timing=None) -> dict:
    """The keyword arguments of an `api.Editor` method for these command-line options."""
    options = {key: getattr(common, key) for key in EDIT_OPTIONS}
    options["seed"] = settings_for(common).seed  # drawn here when not given, so that it is reported
    if timing is not None:
        options.update(bpm=timing.bpm, downbeat=timing.downbeat, beats_per_bar=timing.beats_per_bar, snap=timing.snap)
    return options


def run_edit(verb: str, common: Common, inputs: list[Path], call: Callable, *, progress, say: Callable[[str], None],
             plot: bool = False, timing=None, reads: tuple = (), editor=None) -> Run:
    """Check, reserve the outputs, load the model (an `api.Editor`), run `call(editor, **options)`
    (an Editor method with the command's own arguments bound), write each variation and its
    sidecar into the reserved files, and publish them together. `progress(label)` is a
    context manager yielding the sampler's step callback. With `plot`, a picture of each output
    is written beside it. `reads` are the other files the command reads (--like clips, a batch's
    jobs file): like the inputs, no output may name one of them, even with --overwrite. `editor`:
    the model already loaded (a batch holds one for all its jobs)."""
    from .audio import amplitude_to_db

    paths, _, outputs = check_before_work(verb, common, inputs, reads, plot=plot)
    with outputs:
        outputs.reserve()  # checks again: a name may have appeared since
        editor = editor or load_model(common, say)
        result = call(editor, **edit_options(common, timing), progress=progress,
                      before_sampling=lambda sources, edit_settings, model: check_free_space_for(
                          paths, sources, edit_settings, model))
        with result:
            for item in result.sidecar.inputs:
                for note in item["conversions"]:
                    say(f"[dim]{Path(item['path']).name}: {note}[/dim]")
            run = Run(verb)
            sample_format = common.sample_format
            for path, variation in zip(paths, result.variations):
                saved = variation.write_into(outputs, path, sample_format=sample_format, plot=plot)
                run.outputs.append({"path": str(path), "sidecar": str(sidecar_path(path)),
                                    "seconds": variation.sidecar.seconds, "saved": saved, "seams": variation.seams})
            for source in result.sources:  # every sample has been read by now (the output streams the song)
                if source.peak > HOT_PEAK:
                    say(f"[yellow]warning: {source.path.name} has samples up to {amplitude_to_db(source.peak):+.1f} "
                        "dBFS, far beyond full scale; they were edited at the model's working level and written "
                        "back at the file's own (is the file scaled right?)[/yellow]")
        outputs.publish()
    return run
