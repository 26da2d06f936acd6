"""One edit run, from the options a user typed to published files.

check the options → reserve the outputs → load the model → open the inputs at its rate → run the
edit on excerpts → stream each output (the untouched song copied block by block, the edited
window in between) → sidecars → publish all files together. Memory stays flat in the song's
length, and nothing appears on disk unless every output of the run is complete.
"""

from __future__ import annotations

import hashlib
import json
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
OUTPUT_SUFFIXES = (".wav", ".flac")


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

    def check(self) -> None:
        """Refuse bad values before any work: every number has a range."""
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"--seed must be a whole number from 0 to {MAX_SEED}, got {_short(self.seed)}")
        if not 1 <= self.steps <= MAX_STEPS:
            raise UserError(f"--steps must be from 1 to {MAX_STEPS}, got {_short(self.steps)}")
        if not 1 <= self.variations <= MAX_VARIATIONS:
            raise UserError(f"--variations must be from 1 to {MAX_VARIATIONS}, got {_short(self.variations)}")
        if self.context is not None:
            check_seconds(self.context, "--context")
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
    sources: list = field(default_factory=list)  # the SongFiles, to measure seams against


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


def load_model(common: Common, say: Callable[[str], None]):
    import torch

    from .registry import load_model as load

    device = pick_device(common.device)
    if device.type == "cuda":
        # --seed promises bit-for-bit results on the same device: cuDNN must not pick kernels by timing
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    if common.quiet:
        from huggingface_hub.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    model, resolved = load(common.model, device=device, dtype=torch.float32)
    model.eval().requires_grad_(False)
    if resolved.kind == "builtin":
        say(f"[yellow]model {resolved.name}: {resolved.description}[/yellow]")
    return model, resolved, device


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


def run_edit(verb: str, common: Common, inputs: list[Path], edit: Callable, runs, edit_settings: dict, *,
             progress, say: Callable[[str], None]) -> Run:
    """Check, reserve the outputs, load, run `edit(model, sources, settings, begin) -> Edited`,
    write and publish. `runs` is how many sampling runs the edit takes (a number, or a function
    of the model); `progress(total, label)` is a context manager yielding the step callback, and
    the edit enters `begin()` (that context) around its sampling."""
    from .atomic import Outputs

    common.check()
    settings = settings_for(common)
    paths = output_paths(inputs[0] if inputs else None, common, verb)
    infos = [probe_input(p) for p in inputs]
    targets = [f for p in paths for f in (p, sidecar_path(p))]
    with Outputs(targets, overwrite=common.overwrite, inputs=tuple(inputs)) as outputs:
        outputs.reserve()
        model, resolved, device = load_model(common, say)
        settings = settings.for_model(model)
        with opened(inputs, model.sample_rate, model.audio_channels) as sources:
            for info, source in zip(infos, sources):
                for note in source.info.conversions:
                    say(f"[dim]{Path(info.path).name}: {note}[/dim]")
            started = time.perf_counter()
            total_runs = runs(model) if callable(runs) else runs
            label = f"{verb} ({settings.sampler}, seed {settings.seed})"
            # the edit checks its inputs first and starts the bar when sampling starts
            edited = edit(model, sources, settings, lambda: progress(total_runs * settings.steps, label))
            elapsed = time.perf_counter() - started
            context = {"verb": verb, "common": common, "settings": settings, "model": model, "resolved": resolved,
                       "device": device, "sources": sources, "edit_settings": edit_settings, "elapsed": elapsed}
            run = write_outputs(outputs, paths, edited, context)
        outputs.publish()
    return run


