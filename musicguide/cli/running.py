"""Running an edit command, from the options a user typed to published files.

check the options → reserve the outputs → load the model (an `api.Editor`) → the Editor opens the
inputs at its rate and runs the edit on excerpts → stream each output (the untouched song copied
block by block, the edited window in between) → sidecars → publish all files together. Memory
stays flat in the song's length, and nothing appears on disk unless every output of the run is
complete. Also the progress bar, and what is printed when it is done.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..atomic import sidecar_path
from ..errors import UserError
from ..options import EDIT_OPTIONS, EditOptions, probe_input, settings_for
from .root import err, out

OUTPUT_SUFFIXES = (".wav", ".flac")
HOT_PEAK = 2.0  # +6 dBFS: a float input beyond this is far past full scale, and the user is told


@dataclass(frozen=True)
class CommandOptions:
    """An edit command's shared options: the edit's own (`edit`: what every Editor method takes)
    and the command line's (which model on which device, where and how the result is written,
    what is printed)."""

    edit: EditOptions = field(default_factory=EditOptions)
    output: Path | None = None
    model: str = "demo"
    device: str = "auto"
    precision: str = "auto"
    quiet: bool = False
    overwrite: bool = False
    sample_format: str = "auto"
    as_json: bool = False
    plot: bool = False

    @classmethod
    def from_flags(cls, values: dict) -> CommandOptions:
        """From the parsed flags, by name."""
        edit = EditOptions(**{key: value for key, value in values.items() if key in EDIT_OPTIONS})
        return cls(edit, **{key: value for key, value in values.items() if key not in EDIT_OPTIONS})


def output_paths(first_input: Path | None, common: CommandOptions, verb: str) -> list[Path]:
    if common.output is not None:
        base = common.output
    elif first_input is not None:
        base = first_input.with_name(f"{first_input.stem}.{verb}.wav")
    else:
        base = Path(f"musicguide.{verb}.wav")
    if base.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"cannot write {base}: use a .wav or .flac output")
    if common.edit.variations == 1:
        return [base]
    return [base.with_name(f"{base.stem}_{i}{base.suffix}") for i in range(1, common.edit.variations + 1)]


def model_files(model: str) -> list[Path]:
    """A model given as a folder is read too: its files are inputs that no output may replace."""
    folder = Path(model).expanduser()
    try:  # an existing folder wins over a registry name (registry.resolve_model)
        return [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
    except OSError:  # unreadable: loading it will say so
        return []


def load_model(plan, say: Callable[[str], None]):
    """The `api.Editor` holding the model, device and precision that an edit plan's options name."""
    common = plan.common
    editor = plan.open_editor(common.model, device=common.device, precision=common.precision, quiet=common.quiet)
    if editor.resolved.kind == "builtin":
        say(f"[yellow]model {editor.resolved.name}: {editor.resolved.description}[/yellow]")
    return editor


@dataclass
class Run:
    """The state of one command's run, for the CLI's messages and --json."""

    verb: str
    outputs: list[dict] = field(default_factory=list)


def check_before_work(verb: str, common: CommandOptions, inputs: list[Path], reads=(), *, plot: bool = False):
    """Everything that can be refused before a model loads or a beat is tracked: the options'
    values, the output names (folder, permissions, format, clobbering, inputs) and the inputs'
    headers, checked once, before the command reads bar times. Returns the output paths and the
    run's `atomic.Outputs` (every file it will write, guarded against the inputs and the `reads`),
    checked, not yet reserved (`run_edit` reserves them, which checks the names again)."""
    from ..atomic import Outputs
    from ..writing import check_output_format

    common.edit.check()
    settings_for(common.edit)  # the sampler's own ranges (--guidance, --eta, ...)
    paths = output_paths(inputs[0] if inputs else None, common, verb)
    if common.sample_format != "auto":
        for path in paths:
            check_output_format(path, common.sample_format)
    if plot:
        from ..plot import require_matplotlib

        require_matplotlib()
    for path in inputs:
        probe_input(path)
    targets = [f for p in paths for f in (p, sidecar_path(p), *([p.with_suffix(".png")] if plot else []))]
    outputs = Outputs(targets, overwrite=common.overwrite, inputs=(*inputs, *reads, *model_files(common.model)))
    outputs.check()
    return paths, outputs


