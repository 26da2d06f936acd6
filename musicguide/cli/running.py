"""Running an edit command: the progress bar, the runner (outputs reserved, written, published
together), and what is printed when it is done."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .. import runner
from ..options import Common
from .app import err, out


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


def execute(plan, editor=None) -> runner.Run:
    """Run a checked edit (`options.EditPlan`) through the runner: outputs reserved, the model
    loaded (or `editor`, one an `api.Editor` already holds), written and published together."""
    common = plan.common
    quiet = common.quiet or common.as_json

    def say(text: str) -> None:
        if not quiet:
            err.print(text)

    return runner.run_edit(plan.verb, common, plan.inputs, plan.call, progress=lambda label: _progress(quiet, label),
                           say=say, plot=common.plot, timing=plan.timing, reads=plan.reads, editor=editor)


def report(verb: str, common: Common, run: runner.Run) -> None:
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
