"""`musicguide evaluate`: check the options before anything is loaded, load the model on the chosen
device, evaluate, and write the report (Markdown + JSON). The evaluation's modules are imported
when the command runs, so that registering it costs `--help` nothing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, Sequence

import typer

from ..atomic import check_writable
from ..errors import UserError
from ..options import MAX_SEED, MAX_STEPS
from .root import DEFAULT_MODEL, app, err, out
from .options import Device, DeviceOpt, ModelOpt, Overwrite, Quiet

if TYPE_CHECKING:
    from ..evaluate.clips import Protocol
    from ..evaluate.protocol import Progress
    from ..evaluate.report import EvalReport


MAX_CLIPS = 10_000


@app.command("evaluate")
def evaluate_command(
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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from ..evaluate.clips import Protocol

    if context is not None and not (context > 0 and math.isfinite(context)):
        raise UserError(f"--context must be a positive number of seconds, got {context}")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=err, disable=quiet, transient=True) as bar:
        task = bar.add_task("evaluate", total=None)

        def progress(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=what)

        report = run_evaluate(clips_dir, model, report_path, steps, clips, seed, device.value, quiet, tracks=tracks,
                              overwrite=overwrite, protocol=Protocol(context_seconds=context), progress=progress,
                              variant_names=variants, tasks=tasks or None)
    if not quiet:
        out.print(f"wrote {report_path} and {report_path.with_suffix('.json').name}")
        for name in report.tasks:
            err.print(report.verdicts[name], markup=False)


def report_paths(out: Path) -> tuple[Path, Path]:
    if out.suffix.lower() != ".md":
        raise UserError(f"--out must be a Markdown file (.md), got {out}")
    return out, out.with_suffix(".json")


def _check_numbers(steps: int, n_clips: int, seed: int) -> None:
    if not (1 <= steps <= MAX_STEPS and 2 <= n_clips <= MAX_CLIPS and 0 <= seed <= MAX_SEED):
        raise UserError(f"need --steps from 1 to {MAX_STEPS}, --clips from 2 to {MAX_CLIPS} and --seed from 0 to "
                        f"{MAX_SEED}, got {steps}, {n_clips} and {seed}")


def _check_variant_names(variant_names: Sequence[str] | None) -> None:
    from ..evaluate.protocol import INPAINTING_VARIANTS, MODEL_VARIANTS

    known = {**MODEL_VARIANTS, **INPAINTING_VARIANTS}
    unknown = sorted(set(variant_names or ()) - set(known))
    if unknown:
        raise UserError(f"unknown variant {unknown[0]!r}", hint=f"choose from: {', '.join(known)}")


def _chosen_variants(variant_names: Sequence[str] | None, steps: int, seed: int, model):
    """None (all of the model's variants) or the named ones plus the primary one, which the verdicts use."""
    from ..evaluate.protocol import PRIMARY_VARIANT, model_variants, variants_for

    if not variant_names:
        return None
    table = variants_for(model)
    missing = sorted(set(variant_names) - set(table))
    if missing:
        raise UserError(f"variant {missing[0]!r} needs a model with an inpainting condition (Stable Audio 3)")
    keep = {PRIMARY_VARIANT, *variant_names}
    return {name: v for name, v in model_variants(steps, seed, table).items() if name in keep}


def run_evaluate(clips_dir: Path, model: str, out: Path, steps: int = 50, n_clips: int = 24, seed: int = 0,
                 device: str = "auto", quiet: bool = False, *, tracks: Path | None = None, overwrite: bool = False,
                 protocol: Protocol | None = None, progress: Progress | None = None,
                 variant_names: Sequence[str] | None = None, tasks: Sequence[str] | None = None) -> EvalReport:
    """Load the model, evaluate, write OUT (Markdown) and OUT with .json; returns the report.
    `variant_names` picks some of MODEL_VARIANTS (the primary one is always run: the verdicts use it)."""
    from ..api import Editor
    from ..evaluate.clips import TASKS, Protocol, check_tasks, read_track_list
    from ..evaluate.protocol import evaluate
    from ..evaluate.report import write_report

    protocol = Protocol() if protocol is None else protocol
    tasks = TASKS if tasks is None else tasks
    out_md, out_json = report_paths(out)
    for path in (out_md, out_json):
        check_writable(path, overwrite=overwrite)
    if not clips_dir.is_dir():
        raise UserError(f"no such folder: {clips_dir}")
    _check_numbers(steps, n_clips, seed)
    check_tasks(tasks)
    names = None if tracks is None else read_track_list(tracks)
    _check_variant_names(variant_names)
    editor = Editor.from_pretrained(model, device=device, precision="fp32", quiet=quiet)
    net, resolved = editor.model, editor.resolved
    variants = _chosen_variants(variant_names, steps, seed, net)
    info = {"name": resolved.name, "kind": resolved.kind, "repo": resolved.repo, "revision": resolved.revision,
            "folder": None if resolved.folder is None else str(resolved.folder), "objective": net.objective,
            "device": str(net.device), "tracks": names}
    report = evaluate(editor, clips_dir, variants=variants, steps=steps, n_clips=n_clips, seed=seed, protocol=protocol,
                      tracks=names, model_info=info, progress=None if quiet else progress, tasks=tasks)
    write_report(report, out_md, out_json, overwrite=overwrite)
    return report