def check_free_space_for(paths: list[Path], sources: list, edit_settings: dict, model) -> None:
    """Before sampling: room for the outputs at their largest (every input's length plus the
    seconds a continuation or a generation adds, at 4 bytes a sample), so that a full disk is
    found now, not after the work. Writing checks the exact size again."""
    from ..atomic import check_free_space

    added = edit_settings.get("seconds", 0.0)
    samples = sum(source.length for source in sources) + math.ceil(added * model.sample_rate)
    check_free_space(paths[0].parent, len(paths) * samples * model.audio_channels * 4 + 2**20)


def edit_options(common: CommandOptions, timing=None) -> dict:
    """The keyword arguments of an `api.Editor` method for these command-line options."""
    options = {key: getattr(common.edit, key) for key in EDIT_OPTIONS}
    options["seed"] = settings_for(common.edit).seed  # drawn here when not given, so that it is reported
    if timing is not None:
        options.update(bpm=timing.bpm, downbeat=timing.downbeat, beats_per_bar=timing.beats_per_bar, snap=timing.snap)
    return options


def run_edit(plan, *, progress, say: Callable[[str], None], editor=None) -> Run:
    """Reserve a checked edit's outputs (`options.EditPlan`: its paths and `atomic.Outputs`, guarded
    against its inputs and the other files it reads), load the model (an `api.Editor`), run
    `plan.call(editor, **options)` (an Editor method with the command's own arguments bound), write
    each variation and its sidecar into the reserved files, and publish them together.
    `progress(label)` is a context manager yielding the sampler's step callback. With --plot, a
    picture of each output is written beside it. `editor`: the model already loaded (a batch holds
    one for all its jobs)."""
    from ..audio import amplitude_to_db

    common, paths, outputs, plot = plan.common, plan.paths, plan.outputs, plan.common.plot
    with outputs:
        outputs.reserve()  # checks again: a name may have appeared since
        editor = editor or load_model(plan, say)
        result = plan.call(editor, **edit_options(common, plan.timing), progress=progress,
                      before_sampling=lambda sources, edit_settings, model: check_free_space_for(
                          paths, sources, edit_settings, model))
        with result:
            for item in result.sidecar.inputs:
                for note in item["conversions"]:
                    say(f"[dim]{Path(item['path']).name}: {note}[/dim]")
            run = Run(plan.verb)
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


@contextmanager
def _progress(quiet: bool, label: str) -> Iterator:
    """A rich progress bar over sampling steps; yields the sampler callback. Its total is the
    edit's own plan, which every step carries (runs × steps). The bar is transient and a summary
    line stays, so that an error ends on one line, not on a half-full bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    if quiet:
        yield None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(label, total=None, loss="")

        def callback(step) -> None:
            loss = "" if step.loss is None else f"d={step.loss:.4g}"
            progress.update(task, advance=1, loss=loss, total=step.runs * step.steps)

        yield callback
        done = progress.tasks[0]
    err.print(f"{label}: {done.completed:.0f}/{done.total or 0:.0f} steps in {done.elapsed:.1f} s")


def execute(plan, editor=None) -> Run:
    """Run a checked edit (`options.EditPlan`) through the runner: outputs reserved, the model
    loaded (or `editor`, one an `api.Editor` already holds), written and published together."""
    common = plan.common
    quiet = common.quiet or common.as_json

    def say(text: str) -> None:
        if not quiet:
            err.print(text)

    return run_edit(plan, progress=lambda label: _progress(quiet, label), say=say, editor=editor)


def report(verb: str, common: CommandOptions, run: Run) -> None:
    """What a command prints when it is done: one JSON object with --json, else a line per file."""
    if common.as_json:
        print(json.dumps({"ok": True, "command": verb, "outputs": [
            {"path": o["path"], "sidecar": o["sidecar"], "seconds": o["seconds"],
             "flagged_seams": [s.to_dict() for s in o["seams"] if s.flagged]} for o in run.outputs]}))
    elif not common.quiet:
        for output in run.outputs:
            _report(output)


def _report(output: dict) -> None:
    from ..timespec import format_time

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
