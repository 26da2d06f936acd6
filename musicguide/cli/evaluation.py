"""`musicguide evaluate`'s way in from the command line: check the options before anything is
loaded, load the model on the chosen device, evaluate, and write the report (Markdown + JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..atomic import check_writable
from ..errors import UserError
from ..options import MAX_SEED, MAX_STEPS
from ..evaluate.clips import TASKS, Protocol, check_tasks, read_track_list
from ..evaluate.protocol import (INPAINTING_VARIANTS, MODEL_VARIANTS, PRIMARY_VARIANT, Progress, evaluate,
                                 model_variants, variants_for)
from ..evaluate.report import EvalReport, write_report

MAX_CLIPS = 10_000


def report_paths(out: Path) -> tuple[Path, Path]:
    if out.suffix.lower() != ".md":
        raise UserError(f"--out must be a Markdown file (.md), got {out}")
    return out, out.with_suffix(".json")


def _check_numbers(steps: int, n_clips: int, seed: int) -> None:
    if not (1 <= steps <= MAX_STEPS and 2 <= n_clips <= MAX_CLIPS and 0 <= seed <= MAX_SEED):
        raise UserError(f"need --steps from 1 to {MAX_STEPS}, --clips from 2 to {MAX_CLIPS} and --seed from 0 to "
                        f"{MAX_SEED}, got {steps}, {n_clips} and {seed}")


def _check_variant_names(variant_names: Sequence[str] | None) -> None:
    known = {**MODEL_VARIANTS, **INPAINTING_VARIANTS}
    unknown = sorted(set(variant_names or ()) - set(known))
    if unknown:
        raise UserError(f"unknown variant {unknown[0]!r}", hint=f"choose from: {', '.join(known)}")


def _chosen_variants(variant_names: Sequence[str] | None, steps: int, seed: int, model):
    """None (all of the model's variants) or the named ones plus the primary one, which the verdicts use."""
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
                 protocol: Protocol = Protocol(), progress: Progress | None = None,
                 variant_names: Sequence[str] | None = None, tasks: Sequence[str] = TASKS) -> EvalReport:
    """Load the model, evaluate, write OUT (Markdown) and OUT with .json; returns the report.
    `variant_names` picks some of MODEL_VARIANTS (the primary one is always run: the verdicts use it)."""
    from ..api import Editor

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