def write_outputs(outputs, paths: list[Path], edited: Edited, context: dict) -> Run:
    """Every output and its sidecar into their reserved temporary files (nothing published yet)."""
    from .atomic import check_free_space
    from .audio import DEFAULT_SUBTYPE, PCM_BITS, output_subtype, write_song

    common, model, sources = context["common"], context["model"], context["sources"]
    input_subtype = sources[0].info.subtype if sources else None
    run = Run(context["verb"])
    subtypes = [output_subtype(input_subtype, p) if common.sample_format == "auto" else common.sample_format for p in paths]
    lengths = [sum(_piece_length(piece) for piece in pieces) for pieces in edited.pieces]
    bytes_per_sample = [PCM_BITS.get(s, 32) // 8 for s in subtypes]
    check_free_space(paths[0].parent, sum(n * model.audio_channels * b for n, b in zip(lengths, bytes_per_sample)) + 2**20)
    for i, (path, pieces, subtype) in enumerate(zip(paths, edited.pieces, subtypes)):
        saved: list = []
        outputs.write(path, lambda temporary: saved.append(
            write_song(temporary, pieces, model.sample_rate, subtype or DEFAULT_SUBTYPE, named=path)))
        sidecar = _sidecar(context, i, saved[0], lengths[i], edited.result, outputs.temporary(path))
        outputs.write(sidecar_path(path), lambda temporary: temporary.write_text(json.dumps(sidecar, indent=2) + "\n"))
        run.outputs.append({"path": str(path), "sidecar": str(sidecar_path(path)), "seconds": lengths[i] / model.sample_rate,
                            "saved": saved[0], "seams": edited.result.seams[i]})
    return run


def _piece_length(piece) -> int:
    from .audio import _piece_length as length

    return length(piece)


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
                     "variations": common.variations, "device": str(context["device"]), "context_s": common.context},
        "seed": settings.seed,
        "windows": [w.to_dict(sr) for w in result.windows],
        "seams": [s.to_dict() for s in result.seams[i]],
        "guidance_loss_final": result.guidance_loss,
        **({"level_gain_db": result.level_gain_db[i]} if result.level_gain_db else {}),
        # the audio this sidecar describes: a script can check that the pair belongs together
        "output": {**saved.to_dict(), "sha256": sha256(written)},
        "seconds": length / sr,
        "elapsed_s": round(context["elapsed"], 3),
    }


# ---- excerpts: what each command reads, and how its output is put together --------------------


def model_window(model) -> int:
    return model.max_frames * model.downsampling_ratio


def region_excerpt(source, start: int, end: int, model) -> tuple[int, int]:
    """The samples an edit of [start, end) can look at: a model window on each side (the window
    planner never reaches further), clipped to the song."""
    reach = model_window(model)
    return max(0, start - reach), min(source.length, end + reach)


def check_region(source, start_s: float, end_s: float, sample_rate: int) -> tuple[int, int]:
    """--start/--end in samples, checked against the song."""
    from .timespec import seconds_to_samples

    start, end = seconds_to_samples(start_s, sample_rate), seconds_to_samples(end_s, sample_rate)
    length = source.length
    if start >= length:
        raise UserError(f"--start ({start_s:g} s) is past the end of the song ({length / sample_rate:.3f} s)")
    if end > length:
        raise UserError(f"--end ({end_s:g} s) is past the end of the song ({length / sample_rate:.3f} s)")
    if end <= start:
        raise UserError(f"--start ({start_s!r} s) and --end ({end_s!r} s) are less than one sample apart")
    return start, end


def check_not_silent(audio, what: str) -> None:
    from .audio import check_not_silent as check

    check(audio, what=what)


def shifted(result, offset: int, sample_rate: int):
    """The result with its windows and seams moved `offset` samples later (excerpt → song)."""
    windows = [replace(w, at=w.at + offset, edit_start=w.edit_start + offset, edit_end=w.edit_end + offset)
               for w in result.windows]
    seams = [[replace(s, position=s.position + offset, seconds=s.seconds + offset / sample_rate) for s in per]
             for per in result.seams]
    return replace(result, windows=windows, seams=seams)


def estimate_memory(model, samples: int, variations: int, what: str) -> None:
    """Refuse a run whose audio alone cannot fit: each variation holds a few copies of its excerpt."""
    from .audio import check_memory

    copies = 8
    check_memory(samples * model.audio_channels * 4 * copies * variations, what)


def check_length(seconds: float, what: str) -> float:
    check_seconds(seconds, what)
    if not seconds > 0:
        raise UserError(f"{what} must be a positive number of seconds, got {seconds:g}")
    return seconds


# ---- the edits on files --------------------------------------------------------------------------


def _context_samples(common: Common, sample_rate: int) -> int | None:
    return None if common.context is None else round(common.context * sample_rate)


def region_edit(common: Common, start_s: float, end_s: float, strength: float | None) -> Callable:
    """infill (strength None) or regenerate: the excerpt around the region, edited, streamed back."""
    from . import edit

    def run(model, sources, settings, begin) -> Edited:
        song, sr = sources[0], model.sample_rate
        start, end = check_region(song, start_s, end_s, sr)
        s0, s1 = region_excerpt(song, start, end, model)
        estimate_memory(model, s1 - s0, common.variations, f"{common.variations} variation(s) of this edit")
        excerpt = song.read(s0, s1)
        check_not_silent(excerpt, f"{song.path} around the edit")
        with begin() as callback:
            result = edit.infill(model, excerpt, start - s0, end - s0, settings, variations=common.variations,
                                 context=_context_samples(common, sr), strength=strength, offset=s0,
                                 song_length=song.length, callback=callback)
        pieces = [[(song, 0, s0), audio, (song, s1, song.length)] for audio in result.songs]
        return Edited(shifted(result, s0, sr), pieces)

    return run


