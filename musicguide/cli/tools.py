"""The other commands: tags, batch, beats, train, models (evaluate has its own module, `evaluation`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer import _click as click  # typer's own copy of click: its exceptions are what the parser raises

from ..options import pick_device, probe_input
from ..errors import UserError, cli_wording
from ..batch import BATCH_OPTIONS, read_jobs
from . import running
from .root import DEFAULT_MODEL, app, err, models_app, out, train_app
from .options import Device, DeviceOpt, ModelOpt, Precision, PrecisionOpt, Quiet, Tagger, TaggerOpt


@app.command()
def tags(
    song: Annotated[Path, typer.Argument(help="The audio to tag.")],
    tagger: TaggerOpt = Tagger.msd,
    top: Annotated[int, typer.Option(help="How many tags to show (at least 1).")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """What the musicnn tagger hears: the top tags with their probabilities (mean over 3 s patches)."""
    from rich.table import Table
    import torch

    from ..audio import check_not_silent, load_audio
    from ..musicnn import load_musicnn

    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    probe_input(song)
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




@app.command()
def batch(
    jobs: Annotated[Path, typer.Argument(help='JOBS.jsonl: one {"args": ["infill", "a.wav", "--start", "30", "--end", "34"]} a line.')],
    model: ModelOpt = DEFAULT_MODEL, device: DeviceOpt = Device.auto, precision: PrecisionOpt = Precision.auto,
    quiet: Quiet = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object: every job with its outputs or error.")] = False,
) -> None:
    """Run many edits with one model load: each job writes what its command alone would, from the same seed.
    Under torchrun the jobs are split across the processes (one model load each)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from .. import distributed
    from . import edits  # noqa: F401  (registers the edit commands that the jobs run)

    jobs_list = read_jobs(jobs, _given_options)
    here = distributed.start("cuda" if device == Device.cuda else "cpu")
    mine = jobs_list[here.rank :: here.size]
    own = ["--model", model, "--device", distributed.device_for(device.value, here), "--precision", precision.value,
           "--quiet"]  # right after the command's name: a job's `--` ends the options, and everything after it is a file
    results, held = [], Held()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=err, disable=quiet or as_json or not here.is_main, transient=True) as bar:
        task = bar.add_task("batch", total=len(mine))
        for job in mine:
            results.append(_batch_job(job, own, jobs, held))
            bar.update(task, advance=1)
    merged = sorted((r for part in distributed.gather(results, here) for r in part), key=lambda r: r["line"])
    distributed.stop()
    failed = [r for r in merged if not r["ok"]]
    if here.is_main:
        _batch_summary(jobs, merged, failed, as_json, quiet)
    raise typer.Exit(1 if failed else 0)


def _given_options(args: tuple[str, ...]) -> set[str]:
    """Parse a job's arguments as its command would, without running it: the names of the options
    it gives (help included), in any spelling. A parser error is the job's error."""
    group = typer.main.get_command(app)
    root = click.Context(group, info_name="musicguide")
    command = group.get_command(root, args[0])
    # first resilient, so that --help is seen rather than printed; then strict, for bad values
    given = command.make_context(args[0], list(args[1:]), parent=root, resilient_parsing=True)
    names = {name for name in given.params if given.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
    if given.get_parameter_source("help") == click.core.ParameterSource.COMMANDLINE:
        return names | {"help"}
    if names & set(BATCH_OPTIONS):  # that error first: it is the one the job's author must fix
        return names
    try:
        command.make_context(args[0], list(args[1:]), parent=root)
    except click.exceptions.ClickException as error:
        raise UserError(error.format_message()) from error
    return names


class Held:
    """The one `api.Editor` a batch holds: loaded by its first job, used by all (the model,
    device and precision are the batch's options, never a job's)."""

    editor = None


def _batch_job(job, own: list[str], jobs: Path, held: Held) -> dict:
    """One job, parsed by its command's own parser and run with the batch's editor, as its command
    alone would run it; its error becomes one line."""
    from .options import EDIT_PLANNERS

    result = {"line": job.line, "args": list(job.args), "ok": False}
    try:
        group = typer.main.get_command(app)
        root = click.Context(group, info_name="musicguide")
        parsed = group.get_command(root, job.args[0]).make_context(job.args[0], [*own, *job.args[1:]], parent=root)
        # no job's output may replace the jobs file
        plan = EDIT_PLANNERS[job.args[0]](reads=(jobs,), **parsed.params)
        if held.editor is None:
            held.editor = running.load_model(plan, lambda text: None)
        run = running.execute(plan, held.editor)
        result.update(ok=True, outputs=[{"path": o["path"], "sidecar": o["sidecar"],
                                         "flagged_seams": [s.to_dict() for s in o["seams"] if s.flagged]}
                                        for o in run.outputs])
    except UserError as error:
        result["error"] = cli_wording(str(error))
    except click.exceptions.ClickException as error:
        result["error"] = error.format_message()
    except (MemoryError, Exception) as error:  # noqa: BLE001 - one job's failure must not stop the rest
        result["error"] = f"{type(error).__name__}: {error}"
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
    from ..beats import format_grid

    from ..beat_tracking import Timing

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
    from ..train.checkpoint import check_out_dir
    from ..train.settings import VAETrainConfig
    from ..train.vae import train_vae

    config = VAETrainConfig.for_preset(preset, steps=steps, batch_size=batch_size, lr=lr, max_minutes=max_minutes)
    check_out_dir(out_dir)
    _train("vae", lambda progress: train_vae(data, out_dir, config, device=pick_device(device.value), resume=resume,
                                             holdout=holdout, progress=progress), config, quiet)


@train_app.command("dit")
def train_dit_cmd(data: DataDir, vae: Annotated[Path, typer.Option(help="Folder written by `train vae` (or any model folder).")],
                  out_dir: OutDir, preset: Preset = "demo", steps: TrainSteps = None, batch_size: BatchSize = None,
                  lr: LearningRate = None, max_minutes: MaxMinutes = None, resume: Resume = False,
                  holdout: Holdout = None, device: TrainDevice = Device.auto, quiet: Quiet = False) -> None:
    """Train the DiT (v-prediction) on the VAE's latents; writes a complete model folder for --model."""
    from ..train.checkpoint import check_out_dir
    from ..train.dit import train_dit
    from ..train.settings import DiTTrainConfig

    config = DiTTrainConfig.for_preset(preset, steps=steps, batch_size=batch_size, lr=lr, max_minutes=max_minutes)
    check_out_dir(out_dir)
    _train("dit", lambda progress: train_dit(data, vae, out_dir, config, device=pick_device(device.value), resume=resume,
                                             holdout=holdout, progress=progress), config, quiet)


def _train(stage: str, run, config, quiet: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from .. import distributed

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


@models_app.command("list")
def models_list() -> None:
    """Show the registry and whether each model is usable offline."""
    from rich.table import Column, Table
    from ..registry import list_models

    rows = list_models()
    table = Table(Column("name", no_wrap=True), Column("where", overflow="fold"), "revision", "gated", "offline")
    for row in rows:
        table.add_row(row.name, row.location, row.revision or "-", "yes" if row.gated else "no",
                      "[green]yes[/green]" if row.available else "no")
    out.print(table)
    for row in rows:
        out.print(f"[bold]{row.name}[/bold]: {row.description.rstrip('.')}. Licence: {row.license}.")