def continue_edit(common: Common, seconds: float) -> Callable:
    from . import edit

    def run(model, sources, settings, begin) -> Edited:
        song, sr = sources[0], model.sample_rate
        s0 = max(0, song.length - model_window(model))
        new = round(seconds * sr)
        estimate_memory(model, song.length - s0 + new, common.variations, f"continuing by {seconds:g} s")
        excerpt = song.read(s0, song.length)
        check_not_silent(excerpt, f"the end of {song.path}")
        with begin() as callback:
            result = edit.continue_song(model, excerpt, seconds, settings, variations=common.variations,
                                        context=_context_samples(common, sr), offset=s0, callback=callback)
        return Edited(shifted(result, s0, sr), [[(song, 0, s0), audio] for audio in result.songs])

    return run


def transition_edit(common: Common, length_s: float, strength: float) -> Callable:
    from . import edit

    def run(model, sources, settings, begin) -> Edited:
        first, second = sources
        sr, reach = model.sample_rate, model_window(model)
        overlap = round(length_s * sr)
        if overlap > min(first.length, second.length):
            raise UserError(f"--length {length_s:g} s is longer than one of the tracks")
        s0, e2 = max(0, first.length - overlap - reach), min(second.length, overlap + reach)
        estimate_memory(model, first.length - s0 + e2, common.variations, f"{common.variations} transition(s)")
        head, tail = first.read(s0, first.length), second.read(0, e2)
        check_not_silent(head, f"the end of {first.path}")
        check_not_silent(tail, f"the start of {second.path}")
        with begin() as callback:
            result = edit.transition(model, head, tail, overlap, settings, strength=strength, variations=common.variations,
                                     context=_context_samples(common, sr), offset=s0,
                                     song_length=first.length + second.length - overlap, callback=callback)
        pieces = [[(first, 0, s0), audio, (second, e2, second.length)] for audio in result.songs]
        return Edited(shifted(result, s0, sr), pieces)

    return run


def generate_edit(common: Common, seconds: float) -> Callable:
    from . import edit

    def run(model, sources, settings, begin) -> Edited:
        with begin() as callback:
            result = edit.generate(model, seconds, settings, variations=common.variations, callback=callback)
        return Edited(result, [[audio] for audio in result.songs])

    return run


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


def restyle_edit(common: Common, style: Style, start_s: float, end_s: float | None) -> Callable:
    from . import edit, losses
    from .audio import load_audio
    from .musicnn import load_musicnn

    for clip in style.like:
        probe_input(clip)

    def run(model, sources, settings, begin) -> Edited:
        import torch

        song, sr = sources[0], model.sample_rate
        start, end = check_region(song, start_s, seconds_of(song.length, sr) if end_s is None else end_s, sr)
        net = load_musicnn(style.tagger, device=model.device)
        terms = []
        if style.like:
            references = [load_audio(clip, sr, model.audio_channels)[0] for clip in style.like]
            for clip, reference in zip(style.like, references):
                check_not_silent(reference, str(clip))
            with torch.no_grad():
                target = torch.stack([net.embedding(r[None].to(model.device), sr)[0] for r in references]).mean(dim=0)
            terms.append(losses.embedding_distance(net, target, sr))
        if style.toward or style.away_from:
            terms.append(losses.tag_bce(net, [net.tag_index(t) for t in style.toward],
                                        [net.tag_index(t) for t in style.away_from], sr))
        s0, s1 = region_excerpt(song, start, end, model)
        estimate_memory(model, s1 - s0, common.variations, f"{common.variations} restyle variation(s)")
        excerpt = song.read(s0, s1)
        check_not_silent(excerpt, f"{song.path} around the region")
        with begin() as callback:
            result = edit.restyle(model, excerpt, start - s0, end - s0, settings, style_loss=lambda x: sum(t(x) for t in terms),
                                  structure=losses.log_mel_envelope(net, sr), keep=style.keep, strength=style.strength,
                                  match_level=style.match_level, variations=common.variations,
                                  context=_context_samples(common, sr), offset=s0, song_length=song.length, callback=callback)
        pieces = [[(song, 0, s0), audio, (song, s1, song.length)] for audio in result.songs]
        return Edited(shifted(result, s0, sr), pieces)

    return run


def seconds_of(samples: int, sample_rate: int) -> float:
    return samples / sample_rate
